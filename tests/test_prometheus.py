"""The `prometheus` exporter: the OpenTelemetry -> Prometheus mapping (specification/compatibility/
prometheus_and_openmetrics.md) checked on the text a real scrape of the endpoint returns, by
`promtool check metrics`, and by a real Prometheus server (Debian's `prometheus`) scraping the
endpoint on loopback, read back through Prometheus' own HTTP query API."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Metric,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client.parser import text_string_to_metric_families
from support import free_port, requires_prometheus

from uniobs.config import Settings
from uniobs.exporters.prometheus import PrometheusConfig, PrometheusExporter, Promotion, _Snapshot, metric_name
from uniobs.metrics import CORE_METRICS, GUEST_STATS_METRICS
from uniobs.model import Instrument, Kind, MetricSpec, Sample, Workload
from uniobs.pipeline import Pipeline
from uniobs.registry import Registry
from uniobs.telemetry.resource import SELF

pytestmark = pytest.mark.prometheus

# The labels a series of uniobs' endpoint may carry besides its data point's attributes.
SERIES_LABELS = {"job", "instance", "otel_scope_name", "le"}
requires_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not on PATH (Debian: prometheus)"
)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def scrape(pipeline: Pipeline) -> str:
    """What GET /metrics answers (the real endpoint, over TCP)."""
    port = pipeline.exporters[0][1].sink.port  # type: ignore[attr-defined]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, dict(s.labels), s.value) for f in text_string_to_metric_families(text) for s in f.samples]


def all_specs() -> list[tuple[str, MetricSpec]]:
    """(scope, spec) of every metric uniobs declares: the core's and every collector's."""
    out = [(f"core.{i}", spec) for i, (_, specs) in enumerate(CORE_METRICS) for spec in specs]
    out += [("uniobs.guest", spec) for spec in GUEST_STATS_METRICS]
    for name, entry in Registry().collectors.items():
        out += [(f"uniobs.collectors.{name}", spec) for spec in entry.plugin.metrics]
    return out


def fixtures() -> tuple[Workload, ...]:
    """A workload of every kind, two of them sharing a name (a container and the runtime CLI
    process `uniobs run` records its exit on, as uniobs/lifecycle/run.py does)."""
    pid = os.getpid()
    return (
        Workload(kind=Kind.UNIKERNEL, runtime="qemu", id="fn-4242", name="fn", pid=pid, executable="qemu-system-x86"),
        Workload(kind=Kind.CONTAINER, runtime="runc", id="c0ffee" * 4, name="fn", pid=pid, cgroup="/fn",
                 labels={"container.image.tags": "a,b"}),
        Workload(kind=Kind.PROCESS, runtime="runc", id=f"runc-{pid}", name="fn", pid=pid, executable="runc"),
        Workload(kind=Kind.CGROUP, runtime="cgroup", id="/system.slice/x.service", name="x.service",
                 cgroup="/system.slice/x.service"),
    )  # fmt: skip


def every_metric_pipeline(**exporter: Any) -> Pipeline:
    """A pipeline with one sample of every declared metric on each fixture workload, flushed twice
    (the second export carries the first one's sent counts)."""
    settings = Settings(exporters={"prometheus": exporter}) if exporter else Settings()
    pipeline = Pipeline(settings, export=["prometheus:127.0.0.1:0"], strict=True)
    specs = all_specs()
    for scope, spec in specs:
        pipeline.telemetry.declare([spec], scope=scope)
    for workload in fixtures():
        points = [Sample(s.name, 1, tuple((a, "v") for a in s.attributes)) for _, s in specs]
        pipeline.telemetry.record(workload, points)
    pipeline.flush(5)
    pipeline.flush(5)
    return pipeline


@pytest.fixture
def every_metric() -> Iterator[str]:
    pipeline = every_metric_pipeline()
    try:
        yield scrape(pipeline)
    finally:
        pipeline.close(5)


def test_endpoint_binds_loopback_by_default() -> None:
    assert PrometheusConfig().host == "127.0.0.1"


def test_resource_attributes_are_on_target_info_alone(every_metric: str) -> None:
    declared = {a for _, spec in all_specs() for a in spec.attributes}
    allowed = SERIES_LABELS | {a.replace(".", "_") for a in declared}
    targets: dict[tuple[str, str], dict[str, str]] = {}
    for name, labels, value in samples(every_metric):
        if name == "target_info":
            key = (labels["job"], labels["instance"])
            assert key not in targets, f"two target_info for {key}"
            targets[key] = labels
            assert value == 1
        else:
            assert set(labels) <= allowed, f"{name}: {sorted(set(labels) - allowed)}"
            assert labels["job"] and labels["instance"], name
    for workload in fixtures():
        info = targets[(workload.display_name, workload.id)]
        assert info["uniobs_workload_kind"] == workload.kind.value and info["host_name"]
        # job and instance carry service.name and service.instance.id: not repeated
        assert not {"service_name", "service_instance_id", "service_namespace"} & set(info)
    container = targets[("fn", "c0ffee" * 4)]
    assert container["container_id"] == "c0ffee" * 4 and container["container_image_tags"] == '["a","b"]'
    (own,) = [labels for (job, _), labels in targets.items() if job == "uniobs"]
    assert own["instance"] == f"{own['host_name']}:{SELF.pid}" and own["service_version"]
    assert len(targets) == len(fixtures()) + 1  # the fixtures and uniobs itself: each its own target


def test_names_follow_the_specification(every_metric: str) -> None:
    families = {f.name: f for f in text_string_to_metric_families(every_metric)}
    for _, spec in all_specs():
        is_gauge = spec.instrument in (Instrument.GAUGE, Instrument.UPDOWN_COUNTER)
        name = metric_name(spec.name, spec.unit, spec.instrument is Instrument.COUNTER, is_gauge)
        if spec.instrument is Instrument.COUNTER:
            name = name.removesuffix("_total")  # the parser names a counter family without it
        assert name in families, (spec.name, sorted(families))
        if name.endswith("_ratio"):
            assert spec.unit == "1" and is_gauge, spec.name
    assert {"uniobs_vm_status", "uniobs_vm_kvm_gauge", "uniobs_vm_kvm_debugfs_gauge", "uniobs_workloads"} <= set(
        families
    )
    assert not [n for n in families if n.endswith("_ratio")], "no uniobs metric is a ratio"
    assert families["process_cpu_time_seconds"].type == "counter"
    assert families["faas_init_duration_seconds"].type == "histogram"
    # unit annotations are dropped; foo/bar is foo_per_bar; units already in the name are not repeated
    assert metric_name("a.b", "{packet}", True, False) == "a_b"
    assert metric_name("net.rate", "By/s", False, True) == "net_rate_bytes_per_second"
    assert metric_name("x..y", "1", False, True) == "x_y_ratio"
    assert metric_name("uniobs.console.bytes", "By", True, False) == "uniobs_console_bytes"


def test_the_prometheus_exporter_counts_only_metrics_and_kinds_do_not_clash(every_metric: str) -> None:
    own = [(name, labels) for name, labels, _ in samples(every_metric) if labels.get("job") == "uniobs"]
    items = [labels for name, labels in own if name == "uniobs_exporter_items_total"]
    assert items and {labels["uniobs_signal"] for labels in items} == {"metrics"}
    workloads = {labels["uniobs_kind"] for name, labels in own if name == "uniobs_workloads"}
    assert workloads == {"unikernel", "container", "process", "cgroup"}


def test_promotion_copies_the_chosen_resource_attributes() -> None:
    pipeline = every_metric_pipeline(promote_resource_attributes=["host.name", "uniobs.workload.kind"])
    try:
        text = scrape(pipeline)
    finally:
        pipeline.close(5)
    for name, labels, _ in samples(text):
        if name != "target_info":
            assert labels["host_name"] and labels["uniobs_workload_kind"], name
            assert "process_pid" not in labels and "faas_instance" not in labels, name
    # uniobs' own resource is a process: its uniobs.workloads series keep the kinds they count apart
    own = [labels for name, labels, _ in samples(text) if name == "uniobs_workloads" and labels["job"] == "uniobs"]
    assert {labels["uniobs_workload_kind"] for labels in own} == {"process"}
    assert {labels["uniobs_kind"] for labels in own} == {"unikernel", "container", "process", "cgroup"}

    pipeline = every_metric_pipeline(resource_to_telemetry_conversion=True)
    try:
        text = scrape(pipeline)
    finally:
        pipeline.close(5)
    memory = {labels["instance"]: labels for name, labels, _ in samples(text) if name == "process_memory_usage_bytes"}
    assert memory["fn-4242"]["process_pid"] == str(os.getpid()) and memory["fn-4242"]["faas_name"] == "fn"


def test_promotion_is_refused_for_labels_of_the_target() -> None:
    with pytest.raises(ValueError, match="promote_resource_attributes"):
        PrometheusConfig(promote_resource_attributes=("job",)).validate()
    base = PrometheusConfig(promote_resource_attributes=("host.name",))
    config = PrometheusExporter.config_from_arg("127.0.0.1:9999", base)
    assert isinstance(config, PrometheusConfig) and config.promote_resource_attributes == ("host.name",)


def test_label_collisions_follow_the_specification() -> None:
    """Keys that map to one label are joined with `;` in key order; a data point attribute wins
    over a promoted resource attribute of the same label name; job and instance are the target's.
    Built from the SDK's own MetricsData (what a third-party caller hands the exporter)."""
    point = NumberDataPoint(
        attributes={"a.b": "dot", "a_b": "under", "cpu.mode": "user", "job": "forged"},
        start_time_unix_nano=1, time_unix_nano=2, value=3,
    )  # fmt: skip
    metric = Metric("m.x", "d", "{item}", Sum([point], AggregationTemporality.CUMULATIVE, True))
    resource = Resource({"service.name": "svc", "service.namespace": "ns", "cpu.mode": "resource", "z": True})
    scope = ScopeMetrics(InstrumentationScope("s"), [metric], "")
    snapshot = _Snapshot(Promotion(everything=True))
    snapshot.update(MetricsData([ResourceMetrics(resource, [scope], "")]))
    parsed = samples(snapshot.exposition().decode())
    (info,) = [labels for name, labels, _ in parsed if name == "target_info"]
    assert info == {"job": "ns/svc", "instance": "", "cpu_mode": "resource", "z": "true"}
    (series,) = [labels for name, labels, _ in parsed if name == "m_x_total"]
    assert series["a_b"] == "dot;under" and series["cpu_mode"] == "user"
    assert (series["job"], series["instance"]) == ("ns/svc", "")


def test_exposition_is_what_prometheus_client_writes(every_metric: str) -> None:
    """The same families through prometheus_client's own writer give the same bytes."""
    from prometheus_client import CollectorRegistry, generate_latest

    families = list(text_string_to_metric_families(every_metric))

    class Parsed:
        def collect(self) -> Iterator[Any]:
            yield from families

    registry = CollectorRegistry()
    registry.register(Parsed())
    assert generate_latest(registry).decode() == every_metric


# promtool's lint disagrees with names the OpenTelemetry conventions give (`*.count` UpDownCounters,
# which the specification's mapping keeps as they are) and with two of uniobs' metric names; these,
# and only these, are accepted. Anything else promtool says fails the test.
PROMTOOL_ACCEPTED = {
    'process_thread_count non-histogram and non-summary metrics should not have "_count" suffix',  # semconv
    'process_unix_file_descriptor_count non-histogram and non-summary metrics should not have "_count" suffix',
    'uniobs_container_pids_count non-histogram and non-summary metrics should not have "_count" suffix',
    'uniobs_vm_vcpu_count non-histogram and non-summary metrics should not have "_count" suffix',
    "uniobs_vm_kvm_gauge metric name should not include type 'gauge'",
    "uniobs_vm_kvm_debugfs_gauge metric name should not include type 'gauge'",
}


@requires_promtool
def test_promtool_finds_nothing_else_to_lint(every_metric: str) -> None:
    result = subprocess.run(["promtool", "check", "metrics"], input=every_metric, capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    problems = {line.strip() for line in (result.stdout + result.stderr).splitlines() if line.strip()}
    assert problems <= PROMTOOL_ACCEPTED, sorted(problems - PROMTOOL_ACCEPTED)
    # lint findings only (exit 3): a parse error (exit 1) would fail here
    assert result.returncode in (0, 3) and (result.returncode == 0) == (not problems), result


# --- a real Prometheus ---------------------------------------------------------------------------


@pytest.fixture
def two_endpoints(process_workload: Workload) -> Iterator[tuple[int, int, Workload]]:
    """The process collector on a real child, exported twice: as is, and with host.name promoted
    (on a second workload for the same process, so that the two targets' series differ)."""
    promoted = Workload(kind=Kind.PROCESS, runtime="test", id=f"promoted-{process_workload.pid}", name="child",
                        pid=process_workload.pid, executable="python3")  # fmt: skip
    plain = Pipeline(Settings(), export=["prometheus:127.0.0.1:0"], collectors=["process"], strict=True)
    settings = Settings(exporters={"prometheus": {"promote_resource_attributes": ["host.name"]}})
    promoting = Pipeline(settings, export=["prometheus:127.0.0.1:0"], collectors=["process"], strict=True)
    try:
        for pipeline, workload in ((plain, process_workload), (promoting, promoted)):
            pipeline.scrape([workload])
            pipeline.flush(5)
            pipeline.flush(5)
        ports = [p.exporters[0][1].sink.port for p in (plain, promoting)]  # type: ignore[attr-defined]
        yield ports[0], ports[1], promoted
    finally:
        plain.close(5)
        promoting.close(5)


@requires_prometheus
def test_real_prometheus_scrapes_and_answers_queries(
    two_endpoints: tuple[int, int, Workload], process_workload: Workload, tmp_path: Path
) -> None:
    plain_port, promoting_port, promoted = two_endpoints
    prom_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: uniobs\n"
        "    honor_labels: true\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{plain_port}', '127.0.0.1:{promoting_port}']}}]\n"
    )
    log = (tmp_path / "prometheus.log").open("wb")
    prom = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=subprocess.DEVNULL, stderr=log,
    )  # fmt: skip
    base = f"http://127.0.0.1:{prom_port}"

    def query(promql: str) -> list[Any]:
        result: list[Any] = get_json(f"{base}/api/v1/query?query={urllib.parse.quote(promql)}")["data"]["result"]
        return result

    try:
        wanted = f'process_memory_usage_bytes{{instance="{promoted.id}"}}'
        deadline = time.monotonic() + 60
        ready = False
        while time.monotonic() < deadline and not ready:
            time.sleep(1)
            try:  # both targets scraped once
                ready = len(query('process_memory_usage_bytes{job="child"}')) == 2
            except OSError:
                continue  # not listening yet
        assert ready, f"Prometheus never returned {wanted}; log: {(tmp_path / 'prometheus.log').read_text()[-2000:]}"
        (series,) = query(f'process_memory_usage_bytes{{instance="{process_workload.id}"}}')
        assert float(series["value"][1]) >= 20 << 20
        # job and instance identify the workload; its resource is not on the series
        assert series["metric"] == {
            "__name__": "process_memory_usage_bytes", "job": "child", "instance": process_workload.id,
            "otel_scope_name": "uniobs.collectors.process",
        }  # fmt: skip
        (info,) = query(f'target_info{{instance="{process_workload.id}"}}')
        assert info["metric"]["process_pid"] == str(process_workload.pid) and info["metric"]["host_name"]
        assert float(info["value"][1]) == 1
        # the join Prometheus users write to bring a resource attribute back
        joined = query(
            f'process_memory_usage_bytes{{instance="{process_workload.id}"}} '
            "* on (job, instance) group_left (process_pid) target_info"
        )
        assert [s["metric"]["process_pid"] for s in joined] == [str(process_workload.pid)]
        assert not query("count by (job, instance) (target_info) > 1"), "one target_info per job and instance"
        # the promoted attribute is on the second endpoint's series, and on them alone
        (promoted_series,) = query(wanted)
        assert promoted_series["metric"]["host_name"] == info["metric"]["host_name"]
        assert "process_pid" not in promoted_series["metric"]
        # counters get _total and the unit suffix
        cpu = query(f'process_cpu_time_seconds_total{{instance="{process_workload.id}"}}')
        assert {s["metric"]["cpu_mode"] for s in cpu} == {"user", "system"}
        signals = {
            s["metric"]["uniobs_signal"] for s in query('uniobs_exporter_items_total{uniobs_exporter="prometheus"}')
        }
        assert signals == {"metrics"}, "Prometheus never receives logs or traces"
        targets = get_json(f"{base}/api/v1/targets")["data"]["activeTargets"]
        assert [t["health"] for t in targets] == ["up", "up"]
    finally:
        prom.terminate()
        prom.wait(10)
        log.close()
