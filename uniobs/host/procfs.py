"""The one reader of per-process procfs files, with the procfs root injected (`/proc`, or a recorded tree).

Reads, for a pid (and a thread id where said), on Linux >= 3.0 (`ns/net`; `smaps_rollup` needs
4.14 and is stood in for by `smaps` before):

- `<pid>/stat`, `<pid>/task/<tid>/stat` (`do_task_stat` in fs/proc/array.c): state, ppid, page
  faults, CPU time, threads, start time, virtual and resident size;
- `<pid>/statm`: virtual and resident size, exact (see `ProcStatm`);
- `<pid>/task/` (thread ids), `<pid>/cmdline`, `<pid>/comm`, `<pid>/exe`, `<pid>/status` (context switches);
- `<pid>/smaps_rollup`, else `<pid>/smaps` (PSS, USS, swap), `<pid>/fd/` (open descriptors);
- `<pid>/net/dev` and `<pid>/ns/net` (the network namespace the process is in);
- `stat` at the root, for `btime` (boot time, epoch seconds).

Errors are translated in one place, `ProcFS._io` (psutil's `_pslinux.wrap_exceptions` is the
model), into the plugin contract's two kinds:

- `ProcessGone` (a `WorkloadGone`): the process has exited. ESRCH or ENOENT count as that when
  `<pid>/stat` is gone too, or when it shows a zombie (state Z or X: exited, not yet reaped; its
  figures read 0 and its threads are gone). `stat()` also raises it for a zombie unless asked
  with `zombie_ok=True`, and `is_alive()` is False for one.
- `AccessDenied` (a `SourceUnavailable`): EACCES/EPERM. The process runs but is another user's
  (`fd/`, `smaps_rollup`, `ns/net` need ptrace access: the same user, root, or CAP_SYS_PTRACE),
  or procfs is mounted with `hidepid`. It does not go away by retrying, so the pipeline says it
  once rather than counting an error at every scrape.
- An ENOENT or ESRCH for a process that still runs passes through as the `OSError` it is: the
  file belongs to something else (a thread id that is not one of the process's threads, a file
  this kernel does not have).
- `ProcFormatError` (a `ValueError`): a file does not parse (never seen from a real kernel; a
  recorded tree can hold anything). The pure parsers below raise nothing else.

All three derive from `ProcError`. A recorded tree needs `<pid>/stat` for the pid to count as
running. The readers do not cache: each call reads the file again.

Cost: the files a scrape reads every time (`stat`, `statm`, `status`, `smaps_rollup`, a thread's
`stat`) are each produced by one `show` call in the kernel (`single_open`, fs/seq_file.c), so one
`read` with a buffer larger than the text returns all of it: they are read with one open, one
read and one close, parsed with `bytes.split`/`find` (bench/vmm_bench.py). Files of one record per
line or mapping (`smaps`, `net/dev`) are read to their end.
"""

from __future__ import annotations

import os
import resource
import threading
from collections.abc import Callable
from dataclasses import dataclass
from operator import itemgetter
from typing import TypeVar

from uniobs.host import open_files_limit
from uniobs.plugin import SourceUnavailable, WorkloadGone

_T = TypeVar("_T")

DEFAULT_ROOT = "/proc"
CLK_TCK = os.sysconf("SC_CLK_TCK")  # USER_HZ: the unit of stat's times (100 on every mainstream arch)
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")  # the unit of stat's rss
GONE_STATES = frozenset({"Z", "X"})  # zombie (exited, not reaped), dead (being freed)
_CHUNK = 65536

__all__ = [
    "CLK_TCK",
    "DEFAULT_ROOT",
    "PAGE_SIZE",
    "AccessDenied",
    "InterfaceStats",
    "MemoryRollup",
    "ProcError",
    "ProcFS",
    "ProcFormatError",
    "ProcStat",
    "ProcStatm",
    "ProcStatus",
    "ProcessGone",
    "parse_btime",
    "parse_cmdline",
    "parse_comm",
    "parse_net_dev",
    "parse_smaps_rollup",
    "parse_stat",
    "parse_statm",
    "parse_status",
]


