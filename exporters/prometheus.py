"""`--export prometheus[:HOST:PORT]`: a pull endpoint for Prometheus (127.0.0.1:9464 by default).

Translation follows the OpenTelemetry specification's Prometheus compatibility rules: dots
become underscores, the unit becomes a suffix (`_seconds`, `_bytes`), monotonic sums become
counters with `_total`, histograms get cumulative `le` buckets. One endpoint serves many
workloads, so each series carries its resource as labels (what the Collector's exporter calls
`resource_to_telemetry_conversion`), plus `job` (service.name) and `instance`
(service.instance.id or host.name): every function instance stays its own series.

The text (exposition format 0.0.4, what prometheus_client's `generate_latest` writes: labels
sorted, values in Go's float formatting) is built from the bridge's `MetricsBatch` at the first
scrape after each flush, without SDK objects, and served as is until the next flush.
"""

from __future__ import annotations

import functools
import gzip
import http.server
import re
import socket
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
from prometheus_client.utils import floatToGoString as _float_to_go

from uniobs.plugin import Exporter, ExporterSinks, PluginConfig


def _go(value: Any) -> str:
    """A sample value as prometheus_client writes it (Go's float formatting)."""
    return str(_float_to_go(value))  # type: ignore[no-untyped-call]


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


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, str]) -> str:
    """`k="v",...` sorted by name, as prometheus_client writes them (without the braces)."""
    return ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))


def _resource_labels(attributes: Any) -> dict[str, str]:
    res = {label_name(k): _value(v) for k, v in attributes.items()}
    res["job"] = res.get("service_name", "uniobs")
    res["instance"] = res.get("service_instance_id", res.get("host_name", ""))
    return res


class _Family:
    __slots__ = ("help", "lines", "name", "type")

    def __init__(self, name: str, help: str, type: str) -> None:
        self.name, self.help, self.type = name, help, type
        self.lines: list[str] = []


