"""The telemetry bridge: the one module that turns uniobs' data into OpenTelemetry data.

Why not the SDK's MeterProvider/LoggerProvider/TracerProvider? Each provider carries exactly
one Resource and each periodic reader owns a thread, so "one resource per workload" would cost
a provider and a thread per workload. Instead this module keeps the aggregation state itself
(cumulative sums with their start times, gauges, histograms) keyed by workload, and builds the
SDK's export data (`MetricsData` with one `ResourceMetrics` per workload, `ReadableLogRecord`,
`ReadableSpan`) that the stock SDK exporters accept. One export worker thread per exporter
delivers it, so a slow or dead backend never holds up the others.

Metrics are handed over as `MetricsBatch`es: a snapshot of the series taken once per flush,
turned at most once (whichever exporter asks first) into the SDK's `MetricsData` and/or into a
serialised OTLP `ExportMetricsServiceRequest` written directly from the snapshot
(`uniobs.telemetry.encode`, which keeps each workload's encoded resource and each series'
encoded attributes). A metrics sink with a true `encoded_metrics` attribute receives the
`MetricsBatch` itself (`otlp_bytes()`, `request()`, `metrics_data()`); any other sink receives
the SDK's `MetricsData`, as before. When every metrics sink also says `otlp_metrics_only` (the
OTLP exporters: they read only the request), the snapshot is the request itself, written under
the lock from the live series (each workload's series are kept grouped by scope and metric, and a
lone series' constant bytes are shared): no row per point, ~5x cheaper at 10,000 workloads.

Counters: collectors report the source's cumulative value. A value lower than the previous one
means the source restarted (a workload restarted, a counter wrapped); the series then gets a
new start time, which is how OTLP marks a reset, and no negative delta is ever produced.
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace as trace_api
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.exporter.otlp.proto.common._internal._log_encoder import _encode_log
from opentelemetry.exporter.otlp.proto.common._internal.trace_encoder import _encode_span
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from uniobs import __version__
from uniobs.guest.lines import LineBatch
from uniobs.metrics import SELF_METRICS, WORKLOADS_KIND
from uniobs.model import Attributes, Instrument, LogEvent, MetricSpec, Sample, SpanEvent, Workload
from uniobs.plugin import ExporterSinks
from uniobs.telemetry.encode import MetricsEncoder, resource_metrics
from uniobs.telemetry.export import (
    ATTRIBUTE_COST,
    DEFAULT_BUFFER_BYTES,
    LOG_RECORD_OVERHEAD,
    LOGS_BATCH_COST,
    POINT_COST,
    SIGNALS,
    SPAN_COST,
    Batch,
    ExportBuffer,
    ExporterStats,
    ExportWorker,
    log_cost,
)  # fmt: skip
from uniobs.telemetry.logs import encode_log_events
from uniobs.telemetry.resource import SELF, host_attributes, instance_id
from uniobs.telemetry.spans import encode_span_events

log = logging.getLogger("uniobs.telemetry")


# SpanEvent.kind -> the OTel span kind (an invocation is a SERVER span; the rest are INTERNAL).
_SPAN_KINDS = {k.name.lower(): k for k in SpanKind}


def _log_events(pairs: Iterable[tuple[Resource, LogEvent | LineBatch]]) -> Iterator[tuple[Resource, LogEvent]]:
    """A logs batch's records one by one: console lines made records (`LineBatch.log_events`)."""
    for resource, item in pairs:
        if isinstance(item, LineBatch):
            for event in item.log_events():
                yield resource, event
        else:
            yield resource, item


class UndeclaredTelemetry(Exception):
    """A sample names a metric or attribute its plugin did not declare (strict mode only)."""


# --- metric state ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Number:
    start_ns: int
    time_ns: int
    value: float | int
    counter: bool = False  # a monotonic sum: a lower value is a reset
    attributes: Attributes = ()
    wire: bytes = b""  # its encoding's constant part when alone in its metric (shared: MetricsEncoder.metrics)


