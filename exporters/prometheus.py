"""`--export prometheus[:HOST:PORT]`: a pull endpoint for Prometheus (127.0.0.1:9464 by default).

Translation follows the OpenTelemetry specification's Prometheus compatibility rules
(specification/compatibility/prometheus_and_openmetrics.md, "OTLP Metric points to Prometheus"),
as the Collector's exporters apply them, since one endpoint serves many resources (one per workload):

- names: invalid characters and runs of them become one `_`; the unit becomes a suffix unless the
  name already ends with it (`s` -> `_seconds`, `By` -> `_bytes`, `foo/bar` -> `_foo_per_bar`,
  `{annotation}` -> nothing, `1` on a gauge -> `_ratio`); monotonic sums are counters ending in
  `_total`; histograms have cumulative `_bucket{le}`, `_count` and `_sum`;
- each series carries `job` (`service.namespace/service.name`, or `service.name`), `instance`
  (`service.instance.id`, "" without one), `otel_scope_name` and its data point's attributes —
  never the other resource attributes;
- each resource's attributes are on one `target_info` gauge of value 1, labelled `job`,
  `instance` and the attributes (without service.name, service.namespace and service.instance.id,
  which job and instance carry): join on it, e.g.
  `rate(x_total[5m]) * on (job, instance) group_left (host_name) target_info`;
- `promote_resource_attributes` copies the named resource attributes onto every series of the
  resource (`resource_to_telemetry_conversion = true`: all of them), as the Collector's option of
  that name; a data point attribute of the same label name wins over a promoted one;
- attribute keys that map to the same label name are joined with `;` in the order of the keys;
  a metric whose name maps to a family of another type is dropped (logged once).

The text (exposition format 0.0.4, what prometheus_client's `generate_latest` writes: labels
sorted, values in Go's float formatting) is built from the bridge's `MetricsBatch` at the first
scrape after each flush, without SDK objects, and served as is until the next flush.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import http.server
import json
import logging
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

log = logging.getLogger("uniobs.exporters.prometheus")


def _go(value: Any) -> str:
    """A sample value as prometheus_client writes it (Go's float formatting)."""
    return str(_float_to_go(value))  # type: ignore[no-untyped-call]


_INVALID = re.compile(r"[^a-zA-Z0-9_]+")
_UNDERSCORES = re.compile(r"__+")
_ANNOTATION = re.compile(r"\{[^}]*\}")
_UNITS = {
    "s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds",
    "min": "minutes", "h": "hours", "d": "days",
    "By": "bytes", "KiBy": "kibibytes", "MiBy": "mebibytes", "GiBy": "gibibytes", "KBy": "kilobytes",
    "MBy": "megabytes", "bit": "bits", "%": "percent", "Hz": "hertz",
}  # fmt: skip
# The labels a target carries: taken from the resource, never from a data point or a promotion.
TARGET_LABELS = ("job", "instance")
# Resource attributes job and instance are made of: not repeated on target_info.
IDENTIFYING = ("service.name", "service.namespace", "service.instance.id")
TARGET_INFO = "target_info"


def _sanitize(name: str) -> str:
    return _UNDERSCORES.sub("_", _INVALID.sub("_", name))


def unit_suffix(unit: str, is_gauge: bool) -> str:
    """The Prometheus unit word of a UCUM unit: "s" -> "seconds", "By/s" -> "bytes_per_second",
    "{packet}" -> "" (a count is unitless), "1" -> "ratio" on a gauge (a counter of unit 1 counts
    things, as the Collector's and Prometheus' own translators read it)."""
    if unit == "1":
        return "ratio" if is_gauge else ""
    unit = _ANNOTATION.sub("", unit).strip()
    if not unit:
        return ""
    per, _, under = unit.partition("/")
    words = _UNITS.get(per, per)
    if under:
        under = {"s": "second", "m": "minute", "h": "hour", "d": "day"}.get(under, under)
        words = f"{words}_per_{under}" if per else f"per_{under}"
    return _sanitize(words).strip("_")


def metric_name(name: str, unit: str, is_counter: bool, is_gauge: bool) -> str:
    """The family name of an OTLP metric, without the `_total` a counter's samples get."""
    base = _sanitize(name)
    suffix = unit_suffix(unit, is_gauge)
    if suffix and not base.endswith(suffix):
        base = f"{base}_{suffix}"
    return base


@functools.lru_cache(maxsize=4096)
def label_name(key: str) -> str:
    """An attribute key as a label name: invalid characters become `_` (runs of them one), and a
    name that starts with a digit or `_` gets `key_` in front (as the Collector's translator)."""
    name = _sanitize(key)
    if name[:1].isdigit():
        return f"key_{name}"
    return f"key{name}" if name.startswith("_") else name


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, list | tuple):  # arrays (container.image.tags): JSON, as the attribute spec says
        return json.dumps(list(v), separators=(",", ":"))
    return str(v)


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, str]) -> str:
    """`k="v",...` sorted by name, as prometheus_client writes them (without the braces)."""
    return ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))


