"""Solo5 hvt (`solo5-hvt [--mem=MB] [--net:NAME=IFACE] [--block:NAME=PATH] KERNEL.hvt ARGS`, also the
legacy ukvm tender `ukvm-bin`): the guest console is the tender's stdout, its stderr is the tender's own
(captured as log records), and the tender exits with the status the guest gave `solo5_exit()`.

How an hvt launch ends (Solo5's conventions, bindings/exit.c and tenders/hvt):
- `solo5_exit(N)`: the tender exits N, and the console shows `Solo5: solo5_exit(N) called` (not under
  `--solo5:quiet`) -> `exit`, guest status N;
- `solo5_abort()`, a CPU trap, a failed assertion, stack smashing: the tender exits 255
  (SOLO5_EXIT_ABORT) and the console shows `Solo5: solo5_abort() called`, `Solo5: trap: ...` or
  `Solo5: ABORT: ...` (printed even under `--solo5:quiet`) -> `crash`, with that marker;
- the tender's own failure (no such image, an image for another target, a bad option, a KVM error):
  it exits 1 (errx) with `solo5-hvt: message` on stderr, and the guest printed no end of its own
  (nothing at all, or a `KVM: ...` failure under a running guest) -> `tender-error`, with the message,
  and no guest status. The tender's notes ("adjusting memory to N bytes") and warnings are not failures.

The guest's command line is the user's: uniobs adds nothing to it unless trace propagation is asked for
(`uniobs run --propagate-trace`: `traceparent=...` as the guest's last argument).

A running tender's console can be followed only when its stdout is a file (/proc/PID/fd/1).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from uniobs.plugin import Command, ExitInfo, Launch, LaunchError, LaunchPlan, Runtime, VmmInfo
from uniobs.runtimes.common import image_name, own_error

# Solo5 installs two hvt tenders: `solo5-hvt` and `solo5-hvt-debug` (gdb, core dumps); `ukvm-bin` is the legacy one.
HVT_EXE = re.compile(r"^(solo5-hvt(?:-debug)?|ukvm-bin)(\.[a-z0-9_]+)?$")
SOLO5_EXIT_ABORT = 255  # solo5.h: "the unikernel has aborted"; the tender exits with it
TENDER_FAILURE = 1  # err(3)/errx(3) status of the tender's own failures


def plan_hvt(argv: Sequence[str]) -> LaunchPlan:
    """solo5-hvt: options start with --, then the unikernel image, then its arguments."""
    kernel = next((a for a in argv[1:] if not a.startswith("-")), None)
    if kernel is None:
        raise LaunchError(f"{argv[0]}: no unikernel image in the command")
    return LaunchPlan(
        list(argv), "solo5-hvt", os.path.basename(argv[0]), console="fd:stdout", console_on_stdout=True,
        kernel=kernel, capture_stderr=True,
        notes=["console: the tender's stdout is the guest console; its stderr (the tender's own) is captured"],
    )  # fmt: skip


def parse_hvt(pid: int, argv: Sequence[str], stdout_target: str | None) -> VmmInfo:
    kernel = next((a for a in argv[1:] if not a.startswith("-")), None)
    console = None
    note = "the tender's stdout is a pipe or terminal held by its parent; use `uniobs run` for its console"
    if stdout_target and stdout_target.startswith("/") and not stdout_target.startswith("/dev/"):
        console, note = f"tail:{stdout_target}", ""
    exe = os.path.basename(argv[0])
    return VmmInfo(pid, "solo5-hvt", exe, image_name(kernel) or f"hvt-{pid}", None, console, note, kernel)


def hvt_exit(returncode: int, launch: Launch) -> ExitInfo:
    """The end of an hvt launch, from the tender's status, its stderr and the guest console's markers."""
    attrs: dict[str, Any] = {"process.exit.code": returncode}
    if returncode < 0:
        return ExitInfo.by_signal(-returncode, returncode, attrs)
    seen = launch.observed
    error = own_error(launch.plan.executable, seen.stderr)
    # Its own failure: status 1, its error on stderr, and the guest printed no end of its own; either
    # before the guest ran (nothing on the console), or KVM failing under a running guest ("KVM: ...").
    if (
        returncode == TENDER_FAILURE and error is not None and seen.exit is None and seen.crash is None
        and (not seen.console_output or "KVM" in error)
    ):  # fmt: skip
        return ExitInfo.of(returncode, "tender-error", attrs, detail=error)
    if returncode == SOLO5_EXIT_ABORT:
        if seen.crash is not None:
            return ExitInfo.of(returncode, "crash", attrs, detail=seen.crash_reason(), marker=seen.crash.name)
        return ExitInfo.of(returncode, "crash", attrs, detail="status 255 (SOLO5_EXIT_ABORT), no console marker")
    marker = seen.exit.name if seen.exit is not None else None
    return ExitInfo.of(returncode, "exit", attrs, guest_exit_code=returncode, marker=marker)


class HvtRuntime(Runtime):
    name = "solo5-hvt"
    description = "Solo5 hvt tender (and the legacy ukvm-bin): its stdout is the guest console"
    program = "solo5-hvt"
    trace_alters_guest = True  # the traceparent would be one more guest argument

    def recognises(self, argv: Sequence[str]) -> bool:
        return bool(argv) and HVT_EXE.match(os.path.basename(argv[0])) is not None

    def plan(self, argv: Sequence[str], rundir: str | os.PathLike[str], tag: str) -> LaunchPlan:
        return plan_hvt(argv)

    def inject_trace(
        self, plan: LaunchPlan, traceparent: str, env: Mapping[str, str], *, rundir: str, cwd: str | None
    ) -> Command:
        """As the guest's last argument (its command line): only with `--propagate-trace`."""
        return Command([*plan.argv, f"traceparent={traceparent}"])

    def classify_exit(self, returncode: int, launch: Launch) -> ExitInfo:
        return hvt_exit(returncode, launch)

    def inspect(self, pid: int, argv: Sequence[str], proc: str = "/proc") -> VmmInfo | None:
        try:
            target: str | None = os.readlink(f"{proc}/{pid}/fd/1")
        except OSError:
            target = None
        return parse_hvt(pid, argv, target)
