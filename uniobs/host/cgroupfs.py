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

What is read, per cgroup (each file is optional; a missing file leaves its fields None):

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
cgroup that vanishes while being read raises `WorkloadGone`; see `_Reader`.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

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
# from some cgroup files of a dying cgroup.
_VANISHED = frozenset({errno.ENOENT, errno.ENODEV, errno.ESRCH})

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
    """Block I/O of one cgroup on one device, as "MAJ:MIN"."""

    device: str
    read_bytes: int = 0
    write_bytes: int = 0
    read_ops: int = 0
    write_ops: int = 0


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
    # block I/O per device; None: no blkio/io source, (): a source with no device yet
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


def parse_int(text: str) -> int | None:
    """A single-value file: "12345\\n". "max" (v2's "no limit") gives None."""
    value = text.strip()
    if value == "max":
        return None
    return int(value)


# The largest v1 "unlimited" value is PAGE_COUNTER_MAX * PAGE_SIZE, i.e. LONG_MAX rounded down
# to a page (9223372036854771712 with 4 KiB pages, a little less with 16/64 KiB pages). v1 has
# no "max" token, so anything this large cannot be a real limit: 2**62 bytes is 4 EiB.
V1_UNLIMITED = 1 << 62


def parse_v1_limit(text: str) -> int | None:
    """memory.limit_in_bytes and friends: a byte count, or None for "unlimited"."""
    value = int(text)
    return None if value >= V1_UNLIMITED else value


def parse_flat_keyed(text: str) -> dict[str, int]:
    """A flat-keyed file ("key value" per line) to ints: memory.stat, cpu.stat,
    cpuacct.stat, memory.events, memory.oom_control."""
    return {k: int(v) for k, v in parse_flat_keyed_raw(text).items()}


def parse_flat_keyed_raw(text: str) -> dict[str, str]:
    """Like parse_flat_keyed, with the values left as text.

    The reader uses this form: v2 memory.stat has ~60 keys and ~6 are wanted, so converting
    only those saves most of the int() calls. partition() per line costs ~1.5 µs more per
    memory.stat than one split() of the whole text zipped into pairs, but cannot misalign
    pairs if a kernel ever adds a line of another shape.
    """
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value:
            out[key] = value
    return out


def _get(stats: Mapping[str, str], *keys: str) -> int | None:
    """The first of `keys` present, as an int. v1 memory.stat: `total_x` then `x`."""
    for key in keys:
        value = stats.get(key)
        if value is not None:
            return int(value)
    return None


