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
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uniobs.coldstart.probes import ProbeRunner, parse_probe
from uniobs.coldstart.trace import COLDSTART_METRICS, ColdStart
from uniobs.guest.capture import ConsoleStream
from uniobs.ioloop import IoLoop
from uniobs.lifecycle.rundir import RunDir, cgroup_exists, remove_cgroups
from uniobs.model import Attributes, Instrument, Kind, LogEvent, MetricSpec, Sample, Severity, Workload
from uniobs.pipeline import Pipeline
from uniobs.plugin import ConsoleLine, GuestEvent, Milestone
from uniobs.runtimes.accel import accel_of
from uniobs.runtimes.launch import LaunchPlan
from uniobs.runtimes.qmp import (
    EVENTS_WATCHED,
    MessageFramer,
    QmpError,
    QmpEvent,
    decode_message,
    event_log,
    parse_event,
)

log = logging.getLogger("uniobs.run")

TRACEPARENT_LABEL = "uniobs.traceparent"  # read by the console capture (collectors/console.py)
CONTAINER_RUNTIMES = frozenset({"runc", "crun", "podman", "docker"})
CONTAINER_START_TIMEOUT_S = 60.0  # how long the runtime may take to create the container
SHUTDOWN_GRACE_S = 10.0  # after QMP SHUTDOWN, how long QEMU may take to exit before we end it

LIFECYCLE_METRICS = (
    MetricSpec(
        "uniobs.workload.exits",
        Instrument.COUNTER,
        "{exit}",
        "Workload exits by reason: guest-exit (the guest chose its status), guest-shutdown, "
        "guest-reset, guest-panic, host-signal, signal (the VMM was killed), exit (a process ended).",
        ("uniobs.exit.reason",),
    ),
)


BUNDLE_COPY = "bundle"  # runc/crun: the bundle copy with TRACEPARENT, in the run directory
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class RunInterrupted(Exception):
    """SIGINT, SIGTERM or SIGHUP arrived before the command was started: nothing ran."""

    def __init__(self, signum: int, when: str = "before the command started") -> None:
        super().__init__(f"interrupted by {_signal_name(signum)} {when}".strip())
        self.signum = signum


@dataclass
class ExitInfo:
    status: int  # what `uniobs run` exits with: the VMM's status, or 128+signal
    reason: str
    returncode: int
    guest_exit_code: int | None = None
    signal_name: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)


class QmpEventWatcher:
    """Reads asynchronous QMP events on the shared I/O loop (its own QMP socket: no queries here).

    It connects as soon as QEMU listens, which also times "QMP ready" for the cold-start trace.
    The only command it sends is the capabilities handshake.
    """

    def __init__(self, path: str, loop: IoLoop, on_event: Callable[[QmpEvent], None]) -> None:
        self.path = path
        self.ready_ns: int | None = None
        self.events: list[QmpEvent] = []
        self._loop = loop
        self._on_event = on_event
        self._sock: socket.socket | None = None
        self._framer = MessageFramer()
        self._done = threading.Event()
        self._greeted = False
        loop.every(0.002, self._try_connect)

    def _try_connect(self, now_ns: int) -> bool:
        if self._sock is not None or self._done.is_set():
            return False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            return True  # not listening yet: try again
        self._sock = sock
        self._loop.add_reader(sock.fileno(), self._readable)
        return False

    def _readable(self, fd: int, arrival_ns: int) -> bool:
        sock = self._sock
        if sock is None:
            return False
        try:
            chunk = sock.recv(65536)
        except BlockingIOError:
            return True
        except OSError:
            chunk = b""
        messages = None
        if chunk:
            try:
                messages = [decode_message(m) for m in self._framer.feed(chunk)]
            except QmpError as exc:
                log.warning("qmp events %s: %s; no more events from it", self.path, exc)
        if messages is None:
            self.close()
            return False
        for message in messages:
            if "QMP" in message and not self._greeted:
                self._greeted = True
                self.ready_ns = arrival_ns
                sock.sendall(b'{"execute": "qmp_capabilities"}\n')
            elif "event" in message:
                try:
                    event = parse_event(message, arrival_ns)
                except QmpError:
                    continue
                self.events.append(event)
                self._on_event(event)
        return True

    def close(self) -> None:
        self._done.set()
        if self._sock is not None:
            sock, self._sock = self._sock, None
            self._loop.remove_reader(sock.fileno())
            sock.close()

    def shutdown_reason(self) -> str | None:
        for event in reversed(self.events):
            if event.name == "SHUTDOWN":
                return str(event.data.get("reason", "unknown"))
        return None

    def panicked(self) -> bool:
        return any(event.name == "GUEST_PANICKED" for event in self.events)


