"""`uniobs top`'s own measurement: the agent's discovery, pipeline and scheduler, in this process.

Nothing is measured a second way: `TopAgent` *is* `uniobs.lifecycle.agent.Agent` (the same
discovery of VMMs in /proc and containers from the runtimes' state and the cgroup tree, the same
collectors on the same scheduler, each collect() bounded), with two differences: its pipeline has
no exporter but an in-process sink (`TopSink`, through the bridge's `extra_sinks`, as `uniobs
compare`'s Coverage) that keeps the latest points per workload in a `Store`, and it serves no
health endpoint (a running agent may hold its port). Its collectors run at top's interval (a
collector's own `[collectors.NAME] interval` in the configuration still applies), and each
scrape is handed to the sink at once.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from opentelemetry.sdk.metrics.export import (
    Histogram,
    MetricExporter,
    MetricExportResult,
    MetricsData,
)

from uniobs.config import Settings
from uniobs.lifecycle.agent import Agent, AgentConfig
from uniobs.model import Workload
from uniobs.pipeline import Pipeline
from uniobs.plugin import ExporterSinks
from uniobs.top.model import SOURCE_METRICS, Instance, Point, Row, Store, build_rows


def instance_key(kind: Any, runtime: Any, instance: Any) -> str:
    """One workload's key in the Store: kind, runtime and service.instance.id (the Workload.id)."""
    return f"{kind}|{runtime}|{instance}"


class TopSink(MetricExporter):
    """An SDK metric exporter that keeps, per workload resource, the points `uniobs top` shows."""

    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        for rm in metrics_data.resource_metrics:
            attrs = dict(rm.resource.attributes)
            key = instance_key(
                attrs.get("uniobs.workload.kind"),
                attrs.get("uniobs.workload.runtime"),
                attrs.get("service.instance.id"),
            )
            points: list[tuple[str, tuple[tuple[str, Any], ...], Point]] = []
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name not in SOURCE_METRICS:
                        continue
                    hist = isinstance(metric.data, Histogram)
                    for p in metric.data.data_points:
                        pattrs = tuple(sorted((p.attributes or {}).items()))
                        if hist:
                            point = Point(p.time_unix_nano, float(p.sum), int(p.count), tuple(p.explicit_bounds),  # type: ignore[union-attr]
                                          tuple(p.bucket_counts))  # type: ignore[union-attr]  # fmt: skip
                        else:
                            point = Point(p.time_unix_nano, float(p.value))  # type: ignore[union-attr]
                        points.append((metric.name, pattrs, point))
            self.store.put(key, attrs, points)
        self.store.mark()
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        return None


class TopAgent(Agent):
    """The agent with an in-process sink instead of exporters, and no health endpoint."""

    def __init__(self, config_path: str | None, sinks: ExporterSinks, interval: float, consoles: bool = True) -> None:
        self._top_sinks = sinks
        self._top_interval = interval
        self._top_consoles = consoles
        super().__init__(config_path, export=None)

    # Agent sets `self.config` from the [agent] table (at start and at reload): top keeps it but
    # serves no health endpoint and looks for workloads at least as often as it refreshes.
    @property
    def config(self) -> AgentConfig:
        return self._top_config

    @config.setter
    def config(self, value: AgentConfig) -> None:
        self._top_config = dataclasses.replace(
            value, health="", discovery_interval=min(value.discovery_interval, self._top_interval)
        )

    def _pipeline(self, settings: Settings) -> Pipeline:
        core = dataclasses.replace(
            settings.core, export=(), interval=self._top_interval, export_interval=self._top_interval
        )
        return Pipeline(dataclasses.replace(settings, core=core), export=[], extra_sinks=[("top", self._top_sinks)])

    def _start_streams(self, workload: Workload) -> None:
        if self._top_consoles:
            super()._start_streams(workload)


class LocalSource:
    """Measures the host in this process: `step()` discovers and scrapes what is due and hands the
    points to the store; `rows()` are every discovered workload's rows (those not scraped yet have
    only their names). Raises what `Agent` raises at start (ConfigError, PluginError, OSError)."""

    def __init__(self, config_path: str | None, interval: float, consoles: bool = True) -> None:
        self.store = Store()
        self.interval = interval
        self.agent = TopAgent(config_path, ExporterSinks(metrics=TopSink(self.store)), interval, consoles)
        self._next_discovery = 0.0

    def describe(self) -> str:
        return "this host (the agent's collectors, in this process)"

    def step(self) -> int:
        """Discover when due, scrape the due collectors, hand what was scraped to the store.
        Returns the samples collected."""
        agent = self.agent
        now = time.monotonic()
        if now >= self._next_discovery:
            agent.reconcile()
            self._next_discovery = now + agent.config.discovery_interval
            self.store.retain(instance_key(*w.key) for w in agent.workloads.values())
        samples = agent.scheduler.tick(list(agent.workloads.values()))
        if samples:
            agent.pipeline.telemetry.flush(timeout=0.0)  # to the sink's thread; never waits here
        return samples

    def measure_twice(self, timeout: float = 10.0) -> None:
        """Two scrapes an interval apart, each delivered to the store before returning (for --once)."""
        self.step()
        self.agent.pipeline.flush(timeout)
        time.sleep(self.interval)
        deadline = time.monotonic() + self.interval + timeout
        while not self.step() and time.monotonic() < deadline:
            time.sleep(min(0.05, self.agent.scheduler.wait_s()))
        self.agent.pipeline.flush(timeout)

    def wait_s(self) -> float:
        """Seconds until the next discovery or scrape is due (at most the scheduler's cap)."""
        return max(0.01, min(self._next_discovery - time.monotonic(), self.agent.scheduler.wait_s()))

    def rows(self) -> list[Row]:
        instances = self.store.snapshot()
        telemetry = self.agent.pipeline.telemetry
        for workload in list(self.agent.workloads.values()):
            key = instance_key(*workload.key)
            if key not in instances:  # found, not scraped yet: its name, kind and runtime
                instances[key] = Instance(dict(telemetry.resource_for(workload).attributes))
        return build_rows(instances)

    def close(self) -> None:
        agent = self.agent
        for workload in list(agent.workloads.values()):
            agent.pipeline.stop_streams(workload, timeout=0.2)
        agent.pipeline.close(timeout=1.0)
        for tree in (agent._containers, agent._cgroup_tree):
            if tree is not None:
                tree.close()
