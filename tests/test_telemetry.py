"""The telemetry bridge, asserted through the SDK's in-memory exporters and our own metrics sink."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

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
from uniobs.plugin import ExporterSinks
from uniobs.telemetry import Telemetry, UndeclaredTelemetry


class MemoryMetrics(MetricExporter):
    def __init__(self) -> None:
        super().__init__()
        self.batches: list[MetricsData] = []

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kw: Any) -> MetricExportResult:
        self.batches.append(metrics_data)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kw: Any) -> None:
        return None


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
    metrics, logs, spans = MemoryMetrics(), InMemoryLogRecordExporter(), InMemorySpanExporter()
    t = Telemetry([("mem", ExporterSinks(metrics, logs, spans))], **kw)
    t.declare([COUNTER, GAUGE, HIST], scope="uniobs.collectors.test")
    return t, metrics, logs, spans


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
    new = [th.name for th in threading.enumerate() if th not in before]
    assert new == ["uniobs-export-mem"]  # the one export worker, whatever the number of workloads
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


def test_log_buffer_is_bounded_and_drops_are_counted() -> None:
    t, metrics, logs, _ = make(max_log_records=10)
    for i in range(25):
        t.log(VM, LogEvent(time_ns=i, body=f"line {i}"))
    t.flush(5)
    bodies = [r.log_record.body for r in logs.get_finished_logs()]
    assert bodies == [f"line {i}" for i in range(15, 25)]  # the oldest went first
    rejected = {
        p.attributes["uniobs.reason"]: p.value for _, p in points(metrics.batches[-1], "uniobs.telemetry.rejected")
    }
    assert rejected["log_buffer_full"] == 15
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


def test_queue_is_bounded_and_drops_oldest() -> None:
    release = threading.Event()

    class Slow(MemoryMetrics):
        def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kw: Any) -> MetricExportResult:
            release.wait(10)
            return super().export(metrics_data)

    slow = Slow()
    t = Telemetry([("slow", ExporterSinks(metrics=slow))], queue_batches=2)
    t.declare([GAUGE], scope="test")
    for i in range(6):
        t.record(VM, [Sample("test.level", i)])
        t.flush(0.01)
    release.set()
    t.flush(5)
    stats = t.stats()["slow"]
    assert stats.dropped["metrics"] > 0
    delivered = [p.value for b in slow.batches for _, p in points(b, "test.level")]
    assert delivered[-1] == 5  # the newest data survives
    assert len(slow.batches) <= 4
    t.shutdown(2)


def test_a_failed_export_is_retried_with_back_off_and_nothing_is_lost() -> None:
    class Flaky(MemoryMetrics):
        def __init__(self) -> None:
            super().__init__()
            self.attempts = 0

        def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kw: Any) -> MetricExportResult:
            self.attempts += 1
            if self.attempts <= 2:
                return MetricExportResult.FAILURE
            return super().export(metrics_data)

    flaky = Flaky()
    t = Telemetry([("flaky", ExporterSinks(metrics=flaky))], retry_initial=0.05, retry_max=0.1)
    t.declare([GAUGE], scope="test")
    t.record(VM, [Sample("test.level", 1)])
    assert t.flush(5)
    stats = t.stats()["flaky"]
    assert flaky.attempts == 3 and len(flaky.batches) == 1  # the same batch, delivered on the third try
    assert stats.dropped["metrics"] == 0 and stats.failed["metrics"] == 2 * stats.sent["metrics"]
    assert stats.healthy
    t.shutdown(2)


def test_the_queue_is_bounded_by_items_and_the_loss_is_exact() -> None:
    class Down(MemoryMetrics):
        def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kw: Any) -> MetricExportResult:
            return MetricExportResult.FAILURE

    t = Telemetry([("down", ExporterSinks(metrics=Down()))], queue_max_items=50, retry_initial=0.05)
    t.declare([GAUGE], scope="test")
    worker = t.workers[0]
    submitted = 0
    submit = worker.submit

    def counting(signal: str, payload: Any, items: int) -> None:
        nonlocal submitted
        submitted += items
        submit(signal, payload, items)

    worker.submit = counting  # type: ignore[method-assign]
    for i in range(20):
        t.record(VM, [Sample("test.level", i)])
        t.flush(0)
        assert worker.queued_items() <= 50  # bounded memory
    t.shutdown(0.2)
    stats = t.stats()["down"]
    assert stats.sent["metrics"] == 0 and submitted > 50
    assert stats.dropped["metrics"] == submitted  # the backend never answered: exactly everything is lost
