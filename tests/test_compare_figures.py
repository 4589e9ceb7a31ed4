"""compare's figures from exported data points, without a guest: the bridge's real MetricsData fed to
compare's in-process exporter (`Coverage`), and the figures read back from it."""

from __future__ import annotations

from uniobs.collectors.cgroup import CgroupCollector
from uniobs.collectors.process import ProcessCollector
from uniobs.compare.comparison import Coverage, _Launch, _Window, cpu_percent, figures
from uniobs.model import Kind, Sample, Workload
from uniobs.telemetry import Telemetry

S = 1_000_000_000


def test_figures_are_read_from_exported_points() -> None:
    coverage = Coverage()
    sink = coverage.sinks().metrics
    assert sink is not None
    telemetry = Telemetry()
    telemetry.declare(ProcessCollector.metrics, scope="process")
    telemetry.declare(CgroupCollector.metrics, scope="cgroup")
    ct = Workload(kind=Kind.CONTAINER, runtime="runc", id="fn-1", name="fn", pid=42, cgroup="/fn-1")
    for second, (rss, cgroup, user, system) in enumerate(
        [(100, 900, 1.0, 0.5), (300, 700, 1.25, 0.5), (200, 800, 1.5, 0.75), (999, 999, 9.0, 9.0)]
    ):
        now = (10 + second) * S
        telemetry.record(ct, [Sample("process.memory.usage", rss), Sample("container.memory.usage", cgroup)], now)
        telemetry.record(
            ct, [Sample("container.cpu.time", user, (("cpu.mode", "user"),)),
                 Sample("container.cpu.time", system, (("cpu.mode", "system"),))], now,
        )  # fmt: skip
        for _ in range(2):  # exported twice: the same points, counted once
            sink.export(telemetry.metrics_data()[0])
    window = _Window("idle", start_ns=10 * S, end_ns=12 * S, runtime_rss=[5, 7])  # the 4th instant is after it
    memory, cpu = figures(coverage, _Launch(1, "fn-1", 9 * S, container=True), window)
    assert memory == {"rss_bytes": 200, "pss_bytes": None, "cgroup_bytes": 800, "runtime_rss_bytes": 6}
    assert cpu == (2.25 - 1.5) / 2 * 100  # user + system at each instant, first to last
    assert coverage.instants("fn-1", "container.cpu.time", 10 * S, 10 * S) == [(10 * S, 1.5)]
    assert cpu_percent([(10 * S, 1.5)]) is None  # one instant: no rate
    assert figures(coverage, _Launch(1, "other", 9 * S, container=True), window)[1] is None
