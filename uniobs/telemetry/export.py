"""Delivery: one byte budget for all that is held, a queue and a thread per exporter and signal,
the OTLP specification's retry rules, and exact sent / failed / dropped accounting."""

from __future__ import annotations

import enum
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.metrics.export import (
    MetricExportResult,
)
from opentelemetry.sdk.trace.export import SpanExportResult

from uniobs.model import LogEvent
from uniobs.plugin import ExportError, ExporterSinks

log = logging.getLogger("uniobs.telemetry")

SIGNALS = ("metrics", "logs", "traces")
DEFAULT_BUFFER_BYTES = 32 << 20  # [uniobs] buffer_bytes


# --- the export buffer: one byte budget, shared batches, a queue per exporter and signal ------

# What a buffered item costs in memory, beyond a log body's own string. Measured with
# tracemalloc on CPython 3.11 (bench/flood_bench.py prints it again): a console line's LogEvent,
# its attributes and its place in a batch take ~290 bytes besides the body. Spans and data
# points are estimated the same way; the estimate only has to be the right size, not exact.
LOG_RECORD_OVERHEAD = 300
ATTRIBUTE_COST = 120
SPAN_COST = 2_000
POINT_COST = 400
# A logs batch is also sealed once charged this much, whatever export_batch_size says: a record's
# charge (above) exceeds its OTLP encoding, so the request stays under a receiver's default 4 MiB
# (16 KiB console lines, or a raised export_batch_size, would pass it otherwise).
LOGS_BATCH_COST = 3 << 20


def log_cost(event: LogEvent) -> int:
    """Bytes one buffered log record costs (its body's str plus the measured overhead)."""
    return sys.getsizeof(event.body) + LOG_RECORD_OVERHEAD + ATTRIBUTE_COST * len(event.attributes)


class Batch:
    """Items of one signal, held once in memory however many exporters take them.

    `payload` is what the signal's converter turns into SDK objects just before each export
    (log records are kept compact until then). `holders` are the queues that still have to
    deliver it; the batch's bytes are released when the last one is done with it.
    """

    __slots__ = ("evicted", "holders", "inflight", "items", "payload", "signal", "size")

    def __init__(self, signal: str, payload: Any, items: int, size: int) -> None:
        self.signal = signal
        self.payload = payload
        self.items = items
        self.size = size
        self.holders: set[SignalQueue] = set()
        self.inflight = 0
        self.evicted = False


class ExportOutcome(enum.Enum):
    SENT = "sent"
    RETRY = "retry"
    FAILED = "failed"


def classify(result: Any) -> tuple[ExportOutcome, str, float | None]:
    """What a sink's answer means: (outcome, reason, seconds to wait before retrying).

    A sink says why it failed by raising `ExportError` (the OTLP exporters follow the OTLP
    specification's retryable codes). A bare FAILURE from an SDK exporter comes after that
    exporter's own retries: final. An OSError (a file system full, a socket refused) may pass.
    """
    if isinstance(result, ExportError):
        outcome = ExportOutcome.RETRY if result.retryable else ExportOutcome.FAILED
        return outcome, result.reason, result.retry_after
    if isinstance(result, OSError):
        return ExportOutcome.RETRY, f"{type(result).__name__}: {result}", None
    if isinstance(result, BaseException):
        return ExportOutcome.FAILED, f"{type(result).__name__}: {result}", None
    if result in _OK:
        return ExportOutcome.SENT, "", None
    return ExportOutcome.FAILED, f"the exporter reported {getattr(result, 'name', result)}", None


@dataclass
class ExporterStats:
    """Per exporter and signal, final outcomes: every item handed over ends in exactly one of
    sent, failed (the backend refused it, gave no retryable answer, or was still failing when
    uniobs stopped) or dropped (the budget made room for newer data, or shutdown came before a
    healthy exporter could send it). `queued` is what is still held."""

    sent: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SIGNALS, 0))
    failed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SIGNALS, 0))
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SIGNALS, 0))
    retries: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SIGNALS, 0))
    errors: dict[str, str] = field(default_factory=dict)  # signal -> the last failure's reason
    failing: set[str] = field(default_factory=set)  # signals whose last attempt failed
    failing_since: dict[str, float] = field(default_factory=dict)  # signal -> monotonic s of its first failure in a row
    last_error: str = ""

    @property
    def healthy(self) -> bool:
        return not self.failing

    def undelivered(self) -> dict[str, dict[str, int]]:
        """{signal: {"failed": n, "dropped": n}} for the signals that lost anything."""
        out = {}
        for signal in SIGNALS:
            lost = {k: v for k, v in (("failed", self.failed[signal]), ("dropped", self.dropped[signal])) if v}
            if lost:
                out[signal] = lost
        return out


