"""Boots the hello-node microVM (examples/hello-node/unikernel) under real QEMU (TCG) and talks to it.

The image is built once per module with ``make -C examples/hello-node/unikernel``: Debian's kernel
from /boot, Node.js and its libraries from this host, the static /init from init.c. QEMU runs it
on ``-machine microvm`` with user-mode networking, the function's port forwarded to a free
loopback port, and ``-serial stdio`` going to a file that the test reads afterwards (QEMU is our
child, so nothing is lost). The kernel command line comes from boot_args.py, as for a user.

The record parsing here is deliberately minimal and local: it checks the guest, not uniobs's
console parser.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import ROOT, free_port, missing, requires_node, requires_qemu, requires_vmlinuz

UNIKERNEL_DIR = ROOT / "examples" / "hello-node" / "unikernel"
BUILD = UNIKERNEL_DIR / "build"
QEMU = shutil.which("qemu-system-x86_64")
MISSING_TOOLS = missing("gcc", "make", "ldd")

MARKER = b"@@uniobs/1 "
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
ATTR = re.compile(r'([A-Za-z_][\w.]*)=("(?:[^"\\]|\\.)*"|\S+)')
ANSWER_TIMEOUT = 90.0

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.slow,
    requires_qemu,
    requires_vmlinuz,
    requires_node,
    pytest.mark.skipif(bool(MISSING_TOOLS), reason=f"cannot build the microVM: {', '.join(MISSING_TOOLS)} not on PATH"),
]


@dataclass(frozen=True)
class Record:
    type: str
    args: tuple[str, ...]  # positional words (for a log: level, then the whole text)
    attrs: dict[str, str]


def records(console: bytes, type_: str | None = None) -> list[Record]:
    out = []
    for line in console.split(b"\n"):
        if not line.startswith(MARKER):
            continue
        text = line[len(MARKER) :].decode("utf-8", "replace").rstrip("\r")  # the tty adds \r
        kind, _, rest = text.partition(" ")
        if kind == "log":
            level, _, message = rest.partition(" ")
            rec = Record(kind, (level, message), {})
        else:
            positional = tuple(w for w in rest.split(" ") if w and "=" not in w)
            rec = Record(kind, positional, {k: v.strip('"') for k, v in ATTR.findall(rest)})
        if type_ is None or rec.type == type_:
            out.append(rec)
    return out


def append_line(*extra: str) -> str:
    """The -append value, from boot_args.py exactly as run.sh gets it."""
    cmd = [sys.executable, str(UNIKERNEL_DIR / "boot_args.py"), *(a for e in extra for a in ("--extra", e))]
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=30).stdout.strip()


@dataclass
class Guest:
    proc: subprocess.Popen[bytes]
    console_path: Path
    port: int | None
    started: float

    @property
    def console(self) -> bytes:
        return self.console_path.read_bytes()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


def qemu_command(initrd: Path, append: str, port: int | None) -> list[str]:
    assert QEMU is not None
    cmd = [
        QEMU, "-machine", "microvm,pit=on,rtc=on", "-accel", "tcg", "-m", "1024",
        "-nodefaults", "-nographic", "-no-reboot", "-serial", "stdio",
        "-kernel", str(BUILD / "vmlinux"), "-initrd", str(initrd), "-append", append,
        "-device", "virtio-rng-device",
    ]  # fmt: skip
    if port is not None:
        cmd += ["-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:8002", "-device", "virtio-net-device,netdev=n0"]
    return cmd


def start(initrd: Path, append: str, console_path: Path, network: bool = True) -> Guest:
    """Starts QEMU; with network, on a free loopback port (retried if another process takes it)."""
    for _attempt in range(3):
        port = free_port() if network else None
        with open(console_path, "wb") as console:
            started = time.monotonic()
            # stdin must not be the test's terminal: QEMU's stdio chardev would put it in raw mode.
            proc = subprocess.Popen(
                qemu_command(initrd, append, port), stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT
            )
        guest = Guest(proc, console_path, port, started)
        time.sleep(0.3)
        if proc.poll() is None or b"host forwarding rule" not in guest.console:
            return guest
    return guest


def http_get(port: int) -> bytes:
    """One HTTP/1.0 GET of /; b"" when nothing answered (slirp accepts before the guest listens)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.settimeout(5)
            s.sendall(b"GET / HTTP/1.0\r\nHost: hello\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            return data
    except OSError:
        return b""


def wait_for_answer(guest: Guest) -> tuple[bytes, float]:
    """Polls with overlapping requests, one started every 0.1 s: a request that slirp accepted while
    the guest was still booting can stall for a second or more, and must not delay the next one."""
    assert guest.port is not None
    port = guest.port
    answers: list[tuple[bytes, float]] = []
    answered = threading.Event()

    def attempt() -> None:
        answer = http_get(port)
        if answer.startswith(b"HTTP/1.1 200") and not answered.is_set():
            answers.append((answer, time.monotonic() - guest.started))
            answered.set()

    deadline = guest.started + ANSWER_TIMEOUT
    while time.monotonic() < deadline and guest.proc.poll() is None and not answered.is_set():
        threading.Thread(target=attempt, daemon=True).start()
        answered.wait(0.1)
    if answers:
        return answers[0]
    tail = guest.console[-3000:].decode("utf-8", "replace")
    pytest.fail(f"no HTTP answer (QEMU status {guest.proc.poll()}); console ends with:\n{tail}")


@pytest.fixture(scope="module")
def initrd() -> Path:
    proc = subprocess.run(["make", "-C", str(UNIKERNEL_DIR)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"make -C {UNIKERNEL_DIR} failed:\n{proc.stdout}\n{proc.stderr}")
    path = BUILD / "initramfs.cpio.gz"
    assert (BUILD / "vmlinux").read_bytes()[:4] == b"\x7fELF"
    return path


@pytest.fixture
def guests() -> Iterator[list[Guest]]:
    """Every guest a test starts is killed afterwards, whatever happened."""
    started: list[Guest] = []
    yield started
    for guest in started:
        guest.stop()


def test_hello_world_answers_over_hostfwd_with_ordered_marks_and_trace(
    initrd: Path, guests: list[Guest], tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    guest = start(initrd, append_line(f"traceparent={TRACEPARENT}"), tmp_path / "console.log")
    guests.append(guest)
    answer, elapsed = wait_for_answer(guest)
    record_property("boot_to_http_answer_s", round(elapsed, 3))
    print(f"boot to HTTP answer: {elapsed:.2f} s")

    head, _, body = answer.partition(b"\r\n\r\n")
    assert body == b"Hello World\n"
    assert b"content-type: text/plain" in head.lower()

    # The request's counter record follows the answer; give the serial line a moment.
    deadline = time.monotonic() + 10
    while b"metric hello.requests" not in guest.console and time.monotonic() < deadline:
        time.sleep(0.1)
    console = guest.console
    guest.stop()

    marks = [r for r in records(console, "mark") if r.args]
    names = [m.args[0] for m in marks]
    assert names[:3] == ["kernel_ready", "app_start", "ready"], names
    # /init and app.js stamp their marks on the same clock: seconds since the guest booted.
    times = [float(m.attrs["t"]) for m in marks[:3]]
    assert 0 < times[0] < times[1] < times[2] < ANSWER_TIMEOUT

    assert not [r for r in records(console, "log") if r.args[0] in ("fatal", "error")]
    (setup,) = [r for r in records(console, "metric") if r.args[0] == "init.setup.duration"]
    assert setup.attrs["unit"] == "s" and int(setup.attrs["modules"]) >= 1

    spans = records(console, "span")
    (start_rec,) = [r for r in spans if r.args[0] == "start"]
    (end_rec,) = [r for r in spans if r.args[0] == "end"]
    assert start_rec.attrs["name"] == "app.listen"
    assert re.fullmatch(r"[0-9a-f]{16}", start_rec.args[1]) and start_rec.args[1] != PARENT_ID
    assert start_rec.attrs["parent"] == PARENT_ID  # the traceparent given on -append came back
    assert start_rec.attrs["trace"] == TRACE_ID
    assert end_rec.args[1] == start_rec.args[1] and end_rec.attrs["status"] == "ok"
    # The span ends before the ready mark, inside the records' order.
    lines = [line for line in console.split(b"\n") if line.startswith(MARKER)]
    index = {kind: next(i for i, line in enumerate(lines) if kind in line) for kind in (b"span end", b"mark ready")}
    assert index[b"span end"] < index[b"mark ready"]

    counters = [r for r in records(console, "metric") if r.args[0] == "hello.requests"]
    assert counters and counters[0].args[1] == "counter" and int(counters[-1].args[2]) >= 1


def test_without_a_network_device_init_reports_fatal_and_qemu_exits(
    initrd: Path, guests: list[Guest], tmp_path: Path
) -> None:
    guest = start(initrd, append_line(), tmp_path / "console.log", network=False)
    guests.append(guest)
    status = guest.proc.wait(timeout=60)  # powered off: QEMU exits by itself instead of hanging
    console = guest.console
    assert status == 0
    assert [m.args[0] for m in records(console, "mark")] == ["kernel_ready"]
    fatal = [r.args[1] for r in records(console, "log") if r.args[0] == "fatal"]
    assert len(fatal) == 1 and fatal[0].startswith("init: no eth0"), fatal
