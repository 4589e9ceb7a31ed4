"""Container engines (`podman`, `docker`): `uniobs run -- podman|docker run [opts] IMAGE [ARGS]`, in
the foreground. The engine writes the container id to a `--cidfile` of ours; the traceparent and
the function's environment go in as `-e` options. The container is then followed as any other
(`uniobs.runtimes.oci.ContainerLaunch`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from uniobs.model import Kind
from uniobs.plugin import CONTAINER_PHASES, Command, ExitInfo, Launch, LaunchPlan, Runtime
from uniobs.runtimes.oci import ContainerLaunch, ContainerPlan, container_exit, split_run

ENGINES = frozenset({"podman", "docker"})

# podman/docker run options that take no value (most long ones do)
_FLAGS = frozenset({"-i", "-t", "-it", "-ti", "--rm", "--init", "--privileged", "--read-only", "-P", "--publish-all",
                    "--interactive", "--tty", "--quiet", "-q", "--no-healthcheck", "--oom-kill-disable",
                    "--replace"})  # fmt: skip


def _engine_value(opt: str) -> bool:
    """Whether a podman/docker run option takes the next word as its value."""
    return opt.startswith("-") and "=" not in opt and opt not in _FLAGS


def plan_engine(argv: Sequence[str], rundir: str | os.PathLike[str], tag: str) -> ContainerPlan:
    exe, sub, rest = split_run(argv)
    cidfile = str(Path(rundir) / f"{tag}.cid")
    plan = ContainerPlan(
        [*argv[: sub + 1], "--cidfile", cidfile, *rest], exe, exe, console="fd:stdout", console_on_stdout=True,
        capture_stderr=True, cidfile=cidfile, cleanup=[cidfile],
    )  # fmt: skip
    plan.kernel = next(  # the image
        (a for i, a in enumerate(rest) if not a.startswith("-") and (i == 0 or not _engine_value(rest[i - 1]))),
        None,
    )
    plan.notes.append(f"{exe}: the container id is read from --cidfile {cidfile}")
    return plan


class EngineRuntime(Runtime):
    name = "engine"
    kind = Kind.CONTAINER
    description = "Container engines: podman run, docker run (in the foreground)"
    program = "podman|docker"
    coldstart_phases = CONTAINER_PHASES

    def recognises(self, argv: Sequence[str]) -> bool:
        return bool(argv) and os.path.basename(argv[0]) in ENGINES

    def plan(self, argv: Sequence[str], rundir: str | os.PathLike[str], tag: str) -> LaunchPlan:
        return plan_engine(argv, rundir, tag)

    def function_name(self, plan: LaunchPlan) -> str:
        """The image's name, without registry, tag or digest."""
        if plan.kernel:
            return plan.kernel.rsplit("/", 1)[-1].split(":")[0].split("@")[0]
        return super().function_name(plan)

    def inject_trace(
        self, plan: LaunchPlan, traceparent: str, env: Mapping[str, str], *, rundir: str, cwd: str | None
    ) -> Command:
        """As `-e NAME=VALUE` options of `run`."""
        argv = list(plan.argv)
        at = argv.index("run") + 1
        argv[at:at] = [word for k, v in {**env, "TRACEPARENT": traceparent}.items() for word in ("-e", f"{k}={v}")]
        return Command(argv)

    def start(self, plan: LaunchPlan) -> Launch:
        return ContainerLaunch(self, plan)

    def classify_exit(self, returncode: int, launch: Launch) -> ExitInfo:
        return container_exit(returncode, launch)
