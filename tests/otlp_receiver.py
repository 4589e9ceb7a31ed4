"""A real OTLP receiver on loopback, for tests: gRPC and HTTP/protobuf, built on the official
service definitions from the `opentelemetry-proto` package.

It keeps every request it receives, decoded, so tests assert on what actually crossed the wire.
"""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from collections.abc import Callable
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class Received:
    """What a receiver got, by signal."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.metrics: list[metrics_service_pb2.ExportMetricsServiceRequest] = []
        self.logs: list[logs_service_pb2.ExportLogsServiceRequest] = []
        self.traces: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.headers: list[dict[str, str]] = []

    def add(self, signal: str, request: Any, headers: dict[str, str]) -> None:
        with self.lock:
            getattr(self, signal).append(request)
            self.headers.append(headers)
            self.lock.notify_all()

    def wait_for(self, predicate: Callable[[Received], bool], timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        with self.lock:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.lock.wait(left)
            return True

    # -- helpers for assertions

    def metric_points(self) -> list[tuple[dict[str, Any], Any, Any]]:
        """(resource attributes, metric, data point) for every point received."""
        out = []
        with self.lock:
            for request in self.metrics:
                for rm in request.resource_metrics:
                    res = attributes(rm.resource.attributes)
                    for sm in rm.scope_metrics:
                        for metric in sm.metrics:
                            kind = metric.WhichOneof("data")
                            for point in getattr(metric, kind).data_points:
                                out.append((res, metric, point))
        return out

    def log_records(self) -> list[tuple[dict[str, Any], Any]]:
        out = []
        with self.lock:
            for request in self.logs:
                for rl in request.resource_logs:
                    res = attributes(rl.resource.attributes)
                    for sl in rl.scope_logs:
                        out += [(res, record) for record in sl.log_records]
        return out

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        out = []
        with self.lock:
            for request in self.traces:
                for rs in request.resource_spans:
                    res = attributes(rs.resource.attributes)
                    for ss in rs.scope_spans:
                        out += [(res, span) for span in ss.spans]
        return out


def any_value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attributes(value.kvlist_value.values)
    return getattr(value, kind) if kind else None


def attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in kvs}


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, received: Received) -> None:
        self.received = received

    def Export(self, request: Any, context: Any) -> Any:
        self.received.add("metrics", request, dict(context.invocation_metadata()))
        return metrics_service_pb2.ExportMetricsServiceResponse()


class _Logs(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, received: Received) -> None:
        self.received = received

    def Export(self, request: Any, context: Any) -> Any:
        self.received.add("logs", request, dict(context.invocation_metadata()))
        return logs_service_pb2.ExportLogsServiceResponse()


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, received: Received) -> None:
        self.received = received

    def Export(self, request: Any, context: Any) -> Any:
        self.received.add("traces", request, dict(context.invocation_metadata()))
        return trace_service_pb2.ExportTraceServiceResponse()


class GrpcReceiver:
    """OTLP/gRPC on 127.0.0.1:<port> (0 picks a free port)."""

    def __init__(self, port: int = 0) -> None:
        self.received = Received()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_Metrics(self.received), self.server)
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_Logs(self.received), self.server)
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Traces(self.received), self.server)
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        self.server.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop(grace=None).wait()


_HTTP_TYPES = {
    "/v1/metrics": (
        "metrics",
        metrics_service_pb2.ExportMetricsServiceRequest,
        metrics_service_pb2.ExportMetricsServiceResponse,
    ),
    "/v1/logs": (
        "logs",
        logs_service_pb2.ExportLogsServiceRequest,
        logs_service_pb2.ExportLogsServiceResponse,
    ),
    "/v1/traces": (
        "traces",
        trace_service_pb2.ExportTraceServiceRequest,
        trace_service_pb2.ExportTraceServiceResponse,
    ),
}


class HttpReceiver:
    """OTLP/HTTP with protobuf bodies on 127.0.0.1:<port>.

    `refuse` maps a path to the status it always answers (a traces-only backend answers 405 on
    /v1/metrics, as Arize Phoenix does); `answers` maps a path to (status, headers) answers given
    first, one per request, before it accepts (503 with Retry-After, then 200). `attempts` counts
    requests per path, refused or not.
    """

    def __init__(
        self, port: int = 0, refuse: dict[str, int] | None = None,
        answers: dict[str, list[tuple[int, dict[str, str]]]] | None = None,
    ) -> None:  # fmt: skip
        self.received = received = Received()
        self.attempts: dict[str, list[float]] = {}
        attempts = self.attempts
        refusals = dict(refuse or {})
        scripted = {path: list(seq) for path, seq in (answers or {}).items()}

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                attempts.setdefault(self.path, []).append(time.monotonic())
                answer = (refusals[self.path], {}) if self.path in refusals else None
                if answer is None and scripted.get(self.path):
                    answer = scripted[self.path].pop(0)
                if answer is not None:
                    status, headers = answer
                    self.send_response(status)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                route = _HTTP_TYPES.get(self.path)
                if route is None:
                    self.send_error(404)
                    return
                signal, request_type, response_type = route
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                if self.headers.get("Content-Type") != "application/x-protobuf":
                    self.send_error(415)
                    return
                request = request_type()
                request.ParseFromString(body)
                received.add(signal, request, {k.lower(): v for k, v in self.headers.items()})
                payload = response_type().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
