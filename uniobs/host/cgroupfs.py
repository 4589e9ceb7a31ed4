"""The cgroup backend: find the hierarchies, list cgroups, read one cgroup's statistics.

Reads cgroupfs only (no OpenTelemetry, no metric names): the collector in
`uniobs.collectors.cgroup` turns `CgroupStats` into samples. The root is a parameter
(default `/sys/fs/cgroup`) so tests point it at recorded trees.

Layouts handled (`detect_layout`):
- pure v2: `cgroup.controllers` at the root (Linux 4.5+; the figures below need 4.20+ for PSI);
- pure v1: one mount per controller or per set of controllers, `<root>/<name>`, where a
  combined mount is called `cpu,cpuacct` and usually has `cpu` and `cpuacct` symlinks to it;
  separate `cpu` and `cpuacct` mounts work the same way;
- hybrid: v1 controllers plus cgroup2 at `<root>/unified` (systemd's "hybrid" mode). A
  controller found in neither v1 nor `unified/cgroup.controllers` is simply not read.

What is read, per cgroup (each file is optional: one that is missing, cannot be read or holds
no value leaves its fields None, and the other files are read; see `FileFailures`):

| figure            | v1 (controller: file)                                  | v2 file                  |
|-------------------|--------------------------------------------------------|--------------------------|
| CPU time          | cpuacct: cpuacct.usage (ns), cpuacct.stat (USER_HZ)    | cpu.stat *_usec          |
| throttling        | cpu: cpu.stat nr_periods/nr_throttled/throttled_time   | cpu.stat (cpu controller)|
| memory            | memory: usage_in_bytes, limit_in_bytes, stat, failcnt, | memory.current, .max,    |
|                   | oom_control (oom_kill: Linux 4.13+)                    | .stat, .swap.current,    |
|                   |                                                        | .events                  |
| pids              | pids: pids.current, pids.max                           | pids.current, pids.max   |
| block I/O         | blkio: blkio.throttle.io_service_bytes / io_serviced   | io.stat                  |
|                   | (their `_recursive` variants first, where present)     |                          |
| pressure (PSI)    | from the v2 hierarchy only (hybrid: `unified/<path>`)  | cpu/memory/io.pressure   |

Every figure is hierarchical (it includes descendant cgroups), as v2 always is: v1 memory
figures use the `total_*` keys of memory.stat and blkio the `_recursive` files.

A cgroup need not sit at the same path in every hierarchy: a relative cgroupsPath lands under
the launcher's cgroup in each one, and on hybrid hosts the launcher is often nested in memory
(or in unified) but not elsewhere. Readers take the path per controller (`paths`, from the
runtime's state or `/proc/<pid>/cgroup`, see `parse_proc_cgroup`); a hierarchy that is mounted
but has no directory for the cgroup is named in `CgroupStats.absent`, not silently skipped.

Files are read with os.open/os.read (measured cheaper than open() on the target hosts). A
cgroup that vanishes while being read raises `WorkloadGone`; see `_Reader`. A file that exists
and cannot be read (EOPNOTSUPP, EINVAL, EACCES...) is absent, said once; see `FileFailures`.
The parsers never raise and never turn a figure the file lacks into 0 (see "pure parsers").
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from uniobs.host import open_files_limit
from uniobs.plugin import WorkloadGone

log = logging.getLogger("uniobs.cgroupfs")

DEFAULT_ROOT = "/sys/fs/cgroup"
DEFAULT_MAX_CGROUPS = 10_000

# USER_HZ: the unit of cpuacct.stat. 100 on every mainstream Linux build, but ask.
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The v1 controllers this module reads. Other mounts (cpuset, devices, freezer, net_cls,
# name=systemd...) are ignored, which is also why a named hierarchy such as `systemd` is
# never mistaken for a controller.
V1_CONTROLLERS = frozenset({"cpu", "cpuacct", "memory", "pids", "blkio"})

# errnos that mean "the cgroup is going or gone": ENOENT when opening a file of a removed
# directory, ENODEV when reading a kernfs file whose node was deactivated after open, ESRCH
# from some cgroup files of a dying cgroup. (A PSI file hidden by `cgroup.pressure` = 0, Linux
# 6.1+, gives the same: ENOENT to open, ENODEV to read an fd opened before.)
_VANISHED = frozenset({errno.ENOENT, errno.ENODEV, errno.ESRCH})

# errnos that say a file will never be readable in its hierarchy, whichever the cgroup and
# however often it is tried: EOPNOTSUPP (ENOTSUP on Linux) from every PSI file of a kernel with
# PSI disabled (psi_show(); RHEL/CentOS 9 build with CONFIG_PSI_DEFAULT_DISABLED and need psi=1),
# EINVAL and ENOSYS from a file whose kernel side refuses reads. Any other error (EACCES, EPERM,
# EIO, ...) may clear, so that file is tried again at the next read.
_NEVER = frozenset({errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS})

# cgroup stat files are a few KiB at most (memory.stat on v2 is ~1.5 KiB); one read of this
# size returns the whole seq_file, so a second read() is only needed when the buffer fills.
_READ_SIZE = 65536


class CgroupMode(enum.StrEnum):
    V1 = "v1"
    V2 = "v2"
    HYBRID = "hybrid"


@dataclass(frozen=True)
class CgroupLayout:
    """Where each hierarchy lives under one root.

    `v1` maps a controller to its hierarchy directory, with root-level symlinks resolved
    (so `cpu` and `cpuacct` of a combined mount map to the same `cpu,cpuacct` directory).
    `unified` is the cgroup2 hierarchy: the root itself (v2) or `<root>/unified` (hybrid).
    """

    root: str
    mode: CgroupMode
    v1: Mapping[str, str] = field(default_factory=dict, hash=False)
    unified: str | None = None
    unified_controllers: frozenset[str] = frozenset()

    def v2_has(self, controller: str) -> bool:
        """Whether a controller's files are to be read from the v2 hierarchy."""
        return self.unified is not None and controller not in self.v1 and controller in self.unified_controllers


@dataclass(frozen=True, slots=True)
class DeviceIO:
    """Block I/O of one cgroup on one device, as "MAJ:MIN". None: the kernel printed no such
    counter for the device (a cumulative counter is never taken for 0: that reads as a reset)."""

    device: str
    read_bytes: int | None = None
    write_bytes: int | None = None
    read_ops: int | None = None
    write_ops: int | None = None


@dataclass(frozen=True, slots=True)
class Pressure:
    """Cumulative PSI stall time in seconds: `some` task stalled, `full`: all non-idle tasks."""

    some_s: float | None = None
    full_s: float | None = None


@dataclass(frozen=True)
class CgroupStats:
    """One reading of one cgroup. None: the source file is absent (controller not mounted,
    not enabled for this cgroup, or a kernel too old to have it)."""

    path: str
    # CPU, seconds, cumulative
    cpu_usage_s: float | None = None
    cpu_user_s: float | None = None
    cpu_system_s: float | None = None
    # CFS bandwidth control, cumulative
    cpu_periods: int | None = None
    cpu_throttled_periods: int | None = None
    cpu_throttled_s: float | None = None
    # memory, bytes (gauges) and event counts (cumulative)
    memory_usage: int | None = None
    memory_limit: int | None = None  # None also when unlimited
    memory_working_set: int | None = None
    memory_rss: int | None = None  # v1 total_rss, v2 anon
    memory_cache: int | None = None  # v1 total_cache, v2 file
    memory_swap: int | None = None  # v1 total_swap (swap accounting on), v2 memory.swap.current
    memory_mapped_file: int | None = None  # v1 total_mapped_file, v2 file_mapped
    memory_pgfault: int | None = None  # all faults, minor and major
    memory_pgmajfault: int | None = None
    memory_failcnt: int | None = None  # v1 memory.failcnt
    memory_events_max: int | None = None  # v2 memory.events max
    memory_oom_events: int | None = None  # v2 memory.events oom
    memory_oom_kills: int | None = None  # v2 memory.events oom_kill, v1 memory.oom_control oom_kill
    # pids
    pids_current: int | None = None
    pids_limit: int | None = None  # None also when "max"
    # block I/O per device; None: no blkio/io source, (): a source with no device with figures yet
    io: tuple[DeviceIO, ...] | None = None
    # PSI
    cpu_pressure: Pressure | None = None
    memory_pressure: Pressure | None = None
    io_pressure: Pressure | None = None
    # v1 controllers whose hierarchy is mounted but has no directory at this cgroup's path there:
    # their figures are None for that reason (a wrong path, or a cgroup the runtime did not create
    # in that hierarchy). The unified hierarchy of a hybrid host is never named (PSI only, and
    # many cgroups have no directory there).
    absent: tuple[str, ...] = ()


