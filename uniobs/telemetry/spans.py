"""Spans straight to the OTLP request, for the sinks that send OTLP (gRPC, HTTP).

The SDK path builds a `ReadableSpan` per span (contexts, a status, bounded attributes), hashes each
span's `Resource` (a JSON dump of its attributes) to group them, then builds one protobuf message
per span, attribute and value (`encode_spans`): about 60 us a span here, the largest part of an
invocation's telemetry (uniobs/invoke/record.py). This writes the same `ExportTraceServiceRequest`
from the bridge's `SpanEvent`s as protobuf bytes, parsed once at C level; `tests/test_proxy.py`
checks it equals the SDK's encoding of the same spans. Sinks that need SDK spans (console, file,
the SDK's in-memory exporter) still get `ReadableSpan`s.

Wire format: https://protobuf.dev/programming-guides/encoding/; field numbers:
opentelemetry/proto/trace/v1/trace.proto (Span: trace_id 1, span_id 2, parent_span_id 4, name 5,
kind 6, start_time_unix_nano 7, end_time_unix_nano 8, attributes 9, events 11, status 15, flags 16;
Span.Event: time_unix_nano 1, name 2, attributes 3; Status: message 2, code 3) and
common/v1/common.proto (KeyValue: key 1, value 2; AnyValue: string_value 1, bool_value 2,
int_value 3, double_value 4).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from uniobs.model import SpanEvent
from uniobs.telemetry.logs import _field, _varint, envelopes

# The SDK's default cap on a span's attributes (SpanLimits): a span over it, or with a value that
# is not a str, bool, int or float, is encoded by the SDK's own path (`fallback`).
MAX_ATTRIBUTES = 128
_KINDS = {"internal": 1, "server": 2, "client": 3, "producer": 4, "consumer": 5}  # Span.SpanKind
# Span.flags (fixed32): SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK; the bridge's parents are never remote.
_FLAGS = b"\x85\x01" + struct.pack("<I", 0x100)
_OK = b"\x7a\x02\x18\x01"  # Span.status: Status{code: STATUS_CODE_OK}
_pack_q = struct.Struct("<Q").pack
_pack_d = struct.Struct("<d").pack


def _any(value: object) -> bytes | None:
    """An AnyValue's bytes (a oneof: written even when it is the default); None: not ours to encode."""
    if isinstance(value, bool):  # before int: a bool is an int
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _field(0x0A, value.encode("utf-8", "surrogatepass"))
    if isinstance(value, int):
        if not -(1 << 63) <= value < (1 << 63):
            return None
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)
    if isinstance(value, float):
        return b"\x21" + _pack_d(value)
    return None


# Encoded KeyValue fields by (tag, key, type, value): an invocation's attributes but its id repeat
# from span to span (method, route, status, peer, port), so most are a lookup. Bounded: cleared when full.
_ENCODED: dict[tuple[int, str, type[object], object], bytes] = {}
_ENCODED_MAX = 8192


def _attributes(tag: int, attributes: Iterable[tuple[str, object]]) -> bytes | None:
    out = []
    cache = _ENCODED
    for key, value in dict(attributes).items():  # as the SDK: the last value of a repeated key
        kind = type(value)
        if kind is float:  # not cached: -0.0 == 0.0, nan != nan
            encoded = _any(value)
            if encoded is None:
                return None
            out.append(_field(tag, _field(0x0A, key.encode()) + _field(0x12, encoded)))
            continue
        if kind is not str and kind is not int and kind is not bool:
            return None
        ck = (tag, key, kind, value)
        kv = cache.get(ck)
        if kv is None:
            encoded = _any(value)
            if encoded is None:
                return None
            kv = _field(tag, _field(0x0A, key.encode()) + _field(0x12, encoded))
            if len(cache) >= _ENCODED_MAX:
                cache.clear()
            cache[ck] = kv
        out.append(kv)
    return b"".join(out)


def span_bytes(event: SpanEvent, offset_ns: int) -> bytes | None:
    """One Span message's bytes (times: monotonic + `offset_ns` = epoch); None: not ours to encode."""
    if len(event.attributes) > MAX_ATTRIBUTES:
        return None
    attributes = _attributes(0x4A, event.attributes)
    if attributes is None:
        return None
    parts = [
        b"\x0a\x10" + event.trace_id.to_bytes(16, "big"),
        b"\x12\x08" + event.span_id.to_bytes(8, "big"),
    ]
    if event.parent_span_id:
        parts.append(b"\x22\x08" + event.parent_span_id.to_bytes(8, "big"))
    parts += [
        _field(0x2A, event.name.encode()),
        b"\x30" + _varint(_KINDS.get(event.kind, 1)),
        b"\x39" + _pack_q(event.start_ns + offset_ns),
        b"\x41" + _pack_q(event.end_ns + offset_ns),
        attributes,
    ]
    for name, at, attrs in event.events:
        if len(attrs) > MAX_ATTRIBUTES:
            return None
        encoded = _attributes(0x1A, attrs)
        if encoded is None:
            return None
        parts.append(_field(0x5A, b"\x09" + _pack_q(at + offset_ns) + _field(0x12, name.encode()) + encoded))
    if event.error is None:
        # a SERVER span's status stays unset unless it failed (HTTP conventions): an empty Status, as the SDK writes
        parts.append(_OK if event.kind != "server" else b"\x7a\x00")
    else:
        message = _field(0x12, event.error.encode()) if event.error else b""
        parts.append(_field(0x7A, message + b"\x18\x02"))  # STATUS_CODE_ERROR
    parts.append(_FLAGS)
    return b"".join(parts)


def encode_span_events(
    pairs: Iterable[tuple[Resource, SpanEvent]],
    offset_ns: int,
    scope: InstrumentationScope,
    fallback: Callable[[Resource, SpanEvent], bytes],
) -> ExportTraceServiceRequest:
    """The OTLP request for (resource, span) pairs, in their order within each resource, as the
    SDK's `encode_spans` of the same spans would be. `offset_ns` maps the spans' monotonic times to
    epoch time; `fallback` gives the Span bytes of one span the SDK's way (see MAX_ATTRIBUTES)."""
    by_resource: dict[int, tuple[Resource, list[bytes]]] = {}  # by identity: a Resource's hash is a JSON dump
    for resource, event in pairs:
        entry = by_resource.get(id(resource))
        if entry is None:
            # Equal resources of different objects are one, as in the SDK.
            entry = next((e for e in by_resource.values() if e[0] == resource), None) or (resource, [])
            by_resource[id(resource)] = entry
        span = span_bytes(event, offset_ns)
        entry[1].append(_field(0x12, span if span is not None else fallback(resource, event)))  # ScopeSpans.spans
    merged = list({id(entry): entry for entry in by_resource.values()}.values())
    request = ExportTraceServiceRequest()
    request.ParseFromString(envelopes(merged, scope))  # C-level, once
    return request
