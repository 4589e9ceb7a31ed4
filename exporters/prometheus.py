"""`--export prometheus[:HOST:PORT]`: a pull endpoint for Prometheus (127.0.0.1:9464 by default).

Translation follows the OpenTelemetry specification's Prometheus compatibility rules: dots
become underscores, the unit becomes a suffix (`_seconds`, `_bytes`), monotonic sums become
counters with `_total`, histograms get cumulative `le` buckets. One endpoint serves many
workloads, so each series carries its resource as labels (what the Collector's exporter calls
`resource_to_telemetry_conversion`), plus `job` (service.name) and `instance`
(service.instance.id or host.name): every function instance stays its own series.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    Sum,
)
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.metrics_core import Metric as PromMetric
from prometheus_client.registry import Collector as PromCollector

from uniobs.plugin import Exporter, ExporterSinks, PluginConfig

_INVALID = re.compile(r"[^a-zA-Z0-9_]")
_UNITS = {
    "s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds",
    "By": "bytes", "KiBy": "kibibytes", "MiBy": "mebibytes", "bit": "bits",
    "%": "percent", "Hz": "hertz", "By/s": "bytes_per_second",
}  # fmt: skip


def metric_name(name: str, unit: str, is_counter: bool, is_gauge: bool) -> str:
    base = _INVALID.sub("_", name)
    suffix = _UNITS.get(unit, "")
    if unit == "1" and is_gauge:
        suffix = "ratio"
    if suffix and not base.endswith(suffix):
        base = f"{base}_{suffix}"
    return base  # prometheus_client adds _total to counters


def label_name(key: str) -> str:
    name = _INVALID.sub("_", key)
    return f"key_{name}" if name[:1].isdigit() else name


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, list | tuple):  # string arrays (container.image.tags): the spec joins them as JSON
        return "[" + ",".join(f'"{x}"' for x in v) + "]"
    return str(v)


class _Snapshot(PromCollector):
    """Serves the last metrics the pipeline exported."""

    def __init__(self) -> None:
        self._data: MetricsData | None = None
        self._lock = threading.Lock()

    def update(self, data: MetricsData) -> None:
        with self._lock:
            self._data = data

    def collect(self) -> Iterator[PromMetric]:
        with self._lock:
            data = self._data
        if data is None:
            return
        families: dict[str, PromMetric] = {}
        for rm in data.resource_metrics:
            res = {label_name(k): _value(v) for k, v in rm.resource.attributes.items()}
            res["job"] = res.get("service_name", "uniobs")
            res["instance"] = res.get("service_instance_id", res.get("host_name", ""))
            for sm in rm.scope_metrics:
                base_labels = {**res, "otel_scope_name": sm.scope.name}
                for metric in sm.metrics:
                    self._add(families, metric, base_labels)
        yield from families.values()

    @staticmethod
    def _add(families: dict[str, PromMetric], metric: Any, base: dict[str, str]) -> None:
        data = metric.data
        is_counter = isinstance(data, Sum) and data.is_monotonic
        is_gauge = isinstance(data, Gauge) or (isinstance(data, Sum) and not data.is_monotonic)
        name = metric_name(metric.name, metric.unit, is_counter, is_gauge)
        kind = "counter" if is_counter else "histogram" if isinstance(data, Histogram) else "gauge"
        family = families.get(name)
        if family is None:
            family = families[name] = PromMetric(name, metric.description, kind)
        for point in data.data_points:
            labels = {**base, **{label_name(k): _value(v) for k, v in point.attributes.items()}}
            if kind == "counter":
                family.add_sample(f"{name}_total", labels, point.value)
            elif kind == "gauge":
                family.add_sample(name, labels, point.value)
            else:
                running = 0
                for bound, count in zip(point.explicit_bounds, point.bucket_counts, strict=False):
                    running += count
                    family.add_sample(f"{name}_bucket", {**labels, "le": repr(float(bound))}, running)
                family.add_sample(f"{name}_bucket", {**labels, "le": "+Inf"}, point.count)
                family.add_sample(f"{name}_count", labels, point.count)
                family.add_sample(f"{name}_sum", labels, point.sum)


class _PrometheusSink(MetricExporter):
    def __init__(self, host: str, port: int) -> None:
        super().__init__()
        self.snapshot = _Snapshot()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.snapshot)
        self.server, self.thread = start_http_server(port, addr=host, registry=self.registry)
        self.port = self.server.server_port

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        self.snapshot.update(metrics_data)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass(frozen=True)
class PrometheusConfig(PluginConfig):
    host: str = "127.0.0.1"  # loopback unless configured otherwise
    port: int = 9464  # the OpenTelemetry default for Prometheus exporters; 0 picks a free port

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port: {self.port} is not a TCP port")
        if not self.host:
            raise ValueError("host: must not be empty")


class PrometheusExporter(Exporter):
    name = "prometheus"
    config_class = PrometheusConfig
    config: PrometheusConfig

    @classmethod
    def config_from_arg(cls, arg: str, base: PluginConfig) -> PluginConfig:
        host, sep, port = arg.rpartition(":")
        if not sep:  # "prometheus:9464"
            host = base.host if isinstance(base, PrometheusConfig) else "127.0.0.1"
        try:
            return PrometheusConfig(host=host.strip("[]"), port=int(port))
        except ValueError:
            raise ValueError(f"prometheus: expected HOST:PORT or PORT, got {arg!r}") from None

    def sinks(self) -> ExporterSinks:
        self.sink = _PrometheusSink(self.config.host, self.config.port)
        return ExporterSinks(metrics=self.sink)

    def describe(self) -> str:
        port = getattr(self, "sink", None)
        return f"prometheus http://{self.config.host}:{port.port if port else self.config.port}/metrics"
