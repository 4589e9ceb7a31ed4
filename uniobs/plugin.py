"""The plugin contracts: collectors, streaming collectors, console parsers, exporters and runtimes.

A plugin is one small class registered under an entry-point group (see `uniobs.registry`).
It declares what it emits in one place (`metrics`), validates its configuration at start
(`config_class`, a dataclass), and returns data: the framework owns the loop, the timing and
the export.
"""

from __future__ import annotations

import abc
import enum
import os
import signal
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Protocol

from uniobs.model import Attributes, Kind, LogEvent, MetricSpec, Sample, Severity, SpanEvent, Workload

if TYPE_CHECKING:
    import subprocess

    from opentelemetry.sdk._logs.export import LogRecordExporter
    from opentelemetry.sdk.metrics.export import MetricExporter
    from opentelemetry.sdk.trace.export import SpanExporter

    from uniobs.ioloop import IoLoop


class WorkloadGone(Exception):
    """The workload vanished while being read (pid exited, cgroup removed): churn, not an error."""


class SourceUnavailable(Exception):
    """A source this collector reads does not exist here (no debugfs, TCG without KVM stats...).

    The scheduler reports it once per workload and source, not at every scrape.
    """


@dataclass(frozen=True)
class PluginConfig:
    """Settings every plugin has. Subclasses add their own fields (with defaults).

    `validate` runs after the loader has checked names and types; raise ValueError naming the
    key to refuse a value.
    """

    enabled: bool = True

    def validate(self) -> None:
        return None


@dataclass(frozen=True)
class CollectorConfig(PluginConfig):
    """Settings every collector has; the scheduler (`uniobs.scheduler`) applies them.

    `interval` unset (None) means the command's interval: `--interval` of `run`/`attach`, else
    `[uniobs] interval`, else 10 s in the agent and 1 s in `run`/`attach`. Once the scheduler
    runs the collector, `config.interval` holds the interval it actually runs at.
    `timeout` bounds each `collect()` (with its `events()` and `gaps()`): a call still running
    then is abandoned and counted as error.type "timeout", and that workload is not collected
    again by this collector until the call returns.
    """

    interval: float | None = None  # seconds between scrapes of each workload; None: the command's
    timeout: float = 5.0  # seconds one collect() may take before it is abandoned

    def validate(self) -> None:
        if self.interval is not None and self.interval <= 0:
            raise ValueError("interval: must be > 0 seconds")
        if self.timeout <= 0:
            raise ValueError("timeout: must be > 0 seconds")


class Collector(abc.ABC):
    """Samples workloads on an interval. Returns data; never pushes, never sleeps."""

    name: ClassVar[str]
    metrics: ClassVar[tuple[MetricSpec, ...]]
    config_class: ClassVar[type[CollectorConfig]] = CollectorConfig

    def __init__(self, config: CollectorConfig | None = None) -> None:
        self.config = config if config is not None else self.config_class()

    @abc.abstractmethod
    def applies_to(self, workload: Workload) -> bool:
        """Whether this collector has anything to read for this workload."""

    def prepare(self, workload: Workload) -> None:
        """Start what `collect()` would wait for, and return at once: e.g. send a request whose
        answer `collect()` then reads (the qemu collector's QMP queries), so that the source
        works while the other collectors read theirs. Called at the start of a scrape for every
        workload the collector applies to, on the scraping thread; a collector that overrides it
        is collected after those that do not. Must not block. An exception is logged, and
        `collect()` does the whole work. Default: nothing.
        """
        return None

    @abc.abstractmethod
    def collect(self, workload: Workload) -> Iterable[Sample]:
        """Read the workload's sources now. Raise WorkloadGone or SourceUnavailable as they apply."""

    def events(self, workload: Workload) -> Iterable[LogEvent]:
        """Events the sources reported since the last call (e.g. QMP events seen while querying).

        Called right after `collect()`. Timestamps are monotonic, as for every LogEvent.
        """
        return ()

    def gaps(self, workload: Workload) -> Iterable[str]:
        """Sources this collector reads for the workload that yielded nothing in the `collect()`
        just made, while the workload is there: one short, stable reason each, e.g. "memory: no
        cgroup /a/b in /sys/fs/cgroup/memory (container.memory.* not read)".

        Called right after a `collect()` that returned. The pipeline logs each reason once per
        workload and counts the collection in `uniobs.collector.errors` (error.type "NoData"):
        a source that should have answered and did not is a partial failure, not silence. A
        source that does not exist here at all is SourceUnavailable instead.
        """
        return ()

    def forget(self, workload: Workload) -> None:
        """Drop any per-workload state: the workload is gone."""
        return None

    def close(self) -> None:
        return None


