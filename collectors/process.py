"""Process metrics for a workload's main process: the VMM (QEMU, an hvt tender), a container's
init process, or uniobs itself.

Reads `/proc/<pid>/{stat,statm,status,smaps_rollup,fd}` (and `/proc/stat`'s boot time) through
`uniobs.host.procfs`, under the `proc` root. PSS and USS need `smaps_rollup` (Linux 4.14+; the
slower `smaps` otherwise), which costs more for large VMMs: turn them off with `pss = false`. A
container's init is its pid as the host sees it (from the runtime's state); its cgroup figures
(`collectors/cgroup.py`) count every process of the container, these only the init. A container
whose init is not known (no state names it) is reported once as SourceUnavailable rather than
skipped in silence. Of another user's process (a root-owned VMM seen by an agent without
CAP_SYS_PTRACE, or by a non-root user) `stat`, `statm` and `status` are world-readable and still
give CPU, RSS, virtual size, threads, context switches, page faults and uptime; `fd/` and
`smaps_rollup` need ptrace access (proc(5): "ptrace access mode PTRACE_MODE_READ_FSCREDS"), so
the descriptor count and PSS/USS are left out for it, each reported as a gap (`gaps()`).

Not psutil: its procfs root is one module-wide setting (`psutil.PROCFS_PATH`), so a collector
could not be pointed at its own root; it has no API for page faults, so `stat` was read twice;
and its errors would be a second translation beside `procfs`'s. The figures are the ones psutil
gives: CPU times are stat's ticks / SC_CLK_TCK, RSS and virtual size statm's (stat's rss is
approximate on recent kernels, see `procfs.ProcStatm`), threads stat's num_threads (= status'
Threads), PSS/USS the same smaps_rollup lines, the start time boot time + starttime (taken once
per process, as psutil caches it). The four files stay open between scrapes and are read again
with pread(2) (`ProcFS(keep_open=)`: up to 1,024 files, or an eighth of RLIMIT_NOFILE).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from uniobs.host.procfs import DEFAULT_ROOT, AccessDenied, ProcessGone, ProcFS, keep_open_budget
from uniobs.metrics import CPU_MODE, PROCESS_CPU_TIME
from uniobs.model import Instrument, Kind, MetricSpec, Sample, Workload
from uniobs.plugin import Collector, CollectorConfig, SourceUnavailable

_T = TypeVar("_T")

# Attributes of the samples, built once (a scrape only changes the values).
_USER = ((CPU_MODE, "user"),)
_SYSTEM = ((CPU_MODE, "system"),)
_VOLUNTARY = (("process.context_switch.type", "voluntary"),)
_INVOLUNTARY = (("process.context_switch.type", "involuntary"),)
_MINOR = (("process.paging.fault_type", "minor"),)
_MAJOR = (("process.paging.fault_type", "major"),)


@dataclass(frozen=True)
class ProcessConfig(CollectorConfig):
    pss: bool = True  # read smaps_rollup for PSS/USS
    proc: str = DEFAULT_ROOT  # procfs mount

    def validate(self) -> None:
        super().validate()
        if not self.proc.startswith("/"):
            raise ValueError(f"proc: must be an absolute path (got {self.proc!r})")


class ProcessCollector(Collector):
    name = "process"
    config_class = ProcessConfig
    config: ProcessConfig
    metrics = (
        PROCESS_CPU_TIME,  # also recorded by `uniobs run` at the exit: one declaration (uniobs.metrics)
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
        # stat, statm, status and smaps_rollup stay open between scrapes (read again with pread)
        self._proc = ProcFS(self.config.proc, keep_open=keep_open_budget())
        self._started: dict[int, tuple[int, float]] = {}  # pid -> (stat starttime, epoch seconds)
        self._denied: dict[int, list[str]] = {}  # pid -> what the last collect() was not allowed to read

    def applies_to(self, workload: Workload) -> bool:
        if workload.kind is Kind.CONTAINER:
            return True  # its init; collect() says so when that is not known
        return workload.pid is not None and workload.kind in (Kind.UNIKERNEL, Kind.PROCESS)

    def _start(self, pid: int, starttime: int) -> float:
        """When the process started (epoch seconds), computed once per process as psutil does: a
        later clock step moves the uptime, not the start. A new start time is a reused pid."""
        known = self._started.get(pid)
        if known is None or known[0] != starttime:
            known = self._started[pid] = (starttime, starttime / self._proc.hz + self._proc.boot_time())
        return known[1]

    def collect(self, workload: Workload) -> Iterable[Sample]:
        if workload.pid is None:
            raise SourceUnavailable("its init process is not known (no runtime state names a live one)")
        pid = workload.pid
        try:
            st = self._proc.stat(pid)  # a zombie (exited, not yet reaped; its figures read 0) is gone
            statm = self._proc.statm(pid)
            status = self._proc.status(pid)
            # ptrace-guarded: another user's process degrades per field, not as a whole
            denied: list[str] = []
            fds = self._guarded(lambda: self._proc.num_fds(pid), "fd/", "process.unix.file_descriptor.count", denied)
            full = (
                self._guarded(
                    lambda: self._proc.memory_rollup(pid), "smaps_rollup", "uniobs.process.memory.pss/uss", denied
                )
                if self.config.pss
                else None
            )
            self._denied[pid] = denied
            created = self._start(pid, st.starttime)
        except ProcessGone:
            self._started.pop(pid, None)
            self._proc.forget(pid)
            raise
        samples = [
            Sample("process.cpu.time", st.utime, _USER),
            Sample("process.cpu.time", st.stime, _SYSTEM),
            Sample("process.memory.usage", statm.rss_bytes),
            Sample("process.memory.virtual", statm.vms_bytes),
            Sample("process.thread.count", st.num_threads),
        ]
        if fds is not None:
            samples.append(Sample("process.unix.file_descriptor.count", fds))
        voluntary, involuntary = status.voluntary_ctxt_switches, status.nonvoluntary_ctxt_switches
        if voluntary is not None and involuntary is not None:  # Linux 2.6.23+
            samples.append(Sample("process.context_switches", voluntary, _VOLUNTARY))
            samples.append(Sample("process.context_switches", involuntary, _INVOLUNTARY))
        samples.append(Sample("process.paging.faults", st.minflt, _MINOR))
        samples.append(Sample("process.paging.faults", st.majflt, _MAJOR))
        samples.append(Sample("process.uptime", max(0.0, time.time() - created)))
        if full is not None:
            samples.append(Sample("uniobs.process.memory.pss", full.pss))
            samples.append(Sample("uniobs.process.memory.uss", full.uss))
        return samples

    @staticmethod
    def _guarded(read: Callable[[], _T], path: str, metric: str, denied: list[str]) -> _T | None:
        try:
            return read()
        except AccessDenied:
            denied.append(
                f"{path}: permission denied (another user's process: needs CAP_SYS_PTRACE); {metric} not read"
            )
            return None

    def gaps(self, workload: Workload) -> Iterable[str]:
        return self._denied.get(workload.pid, []) if workload.pid is not None else []

    def forget(self, workload: Workload) -> None:
        if workload.pid is not None:
            self._started.pop(workload.pid, None)
            self._denied.pop(workload.pid, None)
            self._proc.forget(workload.pid)

    def close(self) -> None:
        self._proc.close()
