"""Console capture throughput: lines/s through capture, splitting, sanitising and hand-off to the
telemetry bridge, against `cat FILE > /dev/null` of the same bytes (the floor for moving them).

The input is a console-shaped file: the real transcripts in tests/testdata/consoles repeated,
with the project's line protocol records mixed in. Both sides run in this script; medians of
several rounds (wall clock, since the baseline is another process).

    python bench/console_bench.py [--mb 50] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult

from uniobs.guest.capture import ConsoleStream
from uniobs.ioloop import IoLoop
from uniobs.model import Kind, LogEvent, Workload
from uniobs.plugin import ConsoleLine, ExporterSinks
from uniobs.telemetry.bridge import Telemetry

ROOT = Path(__file__).resolve().parent.parent


def make_input(path: Path, megabytes: int) -> int:
    lines: list[bytes] = []
    for transcript in sorted((ROOT / "tests" / "testdata" / "consoles").glob("*.txt")):
        lines += transcript.read_bytes().splitlines()[1:]
    lines += [b"@@uniobs/1 metric fn.requests counter 42", b"@@uniobs/1 mark ready t=0.063751"]
    block = b"\n".join(lines) + b"\n"
    with open(path, "wb") as f:
        written = 0
        while written < megabytes << 20:
            f.write(block)
            written += len(block)
    return path.read_bytes().count(b"\n")


def cat_baseline(path: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


class _NullLogs(LogRecordExporter):
    def export(self, batch: object) -> LogRecordExportResult:  # type: ignore[override]
        return LogRecordExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


def uniobs_capture(path: Path) -> tuple[float, float, int]:
    """Wall and CPU (this process) seconds to read the file through `cat |` into the bridge."""
    # A logs sink that discards: the hand-off to the bridge and the batching are measured, not a
    # backend (the SDK records are built by the export thread, counted in this process' CPU).
    telemetry = Telemetry([("null", ExporterSinks(logs=_NullLogs()))], buffer_bytes=1 << 30)
    workload = Workload(kind=Kind.UNIKERNEL, runtime="qemu", id="bench", name="bench")
    loop = IoLoop().start()
    done = threading.Event()
    count = 0

    def on_lines(lines: list[ConsoleLine]) -> None:
        nonlocal count
        count += len(lines)
        events = [
            LogEvent(line.time_ns, line.text, attributes=(("uniobs.console.line", line.number),)) for line in lines
        ]
        telemetry.log_batch(workload, events)

    cpu0, started = time.process_time(), time.perf_counter()
    cat = subprocess.Popen(["cat", str(path)], stdout=subprocess.PIPE)
    assert cat.stdout is not None
    ConsoleStream(f"fd:{cat.stdout.fileno()}", on_lines, done.set).start(loop)
    done.wait()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu0
    cat.wait()
    loop.stop()
    telemetry.shutdown(30)
    return wall, cpu, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "console.log"
        lines = make_input(path, args.mb)
        size = os.path.getsize(path)
        base, walls, cpus = [], [], []
        for _ in range(args.rounds):
            base.append(cat_baseline(path))
            wall, cpu, count = uniobs_capture(path)
            assert count == lines, (count, lines)
            walls.append(wall)
            cpus.append(cpu)
    b, w, c = statistics.median(base), statistics.median(walls), statistics.median(cpus)
    print(f"console benchmark: {size / 1e6:.0f} MB, {lines:,} lines (real transcripts + line protocol)")
    print(f"  median of {args.rounds} rounds, wall clock:")
    print(f"  {'cat FILE > /dev/null':38}{b:8.3f} s  {lines / b:>12,.0f} lines/s  {size / b / 1e6:8.0f} MB/s")
    print(f"  {'uniobs capture -> log records':38}{w:8.3f} s  {lines / w:>12,.0f} lines/s  {size / w / 1e6:8.0f} MB/s")
    print(f"  uniobs CPU: {c / lines * 1e6:.2f} us per line; ratio uniobs / cat (wall): {w / b:.0f}x")


if __name__ == "__main__":
    main()
