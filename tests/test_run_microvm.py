"""`uniobs run` on the network-facing guest: the hello-node microVM (Debian's kernel + Node.js)."""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from otlpfile import Signals
from support import ROOT, free_port, requires_node, requires_qemu, requires_vmlinuz

UNIKERNEL = ROOT / "examples" / "hello-node" / "unikernel"

pytestmark = [pytest.mark.qemu, pytest.mark.slow, requires_qemu, requires_vmlinuz, requires_node]


def test_microvm_under_uniobs_run_answers_and_is_observed(tmp_path: Path) -> None:
    subprocess.run(["make", "-s", "-C", str(UNIKERNEL)], check=True)
    append = subprocess.run(
        [sys.executable, str(UNIKERNEL / "boot_args.py")], check=True, capture_output=True, text=True
    ).stdout.strip()
    port, out = free_port(), tmp_path / "t.jsonl"
    cmd = [sys.executable, "-m", "uniobs.cli", "run", "--quiet", "--interval", "0.5", "--name", "hello-node",
           "--export", f"file:{out}", "--ready", f"http://127.0.0.1:{port}/=200",
           "--request", f"http://127.0.0.1:{port}/", "--propagate-trace", "--",
           "qemu-system-x86_64", "-machine", "microvm,pit=on,rtc=on", "-accel", "tcg", "-m", "1024", "-nodefaults",
           "-nographic", "-no-reboot", "-serial", "stdio", "-kernel", str(UNIKERNEL / "build" / "vmlinux"),
           "-initrd", str(UNIKERNEL / "build" / "initramfs.cpio.gz"), "-append", append,
           "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:8002", "-device", "virtio-net-device,netdev=n0",
           "-device", "virtio-rng-device"]  # fmt: skip
    runner = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    body = b""
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline and runner.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                    body = response.read()
                    break
            except OSError:
                time.sleep(0.2)
        assert body == b"Hello World\n"
        time.sleep(1.0)  # one more scrape while it serves
    finally:
        runner.send_signal(signal.SIGTERM)
        _, stderr = runner.communicate(timeout=60)
    assert runner.returncode == 0, stderr
    signals = Signals(out)
    console = signals.console()
    marks = [line.split()[2] for line in console if line.startswith("@@uniobs/1 mark")]
    assert marks[:3] == ["kernel_ready", "app_start", "ready"]
    assert any(line.startswith("@@uniobs/1 metric hello.requests counter 1") for line in console)
    assert signals.events()[-1]["attributes"]["uniobs.exit.reason"] == "host-signal"
    assert signals.events()[-1]["resource"]["service.name"] == "hello-node"
    assert signals.points("process.memory.usage"), stderr.decode(errors="replace")[-4000:]
    assert signals.last("process.memory.usage") > 100 << 20  # QEMU holding a booted Linux and Node.js
    assert signals.last("process.cpu.time", cpu_mode="user") > 1.0  # TCG emulation is CPU work
    # the cold-start trace, continued inside the guest (--propagate-trace: on the kernel command line)
    spans = signals.spans()
    [root] = [s for s in spans if s["name"] == "coldstart"]
    assert "status" not in root or root["status"].get("code") != 2
    ordered = sorted(spans, key=lambda s: int(s["startTimeUnixNano"]))
    phases = [s["name"] for s in ordered if s["name"].startswith("coldstart.")]
    assert "coldstart.readiness" in phases and phases[-1] == "coldstart.first_request"
    # the phases add up to the cold start: from the exec, contiguous, none of 0 ns, none unattributed;
    # guest_boot starts where the guest's clock (its printk and t= stamps) read 0
    chain = [s for s in ordered if s["name"].startswith("coldstart.") and s["name"] != "coldstart.first_request"]
    assert chain[0]["startTimeUnixNano"] == root["startTimeUnixNano"]
    assert all(a["endTimeUnixNano"] == b["startTimeUnixNano"] for a, b in itertools.pairwise(chain))
    assert all(int(s["endTimeUnixNano"]) > int(s["startTimeUnixNano"]) for s in chain)
    names = [s["attributes"]["uniobs.phase"] for s in chain]
    assert names[names.index("guest_load") :] == ["guest_load", "guest_boot", "runtime_load", "app_init", "readiness"]
    assert chain[names.index("guest_boot")]["attributes"]["uniobs.coldstart.from"] == "guest_start"
    total = int(chain[-1]["endTimeUnixNano"]) - int(root["startTimeUnixNano"])
    assert abs(signals.points("faas.init_duration")[-1][2]["sum"] * 1e9 - total) < 1_000
    [listen] = [s for s in spans if s["name"] == "app.listen"]
    assert listen["traceId"] == root["traceId"] and listen["parentSpanId"] == root["spanId"]
