"""`uniobs compare FUNCTION.toml`: the same function in each shrink-wrap, measured on this host.

For each of N rounds, each shrink-wrap is launched once (interleaved, so drift on a noisy host
hits both alike) through the same machinery as `uniobs run` (cold-start trace, collectors,
exporters). After it is ready: memory and CPU are sampled at idle, then under the definition's
load, then it is stopped. Image size and the static attack surface are measured once from the
image files, the runtime attack surface once from the running instance. The result is one
document (`uniobs.results`), rendered by `uniobs.report`.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import logging
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import psutil
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from uniobs import __version__
from uniobs.coldstart.probes import http_get, parse_probe
from uniobs.compare import function as fn
from uniobs.compare.results import SCHEMA, percentile
from uniobs.config import Settings
from uniobs.lifecycle.run import Runner
from uniobs.lifecycle.rundir import RunDir
from uniobs.pipeline import Pipeline
from uniobs.plugin import ExporterSinks
from uniobs.runtimes.accel import probe
from uniobs.runtimes.launch import plan_launch

log = logging.getLogger("uniobs.compare")

READY_TIMEOUT_S = 180.0
IDLE_S = 2.0
SAMPLE_S = 0.2
LOAD_REQUEST_TIMEOUT_S = 30.0


# --- what the telemetry covered ---------------------------------------------------------------


class Coverage:
    """An in-process exporter that notes, per function instance, which signals left uniobs."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.metrics: dict[str, set[str]] = {}
        self.logs: dict[str, int] = {}
        self.spans: dict[str, list[str]] = {}

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


# --- measuring one launch ------------------------------------------------------------------------


def _process_memory(pid: int) -> tuple[int | None, int | None]:
    try:
        info = psutil.Process(pid).memory_full_info()
        return int(info.rss), int(info.pss)
    except (psutil.Error, OSError):
        return None, None


def _tree_cpu_s(pid: int) -> float | None:
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
        return sum(sum(p.cpu_times()[:2]) for p in procs)
    except (psutil.Error, OSError):
        return None


class Measure:
    """Memory and CPU of one running instance: the VMM process, or the container's cgroup."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        workload = runner.workload
        assert workload is not None
        self.workload = workload
        self.container = runner.coldstart.shrinkwrap == "container"
        self.layout = None
        if self.container and workload.cgroup:
            from uniobs.host.cgroupfs import detect_layout

            try:
                self.layout = detect_layout()
            except OSError:
                self.layout = None

    def cgroup(self) -> tuple[int | None, float | None]:
        """(memory bytes, CPU seconds) of the container's cgroup."""
        if self.layout is None or self.workload.cgroup is None:
            return None, None
        from uniobs.host.cgroupfs import read_stats

        try:
            stats = read_stats(self.layout, self.workload.cgroup, io=False, pressure=False, paths=self.workload.cgroups)
        except Exception:
            return None, None
        return stats.memory_usage, stats.cpu_usage_s

    def sample(self) -> dict[str, int | None]:
        """RSS/PSS of the VMM (or of the runtime's own process), and the container cgroup's memory."""
        proc = getattr(self.runner, "proc", None)
        if self.container:
            memory, _ = self.cgroup()
            runtime_rss, _ = _process_memory(proc.pid) if proc is not None else (None, None)
            init_rss, init_pss = _process_memory(self.workload.pid) if self.workload.pid else (None, None)
            return {"rss_bytes": init_rss, "pss_bytes": init_pss, "cgroup_bytes": memory,
                    "runtime_rss_bytes": runtime_rss}  # fmt: skip
        rss, pss = _process_memory(self.workload.pid) if self.workload.pid else (None, None)
        return {"rss_bytes": rss, "pss_bytes": pss, "cgroup_bytes": None, "runtime_rss_bytes": None}

    def cpu_s(self) -> float | None:
        if self.container:
            return self.cgroup()[1]
        return _tree_cpu_s(self.workload.pid) if self.workload.pid else None


def _median_sample(samples: list[dict[str, int | None]]) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for key in ("rss_bytes", "pss_bytes", "cgroup_bytes", "runtime_rss_bytes"):
        values = [v for s in samples if (v := s.get(key)) is not None]
        out[key] = int(statistics.median(values)) if values else None
    return out


