"""IncludeOS consoles (v0.10 to v0.15; src/kernel/os.cpp, kernel_start.cpp, panic.cpp).

What IncludeOS prints: the caption `#include<os> // Literally` between two rules of `=` (BOOT);
kernel messages `     [ Kernel ] Stack: 0x1ffe48`, `     [ x86_64 ] Initializing paging`,
`     [ Kernel ] Booted with multiboot` (informative steps); after the plugins,
`     [ Kernel ] Starting <service>`, right before `Service::start()` (KERNEL_READY and
APP_START at once); when `Service::start()` has returned and the event loop runs,
` IncludeOS v0.14.1` and ` +--> Running [ <service> ]` (READY). A panic prints the signature
`\\x15\\x07\\t**** PANIC ****` (the control bytes arrive escaped) then
`CPU: 0, Reason: <why>` (CRASH, with the reason from the second line).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from uniobs.guest.parsers._common import FamilyParser, clip, event
from uniobs.model import Severity
from uniobs.plugin import ConsoleLine, GuestEvent, Milestone

_CAPTION = re.compile(r"\s{0,80}#include<os> // Literally")
_INFO = re.compile(r"\s{0,16}\[ (\w{1,16}) \] (.*)")
_STARTING = re.compile(r"Starting (.{1,128})")
_VERSION = re.compile(r" ?IncludeOS (v\d[\w.\-+]{0,62})\s*$")
_RUNNING = re.compile(r" ?\+--> Running \[ (.{1,128}) \]\s*$")
_PANIC = re.compile(r"\*\*\*\* PANIC \*\*\*\*")
_REASON = re.compile(r"CPU: (\d{1,4}), Reason: (.*)")
_DOUBLE_FAULT = re.compile(r"Double fault!")


class IncludeOsParser(FamilyParser):
    family = "includeos"
    description = "IncludeOS consoles: caption, kernel steps, service start, event loop, panics."

    def __init__(self) -> None:
        super().__init__()
        self._panicking = False  # the next "CPU: N, Reason: ..." line belongs to a panic

    def recognises(self, line: ConsoleLine) -> bool:
        text = line.text
        if _CAPTION.match(text):
            return True
        m = _INFO.match(text)
        return m is not None and m.group(1) in ("Kernel", "x86_64", "i686")

    def parse(self, line: ConsoleLine) -> Sequence[GuestEvent]:
        text = line.text
        if _CAPTION.match(text):
            boot = self.once(Milestone.BOOT)
            return [event(line, "includeos.boot", boot)] if boot else []
        m = _INFO.match(text)
        if m is not None:
            return self._info(line, m.group(1), m.group(2))
        if "PANIC" in text and _PANIC.search(text[:64]):
            self._panicking = True
            return [event(line, "includeos.panic", self.once(Milestone.CRASH), severity=Severity.ERROR)]
        if self._panicking:
            r = _REASON.match(text)
            if r is not None:
                self._panicking = False
                return [
                    event(
                        line, "includeos.panic.reason", severity=Severity.ERROR,
                        includeos__cpu=int(r.group(1)), includeos__crash__reason=clip(r.group(2)) or "panic",
                    )
                ]  # fmt: skip
            if _DOUBLE_FAULT.match(text):
                return [event(line, "includeos.double_fault", severity=Severity.ERROR)]
        v = _VERSION.match(text)
        if v is not None:
            return [event(line, "includeos.version", includeos__version=v.group(1))]
        r = _RUNNING.match(text)
        if r is not None:
            return [event(line, "includeos.ready", self.once(Milestone.READY), includeos__service=r.group(1))]
        return []

    def _info(self, line: ConsoleLine, subsystem: str, message: str) -> list[GuestEvent]:
        events: list[GuestEvent] = []
        if not self.seen(Milestone.BOOT) and subsystem in ("Kernel", "x86_64"):  # the caption was lost
            events.append(event(line, "includeos.boot", self.once(Milestone.BOOT)))
        if subsystem == "Kernel":
            s = _STARTING.match(message)
            if s is not None:
                service = s.group(1)
                events.append(event(line, "includeos.kernel_ready", self.once(Milestone.KERNEL_READY)))
                events.append(
                    event(line, "includeos.app_start", self.once(Milestone.APP_START), includeos__service=service)
                )
            elif message.startswith("Booted with multiboot"):
                events.append(event(line, "includeos.multiboot"))
        elif subsystem == "x86_64" and message.startswith("Initializing paging"):
            events.append(event(line, "includeos.paging"))
        return events
