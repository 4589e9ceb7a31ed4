"""Hermit (RustyHermit) consoles, on uhyve or QEMU (kernel 0.6 to 0.11; src/logging.rs, src/lib.rs).

The kernel's log prefix changed over time, all handled here:
- `[0][INFO] Welcome to Hermit 0.10.0` (core id, level);
- `[            ][0][INFO ] ...` (a time column, blank until the timer runs);
- `[    0.123456][0][INFO  hermit    ] ...` (uptime in seconds, core, level, log target).
`Welcome to Hermit <version>` (formerly `HermitCore-rs`) is BOOT; `Total memory size: N MiB`
an informative step; `Hermit is running on uhyve!` / `... on common system!` (initd started,
drivers next) is KERNEL_READY; `Jumping into application` APP_START; the kernel's panic handler
`[0][PANIC] panicked at src/...` and the Rust runtime's `thread 'main' panicked at ...` CRASH.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from uniobs.guest.parsers._common import FamilyParser, clip, event, seconds
from uniobs.model import Severity
from uniobs.plugin import ConsoleLine, GuestEvent, Milestone

_PREFIX = re.compile(
    r"(?:\[ {0,12}(?:(\d{1,10})\.(\d{6}))?\])?"  # optional time column
    r"\[(\d{1,4})\]\[(TRACE|DEBUG|INFO|WARN|ERROR|PANIC)(?: {1,5}([\w:\-]{1,64}))? {0,12}\] {0,2}"
)
_WELCOME = re.compile(r"Welcome to Hermit(?:Core)?(?:-rs)? (\S{1,64})")
_MEMORY = re.compile(r"Total memory size: (\d{1,12}) MiB")
_RUNNING_ON = re.compile(r"Hermit(?:Core)? is running on (uhyve|common system)")
_JUMPING = re.compile(r"Jumping into application")
_APP_PANIC = re.compile(r"thread '([^']{0,64})' panicked at (.*)")


class HermitParser(FamilyParser):
    family = "hermit"
    description = "Hermit consoles: version banner, memory, initd, application start, kernel and Rust panics."

    def recognises(self, line: ConsoleLine) -> bool:
        return _PREFIX.match(line.text) is not None

    def parse(self, line: ConsoleLine) -> Sequence[GuestEvent]:
        p = _PREFIX.match(line.text)
        if p is None:
            a = _APP_PANIC.match(line.text)
            if a is None or not self.seen(Milestone.BOOT):
                return []
            crash = self.once(Milestone.CRASH)
            return [
                event(
                    line, "hermit.app.panic", crash, severity=Severity.ERROR,
                    hermit__thread=a.group(1), hermit__crash__reason=clip(a.group(2)) or "panic",
                )
            ]  # fmt: skip
        uptime = seconds(p.group(1), p.group(2)) if p.group(1) is not None else None
        level, message = p.group(4), line.text[p.end() :]
        if level == "PANIC":
            return [
                event(
                    line, "hermit.panic", self.once(Milestone.CRASH), guest_time_s=uptime, severity=Severity.ERROR,
                    hermit__core=int(p.group(3)), hermit__crash__reason=clip(message) or "panic",
                )
            ]  # fmt: skip
        w = _WELCOME.match(message)
        if w is not None:
            return [
                event(line, "hermit.boot", self.once(Milestone.BOOT), guest_time_s=uptime, hermit__version=w.group(1))
            ]
        m = _MEMORY.match(message)
        if m is not None:
            return [
                event(line, "hermit.memory", guest_time_s=uptime, hermit__memory__total_bytes=int(m.group(1)) << 20)
            ]
        r = _RUNNING_ON.match(message)
        if r is not None:
            return [
                event(
                    line, "hermit.kernel_ready", self.once(Milestone.KERNEL_READY), guest_time_s=uptime,
                    hermit__platform=r.group(1),
                )
            ]  # fmt: skip
        if _JUMPING.match(message):
            start = self.once(Milestone.APP_START)
            return [event(line, "hermit.app_start", start, guest_time_s=uptime)] if start else []
        if not self.seen(Milestone.BOOT):  # the welcome line was lost
            return [event(line, "hermit.boot", self.once(Milestone.BOOT), guest_time_s=uptime)]
        return []
