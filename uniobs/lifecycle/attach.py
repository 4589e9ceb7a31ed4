"""`uniobs attach`: observe a running workload without restarting it, until it exits or we stop."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

from uniobs.lifecycle.run import LIFECYCLE_METRICS
from uniobs.model import LogEvent, Workload
from uniobs.pipeline import Pipeline

log = logging.getLogger("uniobs.run")


class Attacher:
    """`uniobs attach`: observe a running VMM without restarting it, until it exits or we are stopped."""

    def __init__(self, pipeline: Pipeline, workload: Workload, *, interval: float = 1.0) -> None:
        self.pipeline = pipeline
        self.workload = workload
        self.interval = interval
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
        export_every = pipeline.settings.core.export_interval
        next_export = time.monotonic() + export_every
        try:
            while not self._stop.is_set():
                pipeline.scrape([workload])
                if not _alive(workload.pid):
                    break
                if time.monotonic() >= next_export:
                    pipeline.telemetry.flush(timeout=0.1)
                    next_export = time.monotonic() + export_every
                self._stop.wait(self.interval)
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
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False
