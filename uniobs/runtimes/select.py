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
from uniobs.runtimes.common import processes, read_argv


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
        """Every VMM running now, by pid (one pass over /proc for all runtimes)."""
        runtimes = self.discoverers()
        found = []
        for pid, argv in processes(proc):
            info = self._inspect(runtimes, pid, argv, proc)
            if info is not None:
                found.append(info)
        return found

    def find_by_qmp(self, path: str, proc: str = "/proc") -> VmmInfo | None:
        """The running VMM whose QMP socket is `path`."""
        real = os.path.realpath(path)
        return next((v for v in self.discover(proc) if v.qmp and os.path.realpath(v.qmp) == real), None)