# --- pure parsers: text in, values out, no I/O ---------------------------------------------
#
# Every parser takes whatever a file held, torn or not, and never raises: it returns what it
# can and leaves the rest absent (None, or a key not in the result). A value is a count of at
# most 20 decimal digits (u64: 2**64-1 has 20), anything else is no value: a cgroup file never
# holds a negative or signed count, and int() would take "+1" and "1_0", raise on "²" (which
# str.isdigit() takes) and past 4300 digits. str.isdecimal() only takes what int() reads as
# digits (in latin-1 text, 0-9). Absent is never turned into 0, which for a cumulative counter
# would read as a reset.

_MAX_DIGITS = 20


def _uint(text: str) -> int | None:
    """A non-negative decimal count (surrounding whitespace allowed), else None."""
    value = text.strip()
    return int(value) if value.isdecimal() and len(value) <= _MAX_DIGITS else None


def parse_int(text: str) -> int | None:
    """A single-value file: "12345\\n". "max" (v2's "no limit"), an empty or torn file give None."""
    return _uint(text)


# The largest v1 "unlimited" value is PAGE_COUNTER_MAX * PAGE_SIZE, i.e. LONG_MAX rounded down
# to a page (9223372036854771712 with 4 KiB pages, a little less with 16/64 KiB pages). v1 has
# no "max" token, so anything this large cannot be a real limit: 2**62 bytes is 4 EiB.
V1_UNLIMITED = 1 << 62


def parse_v1_limit(text: str) -> int | None:
    """memory.limit_in_bytes and friends: a byte count, or None for "unlimited" (or no value)."""
    value = _uint(text)
    return None if value is None or value >= V1_UNLIMITED else value


def parse_flat_keyed(text: str) -> dict[str, int]:
    """A flat-keyed file ("key value" per line) to ints: memory.stat, cpu.stat,
    cpuacct.stat, memory.events, memory.oom_control. Keys without a count are left out."""
    out: dict[str, int] = {}
    for key, raw in parse_flat_keyed_raw(text).items():
        value = _uint(raw)
        if value is not None:
            out[key] = value
    return out


def parse_flat_keyed_raw(text: str) -> dict[str, str]:
    """Like parse_flat_keyed, with the values left as text (convert them with `_get`).

    The reader uses this form: v2 memory.stat has ~60 keys and ~6 are wanted, so converting
    only those saves most of the int() calls. A line is split at its first blank only (the
    cheapest way, measured): a value of another shape than one count (a torn line, trailing
    blanks, a kernel adding a field) stays as it is here and `_get` finds no count in it, so
    pairs never misalign. A key printed twice is left out: no kernel does, and neither copy
    can be told right (the last one winning would make the value jump between them).
    """
    out: dict[str, str] = {}
    twice: list[str] | None = None
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if not value:
            continue
        if key in out:
            twice = twice or []
            twice.append(key)
        out[key] = value
    for key in twice or ():
        out.pop(key, None)
    return out


def _get(stats: Mapping[str, str], *keys: str) -> int | None:
    """The first of `keys` present, as an int; None if none is, or if its value is no count
    (the next key is not tried then: v1 memory.stat's `total_x` is hierarchical, `x` is not)."""
    for key in keys:
        value = stats.get(key)
        if value is not None:
            return _uint(value)
    return None


def parse_cpuacct_stat(text: str, clk_tck: int = CLK_TCK) -> tuple[float | None, float | None]:
    """cpuacct.stat ("user N\\nsystem N\\n", in USER_HZ ticks) to (user, system) seconds,
    None for a key absent.

    Ticks are converted as they are, as runc and cAdvisor do. Since 2021 (about Linux 5.13)
    the kernel scales these ticks against the scheduler's precise runtime (cputime_adjust,
    as for /proc/<pid>/stat), and keeps both monotonic. Splitting cpuacct.usage by the
    tick ratio instead would make user+system equal the precise total, but the ratio moves
    between reads, so a split value can *decrease*: the telemetry bridge would take that
    for a counter reset. 10 ms resolution is the price of monotonic counters.
    """
    stats = parse_flat_keyed_raw(text)
    user, system = _get(stats, "user"), _get(stats, "system")
    return (None if user is None else user / clk_tck, None if system is None else system / clk_tck)


def _device(token: str) -> str | None:
    """A row's device as "MAJ:MIN" (%u:%u, as the kernel prints it; leading zeros dropped), or
    None if it names none. io.stat prints "(unknown)" for a request queue whose backing device
    has no dev_t (ZFS zvols, a disk being removed): such a row is no device, and several of
    them would all be "(unknown)"."""
    major, sep, minor = token.partition(":")
    if not (sep and major.isdecimal() and minor.isdecimal() and len(token) <= 21):
        return None
    if (major[0] == "0" and len(major) > 1) or (minor[0] == "0" and len(minor) > 1):
        return f"{int(major)}:{int(minor)}"
    return token


def _merge_rows(rows: Mapping[str, list[dict[str, int]]]) -> dict[str, dict[str, int]]:
    """Rows naming the same device, summed key by key.

    The kernel prints one row per request queue (blkg) of the cgroup, and two queues can name
    one device (a disk removed and added back while the old queue lingers): their sum is all
    the cgroup's I/O on that device, the same whichever order the rows come in (the last row
    winning would jump between them, reading as resets). A key is summed only if every row
    has it: a sum over some of the rows would jump when another row gains the key.
    """
    out: dict[str, dict[str, int]] = {}
    for device, found in rows.items():
        if len(found) == 1:
            out[device] = found[0]
            continue
        keys = set(found[0]).intersection(*found[1:])
        merged = {key: sum(row[key] for row in found) for key in keys}
        if merged:
            out[device] = merged
    return out


def parse_blkio_v1(text: str) -> dict[str, dict[str, int]]:
    """blkio.throttle.io_service_bytes / io_serviced (blkio-controller.rst):

        8:0 Read 4194304
        8:0 Write 8396800
        8:0 Sync 12591104
        8:0 Async 0
        8:0 Discard 0
        8:0 Total 12591104
        Total 12591104

    to {"8:0": {"read": 4194304, "write": 8396800}}. Sync/Async split the same I/O another
    way and Total sums it, so only Read and Write are kept; the last line (2 tokens, the
    all-device total) is skipped with them. A cgroup with no I/O has only "Total 0". A row
    whose device is not MAJ:MIN is skipped; rows repeating a device and operation are summed,
    as in io.stat (`_merge_rows` says why), unless one of them holds no count; a device with
    neither Read nor Write is left out.
    """
    out: dict[str, dict[str, int]] = {}
    torn: list[tuple[str, str]] = []
    for line in text.splitlines():
        tokens = line.split()
        if len(tokens) != 3:
            continue
        op = _BLKIO_OPS.get(tokens[1])
        device = _device(tokens[0]) if op is not None else None
        if device is None or op is None:
            continue
        value = _uint(tokens[2])
        if value is None:
            torn.append((device, op))
            continue
        ops = out.setdefault(device, {})
        ops[op] = ops.get(op, 0) + value
    for device, op in torn:  # one row of several without a count: their sum would be short
        out.get(device, {}).pop(op, None)
    return {device: ops for device, ops in out.items() if ops}


