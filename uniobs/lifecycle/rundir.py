"""Run directories: where one `uniobs run` keeps the files it creates, and who removes them.

A run keeps its QMP sockets, console FIFO, podman/docker `--cidfile` and runc/crun bundle copy
in `BASE/run-XXXXXXXX/`. BASE is `uniobs run --rundir`, else `$UNIOBS_RUNDIR`, else
`/run/uniobs` (a tmpfs), else `$TMPDIR/uniobs-UID` when `/run/uniobs` is not writable.

`RunDir` owns the directory: leaving its `with` block removes it whole, however the block ends.
Each directory holds `owner.json`: the boot, the pid namespace and the processes of the run
(`uniobs` itself, then the command it launched; pid and start time, so a reused pid is not taken
for the owner) and the cgroups it created. A run killed with SIGKILL cannot clean up after itself;
the next `RunDir.create` in the same BASE removes every `run-*` directory none of whose recorded
processes is alive (or whose boot is over), and the cgroups it recorded. Directories without an
owner record (being created this instant, or left by an older uniobs) are not touched.

Linux only: liveness comes from `/proc/<pid>/stat`.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from uniobs.host.cgroupfs import CgroupLayout

log = logging.getLogger("uniobs.rundir")

RUNDIR_ENV = "UNIOBS_RUNDIR"
PREFIX = "run-"
OWNER_FILE = "owner.json"
CGROUP_BUSY_WAIT_S = 1.0  # how long a cgroup whose last process just exited may stay busy


def default_bases() -> tuple[str, ...]:
    return ("/run/uniobs", os.path.join(tempfile.gettempdir(), f"uniobs-{os.geteuid()}"))


def run_base(base: str | None = None) -> str:
    """The directory runs are kept under, created (mode 0700) if missing: `base`, else
    $UNIOBS_RUNDIR, else the first usable default: /run/uniobs, else $TMPDIR/uniobs-UID (one per
    user: /run is root's). An explicit choice that cannot be created is an OSError; a default we
    cannot write to, or that is not a directory of ours or root's, is skipped."""
    chosen = base or os.environ.get(RUNDIR_ENV)
    if chosen:
        os.makedirs(chosen, mode=0o700, exist_ok=True)
        return os.path.abspath(chosen)
    error: OSError | None = None
    for candidate in default_bases():
        try:
            os.makedirs(candidate, mode=0o700, exist_ok=True)
            st = os.lstat(candidate)
            if st.st_uid not in (0, os.geteuid()) or not stat.S_ISDIR(st.st_mode):
                raise PermissionError(errno.EPERM, "not a directory of ours", candidate)
            if not os.access(candidate, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, "not writable", candidate)
            return candidate
        except OSError as exc:
            error = exc
    assert error is not None
    raise error


class RunDir:
    """One run's directory, removed whole when its `with` block ends (or by `close()`).

    Also usable as a path (`os.fspath(rundir)`), e.g. for `plan_launch`."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._owner: dict[str, Any] = {"boot_id": _boot_id(), "pid_ns": _pid_ns(), "pids": [], "cgroups": []}
        self._closed = False

    @classmethod
    def create(cls, base: str | None = None) -> RunDir:
        """A new `run-*` directory under `run_base(base)`, after removing the stale ones there."""
        root = run_base(base)
        sweep(root)
        rundir = cls(tempfile.mkdtemp(prefix=PREFIX, dir=root))
        try:
            rundir.record_pid(os.getpid())
        except BaseException:
            rundir.close()
            raise
        return rundir

    def __fspath__(self) -> str:
        return self.path

    def __str__(self) -> str:
        return self.path

    def record_pid(self, pid: int) -> None:
        """A process of this run: while any recorded one lives, no sweep removes the directory."""
        self._owner["pids"].append([pid, _start_time(pid)])
        self._save()

    def record_cgroup(self, path: str) -> None:
        """A cgroup this run created: a sweep removes it with the directory."""
        self._owner["cgroups"].append(path)
        self._save()

    def _save(self) -> None:
        # written whole then renamed: a concurrent sweep never reads half a record
        tmp = os.path.join(self.path, f".{OWNER_FILE}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self._owner, f)
        os.replace(tmp, os.path.join(self.path, OWNER_FILE))

    def close(self) -> None:
        """Remove the directory and everything in it (sockets, FIFOs, copies). Idempotent."""
        if self._closed:
            return
        self._closed = True
        shutil.rmtree(self.path, ignore_errors=True)
        if os.path.lexists(self.path):
            log.warning("run directory %s: not removed", self.path)

    def __enter__(self) -> RunDir:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def sweep(root: str) -> list[str]:
    """Remove the `run-*` directories under `root` whose run is over (see the module's docstring).
    Returns the directories removed. Never raises for a directory it cannot judge or remove."""
    removed: list[str] = []
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return removed
    for name in names:
        if not name.startswith(PREFIX):
            continue
        path = os.path.join(root, name)
        owner = _read_owner(path)
        if owner is None or not _over(owner):
            continue
        cgroups = [c for c in owner.get("cgroups", []) if isinstance(c, str)]
        try:
            if cgroups and not remove_cgroups(cgroups, wait_s=0):
                log.info("stale run directory %s: its cgroups still hold processes; kept for now", path)
                continue
        except ValueError as exc:  # a record naming no cgroup of ours ("/", "..")
            log.warning("stale run directory %s: %s; kept", path, exc)
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.lexists(path):
            log.info("removed the stale run directory %s (its run is over)", path)
            removed.append(path)
    return removed


def _below_root(path: str) -> str:
    """A cgroup path below the root, normalised; ValueError for the root or a path with '..'."""
    from uniobs.host.cgroupfs import normalize_path

    relative = normalize_path(path)
    if relative == "/":
        raise ValueError("the root cgroup is nobody's to remove")
    return relative


def cgroup_dirs(layout: CgroupLayout, path: str) -> list[str]:
    """The directories of one cgroup path in every hierarchy of `layout` (v1, and cgroup2)."""
    from uniobs.host.cgroupfs import CgroupMode

    relative = _below_root(path)
    hierarchies = [layout.unified] if layout.mode is CgroupMode.V2 else [*layout.v1.values(), layout.unified]
    return [h + relative for h in dict.fromkeys(hierarchies) if h is not None]


def cgroup_exists(layout: CgroupLayout, path: str) -> bool:
    """Whether a cgroup is there already, in any hierarchy (then it is not ours to remove)."""
    return any(os.path.isdir(d) for d in cgroup_dirs(layout, path))


def remove_cgroups(paths: Iterable[str], wait_s: float = CGROUP_BUSY_WAIT_S) -> bool:
    """Remove cgroups uniobs created, with anything a runtime left below them, in every hierarchy.

    A cgroup still holding processes stays (rmdir says EBUSY); one whose last process has just
    exited may be busy for a moment, hence `wait_s`. Returns whether none of them is left."""
    from uniobs.host.cgroupfs import detect_layout

    paths = [_below_root(p) for p in paths]
    try:
        layout = detect_layout()
    except OSError:
        return True  # no cgroup file system: nothing of ours can be there
    tops = [d for path in paths for d in cgroup_dirs(layout, path)]
    deadline = time.monotonic() + wait_s
    while True:
        left = [top for top in tops if not _rmdir_tree(top)]
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    for top in left:
        log.warning("cgroup %s not removed: it still holds processes", top)
    return not left


def _rmdir_tree(top: str) -> bool:
    """rmdir a cgroup and its descendants, deepest first (cgroup files go with their directory)."""
    if not os.path.isdir(top):
        return True
    for dirpath, _dirs, _files in os.walk(top, topdown=False):
        try:
            os.rmdir(dirpath)
        except FileNotFoundError:
            continue  # removed meanwhile (the runtime's own cleanup)
        except OSError:
            return False
    return True


def _read_owner(path: str) -> dict[str, Any] | None:
    """A run's owner record, if it is one uniobs wrote as us (or root): a record someone else
    planted must not make us remove their choice of cgroups."""
    try:
        with open(os.path.join(path, OWNER_FILE), encoding="utf-8") as f:
            if os.fstat(f.fileno()).st_uid not in (0, os.geteuid()):
                return None
            owner = json.load(f)
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _over(owner: dict[str, Any]) -> bool:
    """Whether the run that wrote `owner` has ended: another boot, or none of its processes lives.
    A run in another pid namespace cannot be judged from here: it is not over for us."""
    if owner.get("boot_id") != _boot_id():
        return True
    if owner.get("pid_ns") != _pid_ns():
        return False
    pids = owner.get("pids")
    if not isinstance(pids, list):
        return False
    for entry in pids:
        try:
            pid, start = int(entry[0]), entry[1]
        except (TypeError, ValueError, IndexError):
            return False
        if _start_time(pid) == start and start is not None:
            return False
    return True


def _start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])  # field 22 of proc(5); fields here start at field 3


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


def _pid_ns() -> int | None:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
