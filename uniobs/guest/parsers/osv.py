"""OSv consoles (v0.24 to v0.57 and later).

What OSv prints (loader.cc, core/chart.cc, drivers, dhcp): the banner `OSv v0.57.0-6-gb442a218`
(BOOT); once DHCP has leased an address `eth0: 192.168.122.15`, the last thing the loader
waits for before it runs the application (KERNEL_READY); with `--bootchart` one line per boot
phase, `<TAB>VFS initialized: 81.62ms, (+1.52ms)`, i.e. the time since the hypervisor handed
over and the phase's own length, ending with `Total time: 178.01ms`; newer loaders print
`Booted up in 142.59 ms` instead. Then the command line it runs, `Cmdline: /hello` (v0.24:
`Running from /init/30-auto-00: /libhttpserver.so &!`): APP_START.

Bootchart phases become `osv.bootchart.<phase>` events with `guest_time_s` (the absolute time)
and `duration_s` (the phase); the total becomes `osv.boot_time` with `duration_s`. Fatal ends:
`Aborted` + `[backtrace]`, `page fault outside application`, `Assertion failed: ...`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from uniobs.guest.parsers._common import FamilyParser, clip, event, int_or_none, snake
from uniobs.model import Severity
from uniobs.plugin import ConsoleLine, GuestEvent, Milestone

_BANNER = re.compile(r"OSv (v\d[\w.\-+~]{0,62})")
_BOOTCHART = re.compile(r"\s{0,8}([^:\t]{1,48}): (\d{1,7}(?:\.\d{1,6})?)ms, \(\+(\d{1,7}(?:\.\d{1,6})?)ms\)\s*$")
_BOOTED = re.compile(r"Booted up in (\d{1,7}(?:\.\d{1,6})?) ms")
_NETWORK = re.compile(r"(eth\d{1,3}): (\d{1,3}(?:\.\d{1,3}){3})\s*$")
_CMDLINE = re.compile(r"Cmdline: (.*)")
_RUNNING_FROM = re.compile(r"Running from (\S{1,128}): (.*)")
_PROGRAM_RETURNED = re.compile(r"program (\S{1,128}) returned (-?\d{1,10})")
_DHCP_LOG = re.compile(r"\[[DIWE]/\d{1,6} dhcp\]: ")
_CRASH = re.compile(r"(Aborted\s*$|page fault outside application|Assertion failed: |\[backtrace\])")


def _ms(text: str) -> float:
    """Seconds from milliseconds as printed ("178.01"), without binary noise (0.17801, not 0.17801000000000002)."""
    return round(float(text) / 1000, 9)


class OsvParser(FamilyParser):
    family = "osv"
    description = "OSv consoles: version banner, --bootchart phases, boot time, DHCP lease, command line, aborts."

    def recognises(self, line: ConsoleLine) -> bool:
        text = line.text
        return bool(_BANNER.match(text) or _BOOTCHART.match(text) or _BOOTED.match(text) or _DHCP_LOG.match(text))

    def parse(self, line: ConsoleLine) -> Sequence[GuestEvent]:
        text = line.text
        b = _BANNER.match(text)
        if b is not None:
            return [event(line, "osv.boot", self.once(Milestone.BOOT), osv__version=b.group(1))]
        c = _BOOTCHART.match(text)
        if c is not None:
            return [self._bootchart(line, c.group(1).strip(), _ms(c.group(2)), _ms(c.group(3)))]
        t = _BOOTED.match(text)
        if t is not None:
            total = _ms(t.group(1))
            return [
                event(line, "osv.boot_time", self.once(Milestone.KERNEL_READY), guest_time_s=total, duration_s=total)
            ]
        n = _NETWORK.match(text)
        if n is not None:
            return [
                event(
                    line, "osv.network.up", self.once(Milestone.KERNEL_READY),
                    osv__net__interface=n.group(1), osv__net__ipv4=n.group(2),
                )
            ]  # fmt: skip
        a = _CMDLINE.match(text) or _RUNNING_FROM.match(text)
        if a is not None:
            cmdline = a.group(a.lastindex or 1)
            return [event(line, "osv.app_start", self.once(Milestone.APP_START), osv__cmdline=cmdline)]
        p = _PROGRAM_RETURNED.match(text)
        if p is not None:
            code = int_or_none(p.group(2))
            return [event(line, "osv.program.returned", osv__program=p.group(1), osv__exit_code=code)]
        x = _CRASH.match(text)
        if x is not None:
            crash = self.once(Milestone.CRASH)
            if crash is None:
                return []
            return [event(line, "osv.crash", crash, severity=Severity.ERROR, osv__crash__reason=clip(text))]
        return []

    def _bootchart(self, line: ConsoleLine, title: str, at: float, delta: float) -> GuestEvent:
        if title == "Total time":  # the whole boot up to here; its own delta is the last step's
            return event(
                line, "osv.boot_time", self.once(Milestone.KERNEL_READY), guest_time_s=at,
                duration_s=at, osv__bootchart__last_delta_s=delta,
            )  # fmt: skip
        return event(
            line, f"osv.bootchart.{snake(title)}", guest_time_s=at, duration_s=delta,
            osv__bootchart__phase=title, boot_phase=True,
        )  # fmt: skip
