"""Plugin contracts: every registered plugin loads and satisfies its contract; a third-party package
registers exactly as the built-ins do; a collector that emits undeclared telemetry fails."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path

import pytest
from support import ROOT

from uniobs.config import Settings
from uniobs.model import Instrument, Kind, MetricSpec, Sample, Workload
from uniobs.pipeline import Pipeline
from uniobs.plugin import (
    Collector,
    ConsoleParser,
    Exporter,
    PluginConfig,
    SourceUnavailable,
    StreamingCollector,
    WorkloadGone,
)
from uniobs.registry import PluginError, Registry, load_group
from uniobs.telemetry.bridge import SELF, UndeclaredTelemetry

KVM_TREE = ROOT / "tests" / "testdata" / "kvm" / "pvm-qemu-2vcpu"


def contract_workloads(child: Workload, *extra: Workload) -> list[Workload]:
    """Real workloads of every kind this machine can offer, to run each collector against.

    A new collector adds what it needs here (its tests own the fixtures); the contract test
    fails for a collector nothing exercises.
    """
    workloads = [SELF, child, *extra]
    try:
        from uniobs.host.cgroupfs import detect_layout
        from uniobs.lifecycle import discover as discovery

        workloads += discovery.discover_cgroups(detect_layout("/sys/fs/cgroup"), max_cgroups=20)
    except (ImportError, OSError):
        pass
    return workloads


def test_every_plugin_loads_and_declares_valid_unique_names() -> None:
    registry = Registry()
    assert {"console", "file", "otlp", "otlp-http", "prometheus"} <= set(registry.exporters)
    assert "process" in registry.collectors
    seen: dict[str, str] = {}
    for name, info in registry.collectors.items():
        assert info.distribution == "uniobs" or info.distribution
        assert issubclass(info.plugin.config_class, PluginConfig)
        info.plugin.config_class().validate()
        for spec in info.plugin.metrics:
            assert isinstance(spec, MetricSpec)
            assert spec.name not in seen, f"{spec.name} declared by {seen.get(spec.name)} and {name}"
            seen[spec.name] = name
    for info in registry.exporters.values():
        assert issubclass(info.plugin, Exporter)


@pytest.fixture
def qemu_workloads() -> Iterator[list[Workload]]:
    """A real TCG guest with QMP (qemu collector), and the recorded KVM debugfs VM (kvm collector)."""
    kvm_pid = json.loads((KVM_TREE / "modes.json").read_text())["pid"]
    recorded = Workload(kind=Kind.UNIKERNEL, runtime="solo5-hvt", id="recorded-kvm", pid=kvm_pid)
    qemu, kernel = shutil.which("qemu-system-x86_64"), ROOT / "examples" / "minikernel" / "build" / "minikernel.elf"
    if qemu is None or subprocess.run(["make", "-C", str(kernel.parents[1])], capture_output=True).returncode:
        yield [recorded]
        return
    sockdir = tempfile.mkdtemp(prefix="uniobs-contract-", dir="/tmp")
    sock = os.path.join(sockdir, "qmp.sock")
    vm = subprocess.Popen(
        [qemu, "-machine", "microvm", "-accel", "tcg", "-m", "64", "-nodefaults", "-nographic", "-serial", "null",
         "-qmp", f"unix:{sock},server=on,wait=off", "-kernel", str(kernel), "-append", "mode=hang"],
        stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while not os.path.exists(sock) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)  # the file appears at bind(), just before listen()
    yield [recorded, Workload(kind=Kind.UNIKERNEL, runtime="qemu", id=f"qemu-{vm.pid}", pid=vm.pid, qmp=sock)]
    vm.kill()
    vm.wait()
    shutil.rmtree(sockdir, ignore_errors=True)


def test_every_collector_emits_only_what_it_declares(
    process_workload: Workload, qemu_workloads: list[Workload]
) -> None:
    """Strict telemetry raises on an undeclared metric or attribute, so this fails for a liar."""
    netns_tree = ROOT / "tests" / "testdata" / "containers" / "netns"  # a real /proc/<pid>/net/dev, recorded
    settings = Settings(
        collectors={
            "kvm": {"debugfs": str(KVM_TREE / "sys" / "kernel" / "debug" / "kvm")},
            "netns": {"proc": str(netns_tree / "proc"), "host_netns": str(netns_tree / "proc" / "1" / "ns" / "net")},
        }
    )
    pipeline = Pipeline(settings, export=[], strict=True)
    recorded_container = Workload(kind=Kind.CONTAINER, runtime="runc", id="recorded-netns", pid=4242)
    workloads = contract_workloads(process_workload, *qemu_workloads, recorded_container)
    for collector in pipeline.collectors:
        applicable = [w for w in workloads if collector.applies_to(w)]
        assert applicable, f"collector {collector.name} has no workload in the contract test"
        samples = 0
        for workload in applicable:
            try:
                got = list(collector.collect(workload))
            except (SourceUnavailable, WorkloadGone):
                continue  # e.g. the process collector on the recorded KVM VM's pid; samples > 0 still required
            pipeline.telemetry.record(workload, got)  # raises UndeclaredTelemetry on a lie
            samples += len(got)
        assert samples > 0, f"collector {collector.name} emitted nothing"
    pipeline.close(2)


class Liar(Collector):
    name = "liar"
    metrics = (MetricSpec("liar.declared", Instrument.GAUGE, "1", "Declared."),)

    def applies_to(self, workload: Workload) -> bool:
        return True

    def collect(self, workload: Workload) -> Iterable[Sample]:
        return [Sample("liar.declared", 1), Sample("liar.undeclared", 2)]


def test_the_contract_check_catches_an_undeclared_metric() -> None:
    pipeline = Pipeline(Settings(), export=[], collectors=[], strict=True)
    pipeline.telemetry.declare(Liar.metrics, scope="liar")
    with pytest.raises(UndeclaredTelemetry, match=r"liar\.undeclared"):
        pipeline.telemetry.record(SELF, Liar().collect(SELF))
    pipeline.close(1)


THIRD_PARTY = """
from dataclasses import dataclass
from uniobs.model import Instrument, MetricSpec, Sample
from uniobs.plugin import Collector, CollectorConfig, ConsoleParser, GuestEvent, Milestone

