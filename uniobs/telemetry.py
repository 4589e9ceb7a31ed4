"""The telemetry bridge: the one module that turns uniobs' data into OpenTelemetry data.

Why not the SDK's MeterProvider/LoggerProvider/TracerProvider? Each provider carries exactly
one Resource and each periodic reader owns a thread, so "one resource per workload" would cost
a provider and a thread per workload. Instead this module keeps the aggregation state itself
(cumulative sums with their start times, gauges, histograms) keyed by workload, and builds the
SDK's export data (`MetricsData` with one `ResourceMetrics` per workload, `ReadableLogRecord`,
`ReadableSpan`) that the stock SDK exporters accept. One export worker thread per exporter
delivers it, so a slow or dead backend never holds up the others.

Counters: collectors report the source's cumulative value. A value lower than the previous one
means the source restarted (a workload restarted, a counter wrapped); the series then gets a
new start time, which is how OTLP marks a reset, and no negative delta is ever produced.
"""

from __future__ import annotations

import bisect
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace as trace_api
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanContext, Status, StatusCode, TraceFlags

from uniobs import __version__
from uniobs.model import Attributes, Instrument, Kind, LogEvent, MetricSpec, Sample, SpanEvent, Workload
from uniobs.plugin import ExporterSinks

log = logging.getLogger("uniobs.telemetry")


class UndeclaredTelemetry(Exception):
    """A sample names a metric or attribute its plugin did not declare (strict mode only)."""


# uniobs' own metrics, on uniobs' own resource.
SELF_METRICS = (
    MetricSpec(
        "uniobs.exporter.items",
        Instrument.COUNTER,
        "{item}",
        "Data points, log records and spans handed to an exporter, by outcome: "
        "sent, failed (the backend refused or was unreachable) or dropped (the queue was full).",
        ("uniobs.exporter", "uniobs.signal", "uniobs.outcome"),
    ),
    MetricSpec(
        "uniobs.exporter.queue.depth",
        Instrument.GAUGE,
        "{batch}",
        "Batches waiting in an exporter's queue.",
        ("uniobs.exporter",),
    ),
    MetricSpec(
        "uniobs.telemetry.rejected",
        Instrument.COUNTER,
        "{item}",
        "Samples, log records and spans refused before export: undeclared metric or attribute, or a full log buffer.",
        ("uniobs.reason",),
    ),
    MetricSpec(
        "uniobs.workloads",
        Instrument.GAUGE,
        "{workload}",
        "Workloads with live telemetry, by kind.",
        ("uniobs.workload.kind",),
    ),
)

SIGNALS = ("metrics", "logs", "traces")


# --- host identity and resources ------------------------------------------------------------


def host_attributes() -> dict[str, str]:
    """host.name and host.id (the machine-id, as the semantic conventions say for Linux)."""
    attrs = {"host.name": socket.gethostname(), "host.arch": os.uname().machine, "os.type": "linux"}
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            with open(path, encoding="ascii") as f:
                machine_id = f.read().strip()
        except OSError:
            continue
        if machine_id:
            attrs["host.id"] = machine_id
            break
    return attrs


SELF = Workload(kind=Kind.PROCESS, runtime="uniobs", id="uniobs", name="uniobs", pid=os.getpid())


# --- metric state ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Number:
    start_ns: int
    time_ns: int
    value: float | int


@dataclass(slots=True)
class _Hist:
    start_ns: int
    time_ns: int
    counts: list[int]
    total: float = 0.0
    count: int = 0
    min: float = float("inf")
    max: float = float("-inf")


@dataclass
class _WorkloadState:
    workload: Workload
    resource: Resource
    series: dict[tuple[str, Attributes], _Number | _Hist] = field(default_factory=dict)


@dataclass(frozen=True)
class _Declared:
    spec: MetricSpec
    scope: InstrumentationScope
    allowed: frozenset[str]


# --- export workers -------------------------------------------------------------------------


@dataclass
class ExporterStats:
    sent: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SIGNALS, 0))
    failed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SIGNALS, 0))
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SIGNALS, 0))
    last_error: str = ""
    healthy: bool = True


_OK = (MetricExportResult.SUCCESS, LogRecordExportResult.SUCCESS, SpanExportResult.SUCCESS)


