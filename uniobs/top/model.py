"""What `uniobs top` shows: the latest points of each workload's series, and the rows made of them.

A `Store` keeps, per workload resource and series, the last two *distinct* exported points (a
series not sampled again since the last export is exported again unchanged with its old time:
that is not a new point). Rates (CPU %, console lines/s, invocations/s) are the difference of the
two cumulative values over the difference of their times; a figure with no second point, or a
counter that went back (a reset), is unknown (`None`), never 0.

Both sources fill a Store: the in-process sink fed by the agent's own pipeline (`uniobs.top.local`)
and a running uniobs' Prometheus endpoint (`uniobs.top.remote`). Resource and point attributes are
looked up under their OpenTelemetry key, then under the Prometheus label name it maps to
(`service.name` -> `service_name`), so one row builder serves both.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

_LABEL = re.compile(r"[^a-zA-Z0-9_]+")

# CPU and memory: a cgroup's figures cover every process of a container (or a VMM placed in a
# cgroup), so they come first; a lone process' figures otherwise (collectors/cgroup.py, process.py).
CPU_METRICS = ("container.cpu.time", "process.cpu.time")
MEMORY_METRICS = ("container.memory.working_set", "container.memory.usage", "process.memory.usage")
SOURCE_METRICS = frozenset(
    {
        *CPU_METRICS,
        *MEMORY_METRICS,
        "process.uptime",
        "uniobs.vm.status",
        "uniobs.console.lines",
        "faas.invocations",
        "faas.errors",
        "faas.invoke_duration",
        "faas.init_duration",
    }
)


def label_of(key: str) -> str:
    """An attribute key as the Prometheus label it becomes (exporters/prometheus.py `label_name`)."""
    return _LABEL.sub("_", key)


def lookup(attributes: Mapping[str, Any], key: str) -> Any:
    """An attribute under its OpenTelemetry key, else under its Prometheus label name; None if absent."""
    if key in attributes:
        return attributes[key]
    return attributes.get(label_of(key))


@dataclass(frozen=True, slots=True)
class Point:
    """One exported data point: a number (sum, gauge), or a histogram's count, sum and per-bucket
    counts (not cumulative; `len(bounds) + 1` of them, the last one above the last bound)."""

    time_ns: int
    value: float
    count: int | None = None
    bounds: tuple[float, ...] = ()
    buckets: tuple[int, ...] = ()


@dataclass
class Instance:
    """One workload's resource attributes and, per (metric, point attributes), its last two points."""

    resource: dict[str, Any]
    series: dict[tuple[str, tuple[tuple[str, Any], ...]], tuple[Point | None, Point]] = field(default_factory=dict)
    updated: float = 0.0  # time.monotonic() of the last point received


class Store:
    """The latest points per workload, written by an exporter thread, read by the display."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.lock = threading.Lock()
        self.instances: dict[str, Instance] = {}
        self.updates = 0  # batches received (the display waits for the first ones)
        self._clock = clock

    def put(
        self,
        instance: str,
        resource: Mapping[str, Any],
        points: Iterable[tuple[str, tuple[tuple[str, Any], ...], Point]],
    ) -> None:
        """Record one resource's points (metric name, point attributes, point)."""
        with self.lock:
            entry = self.instances.get(instance)
            if entry is None:
                entry = self.instances[instance] = Instance(dict(resource))
            else:
                entry.resource = dict(resource)
            for metric, attributes, point in points:
                key = (metric, attributes)
                held = entry.series.get(key)
                if held is None:
                    entry.series[key] = (None, point)
                elif point.time_ns > held[1].time_ns:
                    entry.series[key] = (held[1], point)
            entry.updated = self._clock()

    def retain(self, instances: Iterable[str]) -> None:
        """Forget every workload not in `instances` (those discovery no longer finds)."""
        keep = set(instances)
        with self.lock:
            for instance in [i for i in self.instances if i not in keep]:
                del self.instances[instance]

    def mark(self) -> None:
        with self.lock:
            self.updates += 1

    def snapshot(self) -> dict[str, Instance]:
        with self.lock:
            return {k: Instance(dict(v.resource), dict(v.series), v.updated) for k, v in self.instances.items()}


@dataclass
class Row:
    """One line of `uniobs top`; `None` is unknown (not measured here), never 0.

    Units: seconds (`uptime_s`, `coldstart_s`, `p99_s`), percent of one CPU (`cpu_percent`, as
    `docker stats` and `top`), bytes (`memory_bytes`), per second (`console_lines_per_s`,
    `invocations_per_s`), a fraction 0..1 (`error_rate`)."""

    name: str
    kind: str | None
    runtime: str | None
    instance: str
    pid: int | None = None
    state: str | None = None
    uptime_s: float | None = None
    cpu_percent: float | None = None
    cpu_source: str | None = None
    memory_bytes: int | None = None
    memory_source: str | None = None
    coldstart_s: float | None = None
    console_lines_per_s: float | None = None
    invocations_per_s: float | None = None
    error_rate: float | None = None
    p99_s: float | None = None