class EventSink(Protocol):
    """Where streaming collectors deliver what they read. The pipeline implements it."""

    def log(self, workload: Workload, event: LogEvent) -> None: ...

    def log_batch(self, workload: Workload, events: Sequence[LogEvent]) -> None: ...

    def span(self, workload: Workload, event: SpanEvent) -> None: ...

    def record(self, workload: Workload, samples: Iterable[Sample]) -> None: ...

    def declare(self, specs: Iterable[MetricSpec], scope: str) -> None: ...


class StreamingCollector(abc.ABC):
    """Reads a stream (a serial console, a QMP event channel) for as long as a workload lives.

    `start` must return promptly: the implementation reads on a shared I/O thread or selector,
    never one thread per workload.
    """

    name: ClassVar[str]
    metrics: ClassVar[tuple[MetricSpec, ...]] = ()
    config_class: ClassVar[type[PluginConfig]] = PluginConfig

    def __init__(self, config: PluginConfig | None = None) -> None:
        self.config = config if config is not None else self.config_class()

    @abc.abstractmethod
    def applies_to(self, workload: Workload) -> bool: ...

    @abc.abstractmethod
    def start(self, workload: Workload, sink: EventSink, loop: IoLoop) -> None:
        """Begin reading; register descriptors on `loop` (the shared I/O thread)."""

    @abc.abstractmethod
    def stop(self, workload: Workload, timeout: float = 2.0) -> None:
        """Read what is already there, deliver it, and stop. Waits up to `timeout` (0: only ask)."""

    def ended(self, workload: Workload) -> bool:
        """Whether the stream has delivered everything and stopped (after `stop`, or at its EOF)."""
        return True

    def snapshot(self, workload: Workload) -> Iterable[Sample]:
        """Counters about the stream itself (bytes, drops), sampled with the scrapes."""
        return ()

    def forget(self, workload: Workload) -> None:
        """Drop any per-workload state: the workload is gone."""
        return None


# --- console parsers ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConsoleLine:
    """One line of a guest console as the capture delivered it.

    `text` is already safe: decoded with replacement characters, control bytes escaped, cut to
    the capture's maximum length (`truncated` says so). `time_ns` is the monotonic time at which
    the line's first byte arrived.
    """

    time_ns: int
    text: str
    number: int = 0
    truncated: bool = False


class Milestone(enum.StrEnum):
    """The boot milestones a cold-start trace is cut at."""

    BOOT = "boot"  # the guest's first sign of life (banner)
    KERNEL_READY = "kernel_ready"
    APP_START = "app_start"
    READY = "ready"  # the function says it is ready (listening)
    EXIT = "exit"
    CRASH = "crash"


@dataclass(frozen=True, slots=True)
class GuestEvent:
    """Something a parser understood in a console line."""

    time_ns: int  # host monotonic time of the line: its arrival (a VMM log's own stamp, see VmmLogParser)
    name: str  # e.g. "solo5.exit", "osv.bootchart.vfs_initialized"
    milestone: Milestone | None = None
    guest_time_s: float | None = None  # the guest's own uptime stamp, when it printed one
    duration_s: float | None = None  # a guest-reported duration (a boot phase, a total)
    severity: Severity = Severity.INFO
    attributes: Attributes = ()


class ConsoleParser(abc.ABC):
    """Understands the console of one unikernel family. One instance per console stream."""

    family: ClassVar[str]
    description: ClassVar[str] = ""

    @abc.abstractmethod
    def recognises(self, line: ConsoleLine) -> bool:
        """Whether this line identifies the family (a banner, a characteristic prefix)."""

    @abc.abstractmethod
    def parse(self, line: ConsoleLine) -> Sequence[GuestEvent]:
        """The events in this line; an empty sequence for ordinary output."""