_OK = (MetricExportResult.SUCCESS, LogRecordExportResult.SUCCESS, SpanExportResult.SUCCESS)


class ExportBuffer:
    """Everything held for export, under one byte budget shared by all exporters.

    Batches are kept in the order they were made. A new batch that would exceed the budget makes
    room by dropping the oldest batches that are not being sent at that moment — after an outage
    the newest data is the most useful — counted as dropped for each exporter that had not
    delivered them yet. One condition guards the buffer, every queue and every counter: the I/O
    thread, the scrape loop and the export threads only ever meet here.
    """

    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self.used = 0
        self.peak = 0
        self.cond = threading.Condition()
        self._batches: deque[Batch] = deque()
        self.handed = dict.fromkeys(SIGNALS, 0)  # items handed to the exporters, per signal

    def add(self, batch: Batch, queues: Sequence[SignalQueue]) -> None:
        """Hand a batch to queues (the exporters taking its signal). Never blocks."""
        if not queues:
            return
        with self.cond:
            self.handed[batch.signal] += batch.items
            self._make_room(batch.size)
            batch.holders = set(queues)
            self._batches.append(batch)
            self.used += batch.size
            self.peak = max(self.peak, self.used)
            for queue in queues:
                queue.enqueue(batch)
            self.cond.notify_all()

    def _make_room(self, size: int) -> None:
        while self._batches and (self._batches[0].evicted or not self._batches[0].holders):
            self._batches.popleft()
        if self.used + size <= self.budget:
            return
        for batch in list(self._batches):
            if self.used + size <= self.budget:
                break
            if batch.inflight or batch.evicted or not batch.holders:
                continue
            for queue in batch.holders:
                queue.stats.dropped[batch.signal] += batch.items
                queue.held -= batch.items
            self._free(batch)
            batch.evicted = True

    def done(self, batch: Batch, queue: SignalQueue) -> None:
        """`queue` is finished with `batch` (delivered or given up). Call with `cond` held."""
        batch.holders.discard(queue)
        queue.held -= batch.items
        if not batch.holders and not batch.evicted:
            self._free(batch)

    def _free(self, batch: Batch) -> None:
        self.used -= batch.size
        batch.payload = None  # the memory goes now, whoever still points at the batch
        batch.holders = set()


