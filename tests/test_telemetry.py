"""The telemetry bridge, asserted through the SDK's in-memory exporters and our own metrics sink
(tests/support/sinks.py)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from support import MemoryMetrics, MemorySinks

from uniobs.model import (
    DURATION_BUCKETS,
    Instrument,
    Kind,
    LogEvent,
    MetricSpec,
    Sample,
    Severity,
    SpanEvent,
    Workload,
)
from uniobs.plugin import ExportError, ExporterSinks
from uniobs.telemetry.bridge import Telemetry, UndeclaredTelemetry, log_cost


class Failing(MetricExporter):
    """A backend that is down."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kw: Any) -> MetricExportResult:
        self.calls += 1
        raise ConnectionRefusedError("backend down")

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kw: Any) -> None:
        return None


COUNTER = MetricSpec("test.work", Instrument.COUNTER, "s", "Work done.", ("cpu.mode",))
GAUGE = MetricSpec("test.level", Instrument.GAUGE, "By", "A level.")
HIST = MetricSpec("test.latency", Instrument.HISTOGRAM, "s", "Latency.", (), DURATION_BUCKETS)

VM = Workload(kind=Kind.UNIKERNEL, runtime="qemu", id="qemu-1", name="hello", pid=4242, executable="qemu-system-x86_64")
CT = Workload(kind=Kind.CONTAINER, runtime="runc", id="abc123", name="hello-ct", cgroup="/hello")


def make(**kw: Any) -> tuple[Telemetry, MemoryMetrics, InMemoryLogRecordExporter, InMemorySpanExporter]:
    mem = MemorySinks()
    t = Telemetry([("mem", mem.sinks)], **kw)
    t.declare([COUNTER, GAUGE, HIST], scope="uniobs.collectors.test")
    return t, mem.metrics, mem.logs, mem.spans


def points(data: MetricsData, name: str) -> list[tuple[dict[str, Any], Any]]:
    out = []
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name == name:
                    out += [(dict(rm.resource.attributes), p) for p in m.data.data_points]
    return out


def test_each_workload_gets_its_own_resource() -> None:
    t, metrics, _, _ = make()
    t.record(VM, [Sample("test.level", 1)])
    t.record(CT, [Sample("test.level", 2)])
    assert t.flush(5)
    got = {res["service.name"]: (res, p.value) for res, p in points(metrics.batches[-1], "test.level")}
    vm_res, vm_value = got["hello"]
    ct_res, ct_value = got["hello-ct"]
    assert (vm_value, ct_value) == (1, 2)
    assert vm_res["faas.instance"] == "qemu-1" and vm_res["process.pid"] == 4242
    assert vm_res["process.executable.name"] == "qemu-system-x86_64"
    assert "container.id" not in vm_res
    assert ct_res["container.id"] == "abc123" and ct_res["container.runtime.name"] == "runc"
    assert ct_res["container.name"] == "hello-ct" and ct_res["faas.name"] == "hello-ct"
    # the host's identity is shared
    assert vm_res["host.name"] == ct_res["host.name"] and vm_res["host.name"]
    t.shutdown(2)


def test_no_thread_per_workload() -> None:
    before = set(threading.enumerate())
    t, _, _, _ = make()
    workloads = [Workload(kind=Kind.CGROUP, runtime="cgroup", id=f"/w{i}", cgroup=f"/w{i}") for i in range(200)]
    for w in workloads:
        t.record(w, [Sample("test.level", 1)])
    assert t.flush(5)
    new = sorted(th.name for th in threading.enumerate() if th not in before)
    # one export thread per exporter and signal, whatever the number of workloads
    assert new == ["uniobs-export-mem-logs", "uniobs-export-mem-metrics", "uniobs-export-mem-traces"]
    t.shutdown(2)


def test_counter_stays_cumulative_and_a_reset_gets_a_new_start_time() -> None:
    t, metrics, _, _ = make()
    mode = (("cpu.mode", "user"),)
    t.record(VM, [Sample("test.work", 10.0, mode)], now_ns=1_000)
    t.record(VM, [Sample("test.work", 15.0, mode)], now_ns=2_000)
    t.flush(5)
    [(_, p1)] = points(metrics.batches[-1], "test.work")
    assert (p1.start_time_unix_nano, p1.time_unix_nano, p1.value) == (1_000, 2_000, 15.0)
    t.record(VM, [Sample("test.work", 3.0, mode)], now_ns=3_000)  # the workload restarted
    t.flush(5)
    [(_, p2)] = points(metrics.batches[-1], "test.work")
    assert p2.value == 3.0
    assert p2.start_time_unix_nano == 2_001  # just after the last point before the reset
    assert p2.start_time_unix_nano > p1.start_time_unix_nano
    t.shutdown(2)


