"""In-memory exporter sinks, to assert what the telemetry bridge hands to an exporter.

Logs and spans use the SDK's own in-memory exporters; the SDK has an in-memory metric *reader*
but no metric *exporter*, and `ExporterSinks` takes exporters, hence `MemoryMetrics`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from uniobs.plugin import ExporterSinks


class MemoryMetrics(MetricExporter):
    """Keeps every exported batch in `batches`; subclass it to make a slow or failing backend."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[MetricsData] = []

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kw: Any) -> MetricExportResult:
        self.batches.append(metrics_data)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kw: Any) -> None:
        return None


@dataclass
class MemorySinks:
    """One in-memory exporter: `Telemetry([("mem", m.sinks)])` or `Pipeline(..., extra_sinks=[("mem", m.sinks)])`,
    then read `m.metrics.batches`, `m.logs.get_finished_logs()`, `m.spans.get_finished_spans()`."""

    metrics: MemoryMetrics = field(default_factory=MemoryMetrics)
    logs: InMemoryLogRecordExporter = field(default_factory=InMemoryLogRecordExporter)
    spans: InMemorySpanExporter = field(default_factory=InMemorySpanExporter)

    @property
    def sinks(self) -> ExporterSinks:
        return ExporterSinks(self.metrics, self.logs, self.spans)
