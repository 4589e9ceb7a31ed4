"""Serial console capture: every line a guest prints becomes a log record on its resource.

Reads the workload's console source (see `uniobs.capture`) on the shared I/O thread from the
first byte, stamps each line with the monotonic time its first byte arrived, and passes it
through the console parsers. Guest output is untrusted: lines are sanitised and capped, and
what was cut or replaced is counted in the `uniobs.console.*` metrics.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from uniobs.coldstart.trace import new_trace_id
from uniobs.guest.capture import ConsoleStream
from uniobs.guest.lineproto import PREFIX
from uniobs.guest.lines import DEFAULT_MAX_LINE, LineBatch
from uniobs.guest.parsers.detect import DETECT_LINES, StreamParser
from uniobs.guest.reported import GuestTelemetry
from uniobs.ioloop import IoLoop
from uniobs.metrics import GUEST_STATS_METRICS
from uniobs.model import Instrument, LogEvent, MetricSpec, Sample, Workload
from uniobs.plugin import ConsoleLine, ConsoleParser, EventSink, GuestEvent, PluginConfig, StreamingCollector
from uniobs.registry import PluginError, load_group

# A workload label: the W3C traceparent the host passed to this function (`uniobs run`), so the
# spans the guest reports join the host's cold-start trace.
TRACEPARENT_LABEL = "uniobs.traceparent"

EventListener = Callable[[GuestEvent], None]
LineListener = Callable[[ConsoleLine], None]

log = logging.getLogger("uniobs.console")

STREAM_ATTR = "uniobs.console.source"


@dataclass(frozen=True)
class ConsoleConfig(PluginConfig):
    max_line: int = DEFAULT_MAX_LINE  # bytes; longer lines are cut and counted
    tee_dir: str = ""  # when set, a raw copy of each console is written there (<workload id>.log)
    tee_max_bytes: int = 64 << 20  # per console
    parsers: bool = True  # recognise the unikernel family and its boot milestones
    line_protocol: bool = True  # read the guest's structured records (@@uniobs/1 ...)

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
        *GUEST_STATS_METRICS,
    )

    def __init__(self, config: PluginConfig | None = None) -> None:
        super().__init__(config)
        self._streams: dict[tuple[str, str, str], ConsoleStream] = {}
        self._mirrors: dict[tuple[str, str, str], BinaryIO] = {}
        self._listeners: dict[tuple[str, str, str], tuple[EventListener | None, LineListener | None]] = {}
        self._analyzers: dict[tuple[str, str, str], _Analyzer] = {}
        self._lock = threading.Lock()
        self._parsers: dict[str, type[ConsoleParser]] = {}
        if self.config.parsers:
            try:
                self._parsers = {name: info.plugin for name, info in load_group("uniobs.parsers").items()}
            except PluginError as exc:
                log.error("console parsers unavailable: %s", exc)

    def applies_to(self, workload: Workload) -> bool:
        return workload.console is not None

    def mirror(self, workload: Workload, out: BinaryIO) -> None:
        """Copy the raw console to `out` too (set before start): the launcher took QEMU's stdout."""
        with self._lock:
            self._mirrors[workload.key] = out

    def listen(self, workload: Workload, on_event: EventListener | None, on_line: LineListener | None = None) -> None:
        """Be told of the guest's events (boot milestones, crashes) and lines (set before start).
        Callbacks run on the I/O thread: keep them short."""
        with self._lock:
            self._listeners[workload.key] = (on_event, on_line)

    def start(self, workload: Workload, sink: EventSink, loop: IoLoop) -> None:
        assert workload.console is not None
        source = workload.console
        with self._lock:
            on_event, on_line = self._listeners.pop(workload.key, (None, None))
        analyzer = _Analyzer(workload, sink, self._parsers, self.config.line_protocol, on_event)
        with self._lock:
            self._analyzers[workload.key] = analyzer

        # The bridge takes a chunk's lines as they are (`Telemetry.log_lines`); another sink gets records.
        log_lines = getattr(sink, "log_lines", None)

        def on_lines(lines: LineBatch) -> None:
            if log_lines is not None:
                log_lines(workload, lines)
            else:
                sink.log_batch(workload, lines.log_events())
            if on_line is not None:
                for line in lines:
                    on_line(line)
            analyzer.feed(lines)

        tee: BinaryIO | None = None
        if self.config.tee_dir:
            safe_id = "".join(c if c.isalnum() or c in "-_." else "_" for c in workload.id)[:100]
            tee = open(f"{self.config.tee_dir}/{safe_id}.log", "ab")  # noqa: SIM115 (closed at stop)
        with self._lock:
            mirror = self._mirrors.pop(workload.key, None)
        # The guest's last spans and records are closed when the stream has delivered its last line.
        stream = ConsoleStream(
            source, on_lines, analyzer.close, max_line=self.config.max_line, tee=tee,
            tee_max_bytes=self.config.tee_max_bytes, mirror=mirror,
        )  # fmt: skip
        with self._lock:
            self._streams[workload.key] = stream
        try:
            stream.start(loop)
        except BaseException:
            with self._lock:
                self._streams.pop(workload.key, None)
            raise

    def stream(self, workload: Workload) -> ConsoleStream | None:
        with self._lock:
            return self._streams.get(workload.key)

    def stop(self, workload: Workload, timeout: float = 2.0) -> None:
        stream = self.stream(workload)
        if stream is not None and not stream.stop(timeout) and timeout > 0:
            # a backlog (a flood) is still being read on the I/O thread: it goes on, and ended() says when
            log.warning("console %s: still reading its backlog after %.1fs", workload.display_name, timeout)

    def ended(self, workload: Workload) -> bool:
        stream = self.stream(workload)
        return stream is None or stream.ended

    def family(self, workload: Workload) -> str | None:
        """The unikernel family recognised on this console, if any."""
        with self._lock:
            analyzer = self._analyzers.get(workload.key)
        return analyzer.family if analyzer is not None else None

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
            *self._guest_stats(workload),
        )

    def _guest_stats(self, workload: Workload) -> list[Sample]:
        with self._lock:
            analyzer = self._analyzers.get(workload.key)
        return analyzer.guest.stats_samples() if analyzer is not None and analyzer.guest is not None else []

    def forget(self, workload: Workload) -> None:
        with self._lock:
            stream = self._streams.pop(workload.key, None)
            self._analyzers.pop(workload.key, None)
            self._listeners.pop(workload.key, None)
        if stream is not None and not stream.ended:
            stream.stop(0.5)


