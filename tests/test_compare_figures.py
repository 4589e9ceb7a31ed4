"""compare's figures from exported data points, without a guest: the bridge's real MetricsData fed to
compare's in-process exporter (`Coverage`), and the figures read back from it."""

from __future__ import annotations

from typing import Any

from opentelemetry._logs import LogRecord
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext

from uniobs.collectors.cgroup import CgroupCollector
from uniobs.collectors.process import ProcessCollector
from uniobs.compare.comparison import (
    RESUME_EVENT,
    Coverage,
    _Calls,
    _Launch,
    _Window,
    cpu_percent,
    figures,
    invocation_figures,
)  # fmt: skip
from uniobs.invoke.record import REPORT_EVENT
from uniobs.model import Kind, Sample, Workload
from uniobs.telemetry import Telemetry

S = 1_000_000_000


def test_figures_are_read_from_exported_points() -> None:
    coverage = Coverage()
    sink = coverage.sinks().metrics
    assert sink is not None
    telemetry = Telemetry()
    telemetry.declare(ProcessCollector.metrics, scope="process")
    telemetry.declare(CgroupCollector.metrics, scope="cgroup")
    ct = Workload(kind=Kind.CONTAINER, runtime="runc", id="fn-1", name="fn", pid=42, cgroup="/fn-1")
    for second, (rss, cgroup, user, system) in enumerate(
        [(100, 900, 1.0, 0.5), (300, 700, 1.25, 0.5), (200, 800, 1.5, 0.75), (999, 999, 9.0, 9.0)]
    ):
        now = (10 + second) * S
        telemetry.record(ct, [Sample("process.memory.usage", rss), Sample("container.memory.usage", cgroup)], now)
        telemetry.record(
            ct, [Sample("container.cpu.time", user, (("cpu.mode", "user"),)),
                 Sample("container.cpu.time", system, (("cpu.mode", "system"),))], now,
        )  # fmt: skip
        for _ in range(2):  # exported twice: the same points, counted once
            sink.export(telemetry.metrics_data()[0])
    window = _Window("idle", start_ns=10 * S, end_ns=12 * S, runtime_rss=[5, 7])  # the 4th instant is after it
    memory, cpu = figures(coverage, _Launch(1, "fn-1", 9 * S, container=True), window)
    assert memory == {"rss_bytes": 200, "pss_bytes": None, "cgroup_bytes": 800, "runtime_rss_bytes": 6}
    assert cpu == (2.25 - 1.5) / 2 * 100  # user + system at each instant, first to last
    assert coverage.instants("fn-1", "container.cpu.time", 10 * S, 10 * S) == [(10 * S, 1.5)]
    assert cpu_percent([(10 * S, 1.5)]) is None  # one instant: no rate
    assert figures(coverage, _Launch(1, "other", 9 * S, container=True), window)[1] is None


def _span(instance: str, start_s: float, took_s: float, cold: bool = False, error: str | None = None) -> Any:
    attrs: dict[str, Any] = {"faas.invocation_id": f"{instance}-{start_s}", "faas.coldstart": cold,
                             "http.response.status_code": 502 if error else 200}  # fmt: skip
    if error:
        attrs["error.type"] = error
    context = SpanContext(1, 2, False)
    return ReadableSpan("GET", context, resource=Resource({"faas.instance": instance}), attributes=attrs,
                        start_time=int(start_s * S), end_time=int((start_s + took_s) * S))  # fmt: skip


def _record(instance: str, at_s: float, event: str, **attributes: Any) -> Any:
    record = LogRecord(timestamp=int(at_s * S), body="", attributes=attributes, event_name=event)
    return ReadableLogRecord(log_record=record, resource=Resource({"faas.instance": instance}))


def test_invocation_figures_are_read_from_exported_spans_and_records() -> None:
    """The invocation rows from the exported spans and records of each launch's instance and windows;
    a side that could not be paused has its resume figure unknown, with the reason."""
    coverage = Coverage()
    sinks = coverage.sinks()
    assert sinks.spans is not None and sinks.logs is not None
    spans = [_span("fn-1", 10.1, 2.5, cold=True)]  # the cold request: sent at 10 s, answered at 12.6 s
    spans += [_span("fn-1", 20 + k / 10, 0.01 * (k + 1)) for k in range(4)]  # warm: 10, 20, 30, 40 ms
    spans += [_span("fn-1", 30 + k / 100, 0.1, error="connection_reset" if k == 0 else None) for k in range(10)]
    spans += [_span("fn-1", 40.1, 0.02)]  # resumed
    spans += [_span("fn-1", 99.0, 5.0)]  # outside every window: not counted
    sinks.spans.export(spans)
    sinks.logs.export([
        _record("fn-1", 12.6, REPORT_EVENT, **{"faas.coldstart": True, "uniobs.invocation.init_duration": 2.2,
                                               "uniobs.invocation.max_memory_used": 100}),
        _record("fn-1", 20.2, REPORT_EVENT, **{"faas.coldstart": False, "uniobs.invocation.max_memory_used": 300}),
        _record("fn-1", 40.11, RESUME_EVENT, **{"uniobs.serve.resume_s": 0.004}),
    ])  # fmt: skip
    launch = _Launch(1, "fn-1", 9 * S, container=True)
    launch.calls = [_Calls("cold", 10 * S, 13 * S, 1), _Calls("warm", 20 * S, 21 * S, 4),
                    _Calls("load", 30 * S, 31 * S, 10), _Calls("resume", 40 * S, 41 * S, 1)]  # fmt: skip
    block = invocation_figures(coverage, [launch], None)
    assert "unknown" not in block
    assert block["cold_p50_s"] == block["cold_p95_s"] == 2.5
    assert block["warm_p50_s"] == 0.025 and block["warm_p99_s"] == 0.0397 and block["warm_invocations"] == 4
    assert block["resume_p50_s"] == 0.02 and block["resume_host_p50_s"] == 0.004
    assert (block["max_memory_used_bytes"], block["max_memory_used_max_bytes"]) == (200, 300)
    assert block["load_invocations"] == 10 and block["load_errors"] == 1
    assert block["load_throughput_per_s"] == round(10 / 0.19, 1)  # first start to last end
    [run] = block["runs"]
    assert (run["sent"], run["spans"], run["cold_s"], run["init_s"]) == (16, 16, 2.5, 2.2)
    assert [w["spans"] for w in block["windows"]] == [1, 4, 10, 1]
    # not paused: the resume figure is unknown, and says why
    paused = _Launch(1, "fn-1", 9 * S, container=True, calls=launch.calls[:3], pause_unknown="no QMP socket")
    block = invocation_figures(coverage, [paused], None)
    assert block["resume_p50_s"] is None and block["unknown"] == {"resume_p50_s": "not paused: no QMP socket"}
    # nothing exported for the instance: every figure unknown, with the reason
    block = invocation_figures(coverage, [_Launch(1, "gone", 0, False, calls=launch.calls)], None)
    assert block["cold_p50_s"] is None and "cold_p50_s" in block["unknown"] and "warm_p99_s" in block["unknown"]
    assert "max_memory_used_bytes" in block["unknown"] and "load_p99_s" in block["unknown"]
    # a side whose invocations cannot be observed: not measured (not unknown), and why
    assert invocation_figures(coverage, [launch], "no port") == {"method": "not measured: no port."}
