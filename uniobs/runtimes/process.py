"""Any other command, run as a plain process whose stdout is captured: the runtime every command
falls back to when no other recognises it."""

from __future__ import annotations

import os
from collections.abc import Sequence

from uniobs.model import Kind
from uniobs.plugin import PROCESS_PHASES, LaunchPlan, Runtime


def plan_process(argv: Sequence[str]) -> LaunchPlan:
    return LaunchPlan(
        list(argv), "process", os.path.basename(argv[0]), console="fd:stdout", console_on_stdout=True,
        notes=["console: the process's stdout is captured"], planned_by="process",
    )  # fmt: skip


class ProcessRuntime(Runtime):
    name = "process"
    kind = Kind.PROCESS
    description = "Any other command, as a plain process (the fallback)"
    fallback = True
    # runtime_load (exec to app_start), app_init and readiness from the function's own milestones
    coldstart_phases = PROCESS_PHASES

    def recognises(self, argv: Sequence[str]) -> bool:
        return bool(argv)

    def plan(self, argv: Sequence[str], rundir: str | os.PathLike[str], tag: str) -> LaunchPlan:
        return plan_process(argv)