def _parse_traceparent(value: str) -> tuple[int, int] | None:
    parts = value.split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    try:
        trace_id, span_id = int(parts[1], 16), int(parts[2], 16)
    except ValueError:
        return None
    return (trace_id, span_id) if trace_id and span_id else None


class _Analyzer:
    """What one console's lines mean: the VMM's log, the family's boot milestones, the guest's own records.

    Each line goes to the parsers that own it (`uniobs.guest.parsers.detect.StreamParser`): a VMM's
    own log lines (Firecracker's logger on the stdout it shares with the guest, QEMU's monitor) to
    that VMM's parser, placed at the time the VMM stamped them; the rest to the guest's family,
    which the guest's lines alone decide: until a family parser recognises one of them (among the
    first DETECT_LINES), every guest parser is asked, then only that family's. Lines of the line
    protocol go to the guest telemetry, whose spans join the host's trace when the workload
    carries a traceparent.
    """

    def __init__(
        self,
        workload: Workload,
        sink: EventSink,
        parsers: dict[str, type[ConsoleParser]],
        line_protocol: bool,
        on_event: EventListener | None,
    ) -> None:
        self.workload = workload
        self.sink = sink
        self.on_event = on_event
        self._families = StreamParser(parsers, limit=DETECT_LINES, vmm_stamps=True) if parsers else None
        self.guest: GuestTelemetry | None = None
        if line_protocol:
            context = _parse_traceparent(workload.labels.get(TRACEPARENT_LABEL, ""))
            trace_id, parent = context if context is not None else (new_trace_id(), None)
            self.guest = GuestTelemetry(trace_id, parent, lambda specs: sink.declare(specs, "uniobs.guest"))

    def feed(self, lines: Sequence[ConsoleLine]) -> None:
        """A chunk's lines (a LineBatch from the capture, or any sequence of lines)."""
        events: list[GuestEvent] = []
        if self._families is not None:
            events = self._families.feed_lines(lines)  # a failing parser is switched off inside
        if self.guest is not None:
            # Only the line protocol's lines are the guest telemetry's: one search of the chunk finds them.
            if isinstance(lines, LineBatch):
                ours = [lines.line(i) for i in lines.starting_with(PREFIX)]
            else:
                ours = [line for line in lines if line.text.startswith(PREFIX)]
            out = self.guest.feed_lines(ours)
            if out.samples:
                self.sink.record(self.workload, out.samples)
            for span in out.spans:
                self.sink.span(self.workload, span)
            if out.logs:
                self.sink.log_batch(self.workload, out.logs)
            events.extend(out.events)
        self._deliver(events)

    @property
    def family(self) -> str | None:
        """The guest's family (a VMM's log beside it does not make one)."""
        return self._families.family if self._families is not None else None

    @property
    def vmms(self) -> tuple[str, ...]:
        """The VMM logs seen on this console, in the order of their first line."""
        return tuple(self._families.vmms) if self._families is not None else ()

    def _deliver(self, events: list[GuestEvent]) -> None:
        if not events:
            return
        records = []
        for event in events:
            attributes = event.attributes
            if event.milestone is not None:
                attributes = (*attributes, ("uniobs.milestone", event.milestone.value))
            if event.guest_time_s is not None:
                attributes = (*attributes, ("uniobs.guest.time_s", event.guest_time_s))
            if event.duration_s is not None:
                attributes = (*attributes, ("uniobs.guest.duration_s", event.duration_s))
            records.append(LogEvent(event.time_ns, event.name, event.severity, attributes, event_name=event.name))
            if self.on_event is not None:
                try:
                    self.on_event(event)
                except Exception as exc:
                    log.warning("console %s: event listener failed: %s", self.workload.display_name, exc)
        self.sink.log_batch(self.workload, records)

    def close(self) -> None:
        if self.guest is not None:
            out = self.guest.close(time.monotonic_ns())
            for span in out.spans:
                self.sink.span(self.workload, span)
            if out.logs:
                self.sink.log_batch(self.workload, out.logs)
