"""`uniobs agent`: the long-running host collector.

One loop on the main thread: every `discovery_interval` it finds the host's workloads (VMMs the
installed runtimes recognise in /proc: QEMU, hvt tenders...; containers from the runtimes' state
and the cgroup tree, optionally plain cgroups), starts the streams of new ones (consoles it can
reach) and ends the series of those that went away; collectors run on their own intervals, each
collect() bounded by its timeout (`uniobs.scheduler`); telemetry is handed to the export workers
(bounded queues, retry with back-off) without ever waiting on a backend. A health endpoint on
loopback says whether exports are succeeding. SIGTERM flushes within `shutdown_timeout`; SIGHUP
re-reads the configuration and rebuilds the pipeline (a bad new file keeps the old one).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from uniobs.config import DEFAULT_EXPORT, ConfigError, Settings, build, export_specs, load
from uniobs.host.cgroupfs import CgroupTree
from uniobs.model import LogEvent, Workload
from uniobs.pipeline import Pipeline
from uniobs.plugin import PluginConfig
from uniobs.registry import PluginError
from uniobs.runtimes.select import Runtimes
from uniobs.scheduler import Scheduler

log = logging.getLogger("uniobs.agent")

STREAM_RETRIES = 10  # discovery rounds to wait for a new VMM's console socket to listen


@dataclass(frozen=True)
class AgentConfig(PluginConfig):
    discovery_interval: float = 5.0  # seconds between looks for new and vanished workloads
    health: str = "127.0.0.1:13133"  # the health endpoint; "" turns it off
    vmms: bool = True  # VMMs an installed runtime recognises in /proc: QEMU, hvt tenders...
    containers: bool = True  # runc, crun, containerd, Docker, Podman, Kubernetes
    cgroups: bool = False  # every other cgroup too (systemd services...)
    max_workloads: int = 5000
    shutdown_timeout: float = 10.0  # SIGTERM: how long to spend flushing
    unhealthy_after: float = 60.0  # seconds of failing exports before /healthz says 503

    def validate(self) -> None:
        if self.discovery_interval <= 0 or self.shutdown_timeout <= 0:
            raise ValueError("discovery_interval, shutdown_timeout: must be > 0 seconds")
        if self.max_workloads < 1:
            raise ValueError("max_workloads: must be >= 1")
        if self.health:
            _host, sep, port = self.health.rpartition(":")
            if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
                raise ValueError(f"health: expected HOST:PORT, got {self.health!r}")


def load_agent(path: str | None) -> tuple[Settings, AgentConfig]:
    """The settings and the checked [agent] table (file, then UNIOBS__AGENT__* variables)."""
    settings = load(path, extra_tables=("agent",))
    table = settings.extra.get("agent", {})
    return settings, build(AgentConfig, table, f"{settings.source}: [agent]", settings.table_origins("agent"))


class Health:
    """GET /healthz: 200 when every exporter delivered recently, 503 otherwise, with the details."""

    def __init__(self, address: str, status: Callable[[], tuple[bool, dict[str, Any]]]) -> None:
        host, _, port = address.rpartition(":")
        get = status

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] not in ("/healthz", "/"):
                    self.send_error(404)
                    return
                ok, body = get()
                payload = json.dumps(body, indent=2).encode()
                self.send_response(200 if ok else 503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        try:
            self.server = ThreadingHTTPServer((host.strip("[]") or "127.0.0.1", int(port)), Handler)
        except OSError as exc:  # in use, not an address of this host: say which, and what it is for
            why = exc.strerror or exc
            raise ConfigError(
                f"cannot listen on {address} (the agent's health endpoint, [agent] health): {why}"
            ) from None
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="uniobs-health", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Agent:
    def __init__(self, config_path: str | None, export: list[str] | None = None) -> None:
        self.config_path = config_path
        self.export = export
        self.settings, self.config = load_agent(config_path)
        self.pipeline = self._pipeline(self.settings)
        self.workloads: dict[tuple[str, str, str], Workload] = {}
        self.scheduler = Scheduler(self.pipeline)
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._started = time.monotonic()
        self._containers: Any = None
        self._cgroup_tree: CgroupTree | None = None  # plain cgroups without container discovery
        self._runtimes = Runtimes(self.pipeline.registry.runtimes)  # which processes are VMMs
        self.health = Health(self.config.health, self.status) if self.config.health else None
        self._stream_retries: dict[tuple[str, str, str], int] = {}  # consoles not reachable yet
        self._discovery_rounds = 0  # discovery rounds and the CPU (s) they took, for the health endpoint
        self._discovery_cpu = 0.0

    def _pipeline(self, settings: Settings) -> Pipeline:
        specs, _chosen_by = export_specs(self.export or (), settings, [DEFAULT_EXPORT])
        return Pipeline(settings, export=specs)

    # -- discovery

    def discover(self) -> list[Workload]:
        found: list[Workload] = []
        layout = None
        if self.config.containers or self.config.cgroups:
            from uniobs.host.cgroupfs import detect_layout

            try:
                layout = detect_layout()
            except OSError:
                layout = None
        if self.config.vmms:
            found += [info.workload() for info in self._runtimes.discover()]
        walked = None  # the plain cgroups container discovery's walk found: one walk per round
        if self.config.containers:
            from uniobs.containers.discovery import ContainerDiscovery

            if self._containers is None:
                self._containers = ContainerDiscovery(layout, watch=True)
            try:
                found += self._containers.discover(self.config.max_workloads)
                if self._containers.layout == layout:
                    walked = self._containers.unclaimed
            except OSError as exc:
                log.warning("container discovery failed: %s", exc)
        if self.config.cgroups and layout is not None:
            from uniobs.lifecycle import discover as discovery

            claimed = {path for w in found for path in w.cgroup_paths}  # every hierarchy's path
            if walked is None:
                if self._cgroup_tree is None or self._cgroup_tree.layout != layout:
                    if self._cgroup_tree is not None:
                        self._cgroup_tree.close()
                    self._cgroup_tree = CgroupTree(layout, self.config.max_workloads)
                self._cgroup_tree.max_cgroups = self.config.max_workloads
                walked = discovery.discover_cgroups(layout, tree=self._cgroup_tree)
            found += [w for w in walked if w.cgroup not in claimed]
        unique: dict[tuple[str, str, str], Workload] = {}
        for workload in found:
            unique.setdefault(workload.key, workload)
        if len(unique) > self.config.max_workloads:
            log.warning("%d workloads found; following the first %d", len(unique), self.config.max_workloads)
        return list(unique.values())[: self.config.max_workloads]

    def reconcile(self) -> None:
        started = time.thread_time()
        current = {w.key: w for w in self.discover()}
        self._discovery_rounds += 1
        self._discovery_cpu += time.thread_time() - started
        now = time.monotonic_ns()
        for key in [k for k in self.workloads if k not in current]:
            gone = self.workloads.pop(key)
            self.pipeline.telemetry.log(gone, LogEvent(now, "workload vanished", event_name="uniobs.vanished"))
            self.pipeline.retire(gone)  # its console's backlog is still read; then its series end
            log.info("%s %s: gone", gone.kind.value, gone.display_name)
        for key, workload in current.items():
            if key in self.workloads:
                if key in self._stream_retries:
                    self._start_streams(workload)
                continue
            self.workloads[key] = workload
            self.pipeline.telemetry.log(workload, LogEvent(now, "workload discovered", event_name="uniobs.discovered"))
            self._stream_retries[key] = 0
            self._start_streams(workload)
            log.info("%s %s: following", workload.kind.value, workload.display_name)
        for key in [k for k in self._stream_retries if k not in self.workloads]:
            del self._stream_retries[key]

    def _start_streams(self, workload: Workload) -> None:
        """Start its console; a VMM found right after its exec may not listen yet: retried a while."""
        try:
            self.pipeline.start_streams(workload)
        except OSError as exc:
            tries = self._stream_retries.get(workload.key, 0) + 1
            if tries >= STREAM_RETRIES:
                log.info("%s: console not captured: %s", workload.display_name, exc)
                self._stream_retries.pop(workload.key, None)
            else:
                self._stream_retries[workload.key] = tries
            return
        self._stream_retries.pop(workload.key, None)

    # -- the loop

    def run(self) -> int:
        main_thread = threading.current_thread() is threading.main_thread()
        if main_thread:
            signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
            signal.signal(signal.SIGINT, lambda *_: self._stop.set())
            signal.signal(signal.SIGHUP, lambda *_: self._reload.set())
        next_discovery = 0.0
        log.info("agent started: exporting to %s", ", ".join(self.pipeline.describe_exporters()))
        while not self._stop.is_set():
            if self._reload.is_set():
                self._reload.clear()
                self.reload()
            now = time.monotonic()
            if now >= next_discovery:
                self.reconcile()
                next_discovery = now + self.config.discovery_interval
            # collectors on their intervals, hand-over to the exporters, vanished workloads settled
            self.scheduler.tick(list(self.workloads.values()))
            self._stop.wait(max(0.0, min(next_discovery - time.monotonic(), self.scheduler.wait_s())))
        return self.shutdown()

    def shutdown(self) -> int:
        """Flush what is buffered within shutdown_timeout, then exit."""
        deadline = time.monotonic() + self.config.shutdown_timeout
        for workload in list(self.workloads.values()):
            self.pipeline.stop_streams(workload, timeout=0.5)
            self.pipeline.snapshot_streams(workload)
        left = max(0.1, deadline - time.monotonic())
        delivered = self.pipeline.flush(left * 0.8)
        self.pipeline.close(max(0.1, deadline - time.monotonic()))
        if self.health is not None:
            self.health.close()
        for tree in (self._containers, self._cgroup_tree):
            if tree is not None:
                tree.close()  # the inotify watches
        handed = dict(self.pipeline.telemetry.buffer.handed)
        final = {
            name: {"sent": dict(st.sent), "failed": dict(st.failed), "dropped": dict(st.dropped), "handed": handed}
            for name, st in self.pipeline.telemetry.stats().items()
        }
        lost = sum(n for st in final.values() for key in ("dropped", "failed") for n in st[key].values())
        # one machine-readable line: what was delivered and, exactly, what was lost
        print(f"uniobs agent: stopped; {'all delivered' if delivered and not lost else f'{lost} items lost'}; "
              f"final {json.dumps(final, sort_keys=True)}", file=sys.stderr, flush=True)  # fmt: skip
        return 0

    def reload(self) -> None:
        try:
            settings, config = load_agent(self.config_path)
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            return
        # The old pipeline goes first: its listeners (a Prometheus port) must be free for the new.
        old = self.pipeline
        for workload in self.workloads.values():
            old.stop_streams(workload, timeout=0.5)
        old.flush(2.0)
        old.close(2.0)
        try:
            pipeline = self._pipeline(settings)
        except (ConfigError, PluginError, OSError) as exc:
            log.error("reload failed, back to the previous configuration: %s", exc)
            settings, config = self.settings, self.config
            pipeline = self._pipeline(settings)
        self.pipeline, self.settings = pipeline, settings
        if config.health != self.config.health:
            log.warning("health: a new address takes a restart; still serving %s", self.config.health)
            config = dataclasses.replace(config, health=self.config.health)
        self.config = config
        self.scheduler = Scheduler(pipeline)  # every collector due now, at its new interval
        for workload in self.workloads.values():
            try:
                pipeline.start_streams(workload)
            except OSError as exc:
                log.info("%s: console not captured: %s", workload.display_name, exc)
        log.warning("configuration reloaded from %s", self.config_path)

    def stop(self) -> None:
        self._stop.set()

    # -- health

    def _discovery_status(self) -> dict[str, Any]:
        """Rounds and their CPU (s); the cgroup tree's full walks (the other rounds were answered
        from inotify events), the CPU of one (ms, mean; None when not watching) and whether it is
        watched."""
        trees = [t for t in (getattr(self._containers, "_tree", None), self._cgroup_tree) if t is not None]
        walks = sum(t.full_walks for t in trees if t.watching)
        return {
            "rounds": self._discovery_rounds,
            "cpu_s": round(self._discovery_cpu, 6),
            "full_walks": sum(t.full_walks for t in trees),
            "full_walk_ms": round(sum(t.full_walk_cpu_s for t in trees) / walks * 1e3, 3) if walks else None,
            "watching": any(t.watching for t in trees),
        }

    def status(self) -> tuple[bool, dict[str, Any]]:
        now = time.monotonic()
        exporters = {}
        healthy = True
        for name, stats in self.pipeline.telemetry.stats().items():
            # since the first failed delivery of the signals failing now (the export threads note
            # when), not since this poll first saw it: a poll every minute must not read 0 s
            since = [stats.failing_since[s] for s in stats.failing if s in stats.failing_since]
            failing_for = max(0.0, now - min(since)) if since and not stats.healthy else 0.0
            ok = failing_for < self.config.unhealthy_after
            healthy = healthy and ok
            worker = next((w for w in self.pipeline.telemetry.workers if w.name == name), None)
            exporters[name] = {
                "healthy": ok, "delivering": stats.healthy, "failing_for_s": round(failing_for, 1),
                "queued_items": worker.queued_items() if worker is not None else 0,
                "last_error": stats.last_error, "errors": dict(stats.errors), "sent": dict(stats.sent),
                "failed": dict(stats.failed), "dropped": dict(stats.dropped), "retries": dict(stats.retries),
            }  # fmt: skip
        buffer = self.pipeline.telemetry.buffer
        return healthy, {
            "status": "ok" if healthy else "exports failing",
            "uptime_s": round(now - self._started, 1),
            "workloads": len(self.workloads),
            "discovery": self._discovery_status(),
            "threads": {t.name: t.native_id for t in threading.enumerate()},  # for per-thread CPU (benches)
            "retiring": self.pipeline.retiring(),
            "buffer": {"used_bytes": buffer.used, "peak_bytes": buffer.peak, "limit_bytes": buffer.budget},
            "exporters": exporters,
        }