@dataclass(frozen=True)
class WidgetConfig(CollectorConfig):
    widgets: int = 3

class WidgetCollector(Collector):
    name = "widget"
    config_class = WidgetConfig
    metrics = (MetricSpec("acme.widgets", Instrument.GAUGE, "{widget}", "Widgets in stock."),)
    def applies_to(self, workload):
        return True
    def collect(self, workload):
        return [Sample("acme.widgets", self.config.widgets)]

class AcmeOsParser(ConsoleParser):
    family = "acmeos"
    def recognises(self, line):
        return line.text.startswith("AcmeOS")
    def parse(self, line):
        if line.text.startswith("AcmeOS ready"):
            return [GuestEvent(line.time_ns, "acmeos.ready", Milestone.READY)]
        return []
"""


@pytest.fixture
def third_party(tmp_path: Path) -> Path:
    """A package installed the way pip lays one out: module + .dist-info with entry points."""
    (tmp_path / "acme_uniobs.py").write_text(textwrap.dedent(THIRD_PARTY))
    info = tmp_path / "acme_uniobs-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-uniobs\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(
        "[uniobs.collectors]\nwidget = acme_uniobs:WidgetCollector\n\n"
        "[uniobs.parsers]\nacmeos = acme_uniobs:AcmeOsParser\n"
    )
    return tmp_path


def test_a_third_party_plugin_is_loaded_like_a_builtin(third_party: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(third_party))
    registry = Registry()
    widget = registry.collectors["widget"]
    assert (widget.distribution, widget.version) == ("acme-uniobs", "1.2.3")
    assert issubclass(widget.plugin, Collector)
    parser = registry.parsers["acmeos"]
    assert issubclass(parser.plugin, ConsoleParser)
    # and its config table is validated like ours
    settings = Settings(source="t.toml", collectors={"widget": {"widgets": 5}})
    pipeline = Pipeline(settings, registry, export=[], collectors=["widget"], strict=True)
    pipeline.scrape([SELF])
    data, _ = pipeline.telemetry.metrics_data()
    values = [p.value for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
              if m.name == "acme.widgets" for p in m.data.data_points]  # fmt: skip
    assert values == [5]
    pipeline.close(1)
    # the CLI lists it with the package it came from
    env = {**os.environ, "PYTHONPATH": str(third_party)}
    out = subprocess.run([sys.executable, "-m", "uniobs.cli", "plugins"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()]
    assert ["collectors", "widget", "acme-uniobs", "1.2.3", "acme_uniobs:WidgetCollector"] in rows
    assert ["parsers", "acmeos", "acme-uniobs", "1.2.3", "acme_uniobs:AcmeOsParser"] in rows
    assert rows[[r[1] for r in rows].index("otlp")][:3] == ["exporters", "otlp", "uniobs"]


def test_a_plugin_of_the_wrong_type_is_refused_with_the_group_named() -> None:
    ep = metadata.EntryPoint(name="bogus", value="uniobs.model:Workload", group="uniobs.collectors")
    with pytest.raises(
        PluginError, match=r"'bogus'.*uniobs.collectors.*not a subclass of Collector or StreamingCollector"
    ):
        load_group("uniobs.collectors", [ep])
    missing = metadata.EntryPoint(name="gone", value="no_such_module:X", group="uniobs.exporters")
    with pytest.raises(PluginError, match="cannot be loaded: ModuleNotFoundError"):
        load_group("uniobs.exporters", [missing])


def test_streaming_collector_and_parser_contracts_are_abstract() -> None:
    for cls in (StreamingCollector, ConsoleParser, Collector, Exporter):
        with pytest.raises(TypeError):
            cls()  # type: ignore[abstract]


def test_workload_identity_is_its_key() -> None:
    a = Workload(kind=Kind.UNIKERNEL, runtime="qemu", id="qemu-1", pid=1)
    b = Workload(kind=Kind.UNIKERNEL, runtime="qemu", id="qemu-1", pid=1, qmp="/run/q.sock")
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