class VmmLogParser(ConsoleParser):
    """Understands a VMM's (or a launcher's) own log where it shares a stream with a guest's console,
    e.g. Firecracker's logger on the stdout that also carries the guest's serial port.

    A guest family is detected once per stream; a VMM log parser is always on, beside it: each line
    it `owns` goes to it and to no guest parser, the other lines to the guest's family. Its events
    are the VMM's, not the guest's: its milestones (the VMM's start, exit, crash) are kept apart
    from the guest's boot milestones.
    """

    # Every line this parser owns starts with one of these: a stream tests a line against all its
    # VMM parsers' prefixes in one call and asks `owns` only on a match. Empty: `owns` is asked of
    # every line.
    prefixes: ClassVar[tuple[str, ...]] = ()

    @abc.abstractmethod
    def owns(self, line: ConsoleLine) -> bool:
        """Whether this line is the VMM's own. Asked of every line of every console before any guest
        parser sees it: make it cheap (a literal prefix test first, a pattern only after it)."""

    def stamp_ns(self, line: ConsoleLine) -> int | None:
        """The time the VMM printed on this owned line, in nanoseconds on the VMM's own clock (only
        differences between its stamps are used), or None. A live console places the VMM's events
        at their stamps on the host's clock (never after their arrival); default: no stamps."""
        return None


# --- exporters ------------------------------------------------------------------------------


SIGNAL_NAMES = ("metrics", "logs", "traces")


