"""The scheduler: when each collector runs, how long one `collect()` may take, and when the
accumulated telemetry is handed to the exporters. `agent`, `run` and `attach` all loop over it:

    scheduler = Scheduler(pipeline, interval=flag)
    while not stop:
        scheduler.tick(workloads)
        wait(scheduler.wait_s())

**Intervals.** A collector runs every `[collectors.NAME] interval` seconds. One that sets none
runs at the command's interval: `--interval` (`run`, `attach`), else `[uniobs] interval`, else
the command's own default (10 s for the agent, 1 s for `run` and `attach`, which watch one
short-lived function). Every collector is due at the first tick. A tick that comes late does
not make up missed scrapes: the next one is an interval after the late one.

**A bound on each call.** `collect()` calls run on a few worker threads (`CollectPool`), never
one per workload: a tick hands one collector's workloads to one worker, which makes the calls in
turn while the tick waits, each call bounded by the collector's `timeout`. A thread cannot be
interrupted, so a call that runs past it is abandoned where it is: the tick carries on with the
rest on another worker, and while that call has not returned, that (collector, workload) is
skipped at its next scrapes instead of piling up threads. The pipeline counts both as
`uniobs.collector.errors{error.type="timeout"}`. If hung calls ever hold every worker, the
calls that cannot start are counted the same way.

**Export and retirement.** Every `[uniobs] export_interval` the tick hands what accumulated to
the exporters' queues without waiting on a backend (`telemetry.flush(timeout=0)`), and every
tick ends vanished workloads whose console streams have finished (`Pipeline.settle`).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from uniobs.model import Workload

if TYPE_CHECKING:
    from uniobs.pipeline import Pipeline
    from uniobs.plugin import Collector

log = logging.getLogger("uniobs.scheduler")

AGENT_INTERVAL_S = 10.0  # the agent's interval for collectors that set none, without [uniobs] interval
WATCH_INTERVAL_S = 1.0  # the same for `run` and `attach`, which follow one (often short-lived) workload
MAX_WAIT_S = 1.0  # a front-end wakes at least this often: signals, exits, its own duties
COLLECT_WORKERS = 4  # threads for collect() calls: one at work, the others for calls that hang

T = TypeVar("T")
R = TypeVar("R")


class CollectTimeout(Exception):
    """A collect() call did not return within the collector's timeout, or could not start."""


@dataclass(slots=True)
class Outcome(Generic[R]):
    """What one bounded call gave: its value, or what it raised (CollectTimeout if abandoned)."""

    value: R | None = None
    error: BaseException | None = None


@dataclass(eq=False)
class _Batch(Generic[T, R]):
    fn: Callable[[T], R]
    key: Callable[[T], Hashable]
    items: Sequence[T]
    started: float  # when the current call (items[done]) started
    done: int = 0  # calls that returned; items[done] is the one being made
    outcomes: list[Outcome[R]] = field(default_factory=list)
    finished: bool = False
    abandoned: bool = False  # the caller gave up on items[done]


class _Worker(threading.Thread):
    def __init__(self, pool: CollectPool, number: int) -> None:
        super().__init__(name=f"uniobs-collect-{number}", daemon=True)  # a hung call never holds up exit
        self.pool = pool
        self.batch: _Batch[Any, Any] | None = None

    def run(self) -> None:
        pool, cond = self.pool, self.pool._cond
        while True:
            with cond:
                while self.batch is None and not pool._closed:
                    cond.wait()
                batch = self.batch
                if batch is None:  # closed
                    pool._live -= 1
                    return
            self._work(batch)
            with cond:
                self.batch = None
                if pool._closed:
                    pool._live -= 1
                    return
                pool._idle.append(self)
                cond.notify_all()

    def _work(self, batch: _Batch[Any, Any]) -> None:
        pool, cond, clock = self.pool, self.pool._cond, self.pool._clock
        items, fn = batch.items, batch.fn
        with cond:
            if batch.abandoned:  # given up before this worker got to it: the call is not made
                pool._returned(batch, items[batch.done])
                return
            done = batch.done
            batch.started = clock()
        while done < len(items):
            item = items[done]
            try:
                outcome: Outcome[Any] = Outcome(fn(item))
            except Exception as exc:
                outcome = Outcome(error=exc)
            with cond:  # one lock round per call: its result in, the next one's deadline set
                if batch.abandoned:  # the caller has moved on: a late return, dropped
                    pool._returned(batch, item)
                    return
                batch.outcomes.append(outcome)
                done = batch.done = done + 1
                batch.started = clock()
        with cond:
            batch.finished = True
            cond.notify_all()


