"""What the runtime modules share: a process's command line from /proc, an image's name."""

from __future__ import annotations

import os
from collections.abc import Iterator

from uniobs.host.procfs import ProcError, ProcFS


def read_argv(pid: int, proc: str = "/proc") -> list[str] | None:
    """/proc/PID/cmdline as words (None when the process is gone or shows none: a kernel thread)."""
    try:
        argv = ProcFS(proc).cmdline(pid)
    except (ProcError, OSError):
        return None
    return [a for a in argv if a] or None


def processes(proc: str = "/proc") -> Iterator[tuple[int, list[str]]]:
    """(pid, argv) of every process running now, by pid; those that exit while being read are skipped."""
    try:
        entries = os.listdir(proc)
    except OSError:
        return
    for pid in sorted(int(e) for e in entries if e.isdigit()):
        argv = read_argv(pid, proc)
        if argv:
            yield pid, argv


def image_name(path: str | None) -> str | None:
    """A guest image's or bundle's name: its file name without the extension."""
    return os.path.splitext(os.path.basename(path))[0] if path else None