# --- errors ---------------------------------------------------------------------------------


class ProcError(Exception):
    """Base of what the procfs readers raise besides an untranslated OSError."""


class ProcessGone(ProcError, WorkloadGone):
    """The process exited (or is a zombie): churn, not an error."""

    def __init__(self, pid: int) -> None:
        super().__init__(f"pid {pid} exited")
        self.pid = pid


class AccessDenied(ProcError, SourceUnavailable):
    """A file of a running process may not be read by uniobs (EACCES/EPERM)."""

    def __init__(self, pid: int, path: str) -> None:
        super().__init__(
            f"{path}: permission denied (another user's process, or procfs mounted with hidepid: run uniobs "
            "as that user, as root or with CAP_SYS_PTRACE)"
        )
        self.pid = pid
        self.path = path


class ProcFormatError(ProcError, ValueError):
    """A procfs file's content does not parse."""


# --- values ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcStat:
    """`/proc/<pid>/stat` or `/proc/<pid>/task/<tid>/stat` (proc(5); field numbers in comments).

    Times stay in the kernel's clock ticks (exact; `hz` of the host that wrote them), with
    seconds as properties; `rss` stays in pages (`page_size`), `vsize` is in bytes.
    """

    pid: int  # 1; the thread id for a task's stat
    comm: str  # 2, without its parentheses; at most 15 bytes, any of them but NUL
    state: str  # 3: R, S, D, Z, T, t, X, I...
    ppid: int  # 4
    pgrp: int  # 5
    session: int  # 6
    minflt: int  # 10: minor page faults
    majflt: int  # 12: major page faults
    utime_ticks: int  # 14
    stime_ticks: int  # 15
    num_threads: int  # 20
    starttime: int  # 22: clock ticks after boot; with the pid, identifies the process over time
    vsize: int  # 23: bytes
    rss: int  # 24: pages; may be approximate on recent kernels, statm's is exact (see ProcStatm)
    hz: int = CLK_TCK
    page_size: int = PAGE_SIZE

    @property
    def utime(self) -> float:
        """User CPU time, seconds."""
        return self.utime_ticks / self.hz

    @property
    def stime(self) -> float:
        """System CPU time, seconds."""
        return self.stime_ticks / self.hz

    @property
    def start_seconds(self) -> float:
        """When the process started, seconds after boot."""
        return self.starttime / self.hz

    @property
    def rss_bytes(self) -> int:
        return self.rss * self.page_size

    @property
    def gone(self) -> bool:
        """A zombie or dead process: it has exited and only waits to be reaped."""
        return self.state in GONE_STATES


@dataclass(frozen=True, slots=True)
class ProcStatm:
    """`/proc/<pid>/statm`: sizes in pages (`page_size`). Its resident size is exact where stat's
    rss may not be: on the test host's Linux 6.18, 38 of 99 processes had the two differ, and
    tests/testdata/proc/threaded_comm holds 4821 resident pages in statm (= status' VmRSS) against
    4753 in stat, read while nothing moved. The RSS counters are per-CPU since Linux 6.2; the
    figures say statm and status sum them while stat takes their approximate total. psutil's
    `memory_info` and procps' `ps` read statm/status."""

    size: int  # total program size: stat's vsize / page size
    resident: int  # file + anonymous + shared-memory pages
    shared: int  # file and shared-memory pages
    text: int
    lib: int  # 0 since Linux 2.6
    data: int  # data + stack
    dirty: int  # 0 since Linux 2.6
    page_size: int = PAGE_SIZE

    @property
    def vms_bytes(self) -> int:
        return self.size * self.page_size

    @property
    def rss_bytes(self) -> int:
        return self.resident * self.page_size


