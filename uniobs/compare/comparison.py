"""`uniobs compare FUNCTION.toml`: the same function on each side (shrink-wrap) the definition
lists, measured on this host; a side this host cannot build (its build exits 77) is skipped, and
the document says why.

For each of N rounds, each side is launched once (interleaved, so drift on a noisy host hits
every side alike) through the same machinery as `uniobs run` (cold-start trace, collectors,
exporters). After it is ready: memory and CPU are sampled at idle, then under the definition's
load, then it is stopped. Image size and the static attack surface are measured once from the
image files, the runtime attack surface once from the running instance. The result is one
document (`uniobs.compare.results`), rendered by `uniobs.compare.report`.

Each launch is triggered by a request, as `uniobs serve` does (scale from zero): a `FunctionHost`
(uniobs/invoke/serve.py) behind the invocation proxy launches the instance when compare's first
request arrives and holds the request until it is ready. Then, on that instance: the idle window,
WARM_REQUESTS sequential requests, the load, a pause (QMP `stop` / `runc pause`) and one request
that resumes it. The `invocations` figures are computed from the invocation spans and REPORT
records the proxy exported (and `faas.invocations`), per instance and window, never from compare's
own timings.

The memory and CPU figures are the exported telemetry: `Measure` has the pipeline's own `process`
and `cgroup` collectors sample the instance and hands each sample to every exporter at once, and
the figures are computed afterwards from the data points compare's own in-process exporter
(`Coverage`) received. The report and what any backend received cannot disagree; each side's
`windows` say which instance and instants each figure covers.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import logging
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from uniobs import __version__
from uniobs.coldstart.probes import http_get, parse_probe
from uniobs.coldstart.trace import new_trace_id
from uniobs.compare import function as fn
from uniobs.compare.results import SCHEMA, MemoryFigures, Window, percentile
from uniobs.config import Settings
from uniobs.invoke.admission import Unavailable
from uniobs.invoke.proxy import InvocationProxy
from uniobs.invoke.record import REPORT_EVENT, InvocationRecorder
from uniobs.invoke.serve import FunctionHost, FunctionSide, State
from uniobs.lifecycle.run import Runner
from uniobs.pipeline import Pipeline
from uniobs.plugin import Collector, ExporterSinks
from uniobs.runtimes.accel import probe

log = logging.getLogger("uniobs.compare")

READY_TIMEOUT_S = 180.0
IDLE_S = 2.0
SAMPLE_S = 0.2
LOAD_REQUEST_TIMEOUT_S = 30.0
WARM_REQUESTS = 20  # sequential requests after the idle window: the warm invocations
HOLD_S = 24 * 3600.0  # the host's idle timeout: compare stops (or pauses) each instance itself


# --- what the telemetry covered ---------------------------------------------------------------

# The series the report's memory and CPU figures are read from (`figures`), as exported.
RSS, PSS = "process.memory.usage", "uniobs.process.memory.pss"  # the VMM, or the container's init
PROCESS_CPU = "process.cpu.time"
CGROUP_MEMORY, CGROUP_CPU = "container.memory.usage", "container.cpu.time"
INVOCATIONS = "faas.invocations"  # the proxy's count, per instance: checked against the spans
FIGURE_METRICS = frozenset({RSS, PSS, PROCESS_CPU, CGROUP_MEMORY, CGROUP_CPU, INVOCATIONS})
# The log records the invocation figures read: each invocation's REPORT, the host's resume
RESUME_EVENT = "uniobs.serve.resume"
FIGURE_EVENTS = frozenset({REPORT_EVENT, RESUME_EVENT})


@dataclass(frozen=True)
class InvocationSpan:
    """One exported invocation span (SERVER, `faas.invocation_id`): epoch ns, as exported."""

    start_ns: int
    end_ns: int
    coldstart: bool
    error: str | None  # its error.type
    status: int | None  # http.response.status_code

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


@dataclass(frozen=True)
class Record:
    """One exported log record the figures read (a REPORT, `uniobs.serve.resume`)."""

    time_ns: int
    event: str
    attributes: dict[str, Any]


_PointKey = tuple[tuple[tuple[str, Any], ...], int]  # (attributes, time_unix_nano)


class Coverage:
    """An in-process exporter that notes, per function instance, which signals left uniobs, and
    keeps every exported data point of the series the report's figures are made of."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.metrics: dict[str, set[str]] = {}
        self.logs: dict[str, int] = {}
        self.spans: dict[str, list[str]] = {}
        self.invocations: dict[str, list[InvocationSpan]] = {}  # invocation spans the proxy recorded
        self.records: dict[str, list[Record]] = {}  # REPORT and serve records, per instance
        # per (instance, metric): each distinct point exported (a series not sampled again since
        # the last export is exported again unchanged, with its old time: one point)
        self.points: dict[tuple[str, str], dict[_PointKey, float | int]] = {}

    def sinks(self) -> ExporterSinks:
        cov = self

        class _M(MetricExporter):
            def export(
                self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kw: Any
            ) -> MetricExportResult:
                with cov.lock:
                    for rm in metrics_data.resource_metrics:
                        key = str(rm.resource.attributes.get("faas.instance", ""))
                        names = cov.metrics.setdefault(key, set())
                        for sm in rm.scope_metrics:
                            names.update(m.name for m in sm.metrics)
                            for m in sm.metrics:
                                if m.name in FIGURE_METRICS:
                                    points = cov.points.setdefault((key, m.name), {})
                                    for p in m.data.data_points:
                                        attrs = tuple(sorted((p.attributes or {}).items()))
                                        points[(attrs, p.time_unix_nano)] = p.value  # type: ignore[union-attr]
                return MetricExportResult.SUCCESS

            def force_flush(self, timeout_millis: float = 10_000) -> bool:
                return True

            def shutdown(self, timeout_millis: float = 30_000, **kw: Any) -> None:
                return None

        class _L(LogRecordExporter):
            def export(self, batch: Any) -> LogRecordExportResult:
                with cov.lock:
                    for record in batch:
                        key = str(record.resource.attributes.get("faas.instance", ""))
                        cov.logs[key] = cov.logs.get(key, 0) + 1
                        lr = getattr(record, "log_record", None)
                        event = getattr(lr, "event_name", None)
                        if event in FIGURE_EVENTS:
                            cov.records.setdefault(key, []).append(
                                Record(int(lr.timestamp or 0), str(event), dict(lr.attributes or {}))  # type: ignore[union-attr]
                            )
                return LogRecordExportResult.SUCCESS

            def force_flush(self, timeout_millis: int = 30_000) -> bool:
                return True

            def shutdown(self) -> None:
                return None

        class _S(SpanExporter):
            def export(self, spans: Any) -> SpanExportResult:
                with cov.lock:
                    for span in spans:
                        key = str(span.resource.attributes.get("faas.instance", ""))
                        attrs = span.attributes or {}
                        if "faas.invocation_id" in attrs:  # the proxy's, not the guest's own
                            status = attrs.get("http.response.status_code")
                            cov.invocations.setdefault(key, []).append(InvocationSpan(
                                int(span.start_time), int(span.end_time), bool(attrs.get("faas.coldstart")),
                                str(attrs["error.type"]) if "error.type" in attrs else None,
                                int(status) if isinstance(status, int) else None,
                            ))  # fmt: skip
                            continue
                        cov.spans.setdefault(key, []).append(span.name)
                return SpanExportResult.SUCCESS

            def shutdown(self) -> None:
                return None

        return ExporterSinks(metrics=_M(), logs=_L(), spans=_S())

    def of(self, instance: str) -> dict[str, Any]:
        with self.lock:
            metrics = sorted(self.metrics.get(instance, set()))
            spans = self.spans.get(instance, [])
            return {
                "metrics": metrics,
                "logs": self.logs.get(instance, 0),
                "trace_phases": sorted({s.removeprefix("coldstart.") for s in spans if s.startswith("coldstart.")}),
                "guest_spans": sum(1 for s in spans if not s.startswith("coldstart")),
                "guest_metrics": sum(1 for m in metrics if m.startswith("uniobs.guest.") and m not in
                                     ("uniobs.guest.records", "uniobs.guest.rejected")),
            }  # fmt: skip

    def invocation_spans(self, instance: str, start_ns: int, end_ns: int) -> list[InvocationSpan]:
        """The instance's exported invocation spans that started in [start_ns, end_ns] (epoch), by start."""
        with self.lock:
            spans = list(self.invocations.get(instance, []))
        return sorted((s for s in spans if start_ns <= s.start_ns <= end_ns), key=lambda s: s.start_ns)

    def records_of(self, instance: str, event: str, start_ns: int = 0, end_ns: int = 1 << 63) -> list[Record]:
        """The instance's exported records of `event` in [start_ns, end_ns] (epoch), oldest first."""
        with self.lock:
            records = list(self.records.get(instance, []))
        return sorted((r for r in records if r.event == event and start_ns <= r.time_ns <= end_ns),
                      key=lambda r: r.time_ns)  # fmt: skip

    def instants(self, instance: str, metric: str, start_ns: int, end_ns: int) -> list[tuple[int, float | int]]:
        """The metric's exported value at each distinct instant in [start_ns, end_ns] (epoch), oldest
        first; the points of one instant (`cpu.mode` user and system, sampled together) summed."""
        with self.lock:
            points = list(self.points.get((instance, metric), {}).items())
        by_time: dict[int, list[float | int]] = {}
        for (_, t), value in points:
            if start_ns <= t <= end_ns:
                by_time.setdefault(t, []).append(value)
        return [(t, v[0] if len(v) == 1 else math.fsum(v)) for t, v in sorted(by_time.items())]