_BLKIO_OPS = {"Read": "read", "Write": "write"}


def parse_io_stat(text: str) -> dict[str, dict[str, int]]:
    """v2 io.stat, a nested-keyed file (cgroup-v2.rst):

        8:16 rbytes=1459200 wbytes=314773504 rios=192 wios=353 dbytes=0 dios=0

    to {"8:16": {"rbytes": 1459200, ...}}. Keys are kept as the kernel names them; newer
    kernels append keys (dbytes/dios in 5.x, cost.* with iocost) that callers ignore.

    The kernel prints a device's name before its figures and the figures only once it has any
    (blkcg_print_one_stat), so a row may be a bare "252:0 ": it carries nothing and is left
    out, never taken for zeros (a counter going back to 0 reads as a reset). Kernels from the
    5.15 series until "blk-cgroup: always terminate io.stat lines" (2022) also left out that
    row's newline, putting several devices on one line ("252:0 259:0 rbytes=..."): so every
    token without "=" starts a row, wherever it is. Rows whose device is not MAJ:MIN
    ("(unknown)") are left out with their keys; rows repeating a device are summed
    (`_merge_rows`).
    """
    rows: dict[str, list[dict[str, int]]] = {}
    device: str | None = None  # the row being read (None: no device, its keys are skipped)
    values: dict[str, int] = {}
    twice: list[str] = []
    for token in [*text.split(), "(end)"]:  # a last non-device name, so the last row ends too
        key, sep, raw = token.partition("=")
        if not sep:  # a device name: the row before it ends
            for repeated in twice:
                values.pop(repeated, None)
            if device is not None and values:
                rows.setdefault(device, []).append(values)
            device, values, twice = _device(token), {}, []
        elif device is not None and key and raw.isdecimal() and len(raw) <= _MAX_DIGITS:  # `_uint`, inlined
            if key in values:  # given twice in a row: neither is the figure
                twice.append(key)
            values[key] = int(raw)
        # else: iocost's cost.* values are fractions, and a torn token is no count
    return _merge_rows(rows)


def parse_pressure(text: str) -> Pressure | None:
    """A PSI file (Documentation/accounting/psi.rst):

        some avg10=0.00 avg60=0.00 avg300=0.00 total=639671
        full avg10=0.00 avg60=0.00 avg300=0.00 total=639671

    to the `total=` stall times, microseconds to seconds; None when neither line gives one
    (an empty file). The avg* figures are the kernel's own moving averages; the cumulative
    totals are what a counter should carry (backends derive any rate). The `full` line of
    cpu.pressure exists from Linux 5.13 on. A line kind given twice is left out.
    """
    totals: dict[str, int | None] = {}
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        if kind != "some" and kind != "full":
            continue
        before, sep, total = rest.partition("total=")  # the avg* figures are not counts
        alone = sep and (not before or before[-1] == " ") and kind not in totals
        totals[kind] = _uint(total) if alone else None  # "total=" twice: _uint finds no count
    some, full = totals.get("some"), totals.get("full")
    if some is None and full is None:
        return None
    return Pressure(None if some is None else some / 1e6, None if full is None else full / 1e6)


def parse_procs(text: str) -> list[int]:
    """cgroup.procs: one pid per line (unordered; a pid may repeat in v1). A token that is no
    pid (a torn last line) is skipped."""
    return [pid for pid in map(_uint, text.split()) if pid is not None]


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """/proc/<pid>/cgroup ("hierarchy-id:controllers:path" per line) to {controller: path}.

        4:memory:/nest/a/ctr          -> {"memory": "/nest/a/ctr"}
        2:cpu,cpuacct:/ctr            -> {"cpu": "/ctr", "cpuacct": "/ctr"}
        0::/ctr                       -> {"": "/ctr"}           (the cgroup2 hierarchy)
        1:name=systemd:/ctr           -> {"name=systemd": "/ctr"}

    Paths are as the reader's cgroup namespace sees them, which is how cgroupfs mounted in that
    namespace lays them out. A v2 path marked " (deleted)" (the process sits in a removed cgroup)
    and a path with ".." are left out.
    """
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3 or parts[2].endswith(" (deleted)"):
            continue
        try:
            path = normalize_path(parts[2])
        except ValueError:
            continue
        for controller in parts[1].split(",") if parts[1] else [""]:
            out[controller] = path
    return out


def proc_cgroup_paths(pid: int, proc_dir: str = "/proc") -> dict[str, str]:
    """Where a process sits in each hierarchy: `parse_proc_cgroup` of `<proc_dir>/<pid>/cgroup`.

    Raises FileNotFoundError when the process is gone, another OSError if the file cannot be read.
    """
    text = _read_file(f"{proc_dir}/{pid}/cgroup")
    if text is None:
        raise FileNotFoundError(errno.ENOENT, "no such process", f"{proc_dir}/{pid}/cgroup")
    return parse_proc_cgroup(text)


def working_set(usage: int, inactive_file: int | None) -> int | None:
    """What cAdvisor and the kubelet call the working set: usage minus inactive file pages
    (the page cache the kernel would drop first), floored at 0 because the two figures are
    not read atomically and inactive_file can momentarily exceed usage. None without
    inactive_file (a memory.stat torn or without the key): taking it for 0 would make the
    working set jump up to the whole usage for one reading."""
    if inactive_file is None:
        return None
    return max(0, usage - inactive_file)


# --- layout ---------------------------------------------------------------------------------


def _is_hierarchy(path: str) -> bool:
    # Every cgroup directory, v1 or v2, has cgroup.procs; a stray directory does not.
    return os.path.isfile(os.path.join(path, "cgroup.procs"))


def _read_controllers(path: str) -> frozenset[str]:
    try:
        with open(path, encoding="ascii") as f:
            return frozenset(f.read().split())
    except OSError:
        return frozenset()


def detect_layout(root: str = DEFAULT_ROOT) -> CgroupLayout:
    """Find the cgroup hierarchies under `root`.

    Raises FileNotFoundError (an OSError, as for any missing source file) when there is none:
    the collector turns it into SourceUnavailable, a CLI into a warning.
    """
    if os.path.isfile(os.path.join(root, "cgroup.controllers")):
        return CgroupLayout(root, CgroupMode.V2, {}, root, _read_controllers(os.path.join(root, "cgroup.controllers")))
    entries = sorted(os.listdir(root))  # OSError: no such root, or not a directory
    v1: dict[str, str] = {}
    exact: set[str] = set()
    unified: str | None = None
    for name in entries:
        path = os.path.join(root, name)
        if name == "unified":
            if os.path.isfile(os.path.join(path, "cgroup.controllers")):
                unified = path
            continue
        if not _is_hierarchy(path):
            continue
        # "cpu,cpuacct" serves both; a "cpu" entry (usually a symlink to it) names one. The
        # exact name wins, and both resolve to the same directory anyway.
        for controller in name.split(","):
            if controller not in V1_CONTROLLERS:
                continue
            if controller in exact:
                continue
            v1[controller] = os.path.realpath(path)
            if controller == name:
                exact.add(controller)
    if not v1 and unified is None:
        raise FileNotFoundError(errno.ENOENT, "no cgroup hierarchy", root)
    if unified is None:
        return CgroupLayout(root, CgroupMode.V1, v1)
    controllers = _read_controllers(os.path.join(unified, "cgroup.controllers"))
    return CgroupLayout(root, CgroupMode.HYBRID, v1, unified, controllers)