def parse_cpuacct_stat(text: str, clk_tck: int = CLK_TCK) -> tuple[float, float]:
    """cpuacct.stat ("user N\\nsystem N\\n", in USER_HZ ticks) to (user, system) seconds.

    Ticks are converted as they are, as runc and cAdvisor do. Since 2021 (about Linux 5.13)
    the kernel scales these ticks against the scheduler's precise runtime (cputime_adjust,
    as for /proc/<pid>/stat), and keeps both monotonic. Splitting cpuacct.usage by the
    tick ratio instead would make user+system equal the precise total, but the ratio moves
    between reads, so a split value can *decrease*: the telemetry bridge would take that
    for a counter reset. 10 ms resolution is the price of monotonic counters.
    """
    stats = parse_flat_keyed(text)
    return stats["user"] / clk_tck, stats["system"] / clk_tck


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
    all-device total) is skipped with them. A cgroup with no I/O has only "Total 0".
    """
    out: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        tokens = line.split()
        if len(tokens) != 3:
            continue
        device, op, value = tokens
        if op == "Read":
            out.setdefault(device, {})["read"] = int(value)
        elif op == "Write":
            out.setdefault(device, {})["write"] = int(value)
    return out


def parse_io_stat(text: str) -> dict[str, dict[str, int]]:
    """v2 io.stat, a nested-keyed file (cgroup-v2.rst):

        8:16 rbytes=1459200 wbytes=314773504 rios=192 wios=353 dbytes=0 dios=0

    to {"8:16": {"rbytes": 1459200, ...}}. Keys are kept as the kernel names them; newer
    kernels append keys (dbytes/dios in 5.x, cost.* with iocost) that callers ignore.
    """
    out: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        tokens = line.split()
        if not tokens:
            continue
        values: dict[str, int] = {}
        for token in tokens[1:]:
            key, sep, value = token.partition("=")
            if sep and value.isdigit():  # cost.* values can be fractions; none are wanted
                values[key] = int(value)
        out[tokens[0]] = values
    return out


def parse_pressure(text: str) -> Pressure:
    """A PSI file (Documentation/accounting/psi.rst):

        some avg10=0.00 avg60=0.00 avg300=0.00 total=639671
        full avg10=0.00 avg60=0.00 avg300=0.00 total=639671

    to the `total=` stall times, microseconds to seconds. The avg* figures are the kernel's
    own moving averages; the cumulative totals are what a counter should carry (backends
    derive any rate). The `full` line of cpu.pressure exists from Linux 5.13 on.
    """
    some: float | None = None
    full: float | None = None
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        total = rest.rpartition("total=")[2]
        if not total:
            continue
        if kind == "some":
            some = int(total) / 1e6
        elif kind == "full":
            full = int(total) / 1e6
    return Pressure(some, full)


def parse_procs(text: str) -> list[int]:
    """cgroup.procs: one pid per line (unordered; a pid may repeat in v1)."""
    return [int(token) for token in text.split()]


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


def working_set(usage: int, inactive_file: int | None) -> int:
    """What cAdvisor and the kubelet call the working set: usage minus inactive file pages
    (the page cache the kernel would drop first), floored at 0 because the two figures are
    not read atomically and inactive_file can momentarily exceed usage."""
    if inactive_file is None:
        return usage
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


def list_cgroups(layout: CgroupLayout, max_cgroups: int = DEFAULT_MAX_CGROUPS) -> list[str]:
    """Every cgroup path, sorted ("/" first, parents before children).

    Walks the memory and cpuacct hierarchies on v1 (a cgroup may exist in one only: systemd
    creates memory cgroups only for units with memory accounting), the unified one on v2.
    Symlinks are not followed: cgroupfs has none, and a recorded or bind-mounted tree could
    loop. Stops at `max_cgroups` paths, logging that it did.
    """
    if max_cgroups < 1:
        raise ValueError("max_cgroups: must be >= 1")
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
                    children = [e.name for e in it if e.is_dir(follow_symlinks=False)]
            except (FileNotFoundError, NotADirectoryError):
                continue  # removed while walking: churn
            prefix = "" if rel == "/" else rel
            stack.extend(f"{prefix}/{name}" for name in sorted(children, reverse=True))
        if truncated:
            break
    if truncated:
        log.warning("cgroup listing stopped at %d cgroups (max_cgroups) under %s", max_cgroups, layout.root)
    return sorted(found)


# --- reading --------------------------------------------------------------------------------


def _read_file(path: str) -> str | None:
    """The whole file, or None if it (or its cgroup) does not exist or is going away."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
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


class _Reader:
    """Reads the files of one cgroup across its hierarchy directories, telling a missing
    file on a live cgroup (None) from a cgroup that is gone (WorkloadGone).

    The cgroup is gone when none of its directories in the *primary* hierarchies exists:
    the v1 controllers (v1, hybrid), else the unified one (v2). On a hybrid host the unified
    directory is secondary (PSI only): a runc container has none, and a systemd scope can
    outlive the v1 cgroups a runtime removed.

    Liveness is only checked after a read fails, so a live cgroup with every file present
    costs no extra syscall. A directory found missing is remembered and its other files are
    not tried (no `unified/<path>` on a hybrid host: one failed open instead of three).
    """

    __slots__ = ("_absent", "_alive", "_primary", "path")

    def __init__(self, path: str, primary: Iterable[str]) -> None:
        self.path = path
        self._primary = list(dict.fromkeys(primary))
        self._absent: set[str] = set()
        self._alive = False  # a primary directory was seen to exist after a failed read

    def missing(self, directory: str) -> bool:
        """Whether a read found this directory absent (a file of an absent cgroup was asked for)."""
        return directory in self._absent

    def read(self, directory: str, name: str) -> str | None:
        if directory in self._absent:
            return None
        text = _read_file(f"{directory}/{name}")
        if text is None:
            self._missed(directory)
        return text

    def _missed(self, directory: str) -> None:
        if os.path.isdir(directory):
            return  # the file is absent, the cgroup is not: its field stays None
        self._absent.add(directory)
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


