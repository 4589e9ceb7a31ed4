"""The console is untrusted input: garbage, huge lines, invalid UTF-8, floods. Nothing escapes,
memory stays bounded, and what was cut or replaced is counted."""

from __future__ import annotations

import itertools
import os
import threading
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from uniobs.guest.capture import ConsoleStream
from uniobs.guest.lines import LineSplitter, sanitize
from uniobs.ioloop import IoLoop
from uniobs.plugin import ConsoleLine


def test_lines_are_split_and_stamped_with_their_first_byte_arrival() -> None:
    s = LineSplitter()
    assert s.feed(b"hello ", 100) == []
    lines = s.feed(b"world\nsecond\nthi", 200)
    assert [(line.text, line.time_ns, line.number) for line in lines] == [("hello world", 100, 1), ("second", 200, 2)]
    lines = s.feed(b"rd\r\n", 300)
    assert [(line.text, line.time_ns) for line in lines] == [("third", 200)]  # CRLF stripped, first byte at 200
    assert s.feed(b"no newline", 400) == [] and [x.text for x in s.flush()] == ["no newline"]


def test_control_bytes_ansi_and_invalid_utf8_are_neutralised_and_counted() -> None:
    s = LineSplitter()
    raw = b"\x1b[1;32mgreen\x1b[0m nul\x00 bell\x07 bad\xff\xfe utf8 caf\xc3\xa9\n"
    [line] = s.feed(raw, 1)
    assert line.text == "green nul\\x00 bell\\x07 bad\ufffd\ufffd utf8 café"
    assert s.stats.invalid_utf8_lines == 1 and s.stats.escaped_lines == 1
    assert sanitize(b"plain") == "plain"


def test_a_one_mebibyte_line_is_cut_once_and_the_rest_dropped_and_counted() -> None:
    s = LineSplitter(max_line=4096)
    out: list[ConsoleLine] = []
    chunk = b"A" * 65536
    for i in range(16):  # 1 MiB, no newline
        out += s.feed(chunk, i)
    out += s.feed(b"tail\nnext line\n", 99)
    assert [(len(x.text), x.truncated) for x in out] == [(4096, True), (9, False)]
    assert out[0].time_ns == 0 and out[1].text == "next line"
    assert s.stats.truncated_lines == 1
    assert s.stats.dropped_bytes == 16 * 65536 + len(b"tail") - 4096
    assert len(s._partial) == 0  # nothing held


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=3000), max_size=40), st.integers(min_value=64, max_value=2048))
def test_fuzz_any_bytes_any_chunking(chunks: list[bytes], max_line: int) -> None:
    s = LineSplitter(max_line=max_line)
    total_lines = 0
    for t, chunk in enumerate(chunks):
        for line in s.feed(chunk, t):
            total_lines += 1
            assert isinstance(line.text, str)
            # at most max_line bytes of input per line (escaping can lengthen the text 4x)
            assert len(line.text) <= 4 * max_line
            assert "\x00" not in line.text and "\x1b" not in line.text
        assert len(s._partial) <= max_line  # bounded memory
    total_lines += len(s.flush())
    assert s.stats.bytes == sum(map(len, chunks))
    assert s.stats.lines == total_lines
    assert total_lines >= b"".join(chunks).count(b"\n") - s.stats.truncated_lines


def _reference(data: bytes, max_line: int) -> list[tuple[str, bool]]:
    """What the splitter must give for a whole stream, by definition: each line (its CR end dropped),
    sanitised, cut at max_line bytes."""
    pieces = data.split(b"\n")
    tail = pieces.pop()
    out = []
    for piece in [*pieces, *([tail] if tail else [])]:
        cut = len(piece) > max_line
        piece = piece[:max_line] if cut else piece
        out.append((sanitize(piece.removesuffix(b"\r")), cut))
    return out


