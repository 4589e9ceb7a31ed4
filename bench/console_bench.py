"""Console throughput, against a plain Python loop over the same bytes (issue 14, goal 3).

Three figures, on one console-shaped input: the real transcripts in tests/testdata/consoles,
with the project's line protocol records mixed in, repeated to `--mb` MB.

- (a) baseline: a plain Python loop over the bytes, `for line in data.split(b"\\n"): line.decode()`,
  in lines per CPU-second;
- (b) capture + family parsing: the console collector as `uniobs run` and the agent use it (`cat FILE |`
  a pipe read on the I/O thread, split, sanitised and capped, each line handed as a log record to a
  sink that discards it, the family parsers, the VMM log parsers and the line protocol), in lines per
  CPU-second of this process (no export);
- (c) exported: the same, every line exported as an OTLP log record by the `otlp-http` exporter to
  a receiver on a loopback port (another process, which decodes each request and counts its
  records), in lines per second of wall clock from the first byte until the last record is
  delivered, and per CPU-second of this process (`--export-mb`).

Medians of `--rounds` rounds (at least 5); ratios to the baseline measured in the same run and to
the goals (1 M lines per CPU-second for (b), 200 k lines/s for (c)).

`--batch-sizes 512,4096` repeats (c) with `[uniobs] export_batch_size` set to each value (512, the
default and the OpenTelemetry BatchLogRecordProcessor's, comes first); a request is also cut at
3 MiB of charged records (`LOGS_BATCH_COST`), under a receiver's 4 MiB.

    python bench/console_bench.py [--mb 20] [--export-mb 10] [--rounds 5] [--batch-sizes 512,4096]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from uniobs.collectors.console import ConsoleCollector  # type: ignore[import-not-found]  # the plugins alias
from uniobs.exporters.otlp import OtlpConfig, OtlpHttpExporter  # type: ignore[import-not-found]
from uniobs.ioloop import IoLoop
from uniobs.model import Kind, LogEvent, MetricSpec, Sample, SpanEvent, Workload
from uniobs.telemetry.bridge import Telemetry

ROOT = Path(__file__).resolve().parent.parent
GOAL_CAPTURE = 1_000_000  # lines per CPU-second, capture + family parsing (issue 14)
GOAL_EXPORT = 200_000  # lines per second exported as log records (issue 14)
DEFAULT_BATCH = 512  # [uniobs] export_batch_size's default, the OTel BatchLogRecordProcessor's (OTEL_BLRP_...)

# The loopback receiver: decodes each request (the real OTLP message) and counts its log records;
# GET answers the count so far.
RECEIVER = r"""
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

