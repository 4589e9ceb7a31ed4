"""The invocation proxy (uniobs/invoke/proxy.py) against a real HTTP/1.1 server in its own process
(tests/proxy_upstream.py, Python's http.server), over real loopback sockets; what it records is
read back from the OTLP JSON lines the real file exporter wrote."""

from __future__ import annotations

import errno
import http.client
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from otlpfile import Signals, attrs
from support import free_port

from uniobs.exporters.file import FileConfig, FileExporter
from uniobs.invoke.admission import Admission, FixedUpstream, Unavailable
from uniobs.invoke.proxy import InvocationProxy
from uniobs.invoke.record import InvocationRecorder
from uniobs.model import Kind, Workload
from uniobs.telemetry import Telemetry

UPSTREAM = Path(__file__).with_name("proxy_upstream.py")
SERVER_KIND = 2  # OTLP Span.SpanKind SPAN_KIND_SERVER


class Upstream:
    def __init__(self) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, str(UPSTREAM), str(self.port)], stdout=subprocess.PIPE)
        assert self.proc.stdout is not None and self.proc.stdout.readline() == b"listening\n"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    up = Upstream()
    yield up
    up.stop()


@dataclass
class Rig:
    proxy: InvocationProxy
    recorder: InvocationRecorder
    telemetry: Telemetry
    out: Path
    port: int

    def signals(self) -> Signals:
        """Everything recorded so far, as the file exporter wrote it."""
        self.proxy.close(5)
        self.recorder.close()
        assert self.telemetry.flush(10)
        return Signals(self.out)

    def conn(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)

    def raw(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=20)


WORKLOAD = Workload(Kind.CONTAINER, "runc", "fn-test-1", name="fn", pid=os.getpid())


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    made: list[Rig] = []

    def make(target: int | None = None, gate: Any = None, **kw: Any) -> Rig:
        out = tmp_path / f"t{len(made)}.jsonl"
        telemetry = Telemetry([("file", FileExporter(FileConfig(path=str(out))).sinks())], strict=True)
        recorder = InvocationRecorder(telemetry, function="fn")
        gate = gate or FixedUpstream("127.0.0.1", target or free_port(), WORKLOAD)
        proxy = InvocationProxy(gate, recorder, **kw)
        _, port = proxy.start()
        r = Rig(proxy, recorder, telemetry, out, port)
        made.append(r)
        return r

    yield make
    for r in made:
        r.proxy.close(1)
        r.recorder.close()
        r.telemetry.shutdown(5)


