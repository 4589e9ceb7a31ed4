"""Process metrics for a workload's main process: the VMM (QEMU, an hvt tender), a container's
init process, or uniobs itself.

Reads through psutil (Linux `/proc/<pid>/{stat,status,statm,smaps_rollup,fd}`): one `oneshot()`
per scrape. PSS and USS need `smaps_rollup` (Linux 4.14+), which costs more for large VMMs:
turn them off with `pss = false`. A container's init is its pid as the host sees it (from the
runtime's state); its cgroup figures (`collectors/cgroup.py`) count every process of the
container, these only the init. A container whose init is not known (no state names it) is
reported once as SourceUnavailable rather than skipped in silence.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import psutil

from uniobs.model import Instrument, Kind, MetricSpec, Sample, Workload
from uniobs.plugin import Collector, CollectorConfig, SourceUnavailable, WorkloadGone

CPU_MODE = "cpu.mode"


@dataclass(frozen=True)
class ProcessConfig(CollectorConfig):
    pss: bool = True  # read smaps_rollup for PSS/USS


class ProcessCollector(Collector):
    name = "process"
    config_class = ProcessConfig
    config: ProcessConfig
    metrics = (
        MetricSpec("process.cpu.time", Instrument.COUNTER, "s", "CPU time of the process, by mode.", (CPU_MODE,)),
        MetricSpec("process.memory.usage", Instrument.UPDOWN_COUNTER, "By", "Resident set size (RSS)."),
        MetricSpec("process.memory.virtual", Instrument.UPDOWN_COUNTER, "By", "Virtual memory size."),
        MetricSpec(
            "uniobs.process.memory.pss",
            Instrument.UPDOWN_COUNTER,
            "By",
            "Proportional set size: RSS with shared pages divided among their users (smaps_rollup).",
        ),
        MetricSpec(
            "uniobs.process.memory.uss",
            Instrument.UPDOWN_COUNTER,
            "By",
            "Unique set size: memory freed if the process exited now (smaps_rollup).",
        ),
        MetricSpec("process.thread.count", Instrument.UPDOWN_COUNTER, "{thread}", "Threads of the process."),
        MetricSpec(
            "process.unix.file_descriptor.count",
            Instrument.UPDOWN_COUNTER,
            "{file_descriptor}",
            "Open file descriptors.",
        ),
        MetricSpec(
            "process.context_switches",
            Instrument.COUNTER,
            "{context_switch}",
            "Context switches, voluntary and involuntary.",
            ("process.context_switch.type",),
        ),
        MetricSpec(
            "process.paging.faults",
            Instrument.COUNTER,
            "{fault}",
            "Page faults, major and minor.",
            ("process.paging.fault_type",),
        ),
        MetricSpec("process.uptime", Instrument.GAUGE, "s", "Time since the process started."),
    )

    def __init__(self, config: CollectorConfig | None = None) -> None:
        super().__init__(config)
        self._procs: dict[int, psutil.Process] = {}

    def applies_to(self, workload: Workload) -> bool:
        if workload.kind is Kind.CONTAINER:
            return True  # its init; collect() says so when that is not known
        return workload.pid is not None and workload.kind in (Kind.UNIKERNEL, Kind.PROCESS)

    def _process(self, pid: int) -> psutil.Process:
        proc = self._procs.get(pid)
        if proc is None or not proc.is_running():  # is_running also catches pid reuse
            proc = self._procs[pid] = psutil.Process(pid)
        return proc

    def collect(self, workload: Workload) -> Iterable[Sample]:
        if workload.pid is None:
            raise SourceUnavailable("its init process is not known (no runtime state names a live one)")
        try:
            proc = self._process(workload.pid)
            with proc.oneshot():
                if proc.status() == psutil.STATUS_ZOMBIE:  # exited, not yet reaped: its figures read 0
                    raise psutil.ZombieProcess(workload.pid)
                cpu = proc.cpu_times()
                mem = proc.memory_info()
                ctx = proc.num_ctx_switches()
                threads = proc.num_threads()
                fds = proc.num_fds()
                created = proc.create_time()
                full = proc.memory_full_info() if self.config.pss else None
            # minor/major faults: /proc/<pid>/stat fields 10 and 12 (psutil has no API for them)
            with open(f"/proc/{workload.pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (psutil.NoSuchProcess, psutil.ZombieProcess, FileNotFoundError, ProcessLookupError):
            self._procs.pop(workload.pid, None)
            raise WorkloadGone(f"pid {workload.pid} exited") from None
        samples = [
            Sample("process.cpu.time", cpu.user, ((CPU_MODE, "user"),)),
            Sample("process.cpu.time", cpu.system, ((CPU_MODE, "system"),)),
            Sample("process.memory.usage", mem.rss),
            Sample("process.memory.virtual", mem.vms),
            Sample("process.thread.count", threads),
            Sample("process.unix.file_descriptor.count", fds),
            Sample("process.context_switches", ctx.voluntary, (("process.context_switch.type", "voluntary"),)),
            Sample("process.context_switches", ctx.involuntary, (("process.context_switch.type", "involuntary"),)),
            Sample("process.paging.faults", int(fields[7]), (("process.paging.fault_type", "minor"),)),
            Sample("process.paging.faults", int(fields[9]), (("process.paging.fault_type", "major"),)),
            Sample("process.uptime", max(0.0, time.time() - created)),
        ]
        if full is not None:
            samples.append(Sample("uniobs.process.memory.pss", full.pss))
            samples.append(Sample("uniobs.process.memory.uss", full.uss))
        return samples

    def forget(self, workload: Workload) -> None:
        if workload.pid is not None:
            self._procs.pop(workload.pid, None)