@dataclass(frozen=True, slots=True)
class ProcStatus:
    """The parts of `/proc/<pid>/status` uniobs uses; None where the line is absent or unparsable."""

    name: str | None = None
    state: str | None = None
    threads: int | None = None
    voluntary_ctxt_switches: int | None = None  # Linux 2.6.23+
    nonvoluntary_ctxt_switches: int | None = None


@dataclass(frozen=True, slots=True)
class MemoryRollup:
    """Sums over a process's mappings (`smaps_rollup` or `smaps`), bytes."""

    pss: int = 0  # Pss: resident pages, each shared one divided by its number of users
    uss: int = 0  # Private_Clean + Private_Dirty + Private_Hugetlb: freed if the process exited now
    swap: int = 0  # Swap


@dataclass(frozen=True, slots=True)
class InterfaceStats:
    """One line of /proc/net/dev: cumulative counters of one interface."""

    name: str
    rx_bytes: int
    rx_packets: int
    rx_errors: int
    rx_dropped: int
    tx_bytes: int
    tx_packets: int
    tx_errors: int
    tx_dropped: int


# --- pure parsers (bytes or text in, values out; no I/O) ----------------------------------------


def _int(token: bytes, what: str) -> int:
    try:
        return int(token)
    except ValueError:  # not a number, or more digits than int() accepts
        raise ProcFormatError(f"{what} is not an integer: {token[:40]!r}") from None


# The integer fields ProcStat keeps after pid, comm and state, in its order, with their index in
# the fields after comm (field n of proc(5) is index n - 3).
_STAT_INTS = {
    "ppid": 1,
    "pgrp": 2,
    "session": 3,
    "minflt": 7,
    "majflt": 9,
    "utime": 11,
    "stime": 12,
    "num_threads": 17,
    "starttime": 19,
    "vsize": 20,
    "rss": 21,
}
_STAT_FIELDS = itemgetter(*_STAT_INTS.values())


def parse_stat(data: bytes, *, hz: int = CLK_TCK, page_size: int = PAGE_SIZE) -> ProcStat:
    """`<pid>/stat`: "pid (comm) state ppid ...", 52 fields since Linux 5.x, 44 in 2.6.

    comm may hold spaces and parentheses ("a) b (c"), so it runs from the first "(" to the LAST
    ")": nothing after comm contains a parenthesis. Fields up to rss (24) exist since Linux 2.6;
    later ones are not read, so a shorter line from an old kernel parses. Raises
    ProcFormatError for anything else.
    """
    lpar, rpar = data.find(b"("), data.rfind(b")")
    if lpar < 0 or rpar < lpar:
        raise ProcFormatError(f"stat: no '(comm)' in {data[:60]!r}")
    fields = data[rpar + 1 :].split()  # fields[0] is field 3 (state): field n is fields[n - 3]
    if len(fields) < 22:
        raise ProcFormatError(f"stat: {len(fields) + 2} fields, at least 24 expected")
    try:  # one try for every number: the per-field messages are only needed when one fails
        ppid, pgrp, session, minflt, majflt, utime, stime, threads, start, vsize, rss = map(int, _STAT_FIELDS(fields))
        pid = int(data[:lpar])  # int() ignores the space before "(", as strip() would
    except ValueError:
        _int(data[:lpar].strip(), "pid")
        for name, index in _STAT_INTS.items():
            _int(fields[index], name)
        raise ProcFormatError(f"stat: does not parse: {data[:60]!r}") from None  # not reached
    return ProcStat(
        pid,
        data[lpar + 1 : rpar].decode("utf-8", "replace"),
        fields[0].decode("ascii", "replace"),
        ppid,
        pgrp,
        session,
        minflt,
        majflt,
        utime,
        stime,
        threads,
        start,
        vsize,
        rss,
        hz,
        page_size,
    )