def test_histogram_buckets() -> None:
    t, metrics, _, _ = make()
    for v in (0.001, 0.2, 0.2, 30.0):
        t.record(VM, [Sample("test.latency", v)])
    t.flush(5)
    [(_, p)] = points(metrics.batches[-1], "test.latency")
    assert p.count == 4 and p.sum == pytest.approx(30.401)
    assert sum(p.bucket_counts) == 4 and len(p.bucket_counts) == len(DURATION_BUCKETS) + 1
    assert p.bucket_counts[0] == 1 and p.bucket_counts[-1] == 1
    assert p.bucket_counts[DURATION_BUCKETS.index(0.25)] == 2
    assert (p.min, p.max) == (0.001, 30.0)
    t.shutdown(2)


def test_undeclared_metric_or_attribute_fails_in_strict_mode_and_is_counted_otherwise() -> None:
    strict, _, _, _ = make(strict=True)
    with pytest.raises(UndeclaredTelemetry):
        strict.record(VM, [Sample("test.nope", 1)])
    with pytest.raises(UndeclaredTelemetry):
        strict.record(VM, [Sample("test.level", 1, (("guest.name", "x"),))])
    strict.shutdown(1)
    lax, metrics, _, _ = make()
    lax.record(VM, [Sample("test.nope", 1), Sample("test.level", 7)])
    lax.flush(5)
    rejected = {
        p.attributes["uniobs.reason"]: p.value for _, p in points(metrics.batches[-1], "uniobs.telemetry.rejected")
    }
    assert rejected == {"undeclared_metric": 1}
    assert [p.value for _, p in points(metrics.batches[-1], "test.level")] == [7]
    lax.shutdown(2)


def test_logs_and_spans_carry_the_workload_resource_and_trace_context() -> None:
    t, _, logs, spans = make()
    t.log(
        VM,
        LogEvent(time_ns=5, body="booted", severity=Severity.WARN, attributes=(("line", 1),), trace_id=7, span_id=9),
    )
    t.span(VM, SpanEvent("coldstart", trace_id=7, span_id=9, parent_span_id=0, start_ns=10, end_ns=20))
    t.span(VM, SpanEvent("boot", 7, 10, 9, 11, 19, error="guest panicked"))
    assert t.flush(5)
    [record] = logs.get_finished_logs()
    assert record.log_record.body == "booted"
    assert record.log_record.severity_text == "WARN"
    assert record.log_record.trace_id == 7 and record.log_record.span_id == 9
    assert record.resource.attributes["service.name"] == "hello"
    finished = {s.name: s for s in spans.get_finished_spans()}
    root, child = finished["coldstart"], finished["boot"]
    assert child.parent is not None and child.parent.span_id == root.context.span_id
    assert child.status.description == "guest panicked"
    assert root.end_time - root.start_time == 10  # monotonic durations survive the conversion
    t.shutdown(2)


def test_log_buffer_is_bounded_by_bytes_and_drops_the_oldest_counted() -> None:
    release = threading.Event()

    class SlowLogs(InMemoryLogRecordExporter):
        def export(self, batch: Any) -> Any:
            release.wait(10)
            return super().export(batch)

    metrics, logs = MemoryMetrics(), SlowLogs()
    t = Telemetry([("mem", ExporterSinks(metrics, logs, None))], buffer_bytes=1 << 20, export_batch_size=100)
    body = "x" * 1000  # ~1.3 kB a record with its overhead: ~800 fit in 1 MiB
    produced = 5000
    for i in range(produced):
        t.log(VM, LogEvent(time_ns=i, body=f"{i:05d} {body}"))
    assert t.buffer.used <= t.buffer.budget  # bounded, whatever arrives
    release.set()
    t.flush(10)
    stats = t.stats()["mem"]
    bodies = [r.log_record.body[:5] for r in logs.get_finished_logs()]
    assert stats.sent["logs"] == len(bodies) and stats.dropped["logs"] > 0
    assert stats.sent["logs"] + stats.dropped["logs"] + stats.failed["logs"] == produced  # exact
    assert bodies[-1] == f"{produced - 1:05d}"  # the newest survives: the oldest went first
    assert bodies == sorted(bodies)
    t.shutdown(2)


