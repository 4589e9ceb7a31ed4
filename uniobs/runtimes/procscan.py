"""Finding running VMMs in /proc and reading what their command lines say about them.

QEMU: the QMP socket (`-qmp unix:PATH`, or `-chardev socket,id=X,path=PATH,server=on` with
`-mon chardev=X,mode=control`), the first serial port's backend (a socket, a pty, a file, a
chardev `logfile=`), the guest image and name (`-name guest=NAME`). Solo5 hvt (and the legacy
ukvm tender): the image; the console is its stdout, readable only when that is a file.

Pure parsing functions take an argv; the scan takes the proc root as a parameter.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from uniobs.runtimes.launch import HVT_EXE, QEMU_EXE, _split_opts


@dataclass(frozen=True)
class VmmInfo:
    pid: int
    runtime: str  # "qemu" or "solo5-hvt"
    executable: str
    name: str
    qmp: str | None = None
    console: str | None = None  # a capture source (see uniobs.capture), or None
    console_note: str = ""  # why there is no console, when there is none
    kernel: str | None = None


def _opts(value: str) -> dict[str, str]:
    """QEMU "backend,key=val,..." (or only "key=val,..."): the bare first word under key ""."""
    parts = _split_opts(value)
    out: dict[str, str] = {}
    for i, part in enumerate(parts):
        key, eq, val = part.partition("=")
        if eq:
            out[key] = val
        elif i == 0:
            out[""] = key
        else:
            out[key] = "on"
    out.setdefault("", "")
    return out


def _pairs(argv: list[str]) -> list[tuple[str, str]]:
    """(option, value) for every QEMU option that takes one (flags carry an empty value)."""
    out = []
    i = 1
    while i < len(argv):
        opt = argv[i][1:] if argv[i].startswith("--") else argv[i]
        if opt.startswith("-") and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            out.append((opt, argv[i + 1]))
            i += 2
        else:
            out.append((opt, ""))
            i += 1
    return out


def _chardev_source(opts: dict[str, str]) -> str | None:
    if "logfile" in opts:
        return f"tail:{opts['logfile']}"
    backend = opts[""]
    if backend == "socket" and "path" in opts and opts.get("server") in ("on", "", None):
        return f"unix:{opts['path']}"
    if backend == "file" and "path" in opts:
        return f"tail:{opts['path']}"
    return None


def parse_qemu(pid: int, argv: list[str]) -> VmmInfo:
    pairs = _pairs(argv)
    chardevs: dict[str, dict[str, str]] = {}
    monitors: list[str] = []
    qmp = None
    serial: str | None = None
    name = kernel = None
    for opt, value in pairs:
        if opt == "-chardev":
            opts = _opts(value)
            if "id" in opts:
                chardevs[opts["id"]] = opts
        elif opt == "-mon":
            opts = _opts(value)
            if opts.get("mode") == "control" and "chardev" in opts:
                monitors.append(opts["chardev"])
        elif opt == "-qmp" and qmp is None and value.startswith("unix:"):
            qmp = _split_opts(value[5:])[0]
        elif opt == "-serial" and serial is None:
            serial = value
        elif opt == "-name":  # "-name foo" or "-name guest=foo,debug-threads=on"
            for part in _split_opts(value):
                key, eq, val = part.partition("=")
                if not eq or key == "guest":
                    name = val if eq else key
                    break
        elif opt == "-kernel":
            kernel = value
    if qmp is None:
        for chardev_id in monitors:
            opts = chardevs.get(chardev_id, {})
            if opts.get("") == "socket" and "path" in opts:
                qmp = opts["path"]
                break
    console = None
    note = ""
    if serial is None:
        note = "no -serial option (stdio or none): the console belongs to QEMU's parent"
    elif serial.startswith("chardev:"):
        opts = chardevs.get(serial[8:], {})
        console = _chardev_source(opts) if opts else None
        if console is None:
            note = f"serial chardev {serial[8:]} ({opts.get('', '?')}) cannot be read beside its owner"
    elif serial.startswith("unix:"):
        path_opts = _opts(serial[5:])
        console = f"unix:{path_opts['']}" if path_opts.get("server") in ("on", "") else None
    elif serial.startswith("file:"):
        console = f"tail:{serial[5:]}"
    elif serial == "pty":
        console = "pty:?"  # resolved from /proc by vmm_info (the pts number is not on the command line)
    else:
        note = f"-serial {serial} cannot be read beside its owner; launch with `uniobs run` for a full console"
    exe = os.path.basename(argv[0])
    return VmmInfo(pid, "qemu", exe, name or _image_name(kernel) or f"qemu-{pid}", qmp, console, note, kernel)


def pty_of(pid: int, proc: str = "/proc") -> str | None:
    """The slave side of the one pseudo-terminal a process holds the master of (fdinfo tty-index)."""
    found = []
    try:
        fds = os.listdir(f"{proc}/{pid}/fd")
    except OSError:
        return None
    for fd in fds:
        try:
            if os.readlink(f"{proc}/{pid}/fd/{fd}") != "/dev/ptmx":
                continue
            with open(f"{proc}/{pid}/fdinfo/{fd}") as f:
                for line in f:
                    if line.startswith("tty-index:"):
                        found.append(f"/dev/pts/{int(line.split()[1])}")
        except (OSError, ValueError):
            continue
    return found[0] if len(found) == 1 else None


def _image_name(path: str | None) -> str | None:
    return os.path.splitext(os.path.basename(path))[0] if path else None


def parse_hvt(pid: int, argv: list[str], stdout_target: str | None) -> VmmInfo:
    kernel = next((a for a in argv[1:] if not a.startswith("-")), None)
    console = None
    note = "the tender's stdout is a pipe or terminal held by its parent; use `uniobs run` for its console"
    if stdout_target and stdout_target.startswith("/") and not stdout_target.startswith("/dev/"):
        console, note = f"tail:{stdout_target}", ""
    exe = os.path.basename(argv[0])
    return VmmInfo(pid, "solo5-hvt", exe, _image_name(kernel) or f"hvt-{pid}", None, console, note, kernel)


def read_argv(pid: int, proc: str = "/proc") -> list[str] | None:
    try:
        with open(f"{proc}/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a] or None


def vmm_info(pid: int, proc: str = "/proc") -> VmmInfo | None:
    argv = read_argv(pid, proc)
    if not argv:
        return None
    exe = os.path.basename(argv[0])
    if QEMU_EXE.match(exe):
        info = parse_qemu(pid, argv)
        if info.console == "pty:?":
            pts = pty_of(pid, proc)
            note = "" if pts else "-serial pty: its pseudo-terminal could not be found in /proc"
            info = dataclasses.replace(info, console=f"pty:{pts}" if pts else None, console_note=note)
        return info
    if HVT_EXE.match(exe):
        try:
            target: str | None = os.readlink(f"{proc}/{pid}/fd/1")
        except OSError:
            target = None
        return parse_hvt(pid, argv, target)
    return None


def scan_vmms(proc: str = "/proc") -> list[VmmInfo]:
    """Every QEMU and hvt tender running now. Processes that exit while being read are skipped."""
    found = []
    try:
        entries = os.listdir(proc)
    except OSError:
        return []
    for entry in entries:
        if entry.isdigit():
            info = vmm_info(int(entry), proc)
            if info is not None:
                found.append(info)
    return sorted(found, key=lambda v: v.pid)


def find_by_qmp(path: str, proc: str = "/proc") -> VmmInfo | None:
    real = os.path.realpath(path)
    return next((v for v in scan_vmms(proc) if v.qmp and os.path.realpath(v.qmp) == real), None)
