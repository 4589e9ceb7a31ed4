"""Real OTLP over real loopback sockets: the SDK's gRPC and HTTP exporters, driven by our pipeline,
received by a server built on the official OTLP service definitions (tests/otlp_receiver.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.json_format import ParseDict
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from otlp_receiver import GrpcReceiver, HttpReceiver

from uniobs.config import Settings, load
from uniobs.model import LogEvent, SpanEvent, Workload
from uniobs.pipeline import Pipeline

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
SPAN_ID = 0xB7AD6B7169203331


def run_pipeline(settings: Settings, export: list[str], workload: Workload) -> Pipeline:
    pipeline = Pipeline(settings, export=export, collectors=["process"], strict=True)
    pipeline.scrape([workload])
    pipeline.telemetry.log(workload, LogEvent(time_ns=time.monotonic_ns(), body="hello from the console"))
    now = time.monotonic_ns()
    pipeline.telemetry.span(workload, SpanEvent("coldstart", TRACE_ID, SPAN_ID, 0, now - 5_000_000, now))
    assert pipeline.flush(20)
    return pipeline


def check_received(received: Any, workload: Workload) -> None:
    by_name: dict[str, list[tuple[dict[str, Any], Any, Any]]] = {}
    for res, metric, point in received.metric_points():
        if res.get("process.pid") == workload.pid:
            by_name.setdefault(metric.name, []).append((res, metric, point))
    # names, units, values
    rss = by_name["process.memory.usage"]
    assert rss[0][1].unit == "By"
    assert rss[0][2].as_int >= 20 << 20  # the child touched 20 MiB
    cpu = {p.attributes[0].value.string_value: p.as_double for _, _, p in by_name["process.cpu.time"]}
    assert set(cpu) == {"user", "system"} and all(v >= 0 for v in cpu.values())
    assert by_name["process.cpu.time"][0][1].unit == "s"
    assert by_name["process.cpu.time"][0][1].sum.is_monotonic
    assert by_name["process.thread.count"][0][2].as_int >= 1
    # resource attributes
    res = rss[0][0]
    assert res["service.name"] == workload.name
    assert res["process.pid"] == workload.pid
    assert res["process.executable.name"] == "python3"
    assert res["host.name"]
    # logs and spans
    logs = [(r, rec) for r, rec in received.log_records() if r.get("process.pid") == workload.pid]
    assert [rec.body.string_value for _, rec in logs] == ["hello from the console"]
    spans = [s for r, s in received.spans() if r.get("process.pid") == workload.pid]
    assert [s.name for s in spans] == ["coldstart"]
    assert spans[0].trace_id == TRACE_ID.to_bytes(16, "big")
    assert spans[0].end_time_unix_nano - spans[0].start_time_unix_nano == 5_000_000


def test_otlp_grpc_is_received(grpc_receiver: GrpcReceiver, process_workload: Workload, tmp_path: Path) -> None:
    config = tmp_path / "uniobs.toml"
    config.write_text(f'[exporters.otlp]\nendpoint = "{grpc_receiver.endpoint}"\nheaders = {{ "x-tenant" = "t1" }}\n')
    pipeline = run_pipeline(load(config), ["otlp"], process_workload)
    assert grpc_receiver.received.wait_for(lambda r: r.metrics and r.logs and r.traces)
    check_received(grpc_receiver.received, process_workload)
    assert all(h.get("x-tenant") == "t1" for h in grpc_receiver.received.headers)
    pipeline.close(5)


def test_otlp_http_is_received(http_receiver: HttpReceiver, process_workload: Workload) -> None:
    settings = Settings()
    settings.exporters["otlp-http"] = {"headers": {"authorization": "Bearer s3cret"}, "compression": "gzip"}
    pipeline = run_pipeline(settings, [f"otlp-http:{http_receiver.endpoint}"], process_workload)
    assert http_receiver.received.wait_for(lambda r: r.metrics and r.logs and r.traces)
    check_received(http_receiver.received, process_workload)
    assert all(h.get("authorization") == "Bearer s3cret" for h in http_receiver.received.headers)
    pipeline.close(5)


def test_standard_otel_environment_is_honoured(
    http_receiver: HttpReceiver, process_workload: Workload, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", http_receiver.endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-from-env=yes")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=staging")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "uniobs-test")
    pipeline = run_pipeline(Settings(), ["otlp-http"], process_workload)
    assert http_receiver.received.wait_for(lambda r: r.metrics)
    resources = [res for res, _, _ in http_receiver.received.metric_points()]
    assert all(r["deployment.environment.name"] == "staging" for r in resources)
    assert {r["service.name"] for r in resources} == {"child", "uniobs-test"}  # the workload, and ourselves
    assert http_receiver.received.headers[0]["x-from-env"] == "yes"
    pipeline.close(5)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make a test certificate")
def test_otlp_grpc_over_tls(process_workload: Workload, tmp_path: Path) -> None:
    import grpc
    from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
    from otlp_receiver import Received, _Metrics

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    received = Received()
    server = grpc.server(__import__("concurrent.futures").futures.ThreadPoolExecutor(2))
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_Metrics(received), server)
    creds = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    port = server.add_secure_port("localhost:0", creds)
    server.start()
    try:
        settings = Settings()
        settings.exporters["otlp"] = {"certificate": str(cert), "endpoint": f"https://localhost:{port}"}
        pipeline = Pipeline(settings, export=["otlp"], collectors=["process"])
        pipeline.scrape([process_workload])
        assert pipeline.flush(20)
        assert received.wait_for(lambda r: r.metrics)
        assert any(m.name == "process.memory.usage" for _, m, _ in received.metric_points())
        pipeline.close(5)
    finally:
        server.stop(None)


def _b64_ids(node: Any) -> Any:
    import base64

    if isinstance(node, dict):
        return {
            k: (
                base64.b64encode(bytes.fromhex(v)).decode()
                if k in ("traceId", "spanId", "parentSpanId")
                else _b64_ids(v)
            )
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_b64_ids(v) for v in node]
    return node


def test_file_exporter_writes_otlp_json_lines_that_parse_back(process_workload: Workload, tmp_path: Path) -> None:
    out = tmp_path / "signals.jsonl"
    pipeline = run_pipeline(Settings(), [f"file:{out}"], process_workload)
    pipeline.close(5)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    kinds = [next(iter(line)) for line in lines]
    assert set(kinds) == {"resourceLogs", "resourceMetrics", "resourceSpans"}  # close() flushes metrics again
    span_line = lines[kinds.index("resourceSpans")]
    span = span_line["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert span["traceId"] == f"{TRACE_ID:032x}" and span["spanId"] == f"{SPAN_ID:016x}"  # OTLP/JSON: hex ids
    # lowerCamelCase keys, integer enums: what OTLP/JSON readers expect
    metrics_line = lines[kinds.index("resourceMetrics")]
    cpu = [
        m for sm in metrics_line["resourceMetrics"][0]["scopeMetrics"] for m in sm["metrics"]
        if m["name"] == "process.cpu.time"
    ]  # fmt: skip
    assert cpu[0]["sum"]["aggregationTemporality"] == 2 and cpu[0]["sum"]["isMonotonic"] is True
    # each line is a valid Export*ServiceRequest under the protobuf JSON mapping
    ParseDict(metrics_line, ExportMetricsServiceRequest())
    ParseDict(lines[kinds.index("resourceLogs")], ExportLogsServiceRequest())
    parsed = ParseDict(_b64_ids(span_line), ExportTraceServiceRequest())
    assert parsed.resource_spans[0].scope_spans[0].spans[0].trace_id == TRACE_ID.to_bytes(16, "big")


def test_several_exporters_at_once(
    grpc_receiver: GrpcReceiver, http_receiver: HttpReceiver, process_workload: Workload, tmp_path: Path
) -> None:
    out = tmp_path / "all.jsonl"
    export = [f"otlp:{grpc_receiver.endpoint}", f"otlp-http:{http_receiver.endpoint}", f"file:{out}"]
    pipeline = run_pipeline(Settings(), export, process_workload)
    assert grpc_receiver.received.wait_for(lambda r: r.traces)
    assert http_receiver.received.wait_for(lambda r: r.traces)
    assert "resourceSpans" in out.read_text()
    pipeline.close(5)


# --- the OTLP specification's retry rules, against real receivers -----------------------------


def test_a_backend_refusing_metrics_with_405_loses_them_at_once_and_the_other_signals_flow(
    process_workload: Workload,
) -> None:
    receiver = HttpReceiver(refuse={"/v1/metrics": 405})  # a traces-and-logs-only backend
    try:
        started = time.monotonic()
        pipeline = run_pipeline(Settings(), [f"otlp-http:{receiver.endpoint}"], process_workload)
        assert time.monotonic() - started < 10  # nothing waited on retries
        assert [s.name for _, s in receiver.received.spans()] == ["coldstart"]
        assert len(receiver.received.log_records()) == 1
        assert len(receiver.attempts["/v1/metrics"]) == 1  # 405 is final: never retried
        stats = pipeline.telemetry.stats()["otlp-http"]
        assert stats.failed["metrics"] > 0 and stats.retries["metrics"] == 0
        assert stats.sent["traces"] == 1 and stats.sent["logs"] == 1
        [line] = pipeline.undelivered_summary()
        assert line.startswith("exporter otlp-http: metrics not delivered: ") and "HTTP 405" in line
        pipeline.close(5)
    finally:
        receiver.stop()


def test_run_ends_by_saying_what_a_picky_backend_did_not_take(tmp_path: Path) -> None:
    receiver = HttpReceiver(refuse={"/v1/metrics": 405})
    try:
        started = time.monotonic()
        result = subprocess.run(
            [str(Path(__file__).resolve().parent.parent / ".venv/bin/uniobs"), "run", "--quiet",
             "--export", f"otlp-http:{receiver.endpoint}", "--", "sh", "-c", "echo hi; sleep 0.2"],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )  # fmt: skip
        elapsed = time.monotonic() - started
    finally:
        receiver.stop()
    assert result.returncode == 0, result.stderr
    lost = [line for line in result.stderr.splitlines() if line.startswith("uniobs: exporter otlp-http: ")]
    assert len(lost) == 1 and "metrics not delivered" in lost[0] and "HTTP 405" in lost[0], result.stderr
    assert receiver.received.spans()  # the cold-start trace got through
    assert elapsed < 20  # no 20 s of retries at the head of a shared queue


def test_503_with_retry_after_is_retried_after_the_delay_and_delivered(process_workload: Workload) -> None:
    receiver = HttpReceiver(answers={"/v1/logs": [(503, {"Retry-After": "1"}), (429, {})]})
    settings = Settings()
    settings.core = __import__("dataclasses").replace(settings.core, retry_initial=0.1, retry_max=0.2)
    try:
        pipeline = run_pipeline(settings, [f"otlp-http:{receiver.endpoint}"], process_workload)
        tries = receiver.attempts["/v1/logs"]
        assert len(tries) == 3 and tries[1] - tries[0] >= 0.95  # Retry-After: 1 honoured
        assert len(receiver.received.log_records()) == 1
        stats = pipeline.telemetry.stats()["otlp-http"]
        assert stats.retries["logs"] == 2 and stats.failed["logs"] == 0 and stats.sent["logs"] == 1
        assert pipeline.undelivered_summary() == []
        pipeline.close(5)
    finally:
        receiver.stop()


def test_an_exporter_limited_to_traces_sends_nothing_else(process_workload: Workload) -> None:
    receiver = HttpReceiver()
    settings = Settings()
    settings.exporters["otlp-http"] = {"signals": ["traces"]}
    try:
        pipeline = run_pipeline(settings, [f"otlp-http:{receiver.endpoint}"], process_workload)
        assert [s.name for _, s in receiver.received.spans()] == ["coldstart"]
        assert "/v1/metrics" not in receiver.attempts and "/v1/logs" not in receiver.attempts
        assert "(traces only)" in pipeline.describe_exporters()[0]
        pipeline.close(5)
    finally:
        receiver.stop()


def test_per_signal_otel_endpoints_are_honoured(process_workload: Workload, monkeypatch: pytest.MonkeyPatch) -> None:
    general, traces = HttpReceiver(), HttpReceiver()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", general.endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{traces.endpoint}/v1/traces")  # used as is
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-tenant=traces%20team")
    try:
        pipeline = run_pipeline(Settings(), ["otlp-http"], process_workload)
        assert general.received.metrics and general.received.logs and not general.received.traces
        assert [s.name for _, s in traces.received.spans()] == ["coldstart"]
        assert traces.received.headers[0]["x-tenant"] == "traces team"
        pipeline.close(5)
    finally:
        general.stop()
        traces.stop()


def test_grpc_codes_follow_the_specification(process_workload: Workload) -> None:
    """UNIMPLEMENTED is final; UNAVAILABLE is retried until the server takes the batch."""
    from concurrent import futures

    import grpc
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
    from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
    from otlp_receiver import Received

    received = Received()
    calls = {"metrics": 0, "logs": 0}

    class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:
            calls["metrics"] += 1
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "no metrics here")

    class Logs(logs_service_pb2_grpc.LogsServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:
            calls["logs"] += 1
            if calls["logs"] == 1:
                context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
            received.add("logs", request, {})
            return logs_service_pb2.ExportLogsServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(2))
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), server)
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(Logs(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    settings = Settings()
    settings.core = __import__("dataclasses").replace(settings.core, retry_initial=0.1)
    settings.exporters["otlp"] = {"signals": ["metrics", "logs"]}
    try:
        pipeline = run_pipeline(settings, [f"otlp:http://127.0.0.1:{port}"], process_workload)
        stats = pipeline.telemetry.stats()["otlp"]
        assert calls["metrics"] == 1 and stats.failed["metrics"] > 0 and "UNIMPLEMENTED" in stats.errors["metrics"]
        assert calls["logs"] == 2 and stats.retries["logs"] == 1 and stats.sent["logs"] == 1
        assert len(received.log_records()) == 1
        pipeline.close(5)
    finally:
        server.stop(None)


def test_otlp_http_honours_the_proxy_environment_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP_PROXY sends the POST to the proxy (absolute-form request line); NO_PROXY exempts a host.
    The environment is read when the exporter starts (requests would re-read it on every POST)."""
    import socket
    import threading

    from uniobs.exporters.otlp import _HttpSender, _Resolved

    seen: list[bytes] = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(4096)
            seen.append(data.split(b"\r\n", 1)[0])
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    proxy = f"http://127.0.0.1:{server.getsockname()[1]}"
    monkeypatch.setenv("HTTP_PROXY", proxy)
    monkeypatch.setenv("NO_PROXY", "")
    settings = _Resolved("http://backend.invalid:4318/v1/traces", {}, None, None, None, 5.0, "none")
    _HttpSender("traces", settings).send(b"")
    thread.join(5)
    server.close()
    assert seen == [b"POST http://backend.invalid:4318/v1/traces HTTP/1.1"]

    monkeypatch.setenv("NO_PROXY", "backend.invalid")
    sender = _HttpSender("traces", settings)
    assert sender.session.proxies == {}  # exempt: the POST would go straight to the backend