class CollectPool:
    """A few threads that make `collect()` calls, each bounded in time (see the module's doc).

    `run(fn, items, timeout, key)` makes `fn(item)` for each item, in order, on one worker while
    the caller waits, and returns one `Outcome` per item. A call still running `timeout` seconds
    after it started is abandoned (its outcome is a CollectTimeout) and its `key` is `hung()` until
    it returns; the rest of the items go to another worker. So calls are made one at a time,
    except beside abandoned ones.
    """

    def __init__(self, workers: int = COLLECT_WORKERS, clock: Callable[[], float] = time.monotonic) -> None:
        if workers < 1:
            raise ValueError("workers: must be >= 1")
        self.workers = workers
        self._clock = clock
        self._cond = threading.Condition(threading.Lock())
        self._idle: list[_Worker] = []
        self._live = 0  # threads alive: idle, at work, or held by an abandoned call
        self._spawned = 0
        self._hung: dict[Hashable, tuple[float, _Batch[Any, Any]]] = {}  # key -> (its call's start, batch)
        self._closed = False

    def hung(self, key: Hashable) -> float | None:
        """Seconds the abandoned call for `key` has been running, or None if there is none."""
        with self._cond:
            hung = self._hung.get(key)
        return None if hung is None else self._clock() - hung[0]

    def hung_keys(self) -> set[Hashable]:
        """The keys whose abandoned call has not returned yet."""
        with self._cond:
            return set(self._hung)

    def held(self) -> int:
        """Workers held by abandoned calls that have not returned yet."""
        with self._cond:
            return len(self._hung)

    def threads(self) -> int:
        """Worker threads alive."""
        with self._cond:
            return self._live

    def run(
        self, fn: Callable[[T], R], items: Sequence[T], timeout: float, key: Callable[[T], Hashable]
    ) -> list[Outcome[R]]:
        outcomes: list[Outcome[R]] = []
        rest = list(items)
        while rest:
            with self._cond:
                batch = _Batch(fn, key, rest, self._clock())
                worker = self._take_worker()
                if worker is None:
                    why = f"not started: all {self.workers} collect workers are held by calls that did not return"
                    outcomes += [Outcome(error=CollectTimeout(why)) for _ in rest]
                    break
                worker.batch = batch
                if not worker.is_alive():
                    worker.start()
                self._cond.notify_all()
                while not batch.finished:
                    left = batch.started + timeout - self._clock()
                    if left <= 0:
                        batch.abandoned = True
                        self._hung[key(rest[batch.done])] = (batch.started, batch)
                        break
                    self._cond.wait(left)
            outcomes += batch.outcomes
            if not batch.abandoned:
                break
            why = f"collect() did not return within {timeout:g} s; not called again until it does"
            outcomes.append(Outcome(error=CollectTimeout(why)))
            rest = rest[batch.done + 1 :]
        return outcomes

    def _returned(self, batch: _Batch[Any, Any], item: object) -> None:  # with _cond held
        key = batch.key(item)
        hung = self._hung.get(key)
        if hung is not None and hung[1] is batch:
            del self._hung[key]
            log.debug("an abandoned call returned after %.1f s", self._clock() - hung[0])

    def _take_worker(self) -> _Worker | None:  # with _cond held
        if self._idle:
            return self._idle.pop()
        if self._live >= self.workers:
            return None
        self._live += 1
        self._spawned += 1
        return _Worker(self, self._spawned)

    def close(self) -> None:
        """Idle workers end now; one held by an abandoned call ends when the call returns."""
        with self._cond:
            self._closed = True
            self._idle.clear()
            self._cond.notify_all()


class Scheduler:
    """When each of a pipeline's collectors scrapes, and when telemetry is handed over.

    `interval` is the command's `--interval`: the interval of collectors that set none, before
    `[uniobs] interval`; `default_interval` applies when neither is set. `clock` is injectable
    for tests.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        interval: float | None = None,
        default_interval: float = AGENT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pipeline = pipeline
        core = pipeline.settings.core
        self.interval = interval or core.interval or default_interval
        self.export_interval = core.export_interval
        self._clock = clock
        now = clock()
        self._intervals: dict[str, float] = {}
        self._due: dict[str, float] = {}
        for collector in pipeline.collectors:
            self._intervals[collector.name] = self.interval_of(collector)
            self._due[collector.name] = now
        self._anchored = False  # every collector scrapes at the first tick, and keeps its phase from there
        self._next_export = now + self.export_interval

    def interval_of(self, collector: Collector) -> float:
        """The collector's own interval, else the command's. A collector that set none is given
        the one it runs at (so its `config.interval` tells the truth to the collector itself)."""
        if collector.config.interval is None:
            collector.config = dataclasses.replace(collector.config, interval=self.interval)
        return collector.config.interval or self.interval

    def due(self, now: float | None = None) -> list[Collector]:
        """The collectors due at `now`, each rescheduled an interval later."""
        now = self._clock() if now is None else now
        if not self._anchored:
            self._anchored = True
            self._due = dict.fromkeys(self._due, now)
        due = []
        for collector in self.pipeline.collectors:
            name = collector.name
            if name not in self._due:  # added after the start
                self._intervals[name] = self.interval_of(collector)
                self._due[name] = now
            if self._due[name] <= now:
                due.append(collector)
                following = self._due[name] + self._intervals[name]
                self._due[name] = following if following > now else now + self._intervals[name]
        return due

    def tick(self, workloads: Iterable[Workload]) -> int:
        """Scrape what is due, end what has settled, hand over telemetry when it is time.
        Returns the number of samples collected."""
        now = self._clock()
        due = self.due(now)
        samples = self.pipeline.scrape(workloads, due) if due else 0
        if not due:
            self.pipeline.settle()  # vanished workloads whose consoles have read their backlog
        if now >= self._next_export:
            self.pipeline.telemetry.flush(timeout=0.0)  # hand over; never wait on a backend here
            self._next_export = now + self.export_interval
        return samples

    def next_at(self) -> float:
        """When the next scrape or hand-over is due (the scheduler's clock)."""
        return min([self._next_export, *self._due.values()])

    def wait_s(self, cap: float = MAX_WAIT_S) -> float:
        """How long a front-end may sleep before the next tick: until something is due, at most `cap`."""
        return max(0.0, min(self.next_at() - self._clock(), cap))