lock = threading.Lock()
count = [0]

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        request = ExportLogsServiceRequest.FromString(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        n = sum(len(sl.log_records) for rl in request.resource_logs for sl in rl.scope_logs)
        with lock:
            count[0] += n
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        body = str(count[0]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def make_input(path: Path, megabytes: int) -> int:
    """The input file; returns its number of lines."""
    lines: list[bytes] = []
    for transcript in sorted((ROOT / "tests" / "testdata" / "consoles").glob("*.txt")):
        lines += transcript.read_bytes().splitlines()[1:]  # line 1 names the transcript's source
    lines += [b"@@uniobs/1 metric fn.requests counter 42", b"@@uniobs/1 mark ready t=0.063751"]
    block = b"\n".join(lines) + b"\n"
    with open(path, "wb") as f:
        written = 0
        while written < megabytes << 20:
            f.write(block)
            written += len(block)
    return path.read_bytes().count(b"\n")


def baseline(data: bytes) -> float:
    """CPU seconds of the plain Python loop over the lines."""
    cpu0 = time.process_time()
    for line in data.split(b"\n"):
        line.decode("utf-8", "replace")
    return time.process_time() - cpu0


class _Discard:
    """An EventSink that drops everything: the collector's own work is measured, not a backend's."""

    def log(self, workload: Workload, event: LogEvent) -> None:
        return None

    def log_batch(self, workload: Workload, events: Sequence[LogEvent]) -> None:
        return None

    def log_lines(self, workload: Workload, lines: Any) -> None:
        return None

    def span(self, workload: Workload, event: SpanEvent) -> None:
        return None

    def record(self, workload: Workload, samples: Iterable[Sample]) -> None:
        return None

    def declare(self, specs: Iterable[MetricSpec], scope: str) -> None:
        return None


def _console(path: Path, sink: Any) -> tuple[int, str | None]:
    """Read the file through `cat |` into the console collector; the lines it read, the family found."""
    collector = ConsoleCollector()
    loop = IoLoop().start()
    cat = subprocess.Popen(["cat", str(path)], stdout=subprocess.PIPE)
    assert cat.stdout is not None
    workload = Workload(
        kind=Kind.UNIKERNEL, runtime="qemu", id="bench", name="bench", console=f"fd:{cat.stdout.fileno()}"
    )
    try:
        collector.start(workload, sink, loop)
        stream = collector.stream(workload)
        assert stream is not None
        while not stream.ended:
            time.sleep(0.002)
        return stream.splitter.stats.lines, collector.family(workload)
    finally:
        cat.wait()
        loop.stop()


def capture(path: Path) -> tuple[float, int, str | None]:
    """CPU seconds (this process, all threads) through capture and parsing, the lines read, the family."""
    cpu0 = time.process_time()
    count, family = _console(path, _Discard())
    return time.process_time() - cpu0, count, family


def _received(endpoint: str) -> int:
    import requests

    return int(requests.get(endpoint, timeout=10).text)


def exported(path: Path, endpoint: str, batch_size: int = DEFAULT_BATCH) -> tuple[float, float, int, int]:
    """Wall and CPU seconds until every line is delivered as a log record; lines read, records received.
    `batch_size` is `[uniobs] export_batch_size` (records per request)."""
    before = _received(endpoint)
    sinks = OtlpHttpExporter(OtlpConfig(endpoint=endpoint, signals=("logs",))).sinks()
    telemetry = Telemetry([("otlp-http", sinks)], buffer_bytes=1 << 30, export_batch_size=batch_size)
    cpu0, started = time.process_time(), time.perf_counter()
    count, _ = _console(path, telemetry)
    telemetry.shutdown(600)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu0
    stats = telemetry.stats()["otlp-http"]
    assert not stats.failed["logs"] and not stats.dropped["logs"], stats
    return wall, cpu, count, _received(endpoint) - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=20)
    parser.add_argument("--export-mb", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--batch-sizes", default=str(DEFAULT_BATCH),
        help="export_batch_size values for (c), comma-separated (the first is the default, 512)",
    )  # fmt: skip
    args = parser.parse_args()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    rounds = max(5, args.rounds)
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout is not None
        endpoint = f"http://127.0.0.1:{int(receiver.stdout.readline())}"
        with tempfile.TemporaryDirectory() as tmp:
            path, small = Path(tmp) / "console.log", Path(tmp) / "export.log"
            lines, export_lines = make_input(path, args.mb), make_input(small, args.export_mb)
            data, size = path.read_bytes(), os.path.getsize(path)
            base, cap, delivered = [], [], []
            ex_wall: dict[int, list[float]] = {b: [] for b in batch_sizes}
            ex_cpu: dict[int, list[float]] = {b: [] for b in batch_sizes}
            family = None
            for _ in range(rounds):
                base.append(baseline(data))
                cpu, count, family = capture(path)
                assert count == lines, (count, lines)
                cap.append(cpu)
                for batch_size in batch_sizes:
                    wall, cpu, count, received = exported(small, endpoint, batch_size)
                    assert count == export_lines, (count, export_lines)
                    ex_wall[batch_size].append(wall)
                    ex_cpu[batch_size].append(cpu)
                delivered.append(received)
    finally:
        receiver.terminate()
        receiver.wait()
    b, c = lines / statistics.median(base), lines / statistics.median(cap)
    print(f"console benchmark: {size / 1e6:.0f} MB, {lines:,} lines (transcripts + line protocol), family {family}")
    print(f"  medians of {rounds} rounds; ratios to the baseline of the same run, and to the goal")
    base_name = '(a) baseline: for line in data.split(b"\\n"): decode'
    print(f"  {base_name:56}{b:>12,.0f} lines/CPU-s")
    print(
        f"  {'(b) capture + family parsing (no export)':56}{c:>12,.0f} lines/CPU-s  "
        f"{c / b:6.3f}x baseline  {c / GOAL_CAPTURE:5.2f}x goal (1 M/CPU-s)"
    )
    for batch_size in batch_sizes:
        w = export_lines / statistics.median(ex_wall[batch_size])
        e = export_lines / statistics.median(ex_cpu[batch_size])
        name = "(c) exported as log records, otlp-http to loopback"
        if batch_size != DEFAULT_BATCH:
            name = f"(c) same, export_batch_size = {batch_size} (set by the user)"
        print(f"  {name:56}{w:>12,.0f} lines/s      {w / b:6.3f}x baseline  {w / GOAL_EXPORT:5.2f}x goal (200 k/s)")
        print(f"  {'':56}{e:>12,.0f} lines/CPU-s  ({export_lines:,} lines, {args.export_mb} MB)")
    print(f"  log records received per round (median): {statistics.median(delivered):,.0f} (lines + events)")


if __name__ == "__main__":
    main()
