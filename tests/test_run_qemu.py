"""`uniobs run -- qemu-system-x86_64 ...` on the example unikernel under real QEMU (TCG)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from otlpfile import Signals
from support import ROOT, requires_qemu, requires_root

KERNEL = ROOT / "examples" / "minikernel" / "build" / "minikernel.elf"

pytestmark = [pytest.mark.qemu, requires_qemu]

QEMU = ["qemu-system-x86_64", "-machine", "microvm", "-accel", "tcg", "-m", "64", "-nodefaults", "-nographic",
        "-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def kernel() -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the example unikernel")
    subprocess.run(["make", "-s", "-C", str(KERNEL.parent.parent)], check=True)
    return KERNEL


def uniobs_run(out: Path, *qemu_args: str, serial: tuple[str, ...] = ("-serial", "stdio"), timeout: float = 60,
               extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[bytes]:  # fmt: skip
    cmd = [sys.executable, "-m", "uniobs.cli", "run", "--export", f"file:{out}", *extra, "--",
           *QEMU, *serial, "-kernel", str(KERNEL), *qemu_args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, timeout=timeout)


def test_run_exports_console_lifecycle_and_vmm_metrics_and_exits_with_the_guest_status(tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    result = uniobs_run(out, "-append", "mode=ok work_ms=30 run_ms=1500 exit=5")
    assert result.returncode == 11, result.stderr  # isa-debug-exit: (5 << 1) | 1
    signals = Signals(out)
    # every console line, in order, none lost: the same bytes QEMU wrote (mirrored to our stdout)
    assert signals.console() == result.stdout.decode().splitlines()
    assert signals.console()[1] == "minikernel 0.1 (uniobs example unikernel)"
    assert "@@uniobs/1 mark ready" in " ".join(signals.console())
    events = [e["event"] for e in signals.events()]
    assert events[0] == "uniobs.spawned" and events[-1] == "uniobs.exited"
    assert "uniobs.console_first_byte" in events
    exited = signals.events()[-1]
    assert exited["attributes"]["uniobs.exit.reason"] == "exit"
    assert exited["attributes"]["uniobs.guest.exit_code"] == 5
    assert exited["attributes"]["process.exit.code"] == 11
    res = exited["resource"]
    assert res["service.name"] == "minikernel" and res["uniobs.workload.kind"] == "unikernel"
    assert res["process.executable.name"] == "qemu-system-x86_64" and res["faas.instance"].startswith("minikernel-")
    # VMM process metrics while it ran
    assert signals.last("process.memory.usage") > 10 << 20
    assert signals.last("process.thread.count") >= 2
    assert signals.last("uniobs.console.lines") == len(signals.console())
    # hypervisor stats over QMP: per-vCPU CPU time (from the vCPU threads), memory size, status
    vcpu = signals.points("uniobs.vm.vcpu.time")
    assert {a["uniobs.vm.vcpu"] for _, a, _ in vcpu} == {"0"} and {a["cpu.mode"] for _, a, _ in vcpu} == {
        "user",
        "system",
    }
    assert vcpu[0][2]["unit"] == "s"
    assert signals.last("uniobs.vm.memory.size") == 64 << 20
    assert signals.last("uniobs.vm.status", uniobs_vm_status="running") == 1
    assert signals.last("uniobs.workload.exits", uniobs_exit_reason="exit") == 1
    assert b"exited: exit (guest status 5), status 11" in result.stderr


def test_flood_loses_no_line(tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    result = uniobs_run(out, "-append", "mode=flood flood_kb=512", extra=("--quiet",))
    assert result.returncode == 1, result.stderr
    console = Signals(out).console()
    flood = [line for line in console if not line.startswith("@@") and len(line) > 40]
    assert sum(len(line) + 1 for line in flood) >= 512 * 1024 * 0.9
    assert console[-1].startswith("@@uniobs/1 mark exit")


def test_panic_and_triple_fault_are_exit_reasons(tmp_path: Path) -> None:
    result = uniobs_run(tmp_path / "p.jsonl", "-append", "mode=panic", extra=("--quiet",))
    assert result.returncode == 7
    exited = Signals(tmp_path / "p.jsonl").events()[-1]
    assert exited["attributes"]["uniobs.guest.exit_code"] == 3 and exited["severity"] == "WARN"
    assert any(line.startswith("PANIC") for line in Signals(tmp_path / "p.jsonl").console())
    result = uniobs_run(tmp_path / "t.jsonl", "-append", "mode=triplefault", extra=("--quiet",))
    assert result.returncode == 0
    signals = Signals(tmp_path / "t.jsonl")
    assert signals.events()[-1]["attributes"]["uniobs.exit.reason"] == "guest-reset"
    shutdown = [e for e in signals.events("qemu.") if e["event"] == "qemu.shutdown"]
    assert shutdown and shutdown[0]["attributes"]["qemu.shutdown.reason"] == "guest-reset"


def _start_hanging(out: Path, *extra: str) -> tuple[subprocess.Popen[bytes], psutil.Process]:
    cmd = [sys.executable, "-m", "uniobs.cli", "run", "--quiet", "--interval", "0.2", "--export", f"file:{out}", *extra,
           "--", *QEMU, "-serial", "stdio", "-kernel", str(KERNEL), "-append", "mode=hang"]  # fmt: skip
    runner = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        children = psutil.Process(runner.pid).children()
        if children:
            time.sleep(1.0)  # let it boot and be scraped a few times
            return runner, children[0]
        time.sleep(0.05)
    runner.kill()
    raise AssertionError("QEMU did not start")


def test_vmm_killed_with_sigkill_mid_run_is_survived_and_reported(tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    runner, qemu = _start_hanging(out)
    os.kill(qemu.pid, signal.SIGKILL)
    _, stderr = runner.communicate(timeout=30)
    assert runner.returncode == 128 + 9, stderr
    signals = Signals(out)
    exited = signals.events()[-1]
    assert exited["attributes"]["uniobs.exit.reason"] == "signal"
    assert exited["attributes"]["uniobs.exit.signal"] == "SIGKILL" and exited["severity"] == "ERROR"
    assert signals.last("process.cpu.time", cpu_mode="user") > 0  # it was scraped while alive
    assert b"Traceback" not in stderr


def test_sigterm_to_uniobs_shuts_the_guest_down_cleanly(tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    runner, _ = _start_hanging(out)
    runner.send_signal(signal.SIGTERM)
    _, stderr = runner.communicate(timeout=30)
    assert runner.returncode == 0, stderr
    signals = Signals(out)
    assert signals.events()[-1]["attributes"]["uniobs.exit.reason"] == "host-signal"
    assert [e["attributes"].get("qemu.shutdown.reason") for e in signals.events("qemu.")] == ["host-signal"]


def test_a_users_ctrl_c_is_not_an_error(tmp_path: Path) -> None:
    """Ctrl-C in a terminal: SIGINT to the whole foreground process group, uniobs and QEMU alike.
    The user asked for that end: the exit and the cut-short cold start are not logged as errors."""
    out = tmp_path / "t.jsonl"
    cmd = [sys.executable, "-m", "uniobs.cli", "run", "--quiet", "--interval", "0.2", "--export", f"file:{out}",
           "--", *QEMU, "-serial", "stdio", "-kernel", str(KERNEL), "-append", "mode=hang"]  # fmt: skip
    runner = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not psutil.Process(runner.pid).children():
        time.sleep(0.05)
    time.sleep(1.0)
    os.killpg(runner.pid, signal.SIGINT)
    _, stderr = runner.communicate(timeout=30)
    assert runner.returncode == 0, stderr  # QEMU's own end on a signal (QMP SHUTDOWN host-signal)
    events = Signals(out).events()
    exited = events[-1]
    assert exited["attributes"]["uniobs.exit.reason"] == "host-signal" and exited["severity"] == "INFO"
    assert all(e["severity"] != "ERROR" for e in events), [e for e in events if e["severity"] == "ERROR"]
    assert b"ERROR" not in stderr and b"Traceback" not in stderr


def test_a_file_serial_keeps_its_file_and_is_captured_beside_it(tmp_path: Path) -> None:
    out, serial_file = tmp_path / "t.jsonl", tmp_path / "serial.log"
    result = uniobs_run(out, "-append", "mode=ok", serial=("-serial", f"file:{serial_file}"))
    assert result.returncode == 1, result.stderr
    written = serial_file.read_text().splitlines()
    assert Signals(out).console() == written and len(written) > 10


def test_garbage_is_neutralised_counted_and_the_guest_still_reaches_ready(tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    result = uniobs_run(out, "-append", "mode=garbage longline_kb=256", extra=("--quiet",))
    assert result.returncode == 1, result.stderr
    signals = Signals(out)
    console = signals.console()
    assert any(line.startswith("@@uniobs/1 mark ready") for line in console)
    assert all("\x00" not in line and "\x1b" not in line for line in console)
    assert signals.last("uniobs.console.invalid_utf8_lines") >= 1
    assert signals.last("uniobs.console.escaped_lines") >= 1
    assert signals.last("uniobs.console.truncated_lines") >= 1  # the 256 KiB line
    assert signals.last("uniobs.console.dropped_bytes") >= 256 * 1024 - 16 * 1024


@requires_root
def test_vmm_in_its_own_cgroup_is_measured_like_a_container(tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    cgroup = f"/uniobs-test/vm-{os.getpid()}"
    result = uniobs_run(
        out, "-append", "mode=ok mem_kb=32768 run_ms=1500", extra=("--quiet", "--cgroup", cgroup, "--interval", "0.3")
    )
    assert result.returncode == 1, result.stderr
    signals = Signals(out)
    usage = signals.points("container.memory.usage")
    assert usage and usage[-1][0]["uniobs.cgroup.path"] == cgroup
    assert max(float(p["asInt"]) for _, _, p in usage) >= 32 << 20  # the guest touched 32 MiB
    assert signals.last("container.cpu.time", cpu_mode="user") > 0
    from uniobs.host.cgroupfs import detect_layout

    layout = detect_layout()
    hierarchy = layout.v1.get("memory") or layout.unified
    assert hierarchy is not None and not os.path.exists(hierarchy + cgroup)  # removed after the exit
