"""Linux consoles of single-application microVMs (e.g. examples/hello-node/unikernel), Linux 4.x-6.x.

What Linux prints with `printk.time=y` (the default in distribution kernels): every line starts
with the uptime `[    0.310313] ` (seconds right-aligned in five columns). `Linux version 6.1...`
opens the log (BOOT); `Freeing unused kernel image ...` and `Run /init as init process` close
the kernel's initialisation (KERNEL_READY); `Kernel panic - not syncing: ...` is a CRASH (for a
microVM whose /init is the function, `Attempted to kill init! exitcode=0x00000100` carries the
function's exit status); `reboot: Power down` is the clean end (EXIT).

A microVM booted with `quiet` shows only messages of level error and above, so its console may
start with nothing but e.g. `[    0.310313] PCI: Fatal: No config space access function found`
(what examples/hello-node/unikernel prints under QEMU's microvm machine): any stamped line
identifies the family, except Unikraft's uk_printk lines, which use the same stamp followed by
`Info:`/`ERR:`/`CRIT:` and a `[lib...]` tag. Nanos prints unpadded `[0.087239]` stamps, which
the five-column padding tells apart.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from uniobs.guest.parsers._common import FamilyParser, clip, event, int_or_none, strip_rom_handoff
from uniobs.model import Severity
from uniobs.plugin import ConsoleLine, GuestEvent, Milestone

# A Linux stamp: five columns of seconds (padded with spaces below 10000 s), six of microseconds.
_STAMP = re.compile(r"\[( {0,4}\d{1,10})\.(\d{6})\] ")
_UNIKRAFT = re.compile(r"(?:Info|Warn|ERR|CRIT|dbg|Dbg):\s{0,3}\[\w{1,48}\]")
_VERSION = re.compile(r"Linux version (\S{1,64})")
_FREEING = re.compile(r"Freeing unused kernel (?:image )?(?:\(initmem\) )?memory")
_RUN_INIT = re.compile(r"Run (\S{1,128}) as init process")
_PANIC = re.compile(r"Kernel panic - not syncing: (.*)")
_KILL_INIT = re.compile(r"Attempted to kill init! exitcode=(0x[0-9a-fA-F]{1,8})")
_POWER = re.compile(r"reboot: (Power down|System halted|Restarting system)")
# In every line `parse` reads something from (the patterns above); the parser keeps no other state.
# No trailing space: a search skips ahead on the needle's last character, and spaces are everywhere.
_KEYWORDS = ("Linux version", "Freeing unused kernel", " as init process", "Kernel panic - not syncing:", "reboot:")


def _stamp(text: str) -> tuple[float | None, str]:
    m = _STAMP.match(text)
    if m is None or len(m.group(1)) < 5:  # Linux pads the seconds to five columns
        return None, text
    return int(m.group(1)) + int(m.group(2)) / 1e6, text[m.end() :]


class LinuxParser(FamilyParser):
    family = "linux"
    description = "Linux microVM consoles: printk stamps, version, Run /init, kernel panic, power down."

    def recognises(self, line: ConsoleLine) -> bool:
        _, text = strip_rom_handoff(line.text)
        uptime, rest = _stamp(text)
        if uptime is not None:
            return not _UNIKRAFT.match(rest)
        return bool(_VERSION.match(text))

    def keywords(self) -> tuple[str, ...]:
        return _KEYWORDS

    def parse(self, line: ConsoleLine) -> Sequence[GuestEvent]:
        _, text = strip_rom_handoff(line.text)
        uptime, text = _stamp(text)
        if uptime is not None and _UNIKRAFT.match(text):
            return []
        v = _VERSION.match(text)
        if v is not None:
            return [
                event(line, "linux.boot", self.once(Milestone.BOOT), guest_time_s=uptime, linux__version=v.group(1))
            ]
        if _FREEING.match(text):
            ready = self.once(Milestone.KERNEL_READY)
            return [event(line, "linux.kernel_ready", ready, guest_time_s=uptime)] if ready else []
        r = _RUN_INIT.match(text)
        if r is not None:
            return [
                event(
                    line, "linux.init", self.once(Milestone.KERNEL_READY), guest_time_s=uptime,
                    linux__init=r.group(1),
                )
            ]  # fmt: skip
        p = _PANIC.match(text)
        if p is not None:
            return [self._panic(line, uptime, p.group(1))]
        o = _POWER.match(text)
        if o is not None:
            end = None if self.seen(Milestone.CRASH) else self.once(Milestone.EXIT)
            return [event(line, "linux.power_off", end, guest_time_s=uptime, linux__reboot=o.group(1))]
        return []

    def _panic(self, line: ConsoleLine, uptime: float | None, reason: str) -> GuestEvent:
        status: int | None = None
        signal: int | None = None
        k = _KILL_INIT.match(reason)
        if k is not None:  # the wait status of init: the function's own exit
            code = int_or_none(k.group(1)) or 0
            if code & 0x7F:
                signal = code & 0x7F
            else:
                status = (code >> 8) & 0xFF
        return event(
            line, "linux.panic", self.once(Milestone.CRASH), guest_time_s=uptime, severity=Severity.ERROR,
            linux__crash__reason=clip(reason) or "panic", linux__init__exit_status=status, linux__init__signal=signal,
        )  # fmt: skip