# --- measuring one launch ------------------------------------------------------------------------


@dataclass
class _Window:
    """One measurement window of one launch: its bounds on the clock of exported data points."""

    phase: str  # "idle" or "load"
    start_ns: int = 0
    end_ns: int = 0
    runtime_rss: list[int] = field(default_factory=list)  # measured here: no collector has it


@dataclass
class _Calls:
    """Requests compare sent to one launch in one phase, and when (epoch ns, on the bridge's clock:
    the clock of the exported spans and records)."""

    phase: str  # "cold", "warm", "load" or "resume"
    start_ns: int
    end_ns: int
    sent: int


@dataclass
class _Launch:
    run: int
    instance: str  # the workload's id: the `faas.instance` of its exported telemetry
    exec_ns: int  # epoch ns of its exec, for the timeline
    container: bool
    windows: list[_Window] = field(default_factory=list)
    calls: list[_Calls] = field(default_factory=list)  # empty: its invocations were not observed
    pause_unknown: str | None = None  # why it could not be paused (None: it was, or it was not tried)


def _rss(pid: int) -> int | None:
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except (psutil.Error, OSError):
        return None


class Measure:
    """Samples one running instance every SAMPLE_S, through the pipeline's own collectors.

    Each sample is taken by the pipeline's `process` collector (the VMM, or the container's init)
    and `cgroup` collector (the container's cgroup), recorded as the workload's telemetry and
    handed to every exporter at once, so that every sample the figures use is exported: the
    figures are computed from what compare's own exporter received (`figures`), never from a
    reading of its own. The runner's scrapes of the same workload go on meanwhile; whichever
    sample of a series is the latest at an export is the one exported, and counted.
    """

    def __init__(self, runner: Runner, pipeline: Pipeline) -> None:
        workload = runner.workload
        assert workload is not None
        self.workload = workload
        self.pipeline = pipeline
        self.container = runner.coldstart.shrinkwrap == "container"
        self.collectors: list[Collector] = [
            c for c in pipeline.collectors if c.name in ("process", "cgroup") and c.applies_to(workload)
        ]
        # The one figure no collector has: the RSS of the runtime's own command (`runc run` in the
        # foreground, a CLI that stays for the container's life). The pipeline's workload is the
        # container, whose init the process collector reads; the CLI is not a workload.
        proc = runner.proc
        self.runtime_pid = proc.pid if self.container and proc is not None else None

    def sample(self, window: _Window) -> None:
        for collector in self.collectors:
            try:
                samples = list(collector.collect(self.workload))
            except Exception:  # gone, unavailable or failing: the runner's own scrape of the
                continue  # same collector reports and counts it; this sample is just missing
            self.pipeline.telemetry.record(self.workload, samples)
        self.pipeline.flush(0)  # to every exporter now, without waiting for delivery
        if self.runtime_pid is not None and (rss := _rss(self.runtime_pid)) is not None:
            window.runtime_rss.append(rss)


