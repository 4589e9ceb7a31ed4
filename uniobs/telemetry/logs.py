"""Log records straight to the OTLP request, for the sinks that send OTLP (gRPC, HTTP).

The SDK path builds a `LogRecord` and a `ReadableLogRecord` per record (a context, bounded
attributes), hashes each record's `Resource` (a JSON dump of its attributes) to group them, then
encodes (`encode_logs`). This builds the same `ExportLogsServiceRequest` from uniobs' own
`LogEvent`s: one `ResourceLogs` per resource, one `ScopeLogs` for uniobs' scope, each record's
fields as the SDK would set them (`tests/test_export_otlp.py` compares the two). Sinks that need
SDK records (the console and file exporters, the SDK's in-memory exporter) still get them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry.exporter.otlp.proto.common._internal import _encode_instrumentation_scope, _encode_resource
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs, SeverityNumber
from opentelemetry.sdk._logs import LogRecordLimits
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from uniobs.model import AttributeValue, LogEvent

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


def encode_log_events(
    pairs: Iterable[tuple[Resource, LogEvent]],
    to_epoch_ns: Callable[[int], int],
    scope: InstrumentationScope,
    fallback: Callable[[Resource, LogEvent], LogRecord],
) -> ExportLogsServiceRequest:
    """The OTLP request for (resource, event) pairs, in their order within each resource.

    `fallback` encodes one record the SDK's way (one with more than MAX_ATTRIBUTES attributes).
    """
    by_resource: dict[int, tuple[Resource, list[LogRecord]]] = {}  # by identity: a Resource's hash is a JSON dump
    for resource, event in pairs:
        entry = by_resource.get(id(resource))
        if entry is None:
            # Equal resources of different objects (a workload forgotten, then seen again) are one, as in the SDK.
            entry = next((e for e in by_resource.values() if e[0] == resource), None) or (resource, [])
            by_resource[id(resource)] = entry
        if len(event.attributes) > MAX_ATTRIBUTES:
            entry[1].append(fallback(resource, event))
            continue
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
        entry[1].append(record)
    merged = list({id(entry): entry for entry in by_resource.values()}.values())  # each resource once, in order
    encoded_scope = _encode_instrumentation_scope(scope)
    return ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(
                resource=_encode_resource(resource),
                scope_logs=[ScopeLogs(scope=encoded_scope, log_records=records, schema_url=scope.schema_url or "")],
                schema_url=resource.schema_url,
            )
            for resource, records in merged
        ]
    )
