"""QEMU (`qemu-system-*`, `qemu-kvm`, `kvm`: `QEMU_EXE`; 7.0+, tested with 7.2): planning a launch, reading
a running QEMU's command line, the QMP event channel of a launch, and how its exit reads.

What a launch adds to the user's own command:
- two QMP sockets of our own, always added even when the command has its own `-qmp`: QEMU's
  monitor serves one client per socket, so sharing the user's would lock out their tooling.
  One is for the stats collector (synchronous queries), one for the event watcher.
- lossless console capture of the first serial port from its first byte:
  - `-serial stdio`, or `-nographic` without `-serial`: QEMU's stdout becomes our pipe and we
    copy it to our own stdout, so the user still sees the console;
  - any other `-serial` (`file:`, `unix:`, `tcp:`, `pty`, `null`, `chardev:ID`): it is turned
    into the equivalent `-chardev` with `logfile=` pointing at a FIFO we read, so the user's
    backend keeps working beside our copy;
  - no serial port at all (`-nodefaults`): a `null` chardev with our `logfile=` is added.
- its stderr (QEMU's own messages) captured as log records, and read for QEMU's own failure;
- the W3C traceparent on the kernel command line (`-append`), only with `--propagate-trace`.

Pausing (`uniobs serve --on-idle pause`): QMP `stop` and `cont` are sent on the event watcher's
socket, one of the two uniobs added to a QEMU it launched itself (`QemuLaunch.pause`/`resume`),
never on a socket it attached to or the user's own `-qmp`. The stats client (`uniobs.runtimes.qmp`)
stays read-only: these two commands (and `query-status`) are `CONTROL_COMMANDS`, sent only here.

What a running QEMU's command line says (`parse_qemu`): the QMP socket (`-qmp unix:PATH`, or
`-chardev socket,id=X,path=PATH,server=on` with `-mon chardev=X,mode=control`), the first serial
port's backend (a socket, a pty, a file, a chardev `logfile=`), the guest image and name
(`-name guest=NAME`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from uniobs.model import Attributes, LogEvent, Workload
from uniobs.plugin import Command, ExitInfo, Launch, LaunchError, LaunchPlan, Runtime, VmmInfo
from uniobs.runtimes.accel import accel_of
from uniobs.runtimes.common import image_name, own_error
from uniobs.runtimes.qmp import (
    EVENTS_WATCHED,
    MessageFramer,
    QmpCommandError,
    QmpError,
    QmpEvent,
    QmpForbidden,
    QmpGone,
    QmpTimeout,
    decode_message,
    event_log,
    parse_event,
)

if TYPE_CHECKING:
    import subprocess

    from uniobs.ioloop import IoLoop

log = logging.getLogger("uniobs.run")

# The names QEMU's system emulator is run under: upstream's `qemu-system-<target>`, with the
# suffix some distributions add (Debian's `qemu-system-x86_64-microvm`, `-spice` wrappers, a
# version); `qemu-kvm`, the only name on RHEL, CentOS, Rocky and Fedora (/usr/libexec/qemu-kvm) and in
# KubeVirt's virt-launcher; `kvm` (Debian's and Ubuntu's symlink, Proxmox VE's /usr/bin/kvm) and
# Ubuntu's `kvm-spice`; Nix's wrapped `.qemu-system-<target>-wrapped`. Not matched, as they are no
# VMM: qemu-img, qemu-nbd, qemu-ga, qemu-storage-daemon, the user-mode emulators (qemu-x86_64,
# qemu-aarch64-static), kvm-ok. A process renamed otherwise is recognised by /proc/PID/exe
# (`uniobs.runtimes.select`).
QEMU_EXE = re.compile(r"^\.?(?:qemu-system-[a-z0-9_]+(?:-[a-z0-9_.]+)*|qemu-kvm|kvm|kvm-spice)(?:-wrapped)?$")

# QEMU options that take a value (so the value is not mistaken for an option).
_QEMU_FLAGS_WITHOUT_VALUE = frozenset(
    {"-nographic", "-nodefaults", "-no-reboot", "-no-shutdown", "-S", "-snapshot", "-enable-kvm", "-no-hpet",
     "-daemonize", "-no-user-config", "-full-screen", "-s", "-version", "-h", "-help", "-noautoconsole"}
)  # fmt: skip


# --- planning a launch ----------------------------------------------------------------------


@dataclass
class QemuPlan(LaunchPlan):
    qmp_events: str | None = None  # the event watcher's QMP socket
    append_index: int | None = None  # position of the -append value, for the traceparent


def _split_opts(value: str) -> list[str]:
    """QEMU option strings: comma-separated, ",," is a literal comma."""
    parts, current, i = [], "", 0
    while i < len(value):
        if value[i] == ",":
            if value[i + 1 : i + 2] == ",":
                current += ","
                i += 2
                continue
            parts.append(current)
            current = ""
        else:
            current += value[i]
        i += 1
    parts.append(current)
    return parts


def _serial_to_chardev(spec: str, chardev_id: str) -> str:
    """A `-serial` value as an equivalent `-chardev` value (without logfile)."""
    kind, _, rest = spec.partition(":")
    if spec in ("pty", "null", "stdio", "vc"):
        return f"{spec},id={chardev_id}"
    if kind == "file":
        return f"file,id={chardev_id},path={rest}"
    if kind == "unix":
        path, *opts = _split_opts(rest)
        extra = "".join(f",{o}" if "=" in o else f",{o}=on" for o in opts if o)
        return f"socket,id={chardev_id},path={path}{extra}"
    if kind == "tcp":
        hostport, *opts = _split_opts(rest)
        host, _, port = hostport.rpartition(":")
        extra = "".join(f",{o}" if "=" in o else f",{o}=on" for o in opts if o)
        return f"socket,id={chardev_id},host={host or '0.0.0.0'},port={port}{extra}"
    if kind == "mon":
        raise LaunchError(f"-serial {spec}: a serial port shared with the monitor; use -serial stdio or a chardev")
    raise LaunchError(
        f"-serial {spec}: this backend cannot be captured beside its own output; use -serial stdio, file:, "
        "unix:, tcp:, pty, null or chardev:ID"
    )


def plan_qemu(argv: Sequence[str], rundir: str | os.PathLike[str], tag: str) -> QemuPlan:
    rundir = Path(rundir)
    out = [argv[0]]
    serials: list[tuple[int, str]] = []  # (index in out of the value, value)
    chardevs: dict[str, int] = {}  # id -> index in out of the -chardev value
    nographic = False
    kernel: str | None = None
    i = 1
    while i < len(argv):
        arg = argv[i]
        opt = arg if not arg.startswith("--") else arg[1:]  # QEMU accepts --opt too
        if opt in _QEMU_FLAGS_WITHOUT_VALUE or not opt.startswith("-") or i + 1 >= len(argv):
            out.append(arg)
            nographic = nographic or opt == "-nographic"
            i += 1
            continue
        value = argv[i + 1]
        out += [arg, value]
        if opt == "-serial":
            serials.append((len(out) - 1, value))
        elif opt == "-chardev":
            for o in _split_opts(value)[1:]:
                if o.startswith("id="):
                    chardevs[o[3:]] = len(out) - 1
        elif opt == "-kernel":
            kernel = value
        i += 2

    notes: list[str] = []
    fifo = str(rundir / f"{tag}-console.fifo")
    plan = QemuPlan(
        out, "qemu", os.path.basename(argv[0]), console="", console_on_stdout=False, kernel=kernel, capture_stderr=True
    )
    first = serials[0] if serials else None
    if (first is not None and first[1] == "stdio") or (first is None and nographic):
        plan.console = "fd:stdout"
        plan.console_on_stdout = True
        notes.append("console: QEMU's stdout (the serial port on stdio) is captured and copied to ours")
    elif first is not None and first[1].startswith("chardev:"):
        chardev_id = first[1].partition(":")[2]
        if chardev_id not in chardevs:
            raise LaunchError(f"-serial {first[1]}: no -chardev with id={chardev_id}")
        index = chardevs[chardev_id]
        existing = [o for o in _split_opts(out[index]) if o.startswith("logfile=")]
        if existing:
            plan.console = f"file:{existing[0][len('logfile=') :]}"
            notes.append(f"console: following the chardev's own logfile {plan.console[5:]}")
        else:
            out[index] += f",logfile={fifo},logappend=off"
            plan.console, plan.fifos = f"fifo:{fifo}", [fifo]
            notes.append(f"console: chardev {chardev_id} also logs to {fifo}")
    elif first is not None:
        index, spec = first
        chardev_id = "uniobs-serial0"
        out[index] = f"chardev:{chardev_id}"
        out[index - 1 : index - 1] = [
            "-chardev",
            f"{_serial_to_chardev(spec, chardev_id)},logfile={fifo},logappend=off",
        ]
        plan.console, plan.fifos = f"fifo:{fifo}", [fifo]
        notes.append(f"console: -serial {spec} became a chardev that also logs to {fifo}")
    else:
        out += ["-chardev", f"null,id=uniobs-serial0,logfile={fifo},logappend=off", "-serial", "chardev:uniobs-serial0"]
        plan.console, plan.fifos = f"fifo:{fifo}", [fifo]
        notes.append("console: the command had no serial port; one was added, logged to " + fifo)

    notes.append("stderr: QEMU's own messages are captured as log records (log.iostream=stderr), and still shown")
    plan.qmp = str(rundir / f"{tag}-qmp.sock")
    plan.qmp_events = str(rundir / f"{tag}-events.sock")
    plan.cleanup = [plan.qmp, plan.qmp_events]  # QEMU creates them; it leaves them behind
    out += ["-qmp", f"unix:{plan.qmp},server=on,wait=off", "-qmp", f"unix:{plan.qmp_events},server=on,wait=off"]
    # insertions may have moved -append: find its value again
    plan.append_index = next((j + 1 for j in range(len(out) - 1) if out[j] in ("-append", "--append")), None)
    plan.notes = notes
    return plan


# --- a running QEMU's command line ----------------------------------------------------------


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


def _pairs(argv: Sequence[str]) -> list[tuple[str, str]]:
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


def _serves(opts: dict[str, str]) -> bool:
    """Whether a socket chardev listens (`server`, `server=on`): else QEMU is the one connecting."""
    return opts.get("server") in ("on", "yes", "true", "y")


def _chardev_source(opts: dict[str, str]) -> str | None:
    if "logfile" in opts:
        return f"tail:{opts['logfile']}"
    backend = opts[""]
    if backend == "socket" and "path" in opts and opts.get("server") in ("on", "", None):
        return f"unix:{opts['path']}"
    if backend == "file" and "path" in opts:
        return f"tail:{opts['path']}"
    return None


def parse_qemu(pid: int, argv: Sequence[str]) -> VmmInfo:
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
        elif opt == "-qmp" and qmp is None and value.startswith("unix:") and _serves(_opts(value[5:])):
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
            # a listening socket only: Proxmox adds a client monitor that QEMU connects to qmeventd with
            if opts.get("") == "socket" and "path" in opts and _serves(opts):
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
        console = "pty:?"  # resolved from /proc by QemuRuntime.inspect (the pts number is not on the command line)
    else:
        note = f"-serial {serial} cannot be read beside its owner; launch with `uniobs run` for a full console"
    exe = os.path.basename(argv[0])
    return VmmInfo(pid, "qemu", exe, name or image_name(kernel) or f"qemu-{pid}", qmp, console, note, kernel)


def _disk_image(pairs: Sequence[tuple[str, str]]) -> str | None:
    """The first disk image a QEMU command line names (what a guest without -kernel boots from)."""
    for opt, value in pairs:
        if opt in ("-hda", "-hdb", "-hdc", "-hdd", "-cdrom") and value:
            return value
        if opt in ("-drive", "-blockdev"):
            opts = _opts(value)
            path = opts.get("file") or opts.get("filename")
            if path and not path.startswith(("/dev/fd/", "fd:")):
                return path
    return None


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


# --- one launch: the QMP event channel ------------------------------------------------------


# What `QmpEventWatcher.control` may send, on a socket uniobs created (QEMU's qapi/misc.json: `stop`
# pauses every vCPU, `cont` resumes them; `query-status` reads the run state). Nothing else.
CONTROL_COMMANDS = frozenset({"stop", "cont", "query-status"})
CONTROL_TIMEOUT_S = 5.0


class QmpEventWatcher:
    """Reads asynchronous QMP events on the shared I/O loop (its own QMP socket).

    It connects as soon as QEMU listens, which also times "QMP ready" for the cold-start trace.
    It sends the capabilities handshake and, only through `control` and only when `owned` (the
    socket is one uniobs added to a QEMU it launched), `CONTROL_COMMANDS`.
    """

    def __init__(self, path: str, loop: IoLoop, on_event: Callable[[QmpEvent], None], *, owned: bool = False) -> None:
        self.path = path
        self.owned = owned  # uniobs created this socket (plan_qemu): control commands may go on it
        self._negotiated = threading.Event()  # the handshake's reply arrived: commands may be sent
        self._control_lock = threading.Lock()  # one control command at a time
        self._replies: dict[str, dict[str, Any]] = {}
        self._replied = threading.Condition()
        self._next_id = 0
        self.ready_ns: int | None = None
        self.events: list[QmpEvent] = []
        self._loop = loop
        self._on_event = on_event
        self._sock: socket.socket | None = None
        self._framer = MessageFramer()
        self._done = threading.Event()
        self._greeted = False
        loop.every(0.002, self._try_connect)

    def _try_connect(self, now_ns: int) -> bool:
        if self._sock is not None or self._done.is_set():
            return False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            return True  # not listening yet: try again
        self._sock = sock
        self._loop.add_reader(sock.fileno(), self._readable)
        return False

    def _readable(self, fd: int, arrival_ns: int) -> bool:
        sock = self._sock
        if sock is None:
            return False
        try:
            chunk = sock.recv(65536)
        except BlockingIOError:
            return True
        except OSError:
            chunk = b""
        messages = None
        if chunk:
            try:
                messages = [decode_message(m) for m in self._framer.feed(chunk)]
            except QmpError as exc:
                log.warning("qmp events %s: %s; no more events from it", self.path, exc)
        if messages is None:
            self.close()
            return False
        for message in messages:
            if "QMP" in message and not self._greeted:
                self._greeted = True
                self.ready_ns = arrival_ns
                sock.sendall(b'{"execute": "qmp_capabilities"}\n')
            elif ("return" in message or "error" in message) and self._greeted:
                ident = message.get("id")
                if isinstance(ident, str):
                    with self._replied:
                        self._replies[ident] = message
                        self._replied.notify_all()
                else:
                    self._negotiated.set()  # the handshake's reply (sent without an id)
            elif "event" in message:
                try:
                    event = parse_event(message, arrival_ns)
                except QmpError:
                    continue
                self.events.append(event)
                self._on_event(event)
        return True

    def close(self) -> None:
        self._done.set()
        if self._sock is not None:
            sock, self._sock = self._sock, None
            self._loop.remove_reader(sock.fileno())
            sock.close()
        with self._replied:
            self._replied.notify_all()

    def control(self, command: str, timeout: float = CONTROL_TIMEOUT_S) -> Any:
        """Send one of `CONTROL_COMMANDS` on this socket and return QEMU's "return" value.

        Raises QmpForbidden (not an owned socket, or not a control command: nothing sent),
        QmpTimeout (no handshake or reply within `timeout` s), QmpGone (QEMU went away),
        QmpCommandError (QEMU refused it). Any thread but the I/O loop's (it reads the reply)."""
        if command not in CONTROL_COMMANDS:
            raise QmpForbidden(f"QMP command {command!r} is not one uniobs sends to control a VM; nothing was sent")
        if not self.owned:
            raise QmpForbidden(f"{self.path}: not a QMP socket uniobs created; {command!r} was not sent")
        deadline = time.monotonic() + timeout
        with self._control_lock:
            if not self._negotiated.wait(timeout):
                raise QmpTimeout(f"{self.path}: QMP not ready within {timeout:g} s")
            sock = self._sock
            if sock is None or self._done.is_set():
                raise QmpGone(f"{self.path}: QMP connection closed")
            self._next_id += 1
            ident = f"uniobs-control-{self._next_id}"
            try:
                sock.sendall(json.dumps({"execute": command, "id": ident}).encode() + b"\n")
            except OSError as exc:
                raise QmpGone(f"{self.path}: {exc.strerror or exc}") from None
            with self._replied:
                while ident not in self._replies:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise QmpTimeout(f"{self.path}: no reply to {command!r} within {timeout:g} s")
                    if self._done.is_set():
                        raise QmpGone(f"{self.path}: QMP connection closed before the reply to {command!r}")
                    self._replied.wait(left)
                reply = self._replies.pop(ident)
        if "error" in reply:
            error = reply["error"] if isinstance(reply["error"], dict) else {}
            raise QmpCommandError(command, str(error.get("class", "?")), str(error.get("desc", "")))
        return reply.get("return")

    def shutdown_reason(self) -> str | None:
        for event in reversed(self.events):
            if event.name == "SHUTDOWN":
                return str(event.data.get("reason", "unknown"))
        return None

    def panicked(self) -> bool:
        return any(event.name == "GUEST_PANICKED" for event in self.events)


