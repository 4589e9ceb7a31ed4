"""Which family a console belongs to, and the replay of a recorded console through its parser.

`detect_family` looks at the first lines only (a family announces itself early: a banner, a
characteristic prefix). `StreamParser` does the same on a live console, one line at a time: it
holds the lines until a parser recognises one (at most `DETECT_LINES`), then runs them all
through that family's parser, so that what came before the recognised line (SeaBIOS, an ops
message) is not lost. `replay` is what `uniobs parse CONSOLE.log` runs: the same over a whole
recording, returning the events, the first event of each milestone and a boot-phase breakdown.
A file recorded without timing gets one synthetic millisecond per line (line N arrives at N ms),
so arrival-based phases of a replayed file count lines, not time; guest-reported timings (OSv's
boot chart, printk stamps) are real.

Only reading the file, when given a path, is I/O; everything else is pure.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

from uniobs.guest.lines import DEFAULT_MAX_LINE, sanitize
from uniobs.guest.parsers._common import BOOT_PHASE
from uniobs.plugin import ConsoleLine, ConsoleParser, GuestEvent, Milestone
from uniobs.registry import PluginInfo

log = logging.getLogger("uniobs.parsers")

DETECT_LINES = 200  # a family must show itself within the first lines of a console
REPLAY_LINE_NS = 1_000_000  # the synthetic arrival time step of a file replayed without timing

ParserSource = type[ConsoleParser] | PluginInfo[Any]
Parsers = Mapping[str, ParserSource] | Iterable[type[ConsoleParser]]


class Phase(NamedTuple):
    """One step of a boot: its name, its start (seconds on the result's clock) and its length."""

    name: str
    start_s: float
    duration_s: float


@dataclass(frozen=True)
class ParseResult:
    """What a console yields.

    `phases` are on one clock, named by `clock`: "guest" when they come from timings the guest
    printed (a boot chart, or uptime stamps on every milestone), "arrival" when from the lines'
    arrival times, in seconds since the first line.
    """

    family: str | None
    events: tuple[GuestEvent, ...] = ()
    milestones: dict[Milestone, GuestEvent] = field(default_factory=dict)
    phases: list[Phase] = field(default_factory=list)
    clock: Literal["guest", "arrival"] = "arrival"


def parser_classes(parsers: Parsers) -> dict[str, type[ConsoleParser]]:
    """Family name -> parser class, from `Registry().parsers` (PluginInfo values), a mapping of
    classes, or an iterable of classes; ordered by family name so that detection is deterministic."""
    found: dict[str, type[ConsoleParser]] = {}
    if isinstance(parsers, Mapping):
        for name, source in parsers.items():
            found[name] = source.plugin if isinstance(source, PluginInfo) else source
    else:
        for cls in parsers:
            found[cls.family] = cls
    return dict(sorted(found.items()))


def as_lines(source: Iterable[str | ConsoleLine]) -> Iterator[ConsoleLine]:
    """ConsoleLines from text lines, numbered from 1 and arriving one millisecond apart."""
    for number, item in enumerate(source, start=1):
        if isinstance(item, ConsoleLine):
            yield item
            continue
        text = item.rstrip("\r\n")
        truncated = len(text) > DEFAULT_MAX_LINE
        yield ConsoleLine(number * REPLAY_LINE_NS, text[:DEFAULT_MAX_LINE], number, truncated)


def read_console(path: str | os.PathLike[str]) -> list[ConsoleLine]:
    """A recorded console file as the capture would have delivered it (sanitised, capped)."""
    lines = []
    pieces = Path(path).read_bytes().split(b"\n")
    if pieces and pieces[-1] == b"":
        pieces.pop()  # the newline that ends the last line
    for number, raw in enumerate(pieces, start=1):
        raw = raw.removesuffix(b"\r")
        truncated = len(raw) > DEFAULT_MAX_LINE
        lines.append(ConsoleLine(number * REPLAY_LINE_NS, sanitize(raw[:DEFAULT_MAX_LINE]), number, truncated))
    return lines


def detect_family(lines: Iterable[str | ConsoleLine], parsers: Parsers, limit: int = DETECT_LINES) -> str | None:
    """The family of the first parser (by name) that recognises one of the first `limit` lines."""
    instances = [(name, cls()) for name, cls in parser_classes(parsers).items()]
    for line in itertools.islice(as_lines(lines), limit):
        for name, parser in instances:
            if parser.recognises(line):
                return name
    return None


class StreamParser:
    """The parsing of one live console: detection over its first lines, then its family's parser.

    `feed` returns the events of the line it is given, or, on the line that decides the family,
    the events of every line held until then (with their own arrival times). A parser that
    raises is logged once and switched off for this console: a bug in one plugin must not stop
    the capture. Memory: at most `limit` lines are held, and only before the family is known.
    """

    def __init__(self, parsers: Parsers, *, family: str | None = None, limit: int = DETECT_LINES) -> None:
        self._classes = parser_classes(parsers)
        if family is not None and family not in self._classes:
            known = ", ".join(self._classes) or "none"
            raise ValueError(f"unknown console family {family!r} (installed parsers: {known})")
        self.family = family
        self._limit = limit
        self._held: list[ConsoleLine] = []
        self._candidates = [] if family else [(name, cls()) for name, cls in self._classes.items()]
        self._parser: ConsoleParser | None = self._classes[family]() if family else None
        self.settled = family is not None  # the family is known, or will never be

    def feed(self, line: ConsoleLine) -> list[GuestEvent]:
        if self._parser is not None:
            return self._parse(self._parser, line)
        if self.settled:
            return []
        self._held.append(line)
        for name, candidate in list(self._candidates):
            try:
                recognised = candidate.recognises(line)
            except Exception:
                log.warning("console parser %r failed to read a line; skipped for this console", name, exc_info=True)
                self._candidates.remove((name, candidate))
                continue
            if recognised:
                return self._decide(name)
        if len(self._held) >= self._limit:
            self._give_up()
        return []

    def _decide(self, family: str) -> list[GuestEvent]:
        self.family, self.settled = family, True
        self._parser = parser = self._classes[family]()
        held, self._held, self._candidates = self._held, [], []
        events: list[GuestEvent] = []
        for line in held:
            events += self._parse(parser, line)
        return events

    def _give_up(self) -> None:
        self.settled, self._held, self._candidates = True, [], []

    def _parse(self, parser: ConsoleParser, line: ConsoleLine) -> list[GuestEvent]:
        try:
            return list(parser.parse(line))
        except Exception:
            log.warning("console parser %r failed; switched off for this console", self.family, exc_info=True)
            self._parser = None
            return []


def replay(
    source: str | os.PathLike[str] | Iterable[str | ConsoleLine],
    parsers: Parsers,
    *,
    family: str | None = None,
    limit: int = DETECT_LINES,
) -> ParseResult:
    """Detect the family of a console (a file path, or its lines) and parse all of it.

    `family` skips detection (it must name one of `parsers`). Lines no parser recognises give
    `family=None` and no events: plain log records are the caller's business.
    """
    lines = read_console(source) if isinstance(source, (str, os.PathLike)) else list(as_lines(source))
    stream = StreamParser(parsers, family=family, limit=limit)
    events = tuple(ev for line in lines for ev in stream.feed(line))
    if stream.family is None:
        return ParseResult(family=None)
    milestones: dict[Milestone, GuestEvent] = {}
    for ev in events:
        if ev.milestone is not None:
            milestones.setdefault(ev.milestone, ev)
    t0 = lines[0].time_ns if lines else 0
    clock, phases = boot_phases(events, milestones, t0)
    return ParseResult(stream.family, events, milestones, phases, clock)


def boot_phases(
    events: Iterable[GuestEvent], milestones: Mapping[Milestone, GuestEvent], t0_ns: int = 0
) -> tuple[Literal["guest", "arrival"], list[Phase]]:
    """The boot broken into phases, preferring what the guest measured itself.

    1. A guest-reported boot chart (events marked `uniobs.boot_phase`, e.g. OSv's bootchart):
       one phase per step, on the guest's clock.
    2. Otherwise one phase between each two consecutive milestones ("boot->kernel_ready", ...),
       on the guest's clock when every milestone carries the guest's uptime stamp, else on the
       lines' arrival times (seconds since `t0_ns`).
    """
    chart = [
        Phase(ev.name, round(ev.guest_time_s - ev.duration_s, 9), ev.duration_s)
        for ev in events
        if ev.guest_time_s is not None and ev.duration_s is not None and (BOOT_PHASE, True) in ev.attributes
    ]
    if chart:
        return "guest", chart
    ordered = sorted(milestones.values(), key=lambda ev: ev.time_ns)
    on_guest = bool(ordered) and all(ev.guest_time_s is not None for ev in ordered)
    phases = []
    for a, b in itertools.pairwise(ordered):
        assert a.milestone is not None and b.milestone is not None
        if on_guest:
            assert a.guest_time_s is not None and b.guest_time_s is not None
            start, end = a.guest_time_s, b.guest_time_s
        else:
            start, end = (a.time_ns - t0_ns) / 1e9, (b.time_ns - t0_ns) / 1e9
        name = f"{a.milestone.value}->{b.milestone.value}"
        phases.append(Phase(name, round(start, 9), round(max(0.0, end - start), 9)))
    return ("guest" if on_guest else "arrival"), phases