def _window(
    measure: Measure, seconds: float, during: Callable[[], Any] | None = None
) -> tuple[dict[str, Any], float | None, Any]:
    """Sample memory every SAMPLE_S for `seconds` (or while `during` runs); CPU % over the window."""
    samples = []
    cpu0, t0 = measure.cpu_s(), time.monotonic()
    result = None
    if during is not None:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            future = pool.submit(during)
            while not future.done():
                samples.append(measure.sample())
                time.sleep(SAMPLE_S)
            result = future.result()
    else:
        while time.monotonic() - t0 < seconds:
            samples.append(measure.sample())
            time.sleep(SAMPLE_S)
    cpu1, t1 = measure.cpu_s(), time.monotonic()
    percent = (cpu1 - cpu0) / (t1 - t0) * 100 if cpu0 is not None and cpu1 is not None and t1 > t0 else None
    return _median_sample(samples), percent, result


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

    def run(self) -> dict[str, Any]:
        d = self.d
        started = time.monotonic()
        for wrap in d.wraps.values():
            fn.check_runnable(d, wrap)
            if fn.missing_images(d, wrap):
                self.progress(f"building the {wrap.shrinkwrap} image ({' '.join(wrap.build) or 'no build command'})")
            fn.ensure_built(d, wrap)
        accel = "tcg"
        reason = "no unikernel side"
        if "unikernel" in d.wraps:
            chosen = probe()
            accel, reason = chosen.accel, chosen.describe()
            self.progress(f"accelerator: {reason}")
        coverage = Coverage()
        pipeline = Pipeline(self.settings, export=self.export, extra_sinks=[("compare", coverage.sinks())])
        sides: dict[str, dict[str, Any]] = {kind: self._side(kind, accel) for kind in d.wraps}
        total = self.runs * len(d.wraps)
        step = 0
        try:
            for round_ in range(self.runs):
                for kind, wrap in d.wraps.items():
                    step += 1
                    self.progress(f"[{step}/{total}] {kind} run {round_ + 1}/{self.runs}")
                    self._one(pipeline, coverage, wrap, accel, sides[kind], first=round_ == 0)
        finally:
            pipeline.flush(10)
            pipeline.close(5)
            self.undelivered = pipeline.undelivered_summary()
        for side in sides.values():
            self._summarise(side)
        return {
            "schema": SCHEMA,
            "function": {"name": d.name, "definition": str(d.path), "description": d.description},
            "host": host_block(accel, reason),
            "runs_per_side": self.runs,
            "started_at": datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat(),
            "duration_s": round(time.monotonic() - started, 1),
            "sides": list(sides.values()),
        }

    def _side(self, kind: str, accel: str) -> dict[str, Any]:
        from uniobs.compare import surface

        wrap = self.d.wraps[kind]
        runtime = os.path.basename(wrap.command[0]).split("-")[0] if wrap.command else kind
        runtime = "qemu" if runtime == "qemu" else runtime
        paths = fn.image_paths(self.d, wrap)
        label = wrap.label or kind
        if kind == "unikernel":
            label += f", {accel.upper()}"
        return {
            "shrinkwrap": kind, "runtime": runtime, "label": label,
            "image": surface.image_block(paths),
            "attack_surface": surface.surface_of_image(paths),
            "coldstart": {"samples_s": [], "phase_samples": {}, "failures": 0},
            "memory": {"idle_samples": [], "load_samples": [], "timeline": []},
            "cpu": {"idle_samples": [], "load_samples": []},
            "load": None, "observability": {},
        }  # fmt: skip

    def _one(self, pipeline: Pipeline, coverage: Coverage, wrap: fn.Wrap, accel: str, side: dict[str, Any],
             first: bool) -> None:  # fmt: skip
        with RunDir.create() as rundir:  # the launch's sockets, FIFO and bundle copy, removed however it ends
            self._launch_one(rundir, pipeline, coverage, wrap, accel, side, first)

    def _launch_one(self, rundir: RunDir, pipeline: Pipeline, coverage: Coverage, wrap: fn.Wrap, accel: str,
                    side: dict[str, Any], first: bool) -> None:  # fmt: skip
        from uniobs.compare import surface

        d = self.d
        inst = fn.instance(d, wrap, accel)
        command = fn.command_for(d, wrap, inst)
        env = {k: inst.fill(v, d) for k, v in wrap.env.items()}
        plan = plan_launch(command, rundir, "vm")
        ready = inst.fill(d.ready, d) if d.ready else None
        request = inst.fill(d.request, d) if d.request else None
        runner = Runner(pipeline, plan, d.name, interval=1.0, mirror_console=False, rundir=rundir,
                        ready=ready, request=request, env=env, cwd=str(d.dir))  # fmt: skip
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
            measure = Measure(runner)
            exec_ns = runner.coldstart.marks.get("exec", 0)
            timeline: list[list[float]] = []

            def sample_timeline() -> None:
                s = measure.sample()
                value = s["cgroup_bytes"] if measure.container else s["rss_bytes"]
                if value is not None:
                    timeline.append([round((time.monotonic_ns() - exec_ns) / 1e9, 3), value])

            sample_timeline()
            idle, idle_cpu, _ = _window(measure, self.idle_s)
            sample_timeline()
            measured["idle"], measured["idle_cpu"] = idle, idle_cpu
            if first and runner.workload is not None and runner.workload.pid:
                config = os.path.join(rundir, "bundle", "config.json")
                measured["surface"] = surface.surface_of_process(
                    runner.workload.pid if measure.container else proc.pid,
                    container_config=config if os.path.exists(config) else None,
                )
            if d.load is not None:
                url = inst.fill(d.load.url, d)
                loaded, load_cpu, load_result = _window(measure, 0, lambda: _send_load(d.load, url))  # type: ignore[arg-type]
                sample_timeline()
                measured["load"], measured["load_cpu"], measured["load_result"] = loaded, load_cpu, load_result
            measured["timeline"] = timeline
            runner.stop()

        watcher = threading.Thread(target=watch, name="uniobs-compare", daemon=True)
        watcher.start()
        runner.run()
        watcher.join(30)
        cs = runner.coldstart
        ready_ns = cs.ready_ns()
        if ready_ns is None or "exec" not in cs.marks:
            side["coldstart"]["failures"] += 1
            log.warning("%s: not ready: %s", side["shrinkwrap"], cs.failure)
            return
        side["coldstart"]["samples_s"].append((ready_ns - cs.marks["exec"]) / 1e9)
        for phase, start, end in cs.phases():
            side["coldstart"]["phase_samples"].setdefault(phase, []).append((end - start) / 1e9)
        if "idle" in measured:
            side["memory"]["idle_samples"].append(measured["idle"])
            side["cpu"]["idle_samples"].append(measured["idle_cpu"])
        if "load" in measured:
            side["memory"]["load_samples"].append(measured["load"])
            side["cpu"]["load_samples"].append(measured["load_cpu"])
            side["load"] = measured["load_result"]
        if first:
            side["memory"]["timeline"] = measured.get("timeline", [])
            if "surface" in measured:
                side["attack_surface"].update({k: v for k, v in measured["surface"].items() if k != "method"})
                side["attack_surface"]["method"] = (
                    side["attack_surface"].get("method", "") + " Runtime: " + measured["surface"].get("method", "")
                ).strip()
            if runner.workload is not None:
                pipeline.flush(5)
                side["observability"] = coverage.of(runner.workload.id)

    def _summarise(self, side: dict[str, Any]) -> None:
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
        memory = side["memory"]
        memory["idle"] = _median_sample(memory.pop("idle_samples")) if memory["idle_samples"] else {}
        memory["load"] = _median_sample(memory.pop("load_samples")) if memory["load_samples"] else {}
        memory.pop("idle_samples", None)
        memory.pop("load_samples", None)
        memory["timeline_metric"] = "cgroup memory" if side["shrinkwrap"] == "container" else "VMM RSS"
        memory["method"] = (
            "median of samples every 0.2 s once ready: for a unikernel the VMM process's RSS and PSS "
            "(/proc/<pid>/smaps_rollup; guest memory it touched included); for a container its cgroup's memory "
            "(memory.usage_in_bytes or memory.current, page cache included), the function process's RSS/PSS, and "
            "the runtime's own resident process (runc run in the foreground). They measure different things."
        )
        cpu = side["cpu"]
        for key in ("idle", "load"):
            values = [v for v in cpu.pop(f"{key}_samples") if v is not None]
            cpu[f"{key}_percent"] = round(statistics.median(values), 2) if values else None
        cpu["method"] = ("CPU time over the window divided by its length, in % of one core: the VMM process tree, or "
                         "the container's cgroup (cpuacct/cpu.stat)")  # fmt: skip
        side["observability"]["method"] = (
            "what uniobs exported for the first instance: metric names, log records, cold-start phases, spans and "
            "metrics the guest reported through the line protocol"
        )


def progress_printer(stream: Any = sys.stderr) -> Callable[[str], None]:
    def say(message: str) -> None:
        stream.write(f"uniobs compare: {message}\n")
        stream.flush()

    return say