class ExportError(Exception):
    """A sink's `export` failed, and says whether trying the same batch again may succeed.

    Raised by a sink instead of returning FAILURE, so the export queue follows the OTLP
    specification's retry rules: only retryable answers are retried (after `retry_after`
    seconds when the backend said so: HTTP Retry-After, gRPC RetryInfo); any other failure
    gives the batch up at once, counted as failed with `reason`. `rejected` (a partial success)
    says only that many items were refused and the rest delivered.
    """

    def __init__(
        self, reason: str, *, retryable: bool, retry_after: float | None = None, rejected: int | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after
        self.rejected = rejected


@dataclass(frozen=True)
class ExporterConfig(PluginConfig):
    """Settings every exporter has: which signals it takes (all three by default)."""

    signals: tuple[str, ...] = SIGNAL_NAMES  # e.g. ["traces"] for a traces-only backend

    def validate(self) -> None:
        bad = [s for s in self.signals if s not in SIGNAL_NAMES]
        if bad or not self.signals:
            raise ValueError(f"signals: expected some of {', '.join(SIGNAL_NAMES)}, got {list(self.signals)}")


@dataclass(frozen=True)
class ExporterSinks:
    """The OpenTelemetry SDK exporters one uniobs exporter hands its signals to.

    A sink's `export` returns the SDK's SUCCESS/FAILURE, or raises `ExportError` to say whether
    the failure is worth a retry.
    """

    metrics: MetricExporter | None = None
    logs: LogRecordExporter | None = None
    spans: SpanExporter | None = None


class Exporter(abc.ABC):
    """A thin factory over OpenTelemetry exporters, chosen with `--export NAME[:ARG]`."""

    name: ClassVar[str]
    config_class: ClassVar[type[PluginConfig]] = PluginConfig

    def __init__(self, config: PluginConfig | None = None) -> None:
        self.config = config if config is not None else self.config_class()
        self.config.validate()

    @classmethod
    def config_from_arg(cls, arg: str, base: PluginConfig) -> PluginConfig:
        """Apply the ARG of `--export NAME:ARG` to a configuration. Default: no ARG accepted."""
        raise ValueError(f"exporter {cls.name!r} takes no argument (got {arg!r})")

    @abc.abstractmethod
    def sinks(self) -> ExporterSinks:
        """Build the SDK exporters. Called once."""

    def describe(self) -> str:
        """Where the data goes, for the start-up banner."""
        return self.name


# --- runtimes -------------------------------------------------------------------------------
#
# A runtime is what uniobs knows about one VMM or container runtime (QEMU, Solo5 hvt, runc/crun,
# podman/docker, any plain process): which command lines and /proc entries are its, how a launch
# of it is planned and traced, what the launched workload is, why it ended, and which cold-start
# phases it has. `Runtime` is stateless (one instance serves every launch and discovery); one
# launch's state lives in the `Launch` its `start()` returns.


class Phase(NamedTuple):
    """A cold-start phase: it ends at the first of `ends` that was marked, and starts where the
    phase before it ended, which must be one of `starts` (else that stretch is `unattributed`).

    A runtime's phases are one chain from `exec` to the end of the cold start (see
    `uniobs.coldstart.trace`): they follow one another with no gap and no overlap, so their
    durations add up to the cold start. `first_request` comes after it and is not part of it.
    """

    name: str
    starts: tuple[str, ...]
    ends: tuple[str, ...]


# The marks of a launch: `exec`, `first_byte` (console), `guest_start` (when the guest's clock read
# 0, from its uptime-stamped lines), the guest's milestones (`kernel_ready`, `app_start`, `ready`),
# `probe_ok`, `request_sent`/`request_done` (uniobs.coldstart.probes), and the runtime's own
# (`Launch.milestones`, `Launch.coldstart_marks`): `qmp_ready`, `created`, `started`.
UNIKERNEL_PHASES: tuple[Phase, ...] = (
    Phase("vmm_spawn", ("exec",), ("qmp_ready",)),
    # the VMM loading the guest and starting it, up to the guest's clock start (else its first byte);
    # from the exec for a VMM that has no ready mark of its own (the Solo5 hvt tender)
    Phase("guest_load", ("qmp_ready", "exec"), ("guest_start", "first_byte")),
    Phase("guest_boot", ("guest_start", "first_byte"), ("kernel_ready",)),
    # the kernel starting the program: loading it, its libraries, its language runtime
    Phase("runtime_load", ("kernel_ready",), ("app_start",)),
    Phase("app_init", ("app_start",), ("ready", "probe_ok")),
    Phase("readiness", ("ready",), ("probe_ok",)),
    Phase("first_request", ("request_sent",), ("request_done",)),
)
CONTAINER_PHASES: tuple[Phase, ...] = (
    Phase("runtime_create", ("exec",), ("created",)),
    Phase("runtime_start", ("created",), ("started",)),
    Phase("runtime_load", ("started",), ("app_start",)),
    Phase("app_init", ("app_start",), ("ready", "probe_ok")),
    Phase("readiness", ("ready",), ("probe_ok",)),
    Phase("first_request", ("request_sent",), ("request_done",)),
)
# A plain process: its exec is the program's start.
PROCESS_PHASES: tuple[Phase, ...] = (
    Phase("runtime_load", ("exec",), ("app_start",)),
    *CONTAINER_PHASES[3:],
)


class LaunchError(ValueError):
    """A command uniobs cannot wrap as asked; str() says why and what to do."""


@dataclass
class LaunchPlan:
    """What `uniobs run` executes for a command, and where it reads the workload: `Runtime.plan`.

    A runtime with more to remember between planning and launching (QEMU's event socket, a
    container's id) subclasses it.
    """

    argv: list[str]
    runtime: str  # the workload's runtime: "qemu", "solo5-hvt", "runc", "podman", "process", ...
    executable: str
    console: str  # a capture source: "fd:stdout" (the pipe on the child's stdout) or "fifo:PATH"
    console_on_stdout: bool  # give the child a pipe for stdout and copy it to ours
    qmp: str | None = None  # a QMP socket for the collectors
    fifos: list[str] = field(default_factory=list)  # to create before spawning
    kernel: str | None = None  # the guest image (or bundle, container image), when the command names one
    notes: list[str] = field(default_factory=list)  # what was changed, for --verbose output
    # the command's stderr (the function's, or a VMM's own) is captured as log records (log.iostream=stderr)
    capture_stderr: bool = False
    cleanup: list[str] = field(default_factory=list)  # files the command creates, removed when the run ends
    planned_by: str = ""  # the runtime (entry-point name) that made the plan


@dataclass(frozen=True)
class Command:
    """The command line and environment a launch runs (`Runtime.inject_trace`)."""

    argv: list[str]
    env: Mapping[str, str] | None = None  # the whole environment; None: uniobs' own
    created: tuple[str, ...] = ()  # files or folders made for it, removed when the run ends


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"


# The one vocabulary of `uniobs.exit.reason`: the `uniobs.exited` record, the
# `uniobs.workload.exits` counter, the cold-start span's failure and `uniobs run`'s summary line all
# use these words (ExitInfo.describe() is the one wording of an exit).
EXIT_REASONS: dict[str, str] = {
    "exit": "the workload ended with a status of its own (a guest's is `uniobs.guest.exit_code`); clean when 0",
    "crash": "the guest crashed (panic, abort, trap, fatal signal): a console marker, its family's crash status "
    "or QEMU's GUEST_PANICKED; `uniobs.exit.detail` says which",
    "tender-error": "the tender or VMM failed on its own (its error on stderr, `uniobs.exit.detail`): no guest status",
    "signal": "the VMM, tender or process was killed by a signal (`uniobs.exit.signal`)",
    "host-signal": "QEMU stopped on a signal it was sent (QMP SHUTDOWN reason host-signal)",
    "guest-shutdown": "the guest powered off (QMP SHUTDOWN reason guest-shutdown)",
    "guest-reset": "the guest reset under -no-reboot (QMP SHUTDOWN reason guest-reset; a triple fault ends here)",
    "oom-killed": "the kernel's OOM killer ended the container",
}


@dataclass
class ExitInfo:
    """Why a launched command ended (`Runtime.classify_exit`), and the status `uniobs run` exits with."""

    status: int  # the command's status, or 128+N when a signal N ended it
    reason: str  # one of EXIT_REASONS
    returncode: int  # as Popen reports it: -N for a signal
    guest_exit_code: int | None = None  # the status the guest chose, when it is known
    signal_name: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)  # for the `uniobs.exited` record
    detail: str | None = None  # what showed it: the crash's console marker, the tender's own error

    @classmethod
    def of(
        cls, returncode: int, reason: str, attributes: dict[str, Any], guest_exit_code: int | None = None,
        detail: str | None = None, marker: str | None = None,
    ) -> ExitInfo:  # fmt: skip
        """An exit with the command's own status; `detail` (and the console event `marker` it came
        from) say what showed it."""
        attributes["uniobs.exit.reason"] = reason
        if guest_exit_code is not None:
            attributes["uniobs.guest.exit_code"] = guest_exit_code
        if detail:
            attributes["uniobs.exit.detail"] = detail
        if marker:
            attributes["uniobs.exit.marker"] = marker
        return cls(returncode, reason, returncode, guest_exit_code, attributes=attributes, detail=detail or None)

    @classmethod
    def by_signal(cls, number: int, returncode: int, attributes: dict[str, Any]) -> ExitInfo:
        """An end by signal `number` (status 128+N)."""
        name = signal_name(number)
        attributes.update({"uniobs.exit.reason": "signal", "uniobs.exit.signal": name})
        return cls(128 + number, "signal", returncode, signal_name=name, attributes=attributes)

    def describe(self) -> str:
        """The one wording of this exit, for the summary line, the `uniobs.exited` record and the
        cold-start span: `exit (guest status 0), status 83`, `crash (trap: type=#PF ...), status 255`,
        `tender-error (solo5-hvt: ...: Could not open ...), status 1`, `signal (SIGKILL), status 137`.
        "guest status" is what the guest chose; "status" is the command's, which `uniobs run` exits with."""
        parts = [p for p in (self.signal_name, self.detail) if p]
        if self.guest_exit_code is not None:
            parts.insert(0, f"guest status {self.guest_exit_code}")
        return self.reason + (f" ({'; '.join(parts)})" if parts else "") + f", status {self.status}"

    @property
    def clean(self) -> bool:
        """An exit with status 0 (the guest's, when it chose one), or a guest's own power-off."""
        if self.reason == "guest-shutdown":
            return True
        code = self.guest_exit_code if self.guest_exit_code is not None else self.status
        return self.reason == "exit" and code == 0

    def severity(self) -> Severity:
        """INFO for a clean end, WARN for an exit with another (or an unknown) status, ERROR otherwise."""
        if self.clean:
            return Severity.INFO
        return Severity.WARN if self.reason == "exit" else Severity.ERROR