@dataclass(slots=True)
class _Hist:
    start_ns: int
    time_ns: int
    counts: list[int]
    total: float = 0.0
    count: int = 0
    min: float = float("inf")
    max: float = float("-inf")
    attributes: Attributes = ()


@dataclass
class _WorkloadState:
    workload: Workload
    resource: Resource
    series: dict[tuple[str, Attributes], _Number | _Hist] = field(default_factory=dict)
    # The same series objects grouped as a flush exports them: scope name -> (scope, metric name ->
    # (spec, its series)), in first-seen order, so a snapshot is a walk, not a regrouping.
    groups: dict[str, tuple[InstrumentationScope, dict[str, tuple[MetricSpec, list[Any]]]]] = field(
        default_factory=dict
    )
    encoded_resource: bytes | None = None  # ResourceMetrics.resource, encoded once


# A series as of one flush: attributes, start (0 for gauges), time, and the value (a copy of
# the histogram's state for histograms).
_Row = tuple[Attributes, int, int, Any]
# One workload's series in a flush, by instrumentation scope, then by metric.
_ResourceRows = tuple[_WorkloadState, list[tuple[InstrumentationScope, list[tuple[MetricSpec, list[_Row]]]]], int]


class MetricsBatch:
    """One flush's series (or a part of them: whole resources), for every metrics exporter.

    Built under the bridge's lock as plain tuples (or, `encoded`, as each resource's OTLP bytes,
    which only `otlp_bytes()` and `request()` serve); converted lazily, once, in an export thread:
    `otlp_bytes()` is the serialised `ExportMetricsServiceRequest`, `request()` that message
    parsed back, `metrics_data()` the SDK's `MetricsData`. A flush too big for one request is
    several batches: `part` of `parts` of the flush numbered `flush` (a pull exporter serves them
    together).
    """

    __slots__ = ("_bytes", "_encoder", "_lock", "_sdk", "encoded", "flush", "part", "parts", "points", "resources")

    def __init__(
        self, encoder: MetricsEncoder, resources: list[_ResourceRows], points: int,
        flush: int = 0, part: int = 0, parts: int = 1,
    ) -> None:  # fmt: skip
        self._encoder = encoder
        self.resources = resources
        self.points = points
        self.flush, self.part, self.parts = flush, part, parts
        self._lock = threading.Lock()
        self._bytes: bytes | None = None
        self._sdk: MetricsData | None = None
        # Written at the snapshot (only OTLP sinks take metrics): each resource's entry is then
        # (state, its encoded ResourceMetrics, points), and only otlp_bytes()/request() serve it.
        self.encoded = bool(resources) and isinstance(resources[0][1], bytes)

    @property
    def resource_metrics(self) -> list[_ResourceRows]:
        return self.resources  # how sinks that count resources (len, truthiness) see a batch

    def otlp_bytes(self) -> bytes:
        with self._lock:
            if self._bytes is None:
                self._bytes = self._encode()
            return self._bytes

    def request(self) -> Any:
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

        return ExportMetricsServiceRequest.FromString(self.otlp_bytes())

    def _encode(self) -> bytes:
        if self.encoded:
            return b"".join([encoded for _, encoded, _ in self.resources])  # type: ignore[misc]
        enc = self._encoder
        number_point = enc.number_point
        parts = []
        for state, scopes, _ in self.resources:
            if state.encoded_resource is None:
                state.encoded_resource = enc.resource(state.resource)
            encoded_scopes = []
            for scope, metrics in scopes:
                encoded_metrics = []
                for spec, rows in metrics:
                    if spec.instrument is Instrument.HISTOGRAM:
                        points = [enc.histogram_point(spec, a, value) for a, _, _, value in rows]
                    else:
                        gauge = spec.instrument is Instrument.GAUGE
                        points = [number_point(gauge, a, start, t, value) for a, start, t, value in rows]
                    encoded_metrics.append(enc.metric(spec, points))
                encoded_scopes.append((enc.scope(scope), encoded_metrics))
            parts.append(resource_metrics(state.encoded_resource, encoded_scopes))
        return b"".join(parts)

    def metrics_data(self) -> MetricsData:
        if self.encoded:
            raise TypeError("this MetricsBatch was written as OTLP at the snapshot: use otlp_bytes() or request()")
        with self._lock:
            if self._sdk is None:
                self._sdk = MetricsData(
                    [
                        ResourceMetrics(
                            state.resource,
                            [
                                ScopeMetrics(
                                    scope, [_metric(spec, [_point(spec, r) for r in rows]) for spec, rows in m], ""
                                )
                                for scope, m in scopes
                            ],
                            "",
                        )
                        for state, scopes, _ in self.resources
                    ]
                )
            return self._sdk


