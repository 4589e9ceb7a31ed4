"""QEMU's own lines in a console stream: its monitor on `-serial mon:stdio`, and its stderr when merged.

This is the VMM's output, not the guest's, so this is a `VmmLogParser`: its lines are told apart
by their prefix and never reach the guest's family parser, where a line after the kernel's last
one would pass for the application's first (Nanos and Unikraft infer APP_START from it).

- `-serial mon:stdio` (and `-nographic`, which implies it) multiplexes the HMP monitor with the
  guest's serial port on one stdio (chardev/char-mux.c, monitor/hmp.c): the banner
  `QEMU 8.2.2 monitor - type 'help' for more information`, then the prompt `(qemu) ` before each
  command typed (`(qemu) info status`, `(qemu) quit`). What a command prints has no prefix and
  is read as the guest's.
- QEMU's stderr, when a launcher or a recording merges it with the console (`ops`, kraftkit's
  machine.log, `2>&1`): `error_report()` and `warn_report()` print the program's name first
  (util/error-report.c): `qemu-system-x86_64: warning: host doesn't support requested feature: ...`,
  `qemu-system-x86_64: -drive if=mtd: machine type does not support if=mtd,bus=0,unit=0`, and on
  SIGINT/SIGTERM `qemu-system-x86_64: terminating on signal 15 from pid 4242 (bash)` (system/runstate.c).
  Distributions' names count too: `qemu-kvm` (RHEL), and the bare `qemu` of old releases.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from uniobs.guest.parsers._common import FamilyParser, event, int_or_none
from uniobs.model import Severity
from uniobs.plugin import ConsoleLine, GuestEvent, VmmLogParser

_MONITOR = re.compile(r"QEMU (\d{1,4}\.\d{1,4}[\w.\-+~]{0,48}) monitor - type 'help' for more information")
_PROMPT = "(qemu)"
_STDERR = re.compile(r"(qemu-system-[\w\-]{1,32}|qemu-kvm|qemu): (.*)")
_STDERR_PREFIXES = ("qemu-system-", "qemu-kvm: ", "qemu: ")
_WARNING = re.compile(r"warning: (.*)")
_TERMINATING = re.compile(r"terminating on signal (\d{1,3})(?: from pid (\d{1,10}))?")


class QemuParser(VmmLogParser, FamilyParser):
    family = "qemu"
    description = "QEMU's own lines in a console: the HMP monitor on -serial mon:stdio, and its merged stderr."

    prefixes = (_PROMPT, "QEMU ", *_STDERR_PREFIXES)

    def owns(self, line: ConsoleLine) -> bool:
        text = line.text
        if text.startswith(_PROMPT):
            return len(text) == len(_PROMPT) or text[len(_PROMPT)] == " "
        if text.startswith("QEMU "):
            return _MONITOR.match(text) is not None
        return text.startswith(_STDERR_PREFIXES) and _STDERR.match(text) is not None

    def recognises(self, line: ConsoleLine) -> bool:
        return self.owns(line)

    def parse(self, line: ConsoleLine) -> Sequence[GuestEvent]:
        text = line.text
        if text.startswith(_PROMPT):
            command = text[len(_PROMPT) :].strip()
            return [event(line, "qemu.monitor.command", qemu__monitor__command=command)] if command else []
        m = _MONITOR.match(text)
        if m is not None:
            return [event(line, "qemu.monitor", qemu__version=m.group(1))]
        s = _STDERR.match(text)
        if s is None:
            return []
        program, message = s.group(1), s.group(2)
        t = _TERMINATING.match(message)
        if t is not None:
            return [
                event(
                    line, "qemu.terminated", severity=Severity.WARN, qemu__program=program,
                    qemu__signal=int(t.group(1)), qemu__signal__sender_pid=int_or_none(t.group(2)),
                )
            ]  # fmt: skip
        w = _WARNING.match(message)
        if w is not None:
            return [
                event(line, "qemu.warning", severity=Severity.WARN, qemu__program=program, qemu__message=w.group(1))
            ]
        return [event(line, "qemu.error", severity=Severity.ERROR, qemu__program=program, qemu__message=message)]
