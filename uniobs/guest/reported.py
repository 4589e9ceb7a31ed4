"""Guest-reported telemetry: line-protocol records (`uniobs.lineproto`) of one console stream
turned into uniobs data (samples, spans, log records, milestones) for one workload. No I/O.

The guest is untrusted, so everything it reports is confined and bounded:

- **Metric names are namespaced.** A guest metric `x.y` becomes `uniobs.guest.x.y`; a guest can
  never write to a host metric such as `process.cpu.time` or `faas.coldstarts`. The first
  component `records` or `rejected` is refused as `forged`, because `uniobs.guest.records` and
  `uniobs.guest.rejected` are ours (`GUEST_STATS_METRICS`). Each metric is declared on first
  sight (through the `declare` callback) with the instrument, the unit and the attribute keys
  of that first record; a later record that disagrees on type or unit is refused (`bad_value`).
- **Attribute keys under `uniobs.` are the host's** (`uniobs.guest_reported`, the guest times):
  a guest's own are dropped and counted as `forged`; the record is kept.
- **Trace ids are the host's.** Spans and logs carry the trace id of the host's trace for this
  boot, whatever the guest says (`trace=` that disagrees: counted `forged`, dropped). A root span
  hangs under the host's cold-start span; a `parent=` that is neither that span nor one this
  guest opened is counted `forged` and re-parented to it. A span id equal to the host's span id
  is refused (`forged`): it would replace the host's span in the trace.
- **Cardinality is capped** (constants below): at most `MAX_METRICS` names per stream, the first
  `MAX_METRIC_ATTRIBUTES` keys of a metric's first record, `MAX_VALUES_PER_KEY` values per key and
  metric, `MAX_SERIES_PER_METRIC` attribute sets per metric. Past a cap a value becomes
  `OVERFLOW_VALUE` ("_other"): one overflow series that keeps the totals right, counted as
  `cardinality`. Per stream that is at most 64 x 129 series, whatever the guest prints.
- **State is bounded:** at most `MAX_OPEN_SPANS` open spans (the oldest is closed with an error
  and counted `cardinality`), `MAX_KNOWN_SPANS` remembered span ids.

Counters carry the guest's cumulative total, passed through as printed: the bridge gives a
series a new start time when the value goes down (a restarted guest). A histogram record is one
observation; the buckets are fixed per unit (`DURATION_BUCKETS` for `s`, else `VALUE_BUCKETS`).

Times: host timestamps are the arrival times of the lines (`ConsoleLine.time_ns`, monotonic);
the guest's `t=` is kept as data (`GuestEvent.guest_time_s`, span attributes
`uniobs.guest.start_s`/`end_s`), never used as a timestamp, since a guest clock can say anything.

`uniobs.guest.records` and `uniobs.guest.rejected` (`stats_samples`) count what was accepted and
what was refused or rewritten. A record that is accepted with a field dropped (a forged
`trace=`, an overflowing value) counts in both: once as a record, once per problem it had.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from uniobs.guest.lineproto import (
    GuestAttributes,
    LogRecordLine,
    Mark,
    MetricRecord,
    Reason,
    Rejected,
    SpanRecord,
    parse,
)
from uniobs.metrics import REASON_ATTR, RECORD_TYPE_ATTR
from uniobs.model import (
    DURATION_BUCKETS,
    Attributes,
    AttributeValue,
    Instrument,
    LogEvent,
    MetricSpec,
    Sample,
    SpanEvent,
)
from uniobs.plugin import ConsoleLine, GuestEvent

GUEST_METRIC_PREFIX = "uniobs.guest."
GUEST_DESCRIPTION = "Reported by the guest"
# Guest metric names whose first component is one of these would land on uniobs' own metrics.
RESERVED_GUEST_NAMES = frozenset({"records", "rejected"})
HOST_ATTRIBUTE_PREFIX = "uniobs."  # attribute keys the guest may not set

MAX_METRICS = 64  # distinct guest metric names per stream
MAX_METRIC_ATTRIBUTES = 8  # attribute keys per metric (fixed by its first record)
MAX_VALUES_PER_KEY = 32  # distinct values per attribute key and metric
MAX_SERIES_PER_METRIC = 128  # distinct attribute sets per metric, plus the overflow set
OVERFLOW_VALUE = "_other"
MAX_OPEN_SPANS = 256
MAX_KNOWN_SPANS = 1024  # span ids remembered (open or ended) to validate parent= references
MAX_SPAN_NAME = 128  # characters; longer names are cut
DEFAULT_SPAN_NAME = "guest.span"  # a span whose start and end both lack name=

# Histogram bounds for guest histograms whose unit is not seconds: one bucket per power of ten
# from 0.001 to 1e9, which covers ratios, counts and bytes up to a GB with one relative
# resolution, and stays meaningful without knowing what the guest measures. Seconds get the
# semantic conventions' duration buckets (`uniobs.model.DURATION_BUCKETS`).
VALUE_BUCKETS = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9)

RECORD_TYPES = ("mark", "metric", "span", "log")


Declare = Callable[[Sequence[MetricSpec]], None]


@dataclass
class GuestOutput:
    """What some console lines contributed: hand each list to the matching EventSink method."""

    samples: list[Sample] = field(default_factory=list)
    spans: list[SpanEvent] = field(default_factory=list)
    logs: list[LogEvent] = field(default_factory=list)
    events: list[GuestEvent] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.samples or self.spans or self.logs or self.events)

    def extend(self, other: GuestOutput) -> None:
        self.samples.extend(other.samples)
        self.spans.extend(other.spans)
        self.logs.extend(other.logs)
        self.events.extend(other.events)


@dataclass
class _Metric:
    spec: MetricSpec | None  # None: the declaration was refused (it conflicts with another)
    unit: str  # the unit= as first printed ("1" when absent): part of the metric's identity
    keys: frozenset[str] = frozenset()
    values: dict[str, set[str]] = field(default_factory=dict)
    series: set[Attributes] = field(default_factory=set)
    overflow: Attributes = ()  # every declared key set to OVERFLOW_VALUE


@dataclass
class _OpenSpan:
    start_ns: int
    name: str | None
    parent: int
    status: str | None
    guest_start_s: float | None
    attributes: GuestAttributes


class GuestTelemetry:
    """Line-protocol records of one console stream -> uniobs data for one workload.

    `trace_id` is the host's trace for this boot; `parent_span_id` the host span (the cold start)
    that the guest's root spans hang under, or None (they are then roots of that trace).
    `declare(specs)` is called once per new guest metric, before its first sample is returned;
    a ValueError from it (the name is already declared differently, e.g. by another guest)
    refuses the metric for this stream.

    `feed` and `close` are for the one thread that reads the stream; `stats_samples` may be
    called from another (the scrape).
    """

    def __init__(self, trace_id: int, parent_span_id: int | None, declare: Declare) -> None:
        if not 0 < trace_id < 1 << 128:
            raise ValueError("trace_id: must be a non-zero 128-bit integer")
        if parent_span_id is not None and not 0 < parent_span_id < 1 << 64:
            raise ValueError("parent_span_id: must be a non-zero 64-bit integer or None")
        self.trace_id = trace_id
        self.parent_span_id = parent_span_id
        self._host_parent = parent_span_id or 0
        self._declare = declare
        self._metrics: dict[str, _Metric] = {}
        self._open: OrderedDict[int, _OpenSpan] = OrderedDict()
        self._known: OrderedDict[int, None] = OrderedDict()
        # Every series from the start (zeros too), so a rate is defined from the first scrape.
        self._accepted: dict[str, int] = dict.fromkeys(RECORD_TYPES, 0)
        self._rejected: dict[Reason, int] = dict.fromkeys(Reason, 0)
        self._lock = threading.Lock()

    # -- introspection (tests, debugging)

    @property
    def accepted(self) -> dict[str, int]:
        with self._lock:
            return dict(self._accepted)

    @property
    def rejected(self) -> dict[Reason, int]:
        with self._lock:
            return dict(self._rejected)

    @property
    def metric_names(self) -> tuple[str, ...]:
        """Guest metric names seen on this stream (declared or refused), as the guest wrote them."""
        return tuple(self._metrics)

    @property
    def open_spans(self) -> int:
        return len(self._open)

    def stats_samples(self) -> list[Sample]:
        """Cumulative `uniobs.guest.records` and `uniobs.guest.rejected`, every series, zeros too."""
        with self._lock:
            accepted = list(self._accepted.items())
            rejected = list(self._rejected.items())
        samples = [Sample("uniobs.guest.records", n, ((RECORD_TYPE_ATTR, kind),)) for kind, n in accepted]
        samples += [Sample("uniobs.guest.rejected", n, ((REASON_ATTR, reason.value),)) for reason, n in rejected]
        return samples

    def _count(self, reason: Reason) -> None:
        with self._lock:
            self._rejected[reason] += 1

    def _accept(self, kind: str) -> None:
        with self._lock:
            self._accepted[kind] += 1

    # -- intake

    def feed(self, line: ConsoleLine) -> GuestOutput:
        out = GuestOutput()
        self._feed(line, out)
        return out

    def feed_lines(self, lines: Iterable[ConsoleLine]) -> GuestOutput:
        """Several lines (a console chunk) into one output."""
        out = GuestOutput()
        for line in lines:
            self._feed(line, out)
        return out

    def _feed(self, line: ConsoleLine, out: GuestOutput) -> None:
        record = parse(line.text, truncated=line.truncated)
        if record is None:
            return
        if isinstance(record, Rejected):
            self._count(record.reason)
        elif isinstance(record, MetricRecord):
            self._metric(record, out)
        elif isinstance(record, SpanRecord):
            self._span(line.time_ns, record, out)
        elif isinstance(record, LogRecordLine):
            self._accept("log")
            out.logs.append(
                LogEvent(
                    line.time_ns, record.text, record.severity, event_name="uniobs.guest.log",
                    trace_id=self.trace_id, span_id=self._host_parent,
                )
            )  # fmt: skip
        else:
            self._mark(line.time_ns, record, out)

    def _own_attributes(self, attributes: GuestAttributes) -> GuestAttributes:
        """The guest's attributes without the host's namespace (counted `forged` if any)."""
        if not any(k.startswith(HOST_ATTRIBUTE_PREFIX) for k, _ in attributes):
            return attributes
        self._count(Reason.FORGED)
        return tuple((k, v) for k, v in attributes if not k.startswith(HOST_ATTRIBUTE_PREFIX))

    # -- marks

    def _mark(self, time_ns: int, record: Mark, out: GuestOutput) -> None:
        self._accept("mark")
        attributes: Attributes = (*self._own_attributes(record.attributes), ("uniobs.guest_reported", True))
        out.events.append(
            GuestEvent(
                time_ns, f"uniobs.guest.mark.{record.milestone.value}", record.milestone,
                guest_time_s=record.guest_time_s, attributes=attributes,
            )
        )  # fmt: skip

    # -- metrics

    def _metric(self, record: MetricRecord, out: GuestOutput) -> None:
        unit = record.unit or "1"
        attributes = self._own_attributes(record.attributes)
        metric = self._metrics.get(record.name)
        if metric is None:
            if record.name.split(".", 1)[0] in RESERVED_GUEST_NAMES:
                self._count(Reason.FORGED)
                return
            if len(self._metrics) >= MAX_METRICS:
                self._count(Reason.CARDINALITY)
                return
            metric = self._new_metric(record, unit, attributes)
            self._metrics[record.name] = metric
            if metric.spec is None:
                self._count(Reason.BAD_VALUE)
                return
        elif metric.spec is None or metric.spec.instrument is not record.instrument or metric.unit != unit:
            # One name, one meaning: a counter that turns into a gauge, or seconds into
            # milliseconds, would corrupt the series already exported.
            self._count(Reason.BAD_VALUE)
            return
        self._accept("metric")
        out.samples.append(Sample(metric.spec.name, record.value, self._series(metric, attributes)))

    def _new_metric(self, record: MetricRecord, unit: str, attributes: GuestAttributes) -> _Metric:
        keys = tuple(k for k, _ in attributes[:MAX_METRIC_ATTRIBUTES])
        name = GUEST_METRIC_PREFIX + record.name
        instrument = record.instrument
        try:
            spec = _spec(name, instrument, unit, keys)
        except ValueError:
            # Not a UCUM unit the bridge accepts (`uniobs.model`'s rule): declare it unitless
            # rather than lose the metric; the printed unit still identifies it (see _metric).
            spec = _spec(name, instrument, "1", keys)
        try:
            self._declare([spec])
        except ValueError:
            return _Metric(None, unit)
        overflow = tuple(sorted((k, OVERFLOW_VALUE) for k in keys))
        return _Metric(spec, unit, frozenset(keys), overflow=overflow)

    def _series(self, metric: _Metric, attributes: GuestAttributes) -> Attributes:
        """The record's attributes mapped onto the metric's bounded series."""
        capped = False
        kept: list[tuple[str, AttributeValue]] = []
        for key, value in attributes:
            if key not in metric.keys:
                capped = True  # past MAX_METRIC_ATTRIBUTES, or not in the first record's keys
                continue
            seen = metric.values.setdefault(key, set())
            if value not in seen:
                if len(seen) >= MAX_VALUES_PER_KEY:
                    value = OVERFLOW_VALUE
                    capped = True
                else:
                    seen.add(value)
            kept.append((key, value))
        # Sorted: the bridge keys a series by its attribute tuple, so `a=1 b=2` and `b=2 a=1`
        # must be the same tuple.
        series = tuple(sorted(kept))
        if series not in metric.series:
            if len(metric.series) >= MAX_SERIES_PER_METRIC:
                series = metric.overflow
                capped = True
            else:
                metric.series.add(series)
        if capped:
            self._count(Reason.CARDINALITY)
        return series

    # -- spans

    def _span(self, time_ns: int, record: SpanRecord, out: GuestOutput) -> None:
        if record.span_id == self.parent_span_id:
            # The host's own span id: ending it, or opening a second one, would overwrite the
            # host's cold-start span in the backend.
            self._count(Reason.FORGED)
            return
        if record.phase == "start":
            if record.span_id in self._open or record.span_id in self._known:
                self._count(Reason.MALFORMED)  # an id used twice: the ends could not be matched
                return
            self._check_trace(record)
            self._accept("span")
            parent = self._host_parent
            if record.parent_id is not None and record.parent_id != self._host_parent:
                # _open too: a long-lived span (a root) can outlive its entry among the known ids.
                if record.parent_id in self._open or record.parent_id in self._known:
                    parent = record.parent_id
                else:
                    self._count(Reason.FORGED)  # a parent in someone else's trace, or invented
            if len(self._open) >= MAX_OPEN_SPANS:
                evicted_id, evicted = self._open.popitem(last=False)
                self._count(Reason.CARDINALITY)
                out.spans.append(
                    self._finish(evicted_id, evicted, time_ns, None, None, (), "evicted: too many open spans")
                )
            self._open[record.span_id] = _OpenSpan(
                time_ns, record.name, parent, record.status, record.guest_time_s,
                self._own_attributes(record.attributes),
            )  # fmt: skip
            self._remember(record.span_id)
            return
        started = self._open.pop(record.span_id, None)
        if started is None:
            self._count(Reason.MALFORMED)  # an end without a start (or after eviction)
            return
        self._check_trace(record)
        self._accept("span")
        status = record.status or started.status
        error = "guest reported error" if status == "error" else None
        attributes = self._own_attributes(record.attributes)
        out.spans.append(
            self._finish(record.span_id, started, time_ns, record.name, record.guest_time_s, attributes, error)
        )

    def _check_trace(self, record: SpanRecord) -> None:
        if record.trace_id is not None and record.trace_id != self.trace_id:
            self._count(Reason.FORGED)  # accepted: the span joins the host's trace regardless

    def _remember(self, span_id: int) -> None:
        self._known[span_id] = None
        if len(self._known) > MAX_KNOWN_SPANS:
            self._known.popitem(last=False)

    def _finish(
        self,
        span_id: int,
        started: _OpenSpan,
        end_ns: int,
        end_name: str | None,
        guest_end_s: float | None,
        end_attributes: GuestAttributes,
        error: str | None,
    ) -> SpanEvent:
        # The start's name= wins (the end's is informational), like its parent=.
        name = (started.name or end_name or DEFAULT_SPAN_NAME)[:MAX_SPAN_NAME]
        merged: dict[str, AttributeValue] = dict(started.attributes)
        merged.update(end_attributes)
        if started.guest_start_s is not None:
            merged["uniobs.guest.start_s"] = started.guest_start_s
        if guest_end_s is not None:
            merged["uniobs.guest.end_s"] = guest_end_s
        merged["uniobs.guest_reported"] = True
        return SpanEvent(
            name, self.trace_id, span_id, started.parent, started.start_ns, end_ns, tuple(merged.items()), error
        )

    def close(self, now_ns: int) -> GuestOutput:
        """The stream ended: spans still open end now, with the error "unfinished"."""
        out = GuestOutput()
        while self._open:
            span_id, started = self._open.popitem(last=False)
            out.spans.append(self._finish(span_id, started, now_ns, None, None, (), "unfinished"))
        return out


def _spec(name: str, instrument: Instrument, unit: str, keys: tuple[str, ...]) -> MetricSpec:
    buckets: tuple[float, ...] = ()
    if instrument is Instrument.HISTOGRAM:
        buckets = DURATION_BUCKETS if unit == "s" else VALUE_BUCKETS
    return MetricSpec(name, instrument, unit, GUEST_DESCRIPTION, keys, buckets)