def attribute_labels(attributes: Any) -> dict[str, str]:
    """Attributes ((key, value) pairs, or a mapping) as labels: keys that map to one label name
    are joined with `;` in the lexicographic order of the keys (the specification's rule)."""
    items = list(attributes.items() if hasattr(attributes, "items") else attributes)
    out: dict[str, str] = {}
    clash = False
    for key, value in items:
        name = label_name(key)
        clash = clash or name in out
        out[name] = _value(value)
    if clash:  # rare: rebuild from every key, in key order
        grouped: dict[str, list[str]] = {}
        for key, value in sorted(items, key=lambda kv: str(kv[0])):
            grouped.setdefault(label_name(key), []).append(_value(value))
        out = {name: ";".join(values) for name, values in grouped.items()}
    return out


@dataclass(frozen=True)
class Promotion:
    """Which resource attributes are copied onto series: the named ones, or all of them."""

    names: frozenset[str] = frozenset()
    everything: bool = False

    def pick(self, attributes: Any) -> dict[str, Any]:
        if self.everything:
            return dict(attributes)
        return {k: v for k, v in attributes.items() if k in self.names}


def target_of(attributes: Any) -> dict[str, str]:
    """`job` and `instance` of a resource: `service.namespace/service.name` (or `service.name`) and
    `service.instance.id` ("" without one)."""
    name = _value(attributes.get("service.name", ""))
    namespace = attributes.get("service.namespace")
    job = f"{_value(namespace)}/{name}" if namespace else name
    return {"job": job, "instance": _value(attributes.get("service.instance.id", ""))}


class _Resource:
    """What one resource contributes to the exposition, kept while the resource is exported."""

    __slots__ = ("base", "info", "resource", "series", "target")

    def __init__(self, resource: Any, promotion: Promotion) -> None:
        attributes = resource.attributes
        self.resource = resource
        self.target = target_of(attributes)
        info = attribute_labels({k: v for k, v in attributes.items() if k not in IDENTIFYING})
        # target_info: the attributes, job and instance, nothing else (an attribute named job loses)
        self.info = _labels({**info, **self.target}) if info else None
        self.base = attribute_labels(promotion.pick(attributes))  # promoted, under the point's own
        self.series: dict[tuple[str, Any], tuple[str, dict[str, str]]] = {}

    def labels(self, scope: str, attributes: Any) -> tuple[str, dict[str, str]]:
        """(label string, labels) of one series: promoted attributes, the data point's attributes
        (which win over a promoted one of the same name), then otel_scope_name, job and instance."""
        cached = self.series.get((scope, attributes))
        if cached is None:
            merged = {**self.base, **attribute_labels(attributes), "otel_scope_name": scope, **self.target}
            cached = self.series[(scope, attributes)] = (_labels(merged), merged)
        return cached


class _Family:
    __slots__ = ("help", "lines", "name", "type")

    def __init__(self, name: str, help: str, type: str) -> None:
        self.name, self.help, self.type = name, help, type
        self.lines: list[str] = []