def test_a_batch_shared_by_two_exporters_is_held_once() -> None:
    first, second = InMemoryLogRecordExporter(), InMemoryLogRecordExporter()
    t = Telemetry([("a", ExporterSinks(logs=first)), ("b", ExporterSinks(logs=second))], export_batch_size=10)
    hold = threading.Event()
    t.workers[0].queues["logs"].sink = type("Blocked", (), {"export": lambda self, b: hold.wait(10) and 0})()
    for i in range(100):
        t.log(VM, LogEvent(time_ns=i, body="line"))
    t.flush(0.5)
    # b delivered everything; a holds the same batches, counted once in the budget
    assert len(second.get_finished_logs()) == 100
    assert t.buffer.used == 100 * log_cost(LogEvent(time_ns=0, body="line"))  # not twice that
    hold.set()
    t.shutdown(2)


def test_a_failing_exporter_does_not_stop_the_others_and_its_loss_is_counted() -> None:
    good = MemoryMetrics()
    bad = Failing()
    t = Telemetry([("bad", ExporterSinks(metrics=bad)), ("good", ExporterSinks(metrics=good))], retry_initial=0)
    t.declare([GAUGE], scope="test")
    t.record(VM, [Sample("test.level", 3)])
    t.flush(5)
    t.flush(5)
    assert bad.calls == 2 and len(good.batches) == 2
    stats = t.stats()
    assert stats["bad"].failed["metrics"] > 0 and stats["bad"].sent["metrics"] == 0
    assert "backend down" in stats["bad"].last_error and not stats["bad"].healthy
    assert stats["good"].failed["metrics"] == 0 and stats["good"].healthy
    # the loss is reported in the telemetry that still flows
    outcome = {
        (p.attributes["uniobs.exporter"], p.attributes["uniobs.outcome"]): p.value
        for _, p in points(good.batches[-1], "uniobs.exporter.items")
        if p.attributes["uniobs.signal"] == "metrics"
    }
    # the second batch reports what the first flush lost (it was counted before the second export)
    assert 0 < outcome[("bad", "failed")] < stats["bad"].failed["metrics"]
    assert outcome[("bad", "sent")] == 0
    t.shutdown(2)


def test_the_buffer_drops_the_oldest_metrics_and_the_newest_survive() -> None:
    release = threading.Event()

    class Slow(MemoryMetrics):
        def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kw: Any) -> MetricExportResult:
            release.wait(10)
            return super().export(metrics_data)

    slow = Slow()
    t = Telemetry([("slow", ExporterSinks(metrics=slow))], buffer_bytes=1 << 20)
    t.declare([GAUGE], scope="test")
    # ~2,600 points a flush (1,000 workloads), ~1 MB each at the estimated cost: two fit, barely
    workloads = [Workload(kind=Kind.CGROUP, runtime="cgroup", id=f"/w{i}", cgroup=f"/w{i}") for i in range(1000)]
    for i in range(6):
        for w in workloads:
            t.record(w, [Sample("test.level", i)])
        t.flush(0.01)
        assert t.buffer.used <= t.buffer.budget
    release.set()
    t.flush(10)
    stats = t.stats()["slow"]
    assert stats.dropped["metrics"] > 0
    delivered = [p.value for b in slow.batches for _, p in points(b, "test.level")]
    assert delivered[-1] == 5  # the newest data survives
    t.shutdown(2)


def test_a_retryable_failure_is_retried_with_back_off_and_nothing_is_lost() -> None:
    class Flaky(MemoryMetrics):
        def __init__(self) -> None:
            super().__init__()
            self.attempts = 0

        def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kw: Any) -> MetricExportResult:
            self.attempts += 1
            if self.attempts <= 2:
                raise ExportError("HTTP 503 Service Unavailable", retryable=True)
            return super().export(metrics_data)

    flaky = Flaky()
    t = Telemetry([("flaky", ExporterSinks(metrics=flaky))], retry_initial=0.05, retry_max=0.1)
    t.declare([GAUGE], scope="test")
    t.record(VM, [Sample("test.level", 1)])
    assert t.flush(5)
    stats = t.stats()["flaky"]
    assert flaky.attempts == 3 and len(flaky.batches) == 1  # the same batch, delivered on the third try
    assert stats.dropped["metrics"] == 0 and stats.failed["metrics"] == 0 and stats.retries["metrics"] == 2
    assert stats.healthy
    t.shutdown(2)


