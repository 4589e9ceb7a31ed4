"""OTLP metrics written straight to protobuf wire format from the bridge's cumulative state.

The SDK path (build `MetricsData`, then `encode_metrics` into protobuf objects, then serialise)
costs ~25 µs per data point; the parts of a request that never change for a workload (its
Resource, each scope, each metric's name/description/unit, each series' attributes) are encoded
once here and kept, and each point is a single `struct.pack` of its timestamps and value. The
bytes are a standard `ExportMetricsServiceRequest` (opentelemetry-proto metrics/v1): the same
fields the SDK's encoder sets, proto3 defaults omitted; the resource, scope and attribute
encodings are the SDK's own (`_encode_resource`, `_encode_attributes`), serialised once.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.common._internal import (
    _encode_attributes,
    _encode_instrumentation_scope,
    _encode_resource,
)
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from uniobs.model import Attributes, Instrument, MetricSpec

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_MAX_CACHED = 100_000
# NumberDataPoint: start_time_unix_nano (2, fixed64), time_unix_nano (3, fixed64), then the
# value: as_double (4, double) or as_int (6, sfixed64). A oneof member is written even when 0.
_SUM_DOUBLE = struct.Struct("<BQBQBd")
_SUM_INT = struct.Struct("<BQBQBq")
_GAUGE_DOUBLE = struct.Struct("<BQBd")
_GAUGE_INT = struct.Struct("<BQBq")
_CUMULATIVE = b"\x10\x02"  # aggregation_temporality (2) = AGGREGATION_TEMPORALITY_CUMULATIVE
_MONOTONIC = b"\x18\x01"  # Sum.is_monotonic (3) = true


def varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field(tag: int, body: bytes) -> bytes:
    """A length-delimited field: its key byte (field number << 3 | 2), the length, the body."""
    n = len(body)
    if n < 0x80:
        return bytes((tag, n)) + body
    return bytes((tag,)) + varint(n) + body


class MetricsEncoder:
    """Caches of the encoded parts that never change, and the functions that build a request from
    them. Shared by the export threads: a race only encodes the same part twice."""

    def __init__(self) -> None:
        self._attributes: dict[Attributes, bytes] = {}
        self._headers: dict[tuple[Attributes, int], bytes] = {}
        self._gauge_headers: dict[Attributes, bytes] = {}  # `metrics`' own, by attributes alone
        self._sum_headers: dict[Attributes, bytes] = {}
        self._singles: dict[tuple[str, Attributes], bytes] = {}  # `_single`'s
        self._scopes: dict[str, bytes] = {}
        self._metrics: dict[str, tuple[bytes, int, bytes]] = {}

    def resource(self, resource: Resource) -> bytes:
        """ResourceMetrics.resource (1), encoded: the caller keeps it with the workload."""
        return field(0x0A, _encode_resource(resource).SerializeToString())

    def _header(self, attributes: Attributes, size: int) -> bytes:
        """Sum/Gauge.data_points (1) key and length, then NumberDataPoint.attributes (7)."""
        key = (attributes, size)
        header = self._headers.get(key)
        if header is None:
            if len(self._headers) >= _MAX_CACHED:
                self._headers.clear()  # attribute sets that churn (rare): start over rather than grow
            kvs = _encode_attributes(dict(attributes)) or []
            attrs = b"".join(field(0x3A, kv.SerializeToString()) for kv in kvs)
            header = self._headers[key] = b"\x0a" + varint(len(attrs) + size) + attrs
        return header

    def number_point(self, gauge: bool, attributes: Attributes, start: int, time: int, value: float | int) -> bytes:
        if isinstance(value, int) and _INT64_MIN <= value <= _INT64_MAX:
            if gauge:
                return self._header(attributes, 18) + _GAUGE_INT.pack(0x19, time, 0x31, value)
            return self._header(attributes, 27) + _SUM_INT.pack(0x11, start, 0x19, time, 0x31, value)
        value = float(value)  # OTLP's as_int is signed 64-bit: a kernel's 2^64-1 goes as a double
        if gauge:
            return self._header(attributes, 18) + _GAUGE_DOUBLE.pack(0x19, time, 0x21, value)
        return self._header(attributes, 27) + _SUM_DOUBLE.pack(0x11, start, 0x19, time, 0x21, value)

    def metrics(self, metrics: Mapping[str, tuple[MetricSpec, Sequence[Any]]]) -> bytes:
        """A scope's metrics (ScopeMetrics.metrics, 2) written from the live series, with the bridge's
        lock held: metric name -> (spec, its series), a number series having attributes, start_ns,
        time_ns, value and `wire` (set here), a histogram's what `histogram_point` reads. The same bytes as `metric` of
        `number_point`s, without a row or a call per point."""
        out = []
        known = self._metrics
        for name, (spec, table) in metrics.items():
            cached = known.get(name)
            if cached is None:
                self.metric_of(spec, b"")  # fills the cache
                cached = known[name]
            head, tag, tail = cached
            if len(table) == 1 and tag != 0x4A:
                # One series (the usual case): all but its point's timestamps and value is fixed,
                # referenced by the series itself (`wire`, one bytes object for every workload's
                # series of the same metric and attributes): the metric is one pack between two constants.
                s = table[0]
                gauge = tag == 0x2A
                prefix = s.wire
                if not prefix:
                    prefix = s.wire = self._single(name, head, tag, tail, s.attributes, gauge)
                value = s.value
                if isinstance(value, int) and _INT64_MIN <= value <= _INT64_MAX:
                    if gauge:
                        out.append(prefix + _GAUGE_INT.pack(0x19, s.time_ns, 0x31, value) + tail)
                    else:
                        out.append(prefix + _SUM_INT.pack(0x11, s.start_ns, 0x19, s.time_ns, 0x31, value) + tail)
                elif gauge:
                    out.append(prefix + _GAUGE_DOUBLE.pack(0x19, s.time_ns, 0x21, float(value)) + tail)
                else:
                    out.append(prefix + _SUM_DOUBLE.pack(0x11, s.start_ns, 0x19, s.time_ns, 0x21, float(value)) + tail)
                continue
            if tag == 0x4A:  # histogram
                data = b"".join([self.histogram_point(spec, h.attributes, h) for h in table]) + tail
            else:
                # NumberDataPoints: each a cached header (key, length, attributes) and one pack
                gauge = tag == 0x2A
                headers = self._gauge_headers if gauge else self._sum_headers
                points = []
                for s in table:
                    attributes = s.attributes
                    header = headers.get(attributes)
                    if header is None:
                        if len(headers) >= _MAX_CACHED:
                            headers.clear()  # attribute sets that churn (rare): start over rather than grow
                        header = headers[attributes] = self._header(attributes, 18 if gauge else 27)
                    value = s.value
                    if isinstance(value, int) and _INT64_MIN <= value <= _INT64_MAX:
                        if gauge:
                            points.append(header + _GAUGE_INT.pack(0x19, s.time_ns, 0x31, value))
                        else:
                            points.append(header + _SUM_INT.pack(0x11, s.start_ns, 0x19, s.time_ns, 0x31, value))
                    elif gauge:  # OTLP's as_int is signed 64-bit: a kernel's 2^64-1 goes as a double
                        points.append(header + _GAUGE_DOUBLE.pack(0x19, s.time_ns, 0x21, float(value)))
                    else:
                        points.append(header + _SUM_DOUBLE.pack(0x11, s.start_ns, 0x19, s.time_ns, 0x21, float(value)))
                data = b"".join(points) + tail
            n = len(data)
            body = head + (bytes((tag, n)) if n < 0x80 else bytes((tag,)) + varint(n)) + data
            n = len(body)
            out.append((bytes((0x12, n)) if n < 0x80 else b"\x12" + varint(n)) + body)
        return b"".join(out)

    def _single(self, name: str, head: bytes, tag: int, tail: bytes, attributes: Attributes, gauge: bool) -> bytes:
        """What precedes the point's fixed-size part in a Metric (2) holding one NumberDataPoint:
        the Metric's key and length, its name/description/unit, the Sum/Gauge key and length, and
        the point's header (`_header`). One object per metric and attributes, shared."""
        shared = self._singles.get((name, attributes))
        if shared is not None:
            return shared
        if len(self._singles) >= _MAX_CACHED:
            self._singles.clear()  # attribute sets that churn (rare): the series keep theirs
        size = 18 if gauge else 27
        header = self._header(attributes, size)
        data = len(header) + size + len(tail)
        inner = bytes((tag,)) + varint(data)
        prefix = b"\x12" + varint(len(head) + len(inner) + data) + head + inner + header
        self._singles[(name, attributes)] = prefix
        return prefix

    def histogram_point(self, spec: MetricSpec, attributes: Attributes, hist: Any) -> bytes:
        point = metrics_pb2.HistogramDataPoint(
            attributes=_encode_attributes(dict(attributes)),
            start_time_unix_nano=hist.start_ns,
            time_unix_nano=hist.time_ns,
            count=hist.count,
            sum=hist.total,
            bucket_counts=hist.counts,
            explicit_bounds=spec.buckets,
            min=hist.min,
            max=hist.max,
        )
        return field(0x0A, point.SerializeToString())

    def metric(self, spec: MetricSpec, points: Sequence[bytes]) -> bytes:
        """ScopeMetrics.metrics (2): one Metric with its data points."""
        return self.metric_of(spec, b"".join(points))

    def metric_of(self, spec: MetricSpec, points: bytes) -> bytes:
        """ScopeMetrics.metrics (2): one Metric with its data points, already joined."""
        cached = self._metrics.get(spec.name)
        if cached is None:
            head = field(0x0A, spec.name.encode())
            if spec.description:
                head += field(0x12, spec.description.encode())
            if spec.unit:
                head += field(0x1A, spec.unit.encode())
            if spec.instrument is Instrument.GAUGE:
                cached = (head, 0x2A, b"")  # Metric.gauge (5)
            elif spec.instrument is Instrument.HISTOGRAM:
                cached = (head, 0x4A, _CUMULATIVE)  # Metric.histogram (9)
            else:  # Metric.sum (7)
                cached = (head, 0x3A, _CUMULATIVE + (_MONOTONIC if spec.instrument is Instrument.COUNTER else b""))
            self._metrics[spec.name] = cached
        head, tag, tail = cached
        return field(0x12, head + field(tag, points + tail))

    def scope(self, scope: InstrumentationScope) -> bytes:
        """ScopeMetrics.scope (1), encoded."""
        encoded = self._scopes.get(scope.name)
        if encoded is None:
            pb = _encode_instrumentation_scope(scope)
            encoded = self._scopes[scope.name] = field(0x0A, pb.SerializeToString())
        return encoded


def resource_metrics(resource: bytes, scopes: Sequence[tuple[bytes, Sequence[bytes]]]) -> bytes:
    """ExportMetricsServiceRequest.resource_metrics (1): a resource and its ScopeMetrics (2)."""
    body = resource + b"".join(field(0x12, scope + b"".join(metrics)) for scope, metrics in scopes)
    return field(0x0A, body)
