"""Solo5 consoles: the hvt and spt tenders, the legacy ukvm and virtio targets, MirageOS on top.

What Solo5 prints (bindings/hvt/start.c, bindings/*/platform_lifecycle.c, bindings/cpu_*.c,
Solo5 0.4 to 0.9; the legacy names from 0.2): the four-line ASCII banner, then
`Solo5: Bindings version v0.7.5`, then (after memory, clock, block and network set-up, just
before `solo5_app_main()`) the memory map, whose last line is the heap. The legacy kernels print
`Solo5: new bindings` at that point instead. The end is `Solo5: solo5_exit(N) called` (hvt/spt)
or `solo5_app_main() returned with N` (legacy, and hvt at debug level), both EXIT with the status.
A crash (CRASH, with its reason): a CPU trap prints `Solo5: trap: type=#PF ec=... rip=...` and then
always `Solo5: ABORT: file.c:N: Fatal trap`; a failed assertion or stack smashing `Solo5: ABORT: ...`;
`solo5_abort()` `Solo5: solo5_abort() called`. The crash lines are printed even under
`--solo5:quiet`, the exit line is not. After a crash the hvt tender exits 255 (SOLO5_EXIT_ABORT);
the virtio target always writes 41 to isa-debug-exit, so there the console is the only witness.
The tender (host side) writes its own warnings to stderr as `solo5-hvt: WARNING: ...`; when
stderr is captured with the console they arrive interleaved.

MirageOS applications on Solo5 print `STUB: getenv() called` (the OCaml runtime's stubs) and
Logs lines `2023-01-01 12:00:00 -00:00: INF [netif] ...`: the first of either is APP_START.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from uniobs.guest.parsers._common import FamilyParser, clip, event, exit_severity, first_match, int_or_none
from uniobs.model import Severity
from uniobs.plugin import ConsoleLine, GuestEvent, Milestone

# The four banner lines, as Solo5 prints them (trailing blanks ignored).
_BANNER_FIRST = re.compile(r" {0,16}\| {1,8}___\|\s*$")
_BANNER_REST = (
    re.compile(r" {0,4}__\|  _ \\  \|  _ \\ __ \\\s*$"),
    re.compile(r"\\__ \\ \(   \| \| \(   \|  \) \|\s*$"),
    re.compile(r"____/\\___/ _\|\\___/____/\s*$"),
)

_BINDINGS = re.compile(r"Solo5: Bindings version (\S{1,64})")
_NEW_BINDINGS = re.compile(r"Solo5: new bindings\b")
_MEMORY_MAP = re.compile(r"Solo5: Memory map: (\d{1,9}) MB addressable")
_HEAP = re.compile(r"Solo5: +heap >= (0x[0-9a-fA-F]{1,16}) < stack < (0x[0-9a-fA-F]{1,16})")
_EXIT = re.compile(r"Solo5: solo5_exit\((-?\d{1,10})\) called")
_APP_RETURNED = re.compile(r"(?:Solo5: )?solo5_app_main\(\) returned with (-?\d{1,10})")
_TRAP = re.compile(r"Solo5: trap: (.*)")
_TRAP_TYPE = re.compile(r"type=(\S{1,16})")
_ABORT = re.compile(r"Solo5: ABORT: (?:([\w.\-/]{1,64}:\d{1,6}): )?(.*)")
_SOLO5_ABORT = re.compile(r"Solo5: solo5_abort\(\) called")  # bindings/exit.c (the dumpcore test's end)
# The OCaml runtime's unimplemented-call stubs (ocaml-freestanding), and MirageOS Logs lines.
_STUB = re.compile(r"STUB: (\w{1,64})\(\) called")
_MIRAGE_LOG = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [-+]\d\d:\d\d: (?:APP|INF|WRN|ERR|DBG) \[")
# The tender's own messages on stderr: "solo5-hvt: WARNING: ...", "solo5-hvt: <image>: Warning: ...".
_TENDER = re.compile(r"(solo5-hvt|solo5-spt|solo5-virtio|ukvm-bin): (.*)")
_TENDER_WARNING = re.compile(r"(?:[^:]{1,64}: )?(?:WARNING|Warning|warning): ")
_TENDER_ERROR = re.compile(r"(?:[^:]{1,64}: )?(?:ERROR|Error|error|Fatal|fatal|FATAL)\b")


class Solo5Parser(FamilyParser):
    family = "solo5"
    description = "Solo5 hvt/spt/virtio/ukvm consoles and MirageOS on Solo5 (banner, memory map, exit, traps)."

    def recognises(self, line: ConsoleLine) -> bool:
        text = line.text
        if text.startswith(("Solo5: ", "solo5_app_main() returned")):
            return True
        if _BANNER_FIRST.match(text) or any(p.match(text) for p in _BANNER_REST):
            return True
        return bool(_TENDER.match(text) or _STUB.match(text))

    def parse(self, line: ConsoleLine) -> Sequence[GuestEvent]:
        text = line.text
        if text.startswith("Solo5: ") or text.startswith("solo5_app_main"):
            return self._kernel(line, text)
        if _BANNER_FIRST.match(text):
            boot = self.once(Milestone.BOOT)
            return [event(line, "solo5.boot", boot)] if boot else []
        if text.startswith("STUB: ") or _MIRAGE_LOG.match(text):
            start = self.once(Milestone.APP_START)
            if start is None:
                return []
            m = _STUB.match(text)
            return [event(line, "solo5.app_start", start, solo5__stub=m.group(1) if m else None)]
        m = _TENDER.match(text)
        if m is not None:
            return self._tender(line, m.group(1), m.group(2))
        return []

    def _kernel(self, line: ConsoleLine, text: str) -> list[GuestEvent]:
        events: list[GuestEvent] = []
        if not self.seen(Milestone.BOOT):  # the banner was lost (or cut from the transcript)
            events.append(event(line, "solo5.boot", self.once(Milestone.BOOT)))
        patterns = (_BINDINGS, _NEW_BINDINGS, _MEMORY_MAP, _HEAP, _EXIT, _APP_RETURNED, _TRAP, _ABORT, _SOLO5_ABORT)
        hit = first_match(patterns, text)
        if hit is None:
            return events
        which, m = hit
        if which == 0:
            events.append(event(line, "solo5.bindings", solo5__version=m.group(1)[:64]))
        elif which == 1:  # legacy kernels: printed right before solo5_app_main()
            events.append(event(line, "solo5.kernel_ready", self.once(Milestone.KERNEL_READY), solo5__legacy=True))
        elif which == 2:
            mib = int(m.group(1))
            events.append(event(line, "solo5.memory_map", solo5__memory__addressable_bytes=mib << 20))
        elif which == 3:  # the last line of the memory map: the heap is locked, the app comes next
            heap, stack = int(m.group(1), 16), int(m.group(2), 16)  # the stack grows down from the end
            events.append(
                event(
                    line, "solo5.kernel_ready", self.once(Milestone.KERNEL_READY),
                    solo5__heap__start=heap, solo5__memory__end=stack,
                )
            )  # fmt: skip
        elif which in (4, 5):
            code = int_or_none(m.group(1))
            name = "solo5.exit" if which == 4 else "solo5.app_main_returned"
            events.append(
                event(line, name, self.once(Milestone.EXIT), severity=exit_severity(code), solo5__exit_code=code)
            )
        elif which == 6:
            detail = m.group(1)
            kind = _TRAP_TYPE.search(detail[:64])
            crash = self.once(Milestone.CRASH)
            events.append(
                event(
                    line, "solo5.trap", crash, severity=Severity.ERROR,
                    solo5__crash__reason=f"trap: {clip(detail)}" if crash else None,
                    solo5__trap=clip(detail), solo5__trap__type=kind.group(1) if kind else None,
                )
            )  # fmt: skip
        elif which == 8:
            events.append(
                event(
                    line, "solo5.abort", self.once(Milestone.CRASH), severity=Severity.ERROR,
                    solo5__crash__reason="solo5_abort() called",
                )
            )  # fmt: skip
        else:
            location, reason = m.group(1), m.group(2)
            events.append(
                event(
                    line, "solo5.abort", self.once(Milestone.CRASH), severity=Severity.ERROR,
                    solo5__crash__reason=clip(reason) or "abort", solo5__abort__location=location,
                )
            )  # fmt: skip
        return events

    def _tender(self, line: ConsoleLine, tender: str, message: str) -> list[GuestEvent]:
        if _TENDER_WARNING.match(message):
            return [
                event(
                    line, "solo5.tender.warning", severity=Severity.WARN, solo5__tender=tender, solo5__message=message
                )
            ]
        if _TENDER_ERROR.match(message):
            return [
                event(line, "solo5.tender.error", severity=Severity.ERROR, solo5__tender=tender, solo5__message=message)
            ]
        return []
