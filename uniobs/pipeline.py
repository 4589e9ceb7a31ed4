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
from uniobs.metrics import PIPELINE_METRICS
from uniobs.model import LogEvent, Sample, Workload
from uniobs.plugin import Collector, Exporter, ExporterSinks, SourceUnavailable, StreamingCollector, WorkloadGone
from uniobs.registry import PluginError, Registry
from uniobs.scheduler import CollectPool, CollectTimeout, Outcome
from uniobs.telemetry import SELF, Telemetry

log = logging.getLogger("uniobs.pipeline")

RETIRE_GRACE_S = 60.0  # how long a vanished workload's streams may take to read their backlog


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
class _Reading:
    """What one collection returned, read on a worker thread and accounted for on the scrape's."""

    samples: list[Sample]
    events: list[LogEvent] = field(default_factory=list)
    gaps: list[str] = field(default_factory=list)
    events_error: Exception | None = None
    gaps_error: Exception | None = None


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
        except OSError as exc:  # a port in use, a file that cannot be opened: say which, and what it was for
            raise ConfigError(f"exporter {label}: cannot start {exporter.describe()}: {exc.strerror or exc}") from None
        self.telemetry = Telemetry(
            [*sinks, *extra_sinks],
            service_name=settings.core.service_name,
            buffer_bytes=settings.core.buffer_bytes,
            export_batch_size=settings.core.export_batch_size,
            metrics_batch_points=min(
                [getattr(exporter.config, "max_export_batch_size", 5000) for _, exporter in self.exporters] or [5000]
            ),
            retry_initial=settings.core.retry_initial,
            retry_max=settings.core.retry_max,
            strict=strict,
        )
        self.telemetry.declare(PIPELINE_METRICS, scope="uniobs")
        plugins: list[Collector | StreamingCollector] = [*self.collectors, *self.streaming]
        for plugin in plugins:
            self.telemetry.declare(plugin.metrics, scope=f"uniobs.collectors.{plugin.name}")
        self._health = _Health()
        self._retiring: dict[tuple[str, str, str], tuple[Workload, float]] = {}
        self._errors: dict[tuple[str, str], int] = {}
        self._samples: dict[str, int] = {}
        self._durations: dict[str, float] = {}
        self._prepare_failed: set[str] = set()  # collectors whose prepare() raised (said once)
        self._pool = CollectPool()  # threads start at the first scrape

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

    def retire(self, workload: Workload, grace_s: float = RETIRE_GRACE_S) -> None:
        """The workload is gone: its streams read what is left (a flood's backlog may take a while,
        on the I/O thread), then its last counters are taken and its series end. Never waits:
        `settle()` (called by every scrape) finishes retired workloads whose streams have ended,
        or that waited `grace_s`."""
        if workload.key in self._retiring:
            return
        for plugin in self.streaming:
            if plugin.applies_to(workload):
                plugin.stop(workload, timeout=0)
        self._retiring[workload.key] = (workload, time.monotonic() + grace_s)
        self.settle()

    def retiring(self) -> int:
        """Vanished workloads whose streams are still reading what they left."""
        return len(self._retiring)

    def settle(self, force: bool = False) -> None:
        """End the retired workloads whose streams are done (all of them when `force`)."""
        now = time.monotonic()
        for key, (workload, deadline) in list(self._retiring.items()):
            done = all(p.ended(workload) for p in self.streaming if p.applies_to(workload))
            if done or force or now >= deadline:
                if not done:
                    log.warning("%s: its streams did not finish; final counters as they are", workload.display_name)
                del self._retiring[key]
                self.snapshot_streams(workload)
                self.workload_gone(workload)

    def snapshot_streams(self, workload: Workload) -> None:
        """Record the streams' own counters now (e.g. after a final drain)."""
        if workload.key in self._streaming_on:
            for plugin in self.streaming:
                if plugin.applies_to(workload):
                    self.telemetry.record(workload, plugin.snapshot(workload))

    def scrape(self, workloads: Iterable[Workload], collectors: Iterable[Collector] | None = None) -> int:
        """Collect every applicable (collector, workload) pair once. Returns the sample count.

        Each `collect()` is bounded by its collector's `timeout` (see `uniobs.scheduler`): one that
        hangs costs this scrape at most that long, and is counted as error.type "timeout"."""
        workloads = list(workloads)
        total = 0
        for collector in self._prepared(workloads, self.collectors if collectors is None else collectors):
            started = time.perf_counter()
            total += self._collect(collector, [w for w in workloads if collector.applies_to(w)])
            self._durations[collector.name] = time.perf_counter() - started
        for workload in workloads:
            self.snapshot_streams(workload)
        self.settle()
        self.telemetry.record(SELF, self._self_samples())
        return total

    def _prepared(self, workloads: list[Workload], collectors: Iterable[Collector]) -> list[Collector]:
        """Call `prepare()` of the collectors that have one (not for a pair whose last collect()
        has not returned: it still holds that workload's state); return the collectors in the
        order to collect them, the preparing ones last so their sources answer meanwhile."""
        collectors = list(collectors)
        preparing = [c for c in collectors if type(c).prepare is not Collector.prepare]
        if not preparing:
            return collectors
        hung = self._pool.hung_keys()
        for collector in preparing:
            for workload in workloads:
                if (collector.name, workload.key) in hung or not collector.applies_to(workload):
                    continue
                try:
                    collector.prepare(workload)
                except Exception:  # the contract says never; collect() then does the whole work
                    if collector.name not in self._prepare_failed:  # said once: it would repeat every scrape
                        self._prepare_failed.add(collector.name)
                        log.exception("%s: prepare() failed for %s", collector.name, workload.display_name)
        return [c for c in collectors if c not in preparing] + preparing

    def _collect(self, collector: Collector, workloads: list[Workload]) -> int:
        """One collector over its workloads, on the worker pool, each call bounded."""
        todo = []
        hung = self._pool.hung_keys()
        for workload in workloads:
            key = (collector.name, workload.key)
            if key not in hung:
                todo.append(workload)
            else:  # its last call has not returned: no second one beside it, and no second warning
                said = self._health.failing.get(key, "timeout: its last collect() has not returned")
                self._failed(collector, workload, "timeout", said)
        if not todo:
            return 0
        outcomes = self._pool.run(
            lambda workload: self._read(collector, workload),
            todo,
            collector.config.timeout,
            key=lambda workload: (collector.name, workload.key),
        )
        return sum(self._account(collector, w, outcome) for w, outcome in zip(todo, outcomes, strict=True))

    @staticmethod
    def _read(collector: Collector, workload: Workload) -> _Reading:
        """On a worker thread: collect(), then the events and gaps that go with it."""
        reading = _Reading(list(collector.collect(workload)))
        try:
            reading.events = list(collector.events(workload))
        except Exception as exc:
            reading.events_error = exc
        try:
            reading.gaps = list(collector.gaps(workload))
        except Exception as exc:
            reading.gaps_error = exc
        return reading

    def _failed(self, collector: Collector, workload: Workload, error: str, message: str) -> None:
        """Count a failed collection; log it when it is not what was last said for this pair."""
        key = (collector.name, workload.key)
        self._errors[(collector.name, error)] = self._errors.get((collector.name, error), 0) + 1
        if self._health.failing.get(key) != message:
            self._health.failing[key] = message
            log.warning("%s: %s: collection failed: %s", collector.name, workload.display_name, message)

    def _account(self, collector: Collector, workload: Workload, outcome: Outcome[_Reading]) -> int:
        key = (collector.name, workload.key)
        exc = outcome.error
        if isinstance(exc, WorkloadGone):
            self.retire(workload)  # its streams finish, then its series end (taking its last events)
            return 0
        if isinstance(exc, SourceUnavailable):
            marker = (collector.name, workload.key, str(exc))
            if marker not in self._health.unavailable:
                self._health.unavailable.add(marker)
                log.info("%s: %s: %s (emitting what is available)", collector.name, workload.display_name, exc)
            return 0
        if isinstance(exc, CollectTimeout):
            self._failed(collector, workload, "timeout", f"timeout: {exc}")
            return 0
        if exc is not None:
            self._failed(collector, workload, type(exc).__name__, f"{type(exc).__name__}: {exc}")
            return 0
        reading = outcome.value
        assert reading is not None
        samples = reading.samples
        if key in self._health.failing:
            del self._health.failing[key]
            log.info("%s: %s: collecting again", collector.name, workload.display_name)
        self.telemetry.record(workload, samples)
        for what, error in (("events", reading.events_error), ("gaps", reading.gaps_error)):
            if error is not None:
                log.warning("%s: %s: reading %s failed: %s", collector.name, workload.display_name, what, error)
        for event in reading.events:
            self.telemetry.log(workload, event)
        self._samples[collector.name] = self._samples.get(collector.name, 0) + len(samples)
        # A source that should have answered and did not must not pass in silence: each reason is
        # said once per workload (as SourceUnavailable is), and every collection with a gap counts
        # as an error of type NoData, so a lasting gap keeps showing in uniobs.collector.errors.
        gaps = reading.gaps
        level = logging.WARNING
        if gaps:
            self._errors[(collector.name, "NoData")] = self._errors.get((collector.name, "NoData"), 0) + 1
        elif not samples:  # nothing named missing: said, but not counted (e.g. a container with only lo)
            gaps, level = ["the collection returned no samples"], logging.INFO
        for gap in gaps:
            marker = (collector.name, workload.key, f"yields nothing: {gap}")
            if marker not in self._health.unavailable:
                self._health.unavailable.add(marker)
                log.log(level, "%s: %s: yields nothing: %s", collector.name, workload.display_name, gap)
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
        self.settle(force=True)
        self._pool.close()
        for collector in self.collectors:
            try:
                collector.close()
            except Exception as exc:
                log.debug("%s: close: %s", collector.name, exc)
        self.telemetry.shutdown(timeout)
        self.loop.stop()

    def exporter_failures(self) -> dict[str, dict[str, Any]]:
        """Per exporter that lost anything: {"signals": {signal: {"failed": n, "dropped": n}},
        "errors": {signal: last reason}, "error": the last reason of all}."""
        out: dict[str, dict[str, Any]] = {}
        for name, stats in self.telemetry.stats().items():
            lost = stats.undelivered()
            if lost:
                errors = {signal: stats.errors[signal] for signal in lost if signal in stats.errors}
                out[name] = {"signals": lost, "errors": errors, "error": stats.last_error}
        return out

    def undelivered_summary(self) -> list[str]:
        """One line per exporter and signal that lost anything, for the end of a command:
        `exporter otlp-http: metrics not delivered: 12 failed (HTTP 405 Method Not Allowed)`."""
        lines = []
        for name, failure in self.exporter_failures().items():
            for signal, lost in failure["signals"].items():
                counts = ", ".join(f"{n} {outcome}" for outcome, n in lost.items())
                why = failure["errors"].get(signal)
                if "dropped" in lost and not why:
                    why = "the export buffer was full"
                lines.append(f"exporter {name}: {signal} not delivered: {counts}" + (f" ({why})" if why else ""))
        return lines
