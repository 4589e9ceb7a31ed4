"""Finding running VMMs in /proc: each installed runtime recognises its own processes and reads
what their command lines say (`Runtime.inspect`; QEMU: `uniobs.runtimes.qemu.parse_qemu`, Solo5
hvt: `uniobs.runtimes.hvt.parse_hvt`). The proc root is a parameter. The names below stay
importable from here for one release.
"""

from __future__ import annotations

from uniobs.plugin import VmmInfo
from uniobs.runtimes.common import image_name as _image_name
from uniobs.runtimes.common import read_argv
from uniobs.runtimes.hvt import parse_hvt
from uniobs.runtimes.qemu import parse_qemu, pty_of

__all__ = ["VmmInfo", "_image_name", "find_by_qmp", "parse_hvt", "parse_qemu", "pty_of", "read_argv", "scan_vmms",
           "vmm_info"]  # fmt: skip


def vmm_info(pid: int, proc: str = "/proc") -> VmmInfo | None:
    """What a running process is, when an installed runtime recognises it as a VMM."""
    from uniobs.runtimes.select import Runtimes

    return Runtimes().inspect(pid, proc)


def scan_vmms(proc: str = "/proc") -> list[VmmInfo]:
    """Every VMM running now. Processes that exit while being read are skipped."""
    from uniobs.runtimes.select import Runtimes

    return Runtimes().discover(proc)


def find_by_qmp(path: str, proc: str = "/proc") -> VmmInfo | None:
    from uniobs.runtimes.select import Runtimes

    return Runtimes().find_by_qmp(path, proc)