@dataclass(frozen=True)
class VmmInfo:
    """A running VMM a runtime recognised in /proc (`Runtime.inspect`): what it is, where it is read."""

    pid: int
    runtime: str  # the workload's runtime, e.g. "qemu"
    executable: str
    name: str  # the function's name as the command line gives it (QEMU -name, the image's name)
    qmp: str | None = None
    console: str | None = None  # a capture source (see uniobs.guest.capture), or None
    console_note: str = ""  # why there is no console, when there is none
    kernel: str | None = None
    kind: Kind = Kind.UNIKERNEL

    def workload(self, name: str | None = None) -> Workload:
        name = name or self.name
        return Workload(
            kind=self.kind, runtime=self.runtime, id=f"{name}-{self.pid}", name=name, pid=self.pid, qmp=self.qmp,
            console=self.console, executable=self.executable,
        )  # fmt: skip


@dataclass
class Observed:
    """What `uniobs run` saw of a launch while it ran, for `Runtime.classify_exit`: the console's
    family and its first exit and crash events (their `<family>.exit_code` and `<family>.crash.reason`
    attributes), whether the console showed anything at all, and the command's last stderr lines
    (when the plan captures them)."""

    console_family: str | None = None  # the unikernel family the console parsers recognised
    console_output: bool = False  # at least one byte arrived on the console
    exit: GuestEvent | None = None  # the first Milestone.EXIT event (e.g. `Solo5: solo5_exit(0) called`)
    crash: GuestEvent | None = None  # the first Milestone.CRASH event (a trap, an abort, a fatal signal)
    stderr: deque[str] = field(default_factory=lambda: deque(maxlen=64))
    cwd: str | None = None  # where the command ran: relative paths in it are relative to this

    def saw(self, event: GuestEvent) -> None:
        if event.milestone is Milestone.EXIT and self.exit is None:
            self.exit = event
        elif event.milestone is Milestone.CRASH and self.crash is None:
            self.crash = event

    def guest_exit_code(self) -> int | None:
        """The status the console's exit event printed (its `<family>.exit_code`), if any."""
        code = _attribute(self.exit, ".exit_code", int)
        return code if isinstance(code, int) else None

    def crash_reason(self) -> str | None:
        """What the console's crash event says (see `crash_reason`), if there was one."""
        return crash_reason(self.crash) if self.crash is not None else None