def test_a_non_retryable_failure_gives_the_batch_up_at_once() -> None:
    class Refusing(MemoryMetrics):
        def __init__(self) -> None:
            super().__init__()
            self.attempts = 0

        def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kw: Any) -> MetricExportResult:
            self.attempts += 1
            raise ExportError("HTTP 405 Method Not Allowed", retryable=False)

    refusing = Refusing()
    t = Telemetry([("picky", ExporterSinks(metrics=refusing))], retry_initial=0.05)
    t.declare([GAUGE], scope="test")
    t.record(VM, [Sample("test.level", 1)])
    assert t.flush(5)  # nothing waits: the batch is settled
    stats = t.stats()["picky"]
    assert refusing.attempts == 1 and stats.retries["metrics"] == 0
    assert stats.failed["metrics"] > 0 and stats.sent["metrics"] == 0
    assert stats.errors["metrics"] == "HTTP 405 Method Not Allowed"
    t.shutdown(2)


def test_a_partial_success_counts_only_the_rejected_items_as_failed() -> None:
    class Partial(InMemoryLogRecordExporter):
        def export(self, batch: Any) -> Any:
            raise ExportError("2 records too old", retryable=False, rejected=2)

    t = Telemetry([("p", ExporterSinks(logs=Partial()))])
    for i in range(10):
        t.log(VM, LogEvent(time_ns=i, body="line"))
    t.flush(5)
    stats = t.stats()["p"]
    assert (stats.sent["logs"], stats.failed["logs"]) == (8, 2)
    t.shutdown(2)


def test_one_signal_in_back_off_never_delays_another() -> None:
    class Down(MemoryMetrics):
        def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kw: Any) -> MetricExportResult:
            raise ExportError("HTTP 503", retryable=True, retry_after=60)

    spans = InMemorySpanExporter()
    t = Telemetry([("x", ExporterSinks(metrics=Down(), spans=spans))], retry_initial=30)
    t.declare([GAUGE], scope="test")
    t.record(VM, [Sample("test.level", 1)])
    t.span(VM, SpanEvent("coldstart", trace_id=7, span_id=9, parent_span_id=0, start_ns=10, end_ns=20))
    t.flush(2)
    assert [s.name for s in spans.get_finished_spans()] == ["coldstart"]  # not stuck behind metrics
    assert t.stats()["x"].retries["metrics"] >= 1
    t.shutdown(0.2)
    stats = t.stats()["x"]
    assert stats.dropped["metrics"] + stats.failed["metrics"] > 0 and stats.sent["traces"] == 1


def test_log_intake_from_many_threads_while_flushing_loses_nothing_uncounted() -> None:
    """The I/O thread, the scrape loop and the export threads share the buffer: a flood of log
    batches while another thread flushes must neither crash nor lose an item uncounted."""
    a, b = InMemoryLogRecordExporter(), InMemoryLogRecordExporter()
    t = Telemetry([("a", ExporterSinks(logs=a)), ("b", ExporterSinks(logs=b))], buffer_bytes=1 << 20,
                  export_batch_size=64)  # fmt: skip
    produced = 0
    stop = threading.Event()
    errors: list[BaseException] = []

    def produce(n: int) -> None:
        try:
            for i in range(n):
                t.log_batch(VM, [LogEvent(time_ns=i, body=f"line {i} " + "y" * 200) for _ in range(7)])
        except BaseException as exc:  # pragma: no cover - the failure this test is for
            errors.append(exc)

    def flush() -> None:
        while not stop.is_set():
            try:
                t.flush(0)
            except BaseException as exc:  # pragma: no cover
                errors.append(exc)

    flusher = threading.Thread(target=flush)
    flusher.start()
    producers = [threading.Thread(target=produce, args=(3000,)) for _ in range(3)]
    for th in producers:
        th.start()
    for th in producers:
        th.join()
    produced = 3 * 3000 * 7
    stop.set()
    flusher.join()
    t.shutdown(10)
    assert errors == []
    for name, sink in (("a", a), ("b", b)):
        stats = t.stats()[name]
        assert stats.sent["logs"] == len(sink.get_finished_logs())
        assert stats.sent["logs"] + stats.dropped["logs"] + stats.failed["logs"] == produced