class QemuLaunch(Launch):
    """One QEMU launch: its QMP events (logged, and read for the exit) and the accelerator it asked for."""

    def __init__(self, runtime: Runtime, plan: LaunchPlan) -> None:
        super().__init__(runtime, plan)
        self.watcher: QmpEventWatcher | None = None

    def prepare(self, loop: IoLoop, on_event: Callable[[LogEvent], None]) -> None:
        path = self.plan.qmp_events if isinstance(self.plan, QemuPlan) else None
        if path:
            # plan_qemu added this socket to the command uniobs launches: it is uniobs' own
            self.watcher = QmpEventWatcher(path, loop, lambda event: on_event(event_log(event)), owned=True)

    def pause_unavailable(self) -> str | None:
        """Why this launch cannot be paused (None: it can): pausing needs a QMP socket of uniobs' own."""
        if self.watcher is None or not self.watcher.owned:
            return "no QMP socket of uniobs' own to send `stop` on (never one it attached to)"
        return None

    def pause(self) -> None:
        """QMP `stop` (every vCPU paused; QEMU answers once they are) on uniobs' own socket. QmpError."""
        self._control("stop")

    def resume(self) -> None:
        """QMP `cont` (the vCPUs run again) on uniobs' own socket. QmpError."""
        self._control("cont")

    def run_state(self) -> str | None:
        """QMP `query-status`'s `status` ("running", "paused", ...), on uniobs' own socket. QmpError."""
        ret = self._control("query-status")
        return str(ret.get("status")) if isinstance(ret, dict) else None

    def _control(self, command: str) -> Any:
        reason = self.pause_unavailable()
        if reason is not None or self.watcher is None:
            raise QmpForbidden(reason or "no QMP socket")
        return self.watcher.control(command)

    def identify(self, proc: subprocess.Popen[bytes], *, name: str, console: str, cgroup: str | None) -> Workload:
        workload = super().identify(proc, name=name, console=console, cgroup=cgroup)
        if self.watcher is None:
            return workload
        return dataclasses.replace(workload, labels={EVENTS_WATCHED: "true"})  # the collector leaves them to us

    def spawned_attributes(self) -> Attributes:
        return (("uniobs.vm.accelerator", accel_of(self.plan.argv)),)

    def ending(self) -> tuple[int, str] | None:
        events = self.watcher.events if self.watcher is not None else []
        shutdown = next((e for e in reversed(events) if e.name == "SHUTDOWN"), None)
        return None if shutdown is None else (shutdown.arrival_monotonic_ns, "QEMU announced SHUTDOWN")

    def coldstart_marks(self) -> Mapping[str, int]:
        ready = self.watcher.ready_ns if self.watcher is not None else None
        return {"qmp_ready": ready} if ready is not None else {}

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.close()