class _Snapshot:
    """The last metrics the pipeline exported, and their exposition (text format 0.0.4), built at
    the first scrape after each export and served as is until the next one.

    The pipeline hands over a flush as one or more `MetricsBatch`es (whole resources each); the
    parts of one flush are served together. Each resource's labels (target_info, job/instance,
    promoted attributes) and each series' label string are kept between exports: they never
    change for a workload.
    """

    def __init__(self, promotion: Promotion = Promotion()) -> None:
        self._lock = threading.Lock()
        self._promotion = promotion
        self._flush: object = None
        self._pending: dict[int, Any] = {}
        self._parts: list[Any] = []
        self._text: bytes | None = None
        self._resources: dict[int, _Resource] = {}
        self._conflicts: set[tuple[str, str]] = set()  # (family, type) dropped and logged

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
        resources: dict[int, _Resource] = {}
        targets: dict[str, None] = {}  # target_info lines, one per resource (and so per job/instance)
        for part in parts:
            for resource, scope, spec, points in _metrics(part):
                key = id(resource)
                entry = resources.get(key) or self._resources.get(key)
                if entry is None or entry.resource is not resource:
                    entry = _Resource(resource, self._promotion)
                if key not in resources:
                    resources[key] = entry
                    if entry.info is not None:
                        targets[entry.info] = None
                name, kind, help = spec
                family = families.get(name)
                if family is None:
                    family = families[name] = _Family(name, help, kind)
                elif family.type != kind:
                    if (name, kind) not in self._conflicts:
                        self._conflicts.add((name, kind))
                        log.warning("prometheus: %s is a %s already; a %s of that name is dropped", name,
                                    family.type, kind)  # fmt: skip
                    continue
                lines = family.lines
                for attributes, value in points:
                    labels, merged = entry.labels(scope, attributes)
                    if kind == "counter":
                        lines.append(f"{name}_total{{{labels}}} {_go(value)}\n")
                    elif kind == "gauge":
                        lines.append(f"{name}{{{labels}}} {_go(value)}\n")
                    else:
                        bounds, counts, count, total = value
                        running = 0
                        for bound, n in [*zip(bounds, counts, strict=False), (None, 0)]:
                            running = count if bound is None else running + n
                            le = "+Inf" if bound is None else repr(float(bound))
                            lines.append(f"{name}_bucket{{{_labels({**merged, 'le': le})}}} {_go(running)}\n")
                        lines.append(f"{name}_count{{{labels}}} {_go(count)}\n")
                        lines.append(f"{name}_sum{{{labels}}} {_go(total)}\n")
        self._resources = resources  # only what is still exported stays cached
        out = []
        if targets:
            out.append(f"# HELP {TARGET_INFO} Target metadata\n# TYPE {TARGET_INFO} gauge\n")
            out.append("".join(f"{TARGET_INFO}{{{labels}}} 1.0\n" for labels in targets))
        for family in families.values():
            if family.name == TARGET_INFO:
                continue  # a metric named target.info would shadow the resources' metadata
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

    def __init__(self, host: str, port: int, promotion: Promotion = Promotion()) -> None:
        super().__init__()
        self.snapshot = _Snapshot(promotion)
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
    # Resource attributes copied onto every series as labels (e.g. ["host.name"]); the rest are on
    # target_info only.
    promote_resource_attributes: tuple[str, ...] = ()
    # Copy every resource attribute onto every series (the Collector's option of that name).
    resource_to_telemetry_conversion: bool = False

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port: {self.port} is not a TCP port")
        if not self.host:
            raise ValueError("host: must not be empty")
        for name in self.promote_resource_attributes:
            if not name or label_name(name) in (*TARGET_LABELS, "otel_scope_name"):
                raise ValueError(f"promote_resource_attributes: {name!r} cannot be a label of its own")


class PrometheusExporter(Exporter):
    name = "prometheus"
    config_class = PrometheusConfig
    config: PrometheusConfig

    @classmethod
    def config_from_arg(cls, arg: str, base: PluginConfig) -> PluginConfig:
        base = base if isinstance(base, PrometheusConfig) else PrometheusConfig()
        host, sep, port = arg.rpartition(":")
        if not sep:  # "prometheus:9464"
            host = base.host
        try:  # the address from the argument, the rest ([exporters.prometheus]) kept
            return dataclasses.replace(base, host=host.strip("[]"), port=int(port))
        except ValueError:
            raise ValueError(f"prometheus: expected HOST:PORT or PORT, got {arg!r}") from None

    def sinks(self) -> ExporterSinks:
        promotion = Promotion(frozenset(self.config.promote_resource_attributes),
                              self.config.resource_to_telemetry_conversion)  # fmt: skip
        self.sink = _PrometheusSink(self.config.host, self.config.port, promotion)
        return ExporterSinks(metrics=self.sink)

    def describe(self) -> str:
        port = getattr(self, "sink", None)
        return f"prometheus http://{self.config.host}:{port.port if port else self.config.port}/metrics"