def test_a_counter_past_int64_is_exported_as_a_double_not_a_failed_batch() -> None:
    from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics

    t, metrics, _, _ = make()
    t.record(VM, [Sample("test.level", (1 << 64) - 1)])
    assert t.flush(5)
    [(_, point)] = points(metrics.batches[-1], "test.level")
    assert point.value == float((1 << 64) - 1)
    encode_metrics(metrics.batches[-1])  # the OTLP encoding takes it
    t.shutdown(2)


def test_the_direct_otlp_encoding_is_the_sdk_encoding_of_the_same_points() -> None:
    """What OTLP exporters send (MetricsBatch.otlp_bytes, written straight from the series) is the
    message the SDK's encode_metrics makes from the same batch's MetricsData: every instrument,
    int and double values, an int past int64, a reset's new start time, several resources."""
    from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    updown = MetricSpec("test.queue", Instrument.UPDOWN_COUNTER, "{item}", "Queued.", ("q",))
    t, _, _, _ = make()
    t.declare([updown], scope="uniobs.collectors.other")
    for value in (5, 3):  # 3 < 5: a reset
        t.record(
            VM,
            [Sample("test.work", value, (("cpu.mode", "user"),)), Sample("test.work", 0.25, (("cpu.mode", "system"),))],
        )
    t.record(VM, [Sample("test.level", (1 << 64) - 1), Sample("test.latency", 0.02), Sample("test.latency", 7.0)])
    t.record(CT, [Sample("test.level", 0), Sample("test.queue", -4, (("q", "in"),)), Sample("test.level", 2.5)])
    [batch] = [b.payload for b in t._metric_batches()]
    direct = ExportMetricsServiceRequest.FromString(batch.otlp_bytes())
    assert direct == encode_metrics(batch.metrics_data())
    assert batch.request() == direct and len(direct.resource_metrics) == 3  # VM, CT, uniobs itself
    t.shutdown(2)


def _is_self(rm: Any) -> bool:
    """uniobs' own resource (service.name "uniobs"), whose exporter counts differ between two bridges."""
    return any(kv.key == "service.name" and kv.value.string_value == "uniobs" for kv in rm.resource.attributes)


class WireMetrics:
    """A metrics sink like the OTLP exporters': it reads only the batch's OTLP bytes, so the bridge
    writes them at the snapshot, straight from the live series."""

    encoded_metrics = True
    otlp_metrics_only = True

    def __init__(self) -> None:
        self.batches: list[Any] = []

    def export(self, batch: Any, *args: Any, **kwargs: Any) -> MetricExportResult:
        self.batches.append(batch)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, *args: Any, **kwargs: Any) -> None:
        return None


