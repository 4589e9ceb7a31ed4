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
from collections.abc import Sequence
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
    return bytes((tag,)) + varint(len(body)) + body


class MetricsEncoder:
    """Caches of the encoded parts that never change, and the functions that build a request from
    them. Shared by the export threads: a race only encodes the same part twice."""

    def __init__(self) -> None:
        self._attributes: dict[Attributes, bytes] = {}
        self._headers: dict[tuple[Attributes, int], bytes] = {}
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
        data = b"".join(points) + tail
        return field(0x12, head + field(tag, data))

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
