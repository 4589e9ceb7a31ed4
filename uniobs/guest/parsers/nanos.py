"""Nanos consoles, as `ops run` shows them (Nanos 2018 to 0.1.5x), and `dump -l` of its klog.

What appears (ops, the Nanos kernel, its klibs): ops's own `running local instance` and
`booting /home/user/.ops/images/main ...` (BOOT); the kernel's DHCP result
`en1: assigned 10.0.2.15` (KERNEL_READY: the kernel starts the program once the network is
configured), optionally stamped with the uptime `[0.087239] ` (unpadded, unlike Linux);
klib messages `[0.319779, 0, ntp] ...` (uptime, cpu, klib); a fatal signal
`*** signal 11 received by tid 2, errno 0, code 1` (CRASH); ops's `exit status 1` and the klog
dump's `exit code: 1` (EXIT). Nanos 2018 printed `create fs` / `kernel complete` at boot and
`assigned: 10.0.2.15`. The program's first own line after the address is taken as APP_START
(marked `uniobs.inferred`): Nanos prints nothing when it starts the program.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from uniobs.guest.parsers._common import FamilyParser, event, exit_severity, int_or_none, seconds
from uniobs.model import Severity
from uniobs.plugin import ConsoleLine, GuestEvent, Milestone

_STAMP = re.compile(r"\[(\d{1,10})\.(\d{1,9})\] ")
_KLIB = re.compile(r"\[(\d{1,10})\.(\d{1,9}), (\d{1,4}), (\w{1,32})\] ")
_OPS_BOOT = re.compile(r"(?:running local instance\s*$|booting (\S{1,256}) \.\.\.\s*$)")
_EARLY = re.compile(r"(?:create fs|kernel complete)\s*$")  # Nanos 2018's stage2/stage3
_ASSIGNED = re.compile(r"(en\d{1,3}): assigned (\S{1,64})|assigned: (\d{1,3}(?:\.\d{1,3}){3})")
_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}$")
_SIGNAL = re.compile(r"\*\*\* signal (\d{1,3}) received by tid (\d{1,10})(?:, errno (-?\d{1,6}), code (-?\d{1,6}))?")
_EXIT = re.compile(r"(?:exit status|exit code:) (-?\d{1,10})\s*$")
_BOOT_ID = re.compile(r"boot id: (\d{1,10})\s*$")
# ops's own Go log lines ("2021/03/22 11:35:35 Failed") are the host's, not the program's.
_HOST_LOG = re.compile(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d ")


class NanosParser(FamilyParser):
    family = "nanos"
    description = "Nanos consoles under ops: boot, DHCP address, klib stamps, fatal signals, exit status."

    def recognises(self, line: ConsoleLine) -> bool:
        text = line.text
        if _KLIB.match(text) or _SIGNAL.match(text):
            return True
        m = _STAMP.match(text)
        rest = text[m.end() :] if m is not None else text
        return bool(_ASSIGNED.match(rest) or _OPS_BOOT.match(rest))

    def parse(self, line: ConsoleLine) -> Sequence[GuestEvent]:
        text = line.text
        uptime: float | None = None
        kernel = False  # a line the kernel or a klib printed, not the program
        k = _KLIB.match(text)
        if k is not None:
            uptime, text, kernel = seconds(k.group(1), k.group(2)), text[k.end() :], True
        else:
            s = _STAMP.match(text)
            if s is not None:
                uptime, text, kernel = seconds(s.group(1), s.group(2)), text[s.end() :], True
        b = _OPS_BOOT.match(text) or _EARLY.match(text)
        if b is not None:
            boot = self.once(Milestone.BOOT)
            image = b.group(1) if b.re is _OPS_BOOT else None
            return [event(line, "nanos.boot", boot, guest_time_s=uptime, nanos__image=image)] if boot else []
        a = _ASSIGNED.match(text)
        if a is not None:
            address = a.group(2) or a.group(3)
            if _IPV4.match(address):
                ready = self.once(Milestone.KERNEL_READY)
                return [
                    event(
                        line, "nanos.network.up", ready, guest_time_s=uptime,
                        nanos__net__interface=a.group(1), nanos__net__ipv4=address,
                    )
                ]  # fmt: skip
            return [
                event(
                    line, "nanos.network.address", guest_time_s=uptime,
                    nanos__net__interface=a.group(1), nanos__net__address=address,
                )
            ]  # fmt: skip
        g = _SIGNAL.match(text)
        if g is not None:
            signal = int(g.group(1))
            return [
                event(
                    line, "nanos.signal", self.once(Milestone.CRASH), guest_time_s=uptime, severity=Severity.ERROR,
                    nanos__signal=signal, nanos__tid=int(g.group(2)), nanos__errno=int_or_none(g.group(3)),
                    nanos__crash__reason=f"signal {signal} received by tid {g.group(2)}",
                )
            ]  # fmt: skip
        x = _EXIT.match(text)
        if x is not None:
            code = int_or_none(x.group(1))
            return [
                event(
                    line, "nanos.exit", self.once(Milestone.EXIT), guest_time_s=uptime,
                    severity=exit_severity(code), nanos__exit_code=code,
                )
            ]  # fmt: skip
        i = _BOOT_ID.match(text)
        if i is not None:  # the klog dump's header
            return [event(line, "nanos.klog", nanos__boot_id=int(i.group(1)))]
        if (
            not kernel
            and self.seen(Milestone.KERNEL_READY)
            and not self.seen(Milestone.APP_START)
            and text.strip()
            and not _HOST_LOG.match(text)
        ):
            return [event(line, "nanos.app_start", self.once(Milestone.APP_START), inferred=True)]
        return []
