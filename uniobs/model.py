"""The values that flow through uniobs: workloads, metric declarations, samples and events.

Everything here is plain data with no I/O and no OpenTelemetry import: collectors and parsers
produce these values, and `uniobs.telemetry` alone turns them into OpenTelemetry data.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

AttributeValue = str | bool | int | float
Attributes = tuple[tuple[str, AttributeValue], ...]

_EMPTY: Mapping[str, str] = MappingProxyType({})

# Labels a runtime identifier derives itself (uniobs.containers) and that become resource
# attributes of a container. A container's other labels never do: they are tenant-controlled.
# `container.image.tags` is a string array in the conventions; the label holds the tags
# comma-separated (a tag cannot contain a comma).
LABEL_RESOURCE_ATTRIBUTES = (
    "container.image.name",
    "container.image.tags",
    "k8s.pod.uid",
    "k8s.pod.name",
    "k8s.namespace.name",
    "k8s.container.name",
)


class Kind(enum.StrEnum):
    """What shrink-wrap a workload is, or what else on the host it is."""

    UNIKERNEL = "unikernel"
    CONTAINER = "container"
    CGROUP = "cgroup"  # a cgroup no runtime claims (a systemd service, a VMM placed by hand)
    PROCESS = "process"  # a plain process, e.g. uniobs itself


@dataclass(frozen=True, eq=False)
class Workload:
    """One thing being observed: a function instance, or a host cgroup or process.

    `key` identifies it; two Workload values with the same key are the same workload seen at
    different times (for instance before and after its QMP socket became known).
    """

    kind: Kind
    runtime: str  # "qemu", "solo5-hvt", "runc", "crun", "podman", "docker", "containerd", "cgroup", ...
    id: str  # container id, or a VMM-derived id such as "qemu-4242"
    name: str = ""  # the function's name; falls back to id
    pid: int | None = None  # the VMM process, or the container's init process
    cgroup: str | None = None  # path inside the hierarchy, e.g. "/system.slice/docker-ab12.scope"
    qmp: str | None = None  # QMP unix socket path
    console: str | None = None  # console source: a file, a socket, or "pipe"
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    executable: str | None = None  # the VMM or init executable's name
    # The path per hierarchy where it is not `cgroup`: v1 controller name ("memory", "cpuacct"...;
    # "" for the unified hierarchy) -> path in that hierarchy. A relative cgroupsPath lands under
    # the launcher's cgroup in *each* hierarchy, and on hybrid hosts a launcher often sits at
    # different places in different ones (a nested memory cgroup, a systemd scope in unified).
    cgroups: Mapping[str, str] = field(default_factory=lambda: _EMPTY)

    @functools.cached_property
    def key(self) -> tuple[str, str, str]:  # computed once: looked up several times per workload and scrape
        return (self.kind.value, self.runtime, self.id)

    def cgroup_of(self, controller: str) -> str | None:
        """The workload's path in one hierarchy (a v1 controller name, "" for the unified one)."""
        return self.cgroups.get(controller, self.cgroup)

    @property
    def cgroup_paths(self) -> tuple[str, ...]:
        """Every distinct path of the workload's cgroup, `cgroup` first; () without one."""
        paths = [self.cgroup] if self.cgroup is not None else []
        return tuple(dict.fromkeys([*paths, *self.cgroups.values()]))

    @property
    def display_name(self) -> str:
        return self.name or self.id

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Workload) and self.key == other.key

    @property
    def is_function(self) -> bool:
        return self.kind in (Kind.UNIKERNEL, Kind.CONTAINER)

    def resource_attributes(self) -> dict[str, AttributeValue | tuple[str, ...]]:
        """Resource attributes after the OpenTelemetry semantic conventions.

        Host attributes are added by the telemetry bridge, which owns the host's identity.
        """
        attrs: dict[str, AttributeValue | tuple[str, ...]] = {
            "service.name": self.display_name,
            "uniobs.workload.kind": self.kind.value,
            "uniobs.workload.runtime": self.runtime,
        }
        if self.is_function:
            attrs["faas.name"] = self.display_name
            attrs["faas.instance"] = self.id
            attrs["service.instance.id"] = self.id
        if self.kind is Kind.CONTAINER:
            attrs["container.id"] = self.id
            attrs["container.name"] = self.display_name
            attrs["container.runtime.name"] = self.runtime
            for key in LABEL_RESOURCE_ATTRIBUTES:
                value = self.labels.get(key)
                if value:
                    attrs[key] = tuple(value.split(",")) if key == "container.image.tags" else value
        if self.cgroup is not None:
            attrs["uniobs.cgroup.path"] = self.cgroup
        if self.pid is not None:
            attrs["process.pid"] = self.pid
            if self.executable:
                attrs["process.executable.name"] = self.executable
        return attrs


