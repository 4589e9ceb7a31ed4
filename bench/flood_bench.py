"""Peak memory of `uniobs run` and `uniobs agent` while a guest floods its console, two exporters on.

The flood: FLOOD MB of 64-byte console lines at RATE MB/s (default 300 MB at 6 MB/s, the case of
issue 10). For `run`, the launched workload is a process printing the flood on its stdout (the
console `run` captures); for `agent`, a real QEMU guest (the example minikernel, TCG) with a
`-chardev file` console that the flood is appended to, so the agent reads it from offset 0 as
it reads any file console. The two exporters are OTLP/HTTP to a loopback receiver that counts
what it is sent, and the OTLP JSON file exporter writing to /dev/null (full encoding, no disk).

Printed per mode: peak RSS (VmHWM of the uniobs process, polled), the budget it is compared
with (150 MB, docs/agent.md), log records handed to the exporters and, per exporter, sent /
failed / dropped, whether every item is accounted for (handed = sent + failed + dropped) and
whether what the receiver got equals what uniobs says it sent. The measured Python cost of a
buffered log record (tracemalloc) is printed first: the constant the byte budget charges.

    .venv/bin/python bench/flood_bench.py [--mb 300] [--rate 6] [--rounds 1] [--mode run|agent|both]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
UNIOBS = [sys.executable, "-m", "uniobs.cli"]
KERNEL = ROOT / "examples" / "minikernel" / "build" / "minikernel.elf"
BUDGET_MB = 150

FLOODER = r"""
import sys, time
mb, rate, path = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
out = sys.stdout.buffer if path == "-" else open(path, "ab", buffering=0)
total, chunk, written, i = int(mb * 1e6), 64 * 1024, 0, 0
start = time.monotonic()
while written < total:
    buf = b"".join(b"flood %08d %s\n" % (i + k, b"x" * 48) for k in range(chunk // 64))
    i += chunk // 64
    out.write(buf)
    written += len(buf)
    ahead = written / (rate * 1e6) - (time.monotonic() - start)
    if ahead > 0:
        time.sleep(ahead)
out.flush()
"""


class CountingReceiver:
    """OTLP/HTTP on loopback that decodes each request and keeps only the counts."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        counts = self.counts = {"metrics": 0, "logs": 0, "traces": 0}
        lock = threading.Lock()

        def n_logs(r: Any) -> int:
            return sum(len(sl.log_records) for rl in r.resource_logs for sl in rl.scope_logs)

        def n_points(r: Any) -> int:
            return sum(
                len(getattr(m, m.WhichOneof("data")).data_points)
                for rm in r.resource_metrics
                for sm in rm.scope_metrics
                for m in sm.metrics
            )

        def n_spans(r: Any) -> int:
            return sum(len(ss.spans) for rs in r.resource_spans for ss in rs.scope_spans)

        routes: dict[str, tuple[str, Any, Callable[[Any], int]]] = {
            "/v1/logs": ("logs", ExportLogsServiceRequest, n_logs),
            "/v1/metrics": ("metrics", ExportMetricsServiceRequest, n_points),
            "/v1/traces": ("traces", ExportTraceServiceRequest, n_spans),
        }

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                signal_name, kind, count = routes[self.path]
                request = kind()
                request.ParseFromString(body)
                with lock:
                    counts[signal_name] += count(request)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def record_cost() -> float:
    """Bytes a buffered console LogEvent costs beyond its body (tracemalloc)."""
    from uniobs.model import LogEvent

    tracemalloc.start()
    held = []
    before = tracemalloc.get_traced_memory()[0]
    for i in range(50_000):
        held.append((None, LogEvent(i, f"flood {i:08d} " + "x" * 48, attributes=(("uniobs.console.line", i),))))
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / len(held) - sys.getsizeof(held[-1][1].body)


def watch_peak(pid: int, stop: threading.Event, out: list[int]) -> None:
    """VmHWM (peak RSS, kB) of pid, polled until it exits."""
    while not stop.is_set():
        try:
            text = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return
        match = re.search(r"VmHWM:\s+(\d+) kB", text)
        if match:
            out.append(int(match.group(1)))
        stop.wait(0.2)


def health_of(port: int) -> dict[str, Any] | None:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return json.load(response)  # type: ignore[no-any-return]
    except urllib.error.HTTPError as exc:
        return json.load(exc)  # type: ignore[no-any-return]
    except OSError:
        return None


def final_line(stderr: str) -> dict[str, Any]:
    match = re.search(r"final (\{.*\})", stderr)
    return json.loads(match.group(1)) if match else {}


def run_mode(mb: float, rate: float, tmp: Path, receiver: CountingReceiver) -> dict[str, Any]:
    flooder = tmp / "flooder.py"
    flooder.write_text(FLOODER)
    before = dict(receiver.counts)
    proc = subprocess.Popen(
        [*UNIOBS, "run", "--quiet", "--export", f"otlp-http:{receiver.endpoint}", "--export", "file:/dev/null",
         "--", sys.executable, str(flooder), str(mb), str(rate), "-"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp,
    )  # fmt: skip
    stop, peaks = threading.Event(), []
    watcher = threading.Thread(target=watch_peak, args=(proc.pid, stop, peaks))
    watcher.start()
    _, stderr = proc.communicate(timeout=mb / rate * 4 + 120)
    stop.set()
    watcher.join()
    lost = [line for line in stderr.splitlines() if "not delivered" in line]
    received = receiver.counts["logs"] - before["logs"]
    return {"mode": "run", "status": proc.returncode, "peak_mb": max(peaks) / 1024 if peaks else None,
            "received_logs": received, "undelivered": lost, "crashed": "Traceback" in stderr}  # fmt: skip


def agent_mode(mb: float, rate: float, tmp: Path, receiver: CountingReceiver) -> dict[str, Any]:
    subprocess.run(["make", "-s", "-C", str(KERNEL.parent.parent)], check=True)
    console, qmp = tmp / "console.log", tmp / "qmp.sock"
    console.unlink(missing_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        health_port = s.getsockname()[1]
    config = tmp / "agent.toml"
    config.write_text(
        f'[uniobs]\nexport = ["otlp-http:{receiver.endpoint}", "file:/dev/null"]\nexport_interval = 1\n'
        f'[agent]\ndiscovery_interval = 0.5\nhealth = "127.0.0.1:{health_port}"\ncontainers = false\n'
    )
    before = dict(receiver.counts)
    agent = subprocess.Popen([*UNIOBS, "agent", "--config", str(config)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    vm = subprocess.Popen(
        ["qemu-system-x86_64", "-machine", "microvm", "-accel", "tcg", "-m", "64", "-nodefaults", "-display", "none",
         "-no-reboot", "-name", "flood-bench", "-qmp", f"unix:{qmp},server=on,wait=off",
         "-chardev", f"file,id=c0,path={console},append=on", "-serial", "chardev:c0",
         "-kernel", str(KERNEL), "-append", "mode=ok run_ms=600000 beat_ms=600000"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    stop, peaks = threading.Event(), []
    watcher = threading.Thread(target=watch_peak, args=(agent.pid, stop, peaks))
    watcher.start()
    try:
        time.sleep(2)  # the agent finds the guest, then follows its console from the file's end
        with console.open("ab") as f:
            f.write(b"marker: the flood starts\n")
        time.sleep(2)
        flood = subprocess.run([sys.executable, "-c", FLOODER, str(mb), str(rate), str(console)], timeout=mb / rate * 4)
        flood.check_returncode()
        alive = agent.poll() is None
    finally:
        vm.kill()
        vm.wait()
    deadline = time.monotonic() + 300  # the agent reads the backlog, then ends the guest's series
    while time.monotonic() < deadline and agent.poll() is None:
        status = health_of(health_port)
        if status is not None and not status["workloads"] and not status["retiring"]:
            break
        time.sleep(0.5)
    agent.send_signal(signal.SIGTERM)
    _, stderr = agent.communicate(timeout=60)
    stop.set()
    watcher.join()
    final = final_line(stderr)
    # the marker and the lines after it (the agent follows a running VM's file console from its end)
    with console.open("rb") as f:
        lines = list(f)
    written = len(lines) - next(i for i, line in enumerate(lines) if line.startswith(b"marker:"))
    accounted = all(
        st["sent"][s] + st["failed"][s] + st["dropped"][s] == st["handed"][s]
        for st in final.values()
        for s in ("metrics", "logs", "traces")
    )
    http = final.get("otlp-http", {})
    return {
        "mode": "agent", "alive_after_flood": alive, "status": agent.returncode,
        "peak_mb": max(peaks) / 1024 if peaks else None, "console_lines_written": written,
        "handed_logs": http.get("handed", {}).get("logs"),
        "exporters": {n: {k: st[k]["logs"] for k in ("sent", "failed", "dropped")} for n, st in final.items()},
        "accounted": accounted and bool(final),
        "receiver_matches": receiver.counts["logs"] - before["logs"] == http.get("sent", {}).get("logs"),
        "crashed": "Traceback" in stderr,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=300)
    parser.add_argument("--rate", type=float, default=6.0, help="MB/s")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--mode", choices=("run", "agent", "both"), default="both")
    args = parser.parse_args()
    print(f"flood: {args.mb:g} MB of 64-byte lines at {args.rate:g} MB/s; exporters: otlp-http (loopback), file")
    print(f"measured cost of a buffered log record beyond its body: {record_cost():.0f} B "
          "(uniobs.telemetry charges 300 B)")  # fmt: skip
    modes = ["run", "agent"] if args.mode == "both" else [args.mode]
    if "agent" in modes and (shutil.which("qemu-system-x86_64") is None or os.geteuid() != 0):
        print("agent: skipped (needs qemu-system-x86_64 and root)")
        modes.remove("agent")
    receiver = CountingReceiver()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for mode in modes:
                peaks = []
                for round_ in range(args.rounds):
                    fn = run_mode if mode == "run" else agent_mode
                    result = fn(args.mb, args.rate, Path(tmp), receiver)
                    peaks.append(result["peak_mb"] or 0)
                    print(f"{mode} round {round_ + 1}: {json.dumps(result)}")
                median = statistics.median(peaks)
                print(f"{mode}: peak RSS median {median:.0f} MB over {len(peaks)} rounds "
                      f"= {median / BUDGET_MB:.2f}x the {BUDGET_MB} MB budget")  # fmt: skip
    finally:
        receiver.stop()


if __name__ == "__main__":
    main()
