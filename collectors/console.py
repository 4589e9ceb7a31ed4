"""Serial console capture: every line a guest prints becomes a log record on its resource.

Reads the workload's console source (see `uniobs.capture`) on the shared I/O thread from the
first byte, stamps each line with the monotonic time its first byte arrived, and passes it
through the console parsers. Guest output is untrusted: lines are sanitised and capped, and
what was cut or replaced is counted in the `uniobs.console.*` metrics.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO

from uniobs.capture import ConsoleStream
from uniobs.console import DEFAULT_MAX_LINE
from uniobs.ioloop import IoLoop
from uniobs.model import Attributes, Instrument, LogEvent, MetricSpec, Sample, Workload
from uniobs.plugin import ConsoleLine, EventSink, PluginConfig, StreamingCollector

log = logging.getLogger("uniobs.console")

STREAM_ATTR = "uniobs.console.source"


@dataclass(frozen=True)
class ConsoleConfig(PluginConfig):
    max_line: int = DEFAULT_MAX_LINE  # bytes; longer lines are cut and counted
    tee_dir: str = ""  # when set, a raw copy of each console is written there (<workload id>.log)
    tee_max_bytes: int = 64 << 20  # per console

    def validate(self) -> None:
        if self.max_line < 64:
            raise ValueError("max_line: must be >= 64 bytes")
        if self.tee_max_bytes < 0:
            raise ValueError("tee_max_bytes: must be >= 0")


def _counter(name: str, unit: str, description: str) -> MetricSpec:
    return MetricSpec(name, Instrument.COUNTER, unit, description)


class ConsoleCollector(StreamingCollector):
    name = "console"
    config_class = ConsoleConfig
    config: ConsoleConfig
    metrics = (
        _counter("uniobs.console.bytes", "By", "Bytes read from the guest console."),
        _counter("uniobs.console.lines", "{line}", "Lines read from the guest console."),
        _counter("uniobs.console.truncated_lines", "{line}", "Lines cut at max_line bytes."),
        _counter("uniobs.console.dropped_bytes", "By", "Bytes of over-long lines that were not kept."),
        _counter("uniobs.console.invalid_utf8_lines", "{line}", "Lines with bytes that are not UTF-8 (replaced)."),
        _counter(
            "uniobs.console.escaped_lines", "{line}", "Lines whose control bytes or ANSI sequences were neutralised."
        ),
    )

    def __init__(self, config: PluginConfig | None = None) -> None:
        super().__init__(config)
        self._streams: dict[tuple[str, str, str], ConsoleStream] = {}
        self._mirrors: dict[tuple[str, str, str], BinaryIO] = {}
        self._lock = threading.Lock()

    def applies_to(self, workload: Workload) -> bool:
        return workload.console is not None

    def mirror(self, workload: Workload, out: BinaryIO) -> None:
        """Copy the raw console to `out` too (set before start): the launcher took QEMU's stdout."""
        with self._lock:
            self._mirrors[workload.key] = out

    def start(self, workload: Workload, sink: EventSink, loop: IoLoop) -> None:
        assert workload.console is not None
        source = workload.console

        def on_lines(lines: list[ConsoleLine]) -> None:
            events = []
            for line in lines:
                attributes: Attributes = (("uniobs.console.line", line.number),)
                if line.truncated:
                    attributes += (("uniobs.console.truncated", True),)
                events.append(LogEvent(line.time_ns, line.text, attributes=attributes))
            sink.log_batch(workload, events)

        tee: BinaryIO | None = None
        if self.config.tee_dir:
            safe_id = "".join(c if c.isalnum() or c in "-_." else "_" for c in workload.id)[:100]
            tee = open(f"{self.config.tee_dir}/{safe_id}.log", "ab")  # noqa: SIM115 (closed at stop)
        with self._lock:
            mirror = self._mirrors.pop(workload.key, None)
        stream = ConsoleStream(
            source, on_lines, max_line=self.config.max_line, tee=tee, tee_max_bytes=self.config.tee_max_bytes,
            mirror=mirror,
        )  # fmt: skip
        with self._lock:
            self._streams[workload.key] = stream
        stream.start(loop)

    def stream(self, workload: Workload) -> ConsoleStream | None:
        with self._lock:
            return self._streams.get(workload.key)

    def stop(self, workload: Workload, timeout: float = 2.0) -> None:
        stream = self.stream(workload)
        if stream is not None and not stream.stop(timeout):
            log.warning("console %s: did not stop within %.1fs", workload.display_name, timeout)

    def snapshot(self, workload: Workload) -> Iterable[Sample]:
        stream = self.stream(workload)
        if stream is None:
            return ()
        s = stream.splitter.stats
        return (
            Sample("uniobs.console.bytes", s.bytes),
            Sample("uniobs.console.lines", s.lines),
            Sample("uniobs.console.truncated_lines", s.truncated_lines),
            Sample("uniobs.console.dropped_bytes", s.dropped_bytes),
            Sample("uniobs.console.invalid_utf8_lines", s.invalid_utf8_lines),
            Sample("uniobs.console.escaped_lines", s.escaped_lines),
        )

    def forget(self, workload: Workload) -> None:
        with self._lock:
            stream = self._streams.pop(workload.key, None)
        if stream is not None and not stream.ended:
            stream.stop(0.5)