def _window(
    measure: Measure, phase: str, seconds: float, during: Callable[[], Any] | None = None
) -> tuple[_Window, Any]:
    """Sample every SAMPLE_S for `seconds` (or while `during` runs), from a sample at its start to one
    at its end: at least two, so a window (a load) shorter than SAMPLE_S still has a CPU figure."""
    window = _Window(phase, start_ns=time.time_ns())
    t0 = time.monotonic()
    measure.sample(window)
    result = None
    if during is not None:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            future = pool.submit(during)
            while not concurrent.futures.wait([future], timeout=SAMPLE_S).done:
                measure.sample(window)
            result = future.result()
        measure.sample(window)
    else:
        while True:
            time.sleep(SAMPLE_S)
            measure.sample(window)
            if time.monotonic() - t0 >= seconds:
                break
    window.end_ns = time.time_ns()
    return window, result


def _median(values: Sequence[float | int]) -> int | None:
    return int(statistics.median(values)) if values else None


def _median_sample(samples: Sequence[MemoryFigures]) -> MemoryFigures:
    def median(values: Iterable[int | None]) -> int | None:
        return _median([v for v in values if v is not None])

    return {
        "rss_bytes": median(s["rss_bytes"] for s in samples),
        "pss_bytes": median(s["pss_bytes"] for s in samples),
        "cgroup_bytes": median(s["cgroup_bytes"] for s in samples),
        "runtime_rss_bytes": median(s["runtime_rss_bytes"] for s in samples),
    }


def cpu_percent(instants: Sequence[tuple[int, float | int]]) -> float | None:
    """CPU time between the first and the last instant over the time between them, in % of a core."""
    if len(instants) < 2 or instants[-1][0] <= instants[0][0]:
        return None
    (t0, c0), (t1, c1) = instants[0], instants[-1]
    return (c1 - c0) / ((t1 - t0) / 1e9) * 100


