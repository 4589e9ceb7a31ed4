"""Cgroup metrics for any workload with a cgroup: containers, host cgroups, and VMM processes
placed in a cgroup, so a unikernel's figures compare with a container's.

Reads through `uniobs.cgroupfs` (cgroup v1, v2 and hybrid; see there for files and kernel
versions). Names follow the OpenTelemetry container conventions where one exists; the rest
live under `uniobs.container.*`. Only what the kernel reports is emitted: no rates (backends
derive `container.cpu.usage` from `container.cpu.time`).

Choices worth knowing:
- `container.cpu.time` carries only `cpu.mode` user/system points (the convention says a
  container has either all points with a mode or none), from cpuacct.stat on v1 (10 ms
  resolution) and cpu.stat on v2. Where no split exists, one point without a mode is emitted.
- `container.memory.usage` is an up-down counter: the convention still lists it as a counter,
  but memory goes down, and a counter that goes down reads as a reset.
- `container.paging.faults` (the current name; `container.memory.paging.faults` is deprecated)
  splits faults into major and minor = pgfault - pgmajfault, so the two add up to all faults.
- Block I/O keeps at most `max_devices` devices per cgroup, admitted in the order first seen
  and kept for the cgroup's life (so series never swap devices); the rest add up into
  `system.device="other"`.
- Every file is optional: one that is absent, holds no value (torn, empty) or cannot be read
  (EOPNOTSUPP from PSI on a kernel with PSI disabled, EINVAL, EACCES) leaves its metrics out
  and the others come. Read errors are logged once per hierarchy, file and errno, and a file
  whose errno says it never will be readable is not tried again (`cgroupfs.FileFailures`).
  Nothing absent is ever emitted as 0: a cumulative counter going to 0 reads as a reset.
- Each hierarchy is read at the workload's own path there (`Workload.cgroups`: a container's
  memory cgroup may sit elsewhere than its cpu one). For a container or a VMM's cgroup, a mounted
  v1 hierarchy with no directory at that path is reported as a gap (`gaps()`: logged once,
  counted), since its figures should be there, but only while the cgroup holds a process: a
  runtime deleting a container removes its hierarchies one at a time, which is churn, and a
  directory can only be removed once its cgroup is empty. A plain host cgroup (`Kind.CGROUP`) is
  often in some hierarchies only (systemd creates memory cgroups only for units with memory
  accounting): no gap is reported for it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

from uniobs.host import cgroupfs
from uniobs.model import AttributeValue, Instrument, Kind, MetricSpec, Sample, Workload
from uniobs.plugin import Collector, CollectorConfig, SourceUnavailable

CPU_MODE = "cpu.mode"
FAULT_TYPE = "system.paging.fault.type"
DIRECTION = "disk.io.direction"
DEVICE = "system.device"
PRESSURE_RESOURCE = "uniobs.pressure.resource"
PRESSURE_SCOPE = "uniobs.pressure.scope"

OTHER_DEVICE = "other"

# What is lost when a v1 hierarchy has no directory for a workload's cgroup (for gap reports).
_FIGURES = {
    "cpuacct": "container.cpu.time",
    "cpu": "uniobs.container.cpu.throttling.*",
    "memory": "container.memory.*, container.paging.faults, uniobs.container.memory.*",
    "pids": "uniobs.container.pids.*",
    "blkio": "container.disk.io, uniobs.container.disk.operations",
}


@dataclass(frozen=True)
class CgroupConfig(CollectorConfig):
    root: str = cgroupfs.DEFAULT_ROOT  # where the cgroup hierarchies are mounted
    max_devices: int = 16  # block devices with their own series, per cgroup
    io: bool = True  # read block I/O (v1 blkio.throttle.*, v2 io.stat)
    pressure: bool = True  # read PSI (v2 hierarchy only)

    def validate(self) -> None:
        super().validate()
        if not self.root.startswith("/"):
            raise ValueError(f"root: must be an absolute path (got {self.root!r})")
        if self.max_devices < 1:
            raise ValueError("max_devices: must be >= 1")


class CgroupCollector(Collector):
    name = "cgroup"
    config_class = CgroupConfig
    config: CgroupConfig
    metrics = (
        MetricSpec(
            "container.cpu.time",
            Instrument.COUNTER,
            "s",
            "CPU time of the cgroup's tasks, by mode (v1 cpuacct.stat, v2 cpu.stat).",
            (CPU_MODE,),
        ),
        MetricSpec(
            "uniobs.container.cpu.throttling.periods",
            Instrument.COUNTER,
            "{period}",
            "CFS bandwidth enforcement periods elapsed (cpu.stat nr_periods).",
        ),
        MetricSpec(
            "uniobs.container.cpu.throttling.throttled_periods",
            Instrument.COUNTER,
            "{period}",
            "Periods in which the cgroup was throttled (cpu.stat nr_throttled).",
        ),
        MetricSpec(
            "uniobs.container.cpu.throttling.throttled_time",
            Instrument.COUNTER,
            "s",
            "Time the cgroup's tasks were throttled (cpu.stat throttled_time / throttled_usec).",
        ),
        MetricSpec(
            "container.memory.usage",
            Instrument.UPDOWN_COUNTER,
            "By",
            "Memory charged to the cgroup, page cache included (v1 memory.usage_in_bytes, v2 memory.current).",
        ),
        MetricSpec(
            "container.memory.working_set",
            Instrument.UPDOWN_COUNTER,
            "By",
            "Memory usage minus inactive file pages, as cAdvisor and the kubelet compute it.",
        ),
        MetricSpec(
            "container.memory.rss",
            Instrument.UPDOWN_COUNTER,
            "By",
            "Anonymous memory and swap cache (v1 total_rss, v2 anon).",
        ),
        MetricSpec(
            "container.paging.faults",
            Instrument.COUNTER,
            "{fault}",
            "Page faults by the cgroup's tasks, major and minor (memory.stat pgfault, pgmajfault).",
            (FAULT_TYPE,),
        ),
        MetricSpec(
            "uniobs.container.memory.limit",
            Instrument.UPDOWN_COUNTER,
            "By",
            "The cgroup's memory limit; absent when unlimited (v1 memory.limit_in_bytes, v2 memory.max).",
        ),
        MetricSpec(
            "uniobs.container.memory.cache",
            Instrument.UPDOWN_COUNTER,
            "By",
            "Page cache charged to the cgroup (v1 total_cache, v2 file).",
        ),
        MetricSpec(
            "uniobs.container.memory.swap",
            Instrument.UPDOWN_COUNTER,
            "By",
            "Swap used by the cgroup (v1 total_swap with swap accounting, v2 memory.swap.current).",
        ),
        MetricSpec(
            "uniobs.container.memory.failcnt",
            Instrument.COUNTER,
            "{event}",
            "Times the cgroup's memory usage hit its limit (v1 memory.failcnt, v2 memory.events max).",
        ),
        MetricSpec(
            "uniobs.container.memory.oom_kills",
            Instrument.COUNTER,
            "{kill}",
            "Processes of the cgroup killed by the OOM killer (v1 memory.oom_control, v2 memory.events).",
        ),
        MetricSpec(
            "uniobs.container.pids.count",
            Instrument.UPDOWN_COUNTER,
            "{process}",
            "Tasks (processes and threads) in the cgroup (pids.current).",
        ),
        MetricSpec(
            "uniobs.container.pids.limit",
            Instrument.UPDOWN_COUNTER,
            "{process}",
            "The cgroup's task limit; absent when unlimited (pids.max).",
        ),
        MetricSpec(
            "container.disk.io",
            Instrument.COUNTER,
            "By",
            "Bytes read and written by the cgroup, by block device as MAJ:MIN (v1 blkio.throttle.io_service_bytes, "
            "v2 io.stat); devices past max_devices add up into system.device=other.",
            (DIRECTION, DEVICE),
        ),
        MetricSpec(
            "uniobs.container.disk.operations",
            Instrument.COUNTER,
            "{operation}",
            "Block I/O operations by the cgroup, by device (v1 blkio.throttle.io_serviced, v2 io.stat rios/wios).",
            (DIRECTION, DEVICE),
        ),
        MetricSpec(
            "uniobs.container.pressure.stall",
            Instrument.COUNTER,
            "s",
            "Pressure stall time (PSI): time some (scope=some) or all non-idle (scope=full) tasks of the cgroup "
            "were stalled on CPU, memory or I/O. From the v2 hierarchy only (hybrid hosts: unified/<path>).",
            (PRESSURE_RESOURCE, PRESSURE_SCOPE),
        ),
    )

    def __init__(self, config: CollectorConfig | None = None) -> None:
        super().__init__(config)
        self._layout: cgroupfs.CgroupLayout | None = None
        # per cgroup path: the devices with their own series, in admission order
        self._devices: dict[str, list[str]] = {}
        # per workload: the gaps of the last collect(), until gaps() takes them
        self._gaps: dict[tuple[str, str, str], list[str]] = {}
        # the cgroup files that failed to read, per hierarchy: said once, some never tried again
        self._failures = cgroupfs.FileFailures()
        # directory descriptors and absent unified/<path> directories, kept between scrapes
        self._handles: cgroupfs.CgroupHandles | None = None

    def applies_to(self, workload: Workload) -> bool:
        return workload.cgroup is not None

    def layout(self) -> cgroupfs.CgroupLayout:
        """The hierarchies under the configured root, found on first use."""
        if self._layout is None:
            try:
                self._layout = cgroupfs.detect_layout(self.config.root)
            except OSError as exc:
                raise SourceUnavailable(f"no cgroup hierarchy under {self.config.root}: {exc}") from None
        return self._layout

    def collect(self, workload: Workload) -> Iterable[Sample]:
        assert workload.cgroup is not None
        layout = self.layout()
        if self._handles is None:
            self._handles = cgroupfs.CgroupHandles()
        stats = cgroupfs.read_stats(
            layout,
            workload.cgroup,
            io=self.config.io,
            pressure=self.config.pressure,
            paths=workload.cgroups,
            failures=self._failures,
            cpu_usage=False,  # the user/system split is emitted; the total only where there is none
            handles=self._handles,
        )
        if stats.absent and workload.kind is not Kind.CGROUP and self._populated(layout, workload):
            self._gaps[workload.key] = self._describe_gaps(layout, workload, stats.absent)
        else:
            self._gaps.pop(workload.key, None)
        return self.samples(stats)

    @staticmethod
    def _populated(layout: cgroupfs.CgroupLayout, workload: Workload) -> bool:
        """Whether the cgroup holds a process (WorkloadGone if it has gone meanwhile). A directory
        is only removed once its cgroup is empty, so a populated cgroup missing from a hierarchy is
        not one being deleted: it was never there, or it is somewhere else."""
        assert workload.cgroup is not None
        return bool(cgroupfs.cgroup_pids(layout, workload.cgroup, workload.cgroups))

    def gaps(self, workload: Workload) -> list[str]:
        """The hierarchies the last collect() found no directory in, one reason per hierarchy."""
        return self._gaps.pop(workload.key, [])

    @staticmethod
    def _describe_gaps(layout: cgroupfs.CgroupLayout, workload: Workload, absent: Iterable[str]) -> list[str]:
        by_hierarchy: dict[str, list[str]] = {}  # a combined cpu,cpuacct mount is one gap
        for controller in absent:
            by_hierarchy.setdefault(layout.v1[controller], []).append(controller)
        return [
            f"{','.join(controllers)}: no cgroup {workload.cgroup_of(controllers[0])} in {hierarchy} "
            f"({', '.join(_FIGURES.get(c, c) for c in controllers)} not read)"
            for hierarchy, controllers in by_hierarchy.items()
        ]

    def samples(self, stats: cgroupfs.CgroupStats) -> list[Sample]:
        """Samples for one reading. Public so a runtime collector can reuse the mapping."""
        out: list[Sample] = []

        def add(metric: str, value: float | int | None, *attributes: tuple[str, AttributeValue]) -> None:
            if value is not None:
                out.append(Sample(metric, value, attributes))

        if stats.cpu_user_s is not None and stats.cpu_system_s is not None:
            add("container.cpu.time", stats.cpu_user_s, (CPU_MODE, "user"))
            add("container.cpu.time", stats.cpu_system_s, (CPU_MODE, "system"))
        else:
            add("container.cpu.time", stats.cpu_usage_s)
        add("uniobs.container.cpu.throttling.periods", stats.cpu_periods)
        add("uniobs.container.cpu.throttling.throttled_periods", stats.cpu_throttled_periods)
        add("uniobs.container.cpu.throttling.throttled_time", stats.cpu_throttled_s)

        add("container.memory.usage", stats.memory_usage)
        add("container.memory.working_set", stats.memory_working_set)
        add("container.memory.rss", stats.memory_rss)
        add("uniobs.container.memory.limit", stats.memory_limit)
        add("uniobs.container.memory.cache", stats.memory_cache)
        add("uniobs.container.memory.swap", stats.memory_swap)
        if stats.memory_pgfault is not None and stats.memory_pgmajfault is not None:
            add("container.paging.faults", stats.memory_pgmajfault, (FAULT_TYPE, "major"))
            add("container.paging.faults", stats.memory_pgfault - stats.memory_pgmajfault, (FAULT_TYPE, "minor"))
        failcnt = stats.memory_failcnt if stats.memory_failcnt is not None else stats.memory_events_max
        add("uniobs.container.memory.failcnt", failcnt)
        add("uniobs.container.memory.oom_kills", stats.memory_oom_kills)

        add("uniobs.container.pids.count", stats.pids_current)
        add("uniobs.container.pids.limit", stats.pids_limit)

        if stats.io is not None:
            for device, (rb, wb, ro, wo) in self._bounded_io(stats.path, stats.io).items():
                add("container.disk.io", rb, (DIRECTION, "read"), (DEVICE, device))
                add("container.disk.io", wb, (DIRECTION, "write"), (DEVICE, device))
                add("uniobs.container.disk.operations", ro, (DIRECTION, "read"), (DEVICE, device))
                add("uniobs.container.disk.operations", wo, (DIRECTION, "write"), (DEVICE, device))

        for resource, pressure in (
            ("cpu", stats.cpu_pressure),
            ("memory", stats.memory_pressure),
            ("io", stats.io_pressure),
        ):
            if pressure is not None:
                add(
                    "uniobs.container.pressure.stall",
                    pressure.some_s,
                    (PRESSURE_RESOURCE, resource),
                    (PRESSURE_SCOPE, "some"),
                )
                add(
                    "uniobs.container.pressure.stall",
                    pressure.full_s,
                    (PRESSURE_RESOURCE, resource),
                    (PRESSURE_SCOPE, "full"),
                )
        return out

    def _bounded_io(
        self, path: str, devices: tuple[cgroupfs.DeviceIO, ...]
    ) -> dict[str, tuple[int | None, int | None, int | None, int | None]]:
        """At most max_devices devices by name, the rest summed as "other".

        Admission is sticky: a device keeps its own series once admitted, so "other" always
        holds the same devices and stays monotonic while they exist. Devices first seen in
        the same reading are admitted busiest first (bytes read + written), so a host's
        real disks win their own series over the dozens of idle loop devices a snap-using
        host has. A counter of "other" that one of its devices does not give this time is
        absent, not a smaller sum (which would read as a reset).
        """
        admitted = self._devices.setdefault(path, [])
        if len(admitted) < self.config.max_devices:
            new = [d for d in devices if d.device not in admitted]
            # stable: ties keep MAJ:MIN order; an absent counter only weighs 0 in this ordering
            new.sort(key=lambda d: (d.read_bytes or 0) + (d.write_bytes or 0), reverse=True)
            admitted.extend(d.device for d in new[: self.config.max_devices - len(admitted)])
        out: dict[str, tuple[int | None, int | None, int | None, int | None]] = {}
        other: list[int | None] | None = None
        for dev in devices:
            figures = (dev.read_bytes, dev.write_bytes, dev.read_ops, dev.write_ops)
            if dev.device in admitted:
                out[dev.device] = figures
                continue
            if other is None:
                other = [0, 0, 0, 0]
            for i, value in enumerate(figures):
                total = other[i]
                other[i] = None if total is None or value is None else total + value
        if other is not None:
            out[OTHER_DEVICE] = (other[0], other[1], other[2], other[3])
        return out

    def forget(self, workload: Workload) -> None:
        self._gaps.pop(workload.key, None)
        if workload.cgroup is not None:
            with contextlib.suppress(ValueError):  # a path read_stats refused has no state
                self._devices.pop(cgroupfs.normalize_path(workload.cgroup), None)
                if self._handles is not None:
                    self._handles.forget(workload.cgroup, workload.cgroups)