def read_stats(
    layout: CgroupLayout,
    path: str,
    *,
    io: bool = True,
    pressure: bool = True,
    paths: Mapping[str, str] | None = None,
) -> CgroupStats:
    """Read one cgroup now. Raises WorkloadGone if it no longer exists in any hierarchy, and
    ValueError for a path with "..".

    `path` is the cgroup's path in every hierarchy, except where `paths` ({controller: path},
    "" for the unified hierarchy; e.g. `Workload.cgroups`) says otherwise. A mounted v1 hierarchy
    with no directory at the cgroup's path there is named in the result's `absent`.
    `io=False` / `pressure=False` skip the block I/O / PSI files (two and three reads).
    """
    path = normalize_path(path)
    dirs, primary = _cgroup_dirs(layout, path, _normalize_paths(paths))
    reader = _Reader(path, primary)
    unified = dirs.get("unified")
    values: dict[str, Any] = {}  # CgroupStats fields

    # -- CPU time. v1: cpuacct.usage is the scheduler's precise runtime in ns; v2: cpu.stat
    # always carries usage/user/system in µs, whether or not the cpu controller is enabled.
    v2_cpu_stat: dict[str, str] | None = None
    if "cpuacct" in dirs:
        text = reader.read(dirs["cpuacct"], "cpuacct.usage")
        if text is not None:
            values["cpu_usage_s"] = int(text) / 1e9
        text = reader.read(dirs["cpuacct"], "cpuacct.stat")
        if text is not None:
            values["cpu_user_s"], values["cpu_system_s"] = parse_cpuacct_stat(text)
    elif unified is not None:
        text = reader.read(unified, "cpu.stat")
        if text is not None:
            v2_cpu_stat = parse_flat_keyed_raw(text)
            for key, name in (
                ("usage_usec", "cpu_usage_s"),
                ("user_usec", "cpu_user_s"),
                ("system_usec", "cpu_system_s"),
            ):
                if key in v2_cpu_stat:
                    values[name] = int(v2_cpu_stat[key]) / 1e6

    # -- CFS bandwidth throttling. v1 cpu.stat has throttled_time in ns; v2 cpu.stat has
    # throttled_usec, present only where the cpu controller is enabled.
    throttle: dict[str, str] | None = None
    throttled_key, throttled_scale = "throttled_time", 1e9
    if "cpu" in dirs:
        text = reader.read(dirs["cpu"], "cpu.stat")
        throttle = parse_flat_keyed_raw(text) if text is not None else None
    elif unified is not None and (v2_cpu_stat is not None or layout.v2_has("cpu")):
        if v2_cpu_stat is None:  # hybrid with cpuacct in v1 but cpu in v2
            text = reader.read(unified, "cpu.stat")
            v2_cpu_stat = parse_flat_keyed_raw(text) if text is not None else None
        throttle = v2_cpu_stat
        throttled_key, throttled_scale = "throttled_usec", 1e6
    if throttle is not None and "nr_periods" in throttle:
        values["cpu_periods"] = int(throttle["nr_periods"])
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
        text = reader.read(pids_dir, "pids.current")
        if text is not None:
            values["pids_current"] = int(text)
        text = reader.read(pids_dir, "pids.max")
        if text is not None:
            values["pids_limit"] = parse_int(text)

    # -- block I/O
    if io:
        if "blkio" in dirs:
            values["io"] = _read_blkio_v1(reader, dirs["blkio"])
        elif unified is not None and layout.v2_has("io"):
            text = reader.read(unified, "io.stat")
            if text is not None:
                stat = parse_io_stat(text)  # lines are not ordered: sort as for v1
                values["io"] = tuple(
                    DeviceIO(dev, v.get("rbytes", 0), v.get("wbytes", 0), v.get("rios", 0), v.get("wios", 0))
                    for dev, v in sorted(stat.items(), key=lambda item: _device_key(item[0]))
                )

    # -- PSI, from the v2 hierarchy only (PSI files exist there with or without controllers)
    if pressure and unified is not None:
        for resource in ("cpu", "memory", "io"):
            text = reader.read(unified, f"{resource}.pressure")
            if text is not None:
                values[f"{resource}_pressure"] = parse_pressure(text)

    absent = tuple(c for c in sorted(layout.v1) if reader.missing(dirs[c]))
    if absent and not any(os.path.isdir(d) for d in primary):
        # removed while being read: a runtime deletes a container's hierarchies one at a time
        raise WorkloadGone(f"cgroup {path} is gone")
    return CgroupStats(path, **values, absent=absent)


