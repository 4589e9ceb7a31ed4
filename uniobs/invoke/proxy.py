"""The proxy in front of a function's port: every invocation observed host-side, none changed.

`InvocationProxy` listens on the function's public port and forwards to the instance (the
address a `Gate` admits to: a guest's QEMU `hostfwd` port, a container's address). It runs an
asyncio event loop (uvloop's when installed: `new_event_loop`) on a daemon thread of its own.

HTTP/1.1 (`protocol="http"`), parsed with httptools (llhttp, the parser Node.js uses):

- keep-alive on both sides (a pool of upstream connections per address; a request that finds a
  pooled connection closed by the function before any answer, and has no body, is sent again on
  a new one); pipelined requests are answered in order, one after the other;
- request and response bodies pass unchanged: a response's bytes are forwarded exactly as the
  function wrote them; a request's head is written again with one change, and its body's bytes
  are the client's (a chunked body is framed again as it arrives: the same bytes, chunk sizes
  may differ, trailers passed on);
- the one header change: `traceparent` (W3C Trace Context). A valid one from the caller is
  continued (the invocation span is its child, in its trace); the forwarded one carries the
  invocation span's id, so an instrumented function joins the trace; `tracestate` passes as is;
- `Connection: close`, HTTP/1.0, `Expect: 100-continue` (the function's 100 is passed on) work
  as the client and the function say; an `Upgrade` (WebSocket) or CONNECT the function accepts
  becomes a tunnel, timed as one invocation until either side closes.

`protocol="tcp"`: each connection is one invocation, timed from accept to close.

Per invocation: the gate's `warm()` (never blocks), else `admit()` in a worker thread (a cold
start or a resume; the request is held meanwhile), and `done()` at the end. Answers uniobs
writes itself (then closes the connection): 503 when the gate raises `Unavailable`; 504 when no
response byte came within `request_timeout` s of the request's arrival (waiting for a
concurrency slot and the cold start included); 502 when the function refused, reset or closed
the connection before answering. Beyond `max_concurrency` invocations in flight, requests wait
for a slot in arrival order. Each finished invocation goes to the `InvocationRecorder`
(uniobs/invoke/record.py) as one small record.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import os
import random
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httptools

from uniobs.coldstart.trace import ColdStart
from uniobs.invoke.admission import Admission, FixedUpstream, Gate, Unavailable
from uniobs.invoke.record import Invocation, InvocationRecorder
from uniobs.model import Workload
from uniobs.telemetry import Telemetry

log = logging.getLogger("uniobs.invoke")

READ_SIZE = 256 * 1024
BODY_BUFFER = 1 << 20  # request body bytes held per connection before reading from the client pauses
PIPELINE_DEPTH = 64  # parsed requests waiting on one connection before reading pauses
POOL_SIZE = 256  # idle upstream connections kept per address
_TRACEPARENT = re.compile(rb"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
# Invocation, trace and span ids: unique, not secret. A Mersenne Twister seeded from the OS is
# ~10x cheaper per id than os.urandom (a system call each), which showed in the proxy's profile.
_ids = random.Random()
_REASONS = {502: b"Bad Gateway", 503: b"Service Unavailable", 504: b"Gateway Timeout", 400: b"Bad Request"}


class _Failure(Exception):
    """The invocation failed before the client got a response byte: answer `status`."""

    def __init__(self, status: int, error_type: str) -> None:
        super().__init__(error_type)
        self.status = status
        self.error_type = error_type


def parse_traceparent(value: bytes) -> tuple[int, int, int] | None:
    """(trace id, parent span id, flags) of a valid W3C traceparent; None otherwise (version ff,
    all-zero ids, extra fields on version 00: https://www.w3.org/TR/trace-context/#traceparent-header)."""
    m = _TRACEPARENT.match(value.strip().lower())
    if m is None:
        return None
    version, trace, parent, flags, rest = m.groups()
    if version == b"ff" or (version == b"00" and rest is not None):
        return None
    trace_id, span_id = int(trace, 16), int(parent, 16)
    if not trace_id or not span_id:
        return None
    return trace_id, span_id, int(flags, 16)


def compile_routes(routes: Sequence[str]) -> list[tuple[re.Pattern[str], str]]:
    """`http.route` templates ("/users/{id}": a `{name}` is one path segment) as regexes, in order."""
    out = []
    for route in routes:
        if not route.startswith("/"):
            raise ValueError(f"route {route!r}: a template starts with /")
        parts = re.split(r"(\{[^/{}]+\})", route)
        pattern = "".join("[^/]+" if p.startswith("{") and p.endswith("}") else re.escape(p) for p in parts)
        out.append((re.compile(pattern + r"\Z"), route))
    return out


class _Request:
    """One request as parsed from the client (a plain slots class: one is made per request)."""

    __slots__ = (
        "_event", "aborted", "arrival_ns", "body", "body_done", "chunked", "headers", "headers_done",
        "keep_alive", "method", "trailers", "upgrade", "url", "version",
    )  # fmt: skip

    def __init__(self, arrival_ns: int) -> None:
        self.arrival_ns = arrival_ns
        self.url = b""
        self.method = b""
        self.version = "1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.trailers: list[tuple[bytes, bytes]] = []
        self.keep_alive = True
        self.chunked = False
        self.upgrade = False
        self.headers_done = False
        self.body: collections.deque[bytes] = collections.deque()
        self.body_done = False
        self.aborted = False  # the client went away before the body's end
        self._event: asyncio.Event | None = None  # body data, its end, or abort; made when first awaited

    def wake(self) -> None:
        if self._event is not None:
            self._event.set()

    def event(self) -> asyncio.Event:
        if self._event is None:
            self._event = asyncio.Event()
        return self._event


class _Inbox:
    """The requests parsed on one connection, in order, for its serving task (an asyncio.Queue's
    part that is used, without its per-item costs)."""

    __slots__ = ("items", "waiter")

    def __init__(self) -> None:
        self.items: collections.deque[_Request | None] = collections.deque()
        self.waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: _Request | None) -> None:
        self.items.append(item)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def qsize(self) -> int:
        return len(self.items)

    async def get(self) -> _Request | None:
        while not self.items:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        return self.items.popleft()