# --- the runtime ----------------------------------------------------------------------------

_SHUTDOWN_REASONS = {"host-signal": "host-signal", "guest-reset": "guest-reset"}
QEMU_FAILURE = 1  # QEMU's own exit status when it fails (error_report() + exit(1))
# What a guest's write of N to isa-debug-exit means (QEMU then exits (N << 1) | 1), by the console's
# family; a family not named here wrote its own status (the minikernel, Nanos with debug_exit).
SOLO5_VIRTIO_EXIT = 41  # Solo5's virtio target writes 41 whatever the status: that is on the console
UNIKRAFT_HALT, UNIKRAFT_CRASH = 41, 42  # plat/kvm/x86/qemu.c: QEMU_ISA_DEBUG_EXIT_NO_CRASH / _CRASH


SOLO5_ABI_NOTE = 0x31494241  # "ABI1": the note every Solo5 image carries (owner "Solo5": target, version)
SOLO5_TARGETS = {1: "hvt", 2: "spt", 3: "virtio", 4: "muen", 5: "genode", 6: "xen"}


def solo5_target(path: str | os.PathLike[str], limit: int = 1 << 20) -> str | None:
    """The Solo5 target an ELF image was built for ("virtio", "hvt"...), from its `.note.solo5.abi`
    (found in the image's PT_NOTE segments, reading at most `limit` bytes of each); None for any
    other file."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if len(head) < 52 or head[:4] != b"\x7fELF" or head[5] != 1:  # little-endian ELF only
                return None
            if head[4] == 2:  # ELF64: e_phoff, e_phentsize and e_phnum; a header's p_offset and p_filesz
                phoff = struct.unpack_from("<Q", head, 0x20)[0]
                phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
                word, offset_at, size_at = "<Q", 8, 0x20
            else:  # ELF32
                phoff = struct.unpack_from("<I", head, 0x1C)[0]
                phentsize, phnum = struct.unpack_from("<HH", head, 0x2A)
                word, offset_at, size_at = "<I", 4, 0x10
            f.seek(phoff)
            table = f.read(min(phentsize * phnum, limit))
            for i in range(len(table) // phentsize if phentsize else 0):
                entry = table[i * phentsize : (i + 1) * phentsize]
                if struct.unpack_from("<I", entry, 0)[0] != 4:  # PT_NOTE
                    continue
                f.seek(struct.unpack_from(word, entry, offset_at)[0])
                target = _solo5_note(f.read(min(struct.unpack_from(word, entry, size_at)[0], limit)))
                if target is not None:
                    return target
    except (OSError, struct.error, ValueError):
        return None
    return None


def _solo5_note(notes: bytes) -> str | None:
    at = 0
    while at + 12 <= len(notes):
        namesz, descsz, kind = struct.unpack_from("<III", notes, at)
        name_at = at + 12
        desc_at = name_at + ((namesz + 3) & ~3)
        name = notes[name_at : name_at + namesz].rstrip(b"\0")
        if name == b"Solo5" and kind == SOLO5_ABI_NOTE and descsz >= 4:
            number = struct.unpack_from("<I", notes, desc_at)[0]
            return SOLO5_TARGETS.get(number, f"target {number}")
        at = desc_at + ((descsz + 3) & ~3)
    return None


def _debug_exit(returncode: int, argv: Sequence[str]) -> int | None:
    """The value the guest wrote to isa-debug-exit, when the command has one and QEMU's status says so."""
    if returncode % 2 == 1 and any("isa-debug-exit" in a for a in argv):
        return returncode >> 1
    return None


