"""Turning an untrusted console byte stream into safe, timestamped lines. No I/O here.

A guest's console is untrusted input: invalid UTF-8, NUL bytes, ANSI escape sequences, lines
of a megabyte with no newline, floods. The splitter keeps memory bounded (one partial line of
at most `max_line` bytes), never raises on any input, and counts what it changed or dropped.

Timestamps: a line is stamped with the monotonic time at which its *first byte* arrived, which
the caller passes with each chunk as it reads it (not when the batch is parsed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from uniobs.plugin import ConsoleLine

DEFAULT_MAX_LINE = 16 * 1024

# CSI sequences (ESC [ ... final byte), OSC sequences (ESC ] ... BEL or ESC \), and two-byte
# escapes. Firmware (SeaBIOS) and some unikernels colour their output with these.
_ANSI = re.compile(rb"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
# After ANSI removal, any remaining C0 control byte (except TAB) and DEL are shown escaped.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@dataclass
class ConsoleStats:
    """What the splitter did to the stream; exported as uniobs.console.* metrics."""

    bytes: int = 0
    lines: int = 0
    truncated_lines: int = 0  # lines cut at max_line
    dropped_bytes: int = 0  # bytes of over-long lines not kept
    invalid_utf8_lines: int = 0  # lines with bytes that are not UTF-8 (replaced)
    escaped_lines: int = 0  # lines whose control characters or ANSI sequences were neutralised


def _escape(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


_CONTROL_BYTES = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]")


def sanitize(raw: bytes, stats: ConsoleStats | None = None) -> str:
    """Bytes of one line (without its newline) to safe text."""
    if raw.isascii() and not _CONTROL_BYTES.search(raw):
        return raw.decode("ascii")  # the common case, at a fraction of the cost
    cleaned = _ANSI.sub(b"", raw) if b"\x1b" in raw else raw
    try:
        text = cleaned.decode("utf-8")
    except UnicodeDecodeError:
        text = cleaned.decode("utf-8", errors="replace")
        if stats is not None:
            stats.invalid_utf8_lines += 1
    if cleaned is not raw or _CONTROL.search(text):
        text = _CONTROL.sub(_escape, text)
        if stats is not None:
            stats.escaped_lines += 1
    return text


class LineSplitter:
    """Feeds chunks, yields complete lines. Memory: at most `max_line` bytes held."""

    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        if max_line < 64:
            raise ValueError("max_line: must be >= 64 bytes")
        self.max_line = max_line
        self.stats = ConsoleStats()
        self._partial = bytearray()
        self._partial_time = 0  # arrival time of the partial line's first byte
        self._overflow = False  # the current line was already cut; skip to its newline
        self._number = 0

    def feed(self, chunk: bytes, arrival_ns: int) -> list[ConsoleLine]:
        self.stats.bytes += len(chunk)
        lines: list[ConsoleLine] = []
        pieces = chunk.split(b"\n")
        tail = pieces.pop()  # after the last newline: the start of the next line (maybe empty)
        for i, piece in enumerate(pieces):
            if i == 0 and (self._partial or self._overflow):
                self._append(piece, arrival_ns, lines)  # completes a line begun in earlier chunks
                if self._overflow:
                    self._overflow = False
                else:
                    lines.append(self._emit(truncated=False))
            elif len(piece) <= self.max_line:  # the common case: a whole line in this chunk
                self._number += 1
                if piece.endswith(b"\r"):
                    piece = piece[:-1]  # CRLF consoles
                lines.append(ConsoleLine(arrival_ns, sanitize(piece, self.stats), self._number, False))
            else:
                self._append(piece, arrival_ns, lines)
                self._overflow = False
        self.stats.lines += len(lines) - sum(1 for line in lines if line.truncated)
        if tail:
            self._append(tail, arrival_ns, lines)
        return lines

    def _append(self, piece: bytes, arrival_ns: int, lines: list[ConsoleLine]) -> None:
        """Add bytes to the partial line; cut it (once) at max_line."""
        if not self._partial and not self._overflow:
            self._partial_time = arrival_ns
        if self._overflow:
            self.stats.dropped_bytes += len(piece)
            return
        room = self.max_line - len(self._partial)
        if len(piece) <= room:
            self._partial += piece
            return
        self._partial += piece[:room]
        self.stats.dropped_bytes += len(piece) - room
        self.stats.truncated_lines += 1
        # Emit the cut line now, so a newline-less flood is still seen and timed.
        lines.append(self._emit(truncated=True))
        self._overflow = True

    def _emit(self, truncated: bool) -> ConsoleLine:
        raw = bytes(self._partial)
        self._partial.clear()
        if raw.endswith(b"\r"):
            raw = raw[:-1]  # CRLF consoles
        self._number += 1
        if truncated:
            self.stats.lines += 1  # feed() counts the others in bulk
        return ConsoleLine(self._partial_time, sanitize(raw, self.stats), self._number, truncated)

    def flush(self) -> list[ConsoleLine]:
        """At end of stream: the last line, if it had no newline."""
        if self._partial and not self._overflow:
            self.stats.lines += 1
            return [self._emit(truncated=False)]
        self._overflow = False
        return []
