"""The pipeline: builds plugins from the configuration and runs scrapes into the telemetry bridge.

The framework owns the loop, the timing and the error accounting (netdata's python.d and
Telegraf's inputs work the same way): a collector only reads. A workload that vanishes while
being read is churn: its series end quietly. Any other failure is logged once per state change
and counted in `uniobs.collector.errors`; the other workloads and collectors carry on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from uniobs.config import ConfigError, Settings, check_plugin_names
from uniobs.ioloop import IoLoop
from uniobs.model import Instrument, MetricSpec, Sample, Workload
from uniobs.plugin import Collector, Exporter, ExporterSinks, SourceUnavailable, StreamingCollector, WorkloadGone
from uniobs.registry import PluginError, Registry
from uniobs.telemetry import SELF, Telemetry

log = logging.getLogger("uniobs.pipeline")

PIPELINE_METRICS = (
    MetricSpec(
        "uniobs.collector.errors",
        Instrument.COUNTER,
        "{error}",
        "Failed collections, by collector and error type (vanished workloads are not errors).",
        ("uniobs.collector", "error.type"),
    ),
    MetricSpec(
        "uniobs.collector.duration",
        Instrument.GAUGE,
        "s",
        "Wall time the last scrape of all workloads took, by collector.",
        ("uniobs.collector",),
    ),
    MetricSpec(
        "uniobs.collector.samples",
        Instrument.COUNTER,
        "{sample}",
        "Samples collected, by collector.",
        ("uniobs.collector",),
    ),
)


def parse_export_spec(spec: str) -> tuple[str, str | None]:
    """`file:/tmp/x.jsonl` -> ("file", "/tmp/x.jsonl"); `console` -> ("console", None)."""
    name, sep, arg = spec.partition(":")
    if not name:
        raise ConfigError(f"--export {spec!r}: no exporter name")
    return name, (arg if sep else None)


def build_exporters(specs: Sequence[str], settings: Settings, registry: Registry) -> list[tuple[str, Exporter]]:
    """Exporter plugins for `--export` specs, configured from [exporters.NAME] then the spec's ARG."""
    built: list[tuple[str, Exporter]] = []
    seen: dict[str, int] = {}
    for spec in specs:
        name, arg = parse_export_spec(spec)
        try:
            info = registry.exporter(name)
        except PluginError as exc:
            raise ConfigError(f"--export {spec}: {exc}") from None
        cls: type[Exporter] = info.plugin
        config = settings.exporter_config(name, cls.config_class)
        if arg is not None:
            try:
                config = cls.config_from_arg(arg, config)
                config.validate()
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"--export {spec}: {exc}") from None
        seen[name] = seen.get(name, 0) + 1
        label = name if seen[name] == 1 else f"{name}#{seen[name]}"  # two file exporters, say
        try:
            built.append((label, cls(config)))
        except ValueError as exc:
            raise ConfigError(f"--export {spec}: {exc}") from None
    return built


@dataclass
class _Health:
    """Per collector and workload: what was last reported, so a failure is said once."""

    failing: dict[tuple[str, tuple[str, str, str]], str] = field(default_factory=dict)
    unavailable: set[tuple[str, tuple[str, str, str], str]] = field(default_factory=set)


