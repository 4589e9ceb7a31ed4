"""A flooding guest against `uniobs agent` with two exporters: the agent survives, and every line
is accounted for exactly (written = read; handed = sent + failed + dropped; received = sent).

The guest is the example minikernel under real QEMU with a `-chardev file` console; the flood is
appended to that console file at ~6 MB/s (as in issue 10), in three bursts, while the agent
exports to a real OTLP/HTTP receiver and to the OTLP JSON file exporter. A small export buffer
(2 MiB) makes the drop-oldest path run under the load, concurrently with both exporters.
bench/flood_bench.py measures the peak memory of the same scenario at 300 MB.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from otlp_receiver import HttpReceiver
from otlpfile import Signals
from support import free_port, requires_qemu
from test_agent import (
    KERNEL,
    _no_agent_left_behind,  # noqa: F401 (autouse: a failed run never leaves its agent running)
    health,
    start_agent,
    stop_agent,
)

pytestmark = [pytest.mark.qemu, pytest.mark.slow, requires_qemu]

BURST_LINES = 123 * 1024  # 8 MB in 64 KiB writes of 1,024 lines of 64 bytes
FLOOD = r"""
import sys, time
mb, rate, path, first = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3], int(sys.argv[4])
total, chunk, written, i = int(mb * 1e6), 64 * 1024, 0, first
start = time.monotonic()
with open(path, "ab", buffering=0) as out:
    while written < total:
        buf = b"".join(b"flood %08d %s\n" % (i + k, b"x" * 48) for k in range(chunk // 64))
        i += chunk // 64
        out.write(buf)
        written += len(buf)
        ahead = written / (rate * 1e6) - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
"""


def test_agent_survives_a_console_flood_with_two_exporters_and_counts_exactly(tmp_path: Path) -> None:
    subprocess.run(["make", "-s", "-C", str(KERNEL.parent.parent)], check=True)
    receiver = HttpReceiver()
    out = tmp_path / "telemetry.jsonl"
    console = tmp_path / "console.log"
    port = free_port()
    agent = start_agent(tmp_path, f'otlp-http:{receiver.endpoint}", "file:{out}', port, buffer_bytes=2 << 20)
    vm = subprocess.Popen(
        ["qemu-system-x86_64", "-machine", "microvm", "-accel", "tcg", "-m", "64", "-nodefaults", "-display", "none",
         "-no-reboot", "-name", "flooded", "-qmp", f"unix:{tmp_path}/qmp.sock,server=on,wait=off",
         "-chardev", f"file,id=c0,path={console},append=on", "-serial", "chardev:c0",
         "-kernel", str(KERNEL), "-append", "mode=ok run_ms=600000 beat_ms=600000"],
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and health(port)[1]["workloads"] < 1:
            time.sleep(0.2)
        assert health(port)[1]["workloads"] >= 1
        # The agent follows a VM it finds running from the end of its file console (what is there
        # is history, not news), once its console opens: a marker line, seen at the receiver, says
        # the capture is on before the flood begins.
        # A VM found before its console file exists is streamed from a later round: the marker is
        # written again until one arrives.
        seen = False
        for _ in range(60):
            with console.open("ab") as f:
                f.write(b"marker: the flood starts\n")
            seen = receiver.received.wait_for(
                lambda r: any(rec.body.string_value.startswith("marker:") for _, rec in r.log_records()), timeout=0.5
            )
            if seen:
                break
        assert seen, "the agent never streamed the guest's console"
        peaks = []
        for burst in range(3):
            subprocess.run([sys.executable, "-c", FLOOD, "8", "6", str(console), str(burst * 1_000_000)],
                           check=True, timeout=60)  # fmt: skip
            assert agent.poll() is None, "the agent died under the flood"
            status = health(port)[1]
            peaks.append(status["buffer"]["peak_bytes"])
            assert status["buffer"]["peak_bytes"] <= status["buffer"]["limit_bytes"]
        time.sleep(2)  # the agent reads the rest of the file
    finally:
        vm.kill()
        vm.wait()
    deadline = time.monotonic() + 60  # the agent sees the guest gone, reads the backlog, takes its last readings
    while time.monotonic() < deadline and (health(port)[1]["workloads"] or health(port)[1]["retiring"]):
        time.sleep(0.2)
    final = stop_agent(agent)
    receiver.stop()
    # written: the marker and every line after it, all the flood's (the guest is quiet after
    # booting: beat_ms=600000); the capture may also have read some boot lines before the marker.
    lines = console.read_bytes().split(b"\n")[:-1]
    marker = max(i for i, line in enumerate(lines) if line.startswith(b"marker:"))  # the last one: read for sure
    written = len(lines) - marker
    assert written == 1 + 3 * BURST_LINES

    # every item handed to an exporter ended in exactly one outcome, and something was dropped
    for name in ("otlp-http", "file"):
        st = final[name]
        for sig in ("metrics", "logs", "traces"):
            assert st["sent"][sig] + st["failed"][sig] + st["dropped"][sig] == st["handed"][sig], (name, sig, st)
        assert st["dropped"]["logs"] > 0  # the 2 MiB buffer overflowed: the drop path ran
    # what uniobs says it sent is what arrived, on both exporters
    assert len(receiver.received.log_records()) == final["otlp-http"]["sent"]["logs"]
    signals = Signals(out)
    assert len(signals.logs()) == final["file"]["sent"]["logs"]
    console_records = signals.console()
    # every console line was read (written = read), and each became one log record handed over
    read = [
        int(p.get("asInt", 0))
        for res, _, p in signals.points("uniobs.console.lines")
        if res.get("faas.name") == "flooded"
    ]
    assert read and written <= max(read) <= written + marker, final  # no line after the marker was missed
    assert final["file"]["handed"]["logs"] >= written
    # no line was delivered twice, and the newest survived (the oldest were dropped first)
    numbers = [int(text.split()[1]) for text in console_records if text.startswith("flood ")]
    assert len(numbers) == len(set(numbers))
    assert max(numbers) == 2_000_000 + BURST_LINES - 1
    assert 0 <= final["file"]["handed"]["logs"] - max(read) < 20  # besides the lines: a few lifecycle records