class ExportWorker:
    """Delivers batches to one exporter on its own thread, through a bounded queue.

    A failed delivery is retried, the batch kept at the head of the queue, after a back-off that
    doubles from `retry_initial` to `retry_max` seconds (0 disables retries: the batch is lost).
    The queue is bounded by batches and by items (data points, log records, spans): when full,
    the oldest batch is dropped — the newest data is the most useful after an outage — and its
    items counted. `dropped` is exactly what never reached the backend; `failed` counts items of
    failed attempts (a retried batch counts again).
    """

    def __init__(
        self, name: str, sinks: ExporterSinks, max_batches: int, max_items: int = 200_000,
        retry_initial: float = 1.0, retry_max: float = 30.0,
    ) -> None:  # fmt: skip
        self.name = name
        self.sinks = sinks
        self.stats = ExporterStats()
        self._queue: deque[tuple[str, Any, int]] = deque()
        self._items = 0
        self._max = max_batches
        self._max_items = max_items
        self._retry_initial = retry_initial
        self._retry_max = max(retry_max, retry_initial)
        self._backoff = 0.0
        self._cond = threading.Condition()
        self._busy = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"uniobs-export-{name}", daemon=True)
        self._thread.start()

    def submit(self, signal: str, payload: Any, items: int) -> None:
        if items == 0 or self._sink(signal) is None:
            return
        with self._cond:
            if self._closed:
                self.stats.dropped[signal] += items
                return
            while self._queue and (len(self._queue) >= self._max or self._items + items > self._max_items):
                self._drop_oldest()
            self._queue.append((signal, payload, items))
            self._items += items
            self._cond.notify_all()

    def _drop_oldest(self) -> None:
        old_signal, _, old_items = self._queue.popleft()
        self._items -= old_items
        self.stats.dropped[old_signal] += old_items

    def depth(self) -> int:
        with self._cond:
            return len(self._queue)

    def queued_items(self) -> int:
        with self._cond:
            return self._items

    def _sink(self, signal: str) -> Any:
        return {"metrics": self.sinks.metrics, "logs": self.sinks.logs, "traces": self.sinks.spans}[signal]

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                signal, payload, items = self._queue[0]  # stays queued until delivered or given up
                self._busy = True
            try:
                result = self._sink(signal).export(payload)
                error = "" if result in _OK else f"the exporter reported {getattr(result, 'name', result)}"
            except Exception as exc:  # an exporter must not take the pipeline down
                error = f"{type(exc).__name__}: {exc}"
            with self._cond:
                self._busy = False
                head = self._queue[0] if self._queue else None
                still_head = head is not None and head[1] is payload
                if error:
                    self.stats.failed[signal] += items
                    retry = self._retry_initial > 0 and not self._closed
                    if self.stats.healthy or error != self.stats.last_error:
                        what = "retrying with back-off" if retry else f"lost ({items} items)"
                        log.error("exporter %s: %s export failed, %s: %s", self.name, signal, what, error)
                    self.stats.healthy = False
                    self.stats.last_error = error
                    if not retry and still_head:
                        self._queue.popleft()
                        self._items -= items
                        self.stats.dropped[signal] += items
                    elif retry:
                        self._backoff = min(self._retry_max, self._backoff * 2 or self._retry_initial)
                        self._cond.notify_all()
                        self._cond.wait(self._backoff)  # woken early by close()
                else:
                    if still_head:
                        self._queue.popleft()
                        self._items -= items
                    self.stats.sent[signal] += items
                    if not self.stats.healthy:
                        log.warning("exporter %s: delivering again", self.name)
                    self.stats.healthy = True
                    self._backoff = 0.0
                self._cond.notify_all()

    def drain(self, deadline: float) -> bool:
        """Wait until everything submitted so far is delivered (or lost); False on timeout."""
        with self._cond:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
            return True

    def close(self, deadline: float) -> None:
        self.drain(deadline)
        with self._cond:
            self._closed = True
            while self._busy and time.monotonic() < deadline + 1:
                self._cond.wait(0.1)
            for signal, _, items in self._queue:
                self.stats.dropped[signal] += items
            self._queue.clear()
            self._items = 0
            self._cond.notify_all()
        for sink in (self.sinks.metrics, self.sinks.logs, self.sinks.spans):
            if sink is None:
                continue
            try:
                sink.shutdown(**({"timeout_millis": 1000} if sink is self.sinks.metrics else {}))
            except Exception as exc:
                log.debug("exporter %s: shutdown: %s", self.name, exc)


# --- the bridge -----------------------------------------------------------------------------