def _rate(series: Sequence[tuple[Point | None, Point]]) -> float | None:
    """The summed per-second rate of cumulative series; None without two points for any of them
    or after a reset."""
    total, known = 0.0, False
    for previous, latest in series:
        if previous is None:
            continue
        dt = (latest.time_ns - previous.time_ns) / 1e9
        dv = latest.value - previous.value
        if dt <= 0 or dv < 0:
            return None
        total += dv / dt
        known = True
    return total if known else None


def _delta(series: Sequence[tuple[Point | None, Point]]) -> float | None:
    total, known = 0.0, False
    for previous, latest in series:
        if previous is None:
            continue
        dv = latest.value - previous.value
        if dv < 0:
            return None
        total += dv
        known = True
    return total if known else None


def quantile(q: float, bounds: Sequence[float], buckets: Sequence[int]) -> float | None:
    """The q-quantile of bucketed observations, interpolated linearly inside its bucket, as
    Prometheus' `histogram_quantile` does (a quantile in the last, open bucket is its lower bound).
    None without observations."""
    total = sum(buckets)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(buckets):
        if n and seen + n >= rank:
            if i >= len(bounds):
                return bounds[-1] if bounds else None
            lower = bounds[i - 1] if i > 0 else 0.0
            upper = bounds[i]
            return lower + (upper - lower) * ((rank - seen) / n)
        seen += n
    return bounds[-1] if bounds else None


def _window_histogram(series: Sequence[tuple[Point | None, Point]]) -> tuple[tuple[float, ...], list[int]] | None:
    """The bucket counts observed between the last two points, summed over series of one layout."""
    bounds: tuple[float, ...] | None = None
    counts: list[int] = []
    for previous, latest in series:
        if previous is None or previous.bounds != latest.bounds:
            continue
        if bounds is None:
            bounds, counts = latest.bounds, [0] * len(latest.buckets)
        elif bounds != latest.bounds:
            continue
        for i, (a, b) in enumerate(zip(previous.buckets, latest.buckets, strict=True)):
            if b < a:
                return None
            counts[i] += b - a
    return None if bounds is None else (bounds, counts)


def _coldstart(series: Sequence[tuple[Point | None, Point]]) -> float | None:
    """The last launch's cold start (`faas.init_duration`, s): the one observation when there is
    one, else the one added between the last two points; None when that cannot be told."""
    if len(series) != 1:
        return None
    previous, latest = series[0]
    if latest.count == 1:
        return latest.value
    if (
        previous is not None
        and latest.count is not None
        and previous.count is not None
        and latest.count - previous.count == 1
    ):
        return latest.value - previous.value
    return None


def build_row(instance: str, entry: Instance) -> Row:
    """The row of one workload from its series (see `Row` for units)."""
    res = entry.resource
    by_metric: dict[str, list[tuple[tuple[tuple[str, Any], ...], tuple[Point | None, Point]]]] = {}
    for (metric, attributes), pair in entry.series.items():
        by_metric.setdefault(metric, []).append((attributes, pair))

    def pairs(metric: str) -> list[tuple[Point | None, Point]]:
        return [pair for _, pair in by_metric.get(metric, [])]

    pid = lookup(res, "process.pid")
    row = Row(
        name=str(lookup(res, "service.name") or lookup(res, "job") or instance),
        kind=_str(lookup(res, "uniobs.workload.kind")),
        runtime=_str(lookup(res, "uniobs.workload.runtime")),
        instance=instance,
        pid=int(pid) if pid not in (None, "") else None,
    )
    for metric in CPU_METRICS:
        if metric in by_metric:
            rate = _rate(pairs(metric))
            row.cpu_source = metric
            row.cpu_percent = None if rate is None else rate * 100.0
            break
    for metric in MEMORY_METRICS:
        if metric in by_metric:
            row.memory_bytes = int(sum(latest.value for _, latest in pairs(metric)))
            row.memory_source = metric
            break
    uptime = pairs("process.uptime")
    if uptime:
        row.uptime_s = uptime[0][1].value
    for attributes, (_, latest) in by_metric.get("uniobs.vm.status", []):
        if latest.value == 1:
            row.state = _str(lookup(dict(attributes), "uniobs.vm.status"))
    if row.state is None and uptime:
        row.state = "up"  # its process answered the last scrape; no finer state is known
    if "uniobs.console.lines" in by_metric:
        row.console_lines_per_s = _rate(pairs("uniobs.console.lines"))
    if "faas.invocations" in by_metric:
        row.invocations_per_s = _rate(pairs("faas.invocations"))
        invoked = _delta(pairs("faas.invocations"))
        errors = _delta(pairs("faas.errors")) if "faas.errors" in by_metric else 0.0
        if invoked and errors is not None:
            row.error_rate = errors / invoked
        window = _window_histogram(pairs("faas.invoke_duration"))
        if window is not None:
            row.p99_s = quantile(0.99, *window)
    if "faas.init_duration" in by_metric:
        row.coldstart_s = _coldstart(pairs("faas.init_duration"))
    return row