class Pipeline:
    """Collectors and exporters built from settings, wired to one telemetry bridge."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry | None = None,
        export: Sequence[str] | None = None,
        *,
        collectors: Iterable[str] | None = None,
        strict: bool = False,
        extra_sinks: Sequence[tuple[str, ExporterSinks]] = (),
    ) -> None:
        self.registry = registry or Registry()
        self.settings = settings
        collector_infos = self.registry.collectors
        check_plugin_names(settings, set(collector_infos), set(self.registry.exporters))
        # Every table is checked at start, used or not: a typo must not wait for the day it matters.
        for name in settings.exporters:
            settings.exporter_config(name, self.registry.exporters[name].plugin.config_class)
        for name in settings.collectors:
            settings.collector_config(name, collector_infos[name].plugin.config_class)
        specs = list(settings.core.export if export is None else export)
        self.exporters = build_exporters(specs, settings, self.registry)
        self.collectors: list[Collector] = []
        self.streaming: list[StreamingCollector] = []
        wanted = set(collectors) if collectors is not None else None
        for name, info in collector_infos.items():
            if wanted is not None and name not in wanted:
                continue
            cls = info.plugin
            config = settings.collector_config(name, cls.config_class)
            if config.enabled:
                plugin = cls(config)
                (self.collectors if isinstance(plugin, Collector) else self.streaming).append(plugin)
        self.loop = IoLoop()
        self._streaming_on: set[tuple[str, str, str]] = set()
        sinks: list[tuple[str, ExporterSinks]] = []
        try:
            for label, exporter in self.exporters:
                sinks.append((label, exporter.sinks()))
        except OSError as exc:  # a port in use, a file that cannot be opened
            raise ConfigError(f"exporter {label}: {exc}") from None
        self.telemetry = Telemetry(
            [*sinks, *extra_sinks],
            service_name=settings.core.service_name,
            queue_batches=settings.core.queue_batches,
            queue_max_items=settings.core.queue_max_items,
            retry_initial=settings.core.retry_initial,
            retry_max=settings.core.retry_max,
            max_log_records=settings.core.max_log_records,
            max_log_bytes=settings.core.max_log_bytes,
            strict=strict,
        )
        self.telemetry.declare(PIPELINE_METRICS, scope="uniobs")
        plugins: list[Collector | StreamingCollector] = [*self.collectors, *self.streaming]
        for plugin in plugins:
            self.telemetry.declare(plugin.metrics, scope=f"uniobs.collectors.{plugin.name}")
        self._health = _Health()
        self._errors: dict[tuple[str, str], int] = {}
        self._samples: dict[str, int] = {}
        self._durations: dict[str, float] = {}

    def describe_exporters(self) -> list[str]:
        return [exporter.describe() for _, exporter in self.exporters]

    def start_streams(self, workload: Workload) -> list[str]:
        """Start every streaming collector (console capture...) that applies. Returns their names."""
        started = []
        for plugin in self.streaming:
            if plugin.applies_to(workload):
                plugin.start(workload, self.telemetry, self.loop.start())
                started.append(plugin.name)
        if started:
            self._streaming_on.add(workload.key)
        return started

    def stop_streams(self, workload: Workload, timeout: float = 2.0) -> None:
        """Read what the streams already hold, deliver it, stop them (their counters stay)."""
        for plugin in self.streaming:
            if plugin.applies_to(workload):
                plugin.stop(workload, timeout)

    def snapshot_streams(self, workload: Workload) -> None:
        """Record the streams' own counters now (e.g. after a final drain)."""
        if workload.key in self._streaming_on:
            for plugin in self.streaming:
                if plugin.applies_to(workload):
                    self.telemetry.record(workload, plugin.snapshot(workload))

    def scrape(self, workloads: Iterable[Workload], collectors: Iterable[Collector] | None = None) -> int:
        """Collect every applicable (collector, workload) pair once. Returns the sample count."""
        workloads = list(workloads)
        total = 0
        for collector in self.collectors if collectors is None else collectors:
            started = time.perf_counter()
            for workload in workloads:
                if collector.applies_to(workload):
                    total += self._collect_one(collector, workload)
            self._durations[collector.name] = time.perf_counter() - started
        for workload in workloads:
            self.snapshot_streams(workload)
        self.telemetry.record(SELF, self._self_samples())
        return total

    def _collect_one(self, collector: Collector, workload: Workload) -> int:
        key = (collector.name, workload.key)
        try:
            samples = list(collector.collect(workload))
        except WorkloadGone:
            self.workload_gone(workload)  # which still takes the last events (a QMP SHUTDOWN...)
            return 0
        except SourceUnavailable as exc:
            marker = (collector.name, workload.key, str(exc))
            if marker not in self._health.unavailable:
                self._health.unavailable.add(marker)
                log.info("%s: %s: %s (emitting what is available)", collector.name, workload.display_name, exc)
            return 0
        except Exception as exc:
            error = type(exc).__name__
            self._errors[(collector.name, error)] = self._errors.get((collector.name, error), 0) + 1
            message = f"{error}: {exc}"
            if self._health.failing.get(key) != message:
                self._health.failing[key] = message
                log.warning("%s: %s: collection failed: %s", collector.name, workload.display_name, message)
            return 0
        if key in self._health.failing:
            del self._health.failing[key]
            log.info("%s: %s: collecting again", collector.name, workload.display_name)
        self.telemetry.record(workload, samples)
        self._events(collector, workload)
        self._samples[collector.name] = self._samples.get(collector.name, 0) + len(samples)
        return len(samples)

    def _events(self, collector: Collector, workload: Workload) -> None:
        try:
            events = list(collector.events(workload))
        except Exception as exc:
            log.warning("%s: %s: reading events failed: %s", collector.name, workload.display_name, exc)
            return
        for event in events:
            self.telemetry.log(workload, event)

    def workload_gone(self, workload: Workload) -> None:
        """End a workload's series and forget its per-collector state (after taking its last events)."""
        for collector in self.collectors:
            self._events(collector, workload)
            collector.forget(workload)
        for plugin in self.streaming:
            plugin.forget(workload)
        self._streaming_on.discard(workload.key)
        self.telemetry.forget(workload)
        for key in [k for k in self._health.failing if k[1] == workload.key]:
            del self._health.failing[key]

    def _self_samples(self) -> list[Sample]:
        samples = [
            Sample("uniobs.collector.errors", n, (("uniobs.collector", c), ("error.type", e)))
            for (c, e), n in self._errors.items()
        ]
        samples += [
            Sample("uniobs.collector.duration", d, (("uniobs.collector", c),)) for c, d in self._durations.items()
        ]
        samples += [Sample("uniobs.collector.samples", n, (("uniobs.collector", c),)) for c, n in self._samples.items()]
        return samples

    def error_count(self) -> int:
        return sum(self._errors.values())

    def flush(self, timeout: float = 10.0) -> bool:
        return self.telemetry.flush(timeout)

    def close(self, timeout: float = 10.0) -> None:
        for collector in self.collectors:
            try:
                collector.close()
            except Exception as exc:
                log.debug("%s: close: %s", collector.name, exc)
        self.telemetry.shutdown(timeout)
        self.loop.stop()

    def exporter_failures(self) -> dict[str, dict[str, Any]]:
        """Per exporter: counts not delivered (failed or dropped), and the last error."""
        out: dict[str, dict[str, Any]] = {}
        for name, stats in self.telemetry.stats().items():
            lost = sum(stats.failed.values()) + sum(stats.dropped.values())
            if lost:
                out[name] = {
                    "failed": dict(stats.failed),
                    "dropped": dict(stats.dropped),
                    "error": stats.last_error,
                }
        return out
