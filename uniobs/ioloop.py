"""One I/O thread for every stream uniobs reads (consoles, QMP event channels, pipes).

Streams are many and mostly idle; a thread each would not scale to a host of functions. The
loop waits on a selector and calls each stream's handler when its descriptor is readable,
with the monotonic time taken right after the wait returned: that is the arrival time of the
bytes the handler then reads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import threading
import time
from collections.abc import Callable

log = logging.getLogger("uniobs.ioloop")

# handler(fd, arrival_ns) -> False to be unregistered (EOF, error)
Handler = Callable[[int, int], bool]


class IoLoop:
    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._pending: list[Callable[[], None]] = []
        self._timers: list[tuple[float, float, Callable[[int], bool]]] = []  # (due, period, fn)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> IoLoop:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="uniobs-io", daemon=True)
            self._thread.start()
        return self

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run fn on the loop's thread."""
        with self._lock:
            self._pending.append(fn)
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass  # already awake

    def add_reader(self, fd: int, handler: Handler) -> None:
        """Call handler(fd, arrival_ns) whenever fd is readable, until it returns False."""
        os.set_blocking(fd, False)

        def register() -> None:
            try:
                self._selector.register(fd, selectors.EVENT_READ, handler)
            except KeyError:
                # The number is still registered for a descriptor closed without remove_reader,
                # and reused: the new one must be read, not refused (it would be read only at its end).
                self._selector.unregister(fd)
                self._selector.register(fd, selectors.EVENT_READ, handler)

        self.call_soon(register)

    def remove_reader(self, fd: int) -> None:
        def remove() -> None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(fd)

        self.call_soon(remove)

    def every(self, period_s: float, fn: Callable[[int], bool]) -> None:
        """Call fn(now_ns) every period (for sources that cannot be selected, e.g. a growing file)."""
        self.call_soon(lambda: self._timers.append((time.monotonic() + period_s, period_s, fn)))

    def _run(self) -> None:
        while not self._stopping:
            timeout = None
            if self._timers:
                timeout = max(0.0, min(t[0] for t in self._timers) - time.monotonic())
            events = self._selector.select(timeout)
            arrival = time.monotonic_ns()
            for key, _ in events:
                if key.fd == self._wake_r:
                    try:
                        while os.read(self._wake_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
                    continue
                self._dispatch(key.fd, key.data, arrival)
            with self._lock:
                pending, self._pending = self._pending, []
            for call in pending:
                try:
                    call()
                except (KeyError, ValueError, OSError) as exc:
                    log.debug("io loop: %s", exc)
            if self._timers:
                now = time.monotonic()
                keep = []
                for due, period, fn in self._timers:
                    if due <= now:
                        if not self._safe(fn, time.monotonic_ns()):
                            continue
                        due = now + period
                    keep.append((due, period, fn))
                self._timers = keep

    def _dispatch(self, fd: int, handler: Handler, arrival: int) -> None:
        try:
            keep = handler(fd, arrival)
        except Exception:
            log.exception("io loop: a stream handler failed; the stream is dropped")
            keep = False
        if not keep:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(fd)

    @staticmethod
    def _safe(fn: Callable[[int], bool], now: int) -> bool:
        try:
            return fn(now)
        except Exception:
            log.exception("io loop: a timer failed; it is dropped")
            return False

    def stop(self, timeout: float = 2.0) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout)
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