class Instrument(enum.StrEnum):
    """How a metric's values behave; the telemetry bridge maps these to OTLP data types.

    COUNTER and UPDOWN_COUNTER samples carry the *cumulative* value as the source reports it
    (e.g. cpuacct.usage); the bridge keeps start times and detects resets. HISTOGRAM samples
    are single observations the bridge aggregates.
    """

    COUNTER = "counter"
    UPDOWN_COUNTER = "updowncounter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


_METRIC_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$")
_ATTR_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$")
# UCUM as the semantic conventions use it: "s", "By", "1", "{exit}", "By/s", "%"...
_UNIT = re.compile(r"^(1|%|[A-Za-z]+(/[A-Za-z]+)?|\{[a-z_. ]+\}|[A-Za-z]+\{[a-z_]+\})$")

# Semantic-convention buckets for durations in seconds (http.server.request.duration,
# faas.init_duration share them).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


@dataclass(frozen=True)
class MetricSpec:
    """The declaration of one metric: the only place its name, unit and attributes are written."""

    name: str
    instrument: Instrument
    unit: str
    description: str
    attributes: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()  # histograms only

    def __post_init__(self) -> None:
        if not _METRIC_NAME.match(self.name):
            raise ValueError(f"metric name {self.name!r} is not a dotted lower-case name")
        if not _UNIT.match(self.unit):
            raise ValueError(f"metric {self.name}: unit {self.unit!r} is not a UCUM unit")
        if not self.description:
            raise ValueError(f"metric {self.name}: a description is required")
        for attr in self.attributes:
            if not _ATTR_NAME.match(attr):
                raise ValueError(f"metric {self.name}: attribute {attr!r} is not a dotted lower-case name")
        if len(set(self.attributes)) != len(self.attributes):
            raise ValueError(f"metric {self.name}: attributes repeat")
        if self.instrument is Instrument.HISTOGRAM:
            if not self.buckets or list(self.buckets) != sorted(set(self.buckets)):
                raise ValueError(f"histogram {self.name}: buckets must be strictly increasing")
        elif self.buckets:
            raise ValueError(f"metric {self.name}: only histograms have buckets")


@dataclass(frozen=True, slots=True)
class Sample:
    """One value of one declared metric, for one workload, with its attributes."""

    metric: str
    value: float | int
    attributes: Attributes = ()


def attrs(**kwargs: AttributeValue) -> Attributes:
    """Attributes from keyword arguments; `cpu_mode="user"` becomes `("cpu.mode", "user")`."""
    return tuple((k.replace("__", "\0").replace("_", ".").replace("\0", "_"), v) for k, v in kwargs.items())


class Severity(enum.IntEnum):
    """OpenTelemetry log severity numbers (the first of each range)."""

    TRACE = 1
    DEBUG = 5
    INFO = 9
    WARN = 13
    ERROR = 17
    FATAL = 21


@dataclass(frozen=True, slots=True)
class LogEvent:
    """A log record: a console line, a lifecycle event, a guest-emitted record.

    `time_ns` is on the monotonic clock (`time.monotonic_ns()`), captured when the bytes
    arrived; the bridge converts it to wall-clock time once, with one offset per process.
    """

    time_ns: int
    body: str
    severity: Severity = Severity.INFO
    attributes: Attributes = ()
    event_name: str = ""
    trace_id: int = 0
    span_id: int = 0


@dataclass(frozen=True, slots=True)
class SpanEvent:
    """A finished span, with monotonic start and end times (see LogEvent)."""

    name: str
    trace_id: int
    span_id: int
    parent_span_id: int  # 0 for a root span
    start_ns: int
    end_ns: int
    attributes: Attributes = ()
    error: str | None = None  # None: ok; a message: the span failed with that reason
    events: tuple[tuple[str, int, Attributes], ...] = ()  # (name, monotonic ns, attributes)
    kind: str = "internal"  # the OTel span kind: internal, server, client, producer, consumer
