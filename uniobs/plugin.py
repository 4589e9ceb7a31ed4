"""The plugin contracts: collectors, streaming collectors, console parsers and exporters.

A plugin is one small class registered under an entry-point group (see `uniobs.registry`).
It declares what it emits in one place (`metrics`), validates its configuration at start
(`config_class`, a dataclass), and returns data: the framework owns the loop, the timing and
the export.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

from uniobs.model import Attributes, LogEvent, MetricSpec, Sample, Severity, SpanEvent, Workload

if TYPE_CHECKING:
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
    interval: float = 10.0  # seconds between scrapes of each workload
    timeout: float = 5.0  # seconds one collect() may take before it is abandoned

    def validate(self) -> None:
        if self.interval <= 0:
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

    time_ns: int  # host monotonic arrival time of the line
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
