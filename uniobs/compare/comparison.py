"""`uniobs compare FUNCTION.toml`: the same function on each side (shrink-wrap) the definition
lists, measured on this host; a side this host cannot build (its build exits 77) is skipped, and
the document says why.

For each of N rounds, each side is launched once (interleaved, so drift on a noisy host hits
every side alike) through the same machinery as `uniobs run` (cold-start trace, collectors,
exporters). After it is ready: memory and CPU are sampled at idle, then under the definition's
load, then it is stopped. Image size and the static attack surface are measured once from the
image files, the runtime attack surface once from the running instance. The result is one
document (`uniobs.compare.results`), rendered by `uniobs.compare.report`.

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
from uniobs.compare import function as fn
from uniobs.compare.results import SCHEMA, MemoryFigures, Window, percentile
from uniobs.config import Settings
from uniobs.lifecycle.run import Runner
from uniobs.lifecycle.rundir import RunDir
from uniobs.pipeline import Pipeline
from uniobs.plugin import Collector, ExporterSinks
from uniobs.runtimes.accel import probe
from uniobs.runtimes.launch import plan_launch

log = logging.getLogger("uniobs.compare")

READY_TIMEOUT_S = 180.0
IDLE_S = 2.0
SAMPLE_S = 0.2
LOAD_REQUEST_TIMEOUT_S = 30.0


# --- what the telemetry covered ---------------------------------------------------------------

# The series the report's memory and CPU figures are read from (`figures`), as exported.
RSS, PSS = "process.memory.usage", "uniobs.process.memory.pss"  # the VMM, or the container's init
PROCESS_CPU = "process.cpu.time"
CGROUP_MEMORY, CGROUP_CPU = "container.memory.usage", "container.cpu.time"
FIGURE_METRICS = frozenset({RSS, PSS, PROCESS_CPU, CGROUP_MEMORY, CGROUP_CPU})

_PointKey = tuple[tuple[tuple[str, Any], ...], int]  # (attributes, time_unix_nano)


class Coverage:
    """An in-process exporter that notes, per function instance, which signals left uniobs, and
    keeps every exported data point of the series the report's figures are made of."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.metrics: dict[str, set[str]] = {}
        self.logs: dict[str, int] = {}
        self.spans: dict[str, list[str]] = {}
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
class _Launch:
    run: int
    instance: str  # the workload's id: the `faas.instance` of its exported telemetry
    exec_ns: int  # epoch ns of its exec, for the timeline
    container: bool
    windows: list[_Window] = field(default_factory=list)


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
        with RunDir.create() as rundir:  # the launch's sockets, FIFO and bundle copy, removed however it ends
            self._launch_one(rundir, pipeline, coverage, wrap, accel, side, run)

    def _launch_one(self, rundir: RunDir, pipeline: Pipeline, coverage: Coverage, wrap: fn.Wrap, accel: str,
                    side: dict[str, Any], run: int) -> None:  # fmt: skip
        from uniobs.compare import surface

        d = self.d
        first = run == 1
        inst = fn.instance(d, wrap, accel)
        command = fn.command_for(d, wrap, inst)
        env = {k: inst.fill(v, d) for k, v in wrap.env.items()}
        plan = plan_launch(command, rundir, "vm")
        ready = inst.fill(d.ready, d) if d.ready else None
        request = inst.fill(d.request, d) if d.request else None
        runner = Runner(pipeline, plan, d.name, interval=1.0, mirror_console=False, rundir=rundir,
                        ready=ready, request=request, env=env, cwd=str(d.dir),
                        propagate_trace=wrap.propagate_trace)  # fmt: skip
        measured: dict[str, Any] = {}

        def watch() -> None:
            deadline = time.monotonic() + READY_TIMEOUT_S
            while not runner.coldstart_done and time.monotonic() < deadline:
                proc = getattr(runner, "proc", None)
                if proc is not None and proc.poll() is not None:
                    return
                time.sleep(0.02)
            proc = getattr(runner, "proc", None)
            if not runner.coldstart_done or proc is None or proc.poll() is not None or runner.workload is None:
                runner.stop()
                return
            measure = Measure(runner, pipeline)
            exec_ns = pipeline.telemetry.to_epoch_ns(runner.coldstart.marks.get("exec", 0))
            launch = _Launch(run, runner.workload.id, exec_ns, measure.container)
            idle, _ = _window(measure, "idle", self.idle_s)
            launch.windows.append(idle)
            if first and runner.workload is not None and runner.workload.pid:
                config = os.path.join(rundir, "bundle", "config.json")
                measured["surface"] = surface.surface_of_process(
                    runner.workload.pid if measure.container else proc.pid,
                    container_config=config if os.path.exists(config) else None,
                )
            if d.load is not None:
                url = inst.fill(d.load.url, d)
                loaded, measured["load_result"] = _window(measure, "load", 0, lambda: _send_load(d.load, url))  # type: ignore[arg-type]
                launch.windows.append(loaded)
            measured["launch"] = launch
            runner.stop()

        watcher = threading.Thread(target=watch, name="uniobs-compare", daemon=True)
        watcher.start()
        runner.run()
        watcher.join(30)
        cs = runner.coldstart
        ready_ns = cs.ready_ns()
        if ready_ns is None or "exec" not in cs.marks:
            side["coldstart"]["failures"] += 1
            log.warning("%s: not ready: %s", side["side"], cs.failure)
            return
        side["coldstart"]["samples_s"].append((ready_ns - cs.marks["exec"]) / 1e9)
        for phase, start, end in cs.phases():
            side["coldstart"]["phase_samples"].setdefault(phase, []).append((end - start) / 1e9)
        if "launch" in measured:
            self.launches[side["side"]].append(measured["launch"])
        if "load_result" in measured:
            side["load"] = measured["load_result"]
        if first:
            if "surface" in measured:
                block = side["attack_surface"]
                block.update({k: v for k, v in measured["surface"].items() if k not in ("method", "complete")})
                block["complete"] = not block.get("unknown") and bool(measured["surface"].get("complete"))
                side["attack_surface"]["method"] = (
                    side["attack_surface"].get("method", "") + " Runtime: " + measured["surface"].get("method", "")
                ).strip()
            if runner.workload is not None:
                pipeline.flush(5)
                side["observability"] = coverage.of(runner.workload.id)

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
                        "cold-start trace")  # fmt: skip
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


def progress_printer(stream: Any = sys.stderr) -> Callable[[str], None]:
    def say(message: str) -> None:
        stream.write(f"uniobs compare: {message}\n")
        stream.flush()

    return say