class _Slots:
    """A FIFO concurrency limit: waiters get a slot in arrival order."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.used = 0
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self) -> None:
        if self.limit is None:
            return
        if self.used < self.limit and not self.waiters:
            self.used += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        try:
            await fut  # the releaser counted the slot as ours
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # granted as we were cancelled: give it on
            else:
                with contextlib.suppress(ValueError):
                    self.waiters.remove(fut)
            raise

    def release(self) -> None:
        if self.limit is None:
            return
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot passes straight to the next waiter
                return
        self.used -= 1


class _Upstream:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def usable(self) -> bool:
        return not self.reader.at_eof() and not self.writer.is_closing() and not self.reader._buffer  # type: ignore[attr-defined]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class _ResponseState:
    """httptools callbacks for one upstream response (1xx interim answers skipped)."""

    __slots__ = ("done", "final_head", "framed", "head_only", "keep_alive", "parser", "status")

    def __init__(self, head_only: bool) -> None:
        self.status: int | None = None  # the final (non-1xx) status
        self.done = False
        self.final_head = False
        self.head_only = head_only  # an answer to HEAD: no body whatever its headers say
        self.keep_alive = False
        self.framed = False  # Content-Length or chunked: its end is known without EOF
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower == b"content-length" or (lower == b"transfer-encoding" and b"chunked" in value.lower()):
            self.framed = True

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self.framed = False
            return
        self.status = status
        self.final_head = True
        self.keep_alive = self.parser.should_keep_alive()
        if self.head_only or status in (204, 304):
            self.framed = True
            self.done = True

    def on_message_complete(self) -> None:
        if self.final_head:
            self.done = True


class _Connection:
    """One client connection: a reader task parses requests; the serving task answers them in order."""

    def __init__(self, proxy: InvocationProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.proxy = proxy
        self.reader = reader
        self.writer = writer
        self.parser = httptools.HttpRequestParser(self)
        self.current: _Request | None = None
        self.requests = _Inbox()
        self.buffered = 0  # body bytes parsed and not yet forwarded
        self.drained = asyncio.Event()
        self.upgrade_rest: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        peer = writer.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else None

    # -- httptools callbacks (called inside feed_data)

    def on_message_begin(self) -> None:
        self.current = _Request(time.monotonic_ns())

    def on_url(self, url: bytes) -> None:
        assert self.current is not None
        self.current.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        req = self.current
        assert req is not None
        if req.headers_done:
            req.trailers.append((name, value))
        else:
            req.headers.append((name, value))

    def on_headers_complete(self) -> None:
        req = self.current
        assert req is not None
        p = self.parser
        req.headers_done = True
        req.method = p.get_method()
        req.version = p.get_http_version()
        req.keep_alive = p.should_keep_alive()
        req.upgrade = p.should_upgrade()
        req.chunked = any(n.lower() == b"transfer-encoding" and b"chunked" in v.lower() for n, v in req.headers)
        self.requests.put_nowait(req)

    def on_body(self, body: bytes) -> None:
        req = self.current
        assert req is not None
        req.body.append(bytes(body))
        self.buffered += len(body)
        req.wake()

    def on_message_complete(self) -> None:
        req = self.current
        assert req is not None
        req.body_done = True
        req.wake()
        self.current = None

    # -- the tasks

    async def read_loop(self) -> None:
        rest = b""
        try:
            while True:
                data = await self.reader.read(READ_SIZE)
                if not data:
                    break
                try:
                    self.parser.feed_data(data)
                except httptools.HttpParserUpgrade as exc:
                    offset = exc.args[0] if exc.args and isinstance(exc.args[0], int) else len(data)
                    rest = data[offset:]
                    break
                except httptools.HttpParserError:
                    if self.current is None or not self.current.headers_done:
                        self.proxy._count_bad_request()
                        self.writer.write(_local_response(400))
                    break
                while self.buffered > BODY_BUFFER or self.requests.qsize() > PIPELINE_DEPTH:
                    self.drained.clear()
                    await self.drained.wait()
        except (ConnectionError, OSError):
            pass
        finally:
            if self.current is not None:
                self.current.aborted = True
                self.current.wake()
            if not self.upgrade_rest.done():
                self.upgrade_rest.set_result(rest)
            self.requests.put_nowait(None)

    async def serve(self) -> None:
        reading = asyncio.ensure_future(self.read_loop())
        try:
            while True:
                req = await self.requests.get()
                if req is None:
                    break
                self.drained.set()
                if not await self.proxy._invoke_http(self, req):
                    break
        except (ConnectionError, OSError):
            pass
        finally:
            reading.cancel()
            with contextlib.suppress(BaseException):
                await reading
            self.writer.close()

    def took(self, n: int) -> None:
        self.buffered -= n
        if self.buffered <= BODY_BUFFER:
            self.drained.set()


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop (libuv, MagicStack) when it is installed, else asyncio's own. Measured on
    this proxy (docs/invocations.md, Cost): 50 instead of 60 us of CPU per keep-alive request, 259
    instead of 322 us per request on a new connection each; its transports read and write in C."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def _local_response(status: int) -> bytes:
    body = f"{status} {_REASONS[status].decode()} (uniobs proxy)\n".encode()
    return b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (
        status,
        _REASONS[status],
        len(body),
        body,
    )


def _error_of(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection_refused"
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timeout"
    return "connection_reset"


class InvocationProxy:
    """Listen on `listen` and forward each invocation to the address `gate` admits it to.

    `protocol`: "http" (HTTP/1.1: one invocation per request) or "tcp" (one per connection);
    `routes`: `http.route` templates ("/users/{id}") a request's path is matched against, first
    match wins; `max_concurrency`: invocations in flight at most (None: no limit), the others wait
    in arrival order; `request_timeout`: seconds from a request's arrival to its response's first
    byte, else 504 (None: no limit). See the module's docstring for what is forwarded and answered.
    """

    def __init__(
        self,
        gate: Gate,
        recorder: InvocationRecorder,
        *,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        protocol: str = "http",
        routes: Sequence[str] = (),
        max_concurrency: int | None = None,
        request_timeout: float | None = None,
    ) -> None:
        if protocol not in ("http", "tcp"):
            raise ValueError(f"protocol {protocol!r}: http or tcp")
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError("max_concurrency: at least 1")
        if request_timeout is not None and request_timeout <= 0:
            raise ValueError("request_timeout: above 0 s")
        self.gate = gate
        self.recorder = recorder
        self.listen = listen
        self.protocol = protocol
        self.routes = compile_routes(routes)
        self.max_concurrency = max_concurrency
        self.request_timeout = request_timeout
        self.address: tuple[str, int] | None = None
        self._in_flight = 0
        self.bad_requests = 0  # unparseable requests answered 400 (not invocations)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._slots: _Slots | None = None
        self._pool: dict[tuple[str, int], list[_Upstream]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._executor = concurrent.futures.ThreadPoolExecutor(64, thread_name_prefix="uniobs-admit")

    @property
    def in_flight(self) -> int:
        """Invocations arrived and not yet ended (waiting for a slot or an instance included)."""
        return self._in_flight

    # -- life

    def start(self) -> tuple[str, int]:
        """Bind and serve; returns the bound (host, port). OSError naming the address when it
        cannot be bound (in use, not local)."""
        if self._thread is not None:
            raise RuntimeError("the proxy is started already")
        loop = self._loop = new_event_loop()
        loop.set_default_executor(self._executor)
        started: concurrent.futures.Future[tuple[str, int]] = concurrent.futures.Future()

        async def bind() -> tuple[str, int]:
            self._slots = _Slots(self.max_concurrency)
            host, port = self.listen
            try:
                self._server = await asyncio.start_server(self._accept, host, port, backlog=1024, reuse_address=True)
            except OSError as exc:
                # asyncio's message repeats the address; the callers say where and what for
                raise OSError(exc.errno, os.strerror(exc.errno) if exc.errno else str(exc)) from None
            sock = self._server.sockets[0].getsockname()
            return str(sock[0]), int(sock[1])

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                started.set_result(loop.run_until_complete(bind()))
            except BaseException as exc:
                started.set_exception(exc)
                loop.close()
                return
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="uniobs-proxy", daemon=True)
        self._thread.start()
        try:
            self.address = started.result()
        except BaseException:
            self._thread.join()
            self._thread = None
            raise
        return self.address

    def close(self, grace_s: float = 10.0) -> None:
        """Stop accepting; let invocations in flight finish for up to `grace_s` s; then close every
        connection and stop the loop's thread. Idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            self._executor.shutdown(wait=False, cancel_futures=True)
            return

        async def shut() -> None:
            if self._server is not None:
                self._server.close()
            deadline = time.monotonic() + grace_s
            while self._in_flight and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=2)
            for conns in self._pool.values():
                for up in conns:
                    up.close()
            self._pool.clear()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shut(), loop).result(grace_s + 5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- connections

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if self.protocol == "tcp":
                await self._invoke_tcp(reader, writer)
            else:
                await _Connection(self, reader, writer).serve()
        except asyncio.CancelledError:
            writer.close()
        except Exception:
            log.exception("proxy: connection failed")
            writer.close()
        finally:
            self._tasks.discard(task)

    def _count_bad_request(self) -> None:
        self.bad_requests += 1

    async def _admit_invocation(self, inv: Invocation, deadline: float | None) -> Admission:
        """`_admit` for one invocation: what its admission paid (a cold start, a resume) goes on its
        record; an instance that cannot be had is a 503."""
        try:
            admission = await self._admit(inv.trace_id, inv.span_id, deadline)
        except Unavailable:
            raise _Failure(503, "unavailable") from None
        inv.workload, inv.coldstart, inv.init_ns = admission.workload, admission.coldstart, admission.init_ns
        inv.resumed_ns, inv.waited_for_launch = admission.resumed_ns, admission.waited_for_launch
        return admission

    async def _admit(self, trace_id: int, span_id: int, deadline: float | None) -> Admission:
        """A slot, then an instance: the gate's fast path, else its blocking admit in a worker thread."""
        assert self._slots is not None
        if self._slots.limit is not None:
            await self._until(self._slots.acquire(), deadline)
        try:
            admission = self.gate.warm()
            if admission is not None:
                return admission
            loop = asyncio.get_running_loop()
            pending = loop.run_in_executor(None, self.gate.admit, trace_id, span_id)
            try:
                admitted: Admission = await self._until(asyncio.shield(pending), deadline)
                return admitted
            except BaseException:
                # given up on (timeout, shutdown): an instance admitted later is released at once
                pending.add_done_callback(
                    lambda f: self.gate.done(f.result()) if not f.cancelled() and f.exception() is None else None
                )
                raise
        except BaseException:
            self._slots.release()
            raise

    @staticmethod
    async def _until(awaitable: Any, deadline: float | None) -> Any:
        if deadline is None:
            return await awaitable
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            if asyncio.iscoroutine(awaitable):
                awaitable.close()
            raise _Failure(504, "timeout")
        try:
            return await asyncio.wait_for(awaitable, remaining)
        except TimeoutError:
            raise _Failure(504, "timeout") from None

    async def _connect(self, admission: Admission, deadline: float | None) -> tuple[_Upstream, bool]:
        """An upstream connection: a pooled one (True) if any is open, else a new one."""
        pool = self._pool.get((admission.host, admission.port))
        while pool:
            up = pool.pop()
            if up.usable():
                return up, True
            up.close()
        try:
            reader, writer = await self._until(
                asyncio.open_connection(admission.host, admission.port, limit=READ_SIZE), deadline
            )
        except _Failure:
            raise
        except OSError as exc:
            raise _Failure(502, _error_of(exc)) from None
        return _Upstream(reader, writer), False

    def _release(self, admission: Admission, up: _Upstream) -> None:
        pool = self._pool.setdefault((admission.host, admission.port), [])
        if len(pool) < POOL_SIZE and up.usable():
            pool.append(up)
        else:
            up.close()

    # -- HTTP

    def _head(self, req: _Request, traceparent: bytes) -> bytes:
        lines = [req.method + b" " + req.url + b" HTTP/" + req.version.encode() + b"\r\n"]
        for name, value in req.headers:
            if name.lower() != b"traceparent":
                lines.append(name + b": " + value + b"\r\n")
        lines.append(b"traceparent: " + traceparent + b"\r\n\r\n")
        return b"".join(lines)

    async def _send_body(self, conn: _Connection, req: _Request, up: _Upstream) -> None:
        w = up.writer
        while True:
            while req.body:
                chunk = req.body.popleft()
                conn.took(len(chunk))
                w.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if req.chunked else chunk)
            if req.body_done:
                if req.chunked:
                    w.write(b"0\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in req.trailers) + b"\r\n")
                await w.drain()
                return
            if req.aborted:
                raise ConnectionResetError("the client went away before the request's body ended")
            event = req.event()
            event.clear()
            await w.drain()
            if not req.body and not req.body_done and not req.aborted:
                await event.wait()

    async def _invoke_http(self, conn: _Connection, req: _Request) -> bool:
        """Forward one request and its response; record it. Returns whether the client connection stays open."""
        self._in_flight += 1
        inv = Invocation(
            invocation_id=f"{_ids.getrandbits(128):032x}", trace_id=0, span_id=_ids.getrandbits(64) or 1,
            parent_span_id=0,
            start_ns=req.arrival_ns, end_ns=0, workload=None, method=req.method.decode("latin-1"),
            peer_address=conn.peer, server_port=self.address[1] if self.address else None,
            protocol_version=req.version,
        )  # fmt: skip
        path = req.url.split(b"?", 1)[0].decode("latin-1")
        if path and not path.startswith("/"):  # absolute-form (a proxy request): its path part
            path = "/" + path.split("://", 1)[-1].partition("/")[2]
        inv.path = path
        if self.routes:
            inv.route = next((route for pattern, route in self.routes if pattern.match(path)), None)
        flags = 1
        for name, value in req.headers:
            if name.lower() == b"traceparent":
                parent = parse_traceparent(value)
                if parent is not None:
                    inv.trace_id, inv.parent_span_id, flags = parent
        inv.trace_id = inv.trace_id or _ids.getrandbits(128) or 1
        traceparent = b"00-%032x-%016x-%02x" % (inv.trace_id, inv.span_id, flags & 0xFF)
        deadline = None if self.request_timeout is None else req.arrival_ns / 1e9 + self.request_timeout
        admission: Admission | None = None
        keep = False
        try:
            admission = await self._admit_invocation(inv, deadline)
            keep = await self._forward(conn, req, inv, admission, traceparent, deadline)
        except _Failure as failure:
            inv.status, inv.error_type = failure.status, failure.error_type
            inv.timeout = failure.error_type == "timeout"
            conn.writer.write(_local_response(failure.status))
            keep = False
        finally:
            self._finish(inv, admission)
        return keep

    def _finish(self, inv: Invocation, admission: Admission | None) -> None:
        """An invocation is over, however it ended: its slot and admission are given back and it
        is handed to the recorder."""
        if admission is not None:
            assert self._slots is not None
            self._slots.release()
            self.gate.done(admission)
        inv.end_ns = time.monotonic_ns()
        self._in_flight -= 1
        self.recorder.submit(inv)

    async def _forward(
        self, conn: _Connection, req: _Request, inv: Invocation, admission: Admission, traceparent: bytes,
        deadline: float | None,
    ) -> bool:  # fmt: skip
        head = self._head(req, traceparent)
        bodiless = req.body_done and not req.body
        head_only = req.method == b"HEAD"
        client = conn.writer
        for attempt in (0, 1):
            up, reused = await self._connect(admission, deadline)
            up.writer.write(head)
            sending = None if bodiless else asyncio.ensure_future(self._send_body(conn, req, up))
            state = _ResponseState(head_only)
            forwarded = False
            try:
                read = up.reader.read(READ_SIZE)
                data = await (read if deadline is None else self._until(read, deadline))
                if not data:
                    raise ConnectionResetError("the function closed the connection without an answer")
            except _Failure:
                up.close()
                if sending is not None:
                    sending.cancel()
                raise
            except OSError as exc:
                up.close()
                if sending is not None:
                    sending.cancel()
                if reused and bodiless and attempt == 0:
                    continue  # a pooled connection the function had closed: once more on a new one
                raise _Failure(502, _error_of(exc)) from None
            try:
                while True:
                    try:
                        state.parser.feed_data(data)
                    except httptools.HttpParserUpgrade:
                        client.write(data)
                        forwarded = True
                        inv.status = state.status or 101
                        await self._tunnel(conn, up, sending)
                        return False
                    except httptools.HttpParserError:
                        if not forwarded:
                            up.close()
                            raise _Failure(502, "invalid_response") from None
                        raise ConnectionResetError("the function's response cannot be parsed") from None
                    client.write(data)
                    forwarded = True
                    if state.done:
                        break
                    await client.drain()
                    data = await up.reader.read(READ_SIZE)
                    if not data:
                        if state.final_head and not state.framed:
                            state.done, state.keep_alive = True, False  # a body delimited by the close
                            break
                        raise ConnectionResetError("the function closed the connection mid-response")
            except (OSError, asyncio.IncompleteReadError) as exc:
                up.close()
                if sending is not None:
                    sending.cancel()
                if not forwarded:
                    raise _Failure(502, _error_of(exc)) from None
                inv.status = state.status
                inv.error_type = _error_of(exc)
                return False  # the client has part of an answer: only closing tells it
            inv.status = state.status
            if state.status is not None and state.status >= 500:
                inv.error_type = str(state.status)
            body_sent = True
            if sending is not None:
                if sending.done() and not sending.cancelled() and sending.exception() is None:
                    pass
                else:
                    body_sent = False
                    sending.cancel()
            if state.keep_alive and body_sent and req.keep_alive:  # the function was told to close: not reused
                self._release(admission, up)
            else:
                up.close()
            await client.drain()
            return req.keep_alive and state.keep_alive and body_sent and req.body_done
        raise AssertionError("unreachable")

    async def _tunnel(self, conn: _Connection, up: _Upstream, sending: asyncio.Future[None] | None) -> None:
        """After a 101 (or a CONNECT's 2xx): bytes both ways until either side closes."""
        if sending is not None:
            sending.cancel()
        rest = await conn.upgrade_rest
        if rest:
            up.writer.write(rest)
        try:
            await _pipe_both(conn.reader, conn.writer, up.reader, up.writer)
        finally:
            up.close()

    # -- TCP

    async def _invoke_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._in_flight += 1
        arrival = time.monotonic_ns()
        peer = writer.get_extra_info("peername")
        inv = Invocation(
            invocation_id=f"{_ids.getrandbits(128):032x}", trace_id=_ids.getrandbits(128) or 1,
            span_id=_ids.getrandbits(64) or 1, parent_span_id=0,
            start_ns=arrival, end_ns=0, workload=None, trigger="other",
            peer_address=str(peer[0]) if isinstance(peer, tuple) else None,
            server_port=self.address[1] if self.address else None,
        )  # fmt: skip
        deadline = None if self.request_timeout is None else arrival / 1e9 + self.request_timeout
        admission: Admission | None = None
        try:
            admission = await self._admit_invocation(inv, deadline)
            up, _ = await self._connect(admission, deadline)
            try:
                inv.error_type = await _pipe_both(reader, writer, up.reader, up.writer, deadline)
            finally:
                up.close()
            inv.timeout = inv.error_type == "timeout"
        except _Failure as failure:
            inv.error_type, inv.timeout = failure.error_type, failure.error_type == "timeout"
        finally:
            writer.close()
            self._finish(inv, admission)


async def _pipe_both(
    c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter,
    u_reader: asyncio.StreamReader, u_writer: asyncio.StreamWriter, deadline: float | None = None,
) -> str | None:  # fmt: skip
    """Copy bytes both ways, each direction's end passed on (half-close), until both ended. Returns
    an error type: "timeout" (no byte from the function before `deadline`, epoch-free monotonic s),
    "connection_reset", "connection_refused", or None."""

    async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, first_deadline: float | None) -> None:
        first = True
        while True:
            if first and first_deadline is not None:
                remaining = first_deadline - time.monotonic()
                data = await asyncio.wait_for(src.read(READ_SIZE), max(remaining, 0.0))
            else:
                data = await src.read(READ_SIZE)
            first = False
            if not data:
                break
            dst.write(data)
            await dst.drain()
        if dst.can_write_eof():
            with contextlib.suppress(OSError):
                dst.write_eof()

    up = asyncio.ensure_future(pump(u_reader, c_writer, deadline))
    down = asyncio.ensure_future(pump(c_reader, u_writer, None))
    error: str | None = None
    try:
        done, _ = await asyncio.wait({up, down}, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            exc = task.exception()
            if exc is not None:
                error = _error_of(exc)
        if error is None:
            await asyncio.wait({up, down})
            for task in (up, down):
                exc = task.exception()
                if exc is not None:
                    error = _error_of(exc)
    finally:
        for task in (up, down):
            task.cancel()
    return error


# --- in front of a launch someone else owns (`uniobs run --function`, `uniobs compare`) --------------


@dataclass(frozen=True)
class FrontSpec:
    """Where the proxy listens, where the instance listens, and how invocations are seen."""

    listen: tuple[str, int]  # the public address (port 0: a free one)
    upstream: tuple[str, int]  # the instance's: the guest's hostfwd port, the container's address
    protocol: str = "http"
    routes: tuple[str, ...] = ()
    request_timeout: float | None = None
    max_concurrency: int | None = None


class _Launched(Protocol):
    """What a front reads of the launch (uniobs.lifecycle.run.Runner)."""

    @property
    def coldstart(self) -> ColdStart: ...

    @property
    def workload(self) -> Workload | None: ...


class RunnerFront:
    """The proxy in front of one launch: requests that arrive before the instance is ready are held
    (a `FixedUpstream` not yet ready); when its cold start's `ready_event` fires, the first
    invocation is marked cold with the launch's init duration (exec -> ready). `close()` (at the
    launch's end) answers 503 to requests still held, lets those in flight finish, and records what
    is queued."""

    def __init__(self, spec: FrontSpec, telemetry: Telemetry, function: str, launched: _Launched) -> None:
        self.spec = spec
        self.launched = launched
        self.gate = FixedUpstream(*spec.upstream, ready=False)
        self.recorder = InvocationRecorder(telemetry, function=function)
        self.proxy = InvocationProxy(
            self.gate, self.recorder, listen=spec.listen, protocol=spec.protocol, routes=spec.routes,
            max_concurrency=spec.max_concurrency, request_timeout=spec.request_timeout,
        )  # fmt: skip
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="uniobs-front", daemon=True)

    def start(self) -> tuple[str, int]:
        """Bind (OSError naming the address) and start watching for readiness; the bound address."""
        address = self.proxy.start()
        self.recorder.server_port = address[1]
        self._watcher.start()
        return address

    def _watch(self) -> None:
        cs = self.launched.coldstart
        while not self._stop.is_set():
            if cs.ready_event.wait(0.1):
                ready, exec_ns = cs.marks.get("probe_ok" if cs.probe else "ready"), cs.marks.get("exec")
                init = ready - exec_ns if ready is not None and exec_ns is not None else None
                self.gate.ready(self.launched.workload, init)
                return

    def close(self, grace_s: float = 5.0) -> None:
        self._stop.set()
        self.gate.close()
        self.proxy.close(grace_s)
        self.recorder.close()