def normalize_path(path: str) -> str:
    """A cgroup path as "/a/b" ("/" for the root). Refuses "..", which could leave the tree."""
    if "\0" in path:
        raise ValueError(f"cgroup path {path!r} contains NUL")
    parts = [p for p in path.split("/") if p and p != "."]
    if ".." in parts:
        raise ValueError(f"cgroup path {path!r} contains '..'")
    return "/" + "/".join(parts)


def _join(hierarchy: str, path: str) -> str:
    return hierarchy if path == "/" else hierarchy + path


# --- listing --------------------------------------------------------------------------------


def _walk_hierarchies(layout: CgroupLayout) -> list[str]:
    """The hierarchies list_cgroups walks: memory and cpuacct (v1), else the unified one."""
    dirs = [layout.v1[c] for c in ("memory", "cpuacct") if c in layout.v1]
    if not dirs and layout.unified is not None:
        dirs = [layout.unified]
    return list(dict.fromkeys(dirs))  # a combined mount must not be walked twice


def list_cgroups(
    layout: CgroupLayout, max_cgroups: int = DEFAULT_MAX_CGROUPS, failures: FileFailures | None = None
) -> list[str]:
    """Every cgroup path, sorted ("/" first, parents before children).

    Walks the memory and cpuacct hierarchies on v1 (a cgroup may exist in one only: systemd
    creates memory cgroups only for units with memory accounting), the unified one on v2.
    Symlinks are not followed: cgroupfs has none, and a recorded or bind-mounted tree could
    loop. Stops at `max_cgroups` paths, logging that it did. A directory that cannot be listed
    (EACCES) is listed without its children, and said (once per `failures`, else per call):
    the rest of the host is listed.

    Cost: a directory whose link count is 2 has no subdirectory (cgroupfs, like ext4 and tmpfs,
    counts 2 + subdirectories, kept current at every stat), so it is not listed: a leaf costs one
    lstat from its parent's listing instead of reading its ~20-30 file entries. Any other count
    (btrfs and merged overlayfs directories say 1) is listed.
    """
    if max_cgroups < 1:
        raise ValueError("max_cgroups: must be >= 1")
    said = failures if failures is not None else FileFailures()
    found: set[str] = set()
    truncated = False
    for hierarchy in _walk_hierarchies(layout):
        stack = ["/"]
        while stack:
            rel = stack.pop()
            if rel not in found:
                if len(found) >= max_cgroups:
                    truncated = True
                    break
                found.add(rel)
            try:
                with os.scandir(_join(hierarchy, rel)) as it:
                    children = [e for e in it if e.is_dir(follow_symlinks=False)]
            except (FileNotFoundError, NotADirectoryError):
                continue  # removed while walking: churn
            except OSError as exc:
                said.failed(hierarchy, rel, _join(hierarchy, rel), exc)
                continue
            prefix = "" if rel == "/" else rel
            below = []  # directories to list, pushed so that they are listed in name order
            for entry in sorted(children, key=lambda e: e.name):
                path = f"{prefix}/{entry.name}"
                try:
                    leaf = entry.stat(follow_symlinks=False).st_nlink == 2
                except OSError:
                    leaf = False  # gone (skipped when listed) or unreadable (said when listed)
                if leaf and path in found:
                    continue  # seen in an earlier hierarchy, nothing below it
                if leaf:
                    if len(found) >= max_cgroups:
                        truncated = True
                        break
                    found.add(path)
                else:
                    below.append(path)
            if truncated:
                break
            stack.extend(reversed(below))
        if truncated:
            break
    if truncated:
        log.warning("cgroup listing stopped at %d cgroups (max_cgroups) under %s", max_cgroups, layout.root)
    return sorted(found)


