"""Writing cgroups: create and remove one for `uniobs run --cgroup`, and watch it for OOM kills.

The one module that writes to the cgroup file system; `uniobs.host.cgroupfs` only reads.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Mapping

from uniobs.host.cgroupfs import (
    CgroupLayout,
    CgroupMode,
    _get,
    _join,
    _normalize_paths,
    _read_controllers,
    normalize_path,
    parse_flat_keyed_raw,
)

log = logging.getLogger("uniobs.cgroupfs")


# --- placing a process (uniobs run --cgroup) --------------------------------------------------

PLACEMENT_CONTROLLERS = ("cpu", "cpuacct", "memory", "pids", "blkio")


def create_cgroup(layout: CgroupLayout, path: str) -> list[str]:
    """Create a cgroup (in each v1 hierarchy we read, or in the unified one) for a new process.

    Returns the `cgroup.procs` files to write the process into. On v2 the parent must delegate
    the controllers (`cgroup.subtree_control`); we enable those it offers, as systemd does.
    """
    path = normalize_path(path)
    if path == "/":
        raise ValueError("a new cgroup needs a path below the root")
    procs: list[str] = []
    if layout.mode is CgroupMode.V2:
        assert layout.unified is not None
        parts = path.strip("/").split("/")
        for depth in range(len(parts)):
            parent = _join(layout.unified, "/" + "/".join(parts[:depth]) if depth else "/")
            wanted = [
                c
                for c in ("cpu", "memory", "pids", "io")
                if c in _read_controllers(os.path.join(parent, "cgroup.controllers"))
            ]
            if wanted:
                try:
                    with open(os.path.join(parent, "cgroup.subtree_control"), "w") as f:
                        f.write(" ".join(f"+{c}" for c in wanted))
                except OSError:
                    pass  # a parent with processes of its own cannot delegate; we measure what we can
        directory = _join(layout.unified, path)
        os.makedirs(directory, exist_ok=True)
        return [os.path.join(directory, "cgroup.procs")]
    for hierarchy in dict.fromkeys(layout.v1[c] for c in PLACEMENT_CONTROLLERS if c in layout.v1):
        directory = _join(hierarchy, path)
        os.makedirs(directory, exist_ok=True)
        procs.append(os.path.join(directory, "cgroup.procs"))
    return procs


def remove_cgroup(layout: CgroupLayout, path: str) -> None:
    """Remove a cgroup uniobs created, once its processes are gone. Missing parts are fine."""
    path = normalize_path(path)
    hierarchies = [layout.unified] if layout.mode is CgroupMode.V2 else list(dict.fromkeys(layout.v1.values()))
    for hierarchy in hierarchies:
        if hierarchy is None:
            continue
        try:
            os.rmdir(_join(hierarchy, path))
        except OSError:
            pass


# --- OOM kills as they happen (uniobs run of a container) ------------------------------------


class OomWatch:
    """Counts OOM kills in one cgroup as they happen, before the runtime removes the cgroup.

    v1: an eventfd registered through `cgroup.event_control` on `memory.oom_control` wakes on
    every OOM (and once when the cgroup is removed); the wake-up reads the `oom_kill` counter
    while the cgroup still exists. v2 (and v1 without `oom_kill`, before Linux 4.13): the caller
    polls `check()`; `memory.events` keeps `oom_kill`.

    `path` is the cgroup's path, `paths` its path per controller where that differs (as for
    `read_stats`): the memory hierarchy's ("memory", or "" on v2) is the one watched. Raises
    FileNotFoundError when there is no memory controller, ValueError for a path with "..".
    """

    def __init__(self, layout: CgroupLayout, path: str, paths: Mapping[str, str] | None = None) -> None:
        self.path = normalize_path(path)
        self.kills = 0  # from the oom_kill counter
        self.ooms = 0  # OOM notifications seen (v1 eventfd), which may precede the counter
        self._eventfd: int | None = None
        where = _normalize_paths(paths)
        if "memory" in layout.v1:
            directory = _join(layout.v1["memory"], where.get("memory", self.path))
            self._file, self._key = os.path.join(directory, "memory.oom_control"), "oom_kill"
        elif layout.unified is not None:
            directory = _join(layout.unified, where.get("", self.path))
            self._file, self._key = os.path.join(directory, "memory.events"), "oom_kill"
        else:
            raise FileNotFoundError(errno.ENOENT, "no memory controller", layout.root)
        self._baseline = self._read()
        if "memory" in layout.v1:
            try:
                efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
                ofd = os.open(self._file, os.O_RDONLY | os.O_CLOEXEC)
                with open(os.path.join(directory, "cgroup.event_control"), "w") as control:
                    control.write(f"{efd} {ofd}")
                os.close(ofd)  # the kernel holds its own reference now
                self._eventfd = efd
            except OSError:
                self._eventfd = None  # fall back to polling

    def fileno(self) -> int | None:
        """The eventfd to wait on (v1), or None: poll `check()`."""
        return self._eventfd

    def _read(self) -> int | None:
        try:
            with open(self._file, encoding="ascii") as f:
                return _get(parse_flat_keyed_raw(f.read()), self._key)
        except OSError:
            return None

    def check(self) -> int:
        """Read the counter now; returns the OOM kills seen since the watch began."""
        if self._eventfd is not None:
            try:
                os.eventfd_read(self._eventfd)
                # Woken while the cgroup still exists: an OOM began (the removal wake-up comes
                # after the files are gone). The kernel counts oom_kill a moment later, when
                # the victim is chosen, often after the runtime has already removed the cgroup.
                if os.path.exists(self._file):
                    self.ooms += 1
            except (BlockingIOError, OSError):
                pass
        now = self._read()
        if now is not None and self._baseline is not None:
            self.kills = max(self.kills, now - self._baseline)
        elif now is not None and self._baseline is None:
            self._baseline = 0
            self.kills = max(self.kills, now)
        return self.kills

    def close(self) -> None:
        if self._eventfd is not None:
            try:
                os.close(self._eventfd)
            except OSError:
                pass
            self._eventfd = None
