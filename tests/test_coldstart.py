"""Cold starts as traces: every `uniobs run` launch is one trace, phase by phase, continued
inside the guest through the W3C traceparent — on real QEMU and real runc."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from otlpfile import Signals
from support import ROOT, free_port, requires_node, requires_qemu, requires_root, requires_runc

from uniobs.coldstart.trace import ColdStart, traceparent

KERNEL = ROOT / "examples" / "minikernel" / "build" / "minikernel.elf"
CONTAINER = ROOT / "examples" / "hello-node" / "container"
QEMU = ["qemu-system-x86_64", "-machine", "microvm", "-accel", "tcg", "-m", "64", "-nodefaults", "-nographic",
        "-no-reboot", "-serial", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-kernel", str(KERNEL)]  # fmt: skip


def uniobs_run(out: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "uniobs.cli", "run", "--quiet", "--interval", "0.2", "--export", f"file:{out}", *args],
        capture_output=True, timeout=timeout,
    )  # fmt: skip


def trace(signals: Signals) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """(root span, host phase spans in start order, guest spans)."""
    spans = signals.spans()
    [root] = [s for s in spans if s["name"] == "coldstart"]
    phases = sorted((s for s in spans if s["name"].startswith("coldstart.")), key=lambda s: int(s["startTimeUnixNano"]))
    guest = [s for s in spans if not s["name"].startswith("coldstart")]
    return root, phases, guest


def check_consistent(root: dict[str, Any], phases: list[dict[str, Any]]) -> None:
    start, end = int(root["startTimeUnixNano"]), int(root["endTimeUnixNano"])
    assert root["attributes"]["faas.coldstart"] is True and "parentSpanId" not in root
    for phase in phases:
        assert phase["traceId"] == root["traceId"] and phase["parentSpanId"] == root["spanId"]
        p_start, p_end = int(phase["startTimeUnixNano"]), int(phase["endTimeUnixNano"])
        assert start <= p_start <= p_end <= end  # non-negative, within the root
    # the boot phases follow one another; readiness and the first request are measured from the
    # host's side and may overlap the end of app_init (a probe can beat the "ready" line)
    boot = [p for p in phases if p["name"] not in ("coldstart.readiness", "coldstart.first_request")]
    ends = [int(p["endTimeUnixNano"]) for p in boot]
    starts = [int(p["startTimeUnixNano"]) for p in boot]
    assert all(e <= s for e, s in zip(ends, starts[1:], strict=False))  # no overlap
    assert sum(e - s for s, e in zip(starts, ends, strict=True)) <= end - start  # they add up within the root


def test_phases_are_cut_only_where_markers_exist() -> None:
    cs = ColdStart("unikernel", "qemu")
    cs.mark("exec", 0)
    cs.mark("first_byte", 40)
    cs.mark("kernel_ready", 50)
    cs.mark("kernel_ready", 99)  # only the first occurrence counts
    assert [p[0] for p in cs.phases()] == ["guest_boot"]  # no QMP-ready mark: no vmm_spawn phase
    [root, boot] = cs.spans(end_ns=500)
    assert root.error == "the function never became ready" and root.end_ns == 500
    assert (boot.start_ns, boot.end_ns, boot.parent_span_id) == (40, 50, root.span_id)
    cs.mark("app_start", 55)
    cs.mark("ready", 70)
    root = cs.spans(end_ns=500)[0]
    assert root.error is None and root.end_ns == 70
    assert [s.metric for s in cs.samples()].count("faas.init_duration") == 1
    assert cs.traceparent == traceparent(cs.trace_id, cs.root_span_id)
    assert len(cs.traceparent) == 55 and cs.traceparent.startswith("00-") and cs.traceparent.endswith("-01")


@pytest.mark.qemu
@requires_qemu
def test_unikernel_cold_start_trace_continues_inside_the_guest(tmp_path: Path) -> None:
    subprocess.run(["make", "-s", "-C", str(KERNEL.parent.parent)], check=True)
    out = tmp_path / "t.jsonl"
    result = uniobs_run(out, "--", *QEMU, "-append", "mode=ok work_ms=30 run_ms=600")
    assert result.returncode == 1, result.stderr
    signals = Signals(out)
    root, phases, guest = trace(signals)
    assert [p["name"] for p in phases] == ["coldstart.vmm_spawn", "coldstart.guest_boot", "coldstart.app_init"]
    check_consistent(root, phases)
    # the guest got the traceparent on its kernel command line: its spans are in the host's trace
    by_name = {s["name"]: s for s in guest}
    assert {"init", "work"} <= set(by_name)
    assert all(s["traceId"] == root["traceId"] for s in guest)
    assert by_name["init"]["parentSpanId"] == root["spanId"]
    assert by_name["work"]["parentSpanId"] == by_name["init"]["spanId"]
    # the same data as metrics
    assert signals.last("faas.coldstarts", uniobs_shrinkwrap="unikernel") == 1
    init = signals.points("faas.init_duration")[-1][2]
    assert init["count"] == "1" and init["unit"] == "s"
    phase_points = {a["uniobs.phase"] for _, a, _ in signals.points("uniobs.coldstart.phase.duration")}
    assert phase_points == {"vmm_spawn", "guest_boot", "app_init"}


@pytest.mark.qemu
@requires_qemu
def test_a_boot_that_fails_ends_the_trace_with_an_error(tmp_path: Path) -> None:
    subprocess.run(["make", "-s", "-C", str(KERNEL.parent.parent)], check=True)
    out = tmp_path / "t.jsonl"
    result = uniobs_run(out, "--", *QEMU, "-append", "mode=panic")
    assert result.returncode == 7
    root, phases, _ = trace(Signals(out))
    assert root["status"]["code"] == 2  # ERROR
    assert "exited before ready" in root["status"]["message"] or "crash" in root["status"]["message"]
    check_consistent(root, phases)


@pytest.mark.qemu
@requires_qemu
def test_a_console_probe_marks_readiness(tmp_path: Path) -> None:
    subprocess.run(["make", "-s", "-C", str(KERNEL.parent.parent)], check=True)
    out = tmp_path / "t.jsonl"
    result = uniobs_run(out, "--ready", "console:heartbeat", "--", *QEMU, "-append", "mode=ok run_ms=800 beat_ms=100")
    assert result.returncode == 1, result.stderr
    root, phases, _ = trace(Signals(out))
    assert [p["name"] for p in phases][-1] == "coldstart.readiness"
    check_consistent(root, phases)


@pytest.mark.containers
@requires_runc
@requires_root
@requires_node
def test_container_cold_start_with_readiness_and_first_request(tmp_path: Path) -> None:
    subprocess.run(["make", "-s", "-C", str(CONTAINER)], check=True, capture_output=True)
    port, out = free_port(), tmp_path / "t.jsonl"
    config = json.loads((CONTAINER / "build" / "bundle-hostnet" / "config.json").read_text())
    config["root"]["path"] = str(CONTAINER / "build" / "bundle" / "rootfs")
    script = "require('/app/app.js'); setTimeout(() => process.exit(0), 1500)"
    config["process"]["args"] = ["/usr/bin/node", "-e", script]
    config["process"]["env"] = [*config["process"].get("env", []), f"PORT={port}"]
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps(config))
    url = f"http://127.0.0.1:{port}/"
    result = uniobs_run(
        out, "--ready", f"tcp:127.0.0.1:{port}", "--request", url, "--",
        "runc", "run", "--bundle", str(bundle), f"uniobs-cs-{os.getpid()}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    root, phases, guest = trace(Signals(out))
    names = [p["name"].removeprefix("coldstart.") for p in phases]
    assert names == ["runtime_create", "runtime_start", "app_init", "readiness", "first_request"]
    check_consistent(root, phases)
    # TRACEPARENT reached the container: the function's own span is in the host's trace
    [listen] = [s for s in guest if s["name"] == "app.listen"]
    assert listen["traceId"] == root["traceId"] and listen["parentSpanId"] == root["spanId"]
    assert root["attributes"]["uniobs.shrinkwrap"] == "container"