def qemu_exit(returncode: int, launch: Launch) -> ExitInfo:
    """The end of a QEMU launch: QEMU's own failure, a crash (QMP GUEST_PANICKED, the console's crash
    marker, the family's crash status), the guest's status through isa-debug-exit by its family's
    convention (Solo5 virtio: from the console's `solo5_exit(N)`), else QMP's SHUTDOWN reason."""
    attrs: dict[str, Any] = {"process.exit.code": returncode}
    watcher = launch.watcher if isinstance(launch, QemuLaunch) else None
    if watcher is not None and watcher.ready_ns is not None:
        attrs["uniobs.qmp.ready_s"] = round((watcher.ready_ns - launch.exec_ns) / 1e9, 6)
    if returncode < 0:
        return ExitInfo.by_signal(-returncode, returncode, attrs)
    seen = launch.observed
    error = own_error(launch.plan.executable, seen.stderr) or own_error("qemu", seen.stderr)
    if returncode == QEMU_FAILURE and error is not None and not seen.console_output:
        return ExitInfo.of(returncode, "tender-error", attrs, detail=error)
    shutdown = watcher.shutdown_reason() if watcher is not None else None
    if shutdown is not None:
        attrs["qemu.shutdown.reason"] = shutdown
    crash_marker = seen.crash.name if seen.crash is not None else None

    def crash(fallback: str) -> ExitInfo:
        return ExitInfo.of(returncode, "crash", attrs, detail=seen.crash_reason() or fallback, marker=crash_marker)

    if (watcher is not None and watcher.panicked()) or shutdown == "guest-panic":
        return crash("GUEST_PANICKED (QMP)")
    value = _debug_exit(returncode, launch.plan.argv)
    family = seen.console_family
    if value == SOLO5_VIRTIO_EXIT and family is None and launch.plan.kernel is not None:
        # a quiet Solo5 guest (--solo5:quiet) prints nothing Solo5's own: its image says what it is
        kernel = os.path.join(seen.cwd or "", launch.plan.kernel)
        family = "solo5" if solo5_target(kernel) == "virtio" else None
    if value is not None:
        attrs["uniobs.guest.debug_exit"] = value
        if family == "unikraft" and value in (UNIKRAFT_HALT, UNIKRAFT_CRASH):
            if value == UNIKRAFT_CRASH:
                return crash("isa-debug-exit 42: Unikraft crashed")
            return ExitInfo.of(  # a halt: main()'s status when the console printed it
                returncode, "exit", attrs, guest_exit_code=seen.guest_exit_code(),
                detail=None if seen.exit is not None else "Unikraft halted (isa-debug-exit 41)",
                marker=seen.exit.name if seen.exit is not None else None,
            )  # fmt: skip
        if seen.crash is not None:
            return crash("")
        if family == "solo5" and value == SOLO5_VIRTIO_EXIT:
            if seen.exit is None:
                return ExitInfo.of(
                    returncode, "exit", attrs,
                    detail="status unknown: Solo5's virtio target writes 41 whatever it is, and the console "
                    "showed no solo5_exit(N)",
                )  # fmt: skip
            return ExitInfo.of(returncode, "exit", attrs, guest_exit_code=seen.guest_exit_code(), marker=seen.exit.name)
        return ExitInfo.of(returncode, "exit", attrs, guest_exit_code=value)
    if seen.crash is not None:
        return crash("")
    if shutdown is not None:
        return ExitInfo.of(returncode, _SHUTDOWN_REASONS.get(shutdown, "guest-shutdown"), attrs)
    return ExitInfo.of(returncode, "exit", attrs)