def parse_statm(data: bytes, *, page_size: int = PAGE_SIZE) -> ProcStatm:
    """`<pid>/statm`: seven page counts on one line (fs/proc/array.c `proc_pid_statm`). Raises
    ProcFormatError for anything else."""
    fields = data.split()
    if len(fields) < 7:
        raise ProcFormatError(f"statm: {len(fields)} fields, 7 expected")
    try:
        size, resident, shared, text, lib, data_, dirty = map(int, fields[:7])
    except ValueError:
        for field in fields[:7]:
            _int(field, "statm")
        raise ProcFormatError(f"statm: does not parse: {data[:60]!r}") from None  # not reached
    return ProcStatm(size, resident, shared, text, lib, data_, dirty, page_size=page_size)


def _state_of(data: bytes) -> str:
    """The state letter of a stat line, "" when there is none (no I/O, never raises)."""
    rest = data[data.rfind(b")") + 1 :].split(None, 1)
    return rest[0].decode("ascii", "replace") if rest and b")" in data else ""


def _opt_int(value: str) -> int | None:
    token = value.split(None, 1)[0] if value.strip() else ""
    try:
        return int(token)
    except ValueError:
        return None


def _status_line(data: bytes, key: bytes) -> str | None:
    """The value of the first "key:" line of a status file, stripped; None without one."""
    if data.startswith(key):
        start = len(key)
    else:
        start = data.find(b"\n" + key)
        if start < 0:
            return None
        start += len(key) + 1
    end = data.find(b"\n", start)
    return data[start : end if end >= 0 else len(data)].decode("utf-8", "replace").strip()


def parse_status(data: bytes) -> ProcStatus:
    """`<pid>/status`: "Key:<TAB>value" lines (fs/proc/array.c `proc_pid_status`). Never raises:
    an absent or unparsable line leaves its field None. Only the five lines used are looked up
    (the first of each key), not all 50-odd split."""
    state = _status_line(data, b"State:")
    return ProcStatus(
        name=_status_line(data, b"Name:"),
        state=state[:1] if state else None,  # "S (sleeping)"
        threads=_opt_int(_status_line(data, b"Threads:") or ""),
        voluntary_ctxt_switches=_opt_int(_status_line(data, b"voluntary_ctxt_switches:") or ""),
        nonvoluntary_ctxt_switches=_opt_int(_status_line(data, b"nonvoluntary_ctxt_switches:") or ""),
    )


def parse_cmdline(data: bytes) -> list[str]:
    """`<pid>/cmdline`: the arguments, each ended by a NUL (empty ones kept). Empty for a zombie
    or a kernel thread. A process that rewrote its arguments (setproctitle) may leave one string
    with spaces and no NUL: it is returned as one argument."""
    if not data:
        return []
    args = data.split(b"\0")
    if data.endswith(b"\0"):
        args.pop()
    return [a.decode("utf-8", "replace") for a in args]


def parse_comm(data: bytes) -> str:
    """`<pid>/comm`: the name (at most 15 bytes) and a newline."""
    return data.removesuffix(b"\n").decode("utf-8", "replace")


def parse_smaps_rollup(data: bytes) -> MemoryRollup:
    """`<pid>/smaps_rollup` (one block) or `<pid>/smaps` (one block per mapping): the "Pss:",
    "Private_*:" and "Swap:" lines summed, in kB, as psutil's `memory_full_info` reads them
    ("Pss_Anon:", "SwapPss:" and the like are other lines). Never raises."""
    pss = uss = swap = 0
    for line in data.splitlines():
        key, _, value = line.partition(b":")
        if key == b"Pss" or key.startswith(b"Private_") or key == b"Swap":
            parts = value.split()
            if not parts or not parts[0].isdigit() or len(parts[0]) > 24:  # int() refuses > 4300 digits
                continue
            kib = int(parts[0]) * 1024
            if key == b"Pss":
                pss += kib
            elif key == b"Swap":
                swap += kib
            else:
                uss += kib
    return MemoryRollup(pss, uss, swap)


