"""Firecracker's logger output (`--log-path`, v1.0 to v1.x), read like a console.

This is the VMM's log, not the guest's serial console: the timings it reports are the VMM's own
(`uniobs.guest_reported=False`). Lines look like
`2023-02-05T21:54:15.632444828 [anonymous-instance:fc_api:INFO:src/api_server/src/lib.rs:209] ...`
(wall-clock time, instance id, thread, and with `--show-level` / `--show-log-origin` the level
and source location). `Running Firecracker v1.2.0` (BOOT: the VMM is up) comes first, unprefixed
in v1.2; API requests are logged as `The API server received a Put request on "/boot-source"`;
`Total previous API call duration: 376 us.` gives the previous call's latency; the guest is
started by `PUT /actions` with `InstanceStart`; `Firecracker exiting ... exit_code=N` (EXIT) and
`Firecracker panicked at ...` (CRASH) end it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from uniobs.guest.parsers._common import FamilyParser, clip, event, exit_severity, int_or_none
from uniobs.model import Severity
from uniobs.plugin import ConsoleLine, GuestEvent, Milestone

_LOG = re.compile(
    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})? \[([\w\-.]{1,64}):([\w\-.]{1,32})"
    r"(?::(?:TRACE|DEBUG|INFO|WARN|ERROR))?(?::[^\]\s]{1,160})?\] "
)
_RUNNING = re.compile(r"Running Firecracker (v\S{1,64})")
_REQUEST = re.compile(r"The API server received a (\w{1,8}) request on \"([^\"]{1,128})\"")
_DURATION = re.compile(r"Total previous API call duration: (\d{1,12}) us\.")
_EXITING = re.compile(r"Firecracker exiting\b.{0,48}?(?:exit_code=|with code )(-?\d{1,4})")
_PANIC = re.compile(r"Firecracker panicked at (.*)")


class FirecrackerParser(FamilyParser):
    family = "firecracker"
    description = "Firecracker logger files: VMM start, API requests and latencies, instance start, exit, panic."

    def recognises(self, line: ConsoleLine) -> bool:
        return bool(_RUNNING.match(line.text) or _LOG.match(line.text))

    def parse(self, line: ConsoleLine) -> Sequence[GuestEvent]:
        text = line.text
        m = _LOG.match(text)
        if m is not None:
            text = text[m.end() :]
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
        return []
