"""OCI runtimes (`runc`, `crun`): `uniobs run -- runc|crun [global opts] run [opts] ID`, in the
foreground. Also what every container launch shares (podman/docker too, `uniobs.runtimes.engine`):
finding the container the runtime creates, its creation and start, its OOM kills, its exit.

The container runs in the foreground (the runtime's stdout and stderr are the function's), so its
exit status is the command's. Detached runs are refused: use `uniobs attach` then. runc/crun read
the function's environment from the bundle's config.json, so the traceparent goes into a copy of
the bundle's config in the run directory (root file system still the original's).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from uniobs.host.procfs import ProcError, ProcFS
from uniobs.model import Kind, Workload
from uniobs.plugin import CONTAINER_PHASES, Command, ExitInfo, Launch, LaunchError, LaunchPlan, Runtime

if TYPE_CHECKING:
    import subprocess

    from uniobs.host.cgroup_place import OomWatch
    from uniobs.ioloop import IoLoop

log = logging.getLogger("uniobs.run")

OCI_RUNTIMES = frozenset({"runc", "crun"})
CONTAINER_START_TIMEOUT_S = 60.0  # how long the runtime may take to create the container
BUNDLE_COPY = "bundle"  # the bundle copy with TRACEPARENT, in the run directory

# options of `runc run`/`crun run` that take a value (global ones come before "run")
_OCI_VALUE_OPTS = frozenset({"-b", "--bundle", "--console-socket", "--pid-file", "--preserve-fds", "--root",
                             "--log", "--log-format", "--criu", "--rootless", "--cgroup-manager",
                             # podman/docker global options that take a value
                             "--runtime", "--runroot", "--events-backend", "--log-level", "--storage-driver",
                             "--url", "--connection", "--identity", "--tmpdir", "-H", "--host", "--config",
                             "--context", "-c", "-l"})  # fmt: skip


@dataclass
class ContainerPlan(LaunchPlan):
    container_id: str | None = None  # runc/crun: the id given on the command line
    runtime_root: str | None = None  # runc/crun --root
    cidfile: str | None = None  # podman/docker: where the engine writes the container id


def split_run(argv: Sequence[str]) -> tuple[str, int, list[str]]:
    """(executable, index of `run`, the words after it) of `EXE [global opts] run [opts] ...`;
    LaunchError for another subcommand or a detached run."""
    exe = os.path.basename(argv[0])
    try:
        sub = next(i for i, a in enumerate(argv[1:], 1) if not a.startswith("-") and argv[i - 1] not in _OCI_VALUE_OPTS)
    except StopIteration:
        raise LaunchError(f"{exe}: no subcommand") from None
    if argv[sub] != "run":
        raise LaunchError(f"{exe} {argv[sub]}: uniobs run wraps `{exe} run ...` (in the foreground)")
    rest = list(argv[sub + 1 :])
    if any(a in ("-d", "--detach") or a.startswith("--detach=") for a in rest):
        raise LaunchError(f"{exe} run -d: a detached container is not watched to its end; run it in the "
                          "foreground under uniobs run, or use `uniobs attach CONTAINER-ID`")  # fmt: skip
    return exe, sub, rest


def plan_oci(argv: Sequence[str]) -> ContainerPlan:
    exe, sub, rest = split_run(argv)
    plan = ContainerPlan(list(argv), exe, exe, console="fd:stdout", console_on_stdout=True, capture_stderr=True)
    root = next((argv[i + 1] for i in range(1, sub) if argv[i] == "--root" and i + 1 < sub), None)
    positional = [
        a for i, a in enumerate(rest) if not a.startswith("-") and (i == 0 or rest[i - 1] not in _OCI_VALUE_OPTS)
    ]
    if not positional:
        raise LaunchError(f"{exe} run: no container id")
    plan.container_id = positional[-1]
    plan.runtime_root = root
    plan.kernel = next((rest[i + 1] for i, a in enumerate(rest[:-1]) if a in ("-b", "--bundle")), ".")  # the bundle
    plan.notes.append(f"container {plan.container_id}: the runtime's stdout and stderr are the function's")
    return plan


def bundle_with_env(
    argv: list[str], plan: LaunchPlan, rundir: str, env: Mapping[str, str], cwd: str | None = None
) -> list[str]:
    """runc/crun read the environment from the bundle's config.json: run a copy of the bundle's
    config (root file system still the original's) with the variables added."""
    bundle = os.path.join(cwd or os.getcwd(), plan.kernel or ".")
    try:
        with open(os.path.join(bundle, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
        root = config["root"]["path"]
        config["root"]["path"] = root if os.path.isabs(root) else os.path.abspath(os.path.join(bundle, root))
        process_env = [e for e in config["process"].get("env", []) if e.split("=", 1)[0] not in env]
        config["process"]["env"] = process_env + [f"{k}={v}" for k, v in env.items()]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("cannot pass the trace context into %s's bundle: %s", plan.executable, exc)
        return argv
    copy = os.path.join(rundir, BUNDLE_COPY)
    os.makedirs(copy, exist_ok=True)
    with open(os.path.join(copy, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f)
    out = list(argv)
    for i, arg in enumerate(out[:-1]):
        if arg in ("-b", "--bundle"):
            out[i + 1] = copy
            return out
    run = out.index("run")
    out[run + 1 : run + 1] = ["--bundle", copy]
    return out


def wait_exec(pid: int, deadline: float) -> int | None:
    """When the container's init process has exec'd the function (its comm is no longer the
    runtime's init: runc shows `runc:[2:INIT]`, crun `crun`, ...). Polled every millisecond."""
    proc = ProcFS()
    while time.monotonic() < deadline:
        try:
            comm = proc.comm(pid).strip()
        except (ProcError, OSError):
            return None
        if not comm.startswith(("runc", "crun", "exe", "conmon")):
            return time.monotonic_ns()
        time.sleep(0.001)
    return None


class ContainerLaunch(Launch):
    """One container launch (any runtime): the container found from the runtime's own state files
    (no daemon), its `created` and `started` milestones, and its OOM kills as they happen."""

    def __init__(self, runtime: Runtime, plan: LaunchPlan) -> None:
        super().__init__(runtime, plan)
        self.oom: OomWatch | None = None  # on the container's memory cgroup
        self._watched: tuple[IoLoop, int] | None = None  # the loop reading the OOM watch's descriptor

    def identify(self, proc: subprocess.Popen[bytes], *, name: str, console: str, cgroup: str | None) -> Workload:
        """Find the container the runtime is creating: its id, init pid and cgroup. The output
        pipes hold what it prints meanwhile. `created`: state written (cgroup and init process
        exist); `started`: the init process has exec'd the function."""
        from uniobs.containers.discovery import ContainerDiscovery
        from uniobs.host.cgroup_place import OomWatch
        from uniobs.host.cgroupfs import detect_layout

        plan = self.plan
        deadline = time.monotonic() + CONTAINER_START_TIMEOUT_S
        cid = plan.container_id if isinstance(plan, ContainerPlan) else None
        cidfile = plan.cidfile if isinstance(plan, ContainerPlan) else None
        while cid is None and proc.poll() is None and time.monotonic() < deadline:
            try:
                cid = Path(cidfile or "").read_text().strip() or None
            except OSError:
                time.sleep(0.002)
        try:
            layout = detect_layout()
        except OSError:
            layout = None
        found = None
        created_ns = None
        if cid is not None:
            finder = ContainerDiscovery(layout, scan=False, use_sockets=False)
            while proc.poll() is None and time.monotonic() < deadline:
                found = finder.lookup(cid)
                if found is not None and found.pid is not None:
                    created_ns = time.monotonic_ns()
                    break
                time.sleep(0.002)
        if found is None:
            found = Workload(kind=Kind.CONTAINER, runtime=plan.runtime, id=cid or f"{name}-{proc.pid}", name=name)
            log.warning("%s: the container's state was not found; measuring its runtime's output only", name)
        workload = dataclasses.replace(found, name=name or found.name, console=console, executable=plan.executable)
        if created_ns is not None and workload.pid is not None:
            self.milestones.append(("created", created_ns, (("container.id", workload.id),)))
            started_ns = wait_exec(workload.pid, deadline)
            if started_ns is not None:
                self.milestones.append(("started", started_ns, ()))
        if layout is not None and workload.cgroup is not None:
            try:
                self.oom = OomWatch(layout, workload.cgroup, workload.cgroups)
            except OSError as exc:
                log.info("%s: OOM kills cannot be watched: %s", name, exc)
        return workload

    # -- pausing (`uniobs serve --on-idle pause`): the runtime's own `pause`/`resume`, which freeze
    # the container's cgroup (the v1 freezer's freezer.state, cgroup v2's cgroup.freeze) and record
    # the state ("paused" in `runc state`)

    def pause_unavailable(self) -> str | None:
        """Why this container cannot be paused here (None: it can)."""
        plan = self.plan
        if not isinstance(plan, ContainerPlan) or plan.runtime not in OCI_RUNTIMES or plan.container_id is None:
            return f"{plan.executable}: pausing is done with runc/crun's own `pause` (not for this runtime)"
        return None

    def pause(self) -> None:
        """`runc|crun [--root R] pause ID`; LaunchError with its message when it fails."""
        self._runtime_command("pause")

    def resume(self) -> None:
        """`runc|crun [--root R] resume ID`; LaunchError with its message when it fails."""
        self._runtime_command("resume")

    def run_state(self) -> str | None:
        """`runc|crun state ID`'s status ("running", "paused", ...), None when it cannot say."""
        try:
            out = self._runtime_command("state")
            return str(json.loads(out).get("status"))
        except (LaunchError, ValueError, AttributeError):
            return None

    def _runtime_command(self, command: str) -> str:
        import subprocess

        reason = self.pause_unavailable()
        plan = self.plan
        if reason is not None or not isinstance(plan, ContainerPlan) or plan.container_id is None:
            raise LaunchError(reason or "no container id")
        argv = [plan.argv[0], *(["--root", plan.runtime_root] if plan.runtime_root else []), command, plan.container_id]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise LaunchError(f"{' '.join(argv)}: {exc}") from None
        if done.returncode != 0:
            raise LaunchError(f"{' '.join(argv)}: {(done.stderr or done.stdout).strip()[-300:] or done.returncode}")
        return done.stdout

    def observe(self, loop: IoLoop) -> None:
        oom = self.oom
        if oom is None:
            return
        fd = oom.fileno()
        if fd is not None:
            loop.add_reader(fd, lambda _fd, _t: oom.check() >= 0)
            self._watched = (loop, fd)
        else:
            loop.every(0.02, lambda _t: oom.check() >= 0)

    def close(self) -> None:
        if self._watched is not None:  # before the descriptor is closed and its number reused
            loop, fd = self._watched
            self._watched = None
            loop.remove_reader(fd)
        if self.oom is not None:
            self.oom.close()


def container_exit(returncode: int, launch: Launch) -> ExitInfo:
    """runc/crun/podman/docker run exit with the container's status (128+N when a signal ended it)."""
    attrs: dict[str, Any] = {"process.exit.code": returncode}
    oom = launch.oom if isinstance(launch, ContainerLaunch) else None
    kills = oom.check() if oom is not None else 0
    # an OOM notification followed by a SIGKILL exit is an OOM kill, even when the cgroup was
    # removed before the kernel's counter moved
    if oom is not None and not kills and oom.ooms and returncode == 128 + signal.SIGKILL:
        kills = oom.ooms
    if returncode < 0:  # the runtime's CLI itself was killed
        return ExitInfo.by_signal(-returncode, returncode, attrs)
    if kills:
        attrs["uniobs.container.oom_kills"] = kills
        return ExitInfo.of(returncode, "oom-killed", attrs)
    if returncode > 128:
        return ExitInfo.by_signal(returncode - 128, returncode, attrs)
    return ExitInfo.of(returncode, "exit", attrs)


class OciRuntime(Runtime):
    name = "oci"
    kind = Kind.CONTAINER
    description = "OCI runtimes: runc run, crun run (in the foreground)"
    program = "runc|crun"
    coldstart_phases = CONTAINER_PHASES
    own_cgroup = True

    def recognises(self, argv: Sequence[str]) -> bool:
        return bool(argv) and os.path.basename(argv[0]) in OCI_RUNTIMES

    def plan(self, argv: Sequence[str], rundir: str | os.PathLike[str], tag: str) -> LaunchPlan:
        return plan_oci(argv)

    def function_name(self, plan: LaunchPlan) -> str:
        cid = plan.container_id if isinstance(plan, ContainerPlan) else None
        return cid or super().function_name(plan)

    def inject_trace(
        self, plan: LaunchPlan, traceparent: str, env: Mapping[str, str], *, rundir: str, cwd: str | None
    ) -> Command:
        """In a copy of the bundle's config.json, in the run directory."""
        argv = bundle_with_env(list(plan.argv), plan, rundir, {**env, "TRACEPARENT": traceparent}, cwd)
        return Command(argv, created=(os.path.join(rundir, BUNDLE_COPY),))

    def start(self, plan: LaunchPlan) -> Launch:
        return ContainerLaunch(self, plan)

    def classify_exit(self, returncode: int, launch: Launch) -> ExitInfo:
        return container_exit(returncode, launch)
