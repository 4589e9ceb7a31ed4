"""The OTLP log request built directly (`uniobs.telemetry.logs`) is the SDK's own encoding of the
same records: every field, for any events (hypothesis), several workloads, and what the SDK caps."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.sdk.resources import Resource

from uniobs.model import Kind, LogEvent, Severity, Workload
from uniobs.telemetry.bridge import Telemetry

_values = st.one_of(
    st.booleans(), st.integers(-(1 << 63), (1 << 63) - 1), st.floats(allow_nan=False), st.text(max_size=20)
)
_events = st.builds(
    LogEvent,
    time_ns=st.integers(0, 1 << 50),
    body=st.text(max_size=40),
    severity=st.sampled_from(list(Severity)),
    attributes=st.lists(st.tuples(st.sampled_from(["a", "b", "uniobs.console.line", "x.y"]), _values), max_size=5).map(
        tuple
    ),
    event_name=st.sampled_from(["", "uniobs.guest.log", "linux.boot"]),
    trace_id=st.sampled_from([0, 1, (1 << 128) - 1, 0x0AF7651916CD43DD8448EB211C80319C]),
    span_id=st.sampled_from([0, 1, (1 << 64) - 1]),
)


def _resources(telemetry: Telemetry) -> list[Resource]:
    workloads = [Workload(kind=Kind.UNIKERNEL, runtime="qemu", id=f"w{i}", name=f"fn{i}") for i in range(2)]
    return [telemetry._state(w).resource for w in workloads]


def _sdk(telemetry: Telemetry, pairs: list[tuple[Resource, LogEvent]]) -> object:
    return encode_logs([telemetry._log_record(resource, event) for resource, event in pairs])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), _events), max_size=12))
def test_the_direct_request_is_the_sdks_encoding(choices: list[tuple[int, LogEvent]]) -> None:
    telemetry = Telemetry()
    resources = _resources(telemetry)
    pairs = [(resources[i], event) for i, event in choices]
    assert telemetry._logs_request(pairs) == _sdk(telemetry, pairs)


def test_equal_resources_are_one_and_a_record_over_the_attribute_cap_is_the_sdks() -> None:
    telemetry = Telemetry()
    first, _ = _resources(telemetry)
    twin = Resource(dict(first.attributes), first.schema_url)  # a workload forgotten and seen again
    many = tuple((f"k{i}", i) for i in range(200))
    pairs = [(first, LogEvent(1, "a")), (twin, LogEvent(2, "b", attributes=many)), (first, LogEvent(3, "c"))]
    request = telemetry._logs_request(pairs)
    assert request == _sdk(telemetry, pairs)
    assert len(request.resource_logs) == 1 and len(request.resource_logs[0].scope_logs[0].log_records) == 3