def figures(coverage: Coverage, launch: _Launch, window: _Window) -> tuple[MemoryFigures, float | None]:
    """A window's memory (medians over its instants) and CPU %, from the exported data points."""

    def median(metric: str) -> int | None:
        return _median([v for _, v in coverage.instants(launch.instance, metric, window.start_ns, window.end_ns)])

    memory: MemoryFigures = {
        "rss_bytes": median(RSS), "pss_bytes": median(PSS), "cgroup_bytes": median(CGROUP_MEMORY),
        "runtime_rss_bytes": _median(window.runtime_rss),
    }  # fmt: skip
    cpu = coverage.instants(launch.instance, CGROUP_CPU if launch.container else PROCESS_CPU, window.start_ns,
                            window.end_ns)  # fmt: skip
    return memory, cpu_percent(cpu)


def timeline(coverage: Coverage, launch: _Launch) -> list[list[float]]:
    """[seconds since exec, bytes] at every exported instant of the launch's windows: the container's
    cgroup memory, or the VMM's RSS."""
    if not launch.windows:
        return []
    metric = CGROUP_MEMORY if launch.container else RSS
    start, end = launch.windows[0].start_ns, launch.windows[-1].end_ns
    return [
        [round((t - launch.exec_ns) / 1e9, 3), v] for t, v in coverage.instants(launch.instance, metric, start, end)
    ]


def _send_load(load: fn.Load, url: str) -> dict[str, Any]:
    target = parse_probe(url)
    errors = 0
    started = time.monotonic()

    def one(_: int) -> bool:
        # a request of the load is not a probe: a slow answer (an emulated guest under load)
        # is still an answer, so it gets far longer than a probe attempt before it counts as an error
        return http_get(target.host, target.port, target.path, timeout=LOAD_REQUEST_TIMEOUT_S) is not None

    with concurrent.futures.ThreadPoolExecutor(load.concurrency) as pool:
        for ok in pool.map(one, range(load.requests)):
            errors += 0 if ok else 1
    duration = time.monotonic() - started
    return {"requests": load.requests, "errors": errors, "duration_s": round(duration, 3),
            "rps": round(load.requests / duration, 1) if duration > 0 else None}  # fmt: skip


# --- the comparison ------------------------------------------------------------------------------


def _version(cmd: Sequence[str], pattern: str = r"(\d+\.\d+(?:\.\d+)?)") -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(pattern, out)
    return match.group(1) if match else None


def host_block(accel: str, reason: str) -> dict[str, Any]:
    os_name = platform.system()
    try:
        with open("/etc/os-release", encoding="utf-8") as f:
            os_name = next((line.split("=", 1)[1].strip().strip('"') for line in f if line.startswith("PRETTY_NAME=")),
                           os_name)  # fmt: skip
    except OSError:
        pass
    return {
        "hostname": platform.node(), "kernel": platform.release(), "os": os_name, "cpus": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total, "uniobs_version": __version__,
        "accelerator": accel, "accelerator_reason": reason,
        "versions": {k: v for k, v in {
            "qemu": _version(["qemu-system-x86_64", "--version"]), "runc": _version(["runc", "--version"]),
            "podman": _version(["podman", "--version"]), "node": _version(["node", "--version"]),
            "python": platform.python_version(),
        }.items() if v},
    }  # fmt: skip