def crash_reason(event: GuestEvent) -> str:
    """What a crash event says happened: its `<family>.crash.reason` attribute, else the event's name."""
    reason = _attribute(event, ".crash.reason", str)
    return reason if isinstance(reason, str) and reason else event.name


def _attribute(event: GuestEvent | None, suffix: str, kind: type[Any]) -> Any:
    for key, value in event.attributes if event is not None else ():
        if key.endswith(suffix) and isinstance(value, kind) and not isinstance(value, bool):
            return value
    return None


class Launch:
    """One launch of a command under a runtime, from just before its exec to its exit.

    `uniobs run` calls, in this order: `prepare` (before the exec), `identify` (right after it),
    `spawned_attributes`, `observe` (once the workload is followed), `ending` (at every wake-up
    while it runs), `coldstart_marks` (when the cold start is reported), `Runtime.classify_exit`
    (once it has exited), then `close` (also however the run ends: it may come more than once).
    Every default does nothing, which fits a command whose only sources are its stdout and its
    exit status; a runtime with a channel or state of its own (QMP events, a container's OOM
    watch) subclasses it.
    """

    def __init__(self, runtime: Runtime, plan: LaunchPlan) -> None:
        self.runtime = runtime
        self.plan = plan
        self.exec_ns = 0  # monotonic time of the exec (set by the runner)
        # (name, monotonic ns, attributes) the launch saw while it was identified: each is logged
        # as the lifecycle event `uniobs.NAME` and recorded as the cold-start mark NAME
        self.milestones: list[tuple[str, int, Attributes]] = []
        self.observed = Observed()  # filled by the runner, read by `Runtime.classify_exit`

    def prepare(self, loop: IoLoop, on_event: Callable[[LogEvent], None]) -> None:
        """Before the exec: start reading the runtime's own channels on `loop` (never a thread of
        its own). `on_event` logs a record on the workload (dropped while it is not known yet)."""
        return None

    def identify(self, proc: subprocess.Popen[bytes], *, name: str, console: str, cgroup: str | None) -> Workload:
        """The workload the started command is (a container: found from the runtime's state).

        Default: the process itself, of the runtime's kind, named `name`, read at `console`."""
        plan = self.plan
        return Workload(
            kind=self.runtime.kind, runtime=plan.runtime, id=f"{name}-{proc.pid}", name=name, pid=proc.pid,
            qmp=plan.qmp, console=console, executable=plan.executable, cgroup=cgroup,
        )  # fmt: skip

    def spawned_attributes(self) -> Attributes:
        """Attributes of the `uniobs.spawned` record beyond `process.command` (QEMU: its accelerator)."""
        return ()

    def observe(self, loop: IoLoop) -> None:
        """The workload is followed now: watch what must be seen as it happens (an OOM kill)."""
        return None

    def ending(self) -> tuple[int, str] | None:
        """(since when, what) once the runtime has announced the workload's end (QEMU: a QMP
        SHUTDOWN), so that a VMM that then hangs is ended after a grace period; else None."""
        return None

    def coldstart_marks(self) -> Mapping[str, int]:
        """Cold-start marks the runtime's own channels timed (QEMU: `qmp_ready`), monotonic ns."""
        return {}

    def close(self) -> None:
        """Stop reading and let go of descriptors; called again is harmless."""
        return None