class _Snapshot:
    """The last metrics the pipeline exported, and their exposition (text format 0.0.4), built at
    the first scrape after each export and served as is until the next one.

    The pipeline hands over a flush as one or more `MetricsBatch`es (whole resources each); the
    parts of one flush are served together. Each series' label string (resource, scope and point
    attributes, sorted and escaped) is kept between exports: it never changes for a workload.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flush: object = None
        self._pending: dict[int, Any] = {}
        self._parts: list[Any] = []
        self._text: bytes | None = None
        self._resources: dict[int, tuple[Any, dict[str, str], dict[tuple[str, Any], str]]] = {}

    def update(self, data: Any) -> None:
        with self._lock:
            if not hasattr(data, "flush"):  # the SDK's MetricsData, from a caller other than the bridge
                self._flush, self._pending, self._parts, self._text = None, {}, [data], None
                return
            if data.flush != self._flush:
                if self._pending:  # a part of the last flush never came (dropped): serve what did
                    self._parts, self._text = list(self._pending.values()), None
                self._flush, self._pending = data.flush, {}
            self._pending[data.part] = data
            if len(self._pending) == data.parts:
                self._parts, self._text = [self._pending[i] for i in sorted(self._pending)], None

    def exposition(self) -> bytes:
        with self._lock:
            if self._text is None:
                self._text = self._build(self._parts)
            return self._text

    def _build(self, parts: list[Any]) -> bytes:  # with _lock held
        families: dict[str, _Family] = {}
        resources: dict[int, tuple[Any, dict[str, str], dict[tuple[str, Any], str]]] = {}
        for part in parts:
            for resource, scope, spec, points in _metrics(part):
                key = id(resource)
                cached = resources.get(key) or self._resources.get(key)
                if cached is None or cached[0] is not resource:
                    cached = (resource, _resource_labels(resource.attributes), {})
                resources[key] = cached
                _, res_labels, label_strings = cached
                name, kind, help = spec
                family = families.get(name)
                if family is None:
                    family = families[name] = _Family(name, help, kind)
                lines = family.lines
                for attributes, value in points:
                    labels = label_strings.get((scope, attributes))
                    if labels is None:
                        merged = {**res_labels, "otel_scope_name": scope}
                        merged.update((label_name(k), _value(v)) for k, v in attributes)
                        labels = label_strings[(scope, attributes)] = _labels(merged)
                    if kind == "counter":
                        lines.append(f"{name}_total{{{labels}}} {_go(value)}\n")
                    elif kind == "gauge":
                        lines.append(f"{name}{{{labels}}} {_go(value)}\n")
                    else:
                        bounds, counts, count, total = value
                        merged = {**res_labels, "otel_scope_name": scope}
                        merged.update((label_name(k), _value(v)) for k, v in attributes)
                        running = 0
                        for bound, n in [*zip(bounds, counts, strict=False), (None, 0)]:
                            running = count if bound is None else running + n
                            le = "+Inf" if bound is None else repr(float(bound))
                            lines.append(f"{name}_bucket{{{_labels({**merged, 'le': le})}}} {_go(running)}\n")
                        lines.append(f"{name}_count{{{labels}}} {_go(count)}\n")
                        lines.append(f"{name}_sum{{{labels}}} {_go(total)}\n")
        self._resources = resources  # only what is still exported stays cached
        out = []
        for family in families.values():
            shown = f"{family.name}_total" if family.type == "counter" else family.name
            help = family.help.replace("\\", "\\\\").replace("\n", "\\n")
            out.append(f"# HELP {shown} {help}\n# TYPE {shown} {family.type}\n")
            out.append("".join(family.lines))
        return "".join(out).encode()


_Spec = tuple[str, str, str]  # exposition name, type, help


def _metrics(data: Any) -> Iterator[tuple[Any, str, _Spec, list[tuple[Any, Any]]]]:
    """(resource, scope name, (name, type, help), [(attributes, value)]) for every metric of a
    `MetricsBatch` or of the SDK's `MetricsData`; a histogram's value is (bounds, counts, count, sum)."""
    if hasattr(data, "flush"):
        for state, scopes, _ in data.resources:
            for scope, metrics in scopes:
                for spec, rows in metrics:
                    instrument = spec.instrument.value
                    if instrument == "histogram":
                        points = [(a, (spec.buckets, h.counts, h.count, h.total)) for a, _, _, h in rows]
                    else:
                        points = [(a, v) for a, _, _, v in rows]
                    is_counter = instrument == "counter"
                    is_gauge = instrument in ("gauge", "updowncounter")
                    kind = "counter" if is_counter else "histogram" if instrument == "histogram" else "gauge"
                    yield (
                        state.resource,
                        scope.name,
                        _spec(spec.name, spec.unit, spec.description, kind, is_gauge),
                        points,
                    )
        return
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                d = metric.data
                is_counter = isinstance(d, Sum) and d.is_monotonic
                is_gauge = isinstance(d, Gauge) or (isinstance(d, Sum) and not d.is_monotonic)
                kind = "counter" if is_counter else "histogram" if isinstance(d, Histogram) else "gauge"
                if kind == "histogram":
                    points = [
                        (tuple(p.attributes.items()), (p.explicit_bounds, p.bucket_counts, p.count, p.sum))
                        for p in d.data_points
                    ]
                else:
                    points = [(tuple(p.attributes.items()), p.value) for p in d.data_points]
                yield (
                    rm.resource,
                    sm.scope.name,
                    _spec(metric.name, metric.unit, metric.description, kind, is_gauge),
                    points,
                )


@functools.lru_cache(maxsize=4096)  # a handful of metrics, asked once per resource per scrape
def _spec(name: str, unit: str, description: str, kind: str, is_gauge: bool) -> _Spec:
    exposed = metric_name(name, unit, kind == "counter", is_gauge)
    if kind == "counter" and exposed.endswith("_total"):
        exposed = exposed[:-6]  # as prometheus_client's counter family does: _total is added back
    return exposed, kind, description


class _Handler(http.server.BaseHTTPRequestHandler):
    snapshot: _Snapshot

    def do_GET(self) -> None:
        body = self.snapshot.exposition()
        gzipped = "gzip" in self.headers.get("Accept-Encoding", "")
        if gzipped:
            body = gzip.compress(body, compresslevel=1)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        if gzipped:
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return None


class _PrometheusSink(MetricExporter):
    encoded_metrics = True  # takes the bridge's MetricsBatch: no SDK objects are built for a scrape

    def __init__(self, host: str, port: int) -> None:
        super().__init__()
        self.snapshot = _Snapshot()
        handler = type("Handler", (_Handler,), {"snapshot": self.snapshot})
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("Server", (http.server.ThreadingHTTPServer,), {"address_family": family})
        self.server = server_class((host, port), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="uniobs-prometheus", daemon=True)
        self.thread.start()
        self.port = self.server.server_port

    def exposition(self) -> bytes:
        """What a scrape of the endpoint gets (text format 0.0.4)."""
        return self.snapshot.exposition()

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
