"""The contract between the invocation proxy and the owner of the instance behind it.

The proxy asks a `Gate` for an `Admission` before it forwards a request (HTTP) or a connection
(TCP). The fast path, `Gate.warm()`, must not block: it returns an admission when an instance is
running and ready. Otherwise the proxy calls `Gate.admit()` in a worker thread; it blocks while the
instance is launched (a cold start) or resumed from pause, and raises `Unavailable` if it cannot
be. When the invocation has ended the proxy calls `Gate.done()` (never blocks), so the owner knows
when the instance went idle.

`trace_id` / `span_id` are the invocation span's: a cold start launched for this invocation makes
its trace a child of that span (`ColdStart(trace_id=..., parent_span_id=...)`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol

from uniobs.model import Workload


class Unavailable(Exception):
    """The instance could not be made ready (launch failed, never ready, shutting down)."""


@dataclass(frozen=True, slots=True)
class Admission:
    """Where to forward one invocation, and what it paid before it could be forwarded."""

    host: str  # the upstream address: the guest's forwarded port, the container's address
    port: int
    workload: Workload | None  # the instance the invocation's telemetry is recorded on
    coldstart: bool = False  # the first invocation this instance serves (faas.coldstart)
    init_ns: int | None = None  # the instance's cold start (exec -> ready), when coldstart; None: unknown
    resumed_ns: int | None = None  # time spent resuming the instance from pause for this invocation
    launched: bool = False  # this invocation's arrival launched the instance (scale from zero)
    # it waited for a launch another invocation's arrival started: its latency includes part of that
    # cold start, but it is not the instance's cold invocation (no faas.coldstart, no Init Duration)
    waited_for_launch: bool = False


class Gate(Protocol):
    def warm(self) -> Admission | None:
        """An admission at once if an instance is ready; None if the caller must `admit()`. Never blocks."""
        ...

    def admit(self, trace_id: int, span_id: int) -> Admission:
        """Block until an instance is ready (launch or resume it); raises Unavailable."""
        ...

    def done(self, admission: Admission) -> None:
        """The invocation admitted with `admission` has ended. Never blocks."""
        ...


class FixedUpstream:
    """A gate for an instance someone else launched and keeps (`run --function`, `compare`): the
    first invocation it admits after `ready()` is the instance's cold one.

    `ready=False`: the instance is still starting; requests are held (`admit` blocks) until
    `ready()` is called, and raise Unavailable after `close()` (the instance ended before it was
    ready, or the run is ending).
    """

    def __init__(self, host: str, port: int, workload: Workload | None = None, *, ready: bool = True) -> None:
        self._admission = Admission(host, port, workload)
        self._first: Admission | None = None
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._closed = False
        if ready:
            self._ready.set()

    def ready(self, workload: Workload | None, init_ns: int | None) -> None:
        """The instance is ready; its first invocation will carry faas.coldstart and `init_ns`."""
        with self._lock:
            self._admission = Admission(self._admission.host, self._admission.port, workload)
            self._first = Admission(self._admission.host, self._admission.port, workload, True, init_ns)
        self._ready.set()

    def close(self) -> None:
        """No more admissions: requests held, and those to come, raise Unavailable."""
        self._closed = True
        self._ready.set()

    def warm(self) -> Admission | None:
        if self._closed or not self._ready.is_set():
            return None
        with self._lock:
            first, self._first = self._first, None
            return first or self._admission

    def admit(self, trace_id: int, span_id: int) -> Admission:
        self._ready.wait()
        admission = self.warm()
        if admission is None:
            raise Unavailable("the function is not running")
        return admission

    def done(self, admission: Admission) -> None:
        pass
