"""The installed runtimes (entry-point group `uniobs.runtimes`), and which one a command line or a
running process is.

They are asked in name order, the `fallback` ones (the built-in `process`) last; the first that
recognises a command line has it. Two runtimes should not recognise the same command lines.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from uniobs.host.procfs import ProcError, ProcFS
from uniobs.plugin import LaunchError, LaunchPlan, Runtime, VmmInfo
from uniobs.registry import PluginError, PluginInfo, load_group
from uniobs.runtimes.common import read_argv


def _identity(pid: int, proc: str) -> tuple[bytes, bytes] | None:
    """(comm, start time) from /proc/PID/stat: a pid reused by another process has another start
    time, and an exec (a launcher script that becomes QEMU) another comm. None when it is gone."""
    try:
        fd = os.open(f"{proc}/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    head, sep, rest = data.rpartition(b")")  # comm may hold spaces and parentheses
    fields = rest.split()
    if not sep or len(fields) < 20:
        return None
    return head, fields[19]  # field 22, starttime (clock ticks after boot)


def _exe(pid: int, proc: str) -> str | None:
    """/proc/PID/exe, None when it cannot be read (another user's process, a kernel thread, gone)."""
    try:
        return ProcFS(proc).exe(pid)
    except (ProcError, OSError):
        return None


class Runtimes:
    """One instance of each installed runtime. `infos` is a loaded group (`Registry.runtimes`);
    by default the group is loaded here."""

    def __init__(self, infos: Mapping[str, PluginInfo[Any]] | None = None) -> None:
        infos = load_group("uniobs.runtimes") if infos is None else infos
        ordered = sorted(infos.values(), key=lambda info: (bool(info.plugin.fallback), info.name))
        self._runtimes: list[Runtime] = []
        for info in ordered:
            try:
                self._runtimes.append(info.plugin())
            except Exception as exc:  # e.g. a method of the contract left abstract
                raise PluginError(f"runtime {info.name!r} = {info.value!r}: {type(exc).__name__}: {exc}") from exc
        # discover(): the processes found not to be VMMs, by pid, with their identity then: only a
        # new pid, a reused one or one that exec'd is read and matched again (per /proc root).
        self._not_vmms: dict[str, dict[int, tuple[bytes, bytes]]] = {}

    def __iter__(self) -> Iterator[Runtime]:
        return iter(self._runtimes)

    def get(self, name: str) -> Runtime:
        found = next((r for r in self._runtimes if r.name == name), None)
        if found is None:
            known = ", ".join(r.name for r in self._runtimes) or "none"
            raise PluginError(f"unknown runtime {name!r} (installed: {known})")
        return found

    # -- launching

    def for_command(self, argv: Sequence[str]) -> Runtime:
        if not argv:
            raise LaunchError("no command to run")
        found = next((r for r in self._runtimes if r.recognises(argv)), None)
        if found is None:
            known = ", ".join(r.name for r in self._runtimes) or "none"
            raise LaunchError(f"{os.path.basename(argv[0])}: no installed runtime runs this command ({known})")
        return found

    def plan(self, argv: Sequence[str], rundir: str | os.PathLike[str], tag: str) -> LaunchPlan:
        """The launch plan of the runtime that recognises the command (`Runtime.plan`)."""
        runtime = self.for_command(argv)
        plan = runtime.plan(list(argv), rundir, tag)
        plan.planned_by = runtime.name
        return plan

    def of(self, plan: LaunchPlan) -> Runtime:
        """The runtime that made a plan (else the one that recognises its command)."""
        return self.get(plan.planned_by) if plan.planned_by else self.for_command(plan.argv)

    # -- running processes (VMMs; containers are found from their runtimes' state)

    def discoverers(self) -> list[Runtime]:
        """The runtimes whose processes can be found in /proc (they implement `inspect`)."""
        return [r for r in self._runtimes if not r.fallback and type(r).inspect is not Runtime.inspect]

    def programs(self) -> str:
        """What the discoverable runtimes' commands are, for messages: "qemu-system-* or solo5-hvt"."""
        return " or ".join(r.program or r.name for r in self.discoverers()) or "known VMM"

    def _recognised(self, runtimes: Sequence[Runtime], pid: int, argv: Sequence[str], proc: str) -> VmmInfo | None:
        for runtime in runtimes:
            if runtime.recognises(argv):
                info = runtime.inspect(pid, argv, proc)
                if info is not None:
                    return info if info.kind is runtime.kind else dataclasses.replace(info, kind=runtime.kind)
        return None

    def _inspect(self, runtimes: Sequence[Runtime], pid: int, argv: Sequence[str], proc: str) -> VmmInfo | None:
        """By the command line, else by the program the process runs: a launcher may give argv[0]
        any name (`exec -a`, a symlink of its own), /proc/PID/exe still names the binary."""
        found = self._recognised(runtimes, pid, argv, proc)
        if found is None and runtimes:
            exe = _exe(pid, proc)
            if exe is not None and os.path.basename(exe) != os.path.basename(argv[0]):
                found = self._recognised(runtimes, pid, [exe, *argv[1:]], proc)
        return found

    def inspect(self, pid: int, proc: str = "/proc") -> VmmInfo | None:
        """What a running process is, when a runtime recognises it; None otherwise (or gone)."""
        argv = read_argv(pid, proc)
        return self._inspect(self.discoverers(), pid, argv, proc) if argv else None

    def discover(self, proc: str = "/proc") -> list[VmmInfo]:
        """Every VMM running now, by pid (one pass over /proc for all runtimes).

        A process found not to be a VMM is remembered by pid with its start time and comm
        (`_identity`, one small read): in the next calls it is skipped unless those changed (a
        reused pid, an exec), so a round costs a stat read per process and a full look only at
        new processes and at the VMMs (re-inspected each time: there are few).
        """
        runtimes = self.discoverers()
        try:
            entries = os.listdir(proc)
        except OSError:
            return []
        before = self._not_vmms.get(proc, {})
        not_vmms: dict[int, tuple[bytes, bytes]] = {}
        found = []
        for pid in sorted(int(e) for e in entries if e.isdigit()):
            identity = _identity(pid, proc)  # None: gone, or a recorded tree without stat files
            if identity is not None and before.get(pid) == identity:
                not_vmms[pid] = identity
                continue
            argv = read_argv(pid, proc)
            info = self._inspect(runtimes, pid, argv, proc) if argv else None
            if info is not None:
                found.append(info)
            elif identity is not None and _identity(pid, proc) == identity:  # still the process read
                not_vmms[pid] = identity  # (a kernel thread or zombie has no argv: not a VMM either)
        self._not_vmms[proc] = not_vmms  # vanished pids are forgotten
        return found

    def find_by_qmp(self, path: str, proc: str = "/proc") -> VmmInfo | None:
        """The running VMM whose QMP socket is `path`."""
        real = os.path.realpath(path)
        return next((v for v in self.discover(proc) if v.qmp and os.path.realpath(v.qmp) == real), None)
