"""Cloud Hypervisor's own log (`-v`, v15 and later), where it shares a stream with the guest's serial port.

Cloud Hypervisor logs to stderr (or `--log-file`) and, with `--serial tty`, writes the guest's
serial port to stdout: a capture of both (`2>&1`, a terminal) interleaves them. This is the VMM's
log, so this is a `VmmLogParser`: its lines never reach the guest's family parser.

Lines look like `cloud-hypervisor: 12.345678ms: <vmm> INFO:vmm/src/lib.rs:1234 -- VM booted`
(src/main.rs, `Logger::log`): the time since the VMM started (Rust's `Duration` debug format to
six decimals: `s`, `ms`, `µs` or `ns`), the thread, the level, the source location (or the
target) and the message. Its warnings and errors become events with their level; the stamp
(`stamp_ns`) places every event at the time the VMM wrote it, on a live console.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from uniobs.guest.parsers._common import FamilyParser, event
from uniobs.model import Severity
from uniobs.plugin import ConsoleLine, GuestEvent, VmmLogParser

_PREFIX = "cloud-hypervisor: "
_LOG = re.compile(
    r"cloud-hypervisor: (\d{1,12})\.(\d{1,9})(s|ms|µs|us|ns): <([^>]{0,64})> "
    r"(ERROR|WARN|INFO|DEBUG|TRACE):(\S{0,200}) -- "
)
_UNIT_NS = {"s": 1_000_000_000, "ms": 1_000_000, "µs": 1_000, "us": 1_000, "ns": 1}
_LEVELS = {"ERROR": Severity.ERROR, "WARN": Severity.WARN}


class CloudHypervisorParser(VmmLogParser, FamilyParser):
    family = "cloud-hypervisor"
    description = "Cloud Hypervisor's -v log beside the guest's serial console: its warnings and errors, its stamps."

    prefixes = (_PREFIX,)

    def owns(self, line: ConsoleLine) -> bool:
        return line.text.startswith(_PREFIX)

    def recognises(self, line: ConsoleLine) -> bool:
        return self.owns(line)

    def stamp_ns(self, line: ConsoleLine) -> int | None:
        m = _LOG.match(line.text)
        if m is None:
            return None
        scale = _UNIT_NS[m.group(3)]
        return int(m.group(1)) * scale + int(m.group(2).ljust(9, "0")) * scale // 1_000_000_000

    def parse(self, line: ConsoleLine) -> Sequence[GuestEvent]:
        m = _LOG.match(line.text)
        if m is None or m.group(5) not in _LEVELS:
            return []
        level = m.group(5)
        return [
            event(
                line, f"cloud_hypervisor.{level.lower()}", severity=_LEVELS[level],
                cloud_hypervisor__thread=m.group(4), cloud_hypervisor__source=m.group(6) or None,
                cloud_hypervisor__message=line.text[m.end() :],
            )
        ]  # fmt: skip