def _point(spec: MetricSpec, row: _Row) -> Any:
    attributes, start, time_ns, value = row
    attrs = dict(attributes)
    if spec.instrument is Instrument.HISTOGRAM:
        h = value
        return HistogramDataPoint(
            attrs, h.start_ns, h.time_ns, h.count, h.total, list(h.counts), list(spec.buckets), h.min, h.max
        )
    if isinstance(value, int) and not -(1 << 63) <= value < 1 << 63:
        value = float(value)  # OTLP's as_int is a signed 64-bit field: a kernel's 2^64-1 would fail the batch
    return NumberDataPoint(attrs, start, time_ns, value)


def _metric(spec: MetricSpec, points: list[Any]) -> Metric:
    cumulative = AggregationTemporality.CUMULATIVE
    data: Sum | Gauge | Histogram
    if spec.instrument is Instrument.GAUGE:
        data = Gauge(points)
    elif spec.instrument is Instrument.HISTOGRAM:
        data = Histogram(points, cumulative)
    else:
        data = Sum(points, cumulative, spec.instrument is Instrument.COUNTER)
    return Metric(spec.name, spec.description, spec.unit, data)


@dataclass(frozen=True)
class _Declared:
    spec: MetricSpec
    scope: InstrumentationScope
    allowed: frozenset[str]


def _add_series(state: _WorkloadState, declared: _Declared, key: tuple[str, Attributes], series: Any) -> None:
    """A new series, in the workload's table and in its scope's and metric's group (with _lock held)."""
    state.series[key] = series
    scope = declared.scope
    scoped = state.groups.get(scope.name)
    if scoped is None:
        scoped = state.groups[scope.name] = (scope, {})
    metric = scoped[1].get(key[0])
    if metric is None:
        metric = scoped[1][key[0]] = (declared.spec, [])
    metric[1].append(series)


# --- the bridge -----------------------------------------------------------------------------