class CgroupTree:
    """The cgroup paths `list_cgroups` gives, kept current between rounds with inotify.

    `list()` returns the same sorted paths as `list_cgroups(layout, max_cgroups, failures)`. The
    first call walks the hierarchies once, putting an inotify watch (IN_CREATE, IN_DELETE,
    IN_MOVED_FROM, IN_MOVED_TO, IN_ONLYDIR) on each cgroup directory before deciding whether it
    has children; later calls read the queued events and walk only the directories created since
    (a directory's mtime is no help: cgroupfs does not change it when a child is made). Removed
    directories are forgotten and their watches removed (a kernfs directory's watch outlives its
    rmdir otherwise, and counts against the watch limit).

    A full walk (watches set anew) replaces the events in the round after: the queue overflowed
    (IN_Q_OVERFLOW), a watch could not be set (EACCES...), a cgroup was renamed, the listing was
    truncated at `max_cgroups`, or `full_walk_every` rounds went by. The last is a safety net for
    directories made through another mount of the same hierarchy (a container's cgroup-namespace
    mount has its own superblock, whose mkdirs our watches do not see). When the kernel refuses
    more watches (ENOSPC: `fs.inotify.max_user_watches`, or `max_user_instances`) it is said
    once and every round is a full walk from then on, as it is where inotify is unavailable (no
    `inotify_simple`, a kernel without it).

    Counters: `full_walks`, their CPU `full_walk_cpu_s`, and `rounds`. Not thread-safe: one caller (the discovery loop).
    """

    _MASK = 0x100 | 0x200 | 0x40 | 0x80 | 0x1000000  # IN_CREATE|IN_DELETE|IN_MOVED_FROM|IN_MOVED_TO|IN_ONLYDIR
    _ISDIR, _OVERFLOW, _IGNORED, _MOVED = 0x40000000, 0x4000, 0x8000, 0x40 | 0x80

    def __init__(
        self,
        layout: CgroupLayout,
        max_cgroups: int = DEFAULT_MAX_CGROUPS,
        failures: FileFailures | None = None,
        *,
        full_walk_every: int = 60,
        inotify: bool = True,
    ) -> None:
        if max_cgroups < 1:
            raise ValueError("max_cgroups: must be >= 1")
        self.layout = layout
        self.max_cgroups = max_cgroups
        self.failures = failures if failures is not None else FileFailures()
        self.full_walk_every = full_walk_every
        self._hierarchies = _walk_hierarchies(layout)
        self._use_inotify = inotify
        self._inotify: Any = None
        self._wds: dict[int, tuple[int, str]] = {}  # watch -> (hierarchy index, cgroup path)
        self._dirs: list[dict[str, int]] = [{} for _ in self._hierarchies]  # per hierarchy: path -> watch
        self._sorted: list[str] | None = None
        self._since_full = 0
        self._dirty = True  # the next round walks everything
        self.rounds = 0
        self.full_walks = 0
        self.full_walk_cpu_s = 0.0  # the CPU (thread time) of the full walks, together

    @property
    def watching(self) -> bool:
        """Whether rounds are answered from inotify events (False: every round walks)."""
        return self._inotify is not None

    def close(self) -> None:
        """Drop the watches (closing the inotify descriptor removes them all at once)."""
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        self._wds.clear()
        for dirs in self._dirs:
            dirs.clear()
        self._sorted = None
        self._dirty = True

    def list(self) -> list[str]:
        """Every cgroup path, sorted ("/" first, parents before children), as `list_cgroups`."""
        self.rounds += 1
        if not self._use_inotify:
            self.full_walks += 1
            return list_cgroups(self.layout, self.max_cgroups, self.failures)
        if not self._dirty and self._inotify is not None:
            self._since_full += 1
            if self._since_full >= self.full_walk_every:
                self._dirty = True
            else:
                self._apply(self._inotify.read(timeout=0))
        if self._dirty or self._inotify is None:
            self._full()
        if not self._use_inotify:  # given up during this round's walk
            return list_cgroups(self.layout, self.max_cgroups, self.failures)
        if self._sorted is None:
            found = set().union(*self._dirs)
            if len(found) > self.max_cgroups:
                self._give_up(f"more than {self.max_cgroups} cgroups (max_cgroups)")
                return list_cgroups(self.layout, self.max_cgroups, self.failures)
            self._sorted = sorted(found)
        return self._sorted

    # -- the full walk, watches set before each directory is listed

    def _full(self) -> None:
        self.full_walks += 1
        started = time.thread_time()
        self._since_full = 0
        self.close()
        self._dirty = False
        try:
            from inotify_simple import INotify  # type: ignore[import-untyped]

            self._inotify = INotify(nonblocking=True)
        except (ImportError, OSError) as exc:
            self._give_up(f"inotify unavailable ({exc})")
            return
        for index in range(len(self._hierarchies)):
            if not self._add_tree(index, "/"):
                break
        self.full_walk_cpu_s += time.thread_time() - started

    def _give_up(self, why: str) -> None:
        """Walk every round from now on (list() returns list_cgroups)."""
        log.warning("cgroup discovery: %s; walking the cgroup hierarchies every round instead", why)
        self.close()
        self._use_inotify = False

    def _watch(self, index: int, rel: str) -> int | None:
        """Watch one directory; None if it is gone. A refused watch makes the next round walk."""
        hierarchy = self._hierarchies[index]
        try:
            wd: int = self._inotify.add_watch(_join(hierarchy, rel), self._MASK)
        except (FileNotFoundError, NotADirectoryError):
            return None  # removed meanwhile: churn
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                self._give_up(
                    f"more than fs.inotify.max_user_watches directories to watch (at {sum(map(len, self._dirs))})"
                )
                return None
            self.failures.failed(hierarchy, rel, _join(hierarchy, rel), exc)
            self._dirty = True
            return None
        self._wds[wd] = (index, rel)
        dirs = self._dirs[index]
        dirs[rel] = wd
        self._sorted = None
        if len(dirs) > self.max_cgroups:
            self._give_up(f"more than {self.max_cgroups} cgroups (max_cgroups)")
            return None
        return wd

    def _add_tree(self, index: int, top: str) -> bool:
        """Watch `top` and every directory below it. False when inotify was given up."""
        hierarchy = self._hierarchies[index]
        dirs = self._dirs[index]
        stack = [top]
        while stack:
            rel = stack.pop()
            if rel in dirs:
                continue
            if self._watch(index, rel) is None:
                if self._inotify is None:
                    return False
                continue
            # Watched before listing: a child made from here on is an event, one made before is listed.
            try:
                with os.scandir(_join(hierarchy, rel)) as it:
                    children = [e for e in it if e.is_dir(follow_symlinks=False)]
            except (FileNotFoundError, NotADirectoryError):
                self._forget(index, rel)
                continue
            except OSError as exc:
                self.failures.failed(hierarchy, rel, _join(hierarchy, rel), exc)
                continue
            prefix = "" if rel == "/" else rel
            for entry in children:
                path = f"{prefix}/{entry.name}"
                if path in dirs:
                    continue
                try:
                    leaf = entry.stat(follow_symlinks=False).st_nlink == 2  # see list_cgroups
                except OSError:
                    leaf = False
                if not leaf:
                    stack.append(path)
                    continue
                # a leaf: watched, then its link count checked again, so a child made in between
                # is either an event or seen here
                if self._watch(index, path) is None:
                    if self._inotify is None:
                        return False
                    continue
                try:
                    still = os.lstat(_join(hierarchy, path)).st_nlink == 2
                except OSError:
                    self._forget(index, path)
                    continue
                if not still:
                    del dirs[path]
                    stack.append(path)
        return True

    def _forget(self, index: int, rel: str) -> None:
        """Drop a removed directory and its watch. A cgroup directory can only be removed once it
        has no child cgroup, so each removal below it came first, as its own event."""
        wd = self._dirs[index].pop(rel, None)
        if wd is None:
            return
        self._wds.pop(wd, None)
        self._sorted = None
        try:
            self._inotify.rm_watch(wd)
        except OSError:
            pass  # already dropped by the kernel

    def _apply(self, events: Iterable[Any]) -> None:
        for wd, mask, _cookie, name in events:
            if mask & self._OVERFLOW or mask & self._MOVED:
                self._dirty = True  # a lost event, or a renamed subtree whose watches name old paths
                return
            if mask & self._IGNORED:
                self._wds.pop(wd, None)
                continue
            where = self._wds.get(wd)
            if where is None or not mask & self._ISDIR:
                continue
            index, rel = where
            path = f"{'' if rel == '/' else rel}/{name}"
            if mask & 0x200:  # IN_DELETE
                self._forget(index, path)
            elif mask & 0x100 and not self._add_tree(index, path):  # IN_CREATE; False: inotify given up
                return
            if self._dirty:
                return


# --- reading --------------------------------------------------------------------------------


def _read_file(path: str, dir_fd: int | None = None) -> str | None:
    """The whole file (`path` relative to `dir_fd` if given), or None if it (or its cgroup) does
    not exist or is going away."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in _VANISHED:
            return None
        raise
    try:
        data = os.read(fd, _READ_SIZE)
        if len(data) == _READ_SIZE:  # a seq_file larger than the buffer: keep reading
            chunks = [data]
            while chunk := os.read(fd, _READ_SIZE):
                chunks.append(chunk)
            data = b"".join(chunks)
    except OSError as exc:
        if exc.errno in _VANISHED:
            return None
        raise
    finally:
        os.close(fd)
    # latin-1 never fails and these files are ASCII; it is the cheapest decoder
    return data.decode("latin-1")


class FileFailures:
    """What reading an optional cgroup file failed with, remembered across reads.

    Every file `read_stats` reads is optional: one that fails with an error other than "gone"
    (`_VANISHED`) leaves its figures None, and the cgroup's other figures are read as usual.
    Each (hierarchy, file, errno) is logged once. Where the errno says the file will never be
    readable (`_NEVER`: EOPNOTSUPP from every PSI file of a PSI-disabled kernel) the file is not
    tried again in that hierarchy, for any cgroup, so such a host costs nothing per scrape.
    Keep one per collector (it is thread-safe); without one, each `read_stats` call says what it
    met and tries everything again.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._never: set[tuple[str, str]] = set()  # (hierarchy, file name)
        self._said: set[tuple[str, str, int | None]] = set()

    def never(self, hierarchy: str, name: str) -> bool:
        """Whether this file is known never to be readable in this hierarchy."""
        return (hierarchy, name) in self._never

    def unreadable(self) -> list[tuple[str, str]]:
        """The (hierarchy, file name) pairs given up on, sorted."""
        with self._lock:
            return sorted(self._never)

    def failed(self, hierarchy: str, name: str, path: str, exc: OSError) -> None:
        """Remember that reading `path` (file `name` of a cgroup in `hierarchy`) raised `exc`."""
        never = exc.errno in _NEVER
        with self._lock:
            if never:
                self._never.add((hierarchy, name))
            said = (hierarchy, name, exc.errno)
            if said in self._said:
                return
            self._said.add(said)
        why = _errno_name(exc)
        hint = " (PSI is disabled on this kernel: boot with psi=1)" if name.endswith(".pressure") and never else ""
        then = f"not read again under {hierarchy}" if never else "left out while it fails"
        log.warning("cannot read %s (%s, %s)%s: %s", path, why, exc.strerror or exc, hint, then)


def _errno_name(exc: OSError) -> str:
    if exc.errno is None:
        return type(exc).__name__
    if exc.errno == errno.EOPNOTSUPP:  # == ENOTSUP on Linux, which errorcode names; the kernel says EOPNOTSUPP
        return "EOPNOTSUPP"
    return errno.errorcode.get(exc.errno, str(exc.errno))


