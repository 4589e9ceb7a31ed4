"""One finished invocation -> a SERVER span, `faas.*` metrics and a REPORT log record.

The proxy (`uniobs.invoke.proxy`) hands each finished invocation to an `InvocationRecorder`
(`submit`, which never blocks: a bounded queue, overflow counted in
`uniobs.invocation.unrecorded`); a thread of the recorder's own takes what is queued every 10 ms
and turns it into telemetry, in batches (counters once per batch, one bridge call per workload
and signal; spans and REPORTs only built when an exporter takes them), so the proxy's event loop
does no more than build one small record per request.

Per invocation, on the instance's resource (the admission's workload):

- a SERVER span named after the HTTP semantic conventions, `"{method} {http.route}"`, or
  `"{method}"` when no configured route matched (a TCP connection: the function's name), from the
  request's arrival to its response's last byte; a caller's `traceparent` makes it a child of the
  caller's span, in the caller's trace;
- `faas.invocations`, `faas.errors{error.type}`, `faas.timeouts` (cumulative counters),
  `faas.invoke_duration` (s) and `faas.mem_usage` (By) histograms (uniobs/metrics.py);
- a REPORT log record (event name `uniobs.invocation.report`), Lambda's words:

      REPORT RequestId: <id> Duration: 12.34 ms Billed Duration: 13 ms Memory Size: 1024 MB
      Max Memory Used: 88 MB Init Duration: 2571.02 ms

  (one line; `Init Duration` only for the invocation that paid the cold start; a figure not known
  is written `unknown`), with the same figures as attributes and the span's trace and span ids.

Memory (read on the recorder thread as the invocation's record is made, at most every 10 ms per
instance: a peak never decreases, so a reading is at most that stale; `None` when it cannot be
read, and then not recorded, never 0):
  Max Memory Used  the instance's peak so far, as Lambda's: a container's cgroup v2 `memory.peak`
                   (v1: `memory.max_usage_in_bytes`), a VM's VMM process `VmHWM` (/proc/PID/status).
  Memory Size      the configured size: a container's cgroup `memory.max` (v1:
                   `memory.limit_in_bytes`; "max" or the v1 no-limit figure: unknown); a QEMU VM's
                   `-m` (its /proc/PID/cmdline); else unknown.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from uniobs.metrics import ERROR_TYPE, FAAS_TRIGGER, INVOCATION_METRICS
from uniobs.model import Attributes, Kind, LogEvent, Sample, Severity, SpanEvent, Workload
from uniobs.telemetry import Telemetry

log = logging.getLogger("uniobs.invoke")

REPORT_EVENT = "uniobs.invocation.report"
# The peak is read at most this often per instance (a /proc/PID/status costs ~0.3 ms to generate
# here): an invocation ending sooner after the last reading reports that one, at most this stale.
PEAK_INTERVAL_NS = 10_000_000
POLL_S = 0.01  # how often the recorder's thread takes what the proxy queued
BATCH_SIZE = 64  # invocations handed to the bridge at once (the GIL is let go between batches)
SHAPES = 4_096  # span attribute sets kept for reuse (distinct paths, statuses, peers)
QUEUE_SIZE = 10_000  # invocations waiting to be recorded; past it they are counted, not queued
CGROUP_ROOT = "/sys/fs/cgroup"
_V1_NO_LIMIT = 1 << 62  # v1 memory.limit_in_bytes without a limit: PAGE_COUNTER_MAX pages, rounded; above is none


@dataclass(slots=True)
class Invocation:
    """What the proxy saw of one invocation. Times are monotonic ns (`time.monotonic_ns()`)."""

    invocation_id: str
    trace_id: int
    span_id: int
    parent_span_id: int  # the caller's span (its traceparent); 0: a root span
    start_ns: int  # the request's (connection's) arrival
    end_ns: int  # the response's last byte (the connection's close)
    workload: Workload | None
    trigger: str = "http"  # "http", or "other" for a TCP connection
    method: str = ""
    path: str = ""
    route: str | None = None
    status: int | None = None  # the response's status code as the client got it (None: none sent)
    error_type: str | None = None  # None: not an error
    timeout: bool = False
    coldstart: bool = False
    init_ns: int | None = None
    resumed_ns: int | None = None  # time the instance took to resume from pause for this invocation
    waited_for_launch: bool = False  # held for a launch another invocation started (see Admission)
    peer_address: str | None = None
    server_port: int | None = None
    protocol_version: str = ""  # "1.1", "1.0"


class InvocationRecorder:
    """Turns finished invocations into telemetry on a thread of its own.

    `telemetry`: the bridge the span, samples and REPORT go to; `function`: the function's name
    (a TCP invocation's span name, and the resource of invocations with no known workload);
    `server_port`: the public port (`server.port`), else each invocation's own.
    """

    def __init__(self, telemetry: Telemetry, *, function: str, server_port: int | None = None) -> None:
        self.telemetry = telemetry
        self.function = function
        self.server_port = server_port
        telemetry.declare(INVOCATION_METRICS, scope="uniobs.invoke")
        self._pending: collections.deque[Invocation] = collections.deque()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._dropped = 0
        self._counts: dict[tuple[tuple[str, str, str], str, tuple[tuple[str, str], ...]], int] = {}
        self._sizes: dict[tuple[str, str, str], int | None] = {}
        self._peak_sources: dict[tuple[str, str, str], tuple[int, bool]] = {}  # (fd, a /proc status file)
        self._peaks: dict[tuple[str, str, str], tuple[int, int | None]] = {}  # the last reading: (when, bytes)
        self._shapes: dict[tuple[object, ...], tuple[str, Attributes]] = {}  # see _span_shape
        self._closed = False
        # the workload of invocations no admission named one for: uniobs' proxy, named after the function
        self._fallback = Workload(Kind.PROCESS, "uniobs-proxy", f"{function}-proxy", name=function, pid=os.getpid())
        self._thread = threading.Thread(target=self._run, name="uniobs-invocations", daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        """Invocations not recorded because the queue was full."""
        return self._dropped

    def submit(self, invocation: Invocation) -> None:
        """Queue one finished invocation; never blocks, wakes no thread (a full queue: counted, dropped)."""
        if len(self._pending) >= QUEUE_SIZE:
            with self._lock:
                self._dropped += 1
                first = self._dropped == 1
            if first:
                log.warning("%s: invocations arrive faster than they can be recorded: some are not", self.function)
            return
        self._pending.append(invocation)  # deque.append is atomic: the proxy's loop never waits here

    def close(self) -> None:
        """Record what is queued, then stop the thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        self._thread.join()
        for fd, _ in self._peak_sources.values():
            if fd >= 0:
                os.close(fd)
        self._peak_sources.clear()

    def _run(self) -> None:
        # Drained every POLL_S rather than woken per invocation: no thread switch per request; what
        # is queued is recorded as one batch (one bridge call per workload and signal).
        while True:
            closing = self._closed
            while self._pending:
                batch: list[Invocation] = []
                while self._pending and len(batch) < BATCH_SIZE:
                    batch.append(self._pending.popleft())
                try:
                    self.record_batch(batch)
                except Exception:  # one bad batch must not stop the recording of the others
                    log.exception("%s: cannot record %d invocations", self.function, len(batch))
                time.sleep(0)  # let the proxy's loop have the GIL between batches (else up to the 5 ms switch interval)
            if closing:
                return
            self._wake.wait(POLL_S)

    # -- the telemetry of invocations

    def record(self, inv: Invocation) -> None:
        """The span, samples and REPORT of one invocation (called on the recorder's thread)."""
        self.record_batch([inv])

    def record_batch(self, invocations: Sequence[Invocation]) -> None:
        """The spans, samples and REPORTs of several invocations, handed to the bridge per workload:
        counters once per batch (their cumulative value), one histogram point per invocation; spans
        and REPORTs built only when an exporter takes traces / logs."""
        telemetry = self.telemetry
        spans, reports = telemetry.exports("traces"), telemetry.exports("logs")
        by_workload: dict[tuple[str, str, str], tuple[Workload, list[Sample], list[SpanEvent], list[LogEvent]]] = {}
        counts: dict[tuple[tuple[str, str, str], str, tuple[tuple[str, str], ...]], None] = {}
        last_end: dict[tuple[str, str, str], int] = {}
        keys: dict[int, tuple[str, str, str]] = {}
        for inv in invocations:
            workload = inv.workload or self._fallback
            key = keys.get(id(workload))
            if key is None:  # Workload.key reads an enum's value: once per workload and batch
                key = keys[id(workload)] = workload.key
            entry = by_workload.get(key)
            if entry is None:
                entry = by_workload[key] = (workload, [], [], [])
            samples = entry[1]
            trigger = (FAAS_TRIGGER, inv.trigger)
            duration_s = (inv.end_ns - inv.start_ns) / 1e9
            # no instance served it (it ended before one was ready): its memory is unknown, never uniobs' own
            peak = self._peak(workload, key) if inv.workload is not None else None
            attrs: tuple[tuple[str, str], ...] = (trigger,)
            samples.append(Sample("faas.invoke_duration", duration_s, attrs))
            counts[self._bump(key, "faas.invocations", attrs)] = None
            if inv.error_type is not None:
                counts[self._bump(key, "faas.errors", (trigger, (ERROR_TYPE, inv.error_type)))] = None
            if inv.timeout:
                counts[self._bump(key, "faas.timeouts", attrs)] = None
            if peak is not None:
                samples.append(Sample("faas.mem_usage", peak, attrs))
            if last_end.get(key, 0) < inv.end_ns:
                last_end[key] = inv.end_ns
            if spans:
                entry[2].append(self._span(inv))
            if reports:
                size = self._memory_size(workload, key) if inv.workload is not None else None
                entry[3].append(self._report(inv, duration_s, size, peak))
        for count_key in counts:
            by_workload[count_key[0]][1].append(Sample(count_key[1], self._counts[count_key], count_key[2]))
        dropped = self._dropped
        for key, (workload, samples, span_events, log_events) in by_workload.items():
            if dropped:
                samples.append(Sample("uniobs.invocation.unrecorded", dropped))
            telemetry.record(workload, samples, now_ns=telemetry.to_epoch_ns(last_end[key]))
            if span_events:
                telemetry.span_batch(workload, span_events)
            if log_events:
                telemetry.log_batch(workload, log_events)

    def _bump(
        self, workload_key: tuple[str, str, str], metric: str, attributes: tuple[tuple[str, str], ...]
    ) -> tuple[tuple[str, str, str], str, tuple[tuple[str, str], ...]]:
        key = (workload_key, metric, attributes)
        self._counts[key] = self._counts.get(key, 0) + 1
        return key

    def _peak(self, workload: Workload, key: tuple[str, str, str]) -> int | None:
        """max_memory_used(), from a descriptor kept open per instance: opening a /proc or cgroup
        file costs far more than reading it again (pread at 0 makes the kernel write it anew)."""
        source = self._peak_sources.get(key)
        if source is None:
            path = peak_source(workload)
            if path is None:
                return None
            try:
                source = self._peak_sources[key] = (os.open(path, os.O_RDONLY | os.O_CLOEXEC), path.endswith("/status"))
            except OSError:
                return None
        fd, status = source
        if fd < 0:
            return None
        now = time.monotonic_ns()
        last = self._peaks.get(key)
        if last is not None and now - last[0] < PEAK_INTERVAL_NS:
            return last[1]
        try:
            text = os.pread(fd, 8192, 0).decode("ascii", "replace")
        except OSError:  # the process or cgroup is gone
            os.close(fd)
            self._peak_sources[key] = (-1, status)
            return None
        peak = _vmhwm(text) if status else _int(text.strip()) or None
        self._peaks[key] = (now, peak)
        return peak

    def _memory_size(self, workload: Workload, key: tuple[str, str, str]) -> int | None:
        if key not in self._sizes:  # configured once, at the launch
            self._sizes[key] = memory_size(workload)
        return self._sizes[key]

    def _span(self, inv: Invocation) -> SpanEvent:
        port = self.server_port or inv.server_port
        shape = (inv.trigger, inv.method, inv.path, inv.route, inv.protocol_version, inv.status, inv.error_type,
                 port, inv.peer_address)  # fmt: skip
        known = self._shapes.get(shape)
        if known is None:
            known = self._shapes[shape] = self._span_shape(inv, port)
            if len(self._shapes) > SHAPES:  # bounded: the oldest shape goes
                del self._shapes[next(iter(self._shapes))]
        name, rest = known
        attrs: Attributes = (
            ("faas.trigger", inv.trigger), ("faas.invocation_id", inv.invocation_id), ("faas.coldstart", inv.coldstart),
            *rest,
        )  # fmt: skip
        if inv.resumed_ns is not None:
            attrs += (("uniobs.invocation.resume_duration", inv.resumed_ns / 1e9),)
        if inv.waited_for_launch:
            attrs += (("uniobs.invocation.waited_for_launch", True),)
        return SpanEvent(
            name, inv.trace_id, inv.span_id, inv.parent_span_id, inv.start_ns, inv.end_ns, attrs,
            error=inv.error_type, kind="server",
        )  # fmt: skip

    def _span_shape(self, inv: Invocation, port: int | None) -> tuple[str, Attributes]:
        """A span's name and the attributes that invocations of the same request and answer share
        (all but the id and faas.coldstart): made once per distinct shape, then looked up."""
        attrs: list[tuple[str, str | int | bool]] = []
        if port is not None:
            attrs.append(("server.port", port))
        if inv.peer_address:
            attrs.append(("network.peer.address", inv.peer_address))
        if inv.trigger == "http":
            name = f"{inv.method} {inv.route}" if inv.route else inv.method
            attrs += [("http.request.method", inv.method), ("url.path", inv.path), ("url.scheme", "http")]
            if inv.route:
                attrs.append(("http.route", inv.route))
            if inv.protocol_version:
                attrs.append(("network.protocol.version", inv.protocol_version))
        else:
            name = self.function
            attrs.append(("network.transport", "tcp"))
        if inv.status is not None:
            attrs.append(("http.response.status_code", inv.status))
        if inv.error_type is not None:
            attrs.append(("error.type", inv.error_type))
        return name, tuple(attrs)

    def _report(self, inv: Invocation, duration_s: float, size: int | None, peak: int | None) -> LogEvent:
        duration_ms = duration_s * 1e3
        billed_ms = max(1, math.ceil(duration_ms))  # Lambda bills each started millisecond
        body = (
            f"REPORT RequestId: {inv.invocation_id} Duration: {duration_ms:.2f} ms Billed Duration: {billed_ms} ms "
            f"Memory Size: {_mb(size)} Max Memory Used: {_mb(peak)}"
        )
        attrs: list[tuple[str, str | int | float | bool]] = [
            ("faas.invocation_id", inv.invocation_id),
            ("faas.coldstart", inv.coldstart),
            ("uniobs.invocation.duration", duration_s),
            ("uniobs.invocation.billed_duration", billed_ms / 1e3),
        ]
        if size is not None:
            attrs.append(("uniobs.invocation.memory_size", size))
        if peak is not None:
            attrs.append(("uniobs.invocation.max_memory_used", peak))
        if inv.coldstart:
            init = "unknown" if inv.init_ns is None else f"{inv.init_ns / 1e6:.2f} ms"
            body += f" Init Duration: {init}"
            if inv.init_ns is not None:
                attrs.append(("uniobs.invocation.init_duration", inv.init_ns / 1e9))
        if inv.waited_for_launch:
            attrs.append(("uniobs.invocation.waited_for_launch", True))
        if inv.resumed_ns is not None:
            body += f" Resume Duration: {inv.resumed_ns / 1e6:.2f} ms"
            attrs.append(("uniobs.invocation.resume_duration", inv.resumed_ns / 1e9))
        if inv.status is not None:
            attrs.append(("http.response.status_code", inv.status))
        if inv.error_type is not None:
            attrs.append(("error.type", inv.error_type))
        severity = Severity.WARN if inv.error_type is not None else Severity.INFO
        final: Attributes = tuple(attrs)
        return LogEvent(inv.end_ns, body, severity, final, REPORT_EVENT, inv.trace_id, inv.span_id)


def _mb(value: int | None) -> str:
    return "unknown" if value is None else f"{round(value / (1 << 20))} MB"


# -- the instance's memory


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def _cgroup_file(workload: Workload, v2_name: str, v1_name: str, root: str = CGROUP_ROOT) -> str | None:
    """A memory-controller file of the workload's cgroup: the unified hierarchy's (v2), else the
    v1 memory hierarchy's."""
    unified = workload.cgroups.get("", workload.cgroup)
    memory_v1 = workload.cgroups.get("memory", workload.cgroup)
    for base, path, name in (
        (root, unified, v2_name),  # pure v2: the root is the unified hierarchy
        (os.path.join(root, "unified"), unified, v2_name),  # hybrid
        (os.path.join(root, "memory"), memory_v1, v1_name),  # v1
    ):
        if path is None:
            continue
        text = _read(base + (path if path != "/" else "") + "/" + name)
        if text is not None:
            return text
    return None


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def peak_source(workload: Workload, root: str = CGROUP_ROOT, proc: str = "/proc") -> str | None:
    """The file the instance's peak memory is read from (see max_memory_used); None: none exists."""
    if workload.cgroup is not None or workload.cgroups:
        unified = workload.cgroups.get("", workload.cgroup)
        memory_v1 = workload.cgroups.get("memory", workload.cgroup)
        for base, path, name in (
            (root, unified, "memory.peak"),  # pure v2: the root is the unified hierarchy
            (os.path.join(root, "unified"), unified, "memory.peak"),  # hybrid
            (os.path.join(root, "memory"), memory_v1, "memory.max_usage_in_bytes"),  # v1
        ):
            if path is not None:
                candidate = base + (path if path != "/" else "") + "/" + name
                if os.path.exists(candidate):
                    return candidate
    if workload.pid is not None and workload.kind is not Kind.CONTAINER:
        candidate = f"{proc}/{workload.pid}/status"
        if os.path.exists(candidate):
            return candidate
    return None


def _vmhwm(status: str) -> int | None:
    for line in status.splitlines():
        if line.startswith("VmHWM:"):  # "VmHWM:   123456 kB"
            fields = line.split()
            kib = _int(fields[1]) if len(fields) > 1 else None
            return kib * 1024 if kib else None
    return None


def max_memory_used(workload: Workload, root: str = CGROUP_ROOT, proc: str = "/proc") -> int | None:
    """The instance's peak memory so far, bytes (Lambda's Max Memory Used); None: not readable.

    A container (or any workload with a cgroup): cgroup v2 `memory.peak` (kernel >= 5.19), v1
    `memory.max_usage_in_bytes` (Documentation/admin-guide/cgroup-v{1,2}); a VM without a cgroup:
    its VMM process's `VmHWM` (proc(5)), which includes the guest's RAM that was touched.
    """
    path = peak_source(workload, root, proc)
    text = _read(path) if path is not None else None
    if text is None:
        return None
    return _vmhwm(text) if path is not None and path.endswith("/status") else _int(text) or None


def memory_size(workload: Workload, root: str = CGROUP_ROOT, proc: str = "/proc") -> int | None:
    """The instance's configured memory, bytes; None: unknown.

    A cgroup's `memory.max` (v1 `memory.limit_in_bytes`; "max", or v1's no-limit figure: unknown);
    a QEMU VM (no cgroup limit): its `-m` option, from /proc/PID/cmdline (QEMU's default, 128 MiB,
    when there is no -m).
    """
    if workload.cgroup is not None or workload.cgroups:
        limit = _int(_cgroup_file(workload, "memory.max", "memory.limit_in_bytes", root))
        if limit is not None and limit < _V1_NO_LIMIT:
            return limit
    if workload.pid is not None and workload.kind is Kind.UNIKERNEL and workload.runtime == "qemu":
        try:
            with open(f"{proc}/{workload.pid}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            return None
        return qemu_memory(argv)
    return None


_SUFFIX: dict[str, int] = {"": 1 << 20, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "K": 1 << 10, "B": 1}


def qemu_memory(argv: list[str]) -> int | None:
    """The guest RAM a QEMU command line configures, bytes: `-m 1024`, `-m 1G`, `-m size=2G,...`
    (a bare number is MiB; docs/system/invocation: -m); 128 MiB without -m (QEMU's default)."""
    value: str | None = None
    for i, arg in enumerate(argv[:-1]):
        if arg in ("-m", "--m"):
            value = argv[i + 1]
    if value is None:
        return 128 << 20
    for part in value.split(","):
        if "=" in part:
            key, _, part = part.partition("=")
            if key != "size":
                continue
        part = part.strip().upper()
        suffix = part[-1] if part and part[-1] in _SUFFIX and not part[-1].isdigit() else ""
        number = part[:-1] if suffix else part
        try:
            return int(float(number) * _SUFFIX[suffix])
        except ValueError:
            return None
    return None
