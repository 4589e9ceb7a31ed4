"""Log records straight to the OTLP request, for the sinks that send OTLP (gRPC, HTTP).

The SDK path builds a `LogRecord` and a `ReadableLogRecord` per record (a context, bounded
attributes), hashes each record's `Resource` (a JSON dump of its attributes) to group them, then
encodes (`encode_logs`). This builds the same `ExportLogsServiceRequest` from uniobs' own data:
one `ResourceLogs` per resource, one `ScopeLogs` for uniobs' scope, each record's fields as the SDK
would set them (`tests/test_otlp_logs.py` compares the two). The bridge's `LogEvent`s become
`LogRecord` messages; a console chunk's lines (`uniobs.guest.lines.LineBatch`) are written as
protobuf bytes directly, one record after another, with no object per line (issue 14); the request
is then parsed once from those bytes, at C level. Sinks that need SDK records (the console and file
exporters, the SDK's in-memory exporter) still get them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable

from opentelemetry.exporter.otlp.proto.common._internal import _encode_instrumentation_scope, _encode_resource
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, SeverityNumber
from opentelemetry.sdk._logs import LogRecordLimits
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from uniobs.guest.lines import LINE_ATTRIBUTE, TRUNCATED_ATTRIBUTE, LineBatch
from uniobs.model import AttributeValue, LogEvent, Severity

# The SDK's default cap on a record's attributes: a record over it (never one of ours) is encoded
# by the SDK's own path, which decides what is dropped.
MAX_ATTRIBUTES = LogRecordLimits().max_attributes or 128
_SAMPLED = 1  # W3C trace flags: the records of a trace are sampled (the bridge's TraceFlags.SAMPLED)


def _value(value: AttributeValue) -> AnyValue:
    if isinstance(value, bool):  # before int: a bool is an int
        return AnyValue(bool_value=value)
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    return AnyValue(double_value=value)


def _event_record(event: LogEvent, to_epoch_ns: Callable[[int], int]) -> LogRecord:
    at = to_epoch_ns(event.time_ns)
    attributes = dict(event.attributes)  # as the SDK: the last value of a repeated key
    record = LogRecord(
        time_unix_nano=at,
        observed_time_unix_nano=at,
        severity_number=SeverityNumber.ValueType(int(event.severity)),
        severity_text=event.severity.name,
        body=AnyValue(string_value=event.body),
        attributes=[KeyValue(key=k, value=_value(v)) for k, v in attributes.items()],
        event_name=event.event_name,
    )
    if event.trace_id and event.span_id:  # the bridge sets a context only with both
        record.trace_id = event.trace_id.to_bytes(16, "big")
        record.span_id = event.span_id.to_bytes(8, "big")
        record.flags = _SAMPLED
    return record


def encode_log_events(
    pairs: Iterable[tuple[Resource, LogEvent | LineBatch]],
    to_epoch_ns: Callable[[int], int],
    scope: InstrumentationScope,
    fallback: Callable[[Resource, LogEvent], LogRecord],
) -> ExportLogsServiceRequest:
    """The OTLP request for (resource, event or console lines) pairs, in their order within each resource.

    `fallback` encodes one record the SDK's way (one with more than MAX_ATTRIBUTES attributes).
    """
    request = ExportLogsServiceRequest()
    request.ParseFromString(encode_log_bytes(pairs, to_epoch_ns, scope, fallback))  # C-level, once
    return request


def encode_log_bytes(
    pairs: Iterable[tuple[Resource, LogEvent | LineBatch]],
    to_epoch_ns: Callable[[int], int],
    scope: InstrumentationScope,
    fallback: Callable[[Resource, LogEvent], LogRecord],
) -> bytes:
    """`encode_log_events`, serialised: the bytes of the ExportLogsServiceRequest."""
    by_resource: dict[int, tuple[Resource, list[bytes]]] = {}  # by identity: a Resource's hash is a JSON dump
    for resource, item in pairs:
        if isinstance(item, LineBatch) and not item.texts:
            continue  # no record: the resource is not shown for it
        entry = by_resource.get(id(resource))
        if entry is None:
            # Equal resources of different objects (a workload forgotten, then seen again) are one, as in the SDK.
            entry = next((e for e in by_resource.values() if e[0] == resource), None) or (resource, [])
            by_resource[id(resource)] = entry
        if isinstance(item, LineBatch):
            entry[1].extend(line_records(item, to_epoch_ns))
            continue
        record = fallback(resource, item) if len(item.attributes) > MAX_ATTRIBUTES else _event_record(item, to_epoch_ns)
        entry[1].append(_field(0x12, record.SerializeToString()))  # ScopeLogs.log_records (2)
    merged = list({id(entry): entry for entry in by_resource.values()}.values())  # each resource once, in order
    return envelopes(merged, scope)


def envelopes(merged: Iterable[tuple[Resource, list[bytes]]], scope: InstrumentationScope) -> bytes:
    """The body of an OTLP logs or traces export request: for each resource (in order), one
    ResourceLogs/ResourceSpans holding one ScopeLogs/ScopeSpans of `scope` with its encoded items.
    Both pairs of messages number their fields alike (resource 1, scope_* 2, schema_url 3; scope 1,
    items 2, schema_url 3), so one writer serves both."""
    encoded_scope = _field(0x0A, _encode_instrumentation_scope(scope).SerializeToString())  # Scope*.scope (1)
    scope_schema = _field(0x1A, scope.schema_url.encode()) if scope.schema_url else b""  # Scope*.schema_url (3)
    out = []
    for resource, items in merged:
        scoped = b"".join((encoded_scope, *items, scope_schema))
        per_resource = b"".join(
            (
                _field(0x0A, _encode_resource(resource).SerializeToString()),  # Resource*.resource (1)
                _field(0x12, scoped),  # Resource*.scope_logs / scope_spans (2)
                _field(0x1A, resource.schema_url.encode()) if resource.schema_url else b"",  # schema_url (3)
            )
        )
        out.append(_field(0x0A, per_resource))  # Export*ServiceRequest.resource_logs / resource_spans (1)
    return b"".join(out)


# --- console lines as bytes ----------------------------------------------------------------------
#
# Protobuf wire format (https://protobuf.dev/programming-guides/encoding/): a field is its tag
# (number << 3 | wire type), then its value; a length-delimited value (a message, a string) is
# prefixed by its length as a varint. Field numbers: opentelemetry/proto/logs/v1/logs.proto and
# common/v1/common.proto (LogRecord: time_unix_nano 1, severity_number 2, severity_text 3, body 5,
# attributes 6, observed_time_unix_nano 11; AnyValue: string_value 1, bool_value 2, int_value 3).


def _varint_of(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_VARINTS = [_varint_of(i) for i in range(1 << 14)]  # lengths and line numbers below 16384: a lookup


def _varint(n: int) -> bytes:
    return _VARINTS[n] if n < 16384 else _varint_of(n)


def _field(tag: int, value: bytes) -> bytes:
    """A length-delimited field: its tag byte, its length, its bytes."""
    return bytes((tag,)) + _varint(len(value)) + value


_LINE_KEY = _field(0x0A, LINE_ATTRIBUTE.encode())  # KeyValue.key
# LogRecord.attributes: KeyValue{key: "uniobs.console.truncated", value: AnyValue{bool_value: true}}
_TRUNCATED_ATTR = _field(0x32, _field(0x0A, TRUNCATED_ATTRIBUTE.encode()) + b"\x12\x02\x10\x01")
# LogRecord.attributes for a line number whose varint is k bytes long: all the bytes before that varint.
_NUMBER_ATTR = [
    b"\x32" + _varint(len(_LINE_KEY) + 3 + k) + _LINE_KEY + b"\x12" + _varint(1 + k) + b"\x18" for k in range(11)
]
_INFO = b"\x10" + _varint(int(Severity.INFO)) + _field(0x1A, Severity.INFO.name.encode())  # severity number, text


def _times(at: int) -> tuple[bytes, bytes]:
    """time_unix_nano and observed_time_unix_nano (fixed64); absent when 0, as proto3 leaves defaults out."""
    if not at:
        return b"", b""
    stamp = struct.pack("<Q", at)
    return b"\x09" + stamp, b"\x59" + stamp


def line_records(lines: LineBatch, to_epoch_ns: Callable[[int], int]) -> list[bytes]:
    """The ScopeLogs.log_records fields (tag, length, LogRecord) of a batch of console lines: the
    records of `LineBatch.log_events`, as the SDK would encode them."""
    texts = lines.texts
    if not texts:
        return []
    try:
        bodies = "\n".join(texts).encode("utf-8").split(b"\n")  # one C-level pass for the whole batch
    except UnicodeEncodeError:
        bodies = []
    if len(bodies) != len(texts):  # a lone surrogate or a newline in a text: never from the capture
        bodies = [text.encode("utf-8", "replace") for text in texts]
    start, end = _times(to_epoch_ns(lines.time_ns))
    head = start + _INFO
    varints, number_attr, varint_of = _VARINTS, _NUMBER_ATTR, _varint_of
    times, cut = lines.times, lines.cut
    out: list[bytes] = []
    append = out.append
    number = lines.first
    for i, body in enumerate(bodies):
        size = len(body)
        value = b"\x0a" + (varints[size] if size < 16384 else varint_of(size)) + body  # AnyValue.string_value
        size = len(value)
        if number < 16384:
            nv = varints[number]
        elif number < 2097152:  # three bytes: up to 2 M lines, without the loop
            nv = bytes(((number & 0x7F) | 0x80, ((number >> 7) & 0x7F) | 0x80, number >> 14))
        else:
            nv = varint_of(number)
        attr = number_attr[len(nv)] + nv
        h, e = head, end
        if times is not None and i in times:
            s, e = _times(to_epoch_ns(times[i]))
            h = s + _INFO
        if cut is not None and i in cut:
            attr += _TRUNCATED_ATTR
        record = b"".join((h, b"\x2a", varints[size] if size < 16384 else varint_of(size), value, attr, e))
        size = len(record)
        append(b"\x12" + (varints[size] if size < 16384 else varint_of(size)) + record)
        number += 1
    return out
