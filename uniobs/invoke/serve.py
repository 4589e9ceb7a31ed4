"""`uniobs serve`: one function, on demand. The owner of the instance behind the invocation proxy.

`FunctionHost` is the proxy's `Gate` (`uniobs.invoke.admission`) for one side of a function
definition. It launches nothing until an invocation arrives (scale from zero), and has one
instance at most:

    stopped --admit--> starting --ready--> ready --idle--> stopping --exit--> stopped
                                            |  ^
                                      idle  |  | admit (resume)
                                            v  |
                                 pausing -> paused -> resuming

- `admit()` from *stopped* launches the instance exactly as `uniobs run --function` does (a
  `Runner` in a run directory of its own, the same pipeline, collectors and exporters), with the
  cold start's trace a child of the invocation's span (`Runner(parent=(trace_id, span_id))`). The
  request is held until the instance is ready (`ColdStart.on_ready`: the readiness probe's first
  success, else the `ready` milestone) and gets `Admission(coldstart=True, launched=True,
  init_ns=exec -> ready)`. Requests that arrive meanwhile wait for the same launch (one launch);
  they get `coldstart=True` and `init_ns` too (they waited for it), but not `launched`. A launch
  that fails, exits, or is not ready within `start_timeout` s raises `Unavailable` with the reason
  (an exit before readiness is reported as the run reports it, never as a clean exit).
- After `idle_timeout` s with no invocation in flight the instance is stopped (SIGTERM, then
  SIGKILL after `stop_grace_s`; the run's own exit report), or with `on_idle="pause"` paused: QEMU
  with QMP `stop` on the QMP socket uniobs added to the VM it launched (`QemuLaunch.pause`; never a
  socket it attached to: without one, pausing is refused and the instance stopped instead), a
  runc/crun container with the runtime's own `pause` (its cgroup freezer). The next `admit()`
  resumes it (`cont` / `resume`) and gets `resumed_ns`, the time that took.
- An instance that exits on its own (crash, OOM kill) is reported as the run reports every exit,
  plus `uniobs.serve.exited`; the next request cold-starts a new one.

What serve does is logged on the instance's resource: `uniobs.serve.launch` (ready, with
`uniobs.serve.init_s`), `uniobs.serve.launch_failed`, `uniobs.serve.idle_stop`,
`uniobs.serve.pause` (`uniobs.serve.pause_s`), `uniobs.serve.pause_refused`, `uniobs.serve.resume`
(`uniobs.serve.resume_s`), `uniobs.serve.exited`. Times: the host's monotonic clock.
"""

from __future__ import annotations

import enum
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from uniobs.compare import function as fn
from uniobs.invoke.admission import Admission, Unavailable
from uniobs.model import Attributes, LogEvent, Severity, Workload
from uniobs.plugin import ExitInfo

log = logging.getLogger("uniobs.serve")

IDLE_TIMEOUT_S = 60.0
START_TIMEOUT_S = 180.0  # a Node.js microVM under TCG is ready in ~10 s; a loaded host is slower
STOP_GRACE_S = 10.0  # after SIGTERM, before SIGKILL