class Runtime(abc.ABC):
    """What uniobs knows about one VMM or container runtime, registered under `uniobs.runtimes`.

    A command line is matched against the installed runtimes by name, the `fallback` ones (the
    built-in `process`) last: the first that `recognises` it plans its launch. The same test
    picks the runtime of a process found in /proc, which `inspect` then describes.
    """

    name: ClassVar[str]
    kind: ClassVar[Kind] = Kind.UNIKERNEL  # the workloads it runs
    description: ClassVar[str] = ""
    program: ClassVar[str] = ""  # its command, for messages ("qemu-system-*"); default: `name`
    fallback: ClassVar[bool] = False  # asked last: it recognises any command
    coldstart_phases: ClassVar[tuple[Phase, ...]] = UNIKERNEL_PHASES
    # Start the command in a cgroup of its own when uniobs may (root) and none was asked for:
    # runc/crun place a relative cgroupsPath under their own cgroup, in every hierarchy.
    own_cgroup: ClassVar[bool] = False
    # Whether `inject_trace` changes what the guest itself is given (its kernel command line, its
    # argv): then uniobs calls it only when trace propagation is asked for (`run --propagate-trace`,
    # `propagate_trace = true` in a function definition), and otherwise runs the command unchanged.
    # A carrier the runtime defines for this (TRACEPARENT in a container's environment) is False.
    trace_alters_guest: ClassVar[bool] = False

    @abc.abstractmethod
    def recognises(self, argv: Sequence[str]) -> bool:
        """Whether a command line is this runtime's: a command to launch, or a running process's
        (/proc/PID/cmdline). Cheap and pure: it is asked about every process on the host."""

    def plan(self, argv: Sequence[str], rundir: str | os.PathLike[str], tag: str) -> LaunchPlan:
        """What `uniobs run` executes (the command plus uniobs' sockets and console capture), with
        its files in `rundir`, named after `tag`. Pure: nothing is started. Raise LaunchError to
        refuse a command. Default: the command as it is, its stdout the console."""
        return LaunchPlan(
            list(argv), self.name, os.path.basename(argv[0]), console="fd:stdout", console_on_stdout=True,
            notes=["console: the command's stdout is captured"],
        )  # fmt: skip

    def function_name(self, plan: LaunchPlan) -> str:
        """The function's name when the user gives none: the image's file name, else the program's."""
        return os.path.splitext(os.path.basename(plan.kernel or plan.executable))[0]

    def inject_trace(
        self, plan: LaunchPlan, traceparent: str, env: Mapping[str, str], *, rundir: str, cwd: str | None
    ) -> Command:
        """The command that hands the launch's W3C `traceparent` (and the function's `env`) to the
        function, making what it needs in `rundir`. Default: both in the command's environment.
        With `trace_alters_guest`, called only when propagation is asked for."""
        return Command(list(plan.argv), {**os.environ, **env, "TRACEPARENT": traceparent})

    def start(self, plan: LaunchPlan) -> Launch:
        """A new launch of `plan` (its state lives there)."""
        return Launch(self, plan)

    def classify_exit(self, returncode: int, launch: Launch) -> ExitInfo:
        """Why the command ended, from its Popen returncode (-N: signal N) and what `launch` saw.
        Default: a process's end (`signal`, else `exit` with its status)."""
        attributes: dict[str, Any] = {"process.exit.code": returncode}
        if returncode < 0:
            return ExitInfo.by_signal(-returncode, returncode, attributes)
        return ExitInfo.of(returncode, "exit", attributes)

    def inspect(self, pid: int, argv: Sequence[str], proc: str = "/proc") -> VmmInfo | None:
        """A running process whose command line this runtime `recognises`: what it is and where
        it is read (QMP, console). Default: None, its processes are not discovered from /proc
        (containers are found from their runtimes' state: uniobs.containers)."""
        return None
