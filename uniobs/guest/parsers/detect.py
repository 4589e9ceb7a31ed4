"""Which family a console belongs to, and the replay of a recorded console through its parsers.

A console stream may carry two writers: the guest's console, and a VMM's own log interleaved with
it (Firecracker's logger on the stdout that also carries the guest's ttyS0; QEMU's monitor on
`-serial mon:stdio`). So the parsers come in two kinds (`uniobs.plugin`):
- a guest family (`ConsoleParser`): one per stream, detected from the guest's own lines;
- a VMM log (`VmmLogParser`): always on, beside the guest's family.
Each line goes to one of them: to the first VMM log parser that `owns` it (a cheap prefix test,
asked of every line), else to the guest's family. So a VMM's lines neither decide nor hide the
guest's family, and neither side's milestones depend on the other's lines.

`detect_family` looks at the first guest lines only (a family announces itself early: a banner,
a characteristic prefix). `StreamParser` does the same on a live console, one line at a time: it
holds the guest's lines until a parser recognises one (at most `DETECT_LINES`, the VMM's lines
not counted), then runs them all through that family's parser, so that what came before the
recognised line (SeaBIOS, an ops message) is not lost. `replay` is what `uniobs parse
CONSOLE.log` runs: the same over a whole recording, returning the events, the first event of each
of the guest's milestones (and of each VMM log's, apart) and a boot-phase breakdown.

Times. An event's time is its line's arrival on the host's monotonic clock. A VMM that stamps its
lines (Firecracker: wall-clock local time to the nanosecond) has its events placed at those
stamps instead, on a live console: the host's clock reads `stamp + offset`, where the offset is
the smallest `arrival - stamp` seen so far on that stream, so an event is never placed after its
line arrived, and a line read late (from a pipe's backlog, a file followed in chunks) gets the
time the VMM wrote it. Only differences between stamps count (a zone-less local time is fine); a
stamp that falls more than `MAX_STAMP_LAG_S` behind (the host's clock stepped back, a DST change)
starts over from that line's arrival. Lines without a stamp (Firecracker v1.0-v1.4's header)
keep their arrival time. A file recorded without timing gets one synthetic millisecond per line
(line N arrives at N ms), so arrival-based phases of a replayed file count lines, not time, and
`replay` keeps the VMM's events at their lines' positions; guest-reported timings (OSv's boot
chart, printk stamps) are real.

Only reading the file, when given a path, is I/O; everything else is pure.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

from uniobs.guest.lines import DEFAULT_MAX_LINE, LineBatch, sanitize
from uniobs.guest.parsers._common import BOOT_PHASE
from uniobs.plugin import ConsoleLine, ConsoleParser, GuestEvent, Milestone, VmmLogParser
from uniobs.registry import PluginInfo

log = logging.getLogger("uniobs.parsers")

DETECT_LINES = 200  # a family must show itself within the first lines of a console
REPLAY_LINE_NS = 1_000_000  # the synthetic arrival time step of a file replayed without timing
MAX_STAMP_LAG_S = 60  # a VMM stamp this far behind its stream's offset: the clock stepped, start over

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

    `family` is the guest's (None when no guest parser recognised a line); `events` are every
    event, the guest's and the VMM logs', in the order they were found; `milestones` the first
    event of each of the guest's milestones; `vmm` each VMM log seen on the stream (in the order
    of its first line) with the first event of each of its own milestones (its start, exit, crash).
    `phases` are the guest's, on one clock, named by `clock`: "guest" when they come from timings
    the guest printed (a boot chart, or uptime stamps on every milestone), "arrival" when from the
    lines' arrival times, in seconds since the first line.
    """

    family: str | None
    events: tuple[GuestEvent, ...] = ()
    milestones: dict[Milestone, GuestEvent] = field(default_factory=dict)
    phases: list[Phase] = field(default_factory=list)
    clock: Literal["guest", "arrival"] = "arrival"
    vmm: dict[str, dict[Milestone, GuestEvent]] = field(default_factory=dict)


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
    """The guest family of the first parser (by name) that recognises one of the first `limit` guest
    lines (a VMM's own lines are not the guest's: they neither count nor decide)."""
    stream = StreamParser(parsers, limit=limit, vmm_stamps=False)
    for line in as_lines(lines):
        stream.feed(line)
        if stream.settled:
            break
    return stream.family


class _StampClock:
    """Places a VMM's stamped lines on the host's monotonic clock (see the module's docstring)."""

    __slots__ = ("_offset",)

    def __init__(self) -> None:
        self._offset: int | None = None  # host ns minus the VMM's clock, the smallest seen

    def place(self, arrival_ns: int, stamp_ns: int) -> int:
        lag = arrival_ns - stamp_ns
        if self._offset is None or lag < self._offset or lag - self._offset > MAX_STAMP_LAG_S * 1_000_000_000:
            self._offset = lag
        return stamp_ns + self._offset


@dataclass
class _VmmLog:
    name: str
    parser: VmmLogParser
    clock: _StampClock = field(default_factory=_StampClock)