class State(enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    PAUSING = "pausing"
    PAUSED = "paused"
    RESUMING = "resuming"
    CLOSED = "closed"


@dataclass(frozen=True)
class LaunchSpec:
    """One instance's launch, from a definition's side (what `uniobs run --function` runs)."""

    command: list[str]
    env: dict[str, str]
    ready: str | None  # the readiness probe (on the upstream port)
    name: str
    cwd: str
    propagate_trace: bool
    host: str  # where the instance answers (the upstream of the proxy)
    port: int


class FunctionSide:
    """One side of a function definition (`--as KIND`): checked, built if needed, its accelerator
    probed once (`accel`: the accelerator a caller already chose, "kvm" or "tcg": no probe); `spec()`
    gives each launch its own values (`{port}`: a new free upstream port, `{id}`: a new instance id).
    The one place a definition's side becomes a launch (`uniobs serve`, `run --function`, `compare`).
    Raises `fn.DefinitionError` / `fn.SideSkipped` (one line)."""

    def __init__(self, definition: fn.FunctionDef, side: str | None = None, *, accel: str | None = None) -> None:
        from uniobs.runtimes.accel import probe

        kind = side or next(iter(definition.wraps))
        if kind not in definition.wraps:
            raise fn.DefinitionError(f"{definition.path}: no [{kind}] table (it has: {', '.join(definition.wraps)})")
        self.definition = definition
        self.wrap = definition.wraps[kind]
        fn.check_runnable(definition, self.wrap)
        fn.ensure_built(definition, self.wrap)
        if accel is not None:
            self.accel = accel
            return
        chosen = probe() if self.wrap.uses_accel else None
        if chosen is not None and not chosen.probed:
            log.warning("accelerator: %s", chosen.describe())
        self.accel = chosen.accel if chosen is not None else "tcg"

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def side(self) -> str:
        return self.wrap.side

    @property
    def shrinkwrap(self) -> str:
        return self.wrap.shrinkwrap

    @property
    def public_port(self) -> int | None:
        """The definition's `port` (where the function is reached), when it has one."""
        return self.definition.port

    @property
    def proxied(self) -> bool:
        """Whether its invocations can be observed at a port (`fn.proxied`: `proxy` on and a port)."""
        return fn.proxied(self.definition, self.wrap)

    def public_url(self, template: str, port: int) -> str:
        """A URL of the definition (`request`, `[load] url`) with `{port}` the public port: the proxy's."""
        return fn.Instance(port, "", self.accel).fill(template, self.definition)

    def spec(self) -> LaunchSpec:
        d, wrap = self.definition, self.wrap
        inst = fn.instance(d, wrap, self.accel)
        return LaunchSpec(
            command=fn.command_for(d, wrap, inst),
            env={k: inst.fill(v, d) for k, v in wrap.env.items()},
            ready=inst.fill(d.ready, d) if d.ready else None,
            name=d.name,
            cwd=str(d.dir),
            propagate_trace=wrap.propagate_trace,
            host="127.0.0.1",
            port=inst.port,  # `{port}` in command, env and ready: where it listens behind the proxy
        )


class _Pausable(Protocol):
    def pause_unavailable(self) -> str | None: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...


@dataclass(eq=False)
class _Instance:
    """One launch and what is known of it."""

    generation: int
    trace: tuple[int, int]  # the invocation that launched it: (trace id, span id)
    name: str
    spec: LaunchSpec | None = None  # made on the instance's thread (boot_args may run a command)
    runner: Any = None  # uniobs.lifecycle.run.Runner, once made
    thread: threading.Thread | None = None
    exec_ns: int | None = None
    ready_ns: int | None = None
    failure: str | None = None  # why it never became ready, or why it ended
    exit: ExitInfo | None = None
    ended: bool = False
    stop_asked: bool = False
    pause_ns: int | None = None
    events: list[LogEvent] = field(default_factory=list)  # logged before the workload was known

    @property
    def workload(self) -> Workload | None:
        return self.runner.workload if self.runner is not None else None

    @property
    def init_ns(self) -> int | None:
        if self.ready_ns is None or self.exec_ns is None:
            return None
        return self.ready_ns - self.exec_ns


class FunctionHost:
    """The `Gate` of `uniobs serve` for one function side (see the module's docstring).

    `pipeline`: the serve's one `Pipeline` (each instance's telemetry goes through it); `rundir`:
    the base of the instances' run directories (`uniobs.lifecycle.rundir`); `interval`: the
    collectors' interval as `uniobs run --interval`; `quiet`: do not copy the console to stdout.
    Thread-safe: `warm`/`done` on the proxy's loop, `admit` on its workers, the idle timer on a
    thread of its own (`start()`)."""

    def __init__(
        self, pipeline: Any, side: FunctionSide, *, idle_timeout: float = IDLE_TIMEOUT_S, on_idle: str = "stop",
        start_timeout: float = START_TIMEOUT_S, stop_grace_s: float = STOP_GRACE_S, interval: float | None = None,
        quiet: bool = True, rundir: str | None = None, spec: Callable[[], LaunchSpec] | None = None,
    ) -> None:  # fmt: skip
        if on_idle not in ("stop", "pause"):
            raise ValueError(f"on_idle: 'stop' or 'pause', not {on_idle!r}")
        if idle_timeout <= 0 or start_timeout <= 0:
            raise ValueError("idle_timeout and start_timeout: seconds > 0")
        self.pipeline = pipeline
        self.side = side
        self.idle_timeout = idle_timeout
        self.on_idle = on_idle
        self.start_timeout = start_timeout
        self.stop_grace_s = stop_grace_s
        self.interval = interval
        self.quiet = quiet
        self.rundir = rundir
        self._spec = spec or side.spec  # each launch's values (tests may give their own)
        self._cond = threading.Condition()
        self._state = State.STOPPED
        self._instance: _Instance | None = None
        self._last: _Instance | None = None  # the current instance, or the last one once it has ended
        self._generation = 0
        self._in_flight = 0
        self._idle_since = time.monotonic()
        self._idle_thread: threading.Thread | None = None
        self.launches = 0  # instances launched so far
        self.history: list[tuple[int, State]] = []  # (monotonic ns, state entered), for tests and the report

    # -- state

    @property
    def state(self) -> State:
        return self._state

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def instance_pid(self) -> int | None:
        """The launched command's pid (the VMM, the runtime's CLI), while there is an instance."""
        inst = self._instance
        proc = getattr(inst.runner, "proc", None) if inst is not None else None
        return proc.pid if proc is not None else None

    @property
    def workload(self) -> Workload | None:
        inst = self._instance
        return inst.workload if inst is not None else None

    @property
    def runner(self) -> Any:
        """The `uniobs.lifecycle.run.Runner` of the current instance, or of the last one once it has
        ended (its cold start and exit stay readable); None before the first launch."""
        inst = self._last
        return inst.runner if inst is not None else None

    @property
    def failure(self) -> str | None:
        """Why the current (or last) instance never became ready, or ended; None: it did not fail."""
        inst = self._last
        return inst.failure if inst is not None else None

    def _enter(self, state: State) -> None:  # with self._cond held
        self._state = state
        self.history.append((time.monotonic_ns(), state))
        self._cond.notify_all()

    def start(self) -> FunctionHost:
        """Start the idle timer. Nothing is launched until the first `admit()`."""
        if self._idle_thread is None:
            self._idle_thread = threading.Thread(target=self._idle_loop, name="uniobs-serve-idle", daemon=True)
            self._idle_thread.start()
        return self

    # -- the Gate

    def warm(self) -> Admission | None:
        """An admission if the instance is ready now; None otherwise. Never waits for a launch."""
        with self._cond:
            inst = self._instance
            if self._state is not State.READY or inst is None:
                return None
            self._in_flight += 1
            return self._admission(inst)

    def admit(self, trace_id: int, span_id: int) -> Admission:
        """Block until the instance is ready: launch it (stopped), resume it (paused), or wait for the
        launch or resume under way. Raises Unavailable (closed, the launch failed or timed out)."""
        deadline = time.monotonic() + self.start_timeout
        waited_for: _Instance | None = None  # the launch this request waited for
        with self._cond:
            while True:
                state, inst = self._state, self._instance
                if state is State.CLOSED:
                    raise Unavailable(f"{self.side.name}: shutting down")
                if state is State.READY and inst is not None:
                    self._in_flight += 1
                    # a launch another invocation started: only that one is the instance's cold invocation
                    return self._admission(inst, waited_for_launch=waited_for is inst)
                if state is State.STOPPED:
                    inst = self._launch((trace_id, span_id))
                    waited_for = inst
                    launched = self._wait_ready(inst, deadline)
                    self._in_flight += 1
                    return self._admission(launched, coldstart=True, init_ns=launched.init_ns, launched=True)
                if state is State.PAUSED and inst is not None:
                    resumed_ns = self._resume(inst)
                    if resumed_ns is None:
                        continue  # it could not be resumed: stopped now, launched anew
                    self._in_flight += 1
                    return self._admission(inst, resumed_ns=resumed_ns)
                if state is State.STARTING and inst is not None:
                    waited_for = inst
                    self._wait_ready(inst, deadline)
                    continue
                # stopping, pausing, resuming: wait for it to settle
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Unavailable(f"{self.side.name}: still {state.value} after {self.start_timeout:g} s")
                self._cond.wait(left)

    def done(self, admission: Admission) -> None:
        """An invocation ended: the idle timer starts again when none is left in flight."""
        with self._cond:
            self._in_flight = max(0, self._in_flight - 1)
            if self._in_flight == 0:
                self._idle_since = time.monotonic()
                self._cond.notify_all()

    def _admission(
        self, inst: _Instance, *, coldstart: bool = False, init_ns: int | None = None, launched: bool = False,
        resumed_ns: int | None = None, waited_for_launch: bool = False,
    ) -> Admission:  # fmt: skip
        spec = inst.spec
        assert spec is not None  # made before the launch, so before it could be ready
        return Admission(spec.host, spec.port, inst.workload, coldstart, init_ns, resumed_ns, launched,
                         waited_for_launch)  # fmt: skip

    # -- launching

    def _launch(self, trace: tuple[int, int]) -> _Instance:  # with self._cond held
        self._generation += 1
        self.launches += 1
        inst = _Instance(self._generation, trace, self.side.name)
        self._instance = self._last = inst
        self._enter(State.STARTING)
        inst.thread = threading.Thread(
            target=self._run_instance, args=(inst,), name=f"uniobs-serve-{inst.generation}", daemon=True
        )
        inst.thread.start()
        return inst

    def _wait_ready(self, inst: _Instance, deadline: float) -> _Instance:  # with self._cond held
        """Until `inst` is ready; Unavailable if it ends first or the deadline passes (then it is stopped)."""
        while True:
            if inst.ready_ns is not None and self._instance is inst and self._state is State.READY:
                return inst
            if inst.ended or self._instance is not inst or self._state is State.CLOSED:
                why = inst.failure or (self._state is State.CLOSED and "shutting down") or "it ended before ready"
                raise Unavailable(f"{self.side.name}: not ready: {why}")
            left = deadline - time.monotonic()
            if left <= 0:
                inst.failure = f"not ready within {self.start_timeout:g} s"
                self._enter(State.STOPPING)
                threading.Thread(target=self._stop_instance, args=(inst,), daemon=True).start()
                raise Unavailable(f"{self.side.name}: {inst.failure}")
            self._cond.wait(left)

    def _run_instance(self, inst: _Instance) -> None:
        """The instance's thread: one `uniobs run --function` launch, to its end."""
        from uniobs.coldstart.probes import ProbeError
        from uniobs.lifecycle.run import Runner
        from uniobs.lifecycle.rundir import RunDir
        from uniobs.plugin import LaunchError
        from uniobs.runtimes.select import Runtimes

        try:
            spec = inst.spec = self._spec()  # a new upstream port and instance id
            with RunDir.create(self.rundir) as rundir:
                runtimes = Runtimes(self.pipeline.registry.runtimes)
                plan = runtimes.plan(spec.command, rundir, "vm")
                runner = Runner(
                    self.pipeline, plan, spec.name, interval=self.interval, mirror_console=not self.quiet,
                    rundir=rundir, ready=spec.ready, env=spec.env, cwd=spec.cwd,
                    propagate_trace=spec.propagate_trace, parent=inst.trace, interactive=False,
                )  # fmt: skip
                runner.coldstart.on_ready = lambda ready_ns: self._on_ready(inst, ready_ns)
                with self._cond:
                    inst.runner = runner
                    if inst.stop_asked:
                        inst.failure = inst.failure or "stopped before it was launched"
                        return
                info = runner.run()
                inst.exit = info
                if inst.ready_ns is None and inst.failure is None:
                    inst.failure = runner.coldstart.failure or f"exited before ready: {info.describe()}"
        except (LaunchError, ProbeError, OSError, ValueError) as exc:  # DefinitionError is a ValueError
            inst.failure = f"cannot launch: {exc}"
        except Exception as exc:  # a bug must not leave the requests waiting
            inst.failure = f"launch failed: {exc!r}"
            log.exception("%s: the instance's launch failed", inst.name)
        finally:
            self._on_exit(inst)

    def _on_ready(self, inst: _Instance, ready_ns: int) -> None:
        """ColdStart's readiness (the I/O or probe thread): let the held requests go."""
        with self._cond:
            runner = inst.runner
            inst.exec_ns = runner.coldstart.marks.get("exec") if runner is not None else None
            inst.ready_ns = ready_ns
            if self._instance is inst and self._state is State.STARTING:
                self._idle_since = time.monotonic()
                self._enter(State.READY)
        init = inst.init_ns
        self._log(
            inst, "launch", ready_ns, f"launched for an invocation; ready in {init / 1e6:.1f} ms" if init else
            "launched for an invocation; ready", (("uniobs.serve.init_s", round(init / 1e9, 6)),) if init else (),
            trace=True,
        )  # fmt: skip

    def _on_exit(self, inst: _Instance) -> None:
        with self._cond:
            inst.ended = True
            current = self._instance is inst
            state = self._state
            if current:
                self._instance = None
                if state is not State.CLOSED:
                    self._enter(State.STOPPED)
                else:
                    self._cond.notify_all()
        now = time.monotonic_ns()
        if inst.ready_ns is None:
            if not (inst.stop_asked and inst.failure and "before it was launched" in inst.failure):
                self._log(inst, "launch_failed", now, f"launch failed: {inst.failure}", severity=Severity.ERROR,
                          trace=True)  # fmt: skip
        elif not inst.stop_asked and current and state is not State.CLOSED:
            described = inst.exit.describe() if inst.exit is not None else (inst.failure or "unknown")
            severity = Severity.WARN if inst.exit is not None and inst.exit.clean else Severity.ERROR
            self._log(inst, "exited", now, f"the instance ended on its own ({described}); the next request "
                      "launches a new one", severity=severity)  # fmt: skip

    # -- idle: stop or pause; resume

    def _idle_loop(self) -> None:
        while True:
            with self._cond:
                if self._state is State.CLOSED:
                    return
                inst = self._instance
                if self._state is not State.READY or inst is None or self._in_flight:
                    self._cond.wait()
                    continue
                due = self._idle_since + self.idle_timeout
                left = due - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                pause = self.on_idle == "pause"
                self._enter(State.PAUSING if pause else State.STOPPING)
            if pause:
                self._pause(inst)
            else:
                self._log(inst, "idle_stop", time.monotonic_ns(),
                          f"idle for {self.idle_timeout:g} s: stopping the instance",
                          (("uniobs.serve.idle_timeout_s", self.idle_timeout),))  # fmt: skip
                self._stop_instance(inst)

    def pause_now(self, wait_s: float = 5.0) -> str | None:
        """Pause the ready instance now, as the idle timer does with on_idle="pause" (whatever
        `on_idle` says); the next `admit()` resumes it. Waits up to `wait_s` s for the invocations in
        flight to end. None once paused; else why not, and then the instance is left as it was when
        it cannot be paused (no instance ready, still in flight, no QMP socket of uniobs' own, a
        runtime without pause), or stopped when pausing itself failed (as the idle timer does)."""
        deadline = time.monotonic() + wait_s
        with self._cond:
            while self._in_flight and self._state is State.READY and time.monotonic() < deadline:
                self._cond.wait(max(0.0, deadline - time.monotonic()))
            inst = self._instance
            if self._state is not State.READY or inst is None:
                return f"no instance ready to pause (it is {self._state.value})"
            if self._in_flight:
                return f"{self._in_flight} invocation(s) still in flight after {wait_s:g} s"
            launch: _Pausable | None = getattr(inst.runner, "launch", None)
            reason = self._pause_unavailable(launch)
            if reason is not None:
                return reason
            self._enter(State.PAUSING)
        self._pause(inst, why="asked to pause")
        with self._cond:
            paused = self._instance is inst and self.state is State.PAUSED  # `state`: set by _pause meanwhile
        if paused:
            return None
        return "pausing failed: the instance was stopped (see the uniobs.serve.pause_refused record)"

    @staticmethod
    def _pause_unavailable(launch: _Pausable | None) -> str | None:
        if launch is None or not hasattr(launch, "pause_unavailable"):
            return "this runtime cannot pause an instance"
        return launch.pause_unavailable()

    def _pause(self, inst: _Instance, why: str | None = None) -> None:
        why = why or f"idle for {self.idle_timeout:g} s"
        launch: _Pausable | None = getattr(inst.runner, "launch", None)
        reason = self._pause_unavailable(launch)
        if reason is None and launch is not None:
            t0 = time.monotonic_ns()
            try:
                launch.pause()
            except Exception as exc:
                reason = f"pausing failed: {exc}"
            else:
                t1 = time.monotonic_ns()
                with self._cond:
                    inst.pause_ns = t1
                    if self._instance is inst and self._state is State.PAUSING:
                        self._enter(State.PAUSED)
                self._log(inst, "pause", t1, f"{why}: paused in {(t1 - t0) / 1e6:.1f} ms",
                          (("uniobs.serve.pause_s", round((t1 - t0) / 1e9, 6)),))  # fmt: skip
                return
        self._log(inst, "pause_refused", time.monotonic_ns(), f"not paused ({reason}): stopping the instance instead",
                  severity=Severity.WARN)  # fmt: skip
        with self._cond:
            if self._instance is inst and self._state is State.PAUSING:
                self._enter(State.STOPPING)
        self._stop_instance(inst)

    def _resume(self, inst: _Instance) -> int | None:  # with self._cond held; releases it meanwhile
        """Resume the paused instance; the time it took (ns), or None when it could not be (then it
        is being stopped, and the caller launches a new one once it has)."""
        self._enter(State.RESUMING)
        self._cond.release()
        error: str | None = None
        try:
            t0 = time.monotonic_ns()
            try:
                launch: _Pausable = inst.runner.launch
                launch.resume()
            except Exception as exc:
                error = str(exc)
            t1 = time.monotonic_ns()
        finally:
            self._cond.acquire()
        paused_s = (t0 - inst.pause_ns) / 1e9 if inst.pause_ns is not None else None
        if error is not None:
            self._cond.release()
            try:
                self._log(inst, "resume", t1, f"resuming failed: {error}; stopping it", severity=Severity.ERROR)
            finally:
                self._cond.acquire()
            if self._instance is inst and self._state is State.RESUMING:
                self._enter(State.STOPPING)
                threading.Thread(target=self._stop_instance, args=(inst,), daemon=True).start()
            return None
        if self._instance is not inst or self._state is not State.RESUMING:
            return None  # it ended meanwhile
        self._idle_since = time.monotonic()
        self._enter(State.READY)
        attrs: Attributes = (("uniobs.serve.resume_s", round((t1 - t0) / 1e9, 6)),)
        if paused_s is not None:
            attrs += (("uniobs.serve.paused_s", round(paused_s, 3)),)
        self._cond.release()
        try:
            self._log(inst, "resume", t1, f"resumed in {(t1 - t0) / 1e6:.1f} ms for an invocation", attrs)
        finally:
            self._cond.acquire()
        return t1 - t0

    def _stop_instance(self, inst: _Instance, grace_s: float | None = None) -> None:
        """SIGTERM, then SIGKILL after the grace; returns once its thread (and run) has ended."""
        grace = self.stop_grace_s if grace_s is None else grace_s
        inst.stop_asked = True
        thread = inst.thread
        if thread is None:
            return
        deadline = time.monotonic() + grace
        while thread.is_alive() and time.monotonic() < deadline:
            runner = inst.runner
            if runner is not None:
                runner.stop()  # again until the process exists: a launch may be under way
            thread.join(0.05)
        if thread.is_alive() and inst.runner is not None:
            log.warning("%s: still running %g s after SIGTERM: killing it", inst.name, grace)
            inst.runner.kill()
        thread.join(30)

    # -- the end

    def close(self, grace_s: float | None = None) -> None:
        """Stop for good: requests waiting get Unavailable, the instance (resumed first if paused,
        so that it can take SIGTERM) is stopped and its run directory and cgroup removed."""
        with self._cond:
            inst, state = self._instance, self._state
            self._enter(State.CLOSED)
        if inst is not None:
            if state in (State.PAUSED, State.PAUSING, State.RESUMING) and inst.pause_ns is not None:
                try:
                    inst.runner.launch.resume()  # a frozen container would not see SIGTERM
                except Exception as exc:
                    log.info("%s: resuming before the stop failed: %s", inst.name, exc)
            self._stop_instance(inst, grace_s)
        if self._idle_thread is not None:
            self._idle_thread.join(5)

    # -- records

    def _log(
        self, inst: _Instance, what: str, time_ns: int, body: str, attributes: Attributes = (),
        severity: Severity = Severity.INFO, trace: bool = False,
    ) -> None:  # fmt: skip
        """A `uniobs.serve.WHAT` record on the instance's resource (or, before it is known, on the
        function's: a launch that failed before the instance was identified)."""
        attributes = (("uniobs.serve.state", self._state.value), ("uniobs.serve.launch", inst.generation),
                      *attributes)  # fmt: skip
        trace_id, span_id = inst.trace if trace else (0, 0)
        event = LogEvent(time_ns, body, severity, attributes, f"uniobs.serve.{what}", trace_id, span_id)
        workload = inst.workload or self._function_workload()
        self.pipeline.telemetry.log(workload, event)
        if severity >= Severity.WARN:
            log.warning("%s: %s", inst.name, body)

    def _function_workload(self) -> Workload:
        from uniobs.model import Kind

        kind = Kind.CONTAINER if self.side.shrinkwrap == "container" else Kind.UNIKERNEL
        return Workload(kind=kind, runtime="serve", id=f"{self.side.name}-serve-{os.getpid()}", name=self.side.name)