class QemuRuntime(Runtime):
    name = "qemu"
    description = "QEMU (qemu-system-*, qemu-kvm, kvm): own QMP sockets, the first serial port captured losslessly"
    program = "qemu-system-*"
    trace_alters_guest = True  # the traceparent would be one more word on the kernel command line

    def recognises(self, argv: Sequence[str]) -> bool:
        return bool(argv) and QEMU_EXE.match(os.path.basename(argv[0])) is not None

    def plan(self, argv: Sequence[str], rundir: str | os.PathLike[str], tag: str) -> LaunchPlan:
        return plan_qemu(argv, rundir, tag)

    def function_name(self, plan: LaunchPlan) -> str:
        """The guest's name: QEMU's `-name`, else the file name of its `-kernel`, else of the disk
        image it boots from (the first `-drive file=`, `-hda`..`-hdd`, `-cdrom`, `-blockdev
        filename=`), else the program's."""
        pairs = _pairs(plan.argv)
        for opt, value in pairs:
            if opt == "-name" and value:  # "-name foo" or "-name guest=foo,debug-threads=on"
                opts = _opts(value)
                if opts.get("guest") or opts[""]:
                    return opts.get("guest") or opts[""]
        return image_name(plan.kernel or _disk_image(pairs)) or super().function_name(plan)

    def inject_trace(
        self, plan: LaunchPlan, traceparent: str, env: Mapping[str, str], *, rundir: str, cwd: str | None
    ) -> Command:
        """On the kernel command line (only with `--propagate-trace`): appended to -append, or a new
        -append when there is a -kernel and none."""
        argv = list(plan.argv)
        index = plan.append_index if isinstance(plan, QemuPlan) else None
        if index is not None:
            argv[index] = f"{argv[index]} traceparent={traceparent}".strip()
        elif plan.kernel is not None:
            argv += ["-append", f"traceparent={traceparent}"]
        return Command(argv)

    def start(self, plan: LaunchPlan) -> Launch:
        return QemuLaunch(self, plan)

    def classify_exit(self, returncode: int, launch: Launch) -> ExitInfo:
        return qemu_exit(returncode, launch)

    def inspect(self, pid: int, argv: Sequence[str], proc: str = "/proc") -> VmmInfo | None:
        info = parse_qemu(pid, argv)
        if info.console == "pty:?":
            pts = pty_of(pid, proc)
            note = "" if pts else "-serial pty: its pseudo-terminal could not be found in /proc"
            info = dataclasses.replace(info, console=f"pty:{pts}" if pts else None, console_note=note)
        return info