class Telemetry:
    """Accumulates samples, log records and spans per workload, and exports them on flush()."""

    def __init__(
        self,
        exporters: Sequence[tuple[str, ExporterSinks]] = (),
        *,
        service_name: str = "",
        queue_batches: int = 64,
        queue_max_items: int = 200_000,
        retry_initial: float = 1.0,
        retry_max: float = 30.0,
        max_log_records: int = 100_000,
        max_log_bytes: int = 64 << 20,
        strict: bool = False,
        extra_resource: Mapping[str, str] | None = None,
    ) -> None:
        self.strict = strict
        # One offset maps the monotonic clock (used for every event timestamp) to epoch time.
        self._epoch_offset_ns = time.time_ns() - time.monotonic_ns()
        env_resource = OTELResourceDetector().detect().attributes  # OTEL_RESOURCE_ATTRIBUTES
        self._host = {**env_resource, **host_attributes(), **(extra_resource or {})}
        self._self_name = service_name or os.environ.get("OTEL_SERVICE_NAME") or "uniobs"
        self._lock = threading.Lock()
        self._declared: dict[str, _Declared] = {}
        self._workloads: dict[tuple[str, str, str], _WorkloadState] = {}
        self._logs: deque[tuple[Resource, LogEvent]] = deque()
        self._max_logs = max_log_records
        self._max_log_bytes = max_log_bytes
        self._log_bytes = 0
        self._spans: list[ReadableSpan] = []
        self._ending: list[_WorkloadState] = []  # forgotten, not yet exported a last time
        self._rejected: dict[str, int] = {}
        self.workers = [
            ExportWorker(name, sinks, queue_batches, queue_max_items, retry_initial, retry_max)
            for name, sinks in exporters
        ]
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
                self._declared[spec.name] = _Declared(
                    spec, InstrumentationScope(scope, __version__), frozenset(spec.attributes)
                )

    def resource_for(self, workload: Workload) -> Resource:
        attrs: dict[str, Any] = dict(self._host)
        attrs.update(workload.resource_attributes())
        if workload.key == SELF.key:
            attrs["service.name"] = self._self_name
            attrs["service.version"] = __version__
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
        with self._lock:
            state = self._state(workload)
            for sample in samples:
                declared = self._declared.get(sample.metric)
                if declared is None:
                    self._reject("undeclared_metric", f"metric {sample.metric!r} is not declared")
                    continue
                if any(k not in declared.allowed for k, _ in sample.attributes):
                    bad = [k for k, _ in sample.attributes if k not in declared.allowed]
                    self._reject("undeclared_attribute", f"metric {sample.metric}: undeclared attributes {bad}")
                    continue
                self._update(state, declared.spec, sample, now)

    @staticmethod
    def _update(state: _WorkloadState, spec: MetricSpec, sample: Sample, now: int) -> None:
        key = (spec.name, sample.attributes)
        series = state.series.get(key)
        value = sample.value
        if spec.instrument is Instrument.HISTOGRAM:
            if not isinstance(series, _Hist):
                series = _Hist(now, now, [0] * (len(spec.buckets) + 1))
                state.series[key] = series
            series.counts[bisect.bisect_left(spec.buckets, value)] += 1
            series.total += value
            series.count += 1
            series.min = min(series.min, value)
            series.max = max(series.max, value)
            series.time_ns = now
            return
        if not isinstance(series, _Number):
            state.series[key] = _Number(now, now, value)
            return
        if spec.instrument is Instrument.COUNTER and value < series.value:
            # The source restarted after the last observation: a new start time, just after
            # it, marks the reset (OTLP data model); downstream rates never go negative.
            series.start_ns = series.time_ns + 1
        series.value = value
        series.time_ns = now

    def log(self, workload: Workload, event: LogEvent) -> None:
        """Buffer a log record. Cheap: the SDK record is built at flush, off the reading thread."""
        self.log_batch(workload, (event,))

    def log_batch(self, workload: Workload, events: Sequence[LogEvent]) -> None:
        """Buffer several log records of one workload (a console chunk's lines) at once."""
        logs = self._logs
        with self._lock:
            resource = self._state(workload).resource
            for event in events:
                size = len(event.body) + 128
                while logs and (len(logs) >= self._max_logs or self._log_bytes + size > self._max_log_bytes):
                    _, old = logs.popleft()
                    self._log_bytes -= len(old.body) + 128
                    self._rejected["log_buffer_full"] = self._rejected.get("log_buffer_full", 0) + 1
                logs.append((resource, event))
                self._log_bytes += size

    def _log_record(self, resource: Resource, event: LogEvent) -> ReadableLogRecord:
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

    def span(self, workload: Workload, event: SpanEvent) -> None:
        with self._lock:
            resource = self._state(workload).resource
        flags = TraceFlags(TraceFlags.SAMPLED)
        parent = SpanContext(event.trace_id, event.parent_span_id, False, flags) if event.parent_span_id else None
        status = Status(StatusCode.ERROR, event.error) if event.error is not None else Status(StatusCode.OK)
        span = ReadableSpan(
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
        )
        with self._lock:
            self._spans.append(span)

    def forget(self, workload: Workload) -> None:
        """The workload is gone: its series are exported one last time, then no more."""
        with self._lock:
            state = self._workloads.pop(workload.key, None)
            if state is not None and state.series:
                self._ending.append(state)

    # -- export

    def _self_samples(self) -> list[Sample]:
        samples = []
        for worker in self.workers:
            for outcome, counts in (
                ("sent", worker.stats.sent),
                ("failed", worker.stats.failed),
                ("dropped", worker.stats.dropped),
            ):
                for signal, n in counts.items():
                    a = (
                        ("uniobs.exporter", worker.name),
                        ("uniobs.signal", signal),
                        ("uniobs.outcome", outcome),
                    )
                    samples.append(Sample("uniobs.exporter.items", n, a))
            samples.append(Sample("uniobs.exporter.queue.depth", worker.depth(), (("uniobs.exporter", worker.name),)))
        for reason, n in self._rejected.items():
            samples.append(Sample("uniobs.telemetry.rejected", n, (("uniobs.reason", reason),)))
        kinds: dict[str, int] = {}
        for state in self._workloads.values():
            if state.workload.key != SELF.key:
                kinds[state.workload.kind.value] = kinds.get(state.workload.kind.value, 0) + 1
        for kind, n in kinds.items():
            samples.append(Sample("uniobs.workloads", n, (("uniobs.workload.kind", kind),)))
        return samples

    def metrics_data(self) -> tuple[MetricsData, int]:
        """The current cumulative state of every series, and its number of data points."""
        self.record(SELF, self._self_samples())
        points = 0
        resource_metrics = []
        with self._lock:
            states, self._ending = [*self._ending, *self._workloads.values()], []
            for state in states:
                by_scope: dict[str, tuple[InstrumentationScope, dict[str, tuple[MetricSpec, list[Any]]]]] = {}
                for (name, attributes), series in state.series.items():
                    declared = self._declared[name]
                    _, metrics = by_scope.setdefault(declared.scope.name, (declared.scope, {}))
                    metrics.setdefault(name, (declared.spec, []))[1].append(
                        self._point(declared.spec, attributes, series)
                    )
                    points += 1
                scopes = [
                    ScopeMetrics(scope, [self._metric(spec, pts) for spec, pts in metrics.values()], "")
                    for scope, metrics in by_scope.values()
                ]
                if scopes:
                    resource_metrics.append(ResourceMetrics(state.resource, scopes, ""))
        return MetricsData(resource_metrics), points

    @staticmethod
    def _point(spec: MetricSpec, attributes: Attributes, series: _Number | _Hist) -> Any:
        attrs = dict(attributes)
        if isinstance(series, _Hist):
            return HistogramDataPoint(
                attrs, series.start_ns, series.time_ns, series.count, series.total,
                list(series.counts), list(spec.buckets), series.min, series.max,
            )  # fmt: skip
        start = series.start_ns if spec.instrument is not Instrument.GAUGE else 0
        return NumberDataPoint(attrs, start, series.time_ns, series.value)

    @staticmethod
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

    def flush(self, timeout: float = 10.0, metrics: bool = True) -> bool:
        """Export everything accumulated; wait up to `timeout` for delivery. False if late."""
        with self._lock:
            pending, self._logs, self._log_bytes = self._logs, deque(), 0
            spans, self._spans = self._spans, []
        logs = [self._log_record(resource, event) for resource, event in pending]
        if metrics:
            data, points = self.metrics_data()
            for worker in self.workers:
                worker.submit("metrics", data, points)
        for worker in self.workers:
            worker.submit("logs", logs, len(logs))
            worker.submit("traces", spans, len(spans))
        deadline = time.monotonic() + timeout
        return all(worker.drain(deadline) for worker in self.workers)

    def stats(self) -> dict[str, ExporterStats]:
        return {worker.name: worker.stats for worker in self.workers}

    def shutdown(self, timeout: float = 10.0) -> None:
        self.flush(timeout)
        deadline = time.monotonic() + timeout
        for worker in self.workers:
            worker.close(deadline)