class Comparison:
    def __init__(
        self, definition: fn.FunctionDef, runs: int, export: Sequence[str], settings: Settings,
        progress: Callable[[str], None] = lambda _: None, idle_s: float = IDLE_S,
    ) -> None:  # fmt: skip
        self.d = definition
        self.runs = runs
        self.export = list(export)
        self.settings = settings
        self.progress = progress
        self.idle_s = idle_s
        self.undelivered: list[str] = []  # per exporter and signal, what the run could not deliver
        self.launches: dict[str, list[_Launch]] = {}  # per side, the launches that were measured
        self.wraps: dict[str, fn.Wrap] = {}  # the sides measured: those this host could build

    def run(self) -> dict[str, Any]:
        d = self.d
        started = time.monotonic()
        # Every side the definition lists, unless this host cannot build it (its build says so with
        # status 77, e.g. no Nanos toolchain): that side is skipped, and the results say why.
        self.wraps = {}
        skipped: list[dict[str, str]] = []
        for name, wrap in d.wraps.items():
            fn.check_runnable(d, wrap)
            if fn.missing_images(d, wrap):
                self.progress(f"building the {name} image ({' '.join(wrap.build) or 'no build command'})")
            try:
                fn.ensure_built(d, wrap)
            except fn.SideSkipped as exc:
                self.progress(f"{name}: skipped: {exc.reason}")
                skipped.append({"side": name, "shrinkwrap": wrap.shrinkwrap, "label": wrap.label or name,
                                "reason": exc.reason})  # fmt: skip
                continue
            self.wraps[name] = wrap
        if not self.wraps:
            raise fn.DefinitionError(
                f"{d.path}: nothing to compare, every side was skipped: "
                + "; ".join(f"{s['side']}: {s['reason']}" for s in skipped)
            )
        accel = "tcg"
        reason = "no side takes an accelerator"
        if any(w.uses_accel for w in self.wraps.values()):
            chosen = probe()
            accel, reason = chosen.accel, chosen.describe()
            self.progress(f"accelerator: {reason}")
        coverage = Coverage()
        pipeline = Pipeline(self.settings, export=self.export, extra_sinks=[("compare", coverage.sinks())])
        missing = {"process", "cgroup"} - {c.name for c in pipeline.collectors}
        if missing:
            log.warning("collectors %s are disabled: the memory and CPU figures they give are left out",
                        ", ".join(sorted(missing)))  # fmt: skip
        sides: dict[str, dict[str, Any]] = {name: self._side(name, accel) for name in self.wraps}
        self.launches = {name: [] for name in self.wraps}
        total = self.runs * len(self.wraps)
        step = 0
        try:
            for round_ in range(self.runs):
                for name, wrap in self.wraps.items():
                    step += 1
                    self.progress(f"[{step}/{total}] {name} run {round_ + 1}/{self.runs}")
                    self._one(pipeline, coverage, wrap, accel, sides[name], round_ + 1)
        finally:
            pipeline.flush(10)
            pipeline.close(5)
            self.undelivered = pipeline.undelivered_summary()
        # Every sample has reached compare's own exporter now: the figures are read from there.
        for kind, side in sides.items():
            self._summarise(side, self.launches[kind], coverage)
        return {
            "schema": SCHEMA,
            "function": {"name": d.name, "definition": str(d.path), "description": d.description},
            "host": host_block(accel, reason),
            "runs_per_side": self.runs,
            "started_at": datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat(),
            "duration_s": round(time.monotonic() - started, 1),
            "sides": list(sides.values()),
            "skipped": skipped,
        }

    def _side(self, name: str, accel: str) -> dict[str, Any]:
        from uniobs.compare import surface

        wrap = self.wraps[name]
        runtime = os.path.basename(wrap.command[0]).split("-")[0] if wrap.command else wrap.shrinkwrap
        paths = fn.image_paths(self.d, wrap)
        label = wrap.label or name
        if wrap.uses_accel:
            label += f", {accel.upper()}"
        image_surface = surface.surface_of_image(paths)
        # complete once the running instance's part is measured too (see _launch_one)
        image_surface["complete"] = False
        return {
            "side": name, "shrinkwrap": wrap.shrinkwrap, "runtime": runtime, "label": label,
            "image": surface.image_block(paths),
            "attack_surface": image_surface,
            "coldstart": {"samples_s": [], "phase_samples": {}, "failures": 0},
            "memory": {}, "cpu": {},
            "load": None, "observability": {},
        }  # fmt: skip

    def _one(self, pipeline: Pipeline, coverage: Coverage, wrap: fn.Wrap, accel: str, side: dict[str, Any],
             run: int) -> None:  # fmt: skip
        """One launch of a side, triggered by its first request through a FunctionHost (as `uniobs
        serve`), measured, then stopped (the host removes its run directory however it ends)."""
        d = self.d
        fside = FunctionSide(d, wrap.side, accel=accel)  # checked and built already: the one launch recipe
        host = FunctionHost(pipeline, fside, idle_timeout=HOLD_S, on_idle="pause", start_timeout=READY_TIMEOUT_S,
                            interval=1.0, quiet=True)  # fmt: skip
        template = d.request or (d.load.url if d.load is not None else None)
        proxy = recorder = None
        if unobserved(d, wrap) is None:  # every request, from the first, observed at the function's port as exported
            recorder = InvocationRecorder(pipeline.telemetry, function=d.name)
            proxy = InvocationProxy(host, recorder, listen=("127.0.0.1", 0), protocol=d.protocol, routes=d.routes)
            recorder.server_port = proxy.start()[1]
        host.start()
        measured: dict[str, Any] = {}
        try:
            self._measure(pipeline, host, fside, proxy, template, side, run, measured)
        finally:
            if proxy is not None:
                proxy.close(1)
            host.close()  # the instance stopped (resumed first if paused), its run directory removed
            if recorder is not None:
                recorder.close()  # its invocations recorded: they reach the exporters (and Coverage)
        runner: Runner | None = host.runner
        cs = runner.coldstart if runner is not None else None
        ready_ns = cs.ready_ns() if cs is not None else None
        if cs is None or ready_ns is None or "exec" not in cs.marks or "launch" not in measured:
            side["coldstart"]["failures"] += 1
            log.warning("%s: not ready: %s", side["side"], host.failure or (cs.failure if cs is not None else None))
            return
        side["coldstart"]["samples_s"].append((ready_ns - cs.marks["exec"]) / 1e9)
        for phase, start, end in cs.phases():
            side["coldstart"]["phase_samples"].setdefault(phase, []).append((end - start) / 1e9)
        self.launches[side["side"]].append(measured["launch"])
        if "load_result" in measured:
            side["load"] = measured["load_result"]
        if run == 1:
            if "surface" in measured:
                block = side["attack_surface"]
                block.update({k: v for k, v in measured["surface"].items() if k not in ("method", "complete")})
                block["complete"] = not block.get("unknown") and bool(measured["surface"].get("complete"))
                side["attack_surface"]["method"] = (
                    side["attack_surface"].get("method", "") + " Runtime: " + measured["surface"].get("method", "")
                ).strip()
            if runner is not None and runner.workload is not None:
                pipeline.flush(5)
                side["observability"] = coverage.of(runner.workload.id)

    def _measure(self, pipeline: Pipeline, host: FunctionHost, fside: FunctionSide, proxy: InvocationProxy | None,
                 template: str | None, side: dict[str, Any], run: int, measured: dict[str, Any]) -> None:  # fmt: skip
        from uniobs.compare import surface

        d = self.d

        def now() -> int:  # epoch ns on the bridge's clock: that of the exported spans and records
            return pipeline.telemetry.to_epoch_ns(time.monotonic_ns())

        calls: list[_Calls] = []
        port = proxy.address[1] if proxy is not None and proxy.address is not None else 0

        def send(phase: str, n: int, timeout: float) -> list[int | None]:
            assert template is not None
            target = parse_probe(fside.public_url(template, port))
            start = now()
            statuses = [http_get(target.host, target.port, target.path, timeout=timeout) for _ in range(n)]
            calls.append(_Calls(phase, start, now(), n))
            return statuses

        # scale from zero: the first request launches the instance and is held until it is ready
        if proxy is not None:
            send("cold", 1, READY_TIMEOUT_S + LOAD_REQUEST_TIMEOUT_S)
            upstream_port = port
        else:  # nothing observed at a port (no port, proxy = false): launched by admission alone
            try:
                admission = host.admit(new_trace_id(), 0)
            except Unavailable:
                return
            host.done(admission)
            upstream_port = admission.port
        runner: Runner | None = host.runner
        proc = getattr(runner, "proc", None)
        if host.state is not State.READY or runner is None or runner.workload is None or proc is None:
            return
        measure = Measure(runner, pipeline)
        exec_ns = pipeline.telemetry.to_epoch_ns(runner.coldstart.marks.get("exec", 0))
        launch = _Launch(run, runner.workload.id, exec_ns, measure.container)
        idle, _ = _window(measure, "idle", self.idle_s)
        launch.windows.append(idle)
        if run == 1 and runner.workload.pid:
            config = os.path.join(runner.rundir, "bundle", "config.json") if runner.rundir is not None else ""
            measured["surface"] = surface.surface_of_process(
                runner.workload.pid if measure.container else proc.pid,
                container_config=config if config and os.path.exists(config) else None,
            )
        if proxy is not None:
            send("warm", WARM_REQUESTS, LOAD_REQUEST_TIMEOUT_S)
        if d.load is not None:
            url = fside.public_url(d.load.url, upstream_port)
            start = now()
            loaded, measured["load_result"] = _window(measure, "load", 0, lambda: _send_load(d.load, url))  # type: ignore[arg-type]
            if proxy is not None:
                calls.append(_Calls("load", start, now(), d.load.requests))
            launch.windows.append(loaded)
        if proxy is not None:
            launch.pause_unknown = host.pause_now()
            if launch.pause_unknown is None:
                send("resume", 1, READY_TIMEOUT_S)
        launch.calls = calls
        measured["launch"] = launch

    def _summarise(self, side: dict[str, Any], launches: Sequence[_Launch], coverage: Coverage) -> None:
        cs = side["coldstart"]
        samples = cs["samples_s"]
        phases = cs.pop("phase_samples")
        if samples:
            cs.update({"median_s": statistics.median(samples), "p95_s": percentile(samples, 0.95),
                       "min_s": min(samples), "max_s": max(samples)})  # fmt: skip
        cs["phases"] = {p: {"median_s": statistics.median(v), "samples_s": v} for p, v in phases.items()}
        cs["method"] = ("exec of the launch command to the first successful readiness probe (else the function's "
                        "`ready` milestone), timed by uniobs run on the host's monotonic clock; phases from the "
                        "cold-start trace. Each launch is triggered by a request (scale from zero, as `uniobs "
                        "serve`): that request is the invocation the cold-start trace is a child of, so the trace "
                        "no longer has a first_request phase; what the request saw is `invocations` cold")  # fmt: skip
        # Per window, then the median over the launches, as the figures of one launch are.
        memory: dict[str, list[MemoryFigures]] = {"idle": [], "load": []}
        cpu: dict[str, list[float]] = {"idle": [], "load": []}
        windows: list[Window] = []
        for launch in launches:
            for w in launch.windows:
                mem, percent = figures(coverage, launch, w)
                memory[w.phase].append(mem)
                if percent is not None:
                    cpu[w.phase].append(percent)
                windows.append({"run": launch.run, "phase": w.phase, "instance": launch.instance,
                                "start_unix_nano": w.start_ns, "end_unix_nano": w.end_ns})  # fmt: skip
        first = next((launch for launch in launches if launch.run == 1), None)
        container = side["shrinkwrap"] == "container"
        side["memory"] = {
            "idle": _median_sample(memory["idle"]) if memory["idle"] else {},
            "load": _median_sample(memory["load"]) if memory["load"] else {},
            "timeline": timeline(coverage, first) if first is not None else [],
            "timeline_metric": "cgroup memory" if container else "VMM RSS",
            "method": (
                "median of samples every 0.2 s once ready, as uniobs exported them (each sample is taken by the "
                f"pipeline's collectors and handed to the exporters at once; see `windows`): for a unikernel the VMM "
                f"process's RSS and PSS ({RSS}, {PSS}: /proc/<pid>/smaps_rollup; guest memory it touched included); "
                f"for a container its cgroup's memory ({CGROUP_MEMORY}: memory.usage_in_bytes or memory.current, page "
                "cache included) and the function process's RSS/PSS; and, measured by compare itself since no "
                "collector reads it, the runtime's own resident process (runc run in the foreground). They measure "
                "different things."
            ),
        }
        side["cpu"] = {
            "idle_percent": round(statistics.median(cpu["idle"]), 2) if cpu["idle"] else None,
            "load_percent": round(statistics.median(cpu["load"]), 2) if cpu["load"] else None,
            "method": (
                "CPU time between the first and the last exported sample of the window divided by the time between "
                f"them, in % of one core: the VMM process ({PROCESS_CPU}, user + system), or the container's cgroup "
                f"({CGROUP_CPU}: cpuacct/cpu.stat)"
            ),
        }
        side["observability"]["method"] = (
            "what uniobs exported for the first instance: metric names, log records, cold-start phases, spans and "
            "metrics the guest reported through the line protocol"
        )
        side["windows"] = windows
        side["invocations"] = invocation_figures(coverage, launches, unobserved(self.d, self.wraps[side["side"]]))


