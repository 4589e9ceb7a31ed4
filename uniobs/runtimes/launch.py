"""Planning a launch: what uniobs adds to the user's own command. Pure: no process is started.

Each runtime plans its own commands (`Runtime.plan`: `uniobs.runtimes.qemu`, `.hvt`, `.oci`,
`.engine`, `.process`, and any installed third-party runtime); `plan_launch` asks the one that
recognises the command. The names below stay importable from here for one release.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from uniobs.plugin import LaunchError, LaunchPlan
from uniobs.runtimes.engine import ENGINES, plan_engine
from uniobs.runtimes.hvt import HVT_EXE, plan_hvt
from uniobs.runtimes.oci import OCI_RUNTIMES, plan_oci
from uniobs.runtimes.process import plan_process
from uniobs.runtimes.qemu import QEMU_EXE, _serial_to_chardev, _split_opts, plan_qemu

__all__ = [
    "ENGINES",
    "HVT_EXE",
    "OCI_RUNTIMES",
    "QEMU_EXE",
    "LaunchError",
    "LaunchPlan",
    "_serial_to_chardev",
    "_split_opts",
    "plan_container",
    "plan_hvt",
    "plan_launch",
    "plan_process",
    "plan_qemu",
]


def plan_container(argv: Sequence[str], rundir: str | os.PathLike[str], tag: str) -> LaunchPlan:
    """`runc|crun [global opts] run [opts] ID` or `podman|docker run [opts] IMAGE [ARGS]`."""
    if os.path.basename(argv[0]) in OCI_RUNTIMES:
        return plan_oci(argv)
    return plan_engine(argv, rundir, tag)


def plan_launch(argv: Sequence[str], rundir: str | os.PathLike[str], tag: str) -> LaunchPlan:
    """The plan of the installed runtime that recognises the command (`uniobs.runtimes.select`)."""
    from uniobs.runtimes.select import Runtimes

    return Runtimes().plan(argv, rundir, tag)