def parse_btime(data: bytes) -> float:
    """`/proc/stat`: the "btime" line, boot time in epoch seconds (ProcFormatError without one)."""
    for line in data.splitlines():
        if line.startswith(b"btime"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return float(parts[1])
    raise ProcFormatError("stat: no btime line")


def parse_net_dev(text: str) -> list[InterfaceStats]:
    """/proc/<pid>/net/dev (net/core/net-procfs.c, unchanged since Linux 2.6):

        Inter-|   Receive                            ...|  Transmit
         face |bytes    packets errs drop fifo frame compressed multicast|bytes packets errs drop ...
            lo:  1194150    7566    0    0    0     0          0         0  1194150 7566 0 0 ...
          eth0: ...

    Two header lines, then "name: 16 numbers" per interface: 8 receive figures (bytes, packets,
    errs, drop, fifo, frame, compressed, multicast), 8 transmit ones (bytes, packets, errs,
    drop, fifo, colls, carrier, compressed). The name is right-aligned and may touch the first
    number ("eth0:123"), so split at the last colon of the name field, not at whitespace.
    Lines that do not parse are skipped.
    """
    out: list[InterfaceStats] = []
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        if not sep:
            continue
        fields = rest.split()
        if len(fields) < 16:
            continue
        try:
            v = [int(f) for f in fields[:16]]
        except ValueError:
            continue
        out.append(InterfaceStats(name.strip(), v[0], v[1], v[2], v[3], v[8], v[9], v[10], v[11]))
    return out


# --- the backend ----------------------------------------------------------------------------


def _read_file(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, _CHUNK):  # seq files hand out about a page per read
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _read_once(path: str) -> bytes:
    """A file the kernel writes in one `show` (see the module's doc): one read returns it whole
    unless it fills the buffer, in which case the rest is read as `_read_file` would."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, _CHUNK)
        if len(data) < _CHUNK:
            return data
        chunks = [data]
        while chunk := os.read(fd, _CHUNK):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _pread_whole(fd: int) -> bytes:
    """The file behind a kept descriptor, produced again from offset 0 (seq_file: a read at 0
    runs `show` anew)."""
    data = os.pread(fd, _CHUNK, 0)
    if len(data) < _CHUNK:
        return data
    chunks = [data]
    offset = len(data)
    while chunk := os.pread(fd, _CHUNK, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _is_procfs(root: str) -> bool:
    """Whether `root` is a procfs mount, whose files are made anew at each read (its `stat` has
    size 0), and not a recorded tree, whose files a test may replace: only procfs files are kept
    open."""
    try:
        return os.stat(f"{root}/stat").st_size == 0
    except OSError:
        return False


def keep_open_budget(limit: int = 1024) -> int:
    """How many files a reader may keep open: `limit`, and at most an eighth of the soft
    RLIMIT_NOFILE (raised to the hard one: `open_files_limit`); the rest is for sockets, cgroup
    directories and exporters."""
    soft = open_files_limit()
    return limit if soft == resource.RLIM_INFINITY else max(0, min(limit, soft // 8))


class ProcFS:
    """Reads the procfs mounted at `root`. `hz` and `page_size` are the units of stat's times
    and rss: this host's, unless a recorded tree comes from a host with others.

    `keep_open`: how many of the files read at every scrape (`stat`, `statm`, `status`,
    `smaps_rollup`, a thread's `stat`) stay open between reads, to be read again with pread(2)
    at offset 0 (as Netdata's procfile does): the open(2) and close(2) are saved, ~4 µs per
    file measured here. 0 (the default): every read opens the file. A kept descriptor stays
    bound to the process it was opened for: once that process has exited (its pid perhaps
    reused) or exec'd (`smaps_rollup` holds the old memory map), it answers ESRCH; it is then
    closed and the file read by path, as without it. `forget(pid)` closes a process's files.
    Thread-safe (a collector reads different pids from several threads).
    """

    def __init__(
        self, root: str = DEFAULT_ROOT, *, hz: int = CLK_TCK, page_size: int = PAGE_SIZE, keep_open: int = 0
    ) -> None:
        self.root = root.rstrip("/") or "/"
        self.hz = hz
        self.page_size = page_size
        self.keep_open = keep_open if keep_open and _is_procfs(self.root) else 0
        self._kept: dict[tuple[int, str], int] = {}  # (pid, file relative to <pid>/) -> descriptor
        self._busy: dict[int, int] = {}  # kept descriptor -> readers using it now
        self._doomed: set[int] = set()  # descriptors forgotten while in use: closed by their last reader
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ProcFS({self.root!r})"

    def forget(self, pid: int) -> None:
        """Close the files kept open for `pid`."""
        with self._lock:
            for key in [key for key in self._kept if key[0] == pid]:
                self._discard(key)

    def close(self) -> None:
        with self._lock:
            for key in list(self._kept):
                self._discard(key)

    def _discard(self, key: tuple[int, str]) -> None:
        """Under the lock: forget a kept descriptor; close it now, or when its last reader is done
        (closing it under a reader would let the number name another file)."""
        fd = self._kept.pop(key)
        if fd in self._busy:
            self._doomed.add(fd)
        else:
            os.close(fd)

    def _read_kept(self, path: str, pid: int, rel: str) -> bytes:
        """`_read_once` of `path` (`<root>/<pid>/<rel>`), through a kept descriptor when there is
        one, and keeping the one opened now while the budget allows."""
        key = (pid, rel)
        with self._lock:
            fd = self._kept.get(key)
            if fd is not None:
                self._busy[fd] = self._busy.get(fd, 0) + 1
        if fd is not None:
            try:
                return _pread_whole(fd)
            except OSError:  # exited, exec'd, or the pid reused: read by path, as without it
                with self._lock:
                    if self._kept.get(key) == fd:
                        self._discard(key)
            finally:
                with self._lock:
                    left = self._busy.pop(fd) - 1
                    if left:
                        self._busy[fd] = left
                    elif fd in self._doomed:
                        self._doomed.discard(fd)
                        os.close(fd)
        if len(self._kept) >= self.keep_open:
            return _read_once(path)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = _pread_whole(fd)
        except BaseException:
            os.close(fd)
            raise
        with self._lock:
            if key in self._kept or len(self._kept) >= self.keep_open:
                os.close(fd)
            else:
                self._kept[key] = fd
        return data

    def _io_kept(self, pid: int, rel: str) -> bytes:
        return self._io(pid, rel, lambda path: self._read_kept(path, pid, rel))

    # -- the one place OSErrors are translated

    def _io(self, pid: int, rel: str, op: Callable[[str], _T]) -> _T:
        path = f"{self.root}/{pid}/{rel}"
        try:
            return op(path)
        except PermissionError:  # EACCES, EPERM
            raise AccessDenied(pid, path) from None
        except (FileNotFoundError, ProcessLookupError):  # ENOENT, ESRCH
            if self._gone(pid):
                raise ProcessGone(pid) from None
            raise  # the process runs: the file is another thing's (see the module docstring)

    def _gone(self, pid: int) -> bool:
        """No `<pid>/stat`, or a zombie's: the process has exited. Unknown (False) on other errors."""
        try:
            data = _read_file(f"{self.root}/{pid}/stat")
        except (FileNotFoundError, ProcessLookupError):
            return True
        except OSError:
            return False
        return _state_of(data) in GONE_STATES

    # -- readers

    def stat(self, pid: int, *, zombie_ok: bool = False) -> ProcStat:
        """`<pid>/stat`. A zombie raises ProcessGone unless `zombie_ok` (its state is then Z or X)."""
        st = parse_stat(self._io_kept(pid, "stat"), hz=self.hz, page_size=self.page_size)
        if st.gone and not zombie_ok:
            raise ProcessGone(pid)
        return st

    def statm(self, pid: int) -> ProcStatm:
        return parse_statm(self._io_kept(pid, "statm"), page_size=self.page_size)

    def task_stat(self, pid: int, tid: int) -> ProcStat:
        """`<pid>/task/<tid>/stat`: one thread's figures. FileNotFoundError if `tid` is not a
        thread of a running `pid` (it may have ended, or be an id from another pid namespace)."""
        return parse_stat(self._io_kept(pid, f"task/{tid}/stat"), hz=self.hz, page_size=self.page_size)

    def task_times(self, pid: int, tid: int) -> tuple[int, int]:
        """(utime, stime) of one thread, in clock ticks (`hz`), from `<pid>/task/<tid>/stat`
        (fields 14 and 15): what `task_stat` gives, without the rest. Raises as `task_stat`."""
        data = self._io_kept(pid, f"task/{tid}/stat")
        rpar = data.rfind(b")")
        if rpar < 0 or data.find(b"(") < 0:
            raise ProcFormatError(f"stat: no '(comm)' in {data[:60]!r}")
        fields = data[rpar + 1 :].split(None, 14)  # fields[11], [12]: fields 14 and 15 of proc(5)
        try:
            return int(fields[11]), int(fields[12])
        except (IndexError, ValueError):
            raise ProcFormatError(f"stat: no utime/stime in {data[:60]!r}") from None

    def tasks(self, pid: int) -> list[int]:
        """The thread ids of the process, ascending."""
        return sorted(int(n) for n in self._io(pid, "task", os.listdir) if n.isdigit())

    def cmdline(self, pid: int) -> list[str]:
        """The process's arguments; [] for a zombie or a kernel thread."""
        return parse_cmdline(self._io(pid, "cmdline", _read_file))

    def comm(self, pid: int) -> str:
        return parse_comm(self._io(pid, "comm", _read_file))

    def exe(self, pid: int) -> str:
        """The program the process runs (the `exe` link), whatever its argv[0] says; as the
        process's own mount namespace names it, without the " (deleted)" the kernel adds once the
        file is replaced (a package upgrade under a running VMM). Needs ptrace access, like `fd/`."""
        return self._io(pid, "exe", os.readlink).removesuffix(" (deleted)")

    def status(self, pid: int) -> ProcStatus:
        return parse_status(self._io_kept(pid, "status"))

    def memory_rollup(self, pid: int) -> MemoryRollup:
        """PSS, USS and swap from `smaps_rollup`; from the slower `smaps` where that is missing
        (Linux < 4.14) or refused for a running process (ESRCH: one whose mm is being torn down),
        as psutil does."""
        try:
            data = self._io_kept(pid, "smaps_rollup")
        except (FileNotFoundError, ProcessLookupError):
            data = self._io(pid, "smaps", _read_file)
        return parse_smaps_rollup(data)

    def num_fds(self, pid: int) -> int:
        """Open descriptors: the numbered entries of `fd/` (0 for a zombie)."""
        return sum(1 for name in self._io(pid, "fd", os.listdir) if name.isdigit())

    def net_dev(self, pid: int) -> list[InterfaceStats]:
        """The interfaces of the network namespace the process is in."""
        return parse_net_dev(self._io(pid, "net/dev", _read_file).decode("utf-8", "replace"))

    def netns(self, pid: int) -> tuple[int, int]:
        """(device, inode) of the process's network namespace: equal for processes sharing one."""
        st = self._io(pid, "ns/net", os.stat)
        return st.st_dev, st.st_ino

    def boot_time(self) -> float:
        """`btime` from `<root>/stat`: when the host booted, epoch seconds (as psutil's
        `boot_time`). Not about a process: its OSErrors are not translated."""
        return parse_btime(_read_file(f"{self.root}/stat"))

    def is_alive(self, pid: int, starttime: int | None = None) -> bool:
        """Whether the process runs: it has a stat that is not a zombie's, and, given its
        `starttime`, the same start time (else the pid was reused). A process whose stat may not
        be read (hidepid) counts as running. Other errors propagate."""
        try:
            st = self.stat(pid)
        except ProcessGone:
            return False
        except AccessDenied:
            return True
        return starttime is None or st.starttime == starttime
