"""The command `uniobs run` launches, as a child process whose exit's resource usage is kept.

`wait4()` returns, with the exit status, the child's resource usage: its CPU time in user and
system mode and its peak resident set size (`ru_maxrss`), the process's own plus that of the
descendants it waited for. The figures are exact and free, and they exist even for a guest that
lives a few milliseconds, too short for any scrape. `subprocess.Popen` reaps with `waitpid()`,
which throws them away; `Child` is a Popen whose every reap goes through `wait4()`, whoever
asks (`poll`, `wait`, and `send_signal`/`terminate`/`kill`, which poll first), so no poll
elsewhere (a runtime polling while it looks for its container) loses them.

`wait` sleeps on a pidfd (Linux 5.3+), so the exit is seen as it happens; without one it polls.
"""

from __future__ import annotations

import os
import select
import subprocess
import threading
import time
from typing import Any

_POLL_S = 0.005  # without a pidfd: how often `wait` looks


class Child(subprocess.Popen[bytes]):
    """A Popen that keeps its exit's `rusage` (None until reaped, or if another reaped it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.rusage: Any = None  # os.wait4's resource.struct_rusage
        self.exit_ns: int | None = None  # monotonic time at which the exit was reaped
        self._reap_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def poll(self) -> int | None:
        if self.returncode is None:
            self._reap(os.WNOHANG)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is not None:
            return self.returncode
        deadline = None if timeout is None else time.monotonic() + timeout
        pidfd = _pidfd(self.pid)
        exited = False  # the pidfd said so: only the reap is left (another thread may hold the lock)
        try:
            while True:
                self._reap(os.WNOHANG)
                if self.returncode is not None:
                    return self.returncode
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
                if pidfd is None or exited:
                    time.sleep(_POLL_S if remaining is None else min(_POLL_S, remaining))
                    continue
                waiter = select.poll()
                waiter.register(pidfd, select.POLLIN)
                exited = bool(waiter.poll(None if remaining is None else max(1, int(remaining * 1000) + 1)))
        finally:
            if pidfd is not None:
                os.close(pidfd)

    def _reap(self, flags: int) -> None:
        """Reap the child if it has exited (`flags`: os.WNOHANG), keeping its rusage. Never blocks
        on the lock: a signal handler that polls while the main thread reaps must not deadlock."""
        if not self._reap_lock.acquire(False):
            return
        try:
            if self.returncode is not None:
                return
            try:
                pid, status, usage = os.wait4(self.pid, flags)
            except ChildProcessError:  # reaped behind Popen's back: no status, as Popen says then
                self.returncode = 0
                return
            if pid == 0:
                return
            self.exit_ns = time.monotonic_ns()
            self.rusage = usage
            self.returncode = os.waitstatus_to_exitcode(status)
        finally:
            self._reap_lock.release()


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd (Linux < 5.3), or it was reaped already
        return None
