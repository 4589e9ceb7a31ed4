"""What the family parsers share: stamp parsing, bounded attributes, once-only milestones.

Everything here is pure: text in, values out. Console text is untrusted guest output (already
sanitised and capped by `uniobs.console`), so every captured string is clipped before it
becomes an attribute, and every pattern is anchored or starts with a literal so that a parser
stays linear in the line's length.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from uniobs.model import AttributeValue, Severity
from uniobs.plugin import ConsoleLine, ConsoleParser, GuestEvent, Milestone

MAX_ATTR = 200  # characters kept of any string taken from a console line
MAX_VERSION = 64  # characters kept of a version string
GUEST_REPORTED = "uniobs.guest_reported"
# A milestone deduced (from the application's first own line), not printed by the kernel.
INFERRED = "uniobs.inferred"
# One step of a guest-reported boot chart: `duration_s` long, ending at `guest_time_s`.
BOOT_PHASE = "uniobs.boot_phase"

# A printk-style uptime stamp: "[    0.153699] " (Linux, Unikraft's uk_printk). The seconds are
# right-aligned in five columns, so a stamp before 10000 s always starts with a space.
UPTIME_STAMP = re.compile(r"\[( {0,12})(\d{1,10})\.(\d{6})\] ?")

# QEMU's option ROM loading a -kernel prints this with no newline, so the guest's first line
# often follows it on the same line: "Booting from ROM..[    0.000000] Info: ...".
ROM_HANDOFF = re.compile(r"Booting from ROM\.*")
SEABIOS = re.compile(r"SeaBIOS \(version ([^)]{1,64})\)")

_UNSAFE_NAME = re.compile(r"[^a-z0-9]+")


def clip(text: str, limit: int = MAX_ATTR) -> str:
    """A console-derived string bounded for use as an attribute value."""
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def snake(text: str, limit: int = 48) -> str:
    """A phase title as a dotted-name component: "VFS initialized" -> "vfs_initialized"."""
    name = _UNSAFE_NAME.sub("_", text.lower()).strip("_")[:limit].strip("_")
    return name or "unnamed"


def seconds(whole: str, fraction: str) -> float:
    """Seconds from the two digit groups of a stamp ("0", "153699" -> 0.153699)."""
    return float(f"{whole}.{fraction}")


def split_stamp(text: str) -> tuple[float | None, str]:
    """(uptime in seconds, the rest) of a line starting with a printk-style stamp; (None, text) otherwise."""
    m = UPTIME_STAMP.match(text)
    if m is None:
        return None, text
    return seconds(m.group(2), m.group(3)), text[m.end() :]


def strip_rom_handoff(text: str) -> tuple[bool, str]:
    """(whether the line began with QEMU's "Booting from ROM..", the text after it)."""
    m = ROM_HANDOFF.match(text)
    if m is None:
        return False, text
    return True, text[m.end() :]


def int_or_none(text: str | None) -> int | None:
    """An integer from a captured group; None when absent or absurdly long."""
    if text is None or len(text) > 20:
        return None
    try:
        return int(text, 0) if text.lower().startswith(("0x", "-0x")) else int(text)
    except ValueError:
        return None


def event(
    line: ConsoleLine,
    name: str,
    milestone: Milestone | None = None,
    *,
    guest_time_s: float | None = None,
    duration_s: float | None = None,
    severity: Severity = Severity.INFO,
    guest_reported: bool | None = None,
    inferred: bool = False,
    boot_phase: bool = False,
    **attributes: AttributeValue | None,
) -> GuestEvent:
    """A GuestEvent; keyword attributes use "__" for "." (`solo5__exit_code` -> `solo5.exit_code`).

    Attributes whose value is None are left out. A timing the guest printed (`guest_time_s`,
    `duration_s`) marks the event `uniobs.guest_reported=True` unless `guest_reported` says
    otherwise (the Firecracker logger reports the VMM's own timings). `inferred` and
    `boot_phase` add `uniobs.inferred` and `uniobs.boot_phase`.
    """
    attrs: list[tuple[str, AttributeValue]] = []
    for key, value in attributes.items():
        if value is None:
            continue
        if isinstance(value, str):
            value = clip(value)
        attrs.append((key.replace("__", "."), value))
    if guest_reported is None:
        guest_reported = guest_time_s is not None or duration_s is not None
        if guest_reported:
            attrs.append((GUEST_REPORTED, True))
    else:
        attrs.append((GUEST_REPORTED, guest_reported))
    if inferred:
        attrs.append((INFERRED, True))
    if boot_phase:
        attrs.append((BOOT_PHASE, True))
    return GuestEvent(
        time_ns=line.time_ns,
        name=name,
        milestone=milestone,
        guest_time_s=guest_time_s,
        duration_s=duration_s,
        severity=severity,
        attributes=tuple(attrs),
    )


def first_match(patterns: Sequence[re.Pattern[str]], text: str) -> tuple[int, re.Match[str]] | None:
    """The index and match of the first pattern that matches at the start of `text`."""
    for i, pattern in enumerate(patterns):
        m = pattern.match(text)
        if m is not None:
            return i, m
    return None


def exit_severity(code: int | None) -> Severity:
    return Severity.INFO if code == 0 else Severity.WARN


class FamilyParser(ConsoleParser):
    """A ConsoleParser that reports each milestone at most once per console stream."""

    def __init__(self) -> None:
        self._seen: set[Milestone] = set()

    def keywords(self) -> tuple[str, ...] | None:
        """Literal strings (without a newline), one of which is in every line whose `parse` could,
        in this parser's current state, return an event or change that state; None (the default):
        every line. A live stream searches a whole chunk for them at C level and gives `parse` only
        the lines that hold one (`uniobs.guest.parsers.detect.StreamParser.feed_lines`), asking
        again after each line it gave. Too many is only slower; one missing loses events.
        """
        return None

    def once(self, milestone: Milestone) -> Milestone | None:
        """`milestone` the first time it is asked for, None afterwards."""
        if milestone in self._seen:
            return None
        self._seen.add(milestone)
        return milestone

    def seen(self, milestone: Milestone) -> bool:
        return milestone in self._seen