def test_otlp_written_at_the_snapshot_is_the_sdk_encoding_of_the_same_points() -> None:
    """Every metrics sink only sends OTLP: the request is written under the lock from the live series
    (one metric's constant part kept on its series). Byte for byte the rows path's request, and the
    SDK's encode_metrics of the rows' MetricsData, over several flushes: single and several series per
    metric, int and double (switching), an int past int64, a reset, histograms, a metric whose encoding is
    over 127 bytes (two-byte lengths), a series added between flushes."""
    from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    long = MetricSpec("test.long", Instrument.UPDOWN_COUNTER, "{x}", "A long description. " * 8, ("k", "j"))
    wire_sink, rows = WireMetrics(), MemoryMetrics()
    wired = Telemetry([("otlp", ExporterSinks(metrics=wire_sink))])  # type: ignore[arg-type]  # duck-typed, as the OTLP sinks
    plain = Telemetry([("mem", ExporterSinks(metrics=rows))])
    assert wired._wire_only and not plain._wire_only
    for t in (wired, plain):
        t.declare([COUNTER, GAUGE, HIST, long], scope="uniobs.collectors.test")
    rounds = [
        (
            VM,
            [
                Sample("test.work", 5, (("cpu.mode", "user"),)),
                Sample("test.level", (1 << 64) - 1),
                Sample("test.long", 1, (("k", "x"),)),
            ],
        ),
        (CT, [Sample("test.level", 2.5), Sample("test.latency", 0.02), Sample("test.long", -3, (("k", "v" * 90),))]),
        (
            VM,
            [
                Sample("test.work", 3, (("cpu.mode", "user"),)),
                Sample("test.work", 0.5, (("cpu.mode", "system"),)),
                Sample("test.long", 2, (("k", "x"),)),
            ],
        ),
        (CT, [Sample("test.level", 7), Sample("test.latency", 7.0), Sample("test.long", 4, (("j", "w"),))]),
    ]
    for i, (workload, samples) in enumerate(rounds):
        for t in (wired, plain):
            t.record(workload, samples, now_ns=1_000 + i)
        # uniobs' own samples differ between the two (their exporters' counts): compare the rest
        wired.flush(2)
        plain.flush(2)
        direct = ExportMetricsServiceRequest.FromString(wire_sink.batches[-1].otlp_bytes())
        sdk = encode_metrics(rows.batches[-1])
        mine = [rm for rm in direct.resource_metrics if not _is_self(rm)]
        theirs = [rm for rm in sdk.resource_metrics if not _is_self(rm)]
        assert mine == theirs and len(mine) == (1 if i == 0 else 2)
        assert len(direct.resource_metrics) == len(sdk.resource_metrics) == len(mine) + 1
        assert wire_sink.batches[-1].request() == direct
        with pytest.raises(TypeError):
            wire_sink.batches[-1].metrics_data()
    for t in (wired, plain):
        t.shutdown(2)


def test_a_buffer_too_small_for_one_metrics_export_is_said_once(caplog: pytest.LogCaptureFixture) -> None:
    """10,000 workloads overflow the default budget: every export would lose points; the user is told
    what to set, once (the drops themselves are counted as always)."""
    metrics = MemoryMetrics()
    t = Telemetry([("mem", ExporterSinks(metrics=metrics))], buffer_bytes=256 << 10)
    t.declare([GAUGE], scope="test")
    workloads = [Workload(kind=Kind.CGROUP, runtime="cgroup", id=f"/w{i}", cgroup=f"/w{i}") for i in range(1000)]
    with caplog.at_level("WARNING", logger="uniobs.telemetry"):
        for i in range(3):
            for w in workloads:
                t.record(w, [Sample("test.level", i)])
            t.flush(2)
    said = [r.getMessage() for r in caplog.records if "buffer_bytes" in r.getMessage()]
    assert len(said) == 1, said
    assert "raise buffer_bytes to at least" in said[0]
    t.shutdown(2)

    caplog.clear()
    roomy = Telemetry([("mem", ExporterSinks(metrics=MemoryMetrics()))], buffer_bytes=32 << 20)
    roomy.declare([GAUGE], scope="test")
    with caplog.at_level("WARNING", logger="uniobs.telemetry"):
        for w in workloads:
            roomy.record(w, [Sample("test.level", 1)])
        roomy.flush(2)
    assert not [r for r in caplog.records if "buffer_bytes" in r.getMessage()]
    roomy.shutdown(2)


def test_what_a_backend_still_down_at_exit_did_not_take_is_failed_with_its_reason() -> None:
    """Not "dropped": dropped is the budget making room (or an exit before a healthy backend was
    reached); a backend that kept refusing failed the data, and its last reason is kept."""

    class Down(MemoryMetrics):
        def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kw: Any) -> MetricExportResult:
            raise ExportError("http://127.0.0.1:4999/v1/metrics: ConnectionError: refused", retryable=True)

    t = Telemetry([("down", ExporterSinks(metrics=Down()))], retry_initial=0.05, retry_max=0.1)
    t.declare([GAUGE], scope="test")
    for i in range(3):
        t.record(VM, [Sample("test.level", i)])
        t.flush(0.2)
    t.shutdown(0.5)
    stats = t.stats()["down"]
    assert stats.failed["metrics"] > 0 and stats.dropped["metrics"] == 0, stats
    assert "ConnectionError" in stats.errors["metrics"]
    assert stats.sent["metrics"] + stats.failed["metrics"] == t.buffer.handed["metrics"]