class Telemetry:
    """Accumulates samples, log records and spans per workload, and exports them on flush()."""

    def __init__(
        self,
        exporters: Sequence[tuple[str, ExporterSinks]] = (),
        *,
        service_name: str = "",
        buffer_bytes: int = DEFAULT_BUFFER_BYTES,
        export_batch_size: int = 512,
        metrics_batch_points: int = 5_000,
        retry_initial: float = 1.0,
        retry_max: float = 30.0,
        strict: bool = False,
        extra_resource: Mapping[str, str] | None = None,
    ) -> None:
        self.strict = strict
        # One offset maps the monotonic clock (used for every event timestamp) to epoch time.
        self._epoch_offset_ns = time.time_ns() - time.monotonic_ns()
        env_resource = OTELResourceDetector().detect().attributes  # OTEL_RESOURCE_ATTRIBUTES
        self._host = {**env_resource, **host_attributes(), **(extra_resource or {})}
        self._self_name = service_name or os.environ.get("OTEL_SERVICE_NAME") or "uniobs"
        # _lock guards the aggregation state and the open (not yet sealed) log and span batches;
        # everything sealed belongs to the export buffer, under its own condition.
        self._lock = threading.Lock()
        self._declared: dict[str, _Declared] = {}
        self._workloads: dict[tuple[str, str, str], _WorkloadState] = {}
        self._batch_size = export_batch_size
        self._metrics_batch_points = metrics_batch_points
        self._open_logs: list[tuple[Resource, LogEvent | LineBatch]] = []  # console lines stay a batch
        self._open_logs_count = 0  # records in _open_logs
        self._open_logs_size = 0
        self._open_spans: list[tuple[Resource, SpanEvent]] = []  # SDK spans built per sink, at export
        self._ending: list[_WorkloadState] = []  # forgotten, not yet exported a last time
        self._rejected: dict[str, int] = {}
        self.buffer = ExportBuffer(buffer_bytes)
        self._encoder = MetricsEncoder()
        # When every metrics sink only sends the OTLP request (`otlp_metrics_only`: the OTLP exporters),
        # a flush writes it straight from the live series (no row per point: ~3x cheaper, and much
        # less for the garbage collector to walk); otherwise it takes rows every sink can read.
        metric_sinks = [sinks.metrics for _, sinks in exporters if sinks.metrics is not None]
        self._wire_only = bool(metric_sinks) and all(getattr(m, "otlp_metrics_only", False) for m in metric_sinks)
        self._flushes = 0
        self._said_too_small = False  # the buffer cannot hold one metrics export (warned once)
        converters: dict[str, Callable[[Any], Any]] = {
            "metrics": lambda batch: batch.metrics_data(),
            "logs": lambda pairs: [self._log_record(resource, event) for resource, event in _log_events(pairs)],
            "traces": lambda pairs: [self._readable_span(resource, event) for resource, event in pairs],
        }
        encoded = {**converters, "metrics": lambda batch: batch}  # sinks that take a MetricsBatch
        otlp_logs = self._logs_request  # log sinks that take the OTLP request (`encoded_logs`)
        otlp_spans = self._spans_request  # span sinks that take the OTLP request (`encoded_traces`)
        self.workers = [
            ExportWorker(
                name, sinks, self.buffer,
                {
                    **(encoded if getattr(sinks.metrics, "encoded_metrics", False) else converters),
                    **({"logs": otlp_logs} if getattr(sinks.logs, "encoded_logs", False) else {}),
                    **({"traces": otlp_spans} if getattr(sinks.spans, "encoded_traces", False) else {}),
                },
                retry_initial, retry_max,
            )
            for name, sinks in exporters
        ]  # fmt: skip
        self._queues = {signal: [w.queues[signal] for w in self.workers if signal in w.queues] for signal in SIGNALS}
        self._self_scope = InstrumentationScope("uniobs", __version__)
        self.declare(SELF_METRICS, scope="uniobs")

    # -- declarations and resources

    def declare(self, specs: Iterable[MetricSpec], scope: str) -> None:
        """Make metrics known, with the instrumentation scope (the plugin) that emits them."""
        with self._lock:
            for spec in specs:
                known = self._declared.get(spec.name)
                if known is not None and known.spec != spec:
                    raise ValueError(f"metric {spec.name} is declared twice, differently ({scope})")
                if known is not None:
                    continue  # the same metric from a second emitter: its series stay in the first's scope
                self._declared[spec.name] = _Declared(
                    spec, InstrumentationScope(scope, __version__), frozenset(spec.attributes)
                )

    def resource_for(self, workload: Workload) -> Resource:
        attrs: dict[str, Any] = dict(self._host)
        attrs.update(workload.resource_attributes())
        if workload.key == SELF.key:
            attrs["service.name"] = self._self_name
            attrs["service.version"] = __version__
        attrs["service.instance.id"] = instance_id(workload, attrs)  # one per workload (Prometheus' instance)
        return Resource(attrs)

    def _state(self, workload: Workload) -> _WorkloadState:
        state = self._workloads.get(workload.key)
        if state is None:
            state = _WorkloadState(workload, self.resource_for(workload))
            self._workloads[workload.key] = state
        return state

    def to_epoch_ns(self, monotonic_ns: int) -> int:
        return monotonic_ns + self._epoch_offset_ns

    def _reject(self, reason: str, message: str, count: int = 1) -> None:
        if self.strict:
            raise UndeclaredTelemetry(message)
        if reason not in self._rejected:
            log.warning("dropping telemetry: %s", message)
        self._rejected[reason] = self._rejected.get(reason, 0) + count

    # -- intake

    def record(self, workload: Workload, samples: Iterable[Sample], now_ns: int | None = None) -> None:
        now = time.time_ns() if now_ns is None else now_ns
        number = _Number
        with self._lock:
            state = self._state(workload)
            known = state.series.get
            for sample in samples:
                series = known((sample.metric, sample.attributes))
                if series.__class__ is number:
                    # A series seen before (so declared, with declared attributes): just its value.
                    value = sample.value
                    if series.counter and value < series.value:
                        # The source restarted after the last observation: a new start time, just
                        # after it, marks the reset (OTLP data model); rates never go negative.
                        series.start_ns = series.time_ns + 1
                    series.value = value
                    series.time_ns = now
                    continue
                declared = self._declared.get(sample.metric)
                if declared is None:
                    self._reject("undeclared_metric", f"metric {sample.metric!r} is not declared")
                    continue
                if any(k not in declared.allowed for k, _ in sample.attributes):
                    bad = [k for k, _ in sample.attributes if k not in declared.allowed]
                    self._reject("undeclared_attribute", f"metric {sample.metric}: undeclared attributes {bad}")
                    continue
                self._update(state, declared, sample, now)

    @staticmethod
    def _update(state: _WorkloadState, declared: _Declared, sample: Sample, now: int) -> None:
        spec = declared.spec
        key = (spec.name, sample.attributes)
        series = state.series.get(key)
        value = sample.value
        if spec.instrument is Instrument.HISTOGRAM:
            if not isinstance(series, _Hist):
                series = _Hist(now, now, [0] * (len(spec.buckets) + 1), attributes=sample.attributes)
                _add_series(state, declared, key, series)
            series.counts[bisect.bisect_left(spec.buckets, value)] += 1
            series.total += value
            series.count += 1
            series.min = min(series.min, value)
            series.max = max(series.max, value)
            series.time_ns = now
            return
        if not isinstance(series, _Number):
            _add_series(
                state, declared, key, _Number(now, now, value, spec.instrument is Instrument.COUNTER, sample.attributes)
            )
            return
        if series.counter and value < series.value:
            series.start_ns = series.time_ns + 1  # a reset (see record)
        series.value = value
        series.time_ns = now

    def log(self, workload: Workload, event: LogEvent) -> None:
        """Buffer a log record. Cheap: the SDK record is built at flush, off the reading thread."""
        self.log_batch(workload, (event,))

    def log_batch(self, workload: Workload, events: Sequence[LogEvent]) -> None:
        """Buffer several log records of one workload (a console chunk's lines) at once.

        Records are kept compact (the SDK record is built by each export thread); every
        `export_batch_size` records make a batch handed to the exporters at once.
        """
        if not self._queues["logs"]:
            return  # no exporter takes logs: nothing to hold
        sealed = []
        with self._lock:
            resource = self._state(workload).resource
            for event in events:
                self._open_logs.append((resource, event))
                self._open_logs_count += 1
                self._open_logs_size += log_cost(event)
                if self._open_logs_count >= self._batch_size or self._open_logs_size >= LOGS_BATCH_COST:
                    sealed.append(self._seal_logs())
        for batch in sealed:
            self.buffer.add(batch, self._queues["logs"])

    def log_lines(self, workload: Workload, lines: LineBatch) -> None:
        """Buffer a console chunk's lines as log records, kept as they are (columnar), not one object
        per line: each becomes the record `LineBatch.log_events` gives (the text as body, its number,
        and its cut, as attributes) only when exported, written straight into the OTLP request
        (`uniobs.telemetry.logs.line_records`) or built for an SDK sink. Charged in the buffer as
        those records would be (`LineBatch.cost`); cut into batches of `export_batch_size` records, or
        fewer when their charge reaches `LOGS_BATCH_COST` (the request stays under a receiver's 4 MiB).
        """
        if not self._queues["logs"] or not lines.texts:
            return
        sealed = []
        with self._lock:
            resource = self._state(workload).resource
            start, total = 0, len(lines.texts)
            while start < total:
                room = self._batch_size - self._open_logs_count
                part = lines.slice(start, min(total, start + room)) if start or total > room else lines.view()
                self._open_logs.append((resource, part))
                self._open_logs_count += len(part.texts)
                self._open_logs_size += part.cost(LOG_RECORD_OVERHEAD, ATTRIBUTE_COST)
                start += len(part.texts)
                if self._open_logs_count >= self._batch_size or self._open_logs_size >= LOGS_BATCH_COST:
                    sealed.append(self._seal_logs())
        for batch in sealed:
            self.buffer.add(batch, self._queues["logs"])

    def _seal_logs(self) -> Batch:  # with _lock held
        batch = Batch("logs", self._open_logs, self._open_logs_count, self._open_logs_size)
        self._open_logs, self._open_logs_count, self._open_logs_size = [], 0, 0
        return batch

    def _logs_request(self, pairs: Sequence[tuple[Resource, LogEvent | LineBatch]]) -> ExportLogsServiceRequest:
        """The OTLP request of a logs batch, built directly (`uniobs.telemetry.logs`)."""

        def sdk(resource: Resource, event: LogEvent) -> Any:
            return _encode_log(self._log_record(resource, event))

        return encode_log_events(pairs, self.to_epoch_ns, self._self_scope, sdk)

    def _log_record(self, resource: Resource, event: LogEvent) -> ReadableLogRecord:
        """The SDK's record of one event (for the sinks that take SDK records, and over the attribute cap)."""
        context = None
        if event.trace_id and event.span_id:
            span_context = SpanContext(event.trace_id, event.span_id, False, TraceFlags(TraceFlags.SAMPLED))
            context = trace_api.set_span_in_context(NonRecordingSpan(span_context))
        severity = SeverityNumber(int(event.severity))
        record = LogRecord(
            timestamp=self.to_epoch_ns(event.time_ns),
            observed_timestamp=self.to_epoch_ns(event.time_ns),
            context=context,
            severity_text=event.severity.name,
            severity_number=severity,
            body=event.body,
            attributes=dict(event.attributes),
            event_name=event.event_name or None,
        )
        return ReadableLogRecord(log_record=record, resource=resource, instrumentation_scope=self._self_scope)

    def exports(self, signal: str) -> bool:
        """Whether any exporter takes `signal` ("metrics", "logs", "traces"): a producer can skip
        building records nobody will receive."""
        return bool(self._queues[signal])

    def span(self, workload: Workload, event: SpanEvent) -> None:
        self.span_batch(workload, (event,))

    def span_batch(self, workload: Workload, events: Sequence[SpanEvent]) -> None:
        """Buffer several spans of one workload at once (one lock). Spans are kept as they are; each
        sink gets them as it takes them when they are exported (`_readable_span`, `_spans_request`).
        Every `export_batch_size` spans make a batch handed to the exporters."""
        if not self._queues["traces"]:
            with self._lock:
                self._state(workload)
            return
        sealed = []
        with self._lock:
            resource = self._state(workload).resource
            for event in events:
                self._open_spans.append((resource, event))
                if len(self._open_spans) >= self._batch_size:
                    sealed.append(self._open_spans)
                    self._open_spans = []
        for batch in sealed:
            self.buffer.add(Batch("traces", batch, len(batch), SPAN_COST * len(batch)), self._queues["traces"])

    def _readable_span(self, resource: Resource, event: SpanEvent) -> ReadableSpan:
        """The SDK's span of one event (for the sinks that take SDK spans, and the encoder's fallback)."""
        flags = TraceFlags(TraceFlags.SAMPLED)
        parent = SpanContext(event.trace_id, event.parent_span_id, False, flags) if event.parent_span_id else None
        # HTTP semantic conventions: a SERVER span's status stays unset unless it failed (5xx, no answer)
        ok = Status(StatusCode.UNSET) if event.kind == "server" else Status(StatusCode.OK)
        status = Status(StatusCode.ERROR, event.error) if event.error is not None else ok
        return ReadableSpan(
            name=event.name,
            context=SpanContext(event.trace_id, event.span_id, False, flags),
            parent=parent,
            resource=resource,
            attributes=dict(event.attributes),
            events=[Event(n, dict(a), self.to_epoch_ns(t)) for n, t, a in event.events],
            status=status,
            start_time=self.to_epoch_ns(event.start_ns),
            end_time=self.to_epoch_ns(event.end_ns),
            instrumentation_scope=self._self_scope,
            kind=_SPAN_KINDS.get(event.kind, SpanKind.INTERNAL),
        )

    def _spans_request(self, pairs: Sequence[tuple[Resource, SpanEvent]]) -> ExportTraceServiceRequest:
        """The OTLP request of a traces batch, built directly (`uniobs.telemetry.spans`)."""

        def sdk(resource: Resource, event: SpanEvent) -> bytes:
            encoded: bytes = _encode_span(self._readable_span(resource, event)).SerializeToString()
            return encoded

        return encode_span_events(pairs, self._epoch_offset_ns, self._self_scope, sdk)

    def forget(self, workload: Workload) -> None:
        """The workload is gone: its series are exported one last time, then no more."""
        with self._lock:
            state = self._workloads.pop(workload.key, None)
            if state is not None and state.series:
                self._ending.append(state)

    # -- export

    def _self_samples(self) -> list[Sample]:
        samples = []
        with self.buffer.cond:
            for worker in self.workers:
                stats = worker.stats
                for outcome, counts in (("sent", stats.sent), ("failed", stats.failed), ("dropped", stats.dropped)):
                    for signal, n in counts.items():
                        if signal not in worker.queues:
                            continue  # a signal this exporter does not take (prometheus: logs, traces)
                        a = (("uniobs.exporter", worker.name), ("uniobs.signal", signal), ("uniobs.outcome", outcome))
                        samples.append(Sample("uniobs.exporter.items", n, a))
                depth = sum(queue.depth() for queue in worker.queues.values())
                samples.append(Sample("uniobs.exporter.queue.depth", depth, (("uniobs.exporter", worker.name),)))
            samples.append(Sample("uniobs.exporter.buffer.usage", self.buffer.used))
            samples.append(Sample("uniobs.exporter.buffer.limit", self.buffer.budget))
        with self._lock:
            rejected = list(self._rejected.items())
            kinds: dict[str, int] = {}
            for state in self._workloads.values():
                if state.workload.key != SELF.key:
                    kinds[state.workload.kind.value] = kinds.get(state.workload.kind.value, 0) + 1
        for reason, n in rejected:
            samples.append(Sample("uniobs.telemetry.rejected", n, (("uniobs.reason", reason),)))
        for kind, n in kinds.items():
            samples.append(Sample("uniobs.workloads", n, ((WORKLOADS_KIND, kind),)))
        return samples

    def metrics_data(self) -> tuple[MetricsData, int]:
        """The current cumulative state of every series, and its number of data points."""
        batch = MetricsBatch(self._encoder, *self._snapshot())
        return batch.metrics_data(), batch.points

    def _snapshot(self, wire: bool = False) -> tuple[list[_ResourceRows], int]:
        """Every workload's series as of now (with uniobs' own), grouped by scope and metric: as rows,
        or (`wire`) as each workload's encoded OTLP ResourceMetrics (see `MetricsBatch`)."""
        self.record(SELF, self._self_samples())
        points = 0
        resources: list[_ResourceRows] = []
        gauge = Instrument.GAUGE
        hist = Instrument.HISTOGRAM
        with self._lock:
            states, self._ending = [*self._ending, *self._workloads.values()], []
            for state in states:
                n = len(state.series)
                if not n:
                    continue
                if wire:
                    resources.append((state, self._encode_state(state), n))  # type: ignore[arg-type]
                    points += n
                    continue
                scopes = []
                for scope, metrics in state.groups.values():
                    rows: list[tuple[MetricSpec, list[_Row]]] = []
                    for spec, table in metrics.values():
                        instrument = spec.instrument
                        if instrument is gauge:
                            rows.append((spec, [(s.attributes, 0, s.time_ns, s.value) for s in table]))
                        elif instrument is hist:
                            rows.append((spec, [(s.attributes, s.start_ns, s.time_ns, _Hist(
                                s.start_ns, s.time_ns, list(s.counts), s.total, s.count, s.min, s.max
                            )) for s in table]))  # fmt: skip
                        else:
                            rows.append((spec, [(s.attributes, s.start_ns, s.time_ns, s.value) for s in table]))
                    scopes.append((scope, rows))
                points += n
                resources.append((state, scopes, n))
        return resources, points

    def _encode_state(self, state: _WorkloadState) -> bytes:  # with _lock held
        """The workload's ResourceMetrics, written from its live series (`uniobs.telemetry.encode`)."""
        enc = self._encoder
        if state.encoded_resource is None:
            state.encoded_resource = enc.resource(state.resource)
        scopes = [(enc.scope(scope), (enc.metrics(metrics),)) for scope, metrics in state.groups.values()]
        return resource_metrics(state.encoded_resource, scopes)

    def _metric_batches(self) -> list[Batch]:
        """The current state as batches of whole resources, each up to `metrics_batch_points`
        points (a receiver refuses requests over 4 MiB by default)."""
        resources, _ = self._snapshot(self._wire_only)
        chunks: list[tuple[list[_ResourceRows], int]] = []
        chunk: list[_ResourceRows] = []
        points = 0
        for rows in resources:
            n = rows[2]
            if chunk and points + n > self._metrics_batch_points:
                chunks.append((chunk, points))
                chunk, points = [], 0
            chunk.append(rows)
            points += n
        if chunk:
            chunks.append((chunk, points))
        self._flushes += 1
        total = sum(n for _, n in chunks)
        if POINT_COST * total > self.buffer.budget and not self._said_too_small:
            # one flush cannot fit: every flush will lose points. Said once; the drops are counted.
            self._said_too_small = True
            log.warning(
                "one metrics export of %d data points needs ~%d MiB, more than [uniobs] buffer_bytes (%d MiB): "
                "points will be dropped at every export; raise buffer_bytes to at least %d MiB",
                total, POINT_COST * total >> 20, self.buffer.budget >> 20, -(-2 * POINT_COST * total >> 20),
            )  # fmt: skip
        return [
            Batch("metrics", MetricsBatch(self._encoder, c, n, self._flushes, i, len(chunks)), n, POINT_COST * n)
            for i, (c, n) in enumerate(chunks)
        ]

    def flush(self, timeout: float = 10.0, metrics: bool = True) -> bool:
        """Hand everything accumulated to the exporters; wait up to `timeout` for delivery.

        Returns False when something is still being delivered at the deadline (it stays
        queued: a later flush or shutdown settles it).
        """
        with self._lock:
            logs = self._seal_logs() if self._open_logs else None
            spans, self._open_spans = self._open_spans, []
        if logs is not None:
            self.buffer.add(logs, self._queues["logs"])
        if spans:
            self.buffer.add(Batch("traces", spans, len(spans), SPAN_COST * len(spans)), self._queues["traces"])
        if metrics and self._queues["metrics"]:
            for batch in self._metric_batches():
                self.buffer.add(batch, self._queues["metrics"])
        deadline = time.monotonic() + timeout
        return all(worker.drain(deadline) for worker in self.workers)

    def stats(self) -> dict[str, ExporterStats]:
        return {worker.name: worker.stats for worker in self.workers}

    def shutdown(self, timeout: float = 10.0) -> None:
        self.flush(timeout)
        deadline = time.monotonic() + timeout
        for worker in self.workers:
            worker.close(deadline)
