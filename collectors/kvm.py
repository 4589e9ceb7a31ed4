"""Per-VM KVM statistics from debugfs, for any VMM that uses KVM (Solo5 hvt, QEMU, Firecracker...).

Reads `/sys/kernel/debug/kvm/<pid>-<fd>/` (the root is the `debugfs` setting), the files
`kvm_stat` reads: one file per statistic, each holding one decimal integer. Since Linux 5.14
(binary stats) the VM's directory holds every VM statistic and every vCPU statistic summed over
the vCPUs; `vcpuN/` subdirectories hold per-vCPU extras. A statistic found only under `vcpuN/`
is summed over the vCPUs. QEMU users can get the same figures per vCPU from the `qemu`
collector (QMP `query-stats`, which needs no debugfs); this collector covers VMMs without QMP,
such as Solo5's hvt tender.

Counters and gauges: the kernel creates a cumulative or peak statistic's file writable (0644,
writing clears it) and an instant one read-only (0444) (`kvm_stats_debugfs_mode` in
virt/kvm/kvm_main.c). A read-only file, a `max_*` name, or a name in `NON_CUMULATIVE` is a
gauge (`uniobs.vm.kvm.debugfs.gauge`); the others are counters (`uniobs.vm.kvm.debugfs.stat`).
Histograms (`*_hist`; debugfs shows only their first bucket) and files that are not one
integer (x86's `mmu_rmaps_stat` table) are skipped. A VMM with several VMs has their values
summed.

Where it fails: without debugfs (not mounted, or KVM not loaded), without a directory for the
pid (the VMM does not use KVM, e.g. QEMU under TCG), or when kernel lockdown denies the stat
files (EPERM on every file; lockdown lets only read-only files through, i.e. the instant
gauges), the collector raises SourceUnavailable with the reason, which the pipeline reports once.
When only some files are denied, the readable ones are emitted and the rest named once in the log.

The metric names differ from the qemu collector's `uniobs.vm.kvm.*`: one name, one declaring
plugin (a contract test checks it), and the attributes differ (no per-vCPU breakdown here).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field

from uniobs.host.procfs import ProcessGone, ProcFS
from uniobs.model import Instrument, Kind, MetricSpec, Sample, Workload
from uniobs.plugin import Collector, CollectorConfig, SourceUnavailable

log = logging.getLogger("uniobs.collectors.kvm")

KVM_STAT = "uniobs.kvm.stat"

# Instant and peak statistics of x86 and the generic KVM code (query-stats-schemas, Linux 6.x),
# for trees whose file modes were lost (copies, recorded test data). Peaks are created 0644.
NON_CUMULATIVE = frozenset(
    {
        "blocking", "guest_mode", "mmu_unsync", "nx_lpage_splits", "pages_4k", "pages_2m", "pages_1g",
        "max_mmu_page_hash_collisions", "max_mmu_rmap_size",
    }
)  # fmt: skip
# Files in vcpuN/ that describe the vCPU rather than count anything (x86: kvm_arch_create_vcpu_debugfs).
VCPU_ATTRIBUTES = frozenset(
    {"pid", "tsc-offset", "tsc-scaling-ratio", "tsc-scaling-ratio-frac-bits", "lapic_timer_advance_ns"}
)

METRICS = (
    MetricSpec(
        "uniobs.vm.kvm.debugfs.stat",
        Instrument.COUNTER,
        "{stat}",  # each statistic's own unit (counts, *_ns): none for the metric
        "Cumulative KVM statistics of the VM from debugfs (exits, io_exits, halt_exits, insn_emulation...), "
        "summed over its vCPUs; values as KVM reports them (the name carries the unit, e.g. *_ns).",
        (KVM_STAT,),
    ),
    MetricSpec(
        "uniobs.vm.kvm.debugfs.gauge",
        Instrument.GAUGE,
        "{stat}",  # pages, flags, sizes: not a ratio
        "Instant and peak KVM statistics of the VM from debugfs (pages_4k, blocking, max_mmu_rmap_size...).",
        (KVM_STAT,),
    ),
)


@dataclass(frozen=True)
class KvmConfig(CollectorConfig):
    debugfs: str = "/sys/kernel/debug/kvm"  # where debugfs shows KVM's directory
    max_stats: int = 64  # distinct statistic names reported per VM (alphabetical order)
    proc: str = "/proc"

    def validate(self) -> None:
        super().validate()
        if not self.debugfs:
            raise ValueError("debugfs: must be a path")
        if self.max_stats < 0:
            raise ValueError("max_stats: must be >= 0")


@dataclass
class VmStats:
    """What one read of a VM's directories gave."""

    values: dict[str, int] = field(default_factory=dict)
    gauges: set[str] = field(default_factory=set)
    denied: list[str] = field(default_factory=list)


def parse_stat(data: bytes) -> int | None:
    """A debugfs stat file: one decimal integer and a newline. None for anything else."""
    text = data.strip()
    if not text or len(text) > 24:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


def _is_stat_name(name: str) -> bool:
    return not name.endswith("_hist") and name not in VCPU_ATTRIBUTES


