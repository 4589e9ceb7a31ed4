"""`uniobs attach`: observe a running workload without restarting it, until it exits or we stop."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

from uniobs.host.procfs import ProcError, ProcFS
from uniobs.metrics import LIFECYCLE_METRICS
from uniobs.model import LogEvent, Workload
from uniobs.pipeline import Pipeline
from uniobs.scheduler import WATCH_INTERVAL_S, Scheduler

log = logging.getLogger("uniobs.run")


class Attacher:
    """`uniobs attach`: observe a running VMM without restarting it, until it exits or we are stopped."""

    def __init__(self, pipeline: Pipeline, workload: Workload, *, interval: float | None = None) -> None:
        self.pipeline = pipeline
        self.workload = workload
        self.interval = interval  # for collectors that set none; None: [uniobs] interval, else 1 s
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> str:
        """Returns why it ended: "exited" (the VMM is gone) or "stopped" (we were interrupted)."""
        pipeline, workload = self.pipeline, self.workload
        pipeline.telemetry.declare(LIFECYCLE_METRICS, scope="uniobs.lifecycle")
        pipeline.telemetry.log(workload, LogEvent(time.monotonic_ns(), "attached", event_name="uniobs.attached"))
        pipeline.start_streams(workload)
        old = {s: signal.signal(s, lambda *_: self._stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
        scheduler = Scheduler(pipeline, interval=self.interval, default_interval=WATCH_INTERVAL_S)
        try:
            while not self._stop.is_set():
                scheduler.tick([workload])  # every collector at once, then each on its interval
                if not _alive(workload.pid):  # checked at every wake-up, at least each second
                    break
                self._stop.wait(scheduler.wait_s())
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
        ended = "stopped" if self._stop.is_set() and _alive(workload.pid) else "exited"
        pipeline.stop_streams(workload, timeout=2.0)
        pipeline.snapshot_streams(workload)
        pipeline.telemetry.log(
            workload,
            LogEvent(
                time.monotonic_ns(),
                f"detached: {ended}",
                event_name=f"uniobs.{ended if ended == 'exited' else 'detached'}",
            ),
        )
        return ended


def _alive(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (our own exited child) counts as gone
    try:
        return ProcFS().is_alive(pid)
    except (ProcError, OSError):
        return False