def unobserved(d: fn.FunctionDef, wrap: fn.Wrap) -> str | None:
    """Why compare cannot observe this side's invocations at its port (None: it can)."""
    if not fn.proxied(d, wrap):
        return "the function has no port to observe (no `port`, no {port} in the side), or `proxy = false`"
    if d.protocol != "http":
        return f"the function's protocol is {d.protocol}: compare sends HTTP requests only"
    template = d.request or (d.load.url if d.load is not None else None)
    if template is None or not template.startswith("http://"):
        return "the definition has no http:// `request` (nor `[load] url`) to send"
    return None


def _p(samples: Sequence[float], q: float) -> float | None:
    return round(percentile(samples, q), 6) if samples else None


def invocation_figures(coverage: Coverage, launches: Sequence[_Launch], why_not: str | None) -> dict[str, Any]:
    """A side's `invocations` block, from the invocation spans, REPORT and `uniobs.serve.resume`
    records and `faas.invocations` points compare's own exporter received, per launch (its
    instance) and per window in which compare sent the requests (`_Calls`). Figures in s and bytes;
    a figure that could not be measured is None with the reason in `unknown`."""
    if why_not is not None:
        return {"method": f"not measured: {why_not}."}
    cold: list[float] = []
    warm: list[float] = []
    load: list[float] = []
    resume: list[float] = []
    resume_host: list[float] = []
    rates: list[float] = []
    load_errors = 0
    memory: list[int] = []
    runs: list[dict[str, Any]] = []
    windows: list[dict[str, Any]] = []
    unknown: dict[str, str] = {}
    for launch in launches:
        if not launch.calls:
            continue
        row: dict[str, Any] = {"run": launch.run, "instance": launch.instance, "sent": 0, "spans": 0}
        for calls in launch.calls:
            spans = coverage.invocation_spans(launch.instance, calls.start_ns, calls.end_ns)
            windows.append({"run": launch.run, "phase": calls.phase, "instance": launch.instance,
                            "start_unix_nano": calls.start_ns, "end_unix_nano": calls.end_ns,
                            "sent": calls.sent, "spans": len(spans)})  # fmt: skip
            row["sent"] += calls.sent
            row["spans"] += len(spans)
            row[f"{calls.phase}_spans"] = len(spans)
            if calls.phase == "cold":
                first = [s for s in spans if s.coldstart]
                if first:
                    row["cold_s"] = round(first[0].duration_s, 6)
                    cold.append(first[0].duration_s)
                reports = [r for r in coverage.records_of(launch.instance, REPORT_EVENT, calls.start_ns, calls.end_ns)
                           if r.attributes.get("faas.coldstart")]  # fmt: skip
                init = reports[0].attributes.get("uniobs.invocation.init_duration") if reports else None
                row["init_s"] = init if isinstance(init, int | float) else None
            elif calls.phase == "warm":
                warm.extend(s.duration_s for s in spans if not s.coldstart)
            elif calls.phase == "load" and spans:
                load.extend(s.duration_s for s in spans)
                load_errors += sum(1 for s in spans if s.error is not None)
                span_ns = max(s.end_ns for s in spans) - min(s.start_ns for s in spans)
                if span_ns > 0:
                    rates.append(len(spans) / (span_ns / 1e9))
            elif calls.phase == "resume" and spans:
                row["resume_s"] = round(spans[0].duration_s, 6)
                resume.append(spans[0].duration_s)
                done = coverage.records_of(launch.instance, RESUME_EVENT, calls.start_ns, calls.end_ns)
                took = done[0].attributes.get("uniobs.serve.resume_s") if done else None
                if isinstance(took, int | float):
                    row["resume_host_s"] = took
                    resume_host.append(float(took))
        if launch.pause_unknown is not None:
            unknown.setdefault("resume_p50_s", f"not paused: {launch.pause_unknown}")
        counted = coverage.instants(launch.instance, INVOCATIONS, 0, 1 << 63)
        row["faas_invocations"] = int(counted[-1][1]) if counted else None  # cumulative: the last is the count
        for record in coverage.records_of(launch.instance, REPORT_EVENT):
            used = record.attributes.get("uniobs.invocation.max_memory_used")
            if isinstance(used, int):
                memory.append(used)
        runs.append(row)
    if not cold:
        unknown["cold_p50_s"] = unknown["cold_p95_s"] = (
            "no exported invocation span of a request that launched an instance"
        )
    if not warm:
        unknown["warm_p50_s"] = unknown["warm_p99_s"] = "no exported span of a warm invocation"
    if not resume and "resume_p50_s" not in unknown:
        unknown["resume_p50_s"] = "no exported span of a request that resumed a paused instance"
    if not memory:
        unknown["max_memory_used_bytes"] = unknown["max_memory_used_max_bytes"] = (
            "no REPORT record carried Max Memory Used (the instance's peak memory could not be read)"
        )
    has_load = any(c.phase == "load" for launch in launches for c in launch.calls)
    if has_load and not load:
        for key in ("load_throughput_per_s", "load_p50_s", "load_p90_s", "load_p99_s"):
            unknown[key] = "no exported span of the load's invocations"
    block: dict[str, Any] = {
        "cold_p50_s": _p(cold, 0.5), "cold_p95_s": _p(cold, 0.95),
        "warm_p50_s": _p(warm, 0.5), "warm_p99_s": _p(warm, 0.99), "warm_invocations": len(warm),
        "resume_p50_s": _p(resume, 0.5), "resume_host_p50_s": _p(resume_host, 0.5),
        "max_memory_used_bytes": _median(memory), "max_memory_used_max_bytes": max(memory) if memory else None,
        "load_invocations": len(load) if has_load else None, "load_errors": load_errors if has_load else None,
        "load_throughput_per_s": round(statistics.median(rates), 1) if rates else None,
        "load_p50_s": _p(load, 0.5), "load_p90_s": _p(load, 0.9), "load_p99_s": _p(load, 0.99),
        "runs": runs, "windows": windows,
        "method": (
            "from the invocation spans (SERVER, faas.invocation_id), REPORT records and faas.invocations points "
            "uniobs exported for each launch's instance (faas.instance), in the windows in which compare sent "
            "the requests (`windows`, epoch ns on the exported data's clock); durations are the spans' (the "
            "request's arrival at uniobs' proxy on the function's port to its response's last byte). Cold: the "
            "first request of each launch, sent while no instance existed; its arrival launched the instance "
            "through the same FunctionHost as `uniobs serve` and it was held until ready, so it includes the "
            "whole cold start (faas.coldstart=true; p50/p95 over the launches). Warm: "
            f"{WARM_REQUESTS} sequential requests per launch after the idle window (faas.coldstart=false; p50/p99 "
            "over all launches; the load's invocations are not in them). Resume: after the load, the instance "
            "paused (QMP `stop` on uniobs' own socket, or the runtime's `pause`) and one request sent: its span "
            "(resume_host_p50_s: the `cont`/`resume` alone, as the host measured it, from the uniobs.serve.resume "
            "record). Max memory used: each REPORT's Max Memory Used, the instance's peak so far as Lambda's "
            "(a VM's VMM VmHWM, a container's cgroup peak), median and max over the side's invocations. Load: the "
            "spans of the [load] requests: invocations/s from the first span's start to the last one's end "
            "(median over launches), latency percentiles over all launches, errors (spans with error.type)"
        ),
    }  # fmt: skip
    if unknown:
        block["unknown"] = unknown
    return block


def progress_printer(stream: Any = sys.stderr) -> Callable[[str], None]:
    def say(message: str) -> None:
        stream.write(f"uniobs compare: {message}\n")
        stream.flush()

    return say