def read_vm_dirs(dirs: Iterable[str], into: VmStats | None = None) -> VmStats:
    """Read the stat files of one or more `<pid>-<fd>` directories (summed).

    Raises FileNotFoundError if a directory vanished (the VM was closed) while being read.
    """
    out = into if into is not None else VmStats()
    for vm_dir in dirs:
        per_vcpu: dict[str, int] = {}
        vcpu_gauges: set[str] = set()
        seen: set[str] = set()
        with os.scandir(vm_dir) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if entry.name.startswith("vcpu") and entry.name[4:].isdigit():
                    _read_files(entry.path, per_vcpu, vcpu_gauges, out.denied, entry.name + "/")
                continue
            seen.add(entry.name)
            _read_files_one(entry, out.values, out.gauges, out.denied, "")
        for name, value in per_vcpu.items():
            if name not in seen:  # only where the VM directory has no total of its own
                out.values[name] = out.values.get(name, 0) + value
                if name in vcpu_gauges:
                    out.gauges.add(name)
    return out


def _read_files(path: str, values: dict[str, int], gauges: set[str], denied: list[str], prefix: str) -> None:
    with os.scandir(path) as it:
        for entry in it:
            if not entry.is_dir(follow_symlinks=False):
                _read_files_one(entry, values, gauges, denied, prefix)


def _read_files_one(
    entry: os.DirEntry[str], values: dict[str, int], gauges: set[str], denied: list[str], prefix: str
) -> None:
    name = entry.name
    if not _is_stat_name(name):
        return
    try:
        data = _read(entry.path)
    except PermissionError:
        denied.append(prefix + name)
        return
    value = parse_stat(data)
    if value is None:
        return
    values[name] = values.get(name, 0) + value
    try:
        mode = entry.stat(follow_symlinks=False).st_mode
    except OSError:
        mode = stat.S_IWUSR
    if not mode & 0o222 or name in NON_CUMULATIVE or name.startswith("max_"):
        gauges.add(name)


class KvmCollector(Collector):
    name = "kvm"
    config_class = KvmConfig
    config: KvmConfig
    metrics = METRICS

    def __init__(self, config: CollectorConfig | None = None) -> None:
        super().__init__(config)
        self._said: dict[tuple[str, str, str], set[str]] = {}
        self._proc = ProcFS(self.config.proc)

    def applies_to(self, workload: Workload) -> bool:
        return workload.kind is Kind.UNIKERNEL and workload.pid is not None

    def collect(self, workload: Workload) -> Iterable[Sample]:
        assert workload.pid is not None
        pid, root = workload.pid, self.config.debugfs
        try:
            names = os.listdir(root)
        except FileNotFoundError:
            raise SourceUnavailable(f"no KVM debugfs at {root} (debugfs not mounted, or KVM not loaded)") from None
        except PermissionError:
            raise SourceUnavailable(f"{root}: permission denied (kernel lockdown restricts debugfs)") from None
        except NotADirectoryError:
            raise SourceUnavailable(f"{root} is not a directory") from None
        prefix = f"{pid}-"
        dirs = [os.path.join(root, n) for n in names if n.startswith(prefix) and n[len(prefix) :].isdigit()]
        if not dirs:
            if not self._proc.is_alive(pid):
                raise ProcessGone(pid)
            raise SourceUnavailable(f"no KVM VM of pid {pid} in {root} (the VMM does not use KVM, e.g. QEMU with TCG)")
        try:
            stats = read_vm_dirs(dirs)
        except FileNotFoundError:
            if not self._proc.is_alive(pid):
                raise ProcessGone(pid) from None
            raise SourceUnavailable(f"the KVM VM of pid {pid} was closed while being read") from None
        if stats.denied and not stats.values:
            raise SourceUnavailable(
                f"{dirs[0]}: reading the {len(stats.denied)} stat files is not permitted (kernel lockdown "
                "restricts debugfs)"
            )
        if stats.denied:
            self._say_once(
                workload,
                "denied",
                f"{len(stats.denied)} KVM stat files are not readable (kernel lockdown lets only read-only "
                f"files through): {', '.join(sorted(stats.denied)[:8])}{', ...' if len(stats.denied) > 8 else ''}",
            )
        names_kept = sorted(stats.values)
        if len(names_kept) > self.config.max_stats:
            self._say_once(workload, "cap", f"{len(names_kept)} KVM statistics, reporting {self.config.max_stats}")
            names_kept = names_kept[: self.config.max_stats]
        return [
            Sample(
                "uniobs.vm.kvm.debugfs.gauge" if name in stats.gauges else "uniobs.vm.kvm.debugfs.stat",
                stats.values[name],
                ((KVM_STAT, name),),
            )
            for name in names_kept
        ]

    def _say_once(self, workload: Workload, topic: str, message: str) -> None:
        said = self._said.setdefault(workload.key, set())
        if topic not in said:
            said.add(topic)
            log.info("kvm: %s: %s", workload.display_name, message)

    def forget(self, workload: Workload) -> None:
        self._said.pop(workload.key, None)