class StreamParser:
    """The parsing of one live console: its VMM logs' parsers, and its guest's family.

    Each line goes to the first VMM log parser that owns it, else to the guest's side: detection
    over the guest's first lines, then its family's parser. `feed` returns the events of the line
    it is given, or, on the line that decides the guest's family, the events of every guest line
    held until then (with their own arrival times). With `vmm_stamps` (a live console), a VMM's
    events are placed at the stamps it printed (see the module's docstring). A parser that raises
    is logged once and switched off for this console: a bug in one plugin must not stop the
    capture. Memory: at most `limit` lines are held, and only before the family is known.
    """

    def __init__(
        self, parsers: Parsers, *, family: str | None = None, limit: int = DETECT_LINES, vmm_stamps: bool = True
    ) -> None:
        classes = parser_classes(parsers)
        self._classes = {name: cls for name, cls in classes.items() if not issubclass(cls, VmmLogParser)}
        vmm_classes = {name: cls for name, cls in classes.items() if issubclass(cls, VmmLogParser)}
        if family is not None and family not in self._classes:
            if family in vmm_classes:
                raise ValueError(f"{family!r} reads a VMM's own log, which is always read: a family names a guest's")
            known = ", ".join(self._classes) or "none"
            raise ValueError(f"unknown console family {family!r} (installed parsers: {known})")
        self.family = family
        self.vmms: list[str] = []  # the VMM logs seen on this console, in the order of their first line
        self.first_guest_ns: int | None = None  # the arrival of the guest's first line
        self._vmm = [_VmmLog(name, cls()) for name, cls in vmm_classes.items()]
        self._vmm_prefixes: tuple[str, ...] = ()  # one C-level test of every line against them all
        self._vmm_ask_all = False  # a VMM log parser declares no prefixes: ask it of every line
        self._vmm_pattern: re.Pattern[str] | None = None  # "\n" then any prefix: built when first needed
        self._vmm_changed()
        self._vmm_stamps = vmm_stamps
        self._limit = limit
        self._held: list[ConsoleLine] = []
        self._candidates = [] if family else [(name, cls()) for name, cls in self._classes.items()]
        self._parser: ConsoleParser | None = self._classes[family]() if family else None
        self.settled = family is not None  # the guest's family is known, or will never be

    def feed(self, line: ConsoleLine) -> list[GuestEvent]:
        return self._route(line)[1]

    def feed_lines(self, lines: Sequence[ConsoleLine]) -> list[GuestEvent]:
        """`feed` over a console chunk's lines: their events, in order.

        Given a `LineBatch` once the guest's family is known, only the lines a parser must see reach
        Python code: those a VMM log's prefix starts, and those holding one of the family parser's
        `keywords` (`uniobs.guest.parsers._common.FamilyParser.keywords`), found by a few C-level
        searches of the whole chunk. Anything else (detection, a parser without keywords, a VMM log
        parser without prefixes) goes line by line.
        """
        if not isinstance(lines, LineBatch):
            return [ev for line in lines for ev in self._route(line)[1]]
        events: list[GuestEvent] = []
        i, n = 0, len(lines)
        while i < n:
            keywords = self._keywords()
            if keywords is None:
                events += self._route(lines.line(i))[1]
                i += 1
                continue
            start, i = i, n
            for k, guest in self._wanted(lines, start, keywords):
                events += self._route(lines.line(k), guest)[1]
                now = self._keywords()
                if now is not keywords and now != keywords:  # the parser's state changed what it needs: search again
                    i = k + 1
                    break
        return events

    def _keywords(self) -> tuple[str, ...] | None:
        """What the guest's side needs of the lines now: its parser's keywords (() for nothing),
        None when every line must be routed one by one."""
        if self._vmm_ask_all or self.first_guest_ns is None:
            return None
        parser = self._parser
        if parser is None:
            return () if self.settled else None
        wanted = getattr(parser, "keywords", None)
        if wanted is None:
            return None
        try:
            found = wanted()
        except Exception:
            return None  # the line-by-line path meets the failure and reports it
        return found if found is None or type(found) is tuple else tuple(found)

    def _wanted(self, lines: LineBatch, start: int, keywords: tuple[str, ...]) -> list[tuple[int, bool]]:
        """The lines (index >= start) a VMM log's prefix starts or a keyword is in, in order, each
        with whether the guest's parser must see it if no VMM log owns it (a keyword is in it)."""
        text = lines.text
        pos = lines.start_of(start)
        vmm: list[int] = []
        if self._vmm_prefixes:
            if self._vmm_pattern is None:
                # One character class for the one-character prefixes (Firecracker's digits): faster.
                single = "".join(sorted(p for p in self._vmm_prefixes if len(p) == 1))
                longer = sorted((p for p in self._vmm_prefixes if len(p) > 1), key=len, reverse=True)
                alternatives = [*(["[" + re.escape(single) + "]"] if single else []), *map(re.escape, longer)]
                self._vmm_pattern = re.compile("\n(?:" + "|".join(alternatives) + ")")
            vmm = [m.start() for m in self._vmm_pattern.finditer(text, pos)]
        found: list[int] = []
        for keyword in keywords:
            at = text.find(keyword, pos)
            while at >= 0:
                found.append(at)
                at = text.find(keyword, at + 1)
        guest = set(lines.index_of(found, start)) if found else set()
        if not vmm:
            return [(k, True) for k in sorted(guest)]
        ordered = sorted(guest.union(lines.index_of(vmm, start)))
        return [(k, k in guest) for k in ordered]

    def feed_tagged(self, line: ConsoleLine) -> list[tuple[str, GuestEvent]]:
        """As `feed`, each event with the name of the parser that found it (a guest family or a VMM log)."""
        source, events = self._route(line)
        return [(source, ev) for ev in events]

    def _route(self, line: ConsoleLine, guest: bool = True) -> tuple[str, list[GuestEvent]]:
        """The line's events, all found by one parser, and its name ("" when there are none).
        Without `guest`, a line no VMM log owns is known to mean nothing to the guest's parser."""
        if self._vmm_ask_all or line.text.startswith(self._vmm_prefixes):
            for vmm in self._vmm:
                try:
                    owned = vmm.parser.owns(line)
                except Exception:
                    self._vmm_failed(vmm, "failed to read a line")
                    return self._route(line, guest)
                if owned:
                    return vmm.name, self._parse_vmm(vmm, line)
        if not guest:
            return "", []
        if self.first_guest_ns is None:
            self.first_guest_ns = line.time_ns
        if self._parser is not None:
            return self._parse(self._parser, line)
        if self.settled:
            return "", []
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
        return "", []

    def _parse_vmm(self, vmm: _VmmLog, line: ConsoleLine) -> list[GuestEvent]:
        if vmm.name not in self.vmms:
            self.vmms.append(vmm.name)
        try:
            events = list(vmm.parser.parse(line))
            stamp = vmm.parser.stamp_ns(line) if self._vmm_stamps else None
        except Exception:
            self._vmm_failed(vmm, "failed")
            return []
        if stamp is not None:  # every stamped line tightens the offset, with events or not
            at = vmm.clock.place(line.time_ns, stamp)
            events = [dataclasses.replace(ev, time_ns=at) if ev.time_ns == line.time_ns else ev for ev in events]
        return events

    def _vmm_failed(self, vmm: _VmmLog, what: str) -> None:
        log.warning("console parser %r %s; switched off for this console", vmm.name, what, exc_info=True)
        self._vmm.remove(vmm)
        self._vmm_changed()

    def _vmm_changed(self) -> None:
        self._vmm_prefixes = tuple(prefix for vmm in self._vmm for prefix in vmm.parser.prefixes)
        self._vmm_ask_all = any(not vmm.parser.prefixes for vmm in self._vmm)
        self._vmm_pattern = None

    def _decide(self, family: str) -> tuple[str, list[GuestEvent]]:
        self.family, self.settled = family, True
        self._parser = parser = self._classes[family]()
        held, self._held, self._candidates = self._held, [], []
        events: list[GuestEvent] = []
        for line in held:
            events += self._parse(parser, line)[1]
        return family, events

    def _give_up(self) -> None:
        self.settled, self._held, self._candidates = True, [], []

    def _parse(self, parser: ConsoleParser, line: ConsoleLine) -> tuple[str, list[GuestEvent]]:
        family = self.family or ""
        try:
            return family, list(parser.parse(line))
        except Exception:
            log.warning("console parser %r failed; switched off for this console", family, exc_info=True)
            self._parser = None
            return family, []


