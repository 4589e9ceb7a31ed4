"""Unikraft consoles (0.10 and later; uk_printk formats of 0.12 Epimetheus and newer).

What Unikraft prints (lib/ukdebug/print.c, lib/ukboot/boot.c, lib/ukboot/banner.h):
- under QEMU's `pc` machine, SeaBIOS's `SeaBIOS (version ...)` and the option ROM's
  `Booting from ROM..`, with no newline, so the kernel's first line follows on the same line;
- kernel messages `[    0.153699] Info: [libkvmplat] <bootinfo.c @   56> ...` (uptime stamp when
  printk timestamps are configured; level Info/Warn/ERR/CRIT/dbg; the library; the source
  location as `<file @ line>` or, in newer releases, `file @ line :`). The platform's first
  line names the release: `Unikraft Epimetheus (0.12.0~4c7352c0-c)`;
- the banner (`Powered by` + ASCII art + `Epimetheus 0.12.0~4c7352c0`), printed by ukboot after
  every init function has run and right before `main()`: KERNEL_READY;
- with info-level printk `Calling main(...)` (APP_START) and `main returned N` (EXIT); without
  it the application's first own line after the banner is taken as APP_START (marked
  `uniobs.inferred`), then `Halting system (N)`;
- `CRIT:` messages (UK_CRASH, UK_ASSERT's `Assertion failure: ...`): CRASH;
- a failed boot: `ERR: [libukboot] ... Init function at 0x... returned error N` (an init function
  failed, e.g. after `ERR: [libukrandom] ... Could not initialize the HWRNG (-95)`: Unikraft's target
  for a failed initialisation is a crash), and `Halting system (3)` (UKPLAT_CRASH): CRASH, with the
  library's own error as the reason; `Halting system (0|1)` (halt, restart) is the EXIT.
Under QEMU with isa-debug-exit, Unikraft writes 41 for a halt and 42 for a crash (QEMU exits 83, 85).
Stamps become `guest_time_s`. SeaBIOS and the ROM hand-off are not Unikraft's own (Linux and
other -kernel guests print them too), so they count as BOOT but do not identify the family.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from uniobs.guest.parsers._common import (
    SEABIOS,
    FamilyParser,
    clip,
    event,
    exit_severity,
    int_or_none,
    split_stamp,
    strip_rom_handoff,
)
from uniobs.model import Severity
from uniobs.plugin import ConsoleLine, GuestEvent, Milestone

# "Info: [libkvmplat] <bootinfo.c @   56> message" or "CRIT: [libvfscore] rootfs.c @ 85   : message".
_PRINTK = re.compile(
    r"(Info|Warn|ERR|CRIT|dbg|Dbg):\s{0,3}\[(\w{1,48})\]\s{0,4}"
    r"(?:<([\w.\-]{1,64}) @ {0,6}(\d{1,6})>\s?|([\w.\-]{1,64}) @ {0,6}(\d{1,6})\s{0,8}:\s?)?"
)
_RECOGNISE = re.compile(r"(?:Info|Warn|ERR|CRIT|dbg|Dbg):\s{0,3}\[lib\w{1,48}\]")
_BOOTINFO = re.compile(r"Unikraft (\w{1,32}) \(([^)\s]{1,64})\)")
_CALLING_MAIN = re.compile(r"Calling main\(")
_MAIN_RETURNED = re.compile(r"main returned (-?\d{1,10})")
_HALTING = re.compile(r"Halting system \((-?\d{1,4})\)")
_INIT_FAILED = re.compile(r"Init function at (?:0x)?[0-9a-fA-F]{1,16} returned error (-?\d{1,6})")
UKPLAT_CRASH = 3  # enum ukplat_gstate: HALT, RESTART, SUSPEND, CRASH
# Banners: "Powered by" followed by art, or the one-line "Powered by Unikraft Epimetheus (0.12.0)".
_POWERED_BY = re.compile(r"Powered by\s*$")
_POWERED_BY_LINE = re.compile(r"Powered by Unikraft (\w{1,32}) \(?([\d.]{3,16}[^)\s]{0,48})\)?\s*$")
_ART = re.compile(r"(?:o\.   \.o {3,}_ _|Oo   Oo  ___ \(_\))")
_VERSION = re.compile(r"\s{2,40}([A-Z][a-z]{2,15}) (\d{1,3}\.\d{1,3}\.\d{1,3}[\w.~+\-]{0,48})\s*$")
_BANNER_WINDOW = 8  # lines after "Powered by" in which the release line is expected
# lwIP network interface messages.
_NET_ADDRESS = re.compile(r"(\w{0,16}): Set IPv4 address (\d{1,3}(?:\.\d{1,3}){3})")
_NET_UP = re.compile(r"(\w{1,16}): Interface is up")

_SEVERITY = {"CRIT": Severity.ERROR, "ERR": Severity.ERROR, "Warn": Severity.WARN}


class UnikraftParser(FamilyParser):
    family = "unikraft"
    description = "Unikraft consoles: SeaBIOS/ROM hand-off, uk_printk stamps, banner and release, main(), CRIT."

    def __init__(self) -> None:
        super().__init__()
        self._banner_left = 0  # >0: inside the banner, the release line may come
        self._last_error: str | None = None  # the last ERR message: why a failed boot failed

    def recognises(self, line: ConsoleLine) -> bool:
        _, text = strip_rom_handoff(line.text)
        _, text = split_stamp(text)
        return bool(_RECOGNISE.match(text) or _ART.match(text) or _POWERED_BY_LINE.match(text) or _BOOTINFO.match(text))

    def parse(self, line: ConsoleLine) -> Sequence[GuestEvent]:
        events: list[GuestEvent] = []
        handoff, text = strip_rom_handoff(line.text)
        if handoff:
            events.append(event(line, "unikraft.firmware.handoff", self.once(Milestone.BOOT)))
        elif text.startswith("SeaBIOS "):
            m = SEABIOS.match(text)
            if m is not None:
                return [
                    event(line, "unikraft.firmware", self.once(Milestone.BOOT), unikraft__seabios__version=m.group(1))
                ]
        uptime, text = split_stamp(text)
        m = _PRINTK.match(text)
        if m is not None:
            events.extend(self._printk(line, uptime, m, text[m.end() :]))
            return events
        events.extend(self._plain(line, uptime, text))
        return events

    def _printk(self, line: ConsoleLine, uptime: float | None, m: re.Match[str], message: str) -> list[GuestEvent]:
        level, library = m.group(1), m.group(2)
        source = m.group(3) or m.group(5)
        where = f"{source}:{m.group(4) or m.group(6)}" if source else None
        if level == "CRIT":
            crash = self.once(Milestone.CRASH)
            return [
                event(
                    line, "unikraft.crash" if crash else "unikraft.critical", crash,
                    guest_time_s=uptime, severity=Severity.ERROR, unikraft__library=library,
                    unikraft__source=where, unikraft__crash__reason=clip(message) or "CRIT",
                )
            ]  # fmt: skip
        if level == "ERR" and _INIT_FAILED.match(message):  # the boot failed: Unikraft crashes
            crash = self.once(Milestone.CRASH)
            reason = "; ".join(m for m in (self._last_error, message) if m)
            return [
                event(
                    line, "unikraft.boot_failed", crash, guest_time_s=uptime, severity=Severity.ERROR,
                    unikraft__library=library, unikraft__source=where,
                    unikraft__crash__reason=clip(reason) if crash else None, unikraft__message=message,
                )
            ]  # fmt: skip
        if level == "ERR":
            self._last_error = message.strip() or None
            return [
                event(
                    line, "unikraft.error", guest_time_s=uptime, severity=_SEVERITY[level],
                    unikraft__library=library, unikraft__source=where, unikraft__message=message,
                )
            ]  # fmt: skip
        b = _BOOTINFO.match(message)
        if b is not None:  # the platform's first line: the kernel is running
            boot = None if self.seen(Milestone.BOOT) else self.once(Milestone.BOOT)
            return [
                event(
                    line, "unikraft.kernel_entry", boot, guest_time_s=uptime,
                    unikraft__codename=b.group(1), unikraft__version=b.group(2)[:64],
                )
            ]  # fmt: skip
        if _CALLING_MAIN.match(message):
            start = self.once(Milestone.APP_START)
            return [event(line, "unikraft.app_start", start, guest_time_s=uptime)] if start else []
        r = _MAIN_RETURNED.match(message)
        if r is not None:
            code = int_or_none(r.group(1))
            return [
                event(
                    line, "unikraft.main_returned", self.once(Milestone.EXIT), guest_time_s=uptime,
                    severity=exit_severity(code), unikraft__exit_code=code,
                )
            ]  # fmt: skip
        h = _HALTING.match(message)
        if h is not None:
            target = int(h.group(1))
            if target == UKPLAT_CRASH:
                crash = self.once(Milestone.CRASH)
                return [
                    event(
                        line, "unikraft.halt", crash, guest_time_s=uptime, severity=Severity.ERROR,
                        unikraft__halt__target=target,
                        unikraft__crash__reason=clip(self._last_error or "halting system (crash)") if crash else None,
                    )
                ]  # fmt: skip
            end = None if self.seen(Milestone.CRASH) else self.once(Milestone.EXIT)
            return [event(line, "unikraft.halt", end, guest_time_s=uptime, unikraft__halt__target=target)]
        return []

    def _plain(self, line: ConsoleLine, uptime: float | None, text: str) -> list[GuestEvent]:
        """Lines that are not uk_printk messages: the banner, lwIP, the application's own output."""
        if self._banner_left > 0:
            self._banner_left -= 1
            v = _VERSION.match(text)
            if v is not None:
                self._banner_left = 0
                return [self._ready(line, uptime, v.group(1), v.group(2))]
            return []
        if _POWERED_BY.match(text) or _ART.match(text):
            self._banner_left = _BANNER_WINDOW
            return []
        p = _POWERED_BY_LINE.match(text)
        if p is not None:
            return [self._ready(line, uptime, p.group(1), p.group(2))]
        n = _NET_ADDRESS.match(text)
        if n is not None:
            return [
                event(
                    line, "unikraft.network.address", guest_time_s=uptime,
                    unikraft__net__interface=n.group(1) or None, unikraft__net__ipv4=n.group(2),
                )
            ]  # fmt: skip
        n = _NET_UP.match(text)
        if n is not None:
            return [event(line, "unikraft.network.up", guest_time_s=uptime, unikraft__net__interface=n.group(1))]
        if self.seen(Milestone.KERNEL_READY) and not self.seen(Milestone.APP_START) and text.strip():
            # The banner is printed right before main(): the first line after it is the application's.
            return [
                event(line, "unikraft.app_start", self.once(Milestone.APP_START), guest_time_s=uptime, inferred=True)
            ]
        return []

    def _ready(self, line: ConsoleLine, uptime: float | None, codename: str, version: str) -> GuestEvent:
        return event(
            line, "unikraft.kernel_ready", self.once(Milestone.KERNEL_READY), guest_time_s=uptime,
            unikraft__codename=codename, unikraft__version=version[:64],
        )  # fmt: skip
