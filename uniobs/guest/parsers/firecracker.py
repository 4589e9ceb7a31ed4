"""Firecracker's own log (v0.11 to v1.x), wherever it is written: its stdout, or `--log-path`.

This is the VMM's log, not the guest's serial console, so this is a `VmmLogParser`: without
`--log-path` Firecracker writes it to the stdout that also carries the guest's ttyS0, and each line
is told apart by its prefix, so the guest's lines still go to the guest's own family (a Linux
microVM's printk log, OSv, Unikraft...). The timings it reports are the VMM's
(`uniobs.guest_reported=False`).

Lines look like `2025-03-30T18:14:06.845979099 [anonymous-instance:main] Running Firecracker v1.11.0`
(src/vmm/src/logger/logging.rs: the host's local time, zone-less, to the nanosecond; then
`[<instance id>:<thread>]`, the id empty before `--id` was set in v0.11, the thread `main`,
`fc_api`, `fc_vcpu 0`...; with `--show-level` / `--show-log-origin` (the v1.0-v1.4 default) the
level and the source location follow: `[anonymous-instance:fc_api:INFO:src/api_server/src/lib.rs:209]`;
v0.x had no thread: `[:ERROR:vmm/src/lib.rs:1157]`). Every line carries the stamp except the
header `Running Firecracker v1.2.0` that v1.0-v1.4 wrote unprefixed on opening `--log-path`.

What it means: `Running Firecracker vX` (BOOT: the VMM is up); API requests
`The API server received a Put request on "/boot-source"` and `Total previous API call duration:
376 us.` (the previous call's latency); the guest is started by `PUT /actions` with
`InstanceStart`, or from `--config-file`, `Successfully started microvm that was configured from
one single json`; `--boot-timer`'s `Guest-boot-time =  41239 us 41 ms,  38514 CPU us 38 CPU ms`
(from the VMM's start to the guest's write to the boot-timer port, with the VMM's CPU time);
`Firecracker exiting successfully. exit_code=0` / `... with error. exit_code=1` (EXIT) and the
panic hook's `Firecracker panicked at ...` (CRASH) end it.

The stamp of a line (`stamp_ns`) places its events on the host's clock when the console is live
(see `uniobs.guest.parsers.detect`); a replayed recording keeps its lines' positions.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Sequence
from datetime import datetime

from uniobs.guest.parsers._common import FamilyParser, clip, event, exit_severity, int_or_none
from uniobs.model import Severity
from uniobs.plugin import ConsoleLine, GuestEvent, Milestone, VmmLogParser

# The stamp, then "[id:thread...] ": the id may be empty (v0.11), the thread holds a space ("fc_vcpu 0").
_LOG = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))? \[[^\]\s:]{0,64}:([^\]]{1,240})\] ")
_LEVELS = {"ERROR": Severity.ERROR, "WARN": Severity.WARN}
_HEADER = "Running Firecracker v"
_RUNNING = re.compile(r"Running Firecracker (v\S{1,64})")
_REQUEST = re.compile(r"The API server received a (\w{1,8}) request on \"([^\"]{1,128})\"")
_DURATION = re.compile(r"Total previous API call duration: (\d{1,12}) us\.")
_CONFIG_STARTED = "Successfully started microvm that was configured from one single json"
_BOOT_TIME = re.compile(r"Guest-boot-time = {0,8}(\d{1,15}) us \d{1,12} ms, {0,8}(\d{1,15}) CPU us")
_EXITING = re.compile(r"Firecracker exiting\b.{0,48}?(?:exit_code=|with code )(-?\d{1,4})")
_PANIC = re.compile(r"Firecracker panicked at (.*)")


def _is_log_line(text: str) -> bool:
    """The cheap test first (a digit, '-' and 'T' where a stamp has them), the pattern only then."""
    return text[:1].isdigit() and text[4:5] == "-" and text[10:11] == "T" and _LOG.match(text) is not None


class FirecrackerParser(VmmLogParser, FamilyParser):
    family = "firecracker"
    description = (
        "Firecracker's log (its stdout or --log-path), beside the guest's console: VMM start, API requests "
        "and latencies, instance start, --boot-timer, exit, panic."
    )

    prefixes = (*"0123456789", _HEADER)  # a stamp's first digit, or v1.0-v1.4's unstamped header

    def __init__(self) -> None:
        super().__init__()
        # owns, stamp_ns and parse read the same line in turn: its stamp is matched once.
        self._last: tuple[str, re.Match[str] | None] = ("", None)
        self._minute: tuple[str, int | None] = ("", None)  # a stamp's minute, and its seconds since the epoch

    def _match(self, text: str) -> re.Match[str] | None:
        if self._last[0] is not text:
            cheap = text[:1].isdigit() and text[4:5] == "-" and text[10:11] == "T"  # as _is_log_line
            self._last = (text, _LOG.match(text) if cheap else None)
        return self._last[1]

    def owns(self, line: ConsoleLine) -> bool:
        text = line.text
        return self._match(text) is not None or text.startswith(_HEADER)

    def recognises(self, line: ConsoleLine) -> bool:
        return self.owns(line)

    def stamp_ns(self, line: ConsoleLine) -> int | None:
        m = self._match(line.text)
        if m is None:
            return None
        minute = line.text[:16]  # YYYY-MM-DDTHH:MM: the same for a minute of lines
        if self._minute[0] != minute:
            year, month, day, hour, mins = (int(m.group(i)) for i in range(1, 6))
            try:  # a zone-less local time: read as UTC, which keeps the differences between stamps
                self._minute = (minute, calendar.timegm(datetime(year, month, day, hour, mins).timetuple()))
            except ValueError:  # not a date (month 13): no stamp
                self._minute = (minute, None)
        base, second = self._minute[1], int(m.group(6))
        if base is None or second > 59:
            return None
        return (base + second) * 1_000_000_000 + int((m.group(7) or "0").ljust(9, "0"))

    def parse(self, line: ConsoleLine) -> Sequence[GuestEvent]:
        text = line.text
        severity = Severity.INFO
        m = self._match(text) if text[:1].isdigit() else None
        if m is not None:
            text = text[m.end() :]
            for part in m.group(8).split(":", 4)[:4]:  # thread, then the level when it is shown
                severity = _LEVELS.get(part, severity)
        r = _RUNNING.match(text)
        if r is not None:
            return [event(line, "firecracker.start", self.once(Milestone.BOOT), firecracker__version=r.group(1))]
        q = _REQUEST.match(text)
        if q is not None:
            method, path = q.group(1).upper(), q.group(2)
            name = "firecracker.api.request"
            if path == "/actions" and "InstanceStart" in text[q.end() : q.end() + 256]:
                name = "firecracker.instance_start"
            return [event(line, name, firecracker__api__method=method, firecracker__api__path=path)]
        d = _DURATION.match(text)
        if d is not None:
            return [event(line, "firecracker.api.duration", duration_s=int(d.group(1)) / 1e6, guest_reported=False)]
        if text.startswith(_CONFIG_STARTED):
            return [event(line, "firecracker.instance_start", firecracker__config_file=True)]
        b = _BOOT_TIME.match(text)
        if b is not None:
            return [
                event(
                    line, "firecracker.guest_boot_time", duration_s=int(b.group(1)) / 1e6, guest_reported=False,
                    firecracker__boot__cpu_time_s=int(b.group(2)) / 1e6,
                )
            ]  # fmt: skip
        x = _EXITING.match(text)
        if x is not None:
            code = int_or_none(x.group(1))
            return [
                event(
                    line, "firecracker.exit", self.once(Milestone.EXIT), severity=exit_severity(code),
                    firecracker__exit_code=code,
                )
            ]  # fmt: skip
        p = _PANIC.match(text)
        if p is not None:
            return [
                event(
                    line, "firecracker.panic", self.once(Milestone.CRASH), severity=Severity.ERROR,
                    firecracker__crash__reason=clip(p.group(1)) or "panic",
                )
            ]  # fmt: skip
        if severity is not Severity.INFO:  # a warning or an error, where --show-level prints the level
            return [event(line, "firecracker.log", severity=severity, firecracker__message=text)]
        return []
