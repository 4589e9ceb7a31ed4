"""Solo5 hvt (`solo5-hvt [--mem=MB] [--net:NAME=IFACE] [--block:NAME=PATH] KERNEL.hvt ARGS`, also the
legacy ukvm tender `ukvm-bin`): the guest console is the tender's stdout, the traceparent is a guest
argument, and the tender exits with the status the guest gave `solo5_exit()`.

A running tender's console can be followed only when its stdout is a file (/proc/PID/fd/1).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from uniobs.plugin import Command, ExitInfo, Launch, LaunchError, LaunchPlan, Runtime, VmmInfo
from uniobs.runtimes.common import image_name

HVT_EXE = re.compile(r"^(solo5-hvt|ukvm-bin)(\.[a-z0-9_]+)?$")


def plan_hvt(argv: Sequence[str]) -> LaunchPlan:
    """solo5-hvt: options start with --, then the unikernel image, then its arguments."""
    kernel = next((a for a in argv[1:] if not a.startswith("-")), None)
    if kernel is None:
        raise LaunchError(f"{argv[0]}: no unikernel image in the command")
    return LaunchPlan(
        list(argv), "solo5-hvt", os.path.basename(argv[0]), console="fd:stdout", console_on_stdout=True,
        kernel=kernel, notes=["console: the tender's stdout is the guest console"],
    )  # fmt: skip


def parse_hvt(pid: int, argv: Sequence[str], stdout_target: str | None) -> VmmInfo:
    kernel = next((a for a in argv[1:] if not a.startswith("-")), None)
    console = None
    note = "the tender's stdout is a pipe or terminal held by its parent; use `uniobs run` for its console"
    if stdout_target and stdout_target.startswith("/") and not stdout_target.startswith("/dev/"):
        console, note = f"tail:{stdout_target}", ""
    exe = os.path.basename(argv[0])
    return VmmInfo(pid, "solo5-hvt", exe, image_name(kernel) or f"hvt-{pid}", None, console, note, kernel)


class HvtRuntime(Runtime):
    name = "solo5-hvt"
    description = "Solo5 hvt tender (and the legacy ukvm-bin): its stdout is the guest console"
    program = "solo5-hvt"

    def recognises(self, argv: Sequence[str]) -> bool:
        return bool(argv) and HVT_EXE.match(os.path.basename(argv[0])) is not None

    def plan(self, argv: Sequence[str], rundir: str | os.PathLike[str], tag: str) -> LaunchPlan:
        return plan_hvt(argv)

    def inject_trace(
        self, plan: LaunchPlan, traceparent: str, env: Mapping[str, str], *, rundir: str, cwd: str | None
    ) -> Command:
        """As the guest's last argument (its command line)."""
        return Command([*plan.argv, f"traceparent={traceparent}"])

    def classify_exit(self, returncode: int, launch: Launch) -> ExitInfo:
        """The tender exits with solo5_exit(N)'s N."""
        attrs: dict[str, Any] = {"process.exit.code": returncode}
        if returncode < 0:
            return ExitInfo.by_signal(-returncode, returncode, attrs)
        return ExitInfo.of(returncode, "guest-exit", attrs, guest_exit_code=returncode)

    def inspect(self, pid: int, argv: Sequence[str], proc: str = "/proc") -> VmmInfo | None:
        try:
            target: str | None = os.readlink(f"{proc}/{pid}/fd/1")
        except OSError:
            target = None
        return parse_hvt(pid, argv, target)