class Runner:
    """Spawn, observe, and report one workload."""

    def __init__(
        self,
        pipeline: Pipeline,
        plan: LaunchPlan,
        name: str,
        *,
        interval: float = 1.0,
        mirror_console: bool = True,
        rundir: RunDir | str | None = None,
        cgroup: str | None = None,
        ready: str | None = None,
        request: str | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.plan = plan
        self.name = name
        self.interval = interval
        self.mirror_console = mirror_console
        # The run directory the plan's files are in: a RunDir (its owner record gets the launched
        # process and cgroup; the caller removes it), a plain directory, or None: a RunDir of our own.
        self.rundir = rundir
        self.cgroup = cgroup  # a cgroup path to start the VMM in, created and removed by us
        self.proc: subprocess.Popen[bytes] | None = None
        self.workload: Workload | None = None
        self.exec_ns = 0
        self.exit_ns = 0
        self.events: QmpEventWatcher | None = None
        pipeline.telemetry.declare(LIFECYCLE_METRICS, scope="uniobs.lifecycle")
        pipeline.telemetry.declare(COLDSTART_METRICS, scope="uniobs.coldstart")
        self._exits: dict[str, int] = {}
        self._first_byte_logged = False
        self._stuck = False
        self._oom: Any = None  # an OomWatch on the container's memory cgroup
        shrinkwrap = "container" if plan.runtime in CONTAINER_RUNTIMES else "unikernel"
        if plan.runtime == "process":
            shrinkwrap = "process"
        self.coldstart = ColdStart(shrinkwrap, plan.runtime)
        self.probe = parse_probe(ready) if ready else None
        self.request = request
        if request is not None:
            parse_probe(request)  # checked now: a bad URL is a usage error, not a silent miss
        self._probe_runner: ProbeRunner | None = None
        self._coldstart_done = False
        self._env: dict[str, str] | None = None
        self.extra_env = dict(env or {})  # for the function (containers, processes)
        self.cwd = cwd  # where the command runs (a function definition's folder)
        self._pending_signals: list[int] = []  # received before the command was started
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

    def _on_qmp_event(self, event: QmpEvent) -> None:
        if self.workload is not None:
            self.pipeline.telemetry.log(self.workload, event_log(event))

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
        for path in (plan.qmp, plan.qmp_events, plan.cidfile):
            if path:
                cleanup.callback(_unlink, path)
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
        if plan.qmp_events:
            self.events = QmpEventWatcher(plan.qmp_events, loop, self._on_qmp_event)
            cleanup.callback(self.events.close)

        if plan.runtime in ("runc", "crun"):
            cleanup.callback(shutil.rmtree, os.path.join(rundir, BUNDLE_COPY), ignore_errors=True)
        argv = self._with_traceparent(plan, rundir)
        if self.cgroup is None and plan.runtime in ("runc", "crun") and os.geteuid() == 0:
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
        self.exec_ns = time.monotonic_ns()
        # The VMM gets our terminal for an interactive console (QEMU's -nographic monitor), and
        # /dev/null otherwise: with no stdin of our own, fd 0 would be whatever we opened first.
        stdin = None if os.isatty(0) else subprocess.DEVNULL
        is_container = plan.runtime in CONTAINER_RUNTIMES
        proc = subprocess.Popen(
            argv, stdin=stdin, stdout=subprocess.PIPE if plan.console_on_stdout else None,
            stderr=subprocess.PIPE if is_container else None, env=self._env, cwd=self.cwd,
        )  # fmt: skip
        cleanup.callback(self._end_command, proc)  # a run that ends early does not leave it running
        self.proc = proc
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
        if is_container:
            workload = self._identify_container(proc, console)
        else:
            kind = Kind.UNIKERNEL if plan.runtime in ("qemu", "solo5-hvt") else Kind.PROCESS
            workload = Workload(
                kind=kind, runtime=plan.runtime, id=f"{self.name}-{proc.pid}", name=self.name, pid=proc.pid,
                qmp=plan.qmp, console=console, executable=plan.executable, cgroup=self.cgroup,
                labels={EVENTS_WATCHED: "true"} if plan.qmp_events else {},
            )  # fmt: skip
        workload = dataclasses.replace(
            workload, labels={**workload.labels, TRACEPARENT_LABEL: self.coldstart.traceparent}
        )
        self.workload = workload
        spawned: Attributes = (("process.command", plan.executable),)
        if plan.runtime == "qemu":
            spawned += (("uniobs.vm.accelerator", accel_of(plan.argv)),)
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
        stderr_stream = self._capture_stderr(proc, workload) if is_container else None
        if self._oom is not None:
            cleanup.callback(self._oom.close)
            oom_fd = self._oom.fileno()
            if oom_fd is not None:
                loop.add_reader(oom_fd, lambda _fd, _t: self._oom is not None and self._oom.check() >= 0)
            else:
                loop.every(0.02, lambda _t: self._oom is not None and self._oom.check() >= 0)

        self._observe(proc)
        self.exit_ns = time.monotonic_ns()
        self._end_observation(workload, stderr_stream)
        self.pipeline.snapshot_streams(workload)
        if not self._first_byte_logged:
            self._log_first_byte()
        if self.events is not None:
            self.events.close()
        info = self._exit_info(proc.returncode)
        self._exits[info.reason] = self._exits.get(info.reason, 0) + 1
        self.pipeline.telemetry.record(
            workload, [Sample("uniobs.workload.exits", n, (("uniobs.exit.reason", r),)) for r, n in self._exits.items()]
        )
        severity = Severity.INFO if info.reason in ("guest-exit", "guest-shutdown", "exit") else Severity.ERROR
        if info.reason == "guest-exit" and info.guest_exit_code:
            severity = Severity.WARN
        if not self._coldstart_done:
            self.coldstart.fail(f"exited before ready: {info.reason} (status {info.status})")
            self._finish_coldstart(self.exit_ns)
        self.lifecycle("exited", self.exit_ns, severity, tuple(info.attributes.items()))
        return info

    def _catch_signals(self, cleanup: contextlib.ExitStack) -> None:
        """SIGINT/SIGTERM/SIGHUP go to the command (SIGINT as SIGTERM) for the whole run, cleanup
        included, so that it ends its own way and ours runs to the end. (Main thread only.)"""
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, _frame: Any) -> None:
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
        assert self.workload is not None
        export_every = self.pipeline.settings.core.export_interval
        next_export = time.monotonic() + export_every
        wait = 0.05  # a first scrape right after the spawn: short-lived guests get VMM stats too
        while True:
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                wait = self.interval
            self.pipeline.scrape([self.workload])
            if not self._first_byte_logged:
                self._first_byte_logged = self._log_first_byte()
            if time.monotonic() >= next_export:
                self.pipeline.telemetry.flush(timeout=0.1)  # never block the watch on a backend
                next_export = time.monotonic() + export_every
            self._reap_if_stuck(proc)
            if not self._coldstart_done and self._coldstart_complete():
                self._finish_coldstart(time.monotonic_ns())

    def stop(self) -> None:
        """Ask the launched command to end (SIGTERM): what `uniobs compare` does after measuring."""
        proc = getattr(self, "proc", None)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()

    @property
    def coldstart_done(self) -> bool:
        return self._coldstart_done

    # -- the cold-start trace

    def _with_traceparent(self, plan: LaunchPlan, rundir: str) -> list[str]:
        """The command with the W3C traceparent passed to the function: on the kernel command line
        for unikernels (QEMU -append, hvt guest arguments), as TRACEPARENT for containers."""
        tp = self.coldstart.traceparent
        argv = list(plan.argv)
        if plan.runtime == "qemu":
            if plan.append_index is not None:
                argv[plan.append_index] = f"{argv[plan.append_index]} traceparent={tp}".strip()
            elif plan.kernel is not None:
                argv += ["-append", f"traceparent={tp}"]
        elif plan.runtime == "solo5-hvt":
            argv.append(f"traceparent={tp}")
        env = {**self.extra_env, "TRACEPARENT": tp}
        if plan.runtime in ("podman", "docker"):
            at = argv.index("run") + 1
            argv[at:at] = [word for k, v in env.items() for word in ("-e", f"{k}={v}")]
        elif plan.runtime in ("runc", "crun"):
            argv = _bundle_with_env(argv, plan, rundir, env, self.cwd)
        elif plan.runtime not in ("qemu", "solo5-hvt"):
            self._env = {**os.environ, **env}
        return argv

    def _console_probe(self) -> bool:
        return self.probe is not None and self.probe.kind == "console"

    def _on_console_line(self, line: ConsoleLine) -> None:
        runner, pattern = self._probe_runner, self.probe.pattern if self.probe is not None else None
        if runner is not None and pattern is not None and not runner.ok and pattern.search(line.text):
            runner.console_matched(line.time_ns)

    def _on_guest_event(self, event: GuestEvent) -> None:
        if event.milestone is None:
            return
        if event.milestone is Milestone.CRASH:
            self.coldstart.fail(f"guest crashed: {event.name}")
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
        if self.events is not None and self.events.ready_ns is not None:
            cs.mark("qmp_ready", self.events.ready_ns)
        plugin = self._console_plugin()
        stream = plugin.stream(workload) if plugin is not None else None
        if stream is not None and stream.first_byte_ns is not None:
            cs.mark("first_byte", stream.first_byte_ns)
        telemetry = self.pipeline.telemetry
        spans = cs.spans(now_ns)
        for span in spans:
            telemetry.span(workload, span)
        telemetry.record(workload, cs.samples())
        ready = cs.ready_ns()
        summary = ", ".join(f"{p} {(e - s) / 1e6:.1f} ms" for p, s, e in cs.phases())
        if ready is not None:
            body = f"cold start {(ready - cs.marks['exec']) / 1e6:.1f} ms" + (f": {summary}" if summary else "")
            self.lifecycle("coldstart", ready, attributes=(("faas.coldstart", True),), body=body)
        else:
            self.lifecycle("coldstart", now_ns, Severity.ERROR, (("faas.coldstart", True),),
                           body=f"cold start failed: {cs.failure}")  # fmt: skip

    def _reap_if_stuck(self, proc: subprocess.Popen[bytes]) -> None:
        """QEMU announced SHUTDOWN but has not exited: do not wait for it forever."""
        shutdown = (
            next((e for e in reversed(self.events.events) if e.name == "SHUTDOWN"), None) if self.events else None
        )
        if shutdown is None:
            return
        waited = (time.monotonic_ns() - shutdown.arrival_monotonic_ns) / 1e9
        if waited > SHUTDOWN_GRACE_S and not self._stuck:
            self._stuck = True
            log.warning("%s: QEMU announced SHUTDOWN %.0fs ago and is still running; terminating it", self.name, waited)
            self.lifecycle("vmm_stuck", time.monotonic_ns(), Severity.ERROR, (("uniobs.waited_s", round(waited, 1)),))
            proc.terminate()
        elif waited > 2 * SHUTDOWN_GRACE_S:
            proc.kill()

    def _log_first_byte(self) -> bool:
        plugin = self._console_plugin()
        stream = plugin.stream(self.workload) if plugin is not None else None
        if stream is None or stream.first_byte_ns is None:
            return False
        self.lifecycle("console_first_byte", stream.first_byte_ns)
        return True

    def _identify_container(self, proc: subprocess.Popen[bytes], console: str) -> Workload:
        """Find the container the runtime is creating: its id, init pid and cgroup, from the
        runtime's own state files (no daemon). The output pipes hold what it prints meanwhile.
        Logs `created` (state written: cgroup and init process exist) and `started` (the init
        process has exec'd the function)."""
        from uniobs.containers.discovery import ContainerDiscovery
        from uniobs.host.cgroup_place import OomWatch
        from uniobs.host.cgroupfs import detect_layout

        plan = self.plan
        deadline = time.monotonic() + CONTAINER_START_TIMEOUT_S
        cid = plan.container_id
        while cid is None and proc.poll() is None and time.monotonic() < deadline:
            try:
                cid = Path(plan.cidfile or "").read_text().strip() or None
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
            name = self.name
            found = Workload(kind=Kind.CONTAINER, runtime=plan.runtime, id=cid or f"{name}-{proc.pid}", name=name)
            log.warning("%s: the container's state was not found; measuring its runtime's output only", name)
        workload = dataclasses.replace(found, name=self.name or found.name, console=console, executable=plan.executable)
        self.workload = workload
        if created_ns is not None and workload.pid is not None:
            self.lifecycle("created", created_ns, attributes=(("container.id", workload.id),))
            self.coldstart.mark("created", created_ns)
            started_ns = _wait_exec(workload.pid, deadline)
            if started_ns is not None:
                self.lifecycle("started", started_ns)
                self.coldstart.mark("started", started_ns)
        if layout is not None and workload.cgroup is not None:
            try:
                self._oom = OomWatch(layout, workload.cgroup, workload.cgroups)
            except OSError as exc:
                log.info("%s: OOM kills cannot be watched: %s", self.name, exc)
        return workload

    def _container_exit(self, returncode: int, attrs: dict[str, Any]) -> ExitInfo:
        """runc/crun/podman/docker run exit with the container's status (128+N when a signal ended it)."""
        kills = self._oom.check() if self._oom is not None else 0
        if self._oom is not None:
            # an OOM notification followed by a SIGKILL exit is an OOM kill, even when the cgroup
            # was removed before the kernel's counter moved
            if not kills and self._oom.ooms and returncode == 128 + signal.SIGKILL:
                kills = self._oom.ooms
            self._oom.close()
        if returncode < 0:  # the runtime's CLI itself was killed
            name = _signal_name(-returncode)
            attrs.update({"uniobs.exit.reason": "signal", "uniobs.exit.signal": name})
            return ExitInfo(128 - returncode, "signal", returncode, signal_name=name, attributes=attrs)
        if kills:
            attrs.update({"uniobs.exit.reason": "oom-killed", "uniobs.container.oom_kills": kills})
            return ExitInfo(returncode, "oom-killed", returncode, attributes=attrs)
        if returncode > 128:
            name = _signal_name(returncode - 128)
            attrs.update({"uniobs.exit.reason": "signal", "uniobs.exit.signal": name})
            return ExitInfo(returncode, "signal", returncode, signal_name=name, attributes=attrs)
        attrs["uniobs.exit.reason"] = "exit"
        return ExitInfo(returncode, "exit", returncode, attributes=attrs)

    def _capture_stderr(self, proc: subprocess.Popen[bytes], workload: Workload) -> ConsoleStream | None:
        """The function's stderr, as log records with log.iostream=stderr (and copied to ours)."""
        if proc.stderr is None:
            return None
        telemetry = self.pipeline.telemetry

        def on_lines(lines: list[ConsoleLine]) -> None:
            telemetry.log_batch(
                workload,
                [LogEvent(line.time_ns, line.text, attributes=(("log.iostream", "stderr"),)) for line in lines],
            )

        mirror = sys.stderr.buffer if self.mirror_console else None
        return ConsoleStream(f"fd:{_take_fd(proc, 'stderr')}", on_lines, mirror=mirror).start(self.pipeline.loop)

    def _exit_info(self, returncode: int) -> ExitInfo:
        attrs: dict[str, Any] = {"process.exit.code": returncode}
        if self.plan.runtime in CONTAINER_RUNTIMES:
            return self._container_exit(returncode, attrs)
        if self.events is not None and self.events.ready_ns is not None:
            attrs["uniobs.qmp.ready_s"] = round((self.events.ready_ns - self.exec_ns) / 1e9, 6)
        if returncode < 0:
            name = signal.Signals(-returncode).name
            attrs.update({"uniobs.exit.reason": "signal", "uniobs.exit.signal": name})
            return ExitInfo(128 - returncode, "signal", returncode, signal_name=name, attributes=attrs)
        reason = "exit"
        guest_code = None
        if self.plan.runtime == "qemu":
            shutdown = self.events.shutdown_reason() if self.events is not None else None
            if self.events is not None and self.events.panicked():
                reason = "guest-panic"
            elif shutdown is not None:
                reason = {"host-signal": "host-signal", "guest-reset": "guest-reset", "guest-panic": "guest-panic"}.get(
                    shutdown, "guest-shutdown"
                )
                attrs["qemu.shutdown.reason"] = shutdown
            elif returncode % 2 == 1 and "isa-debug-exit" in " ".join(self.plan.argv):
                # isa-debug-exit: the guest wrote N and QEMU exited with (N << 1) | 1
                reason, guest_code = "guest-exit", returncode >> 1
        elif self.plan.runtime == "solo5-hvt":
            reason, guest_code = "guest-exit", returncode  # the tender exits with solo5_exit(N)'s N
        attrs["uniobs.exit.reason"] = reason
        if guest_code is not None:
            attrs["uniobs.guest.exit_code"] = guest_code
        return ExitInfo(returncode, reason, returncode, guest_exit_code=guest_code, attributes=attrs)


def _bundle_with_env(
    argv: list[str], plan: LaunchPlan, rundir: str, env: dict[str, str], cwd: str | None = None
) -> list[str]:
    """runc/crun read the environment from the bundle's config.json: run a copy of the bundle's
    config (root file system still the original's) with the variables added."""
    import json

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


def _take_fd(proc: subprocess.Popen[bytes], stream: str) -> int:
    """A duplicate of the child's stdout/stderr pipe for the capture, Popen's own copy closed."""
    pipe = getattr(proc, stream)
    fd = os.dup(pipe.fileno())
    pipe.close()
    setattr(proc, stream, None)
    return fd


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"


def _wait_exec(pid: int, deadline: float) -> int | None:
    """When the container's init process has exec'd the function (its comm is no longer the
    runtime's init: runc shows `runc:[2:INIT]`, crun `crun`, ...). Polled every millisecond."""
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/comm", "rb") as f:
                comm = f.read().strip()
        except OSError:
            return None
        if not comm.startswith((b"runc", b"crun", b"exe", b"conmon")):
            return time.monotonic_ns()
        time.sleep(0.001)
    return None


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
