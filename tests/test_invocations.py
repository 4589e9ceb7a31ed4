"""Invocations observed at the port of a real function: `uniobs run --function
examples/hello-node/function.toml --as container` (runc) and `--as unikernel` (the Linux microVM
under QEMU), requests sent through uniobs' proxy, the telemetry read back from the real file
exporter's OTLP JSON lines."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest
from otlpfile import Signals
from support import ROOT, free_port, requires_node, requires_qemu, requires_root, requires_runc, requires_vmlinuz
from test_proxy import invocations

EXAMPLE = ROOT / "examples" / "hello-node"
TIMEOUT_S = 3.0  # --request-timeout: far above a warm request even under TCG

SIDES = [
    pytest.param("container", marks=[pytest.mark.containers, requires_runc, requires_root, requires_node]),
    pytest.param("unikernel", marks=[pytest.mark.qemu, pytest.mark.slow, requires_qemu, requires_vmlinuz,
                                     requires_node]),
]  # fmt: skip


def get(url: str, timeout: float = 60) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def kill_guest(run: subprocess.Popen[bytes], side: str) -> None:
    """Kill the function itself, not uniobs: the QEMU process, or the container's node (runc kill)."""
    for child in psutil.Process(run.pid).children(recursive=True):
        cmd = child.cmdline()
        if side == "unikernel" and cmd and cmd[0].endswith("qemu-system-x86_64"):
            child.kill()
            return
        if side == "container" and cmd[:2] and cmd[0].endswith("runc") and cmd[1] == "run":
            subprocess.run(["runc", "kill", cmd[-1], "KILL"], check=True, capture_output=True)
            return
    raise AssertionError(f"no {side} process under uniobs run")


@pytest.mark.parametrize("side", SIDES)
def test_requests_through_the_proxy_are_one_span_and_one_report_each(side: str, tmp_path: Path) -> None:
    subprocess.run(["make", "-s", "-C", str(EXAMPLE / side)], check=True, capture_output=True)
    port, out = free_port(), tmp_path / "t.jsonl"
    run = subprocess.Popen(
        [sys.executable, "-m", "uniobs.cli", "run", "--quiet", "--interval", "0.5", "--export", f"file:{out}",
         "--function", str(EXAMPLE / "function.toml"), "--as", side, "--listen", f"127.0.0.1:{port}",
         "--request-timeout", str(TIMEOUT_S)],
        stderr=subprocess.PIPE,
    )  # fmt: skip
    assert run.stderr is not None
    stderr: list[bytes] = []
    threading.Thread(target=lambda: stderr.extend(run.stderr or []), daemon=True).start()
    public = f"http://127.0.0.1:{port}"
    answers: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + 180
        upstream = None
        while upstream is None and time.monotonic() < deadline and run.poll() is None:
            m = re.search(
                rb"invocations at http://127\.0\.0\.1:(\d+)/ \(proxied to 127\.0\.0\.1:(\d+)\)", b"".join(stderr)
            )
            upstream = int(m.group(2)) if m else None
            time.sleep(0.1)
        assert upstream is not None and int(m.group(1)) == port, b"".join(stderr).decode(errors="replace")  # type: ignore[union-attr]
        # ready: straight to the instance (a probe, not an invocation), then the invocations
        while time.monotonic() < deadline:
            try:
                if get(f"http://127.0.0.1:{upstream}/", timeout=5)[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
        time.sleep(1)  # the definition's own first request (through the proxy) has been sent
        answers["hello"] = get(f"{public}/")
        answers["error"] = get(f"{public}/status/500")
        answers["timeout"] = get(f"{public}/sleep/{int(TIMEOUT_S * 3000)}")

        def killed() -> None:
            answers["killed"] = get(f"{public}/sleep/60000")

        request = threading.Thread(target=killed)
        request.start()
        time.sleep(1.0)  # the request is in the function
        kill_guest(run, side)
        request.join(60)
        run.wait(90)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(30)
    log = b"".join(stderr).decode(errors="replace")
    assert answers["hello"] == (200, b"Hello World\n"), log
    assert answers["error"] == (500, b"status 500\n")
    assert answers["timeout"][0] == 504
    assert answers["killed"][0] == 502, log
    signals = Signals(out)
    spans, reports = invocations(signals)
    # the definition's first request, and ours: one span and one REPORT each
    assert len(spans) == 5 and len(reports) == 5, [s["attributes"].get("url.path") for s in spans]
    statuses = sorted(s["attributes"]["http.response.status_code"] for s in spans)
    assert statuses == [200, 200, 500, 502, 504]
    first = min(spans, key=lambda s: int(s["startTimeUnixNano"]))
    assert first["attributes"]["faas.coldstart"] is True
    assert sum(1 for s in spans if s["attributes"]["faas.coldstart"]) == 1
    cold = [r for r in reports if r["attributes"]["faas.coldstart"]]
    assert len(cold) == 1 and re.search(r" Init Duration: \d+\.\d\d ms$", cold[0]["body"]), cold
    assert cold[0]["attributes"]["faas.invocation_id"] == first["attributes"]["faas.invocation_id"]
    errors = {s["attributes"]["url.path"]: s["attributes"].get("error.type") for s in spans}
    assert errors[f"/sleep/{int(TIMEOUT_S * 3000)}"] == "timeout" and errors["/status/500"] == "500"
    assert errors["/sleep/60000"] == "connection_reset" and errors["/"] is None
    routed = next(s for s in spans if s["attributes"]["url.path"] == "/status/500")
    assert routed["name"] == "GET /status/{code}" and routed["kind"] == 2
    instance = spans[0]["resource"]
    assert instance["faas.name"] == "hello-node" and instance["uniobs.workload.kind"] == side
    assert signals.last("faas.invocations") == 5
    assert signals.last("faas.errors", error_type="500") == 1
    assert signals.last("faas.errors", error_type="timeout") == 1
    assert signals.last("faas.errors", error_type="connection_reset") == 1
    assert signals.last("faas.timeouts") == 1
    # the peak memory of the instance: a real figure while it ran (once it is killed, its cgroup or
    # VMM may be gone before the last REPORT is made: then "unknown", and no faas.mem_usage point)
    peaks = [p for _, _, p in signals.points("faas.mem_usage")]
    assert peaks and 4 <= int(peaks[-1]["count"]) <= 5 and float(peaks[-1]["min"]) > 1 << 20
    by_path = {s["spanId"]: s["attributes"]["url.path"] for s in spans}
    for report in reports:
        used = re.search(r"Max Memory Used: (\d+ MB|unknown)", report["body"])
        assert used and (used.group(1) != "unknown" or by_path[report["spanId"]] == "/sleep/60000"), report
    assert all(re.search(r"Memory Size: (\d+ MB|unknown)", r["body"]) for r in reports)
    if side == "unikernel":
        assert all("Memory Size: 1024 MB" in r["body"] for r in reports)  # QEMU's -m 1024