class SignalQueue:
    """Delivers one signal to one exporter, on its own thread, so one signal's trouble (a backend
    answering 405 to metrics, a slow trace endpoint) never delays another's.

    A retryable failure keeps the batch at the head and waits (doubling from `retry_initial` to
    `retry_max` seconds, or what the backend's Retry-After / RetryInfo asked); anything else
    gives the batch up at once, counted as failed with its reason. 0 for `retry_initial` turns
    retries off.
    """

    def __init__(
        self, exporter: str, signal: str, sink: Any, convert: Callable[[Any], Any], buffer: ExportBuffer,
        stats: ExporterStats, retry_initial: float, retry_max: float,
    ) -> None:  # fmt: skip
        self.exporter = exporter
        self.signal = signal
        self.sink = sink
        self.stats = stats
        self.held = 0  # items queued here, not yet delivered or given up
        self._convert = convert
        self._buffer = buffer
        self._cond = buffer.cond
        self._queue: deque[Batch] = deque()
        self._retry_initial = retry_initial
        self._retry_max = max(retry_max, retry_initial)
        self._backoff = 0.0
        self._not_before = 0.0
        self._busy = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"uniobs-export-{exporter}-{signal}", daemon=True)
        self._thread.start()

    def enqueue(self, batch: Batch) -> None:  # with cond held (ExportBuffer.add)
        if self._closed:
            self.stats.dropped[self.signal] += batch.items
            batch.holders.discard(self)
            return
        self._queue.append(batch)
        self.held += batch.items

    def depth(self) -> int:
        return sum(1 for batch in self._queue if not batch.evicted)

    def idle(self) -> bool:  # with cond held
        return not self._busy and self.depth() == 0

    def _next(self) -> Batch | None:
        """The batch to send now, waiting for one (and for a back-off to pass). None: closed."""
        with self._cond:
            while True:
                while self._queue and self._queue[0].evicted:
                    self._queue.popleft()  # counted as dropped when it was evicted
                if self._closed:
                    return None
                wait = self._not_before - time.monotonic()
                if self._queue and wait <= 0:
                    batch = self._queue[0]
                    batch.inflight += 1
                    self._busy = True
                    return batch
                self._cond.wait(wait if self._queue else None)

    def _run(self) -> None:
        while (batch := self._next()) is not None:
            try:
                result: Any = self.sink.export(self._convert(batch.payload))
            except Exception as exc:  # an exporter must not take the pipeline down
                result = exc
            outcome, reason, retry_after = classify(result)
            with self._cond:
                if outcome is ExportOutcome.RETRY and (self._retry_initial <= 0 or self._closed):
                    outcome = ExportOutcome.FAILED
                batch.inflight -= 1
                self._busy = False
                if outcome is ExportOutcome.RETRY:
                    self.stats.retries[self.signal] += 1
                    self._backoff = min(self._retry_max, self._backoff * 2 or self._retry_initial)
                    self._not_before = time.monotonic() + (retry_after if retry_after is not None else self._backoff)
                    self._report(reason, f"retrying in {self._not_before - time.monotonic():.1f}s")
                else:
                    if self._queue and self._queue[0] is batch:
                        self._queue.popleft()
                    if not batch.evicted:
                        refused = batch.items
                        if isinstance(result, ExportError) and result.rejected is not None:
                            refused = min(batch.items, max(0, result.rejected))  # a partial success
                        if outcome is ExportOutcome.SENT:
                            self.stats.sent[self.signal] += batch.items
                        else:
                            self.stats.sent[self.signal] += batch.items - refused
                            self.stats.failed[self.signal] += refused
                            self._report(reason, f"{refused} items lost")
                        self._buffer.done(batch, self)
                    if outcome is ExportOutcome.SENT:
                        if self.signal in self.stats.failing:
                            log.warning("exporter %s: delivering %s again", self.exporter, self.signal)
                        self.stats.failing.discard(self.signal)
                        self.stats.failing_since.pop(self.signal, None)
                        self._backoff = 0.0
                        self._not_before = 0.0
                self._cond.notify_all()

    def _report(self, reason: str, what: str) -> None:
        """Log a failure once per change of reason (with cond held)."""
        if self.stats.errors.get(self.signal) != reason or self.signal not in self.stats.failing:
            log.error("exporter %s: %s export failed, %s: %s", self.exporter, self.signal, what, reason)
        self.stats.errors[self.signal] = reason
        self.stats.failing.add(self.signal)
        self.stats.failing_since.setdefault(self.signal, time.monotonic())
        self.stats.last_error = reason

    def close(self) -> None:
        """Stop (with cond held): what is still queued is counted, failed if the backend was
        failing (its reason stays the last error), else dropped; a batch being sent now is settled
        by the thread when its answer comes."""
        self._closed = True
        inflight = self._queue[0] if self._busy and self._queue else None
        lost = self.stats.failed if self.signal in self.stats.failing else self.stats.dropped
        for batch in self._queue:
            if batch is not inflight and not batch.evicted and self in batch.holders:
                lost[self.signal] += batch.items
                self._buffer.done(batch, self)
        self._queue = deque([inflight]) if inflight is not None else deque()
        self._cond.notify_all()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


class ExportWorker:
    """One exporter: a queue and a thread for each signal it takes, and its counters."""

    def __init__(
        self, name: str, sinks: ExporterSinks, buffer: ExportBuffer, converters: Mapping[str, Callable[[Any], Any]],
        retry_initial: float = 1.0, retry_max: float = 30.0,
    ) -> None:  # fmt: skip
        self.name = name
        self.sinks = sinks
        self.stats = ExporterStats()
        self._buffer = buffer
        self.queues: dict[str, SignalQueue] = {}
        for signal, sink in (("metrics", sinks.metrics), ("logs", sinks.logs), ("traces", sinks.spans)):
            if sink is not None:
                self.queues[signal] = SignalQueue(
                    name, signal, sink, converters[signal], buffer, self.stats, retry_initial, retry_max
                )

    def depth(self) -> int:
        with self._buffer.cond:
            return sum(queue.depth() for queue in self.queues.values())

    def queued_items(self) -> int:
        with self._buffer.cond:
            return sum(queue.held for queue in self.queues.values())

    def drain(self, deadline: float) -> bool:
        """Wait until everything handed over so far is delivered or given up; False on timeout."""
        with self._buffer.cond:
            while not all(queue.idle() for queue in self.queues.values()):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._buffer.cond.wait(min(left, 0.1))
            return True

    def close(self, deadline: float) -> None:
        self.drain(deadline)
        with self._buffer.cond:
            for queue in self.queues.values():
                queue.close()
        for queue in self.queues.values():
            queue.join(max(0.1, deadline - time.monotonic() + 1))
        for sink in {id(s): s for s in (self.sinks.metrics, self.sinks.logs, self.sinks.spans) if s}.values():
            try:
                sink.shutdown(**({"timeout_millis": 1000} if sink is self.sinks.metrics else {}))
            except Exception as exc:
                log.debug("exporter %s: shutdown: %s", self.name, exc)
