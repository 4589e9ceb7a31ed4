"""What the runtime modules share: a process's command line from /proc, an image's name, a
tender's or VMM's own error among its stderr lines."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator

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


# A tender's or VMM's messages that are not failures: warnings, notes, and the hvt tender's
# "adjusting memory to N bytes" (printed as it starts a guest with a rounded --mem).
_WARNING = re.compile(r"(?:[^:]{1,64}: )?(?:warning|info|note|adjusting memory)\b", re.IGNORECASE)
MAX_DETAIL = 200  # characters kept of a message that becomes an attribute


def own_error(program: str, lines: Iterable[str]) -> str | None:
    """The first error a tender or VMM wrote itself on stderr: a line `PROGRAM: message` (as err(3)
    and QEMU's error_report() print them) that is not a warning; None when there is none."""
    prefix = f"{program}: "
    for line in lines:
        if line.startswith(prefix) and not _WARNING.match(line[len(prefix) :]):
            line = line.strip()
            return line if len(line) <= MAX_DETAIL else line[: MAX_DETAIL - 1] + "…"
    return None