class CgroupHandles:
    """What repeated reads of the same cgroups keep between scrapes (one per collector).

    - Directory descriptors (O_PATH) of the cgroup directories that `read_stats` reads several
      files from (v1 memory, pids and blkio; the one v2 directory): a file is then opened
      relative to it (openat) instead of through its whole path, ~3 µs less per file measured
      here. At most `budget` descriptors are held (default: half of RLIMIT_NOFILE, whose soft
      limit is raised to the hard one); the directories past it are read by path, as without
      handles. A descriptor whose directory was removed (and perhaps made again) answers ENOENT:
      it is dropped and the read is made again by path. `forget(path, paths)` closes them.
    - Where each cgroup is read (its directories per controller), computed once per cgroup.
    - Secondary directories found absent (`unified/<path>` on a hybrid host, which a runc
      container never has: PSI): not tried again for `recheck` reads, which saves a failed open
      and two stats per cgroup and scrape; one made later is read from the next check.

    Thread-safe for the collector's use (a call abandoned after its timeout may still be reading).
    """

    def __init__(self, budget: int | None = None, recheck: int = 30) -> None:
        if budget is None:
            budget = max(0, open_files_limit() // 2 - 256)
        self.budget = budget
        self.recheck = recheck
        self._lock = threading.Lock()
        self._fds: dict[str, int] = {}
        self._absent: dict[str, int] = {}  # secondary directory -> reads left before it is checked again
        self._plans: dict[tuple[str, tuple[tuple[str, str], ...] | None], _Plan] = {}

    def plan(self, layout: CgroupLayout, path: str, paths: Mapping[str, str] | None) -> _Plan:
        """Where a cgroup is read (computed once per cgroup; ValueError for a path with "..")."""
        key = (path, tuple(sorted(paths.items())) if paths else None)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = _plan(layout, path, paths)
        return plan

    def fd(self, directory: str) -> int | None:
        """The directory's descriptor, opened now if the budget allows; None: read by path."""
        fd = self._fds.get(directory)
        if fd is not None or len(self._fds) >= self.budget:
            return fd
        try:
            fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None
        with self._lock:
            if directory in self._fds or len(self._fds) >= self.budget:
                os.close(fd)
                return self._fds.get(directory)
            self._fds[directory] = fd
        return fd

    def stale(self, directory: str, fd: int) -> bool:
        """Whether `fd` no longer names `directory` (removed, or made again): then it is dropped."""
        try:
            same = os.stat(fd).st_ino == os.stat(directory).st_ino
        except OSError:
            same = False
        if not same:
            self.drop(directory)
        return not same

    def drop(self, directory: str) -> None:
        with self._lock:
            fd = self._fds.pop(directory, None)
        if fd is not None:
            os.close(fd)

    def skip(self, directory: str) -> bool:
        """Whether an absent secondary directory is not to be tried this time."""
        left = self._absent.get(directory)
        if left is None:
            return False
        if left <= 0:
            self._absent.pop(directory, None)
            return False
        self._absent[directory] = left - 1
        return True

    def absent(self, directory: str) -> None:
        self._absent[directory] = self.recheck

    def forget(self, path: str, paths: Mapping[str, str] | None = None) -> None:
        """A cgroup no longer read (as given to `read_stats`): close its descriptors, drop what
        was remembered."""
        plan = self._plans.pop((path, tuple(sorted(paths.items())) if paths else None), None)
        for directory in plan.dirs.values() if plan is not None else ():
            self.drop(directory)
            self._absent.pop(directory, None)

    def held(self) -> int:
        """Descriptors held now."""
        return len(self._fds)

    def close(self) -> None:
        with self._lock:
            fds, self._fds = list(self._fds.values()), {}
        for fd in fds:
            os.close(fd)
        self._absent.clear()
        self._plans.clear()


class _Reader:
    """Reads the files of one cgroup across its hierarchy directories, telling a missing
    file on a live cgroup (None) from a cgroup that is gone (WorkloadGone), and an unreadable
    file (None, told to `failures`) from both.

    The cgroup is gone when none of its directories in the *primary* hierarchies exists:
    the v1 controllers (v1, hybrid), else the unified one (v2). On a hybrid host the unified
    directory is secondary (PSI only): a runc container has none, and a systemd scope can
    outlive the v1 cgroups a runtime removed.

    Liveness is only checked after a read fails, so a live cgroup with every file present
    costs no extra syscall. A directory found missing is remembered and its other files are
    not tried (no `unified/<path>` on a hybrid host: one failed open instead of three).
    `error` keeps the first error other than "gone", `failed` whether the last read met one,
    `answered` whether any file was read.
    """

    __slots__ = (
        "_absent",
        "_alive",
        "_failures",
        "_handles",
        "_hierarchy",
        "_primary",
        "_secondary",
        "_with_fd",
        "answered",
        "error",
        "failed",
        "path",
    )

    def __init__(
        self,
        path: str,
        primary: Iterable[str],
        hierarchy: Mapping[str, str] | None = None,
        failures: FileFailures | None = None,
        handles: CgroupHandles | None = None,
        with_fd: Iterable[str] = (),
        secondary: str | None = None,
    ) -> None:
        self.path = path
        self._primary = list(dict.fromkeys(primary))
        self._hierarchy = hierarchy or {}  # cgroup directory -> its hierarchy's root
        self._failures = failures
        self._handles = handles
        self._with_fd = frozenset(with_fd) if handles is not None else frozenset()  # read through a descriptor
        self._secondary = secondary if handles is not None else None  # absence remembered by `handles`
        self._absent: set[str] = set()
        self._alive = False  # a primary directory was seen to exist after a failed read
        self.error: OSError | None = None
        self.failed = False
        self.answered = False

    def missing(self, directory: str) -> bool:
        """Whether a read found this directory absent (a file of an absent cgroup was asked for)."""
        return directory in self._absent

    def read(self, directory: str, name: str) -> str | None:
        self.failed = False
        if directory in self._absent:
            return None
        handles = self._handles
        if directory == self._secondary and handles is not None and handles.skip(directory):
            self._absent.add(directory)
            return None
        hierarchy = self._hierarchy.get(directory, directory)
        if self._failures is not None and self._failures.never(hierarchy, name):
            self.failed = True
            return None
        try:
            fd = handles.fd(directory) if handles is not None and directory in self._with_fd else None
            if fd is None:
                text = _read_file(f"{directory}/{name}")
            else:
                text = _read_file(name, fd)
                if text is None and handles is not None and handles.stale(directory, fd):
                    text = _read_file(f"{directory}/{name}")  # removed, or made anew: by path
        except OSError as exc:  # not "gone": the file is there and cannot be read
            if self._failures is not None:
                self._failures.failed(hierarchy, name, f"{directory}/{name}", exc)
            self.error = self.error or exc
            self.failed = True
            return None
        if text is None:
            self._missed(directory)
        else:
            self.answered = True
        return text

    def _missed(self, directory: str) -> None:
        if os.path.isdir(directory):
            return  # the file is absent, the cgroup is not: its field stays None
        self._absent.add(directory)
        if directory == self._secondary and self._handles is not None:
            self._handles.absent(directory)
        if self._alive:
            return
        for primary in self._primary:
            if primary not in self._absent:
                if os.path.isdir(primary):
                    self._alive = True
                    return
                self._absent.add(primary)
        raise WorkloadGone(f"cgroup {self.path} is gone")


def _normalize_paths(paths: Mapping[str, str] | None) -> dict[str, str]:
    return {controller: normalize_path(p) for controller, p in paths.items()} if paths else {}


def _cgroup_dirs(
    layout: CgroupLayout, path: str, paths: Mapping[str, str] | None = None
) -> tuple[dict[str, str], list[str]]:
    """The cgroup's directory per controller ("unified" for v2), and the primary ones.

    `paths` (normalized) overrides `path` per controller, "" being the unified hierarchy.
    """
    paths = paths or {}
    dirs = {controller: _join(hierarchy, paths.get(controller, path)) for controller, hierarchy in layout.v1.items()}
    primary = list(dirs.values())
    if layout.unified is not None:
        dirs["unified"] = _join(layout.unified, paths.get("", path))
        if not primary:
            primary = [dirs["unified"]]
    return dirs, primary


def _fd_dirs(layout: CgroupLayout, dirs: Mapping[str, str]) -> list[str]:
    """The directories `read_stats` reads several files from: worth a descriptor (CgroupHandles)."""
    if layout.mode is CgroupMode.V2:
        return [dirs["unified"]] if "unified" in dirs else []
    return [dirs[c] for c in ("memory", "pids", "blkio") if c in dirs]


class _Plan(NamedTuple):
    """Where `read_stats` reads one cgroup: what depends only on the layout and the paths."""

    path: str  # normalized
    dirs: dict[str, str]  # controller ("unified" for v2) -> directory
    primary: list[str]
    hierarchy: dict[str, str]  # directory -> its hierarchy's root
    fd_dirs: frozenset[str]  # worth a directory descriptor (CgroupHandles)
    secondary: str | None  # a hybrid host's unified/<path>
    controllers: tuple[str, ...]  # the v1 controllers, sorted (for `absent`)


def _plan(layout: CgroupLayout, path: str, paths: Mapping[str, str] | None) -> _Plan:
    path = normalize_path(path)
    dirs, primary = _cgroup_dirs(layout, path, _normalize_paths(paths))
    return _Plan(
        path,
        dirs,
        primary,
        _hierarchies(layout, dirs),
        frozenset(_fd_dirs(layout, dirs)),
        dirs.get("unified") if layout.mode is CgroupMode.HYBRID else None,
        tuple(sorted(layout.v1)),
    )


def _hierarchies(layout: CgroupLayout, dirs: Mapping[str, str]) -> dict[str, str]:
    """{cgroup directory: the root of its hierarchy}, for `dirs` from `_cgroup_dirs`."""
    roots = {**layout.v1, "unified": layout.unified} if layout.unified is not None else dict(layout.v1)
    return {directory: roots[controller] for controller, directory in dirs.items()}


def read_stats(
    layout: CgroupLayout,
    path: str,
    *,
    io: bool = True,
    pressure: bool = True,
    paths: Mapping[str, str] | None = None,
    failures: FileFailures | None = None,
    cpu_usage: bool = True,
    handles: CgroupHandles | None = None,
) -> CgroupStats:
    """Read one cgroup now. Raises WorkloadGone if it no longer exists in any hierarchy, and
    ValueError for a path with "..".

    `path` is the cgroup's path in every hierarchy, except where `paths` ({controller: path},
    "" for the unified hierarchy; e.g. `Workload.cgroups`) says otherwise. A mounted v1 hierarchy
    with no directory at the cgroup's path there is named in the result's `absent`.
    `io=False` / `pressure=False` skip the block I/O / PSI files (two and three reads).

    A file that cannot be read (an error other than "gone": EOPNOTSUPP, EINVAL, EACCES...) or
    holds no value leaves its figures None; `failures` remembers the errors across calls (see
    `FileFailures`). Only when no file at all could be read and one failed is that error raised
    (an OSError): the cgroup is unreadable, not one of its files.

    `cpu_usage=False`: v1's cpuacct.usage (the precise total, `cpu_usage_s`) is read only when
    cpuacct.stat gives no user/system split (one file less per cgroup for a caller that emits the
    split). `handles` (kept across calls, see `CgroupHandles`) reads through directory descriptors
    and skips a hybrid host's absent `unified/<path>` for a while; the figures are the same.
    """
    plan = handles.plan(layout, path, paths) if handles is not None else _plan(layout, path, paths)
    path, dirs, primary = plan.path, plan.dirs, plan.primary
    reader = _Reader(
        path,
        primary,
        plan.hierarchy,
        failures if failures is not None else FileFailures(),
        handles,
        plan.fd_dirs,
        plan.secondary,
    )
    unified = dirs.get("unified")
    values: dict[str, Any] = {}  # CgroupStats fields

    # -- CPU time. v1: cpuacct.usage is the scheduler's precise runtime in ns; v2: cpu.stat
    # always carries usage/user/system in µs, whether or not the cpu controller is enabled.
    v2_cpu_stat: dict[str, str] | None = None
    if "cpuacct" in dirs:
        text = reader.read(dirs["cpuacct"], "cpuacct.stat")
        if text is not None:
            values["cpu_user_s"], values["cpu_system_s"] = parse_cpuacct_stat(text)
        if cpu_usage or values.get("cpu_user_s") is None or values.get("cpu_system_s") is None:
            usage = _int_of(reader.read(dirs["cpuacct"], "cpuacct.usage"))
            values["cpu_usage_s"] = None if usage is None else usage / 1e9
    elif unified is not None:
        text = reader.read(unified, "cpu.stat")
        if text is not None:
            v2_cpu_stat = parse_flat_keyed_raw(text)
            for key, name in (
                ("usage_usec", "cpu_usage_s"),
                ("user_usec", "cpu_user_s"),
                ("system_usec", "cpu_system_s"),
            ):
                usec = _get(v2_cpu_stat, key)
                values[name] = None if usec is None else usec / 1e6

    # -- CFS bandwidth throttling. v1 cpu.stat has throttled_time in ns; v2 cpu.stat has
    # throttled_usec, present only where the cpu controller is enabled (each key absent: None).
    throttle: dict[str, str] | None = None
    throttled_key, throttled_scale = "throttled_time", 1e9
    if "cpu" in dirs:
        text = reader.read(dirs["cpu"], "cpu.stat")
        throttle = parse_flat_keyed_raw(text) if text is not None else None
    elif unified is not None and (v2_cpu_stat is not None or layout.v2_has("cpu")):
        if v2_cpu_stat is None and "cpuacct" in dirs:  # hybrid with cpuacct in v1 but cpu in v2
            text = reader.read(unified, "cpu.stat")
            v2_cpu_stat = parse_flat_keyed_raw(text) if text is not None else None
        throttle = v2_cpu_stat
        throttled_key, throttled_scale = "throttled_usec", 1e6
    if throttle is not None:
        values["cpu_periods"] = _get(throttle, "nr_periods")
        values["cpu_throttled_periods"] = _get(throttle, "nr_throttled")
        throttled = _get(throttle, throttled_key)
        values["cpu_throttled_s"] = None if throttled is None else throttled / throttled_scale

    # -- memory
    if "memory" in dirs:
        _read_memory_v1(reader, dirs["memory"], values)
    elif unified is not None and layout.v2_has("memory"):
        _read_memory_v2(reader, unified, values)

    # -- pids
    pids_dir = dirs.get("pids") or (unified if layout.v2_has("pids") else None)
    if pids_dir is not None:
        values["pids_current"] = _int_of(reader.read(pids_dir, "pids.current"))
        values["pids_limit"] = _int_of(reader.read(pids_dir, "pids.max"))  # "max": None

    # -- block I/O
    if io:
        if "blkio" in dirs:
            values["io"] = _read_blkio_v1(reader, dirs["blkio"])
        elif unified is not None and layout.v2_has("io"):
            text = reader.read(unified, "io.stat")
            if text is not None:
                stat = parse_io_stat(text)  # lines are not ordered: sort as for v1
                values["io"] = tuple(
                    DeviceIO(dev, v.get("rbytes"), v.get("wbytes"), v.get("rios"), v.get("wios"))
                    for dev, v in sorted(stat.items(), key=lambda item: _device_key(item[0]))
                    if v.keys() & _IO_STAT_KEYS  # a row with only dbytes/cost.* says nothing here
                )

    # -- PSI, from the v2 hierarchy only (PSI files exist there with or without controllers)
    if pressure and unified is not None:
        for resource in ("cpu", "memory", "io"):
            text = reader.read(unified, f"{resource}.pressure")
            if text is not None:
                values[f"{resource}_pressure"] = parse_pressure(text)

    absent = tuple(c for c in plan.controllers if reader.missing(dirs[c]))
    if absent and not any(os.path.isdir(d) for d in primary):
        # removed while being read: a runtime deletes a container's hierarchies one at a time
        raise WorkloadGone(f"cgroup {path} is gone")
    if reader.error is not None and not reader.answered:
        raise reader.error
    return CgroupStats(path, **values, absent=absent)


_IO_STAT_KEYS = frozenset({"rbytes", "wbytes", "rios", "wios"})


def _int_of(text: str | None) -> int | None:
    """A single-value file's count, None if the file is absent or holds none ("max", torn)."""
    return None if text is None else parse_int(text)


def _read_memory_v1(reader: _Reader, directory: str, values: dict[str, Any]) -> None:
    usage = _int_of(reader.read(directory, "memory.usage_in_bytes"))
    values["memory_usage"] = usage
    text = reader.read(directory, "memory.limit_in_bytes")
    if text is not None:
        values["memory_limit"] = parse_v1_limit(text)
    text = reader.read(directory, "memory.stat")
    if text is not None:
        # usage_in_bytes is hierarchical, so the total_* (hierarchical) keys go with it;
        # the plain keys only count this cgroup's own pages. total_swap exists only with
        # swap accounting (CONFIG_MEMCG_SWAP, swapaccount=1).
        stat = parse_flat_keyed_raw(text)
        values["memory_rss"] = _get(stat, "total_rss", "rss")
        values["memory_cache"] = _get(stat, "total_cache", "cache")
        values["memory_swap"] = _get(stat, "total_swap", "swap")
        values["memory_mapped_file"] = _get(stat, "total_mapped_file", "mapped_file")
        values["memory_pgfault"] = _get(stat, "total_pgfault", "pgfault")
        values["memory_pgmajfault"] = _get(stat, "total_pgmajfault", "pgmajfault")
        if usage is not None:
            values["memory_working_set"] = working_set(usage, _get(stat, "total_inactive_file", "inactive_file"))
    values["memory_failcnt"] = _int_of(reader.read(directory, "memory.failcnt"))
    text = reader.read(directory, "memory.oom_control")
    if text is not None:
        # oom_kill_disable / under_oom are flags; oom_kill (Linux 4.13+) is the counter
        values["memory_oom_kills"] = _get(parse_flat_keyed_raw(text), "oom_kill")


def _read_memory_v2(reader: _Reader, directory: str, values: dict[str, Any]) -> None:
    usage = _int_of(reader.read(directory, "memory.current"))
    values["memory_usage"] = usage
    values["memory_limit"] = _int_of(reader.read(directory, "memory.max"))  # "max": None
    text = reader.read(directory, "memory.stat")
    if text is not None:
        stat = parse_flat_keyed_raw(text)
        values["memory_rss"] = _get(stat, "anon")
        values["memory_cache"] = _get(stat, "file")
        values["memory_mapped_file"] = _get(stat, "file_mapped")
        values["memory_pgfault"] = _get(stat, "pgfault")
        values["memory_pgmajfault"] = _get(stat, "pgmajfault")
        if usage is not None:
            values["memory_working_set"] = working_set(usage, _get(stat, "inactive_file"))
    values["memory_swap"] = _int_of(reader.read(directory, "memory.swap.current"))
    text = reader.read(directory, "memory.events")
    if text is not None:
        events = parse_flat_keyed_raw(text)
        values["memory_events_max"] = _get(events, "max")
        values["memory_oom_events"] = _get(events, "oom")
        values["memory_oom_kills"] = _get(events, "oom_kill")


def _read_blkio_v1(reader: _Reader, directory: str) -> tuple[DeviceIO, ...] | None:
    # The _recursive files include descendants, like every other figure here; older kernels
    # only have the plain ones. Observed on Linux 6.18 (the test host, see HOST-NOTES): a
    # cgroup without a throttle rule stays at "Total 0", which matches blk-throttle's 2022
    # change to bypass the bios of rule-less cgroups before they are counted (a fix was
    # proposed upstream in 2023). v1 has no other per-cgroup I/O statistics since the legacy
    # schedulers (CFQ's blkio.io_service_bytes) were removed in 5.0.
    # An unreadable _recursive file is not replaced by the plain one: its figures (this cgroup's
    # own I/O only) are not the same counter, and alternating between them would read as resets.
    data = reader.read(directory, "blkio.throttle.io_service_bytes_recursive")
    if data is None and not reader.failed:
        data = reader.read(directory, "blkio.throttle.io_service_bytes")
        ops = reader.read(directory, "blkio.throttle.io_serviced")
    else:
        ops = reader.read(directory, "blkio.throttle.io_serviced_recursive")
    if data is None and ops is None:
        return None
    # a device or an operation one file does not list is absent there, not 0
    nbytes = parse_blkio_v1(data) if data is not None else {}
    nops = parse_blkio_v1(ops) if ops is not None else {}
    none: dict[str, int] = {}
    return tuple(
        DeviceIO(
            dev,
            nbytes.get(dev, none).get("read"),
            nbytes.get(dev, none).get("write"),
            nops.get(dev, none).get("read"),
            nops.get(dev, none).get("write"),
        )
        for dev in sorted(nbytes.keys() | nops.keys(), key=_device_key)
    )


def _device_key(device: str) -> tuple[int, int]:
    major, _, minor = device.partition(":")
    return (int(major), int(minor)) if major.isdecimal() and minor.isdecimal() else (1 << 31, 0)


def cgroup_pids(layout: CgroupLayout, path: str, paths: Mapping[str, str] | None = None) -> list[int]:
    """The processes in a cgroup (cgroup.procs), from the first hierarchy that has it.

    `paths` overrides `path` per controller, as for `read_stats`. Raises WorkloadGone when the
    cgroup exists in no hierarchy. A hierarchy whose cgroup.procs cannot be read is passed over
    for the next; when none could be, the first error is raised, except EOPNOTSUPP, which is
    the kernel's answer for a threaded cgroup (cgroup v2: its processes belong to the threaded
    domain above it, whose cgroup.procs lists them): it has none of its own, [].
    """
    path = normalize_path(path)
    dirs, primary = _cgroup_dirs(layout, path, _normalize_paths(paths))
    order = [c for c in ("memory", "cpuacct", "pids", "cpu", "blkio", "unified") if c in dirs]
    reader = _Reader(path, primary)
    for controller in order:
        text = reader.read(dirs[controller], "cgroup.procs")
        if text is not None:
            return parse_procs(text)
    if reader.error is not None:
        if reader.error.errno == errno.EOPNOTSUPP:
            return []
        raise reader.error
    raise WorkloadGone(f"cgroup {path} has no cgroup.procs")


__all__ = [
    "CLK_TCK",
    "DEFAULT_MAX_CGROUPS",
    "DEFAULT_ROOT",
    "CgroupHandles",
    "CgroupLayout",
    "CgroupMode",
    "CgroupStats",
    "CgroupTree",
    "DeviceIO",
    "FileFailures",
    "Pressure",
    "cgroup_pids",
    "detect_layout",
    "list_cgroups",
    "normalize_path",
    "parse_blkio_v1",
    "parse_cpuacct_stat",
    "parse_flat_keyed",
    "parse_flat_keyed_raw",
    "parse_int",
    "parse_io_stat",
    "parse_pressure",
    "parse_proc_cgroup",
    "parse_procs",
    "parse_v1_limit",
    "proc_cgroup_paths",
    "read_stats",
    "working_set",
]