def replay(
    source: str | os.PathLike[str] | Iterable[str | ConsoleLine],
    parsers: Parsers,
    *,
    family: str | None = None,
    limit: int = DETECT_LINES,
    vmm_stamps: bool = False,
) -> ParseResult:
    """Detect the family of a console (a file path, or its lines) and parse all of it.

    `family` skips detection (it must name one of the guest parsers). Lines no parser recognises
    give `family=None` and no guest events: plain log records are the caller's business. A VMM's
    events keep their lines' times unless `vmm_stamps` (lines with real arrival times).
    """
    lines = read_console(source) if isinstance(source, (str, os.PathLike)) else list(as_lines(source))
    stream = StreamParser(parsers, family=family, limit=limit, vmm_stamps=vmm_stamps)
    tagged = [pair for line in lines for pair in stream.feed_tagged(line)]
    vmm: dict[str, dict[Milestone, GuestEvent]] = {name: {} for name in stream.vmms}
    if stream.family is None and not vmm:
        return ParseResult(family=None)
    milestones: dict[Milestone, GuestEvent] = {}
    for name, ev in tagged:
        if ev.milestone is not None:
            vmm.get(name, milestones).setdefault(ev.milestone, ev)
    guest = [ev for name, ev in tagged if name not in vmm]
    t0 = stream.first_guest_ns if stream.first_guest_ns is not None else 0  # the guest's phases: from its first line
    clock, phases = boot_phases(guest, milestones, t0)
    return ParseResult(stream.family, tuple(ev for _, ev in tagged), milestones, phases, clock, vmm)


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
