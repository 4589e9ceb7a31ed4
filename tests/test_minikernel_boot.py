"""Boots examples/minikernel under real QEMU (TCG) and checks what it prints and how it exits.

The kernel is built from source once per module (``make -C examples/minikernel``) and booted with
the exact command the project uses (``-machine microvm``, ``-serial stdio``, ``isa-debug-exit``).
QEMU's exit status is ``(value << 1) | 1`` for a value the guest writes to port 0xf4; a triple
fault under ``-no-reboot`` makes QEMU 7.2 exit with status 0.

The record parsing here is deliberately minimal and local: it checks the guest, not uniobs's
console parser.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import ROOT, missing, requires_qemu

KERNEL_DIR = ROOT / "examples" / "minikernel"
KERNEL = KERNEL_DIR / "build" / "minikernel.elf"
QEMU = shutil.which("qemu-system-x86_64")
MISSING_TOOLS = missing("gcc", "ld", "make")

BANNER = b"minikernel 0.1 (uniobs example unikernel)"
MARKER = b"@@uniobs/1 "
MILESTONES = ["boot", "kernel_ready", "app_start", "ready", "exit"]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
SPAN_ID = re.compile(r"[0-9a-f]{16}")
ATTR = re.compile(r'([A-Za-z_][\w.]*)=("(?:[^"\\]|\\.)*"|\S+)')

pytestmark = [
    pytest.mark.qemu,
    requires_qemu,
    pytest.mark.skipif(
        bool(MISSING_TOOLS), reason=f"cannot build the minikernel: {', '.join(MISSING_TOOLS)} not on PATH"
    ),
]


@dataclass(frozen=True)
class Record:
    type: str
    args: tuple[str, ...]  # positional arguments (for a log: level, then the whole text)
    attrs: dict[str, str]


@dataclass(frozen=True)
class Boot:
    status: int
    output: bytes
    stderr: bytes  # QEMU's own messages; kept for failure reports

    @property
    def lines(self) -> list[bytes]:
        return self.output.split(b"\n")

    def records(self, type_: str | None = None) -> list[Record]:
        out = []
        for line in self.lines:
            if not line.startswith(MARKER):
                continue
            text = line[len(MARKER) :].decode("utf-8", "replace").rstrip("\r")
            kind, _, rest = text.partition(" ")
            if kind == "log":
                level, _, message = rest.partition(" ")
                rec = Record(kind, (level, message), {})
            else:
                words = rest.split(" ")
                positional = tuple(w for w in words if w and "=" not in w)
                rec = Record(kind, positional, {k: v.strip('"') for k, v in ATTR.findall(rest)})
            if type_ is None or rec.type == type_:
                out.append(rec)
        return out

    def marks(self) -> list[Record]:
        return [r for r in self.records("mark") if r.args and r.args[0] in MILESTONES]

    def metric(self, name: str) -> Record:
        (rec,) = [r for r in self.records("metric") if r.args[:1] == (name,)]
        return rec


def qemu_command(append: str, machine: str = "microvm") -> list[str]:
    assert QEMU is not None
    return [
        QEMU, "-machine", machine, "-accel", "tcg", "-m", "64", "-nodefaults", "-nographic",
        "-no-reboot", "-serial", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-kernel", str(KERNEL), "-append", append,
    ]  # fmt: skip


def boot(append: str, machine: str = "microvm", timeout: float = 30) -> Boot:
    # stdin must not be the test's terminal: QEMU's stdio chardev would put it in raw mode.
    proc = subprocess.run(qemu_command(append, machine), stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    return Boot(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="module", autouse=True)
def kernel() -> Path:
    proc = subprocess.run(["make", "-C", str(KERNEL_DIR)], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        pytest.fail(f"make -C {KERNEL_DIR} failed:\n{proc.stdout}\n{proc.stderr}")
    return KERNEL


def first_line(b: Boot) -> bytes:
    # The guest prints a newline before its banner so that it starts a line after firmware output.
    return next(line for line in b.lines if line.strip())


def test_ok_boot_prints_banner_and_ordered_milestones() -> None:
    b = boot("mode=ok work_ms=50")
    assert b.status == 1  # exit value 0
    assert first_line(b) == BANNER
    marks = b.marks()
    assert [m.args[0] for m in marks] == MILESTONES
    # Before calibration the boot mark carries raw TSC cycles; every later one carries t=.
    assert "cycles" in marks[0].attrs
    times = [float(m.attrs["t"]) for m in marks[1:]]
    assert times == sorted(times)
    assert times[-1] - times[0] >= 0.045  # the 50 ms of work happen between kernel_ready and exit
    assert marks[-1].attrs["code"] == "0"
    assert re.search(rb"^calibrated tsc_khz=[1-9]\d* source=pit$", b.output, re.M)
    assert int(b.metric("minikernel.work.iterations").args[2]) > 0
    spans = b.records("span")
    starts = {r.args[1]: r for r in spans if r.args[0] == "start"}
    ends = {r.args[1]: r for r in spans if r.args[0] == "end"}
    assert starts.keys() == ends.keys() and all(SPAN_ID.fullmatch(s) for s in starts)
    (root,) = [r for r in starts.values() if r.attrs["name"] == "init"]
    assert "parent" not in root.attrs and "trace" not in root.attrs
    work = next(r for r in starts.values() if r.attrs["name"] == "work")
    assert work.attrs["parent"] == root.args[1]
    assert all(r.attrs["status"] == "ok" for r in ends.values())


def test_boots_on_pc_machine_after_seabios() -> None:
    b = boot("mode=ok work_ms=10", machine="pc")
    assert b.status == 1
    assert BANNER in b.lines  # on a line of its own, although SeaBIOS's last line lacks a newline
    assert [m.args[0] for m in b.marks()] == MILESTONES


def test_exit_value_becomes_qemu_status() -> None:
    b = boot("exit=5")
    assert b.status == 11
    assert b.marks()[-1].attrs["code"] == "5"


def test_panic_exits_with_status_7() -> None:
    b = boot("mode=panic")
    assert b.status == 7  # exit value 3
    assert re.search(rb"^PANIC: requested by mode=panic$", b.output, re.M)
    assert [r.args[0] for r in b.records("log")] == ["fatal"]
    assert "ready" not in [m.args[0] for m in b.marks()]
    assert [r.attrs["status"] for r in b.records("span") if r.args[0] == "end"] == ["error"]


def test_triplefault_stops_qemu_with_status_0() -> None:
    b = boot("mode=triplefault", timeout=20)
    assert b.status == 0  # observed with QEMU 7.2: -no-reboot turns the reset into a clean exit
    assert [m.args[0] for m in b.marks()] == ["boot", "kernel_ready", "app_start"]


def test_garbage_is_emitted_and_the_guest_still_gets_ready() -> None:
    b = boot("mode=garbage")
    assert b.status == 1
    with pytest.raises(UnicodeDecodeError):
        b.output.decode("utf-8")
    assert b"\x00" in b.output and b"\x1b[" in b.output
    assert max(len(line) for line in b.lines) >= 64 * 1024
    assert [m.args[0] for m in b.marks()] == MILESTONES


def test_flood_delivers_every_byte() -> None:
    b = boot("mode=flood flood_kb=512")
    assert b.status == 1
    flood = [line for line in b.lines if line.startswith(b"flood ")]
    assert len(flood) == 512 * 16
    assert sum(len(line) + 1 for line in flood) >= 512 * 1024
    assert [int(line.split()[1]) for line in flood] == list(range(512 * 16))  # nothing lost
    assert [m.args[0] for m in b.marks()] == MILESTONES


def test_traceparent_is_echoed_in_span_records() -> None:
    b = boot(f"traceparent=00-{TRACE_ID}-{PARENT_ID}-01 work_ms=5")
    assert b.status == 1
    assert ("info", "traceparent received") in [r.args for r in b.records("log")]
    spans = b.records("span")
    assert spans and all(r.attrs["trace"] == TRACE_ID for r in spans)
    (root,) = [r for r in spans if r.args[0] == "start" and r.attrs["name"] == "init"]
    assert root.attrs["parent"] == PARENT_ID
    children = [r for r in spans if r.args[0] == "start" and r.attrs["name"] != "init"]
    assert children and all(r.attrs["parent"] == root.args[1] for r in children)


def test_memory_touch_and_heartbeats() -> None:
    b = boot("mem_kb=4096 run_ms=300 beat_ms=100")
    assert b.status == 1
    touched = b.metric("minikernel.memory.touched")
    assert touched.args[1:] == ("gauge", str(4096 * 1024)) and touched.attrs["unit"] == "By"
    beats = [r for r in b.records("metric") if r.args[0] == "minikernel.heartbeat"]
    assert [r.args[2] for r in beats] == ["1", "2", "3"]
    marks = {m.args[0]: float(m.attrs["t"]) for m in b.marks() if "t" in m.attrs}
    assert marks["exit"] - marks["ready"] >= 0.3


def test_tsc_khz_override_skips_calibration() -> None:
    b = boot("tsc_khz=2000000")
    assert b"calibrated tsc_khz=2000000 source=cmdline" in b.lines
    assert "t" in b.marks()[0].attrs  # the rate is known before the boot mark


def test_invalid_option_exits_with_status_5() -> None:
    b = boot("work_ms=abc")
    assert b.status == 5  # exit value 2
    assert ("error", "invalid option: work_ms=abc") in [r.args for r in b.records("log")]


def test_hang_never_exits() -> None:
    proc = subprocess.Popen(qemu_command("mode=hang"), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 20
        seen = b""
        while b"hanging at ready" not in seen and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen += line
        assert b"@@uniobs/1 mark ready" in seen and b"hanging at ready" in seen
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=1)
    finally:
        proc.kill()
        proc.wait()
