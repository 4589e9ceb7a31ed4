"""`uniobs run -- COMMAND`: launch a VMM (or any process), observe it until it exits, exit with its status.

The runner owns the process; the pipeline owns collection and export. Lifecycle events
(spawned, QMP ready, first console byte, exited with reason) become log records on the
workload's resource and feed the cold-start trace.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from uniobs.coldstart.probes import ProbeRunner, parse_probe
from uniobs.coldstart.trace import ColdStart
from uniobs.guest.capture import ConsoleStream
from uniobs.lifecycle.child import Child
from uniobs.lifecycle.rundir import RunDir, cgroup_exists, remove_cgroups
from uniobs.metrics import COLDSTART_METRICS, CPU_MODE, EXIT_USAGE_METRICS, LIFECYCLE_METRICS
from uniobs.model import Attributes, Kind, LogEvent, Sample, Severity, Workload
from uniobs.pipeline import Pipeline
from uniobs.plugin import (
    Command,
    ConsoleLine,
    ExitInfo,
    GuestEvent,
    Launch,
    LaunchPlan,
    Milestone,
    crash_reason,
    signal_name,
)
from uniobs.runtimes.select import Runtimes
from uniobs.scheduler import WATCH_INTERVAL_S, Scheduler

log = logging.getLogger("uniobs.run")

TRACEPARENT_LABEL = "uniobs.traceparent"  # read by the console capture (collectors/console.py)
SHUTDOWN_GRACE_S = 10.0  # after its runtime announced its end (QMP SHUTDOWN), how long a VMM may take to exit
FIRST_SCRAPE_S = 0.05  # the first scrape, this long after the spawn

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class RunInterrupted(Exception):
    """SIGINT, SIGTERM or SIGHUP arrived before the command was started: nothing ran."""

    def __init__(self, signum: int, when: str = "before the command started") -> None:
        super().__init__(f"interrupted by {signal_name(signum)} {when}".strip())
        self.signum = signum


class Runner:
    """Spawn, observe, and report one workload."""

    def __init__(
        self,
        pipeline: Pipeline,
        plan: LaunchPlan,
        name: str,
        *,
        interval: float | None = None,
        mirror_console: bool = True,
        rundir: RunDir | str | None = None,
        cgroup: str | None = None,
        ready: str | None = None,
        request: str | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        propagate_trace: bool = False,
        parent: tuple[int, int] | None = None,
        interactive: bool = True,
    ) -> None:
        self.pipeline = pipeline
        self.plan = plan
        self.name = name
        self.interval = interval  # for collectors that set none; None: [uniobs] interval, else 1 s
        self.mirror_console = mirror_console
        # The run directory the plan's files are in: a RunDir (its owner record gets the launched
        # process and cgroup; the caller removes it), a plain directory, or None: a RunDir of our own.
        self.rundir = rundir
        self.cgroup = cgroup  # a cgroup path to start the VMM in, created and removed by us
        self.proc: subprocess.Popen[bytes] | None = None
        self.workload: Workload | None = None
        self.exec_ns = 0
        self.exit_ns = 0
        # what uniobs knows about the command's runtime, and this launch's own state under it
        self.runtime = Runtimes(pipeline.registry.runtimes).of(plan)
        self.launch: Launch | None = None
        pipeline.telemetry.declare(LIFECYCLE_METRICS, scope="uniobs.lifecycle")
        pipeline.telemetry.declare(COLDSTART_METRICS, scope="uniobs.coldstart")
        pipeline.telemetry.declare(EXIT_USAGE_METRICS, scope="uniobs.lifecycle")
        self._exits: dict[str, int] = {}
        self._first_byte_logged = False
        self._stuck = False
        self.coldstart = ColdStart(self.runtime.kind.value, plan.runtime, phases_spec=self.runtime.coldstart_phases)
        if parent is not None:  # (trace id, span id): the invocation this launch is for (`uniobs serve`)
            self.coldstart.trace_id, self.coldstart.parent_span_id = parent
        # the VMM may have our terminal (QEMU's -nographic monitor); not when uniobs serves requests
        self.interactive = interactive
        self._stop_requested = False  # stop() was called: the end asked for, not a failure
        self.probe = parse_probe(ready) if ready else None
        self.coldstart.probe = self.probe is not None
        self.request = request
        if request is not None:
            parse_probe(request)  # checked now: a bad URL is a usage error, not a silent miss
        self._probe_runner: ProbeRunner | None = None
        self._coldstart_done = False
        self._env: dict[str, str] | None = None
        self.extra_env = dict(env or {})  # for the function (containers, processes)
        self.cwd = cwd  # where the command runs (a function definition's folder)
        # Hand the traceparent to the guest even where that changes what it runs (its command line:
        # Runtime.trace_alters_guest); a runtime's own carrier (a container's environment) is always used.
        self.propagate_trace = propagate_trace
        self._pending_signals: list[int] = []  # received before the command was started
        self._interrupted: int | None = None  # the first SIGINT/SIGTERM/SIGHUP the user sent us
        self._rss_floor = 0  # uniobs' own peak RSS at the spawn: what the kernel folds into the child's ru_maxrss
        self._fds: dict[str, int] = {}  # descriptors this run still owns, closed when it ends
        self._observing = False

    def lifecycle(
        self, name: str, time_ns: int, severity: Severity = Severity.INFO, attributes: Attributes = (),
        body: str | None = None,
    ) -> None:  # fmt: skip
        assert self.workload is not None
        body = body or name.replace("_", " ")
        self.pipeline.telemetry.log(
            self.workload, LogEvent(time_ns, body, severity, attributes, event_name=f"uniobs.{name}")
        )

    def _on_runtime_event(self, event: LogEvent) -> None:
        """What the runtime's own channel reported (QMP events), on the workload once it is known."""
        if self.workload is not None:
            self.pipeline.telemetry.log(self.workload, event)

    def run(self) -> ExitInfo:
        """Launch the command, observe it to its end, and exit-report it.

        Everything the run creates is registered on one ExitStack as it is created, and removed
        however the run ends (exit, crash, exception, SIGINT/SIGTERM/SIGHUP, which are forwarded
        to the command): the command itself if still running, the cgroup, FIFOs, sockets, the
        bundle copy, descriptors, and the run directory when the runner made it.
        """
        with contextlib.ExitStack() as cleanup:
            return self._run(cleanup)

    def _run(self, cleanup: contextlib.ExitStack) -> ExitInfo:
        plan = self.plan
        self._catch_signals(cleanup)
        owner = self.rundir if isinstance(self.rundir, RunDir) else None
        if self.rundir is None:
            owner = cleanup.enter_context(RunDir.create())
        rundir = os.fspath(owner if owner is not None else self.rundir or ".")
        # What the command creates in the run directory: QEMU's QMP sockets, the engine's cidfile.
        for path in plan.cleanup:
            cleanup.callback(_remove, path)
        cleanup.callback(self._close_fds)
        for fifo in plan.fifos:
            cleanup.callback(_unlink, fifo)
            os.mkfifo(fifo, 0o600)
        if plan.fifos:
            # Open the read end first (non-blocking), and keep a writer of our own so the reader
            # sees no EOF before QEMU opens the FIFO; closed once QEMU has exited.
            self._fds["fifo_reader"] = os.open(plan.fifos[0], os.O_RDONLY | os.O_NONBLOCK)
            self._fds["fifo_keepalive"] = os.open(plan.fifos[0], os.O_WRONLY | os.O_NONBLOCK)
        loop = self.pipeline.loop.start()
        launch = self.launch = self.runtime.start(plan)
        launch.prepare(loop, self._on_runtime_event)  # its own channels, read from the exec on
        cleanup.callback(launch.close)

        argv = self._with_traceparent(plan, rundir, cleanup)
        if self.cgroup is None and self.runtime.own_cgroup and os.geteuid() == 0:
            # runc/crun place a relative cgroupsPath under their own cgroup, in each hierarchy:
            # starting them in a cgroup of ours makes that one path in every controller.
            self.cgroup = f"/uniobs/{os.path.basename(rundir)}"
        if self.cgroup is not None:
            from uniobs.host.cgroup_place import create_cgroup
            from uniobs.host.cgroupfs import detect_layout

            layout = detect_layout()
            if cgroup_exists(layout, self.cgroup):
                log.info("%s: cgroup %s exists already: used, and left in place", self.name, self.cgroup)
            else:
                if owner is not None:
                    owner.record_cgroup(self.cgroup)
                cleanup.callback(remove_cgroups, [self.cgroup])  # after the command's end (LIFO)
            procs = create_cgroup(layout, self.cgroup)
            argv = [sys.executable, "-m", "uniobs.host.cgexec", *procs, "--", *argv]
        if self._pending_signals:
            raise RunInterrupted(self._pending_signals[0])
        self.exec_ns = launch.exec_ns = time.monotonic_ns()
        # The VMM gets our terminal for an interactive console (QEMU's -nographic monitor), and
        # /dev/null otherwise: with no stdin of our own, fd 0 would be whatever we opened first.
        stdin = None if self.interactive and os.isatty(0) else subprocess.DEVNULL
        proc = Child(
            argv, stdin=stdin, stdout=subprocess.PIPE if plan.console_on_stdout else None,
            stderr=subprocess.PIPE if plan.capture_stderr else None, env=self._env, cwd=self.cwd,
        )  # fmt: skip
        cleanup.callback(self._end_command, proc)  # a run that ends early does not leave it running
        self.proc = proc
        self._rss_floor = _own_peak_rss()
        while self._pending_signals:  # arrived while it was being started
            self._forward(self._pending_signals.pop(0))
        if owner is not None:
            owner.record_pid(proc.pid)
        self.coldstart.mark("exec", self.exec_ns)
        # The console capture owns (and closes) the descriptor it reads: give it its own copy and
        # let go of Popen's file object now, or a later close of that object would close
        # whatever file then has the same number (another launch's console).
        console_key = "fifo_reader"
        if proc.stdout is not None:
            console_key = "console"
            self._fds[console_key] = _take_fd(proc, "stdout")
        console = f"fd:{self._fds[console_key]}"
        workload = launch.identify(proc, name=self.name, console=console, cgroup=self.cgroup)
        workload = dataclasses.replace(
            workload, labels={**workload.labels, TRACEPARENT_LABEL: self.coldstart.traceparent}
        )
        self.workload = workload
        for milestone, time_ns, attributes in launch.milestones:  # a container's created, started
            self.lifecycle(milestone, time_ns, attributes=attributes)
            self.coldstart.mark(milestone, time_ns)
        spawned: Attributes = (("process.command", plan.executable), *launch.spawned_attributes())
        self.lifecycle("spawned", self.exec_ns, attributes=spawned)
        console_plugin = self._console_plugin()
        if console_plugin is not None and self.mirror_console and plan.console_on_stdout:
            console_plugin.mirror(workload, sys.stdout.buffer)
        if console_plugin is not None:
            console_plugin.listen(
                workload, self._on_guest_event, self._on_console_line if self._console_probe() else None
            )
        self._observing = True
        stderr_stream: ConsoleStream | None = None
        cleanup.callback(lambda: self._end_observation(workload, stderr_stream))
        if console_plugin is not None and console_plugin.applies_to(workload):
            self._fds.pop(console_key, None)  # the capture owns (and closes) it from here
        self.pipeline.start_streams(workload)
        if self.probe is not None:
            self._probe_runner = ProbeRunner(self.probe, self.coldstart.mark, request=self.request).start()
        stderr_stream = self._capture_stderr(proc, workload)
        cleanup.callback(launch.close)  # (again) before the command's end and its cgroup's removal
        launch.observe(loop)

        self._observe(proc)
        self.exit_ns = proc.exit_ns or time.monotonic_ns()
        self._end_observation(workload, stderr_stream)
        self.pipeline.snapshot_streams(workload)
        if not self._first_byte_logged:
            self._log_first_byte()
        self._observed_console(workload, launch)
        info = self.runtime.classify_exit(proc.returncode, launch)
        launch.close()
        self._exits[info.reason] = self._exits.get(info.reason, 0) + 1
        self.pipeline.telemetry.record(
            workload, [Sample("uniobs.workload.exits", n, (("uniobs.exit.reason", r),)) for r, n in self._exits.items()]
        )
        self._record_usage(workload, proc)
        severity = info.severity()
        asked = self._interrupted is not None or self._stop_requested
        if asked and info.reason in ("signal", "host-signal", "exit", "guest-shutdown"):
            severity = Severity.INFO  # the end the user (or stop()) asked for (Ctrl-C, kill): not an error
        described = info.describe()  # the one wording: this record, the cold-start span, the summary line
        if not self._coldstart_done:
            if self.coldstart.end() is not None:
                pass  # it was ready (the exit came before the loop looked)
            elif info.clean and self._interrupted is None:
                self.coldstart.complete(self.exit_ns)  # it ran to completion: not a failed cold start
            elif self._interrupted is not None:
                self.coldstart.fail(f"stopped by {signal_name(self._interrupted)} before ready: {described}")
            elif self._stop_requested:
                self.coldstart.fail(f"stopped before ready: {described}")
            else:
                self.coldstart.fail(f"exited before ready: {described}")
            self._finish_coldstart(self.exit_ns)
        self.lifecycle("exited", self.exit_ns, severity, tuple(info.attributes.items()), body=f"exited: {described}")
        return info

    def _catch_signals(self, cleanup: contextlib.ExitStack) -> None:
        """SIGINT/SIGTERM/SIGHUP go to the command (SIGINT as SIGTERM) for the whole run, cleanup
        included, so that it ends its own way and ours runs to the end. (Main thread only.)"""
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, _frame: Any) -> None:
            if self._interrupted is None:
                self._interrupted = signum
            if self.proc is None:
                self._pending_signals.append(signum)
            else:
                self._forward(signum)

        old = {s: signal.signal(s, handler) for s in FORWARDED_SIGNALS}
        cleanup.callback(lambda: [signal.signal(s, h) for s, h in old.items()])

    def _forward(self, signum: int) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM if signum == signal.SIGINT else signum)

    def _end_command(self, proc: subprocess.Popen[bytes]) -> None:
        """The run is ending while the command still runs (an exception in uniobs): stop it."""
        if proc.poll() is not None:
            return
        log.warning("%s: ending %s (pid %d) with the run", self.name, self.plan.executable, proc.pid)
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(SHUTDOWN_GRACE_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()

    def _end_observation(self, workload: Workload, stderr_stream: ConsoleStream | None) -> None:
        """The command has ended (or the run is failing): stop probes and streams, once."""
        if not self._observing:
            return
        self._observing = False
        if self._probe_runner is not None:
            self._probe_runner.stop()
        self._close_fds("fifo_keepalive")  # the FIFO's reader sees its end
        self.pipeline.stop_streams(workload, timeout=5.0)
        if stderr_stream is not None:
            stderr_stream.stop(5.0)

    def _close_fds(self, *names: str) -> None:
        for name in names or list(self._fds):
            fd = self._fds.pop(name, None)
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _console_plugin(self) -> Any:
        """The console capture plugin (duck-typed: the core does not import plugins)."""
        return next((p for p in self.pipeline.streaming if p.name == "console"), None)

    def _observe(self, proc: subprocess.Popen[bytes]) -> None:
        """Until the command exits: collectors on their intervals (each at the first tick, right
        after the spawn, so short-lived guests get VMM stats too), telemetry handed over every
        export_interval, and at every wake-up (at least each second) the run's own duties."""
        assert self.workload is not None
        scheduler = Scheduler(self.pipeline, interval=self.interval, default_interval=WATCH_INTERVAL_S)
        wait = FIRST_SCRAPE_S
        while True:
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                pass
            scheduler.tick([self.workload])
            if not self._first_byte_logged:
                self._first_byte_logged = self._log_first_byte()
            self._reap_if_stuck(proc)
            if not self._coldstart_done and self._coldstart_complete():
                self._finish_coldstart(time.monotonic_ns())
            wait = scheduler.wait_s()

    def stop(self) -> None:
        """Ask the launched command to end (SIGTERM): what `uniobs compare` does after measuring,
        and `uniobs serve` after an idle timeout. Its exit is then reported as one asked for."""
        self._stop_requested = True
        proc = getattr(self, "proc", None)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()

    def kill(self) -> None:
        """SIGKILL the launched command (one that did not end after `stop()`)."""
        self._stop_requested = True
        proc = getattr(self, "proc", None)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()

    @property
    def coldstart_done(self) -> bool:
        return self._coldstart_done

    # -- the cold-start trace

    def _with_traceparent(self, plan: LaunchPlan, rundir: str, cleanup: contextlib.ExitStack) -> list[str]:
        """The command with the W3C traceparent (and the function's environment) passed to the
        function the runtime's way (`Runtime.inject_trace`): as TRACEPARENT for containers and
        processes; on a unikernel's command line only when asked (`propagate_trace`), since that
        changes what the guest runs. Otherwise a unikernel's command runs exactly as given."""
        if self.runtime.trace_alters_guest and not self.propagate_trace:
            env = {**os.environ, **self.extra_env} if self.extra_env else None
            command = Command(list(plan.argv), env)
        else:
            command = self.runtime.inject_trace(
                plan, self.coldstart.traceparent, self.extra_env, rundir=rundir, cwd=self.cwd
            )
            if self.runtime.trace_alters_guest and command.argv == plan.argv:
                log.warning(
                    "%s: --propagate-trace: %s gives this command no way to pass the traceparent to the guest "
                    "(QEMU: a -kernel with -append); it runs unchanged", self.name, self.runtime.name,
                )  # fmt: skip
        for path in command.created:  # the bundle copy of runc/crun
            cleanup.callback(_remove, path)
        self._env = dict(command.env) if command.env is not None else None
        return command.argv

    def _console_probe(self) -> bool:
        return self.probe is not None and self.probe.kind == "console"

    def _on_console_line(self, line: ConsoleLine) -> None:
        runner, pattern = self._probe_runner, self.probe.pattern if self.probe is not None else None
        if runner is not None and pattern is not None and not runner.ok and pattern.search(line.text):
            runner.console_matched(line.time_ns)

    def _on_guest_event(self, event: GuestEvent) -> None:
        if event.guest_time_s is not None and not self._coldstart_done:
            self.coldstart.guest_clock(event.time_ns, event.guest_time_s)  # where its clock's zero was
        if event.milestone is None:
            return
        if self.launch is not None:
            self.launch.observed.saw(event)  # its exit and crash markers, for classify_exit
        if event.milestone is Milestone.CRASH:
            self.coldstart.fail(f"crash ({crash_reason(event)})")  # the words of the exit that follows
            return
        self.coldstart.mark(event.milestone.value, event.time_ns)
        if event.guest_time_s is not None:
            self.coldstart.guest_times.setdefault(event.milestone.value, event.guest_time_s)

    def _coldstart_complete(self) -> bool:
        cs = self.coldstart
        ready = "probe_ok" in cs.marks if self.probe is not None else "ready" in cs.marks
        if not ready:
            return False
        if self.request is not None and "request_done" not in cs.marks:
            sent = cs.marks.get("request_sent")
            return sent is not None and time.monotonic_ns() - sent > 5e9  # it failed: do not wait more
        return True

    def _finish_coldstart(self, now_ns: int) -> None:
        """Export the cold-start trace and metrics (once): at readiness, or at exit."""
        self._coldstart_done = True
        cs = self.coldstart
        workload = self.workload
        assert workload is not None
        for mark, time_ns in (self.launch.coldstart_marks() if self.launch is not None else {}).items():
            cs.mark(mark, time_ns)  # QEMU: qmp_ready
        plugin = self._console_plugin()
        stream = plugin.stream(workload) if plugin is not None else None
        if stream is not None and stream.first_byte_ns is not None:
            cs.mark("first_byte", stream.first_byte_ns)
        telemetry = self.pipeline.telemetry
        spans = cs.spans(now_ns)
        for span in spans:
            telemetry.span(workload, span)
        telemetry.record(workload, cs.samples(now_ns))
        end = cs.end()
        summary = ", ".join(f"{c.phase} {c.duration_ns / 1e6:.1f} ms" for c in cs.timeline(now_ns))
        request = cs.first_request()
        if request is not None:
            summary += f"; then first request {request.duration_ns / 1e6:.1f} ms"
        if end is not None:
            how = f" (ran to completion; ended at {end[0]})" if cs.completed == end[0] else ""
            body = f"cold start {(end[1] - cs.marks['exec']) / 1e6:.1f} ms{how}" + (f": {summary}" if summary else "")
            self.lifecycle("coldstart", end[1], attributes=(("faas.coldstart", True),), body=body)
        else:
            severity = Severity.WARN if self._interrupted is not None else Severity.ERROR
            self.lifecycle("coldstart", now_ns, severity, (("faas.coldstart", True),),
                           body=f"cold start failed: {cs.failure}")  # fmt: skip

    def _record_usage(self, workload: Workload, proc: Child) -> None:
        """The command's own resource usage at its exit (wait4): exact, and there even for a guest
        that lived too briefly to be scraped. `process.cpu.time` always; `uniobs.process.memory.peak`
        when it is the command's own: the kernel folds the memory of the process that started it
        (uniobs, until the exec) into ru_maxrss, so a figure not above uniobs' own peak is unknown.
        A container's `process.*` series are its init's, not the runtime CLI's that was reaped: the
        CLI's figures go on a resource of its own (`process.executable.name`, `process.pid`)."""
        usage = proc.rusage
        if usage is None:
            log.info("%s: its exit's resource usage is unknown (the process was reaped elsewhere)", self.name)
            return
        samples = [
            Sample("process.cpu.time", usage.ru_utime, ((CPU_MODE, "user"),)),
            Sample("process.cpu.time", usage.ru_stime, ((CPU_MODE, "system"),)),
        ]
        peak = usage.ru_maxrss * 1024  # Linux: KiB
        if peak > self._rss_floor:
            samples.append(Sample("uniobs.process.memory.peak", peak))
        else:
            log.info(
                "%s: peak RSS unknown: the exit's %d KiB are not above uniobs' own %d KiB, which the kernel "
                "counts in it until the exec", self.name, usage.ru_maxrss, self._rss_floor // 1024,
            )  # fmt: skip
        target = workload
        if workload.pid != proc.pid:
            executable = self.plan.executable
            target = Workload(
                kind=Kind.PROCESS, runtime=workload.runtime, id=f"{executable}-{proc.pid}", name=self.name,
                pid=proc.pid, executable=executable,
            )  # fmt: skip
        self.pipeline.telemetry.record(target, samples)

    def _reap_if_stuck(self, proc: subprocess.Popen[bytes]) -> None:
        """The runtime announced the workload's end (QMP SHUTDOWN) but it has not exited: do not
        wait for it forever."""
        ending = self.launch.ending() if self.launch is not None else None
        if ending is None:
            return
        since_ns, what = ending
        waited = (time.monotonic_ns() - since_ns) / 1e9
        if waited > SHUTDOWN_GRACE_S and not self._stuck:
            self._stuck = True
            log.warning("%s: %s %.0fs ago and is still running; terminating it", self.name, what, waited)
            self.lifecycle("vmm_stuck", time.monotonic_ns(), Severity.ERROR, (("uniobs.waited_s", round(waited, 1)),))
            proc.terminate()
        elif waited > 2 * SHUTDOWN_GRACE_S:
            proc.kill()

    def _observed_console(self, workload: Workload, launch: Launch) -> None:
        """What the console showed, for classify_exit: its family, and whether anything arrived."""
        plugin = self._console_plugin()
        stream = plugin.stream(workload) if plugin is not None else None
        observed = launch.observed
        observed.cwd = self.cwd
        observed.console_output = stream is not None and stream.first_byte_ns is not None
        if plugin is not None:
            observed.console_family = plugin.family(workload)

    def _log_first_byte(self) -> bool:
        plugin = self._console_plugin()
        stream = plugin.stream(self.workload) if plugin is not None else None
        if stream is None or stream.first_byte_ns is None:
            return False
        self.lifecycle("console_first_byte", stream.first_byte_ns)
        return True

    def _capture_stderr(self, proc: subprocess.Popen[bytes], workload: Workload) -> ConsoleStream | None:
        """The function's stderr, as log records with log.iostream=stderr (and copied to ours)."""
        if proc.stderr is None:
            return None
        telemetry = self.pipeline.telemetry

        seen = self.launch.observed.stderr if self.launch is not None else None

        def on_lines(lines: Sequence[ConsoleLine]) -> None:  # a LineBatch
            telemetry.log_batch(
                workload,
                [LogEvent(line.time_ns, line.text, attributes=(("log.iostream", "stderr"),)) for line in lines],
            )
            if seen is not None:
                seen.extend(line.text for line in lines)  # read for the tender's own failure at exit

        # A VMM's or tender's stderr is its own, not the guest console (a serial port): shown even with --quiet.
        own = self.runtime.kind is Kind.UNIKERNEL
        mirror = sys.stderr.buffer if self.mirror_console or own else None
        return ConsoleStream(f"fd:{_take_fd(proc, 'stderr')}", on_lines, mirror=mirror).start(self.pipeline.loop)


def _own_peak_rss() -> int:
    """uniobs' own peak resident set size (its memory's VmHWM, what an exec passes on), bytes;
    where /proc does not say, its ru_maxrss (never smaller)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _take_fd(proc: subprocess.Popen[bytes], stream: str) -> int:
    """A duplicate of the child's stdout/stderr pipe for the capture, Popen's own copy closed."""
    pipe = getattr(proc, stream)
    fd = os.dup(pipe.fileno())
    pipe.close()
    setattr(proc, stream, None)
    return fd


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _remove(path: str) -> None:
    """A file, or a folder with what is in it."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        _unlink(path)
