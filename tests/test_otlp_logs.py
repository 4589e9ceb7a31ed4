"""The OTLP log request built directly (`uniobs.telemetry.logs`) is the SDK's own encoding of the
same records: every field, for any events (hypothesis), several workloads, and what the SDK caps."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
from opentelemetry.sdk.resources import Resource

from uniobs.guest.lines import LineBatch, LineSplitter
from uniobs.model import Kind, LogEvent, Severity, Workload
from uniobs.plugin import ExporterSinks
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


_texts = st.lists(st.text(alphabet=st.characters(exclude_characters="\n", exclude_categories=["Cs"])), max_size=8)


@settings(max_examples=200, deadline=None)
@given(
    _texts,
    st.integers(1, 1 << 40),
    st.integers(0, 1 << 50),
    st.sets(st.integers(0, 7)),
    st.dictionaries(st.integers(0, 7), st.integers(0, 1 << 50)),
    st.lists(_events, max_size=3),
)
def test_console_lines_written_as_bytes_are_the_sdks_encoding_of_their_records(
    texts: list[str], first: int, time_ns: int, cut: set[int], times: dict[int, int], events: list[LogEvent]
) -> None:
    """A console chunk's lines (a LineBatch, columnar) encode as the SDK encodes `log_events()` of them,
    mixed with ordinary events, whatever the texts (any Unicode), numbers (multi-byte varints), times and cuts."""
    telemetry = Telemetry()
    first_resource, second = _resources(telemetry)
    n = len(texts)
    batch = LineBatch(
        time_ns, texts, first, {i: t for i, t in times.items() if i < n} or None, {i for i in cut if i < n} or None
    )
    pairs: list[tuple[Resource, LogEvent | LineBatch]] = [(first_resource, batch)]
    pairs += [(second, event) for event in events]
    pairs.append((first_resource, batch.slice(0, n // 2)))
    expanded = [(resource, event) for resource, item in pairs for event in _as_events(item)]
    assert telemetry._logs_request(pairs) == _sdk(telemetry, expanded)


def _as_events(item: LogEvent | LineBatch) -> list[LogEvent]:
    return item.log_events() if isinstance(item, LineBatch) else [item]


def test_lines_held_as_a_batch_reach_an_sdk_sink_as_records() -> None:
    """The exporters that take SDK records (console, file) get one per line, with number, cut and arrival."""
    sink = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    telemetry = Telemetry([("memory", ExporterSinks(logs=sink))], export_batch_size=3)
    workload = Workload(kind=Kind.UNIKERNEL, runtime="qemu", id="w", name="fn")
    splitter = LineSplitter(max_line=64)
    telemetry.log_lines(workload, splitter.feed(b"one\ntwo\n" + b"x" * 100 + b"\nfour\nfi", 1_000))
    telemetry.log_lines(workload, splitter.feed(b"ve\n", 2_000))
    telemetry.flush(10)
    telemetry.shutdown(10)
    records = [item.log_record for item in sink.get_finished_logs()]
    assert [r.body for r in records] == ["one", "two", "x" * 64, "four", "five"]
    assert [dict(r.attributes or {}) for r in records] == [
        {"uniobs.console.line": 1},
        {"uniobs.console.line": 2},
        {"uniobs.console.line": 3, "uniobs.console.truncated": True},
        {"uniobs.console.line": 4},
        {"uniobs.console.line": 5},
    ]
    assert [r.timestamp for r in records] == [telemetry.to_epoch_ns(t) for t in (1_000,) * 4 + (1_000,)]


class _Requests:
    """A logs sink like the OTLP exporters': it takes the bridge's ExportLogsServiceRequest."""

    encoded_logs = True

    def __init__(self) -> None:
        self.requests: list[object] = []

    def export(self, batch: object, *args: object, **kwargs: object) -> object:
        self.requests.append(batch)
        return None

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, *args: object, **kwargs: object) -> None:
        return None


def test_a_logs_request_stays_under_a_receivers_4_mib_whatever_the_batch_size() -> None:
    """16 KiB console lines with export_batch_size raised to 100,000: each request is sealed by its
    charge (`LOGS_BATCH_COST`) before it reaches a receiver's default 4 MiB; no line lost or reordered."""
    sink = _Requests()
    sinks = ExporterSinks(logs=sink)  # type: ignore[arg-type]  # duck-typed, as the OTLP sinks
    telemetry = Telemetry([("otlp", sinks)], export_batch_size=100_000, buffer_bytes=256 << 20)
    workload = Workload(kind=Kind.UNIKERNEL, runtime="qemu", id="w", name="fn")
    splitter = LineSplitter(max_line=16 << 10)
    for chunk in range(20):
        telemetry.log_lines(
            workload, splitter.feed(b"".join(b"%05d" % (chunk * 50 + i) + b"y" * 16_000 + b"\n" for i in range(50)), 1)
        )
    telemetry.flush(10)
    telemetry.shutdown(10)
    sizes = [request.ByteSize() for request in sink.requests]  # type: ignore[attr-defined]
    assert len(sizes) >= 4 and max(sizes) < 4 << 20, sizes
    bodies = [
        record.body.string_value[:5]
        for request in sink.requests
        for rl in request.resource_logs  # type: ignore[attr-defined]
        for record in rl.scope_logs[0].log_records
    ]
    assert bodies == [f"{i:05d}" for i in range(1000)]
