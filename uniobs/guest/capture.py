"""Console capture backends: read a guest console from the first byte, on the shared I/O loop.

Sources (the `Workload.console` string):
- `fd:N`     a pipe the launcher holds (QEMU `-serial stdio`, the hvt tender's stdout);
- `fifo:PATH` a named pipe QEMU writes a chardev's `logfile=` copy to (lossless, as it
             is opened before QEMU starts);
- `file:PATH` a file QEMU appends to (`-chardev file`, `logfile=`): read from offset 0 and
             followed, polled every 20 ms (a regular file cannot be waited on);
- `tail:PATH` the same, from the current end (attaching to a running guest);
- `unix:PATH` a QEMU chardev socket in server mode (attach); only output after connecting.
- `pty:PATH` a pseudo-terminal (attach); only output after opening, shared with other readers.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import BinaryIO

from uniobs.guest.lines import DEFAULT_MAX_LINE, LineBatch, LineSplitter
from uniobs.ioloop import IoLoop

log = logging.getLogger("uniobs.capture")

READ_SIZE = 64 * 1024
READS_PER_WAKEUP = 16  # then yield to other streams: one flooding guest cannot starve the rest
FILE_POLL_S = 0.02

LinesCallback = Callable[[LineBatch], None]  # a chunk's lines (a sequence of ConsoleLine)


class SourceError(ValueError):
    """A console source string that cannot be used."""


class ConsoleStream:
    """One console being read. Thread: callbacks run on the I/O loop's thread."""

    def __init__(
        self,
        source: str,
        on_lines: LinesCallback,
        on_end: Callable[[], None] | None = None,
        *,
        max_line: int = DEFAULT_MAX_LINE,
        tee: BinaryIO | None = None,
        tee_max_bytes: int = 64 << 20,
        mirror: BinaryIO | None = None,
    ) -> None:
        self.source = source
        self.splitter = LineSplitter(max_line)
        self.first_byte_ns: int | None = None
        self.ended = False
        self._finishing = False
        self._on_lines = on_lines
        self._on_end = on_end
        self._tee = tee
        self._tee_left = tee_max_bytes
        self._mirror = mirror  # e.g. our stdout, when we took QEMU's: the user still sees the console
        self._fd: int | None = None
        self._sock: socket.socket | None = None
        self._loop: IoLoop | None = None

    # -- opening

    def start(self, loop: IoLoop) -> ConsoleStream:
        kind, _, arg = self.source.partition(":")
        if not arg:
            raise SourceError(f"console source {self.source!r}: expected KIND:ARG")
        self._loop = loop
        if kind == "fd":
            self._fd = int(arg)
            loop.add_reader(self._fd, self._readable)
        elif kind in ("fifo", "pty"):
            self._fd = os.open(arg, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
            loop.add_reader(self._fd, self._readable)
        elif kind in ("file", "tail"):
            self._fd = os.open(arg, os.O_RDONLY | os.O_NONBLOCK)
            if kind == "tail":  # attached late: what is already there is history, not news
                os.lseek(self._fd, 0, os.SEEK_END)
            loop.every(FILE_POLL_S, self._poll_file)
        elif kind == "unix":
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._sock.settimeout(2.0)
            self._sock.connect(arg)
            self._fd = self._sock.fileno()
            loop.add_reader(self._fd, self._readable)
        else:
            raise SourceError(
                f"console source {self.source!r}: unknown kind {kind!r} (fd, fifo, file, tail, unix, pty)"
            )
        return self

    # -- reading (I/O thread)

    def _deliver(self, chunk: bytes, arrival_ns: int) -> None:
        if self.first_byte_ns is None:
            self.first_byte_ns = arrival_ns
        if self._tee is not None and self._tee_left > 0:
            part = chunk[: self._tee_left]
            self._tee_left -= len(part)
            try:
                self._tee.write(part)
                self._tee.flush()
            except OSError as exc:
                log.warning("console %s: tee failed, stopped: %s", self.source, exc)
                self._tee = None
        if self._mirror is not None:
            try:
                self._mirror.write(chunk)
                self._mirror.flush()
            except (OSError, ValueError):
                self._mirror = None  # our stdout went away; keep capturing
        lines = self.splitter.feed(chunk, arrival_ns)
        if lines:
            self._on_lines(lines)

    def _read(self, fd: int, arrival_ns: int, limit: int) -> str:
        """Read and deliver up to `limit` chunks: "more" (limit reached), "again" (nothing more to
        read now), "eof", or "error". Later reads in one call arrived later: restamped."""
        for _ in range(limit):
            try:
                chunk = os.read(fd, READ_SIZE)
            except BlockingIOError:
                return "again"
            except OSError as exc:
                if exc.errno == errno.EIO:  # a pty whose other side closed
                    return "eof"
                log.warning("console %s: read failed: %s", self.source, exc)
                return "error"
            if not chunk:
                return "eof"
            self._deliver(chunk, arrival_ns)
            arrival_ns = time.monotonic_ns()
        return "more"

    def _readable(self, fd: int, arrival_ns: int) -> bool:
        if self._read(fd, arrival_ns, READS_PER_WAKEUP) in ("more", "again"):
            return True
        self._end()
        return False

    def _poll_file(self, now_ns: int) -> bool:
        if self._fd is None:
            return False
        if self._read(self._fd, now_ns, READS_PER_WAKEUP) == "error":
            self._end()
            return False
        return not self.ended  # end of a regular file: nothing new yet, not the end of the console

    def _drain(self) -> None:
        """Read what is left without waiting: the writer has exited or we are stopping."""
        while self._fd is not None and self._read(self._fd, time.monotonic_ns(), READS_PER_WAKEUP) == "more":
            pass
        self._end()

    def _end(self) -> None:
        if self._finishing:
            return
        self._finishing = True
        tail = self.splitter.flush()
        if tail:
            self._on_lines(tail)
        self._close()
        if self._on_end is not None:
            self._on_end()
        self.ended = True  # last: whoever sees it may take the final counters

    def _close(self) -> None:
        if self._tee is not None:
            with contextlib.suppress(OSError):
                self._tee.close()
            self._tee = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self._fd = None
        elif self._fd is not None:
            fd, self._fd = self._fd, None
            if self._loop is not None and not self.source.startswith(("file:", "tail:")):
                self._loop.remove_reader(fd)
            with contextlib.suppress(OSError):
                os.close(fd)

    def stop(self, timeout: float = 2.0) -> bool:
        """Read what is already there, then stop. Runs on the loop's thread; waits for it."""
        if self._loop is None:
            return True
        self._loop.call_soon(self._drain)
        return self.wait_ended(timeout)

    def wait_ended(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.ended and time.monotonic() < deadline:
            time.sleep(0.005)
        return self.ended