def invocations(signals: Signals) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The invocation spans, and the REPORT log records (with their traceId and spanId)."""
    spans = [s for s in signals.spans() if "faas.invocation_id" in s["attributes"]]
    reports = []
    for line in signals.lines:
        for rl in line.get("resourceLogs", []):
            for sl in rl.get("scopeLogs", []):
                for rec in sl.get("logRecords", []):
                    if rec.get("eventName") == "uniobs.invocation.report":
                        reports.append({
                            "body": rec["body"]["stringValue"], "attributes": attrs(rec.get("attributes")),
                            "severity": rec.get("severityText"), "traceId": rec.get("traceId", ""),
                            "spanId": rec.get("spanId", ""),
                        })  # fmt: skip
    return spans, reports


def counter(signals: Signals, name: str, **attrs: Any) -> float:
    try:
        return signals.last(name, **attrs)
    except AssertionError:
        return 0


def read_response(sock: socket.socket, buf: bytearray) -> tuple[int, bytes, bytes]:
    """(status, head, body) of one Content-Length response from `sock`; `buf` keeps what follows."""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        assert data, f"closed before a response head: {bytes(buf)!r}"
        buf += data
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(
        (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0
    )
    while len(rest) < length:
        data = sock.recv(65536)
        assert data
        rest += data
    buf[:] = rest[length:]
    return status, head, rest[:length]


def until_closed(sock: socket.socket) -> bytes:
    out = b""
    while data := sock.recv(65536):
        out += data
    return out


# --- HTTP/1.1 -----------------------------------------------------------------------------------


def test_keep_alive_requests_are_one_invocation_each(upstream: Upstream, rig: Callable[..., Rig]) -> None:
    r = rig(upstream.port)
    conn = r.conn()
    for _ in range(3):
        conn.request("GET", "/hello")
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"hello\n")
    first_sock = conn.sock
    conn.request("GET", "/hello")
    conn.getresponse().read()
    assert conn.sock is first_sock  # the proxy kept the client's connection open
    conn.close()
    signals = r.signals()
    spans, reports = invocations(signals)
    assert len(spans) == 4 and len(reports) == 4
    for span in spans:
        assert span["kind"] == SERVER_KIND and span["name"] == "GET"
        a = span["attributes"]
        assert (a["http.request.method"], a["url.path"], a["http.response.status_code"]) == ("GET", "/hello", 200)
        assert a["server.port"] == r.port and a["network.peer.address"] == "127.0.0.1"
        assert a["faas.trigger"] == "http" and a["faas.coldstart"] is False
        assert span["resource"]["faas.instance"] == "fn-test-1"
    assert len({s["attributes"]["faas.invocation_id"] for s in spans}) == 4
    assert counter(signals, "faas.invocations", faas_trigger="http") == 4
    assert counter(signals, "faas.errors") == 0
    by_id = {s["spanId"]: s for s in spans}
    for report in reports:
        assert report["body"].startswith("REPORT RequestId: ") and " Duration: " in report["body"]
        assert "Init Duration" not in report["body"]
        span = by_id[report["spanId"]]  # the REPORT is in the invocation span's context
        assert span["attributes"]["faas.invocation_id"] == report["attributes"]["faas.invocation_id"]
    durations = [p for _, _, p in signals.points("faas.invoke_duration")]
    assert durations and int(durations[-1]["count"]) == 4


def test_pipelined_requests_are_answered_in_order(upstream: Upstream, rig: Callable[..., Rig]) -> None:
    r = rig(upstream.port)
    with r.raw() as sock:
        sock.sendall(
            b"GET /sleep/300 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /status/404 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        buf = bytearray()
        answers = [read_response(sock, buf) for _ in range(3)]
    assert [(s, b) for s, _, b in answers] == [(200, b"slept\n"), (404, b"status\n"), (200, b"hello\n")]
    spans, reports = invocations(r.signals())
    assert sorted(s["attributes"]["url.path"] for s in spans) == ["/hello", "/sleep/300", "/status/404"]
    assert len(reports) == 3


def test_chunked_bodies_pass_unchanged(upstream: Upstream, rig: Callable[..., Rig]) -> None:
    r = rig(upstream.port)
    body = secrets.token_bytes(100_000) + b"\r\n0\r\n\r\n"  # framing-like bytes inside the body
    with r.raw() as sock:
        head = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        sock.sendall(head)
        for i in range(0, len(body), 30_000):
            part = body[i : i + 30_000]
            sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
        sock.sendall(b"0\r\n\r\n")
        status, head_in, echoed = read_response(sock, bytearray())
    assert status == 200 and echoed == body and b"X-Length: 100007" in head_in
    # a chunked answer: forwarded byte for byte (its framing included)
    with socket.create_connection(("127.0.0.1", upstream.port)) as direct:
        direct.sendall(b"GET /chunked HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        expected = until_closed(direct).partition(b"\r\n\r\n")[2]
    with r.raw() as sock:
        sock.sendall(b"GET /chunked HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        got = until_closed(sock).partition(b"\r\n\r\n")[2]
    assert got == expected and got.endswith(b"0\r\n\r\n") and b"x" * 5000 in got
    spans, _ = invocations(r.signals())
    assert [s["attributes"]["http.response.status_code"] for s in spans] == [200, 200]


def test_content_length_body_unchanged_and_expect_100_continue(upstream: Upstream, rig: Callable[..., Rig]) -> None:
    r = rig(upstream.port)
    body = bytes(range(256)) * 64
    conn = r.conn()
    conn.request("POST", "/echo", body=body, headers={"Content-Type": "application/octet-stream"})
    assert conn.getresponse().read() == body
    conn.close()
    with r.raw() as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        interim = sock.recv(65536)
        assert interim.startswith(b"HTTP/1.1 100"), interim  # the function's own 100, passed on
        sock.sendall(b"hello")
        buf = bytearray(interim.partition(b"\r\n\r\n")[2])
        status, _, echoed = read_response(sock, buf)
    assert (status, echoed) == (200, b"hello")
    spans, reports = invocations(r.signals())
    assert [s["attributes"]["http.response.status_code"] for s in spans] == [200, 200] and len(reports) == 2


def test_http_1_0_and_connection_close(upstream: Upstream, rig: Callable[..., Rig]) -> None:
    r = rig(upstream.port)
    with r.raw() as sock:
        sock.sendall(b"GET /hello HTTP/1.0\r\n\r\n")
        answer = until_closed(sock)  # the proxy closes after the answer, as HTTP/1.0 wants
    assert answer.startswith(b"HTTP/1.") and answer.endswith(b"\r\n\r\nhello\n")
    with r.raw() as sock:
        sock.sendall(b"GET /close HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = until_closed(sock)  # the function said Connection: close: so does the proxy
    assert answer.endswith(b"bye\n") and b"Connection: close" in answer
    spans, _ = invocations(r.signals())
    assert sorted(s["attributes"]["network.protocol.version"] for s in spans) == ["1.0", "1.1"]


def test_upgrade_becomes_a_tunnel_timed_as_one_invocation(upstream: Upstream, rig: Callable[..., Rig]) -> None:
    r = rig(upstream.port)
    with r.raw() as sock:
        sock.sendall(b"GET /upgrade HTTP/1.1\r\nHost: x\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(65536)
        assert head.startswith(b"HTTP/1.1 101")
        for word in (b"ping", b"\x00\xff binary \r\n\r\n"):
            sock.sendall(word)
            got = b""
            while len(got) < len(word):
                got += sock.recv(65536)
            assert got == word
    spans, reports = invocations(r.signals())
    assert len(spans) == 1 and len(reports) == 1
    assert spans[0]["attributes"]["http.response.status_code"] == 101


def test_traceparent_is_continued_and_forwarded(upstream: Upstream, rig: Callable[..., Rig]) -> None:
    r = rig(upstream.port, routes=["/users/{id}", "/headers"])
    caller_trace, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    conn = r.conn()
    conn.request("GET", "/headers", headers={"traceparent": f"00-{caller_trace}-{caller_span}-01",
                                             "tracestate": "vendor=opaque"})  # fmt: skip
    seen = dict(json.loads(conn.getresponse().read()))
    conn.request("GET", "/headers")
    fresh = dict(json.loads(conn.getresponse().read()))
    conn.request("GET", "/users/42")
    conn.getresponse().read()
    conn.close()
    spans, reports = invocations(r.signals())
    continued = next(s for s in spans if s.get("parentSpanId"))
    root = next(s for s in spans if not s.get("parentSpanId") and s["attributes"]["url.path"] == "/headers")
    assert continued["traceId"] == caller_trace and continued["parentSpanId"] == caller_span
    assert seen["traceparent"] == f"00-{caller_trace}-{continued['spanId']}-01"
    assert seen["tracestate"] == "vendor=opaque"
    assert fresh["traceparent"] == f"00-{root['traceId']}-{root['spanId']}-01"
    assert continued["name"] == "GET /headers" and continued["attributes"]["http.route"] == "/headers"
    users = next(s for s in spans if s["attributes"]["url.path"] == "/users/42")
    assert users["name"] == "GET /users/{id}" and users["attributes"]["http.route"] == "/users/{id}"
    report = next(
        x for x in reports if x["attributes"]["faas.invocation_id"] == continued["attributes"]["faas.invocation_id"]
    )
    assert report["traceId"] == caller_trace and report["spanId"] == continued["spanId"]


class CountingGate(FixedUpstream):
    """A fixed upstream that counts the invocations admitted at once."""

    def __init__(self, port: int) -> None:
        super().__init__("127.0.0.1", port, WORKLOAD)
        self.now = self.most = 0
        self.lock = threading.Lock()

    def warm(self) -> Admission | None:
        admission = super().warm()
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        return admission

    def done(self, admission: Admission) -> None:
        with self.lock:
            self.now -= 1


@pytest.mark.parametrize("limit", [1, None])
def test_concurrency_limit(upstream: Upstream, rig: Callable[..., Rig], limit: int | None) -> None:
    gate = CountingGate(upstream.port)
    r = rig(gate=gate, max_concurrency=limit)

    def one(results: list[int]) -> None:
        conn = r.conn()
        conn.request("GET", "/sleep/300")
        response = conn.getresponse()
        response.read()
        results.append(response.status)

    results: list[int] = []
    threads = [threading.Thread(target=one, args=(results,)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [200, 200, 200]
    assert gate.most == (1 if limit == 1 else 3)
    # each invocation ends (its bookkeeping) just after its answer's last byte was written
    for _ in range(500):
        if r.proxy.in_flight == 0:
            break
        time.sleep(0.01)
    assert r.proxy.in_flight == 0


def test_timeout_is_a_504_counted_as_timeout_and_error(upstream: Upstream, rig: Callable[..., Rig]) -> None:
    r = rig(upstream.port, request_timeout=0.5)
    conn = r.conn()
    conn.request("GET", "/sleep/3000")
    response = conn.getresponse()
    assert response.status == 504 and b"uniobs" in response.read()
    conn.close()
    conn = r.conn()
    conn.request("GET", "/hello")
    assert conn.getresponse().status == 200
    conn.close()
    signals = r.signals()
    spans, reports = invocations(signals)
    failed = next(s for s in spans if s["attributes"]["url.path"] == "/sleep/3000")
    assert failed["attributes"]["error.type"] == "timeout" and failed["attributes"]["http.response.status_code"] == 504
    assert failed["status"].get("code") == 2  # STATUS_CODE_ERROR
    assert counter(signals, "faas.timeouts") == 1
    assert counter(signals, "faas.errors", error_type="timeout") == 1
    assert counter(signals, "faas.invocations") == 2 and len(reports) == 2


def test_upstream_killed_mid_request_is_a_502(upstream: Upstream, rig: Callable[..., Rig]) -> None:
    r = rig(upstream.port)
    conn = r.conn()
    conn.request("GET", "/hang")
    threading.Timer(0.5, lambda: os.kill(upstream.proc.pid, signal.SIGKILL)).start()
    response = conn.getresponse()
    assert response.status == 502
    response.read()
    signals = r.signals()
    spans, _ = invocations(signals)
    assert spans[0]["attributes"]["error.type"] == "connection_reset"
    assert counter(signals, "faas.errors", error_type="connection_reset") == 1


def test_refused_and_5xx_are_errors(upstream: Upstream, rig: Callable[..., Rig]) -> None:
    nothing = rig(free_port())  # nothing listens there
    conn = nothing.conn()
    conn.request("GET", "/")
    assert conn.getresponse().status == 502
    signals = nothing.signals()
    assert counter(signals, "faas.errors", error_type="connection_refused") == 1
    r = rig(upstream.port)
    conn = r.conn()
    for path, status in (("/status/500", 500), ("/status/404", 404)):
        conn.request("GET", path)
        response = conn.getresponse()
        assert response.status == status
        response.read()
    signals = r.signals()
    spans, reports = invocations(signals)
    by_status = {span["attributes"]["http.response.status_code"]: span for span in spans}
    assert by_status[500]["attributes"]["error.type"] == "500"
    assert counter(signals, "faas.errors", error_type="500") == 1
    assert [r["severity"] for r in reports if "500" in str(r["attributes"].get("error.type"))] == ["WARN"]
    assert by_status[500]["status"].get("code") == 2  # STATUS_CODE_ERROR
    # HTTP conventions: a SERVER span answered below 500 leaves its status unset (neither OK nor ERROR)
    assert "error.type" not in by_status[404]["attributes"]
    assert by_status[404].get("status", {}).get("code", 0) == 0, by_status[404]  # STATUS_CODE_UNSET


class NoInstance:
    def warm(self) -> Admission | None:
        return None

    def admit(self, trace_id: int, span_id: int) -> Admission:
        raise Unavailable("cannot launch")

    def done(self, admission: Admission) -> None:
        raise AssertionError("done() without an admission")


def test_unavailable_is_a_503(rig: Callable[..., Rig]) -> None:
    r = rig(gate=NoInstance())
    conn = r.conn()
    conn.request("GET", "/")
    assert conn.getresponse().status == 503
    signals = r.signals()
    spans, reports = invocations(signals)
    assert len(spans) == 1 and spans[0]["attributes"]["error.type"] == "unavailable" and len(reports) == 1
    assert counter(signals, "faas.errors", error_type="unavailable") == 1
    # no instance served it: its memory is unknown (never the figures of uniobs' own process)
    assert "Memory Size: unknown Max Memory Used: unknown" in reports[0]["body"]
    assert "uniobs.invocation.max_memory_used" not in reports[0]["attributes"]
    assert not list(signals.points("faas.mem_usage"))


def test_cold_invocation_carries_init_duration(upstream: Upstream, rig: Callable[..., Rig]) -> None:
    gate = FixedUpstream("127.0.0.1", upstream.port, ready=False)
    r = rig(gate=gate)
    threading.Timer(0.3, lambda: gate.ready(WORKLOAD, 2_571_020_000)).start()
    conn = r.conn()
    for _ in range(2):
        conn.request("GET", "/hello")  # the first is held until the instance is ready
        assert conn.getresponse().read() == b"hello\n"
    spans, reports = invocations(r.signals())
    cold = [x for x in reports if x["attributes"]["faas.coldstart"]]
    assert len(cold) == 1 and cold[0]["body"].endswith(" Init Duration: 2571.02 ms")
    assert cold[0]["attributes"]["uniobs.invocation.init_duration"] == pytest.approx(2.57102)
    assert sorted(s["attributes"]["faas.coldstart"] for s in spans) == [False, True]


def test_port_in_use_is_named(rig: Callable[..., Rig]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proxy = InvocationProxy(NoInstance(), rig(gate=NoInstance()).recorder, listen=("127.0.0.1", port))
        with pytest.raises(OSError) as raised:
            proxy.start()
        assert raised.value.errno == errno.EADDRINUSE  # the callers name the address and what it is for


# --- TCP ---------------------------------------------------------------------------------------


def test_tcp_mode_times_each_connection(upstream: Upstream, rig: Callable[..., Rig]) -> None:
    r = rig(upstream.port, protocol="tcp")
    for _ in range(2):
        with r.raw() as sock:
            sock.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert until_closed(sock).endswith(b"\r\n\r\nhello\n")
    signals = r.signals()
    spans, reports = invocations(signals)
    assert len(spans) == 2 and len(reports) == 2
    assert all(s["name"] == "fn" and s["attributes"]["faas.trigger"] == "other" for s in spans)
    assert counter(signals, "faas.invocations", faas_trigger="other") == 2


# --- the telemetry's cheap paths ------------------------------------------------------------------


def test_spans_written_directly_equal_the_sdks_encoding() -> None:
    """The bridge's direct span encoding (uniobs/telemetry/spans.py) gives the request the SDK's
    `encode_spans` gives for the same spans: kinds, parents, errors, events, every value type, two
    resources, a repeated key, a span over the attribute cap (the SDK's own path)."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    from uniobs.model import SpanEvent

    t = Telemetry()
    other = Workload(Kind.UNIKERNEL, "qemu", "fn-test-2", name="fn", pid=os.getpid())
    r1, r2 = t.resource_for(WORKLOAD), t.resource_for(other)
    events = [
        SpanEvent("GET /users/{id}", 1 << 100, 7, 0, 1_000, 5_000,
                  (("http.request.method", "GET"), ("http.response.status_code", 200), ("faas.coldstart", False),
                   ("x.ratio", 0.25), ("x.neg", -3), ("x.empty", ""), ("x.flag", True), ("x.neg", -4)),
                  kind="server"),
        SpanEvent("GET", (1 << 127) + 5, 9, 3, 2_000, 9_000, (("error.type", "504"),), error="504", kind="server"),
        SpanEvent("cold start", 11, 12, 9, 100, 900, (), error="", events=(("ready", 500, (("k", "v"),)),)),
        SpanEvent("over the cap", 13, 14, 0, 1, 2, tuple((f"k{i}", i) for i in range(200)), kind="client"),
    ]  # fmt: skip
    pairs = [(r1, events[0]), (r2, events[1]), (r1, events[2]), (r2, events[3])]
    direct = t._spans_request(pairs)
    sdk = encode_spans([t._readable_span(r, e) for r, e in pairs])
    assert direct == sdk
    assert [len(rs.scope_spans[0].spans) for rs in direct.resource_spans] == [2, 2]


def test_otlp_http_gets_one_span_and_one_report_per_request(upstream: Upstream) -> None:
    """With the OTLP/HTTP exporter (spans written directly, uniobs/telemetry/spans.py), a real
    receiver gets exactly one SERVER span and one REPORT per request, with the status code."""
    from otlp_receiver import HttpReceiver

    from uniobs.exporters.otlp import OtlpConfig, OtlpHttpExporter

    receiver = HttpReceiver()
    telemetry = Telemetry([("otlp-http", OtlpHttpExporter(OtlpConfig(endpoint=receiver.endpoint)).sinks())])
    recorder = InvocationRecorder(telemetry, function="fn")
    proxy = InvocationProxy(FixedUpstream("127.0.0.1", upstream.port, WORKLOAD), recorder)
    try:
        _, port = proxy.start()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        statuses = []
        for i in range(30):
            conn.request("GET", "/status/500" if i % 10 == 9 else f"/hello?{i}")
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
        conn.close()
        proxy.close(5)
        recorder.close()
        assert telemetry.flush(10)
        spans = [
            s for r in receiver.received.traces for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans
        ]
        reports = [
            rec for r in receiver.received.logs for rl in r.resource_logs for sl in rl.scope_logs
            for rec in sl.log_records if rec.event_name == "uniobs.invocation.report"
        ]  # fmt: skip
        assert len(spans) == len(reports) == 30
        assert all(s.kind == SERVER_KIND for s in spans)
        codes = sorted(
            next(a.value.int_value for a in s.attributes if a.key == "http.response.status_code") for s in spans
        )
        assert codes == sorted(statuses) and statuses.count(500) == 3
        assert {s.span_id for s in spans} == {rec.span_id for rec in reports}
    finally:
        proxy.close(1)
        recorder.close()
        telemetry.shutdown(5)
        receiver.stop()