def _str(value: Any) -> str | None:
    return None if value in (None, "") else str(value)


def build_rows(instances: Mapping[str, Instance], skip_runtimes: Iterable[str] = ("uniobs",)) -> list[Row]:
    """Every workload's row; uniobs' own resource (runtime "uniobs") is not a workload."""
    skip = set(skip_runtimes)
    rows = [build_row(instance, entry) for instance, entry in instances.items()]
    return [row for row in rows if row.runtime not in skip]


# -- sorting, filtering, rendering

# column: (heading, sort key on a Row, whether the default order is descending)
COLUMNS: dict[str, tuple[str, Callable[[Row], Any], bool]] = {
    "name": ("NAME", lambda r: r.name.lower(), False),
    "kind": ("KIND", lambda r: r.kind or "", False),
    "runtime": ("RUNTIME", lambda r: r.runtime or "", False),
    "state": ("STATE", lambda r: r.state or "", False),
    "uptime": ("UPTIME", lambda r: r.uptime_s, True),
    "cpu": ("CPU%", lambda r: r.cpu_percent, True),
    "memory": ("MEM", lambda r: r.memory_bytes, True),
    "coldstart": ("COLD START", lambda r: r.coldstart_s, True),
    "console": ("LINES/S", lambda r: r.console_lines_per_s, True),
    "invocations": ("INV/S", lambda r: r.invocations_per_s, True),
    "errors": ("ERR%", lambda r: r.error_rate, True),
    "p99": ("P99", lambda r: r.p99_s, True),
}
DASH = "—"


def sort_rows(rows: Sequence[Row], column: str, reverse: bool | None = None) -> list[Row]:
    """Rows by a column of `COLUMNS` (numbers high first by default, text A-Z); unknowns always last,
    ties by name."""
    _, key, descending = COLUMNS[column]
    flip = descending if reverse is None else reverse
    known = [r for r in rows if key(r) is not None and key(r) != ""]
    unknown = [r for r in rows if key(r) is None or key(r) == ""]
    known.sort(key=lambda r: r.name.lower())
    known.sort(key=key, reverse=flip)
    unknown.sort(key=lambda r: r.name.lower())
    return known + unknown


def filter_rows(rows: Sequence[Row], text: str) -> list[Row]:
    """Rows whose name, kind, runtime, state or instance contains `text` (case-insensitive)."""
    needle = text.strip().lower()
    if not needle:
        return list(rows)
    return [
        r for r in rows if any(needle in (v or "").lower() for v in (r.name, r.kind, r.runtime, r.state, r.instance))
    ]


def human_bytes(n: int | None) -> str:
    if n is None:
        return DASH
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def human_duration(s: float | None) -> str:
    if s is None:
        return DASH
    if s < 1:
        return f"{s * 1000:.0f} ms" if s >= 0.001 else f"{s * 1e6:.0f} µs"
    if s < 60:
        return f"{s:.1f} s"
    minutes, sec = divmod(int(s), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours < 48 else f"{hours // 24}d{hours % 24:02d}h"


def _num(v: float | None, fmt: str) -> str:
    return DASH if v is None or math.isnan(v) else format(v, fmt)


def cells(row: Row) -> list[str]:
    """The row's cells, in `COLUMNS` order, as the table shows them."""
    return [
        row.name,
        row.kind or DASH,
        row.runtime or DASH,
        row.state or DASH,
        human_duration(row.uptime_s),
        _num(row.cpu_percent, ".1f"),
        human_bytes(row.memory_bytes),
        human_duration(row.coldstart_s),
        _num(row.console_lines_per_s, ".1f"),
        _num(row.invocations_per_s, ".1f"),
        DASH if row.error_rate is None else f"{row.error_rate * 100:.1f}",
        human_duration(row.p99_s),
    ]


def headings() -> list[str]:
    return [heading for heading, _, _ in COLUMNS.values()]


def plain_table(rows: Sequence[Row]) -> str:
    """Rows as an aligned text table with a heading line (no terminal needed); numbers right-aligned."""
    body = [cells(r) for r in rows]
    head = headings()
    widths = [max(len(c) for c in col) for col in zip(head, *body, strict=True)]
    right = {i for i, (_, (_, _, descending)) in enumerate(COLUMNS.items()) if descending}
    lines = []
    for line in [head, *body]:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def to_json(rows: Sequence[Row], **meta: Any) -> str:
    """`{"workloads": [row, ...], **meta}`; unknown figures are null."""
    return json.dumps({**meta, "workloads": [asdict(r) for r in rows]}, indent=2)
