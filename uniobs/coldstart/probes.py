"""Readiness probes and the first request: when is a function ready, and how long does it take to
answer once it is?

Probe specs (the function definition's `ready`, or `uniobs run --ready`):
- `tcp:HOST:PORT`           a TCP connect succeeds;
- `http://HOST:PORT/PATH`   an HTTP GET answers (optionally `=STATUS`, default: any 2xx/3xx);
- `console:REGEX`           a console line matches (checked by the console capture).

Network probes are polled every 10 ms from one thread for one launch, each attempt bounded by a
short timeout. Loopback is what they are for; a probe never follows redirects to other hosts.
"""

from __future__ import annotations

import http.client
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

POLL_S = 0.01
ATTEMPT_TIMEOUT_S = 1.0


class ProbeError(ValueError):
    """A probe spec that cannot be used."""


@dataclass(frozen=True)
class Probe:
    kind: str  # "tcp", "http", "console"
    host: str = ""
    port: int = 0
    path: str = "/"
    status: int | None = None  # http: the status expected; None: any 2xx or 3xx
    pattern: re.Pattern[str] | None = None  # console

    def describe(self) -> str:
        if self.kind == "console":
            return f"console:{self.pattern.pattern if self.pattern else ''}"
        if self.kind == "tcp":
            return f"tcp:{self.host}:{self.port}"
        return f"http://{self.host}:{self.port}{self.path}" + (f"={self.status}" if self.status else "")


def parse_probe(spec: str) -> Probe:
    if spec.startswith("console:"):
        try:
            return Probe("console", pattern=re.compile(spec[len("console:") :]))
        except re.error as exc:
            raise ProbeError(f"probe {spec!r}: bad regular expression: {exc}") from None
    if spec.startswith("tcp:"):
        host, sep, port = spec[4:].rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ProbeError(f"probe {spec!r}: expected tcp:HOST:PORT")
        return Probe("tcp", host=host.strip("[]") or "127.0.0.1", port=int(port))
    if spec.startswith("http://"):
        url, _, status = spec.partition("=")
        parts = urlsplit(url)
        if not parts.hostname:
            raise ProbeError(f"probe {spec!r}: no host")
        if status and not (status.isdigit() and 100 <= int(status) <= 599):
            raise ProbeError(f"probe {spec!r}: expected =STATUS (100-599)")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return Probe("http", parts.hostname, parts.port or 80, path, int(status) if status else None)
    raise ProbeError(f"probe {spec!r}: expected tcp:HOST:PORT, http://HOST:PORT/PATH[=STATUS] or console:REGEX")


def attempt(probe: Probe) -> bool:
    """One try of a network probe."""
    try:
        if probe.kind == "tcp":
            with socket.create_connection((probe.host, probe.port), timeout=ATTEMPT_TIMEOUT_S):
                return True
        if probe.kind == "http":
            return http_get(probe.host, probe.port, probe.path, probe.status) is not None
    except OSError:
        return False
    return False


def http_get(
    host: str, port: int, path: str, status: int | None = None, timeout: float = ATTEMPT_TIMEOUT_S
) -> int | None:
    """GET once; the status if it is the expected one (any 2xx/3xx when none), else None."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"User-Agent": "uniobs-probe"})
        response = conn.getresponse()
        response.read(1 << 16)
        ok = response.status == status if status is not None else 200 <= response.status < 400
        return response.status if ok else None
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


class ProbeRunner:
    """Polls a network probe until it succeeds, the launch ends, or the deadline passes; then
    optionally sends the first request. Calls `on_mark(name, monotonic_ns)` with `probe_ok`,
    `request_sent` and `request_done`."""

    def __init__(self, probe: Probe, on_mark: Callable[[str, int], None], *, request: str | None = None,
                 timeout_s: float = 120.0) -> None:  # fmt: skip
        self.probe = probe
        self.request = parse_probe(request) if request else None
        if self.request is not None and self.request.kind != "http":
            raise ProbeError("the first request must be an http:// URL")
        self._on_mark = on_mark
        self._timeout = timeout_s
        self._stop = threading.Event()
        self.ok = False
        self._thread = threading.Thread(target=self._run, name="uniobs-probe", daemon=True)

    def start(self) -> ProbeRunner:
        if self.probe.kind != "console":
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(ATTEMPT_TIMEOUT_S + 1)

    def console_matched(self, time_ns: int) -> None:
        """The console capture saw the probe's pattern (called from the I/O thread)."""
        if not self.ok:
            self.ok = True
            self._on_mark("probe_ok", time_ns)
            if self.request is not None:
                threading.Thread(target=self._first_request, name="uniobs-request", daemon=True).start()

    def _run(self) -> None:
        deadline = time.monotonic() + self._timeout
        while not self._stop.is_set() and time.monotonic() < deadline:
            if attempt(self.probe):
                self.ok = True
                self._on_mark("probe_ok", time.monotonic_ns())
                if self.request is not None:
                    self._first_request()
                return
            self._stop.wait(POLL_S)

    def _first_request(self) -> None:
        assert self.request is not None
        self._on_mark("request_sent", time.monotonic_ns())
        status = http_get(self.request.host, self.request.port, self.request.path, self.request.status)
        if status is not None:
            self._on_mark("request_done", time.monotonic_ns())