_console_bytes = st.lists(
    st.sampled_from(
        [b"\n", b"\r\n", b"\r", b"plain text ", b"caf\xc3\xa9 ", b"\xff", b"\x00", b"\t", b"\x1b[1m", b"x" * 70]
    ),
    max_size=60,
).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(_console_bytes, st.lists(st.integers(1, 200), min_size=1, max_size=8))
def test_whole_chunk_splitting_gives_what_line_by_line_would(data: bytes, cuts: list[int]) -> None:
    """The chunk-wide fast path (one check, decode and split per chunk) and the per-line path agree
    with the definition, line by line and in the counters, however the bytes are chunked."""
    s = LineSplitter(max_line=64)
    got, at, i = [], 0, 0
    while at < len(data):
        size = cuts[i % len(cuts)]
        batch = s.feed(data[at : at + size], i)
        got += [(line.text, line.truncated) for line in batch]
        assert [line.number for line in batch] == list(range(len(got) - len(batch) + 1, len(got) + 1))
        at, i = at + size, i + 1
    got += [(line.text, line.truncated) for line in s.flush()]
    assert got == _reference(data, 64)
    assert s.stats.lines == len(got) and s.stats.truncated_lines == sum(cut for _, cut in got)


def _capture(
    data_writer: threading.Thread | None, fd: int, max_line: int = 16384
) -> tuple[list[ConsoleLine], ConsoleStream]:
    loop = IoLoop().start()
    got: list[ConsoleLine] = []
    done = threading.Event()
    stream = ConsoleStream(f"fd:{fd}", got.extend, done.set, max_line=max_line).start(loop)
    if data_writer is not None:
        data_writer.start()
    assert done.wait(120), "the stream never saw EOF"
    loop.stop()
    return got, stream


def test_a_real_pipe_loses_no_line_in_order() -> None:
    r, w = os.pipe()
    n = 50_000

    def write() -> None:
        with os.fdopen(w, "wb") as f:
            for i in range(n):
                f.write(b"line %d\n" % i)

    got, _stream = _capture(threading.Thread(target=write), r)
    assert [line.text for line in got] == [f"line {i}" for i in range(n)]
    assert [line.number for line in got] == list(range(1, n + 1))
    assert all(a.time_ns <= b.time_ns for a, b in itertools.pairwise(got))


def test_a_100_mb_flood_without_newlines_keeps_memory_bounded() -> None:
    """100 MB with no newline: the capture holds one capped line, counts the rest as dropped."""
    r, w = os.pipe()
    block = b"\xff\x00garbage" * 6553  # ~64 KiB of invalid UTF-8, NULs, no newline

    def write() -> None:
        with os.fdopen(w, "wb") as f:
            for _ in range(100 * 1024 * 1024 // len(block)):
                f.write(block)
            f.write(b"\nafter the flood\n")

    got, stream = _capture(threading.Thread(target=write), r, max_line=8192)
    stats = stream.splitter.stats
    assert stats.bytes >= 100_000_000
    assert [line.truncated for line in got] == [True, False]
    assert got[-1].text == "after the flood"
    assert stats.dropped_bytes == stats.bytes - 8192 - len(b"after the flood") - 2


def test_a_console_on_a_reused_descriptor_number_is_read_as_it_comes() -> None:
    """Found by a new user's compare: a descriptor closed without `remove_reader` (a container's
    OOM watch) left its number registered; the next console given that number was refused by
    the selector and read only at its end (every boot milestone after readiness). The loop now
    reads the new one as it comes."""
    loop = IoLoop().start()
    try:
        stale_r, stale_w = os.pipe()
        loop.add_reader(stale_r, lambda _fd, _t: True)
        seen = threading.Event()
        loop.call_soon(seen.set)
        assert seen.wait(5)  # registered
        number = stale_r
        os.close(stale_r)  # closed without remove_reader
        os.close(stale_w)
        r, w = os.pipe()
        if r != number:  # the kernel gives the lowest free number; make sure it is that one
            os.dup2(r, number)
            os.close(r)
            r = number
        got: list[ConsoleLine] = []
        arrived = threading.Event()

        def on_lines(lines: Any) -> None:
            got.extend(lines)
            arrived.set()

        ConsoleStream(f"fd:{r}", on_lines).start(loop)
        os.write(w, b"ready\n")  # the writer stays open: only a live read sees this line
        assert arrived.wait(5), "the line was not read while its writer was open"
        assert [line.text for line in got] == ["ready"]
        os.close(w)
    finally:
        loop.stop()