def _read_memory_v1(reader: _Reader, directory: str, values: dict[str, Any]) -> None:
    text = reader.read(directory, "memory.usage_in_bytes")
    usage = int(text) if text is not None else None
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
    text = reader.read(directory, "memory.failcnt")
    if text is not None:
        values["memory_failcnt"] = int(text)
    text = reader.read(directory, "memory.oom_control")
    if text is not None:
        # oom_kill_disable / under_oom are flags; oom_kill (Linux 4.13+) is the counter
        values["memory_oom_kills"] = _get(parse_flat_keyed_raw(text), "oom_kill")


def _read_memory_v2(reader: _Reader, directory: str, values: dict[str, Any]) -> None:
    text = reader.read(directory, "memory.current")
    usage = int(text) if text is not None else None
    values["memory_usage"] = usage
    text = reader.read(directory, "memory.max")
    if text is not None:
        values["memory_limit"] = parse_int(text)
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
    text = reader.read(directory, "memory.swap.current")
    if text is not None:
        values["memory_swap"] = int(text)
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
    data = reader.read(directory, "blkio.throttle.io_service_bytes_recursive")
    if data is None:
        data = reader.read(directory, "blkio.throttle.io_service_bytes")
        ops = reader.read(directory, "blkio.throttle.io_serviced")
    else:
        ops = reader.read(directory, "blkio.throttle.io_serviced_recursive")
    if data is None and ops is None:
        return None
    nbytes = parse_blkio_v1(data) if data is not None else {}
    nops = parse_blkio_v1(ops) if ops is not None else {}
    return tuple(
        DeviceIO(
            dev,
            nbytes.get(dev, {}).get("read", 0),
            nbytes.get(dev, {}).get("write", 0),
            nops.get(dev, {}).get("read", 0),
            nops.get(dev, {}).get("write", 0),
        )
        for dev in sorted(nbytes.keys() | nops.keys(), key=_device_key)
    )


def _device_key(device: str) -> tuple[int, int]:
    major, _, minor = device.partition(":")
    return (int(major), int(minor)) if major.isdigit() and minor.isdigit() else (1 << 31, 0)


def cgroup_pids(layout: CgroupLayout, path: str, paths: Mapping[str, str] | None = None) -> list[int]:
    """The processes in a cgroup (cgroup.procs), from the first hierarchy that has it.

    `paths` overrides `path` per controller, as for `read_stats`. Raises WorkloadGone when the
    cgroup exists in no hierarchy.
    """
    path = normalize_path(path)
    dirs, primary = _cgroup_dirs(layout, path, _normalize_paths(paths))
    order = [c for c in ("memory", "cpuacct", "pids", "cpu", "blkio", "unified") if c in dirs]
    reader = _Reader(path, primary)
    for controller in order:
        text = reader.read(dirs[controller], "cgroup.procs")
        if text is not None:
            return parse_procs(text)
    raise WorkloadGone(f"cgroup {path} has no cgroup.procs")


__all__ = [
    "CLK_TCK",
    "DEFAULT_MAX_CGROUPS",
    "DEFAULT_ROOT",
    "CgroupLayout",
    "CgroupMode",
    "CgroupStats",
    "DeviceIO",
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
