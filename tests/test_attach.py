"""`uniobs attach` to QEMU guests started outside uniobs, found through /proc."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from otlpfile import Signals
from support import ROOT, requires_qemu

from uniobs.runtimes.procscan import find_by_qmp, parse_qemu, scan_vmms, vmm_info

KERNEL = ROOT / "examples" / "minikernel" / "build" / "minikernel.elf"

pytestmark = [pytest.mark.qemu, requires_qemu]


def test_qemu_command_lines_are_understood() -> None:
    info = parse_qemu(
        9,
        ["qemu-system-x86_64", "-name", "guest=hello,debug-threads=on", "-chardev",
         "socket,id=mon0,path=/run/q/mon.sock,server=on,wait=off", "-mon", "chardev=mon0,mode=control",
         "-chardev", "socket,id=con0,path=/run/q/con.sock,server=on,wait=off,logfile=/var/log/hello.log",
         "-serial", "chardev:con0", "-kernel", "/srv/hello.elf"],
    )  # fmt: skip
    assert (info.name, info.qmp, info.console) == ("hello", "/run/q/mon.sock", "tail:/var/log/hello.log")
    plain = parse_qemu(
        9, ["qemu-system-x86_64", "-qmp", "unix:/q.sock,server,nowait", "-serial", "stdio", "-kernel", "/k/fn.elf"]
    )
    assert (plain.name, plain.qmp, plain.console) == ("fn", "/q.sock", None)
    assert "stdio" in plain.console_note


@pytest.fixture
def guest(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    subprocess.run(["make", "-s", "-C", str(KERNEL.parent.parent)], check=True)
    qmp, con = tmp_path / "qmp.sock", tmp_path / "con.sock"
    proc = subprocess.Popen(
        ["qemu-system-x86_64", "-machine", "microvm", "-accel", "tcg", "-m", "64", "-nodefaults", "-display", "none",
         "-no-reboot", "-name", "attached-fn", "-qmp", f"unix:{qmp},server=on,wait=off",
         "-chardev", f"socket,id=c0,path={con},server=on,wait=off", "-serial", "chardev:c0",
         "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
         "-kernel", str(KERNEL), "-append", "mode=ok run_ms=60000 beat_ms=200"],
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while not (qmp.exists() and con.exists()) and time.monotonic() < deadline:
        time.sleep(0.02)
    yield proc, qmp, con
    proc.kill()
    proc.wait()


def test_running_guests_are_discovered_from_proc(guest: tuple[subprocess.Popen[bytes], Path, Path]) -> None:
    proc, qmp, con = guest
    info = vmm_info(proc.pid)
    assert info is not None and (info.runtime, info.name, info.qmp, info.console) == (
        "qemu", "attached-fn", str(qmp), f"unix:{con}"
    )  # fmt: skip
    assert proc.pid in [v.pid for v in scan_vmms()]
    found = find_by_qmp(str(qmp))
    assert found is not None and found.pid == proc.pid


def test_attach_by_qmp_socket_follows_until_the_guest_exits(
    guest: tuple[subprocess.Popen[bytes], Path, Path], tmp_path: Path
) -> None:
    proc, qmp, _ = guest
    out = tmp_path / "t.jsonl"
    attach = subprocess.Popen(
        [sys.executable, "-m", "uniobs.cli", "attach", "--interval", "0.2", "--export", f"file:{out}", str(qmp)],
        stderr=subprocess.PIPE,
    )
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)  # the guest goes away while attached
    _, stderr = attach.communicate(timeout=30)
    assert attach.returncode == 0, stderr
    assert b"attached-fn: exited" in stderr
    signals = Signals(out)
    beats = [line for line in signals.console() if "heartbeat" in line or line.startswith("@@uniobs/1 metric")]
    assert len(beats) >= 3  # live console lines arrived while attached
    assert signals.events()[0]["event"] == "uniobs.attached" and signals.events()[-1]["event"] == "uniobs.exited"
    assert signals.events()[0]["resource"]["process.pid"] == proc.pid
    assert signals.last("process.memory.usage") > 0


def test_attach_by_pid_and_interrupt_leaves_the_guest_running(
    guest: tuple[subprocess.Popen[bytes], Path, Path], tmp_path: Path
) -> None:
    proc, _, _ = guest
    out = tmp_path / "t.jsonl"
    attach = subprocess.Popen(
        [sys.executable, "-m", "uniobs.cli", "attach", "--interval", "0.2", "--export", f"file:{out}", str(proc.pid)],
        stderr=subprocess.PIPE,
    )
    assert attach.stderr is not None and b"attached to qemu" in attach.stderr.readline()  # it is watching now
    time.sleep(1)
    attach.send_signal(signal.SIGINT)
    _, stderr = attach.communicate(timeout=30)
    assert attach.returncode == 0 and b"attached-fn: stopped" in stderr, stderr
    assert proc.poll() is None  # not disturbed
    assert Signals(out).events()[-1]["event"] == "uniobs.detached"


def test_attach_refuses_what_is_not_a_vmm(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "uniobs.cli", "attach", "1"], capture_output=True, text=True)
    assert result.returncode != 0 and "not a running qemu-system-* or solo5-hvt process" in result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "uniobs.cli", "attach", str(tmp_path / "nope.sock")], capture_output=True, text=True
    )
    assert "no such QMP socket" in result.stderr
