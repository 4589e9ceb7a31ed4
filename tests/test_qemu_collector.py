"""The qemu collector (QMP) and the kvm collector (debugfs).

Real guests: examples/minikernel under QEMU 7.2 with TCG (`-machine microvm -smp 2 -m 64`),
collected through the pipeline in strict mode. The KVM paths that TCG cannot exercise run on
recordings: QMP `query-stats` replayed by a fake QMP server (tests/testdata/qmp), and a KVM
debugfs tree (tests/testdata/kvm); both SOURCE.md files say where they come from.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
from support import ROOT, requires_qemu

import uniobs.collectors.kvm as kvm_module
from uniobs.collectors.kvm import KvmCollector, KvmConfig
from uniobs.collectors.qemu import VM_STATUS, QemuCollector, QemuConfig, event_log, select_stats, stat_samples
from uniobs.config import Settings
from uniobs.host.procfs import ProcFS
from uniobs.model import Kind, Severity, Workload
from uniobs.pipeline import Pipeline
from uniobs.plugin import ExporterSinks, SourceUnavailable, WorkloadGone
from uniobs.runtimes.qmp import QmpBusy, QmpClient, parse_event, parse_stats, parse_stats_schemas
from uniobs.telemetry.bridge import Telemetry

sys.path.insert(0, str(Path(__file__).parent))
from test_qmp import FakeQmp, Peer, line  # the fake QMP server

QMP_DATA = ROOT / "tests" / "testdata" / "qmp"
KVM_TREE = ROOT / "tests" / "testdata" / "kvm" / "pvm-qemu-2vcpu"
KERNEL_DIR = ROOT / "examples" / "minikernel"
KERNEL = KERNEL_DIR / "build" / "minikernel.elf"
QEMU = shutil.which("qemu-system-x86_64")


def recorded(name: str) -> Any:
    return json.loads((QMP_DATA / name).read_text())


# --- events as log records ------------------------------------------------------------------


def test_shutdown_event_becomes_a_log_record() -> None:
    event = parse_event(recorded("tcg-events-sigterm.json")[0], arrival_monotonic_ns=123)
    record = event_log(event)
    assert record.event_name == "qemu.shutdown"
    assert record.time_ns == 123
    assert record.severity is Severity.INFO
    attrs = dict(record.attributes)
    assert attrs["qemu.shutdown.reason"] == "host-signal"
    assert attrs["qemu.shutdown.guest"] is False
    assert attrs["qemu.event.timestamp"] == event.qemu_timestamp_s
    assert record.body == 'SHUTDOWN {"guest":false,"reason":"host-signal"}'


def test_event_severities_and_nested_data() -> None:
    pause, hyperv, shutdown = [event_log(parse_event(m, 0)) for m in recorded("docs-events-guest-panicked.json")]
    assert pause.event_name == "qemu.guest_panicked" and pause.severity is Severity.ERROR
    assert dict(pause.attributes)["qemu.guest_panicked.action"] == "pause"
    attrs = dict(hyperv.attributes)
    assert attrs["qemu.guest_panicked.info.type"] == "hyper-v" and attrs["qemu.guest_panicked.info.arg5"] == 5
    assert shutdown.severity is Severity.ERROR  # SHUTDOWN reason=guest-panic
    reset = event_log(parse_event(recorded("tcg-events-guest-reset-loop.json")[0], 0))
    assert (reset.event_name, reset.severity) == ("qemu.reset", Severity.WARN)
    stop = event_log(parse_event({"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 0}}, 0))
    assert (stop.event_name, stop.severity, stop.body) == ("qemu.stop", Severity.WARN, "STOP")
    flood = event_log(parse_event({"event": "X-VENDOR", "data": {f"k-{i}": i for i in range(100)}}, 0))
    assert len(flood.attributes) <= 17 and flood.event_name == "qemu.x_vendor"


# --- query-stats selection (recorded KVM replies) -------------------------------------------


def test_query_stats_types_map_to_counters_and_gauges() -> None:
    schemas = select_stats(parse_stats_schemas(recorded("kvm-query-stats-schemas.json")["return"]), 64)
    assert ("vcpu", "halt_wait_hist") not in schemas  # histograms are skipped
    assert len({name for _, name in schemas}) == 60  # 16 + 47 - 3 histograms
    vcpu0 = next(r for r in parse_stats(recorded("kvm-query-stats-vcpu.json")["return"]) if r.qom_path.endswith("[0]"))  # type: ignore[union-attr]
    samples = {
        (s.metric, dict(s.attributes)["uniobs.kvm.stat"]): s for s in stat_samples(schemas, "vcpu", "0", vcpu0.values)
    }
    exits = samples[("uniobs.vm.kvm.stat", "exits")]
    assert exits.value == 1914 and dict(exits.attributes)["uniobs.vm.vcpu"] == "0"
    assert samples[("uniobs.vm.kvm.stat", "halt_wait_ns")].value == 456657983
    assert samples[("uniobs.vm.kvm.gauge", "guest_mode")].value == 0
    assert ("uniobs.vm.kvm.gauge", "blocking") in samples
    (vm,) = parse_stats(recorded("kvm-query-stats-vm.json")["return"])
    vm_samples = {dict(s.attributes)["uniobs.kvm.stat"]: s for s in stat_samples(schemas, "vm", "vm", vm.values)}
    assert vm_samples["pages_4k"].metric == "uniobs.vm.kvm.gauge"
    assert vm_samples["max_mmu_rmap_size"].metric == "uniobs.vm.kvm.gauge"  # peak
    assert vm_samples["mmu_cache_miss"].metric == "uniobs.vm.kvm.stat" and vm_samples["mmu_cache_miss"].value == 4


def test_query_stats_names_are_capped_vm_first() -> None:
    schemas = select_stats(parse_stats_schemas(recorded("kvm-query-stats-schemas.json")["return"]), 20)
    names = {name for _, name in schemas}
    assert len(names) == 20
    assert {name for target, name in schemas if target == "vm"} <= names and len(
        [t for t, _ in schemas if t == "vm"]
    ) == 16


# --- the collector against a fake QMP server replaying KVM --------------------------------


@pytest.fixture
def sock_path() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="uniobs-qemu-", dir="/tmp")
    yield os.path.join(d, "qmp.sock")
    shutil.rmtree(d, ignore_errors=True)


def kvm_replay(peer: Peer) -> None:
    """Answers every query from the KVM recordings, with a RESET event before the first reply."""
    answers = {
        "query-status": "kvm-query-status.json",
        "query-cpus-fast": "kvm-query-cpus-fast.json",
        "query-memory-size-summary": "kvm-query-memory-size-summary.json",
        "query-balloon": "kvm-devices-query-balloon.json",
        "query-blockstats": "kvm-devices-query-blockstats.json",
        "query-stats-schemas": "kvm-query-stats-schemas.json",
        "query-stats/vm": "kvm-query-stats-vm.json",
        "query-stats/vcpu": "kvm-query-stats-vcpu.json",
    }
    peer.handshake()
    first = True
    while True:
        cmd = peer.read_command()
        key = cmd["execute"] + (f"/{cmd['arguments']['target']}" if "arguments" in cmd else "")
        reply = recorded(answers[key])
        reply["id"] = cmd["id"]
        if first:
            peer.send(line(recorded("tcg-events-guest-reset-loop.json")[0]))
            first = False
        peer.send(line(reply))


def test_collector_on_replayed_kvm_replies(sock_path: str, caplog: pytest.LogCaptureFixture) -> None:
    server = FakeQmp(sock_path, kvm_replay)
    collector = QemuCollector()
    workload = Workload(kind=Kind.UNIKERNEL, runtime="qemu", id="replay", qmp=sock_path)
    telemetry = Telemetry(strict=True)
    telemetry.declare(collector.metrics, scope="uniobs.collectors.qemu")
    with caplog.at_level(logging.INFO, logger="uniobs.collectors.qemu"):
        for _ in range(2):
            samples = list(collector.collect(workload))
            telemetry.record(workload, samples)  # strict: raises on anything undeclared
    by = {(s.metric, s.attributes): s.value for s in samples}
    assert by[("uniobs.vm.status", (("uniobs.vm.status", "running"),))] == 1
    assert by[("uniobs.vm.memory.size", ())] == 64 << 20
    assert by[("uniobs.vm.memory.balloon", ())] == 64 << 20
    assert by[("uniobs.vm.disk.io", (("disk.io.direction", "read"), ("uniobs.vm.device", "d0")))] == 0
    assert by[("uniobs.vm.disk.operations", (("disk.io.direction", "flush"), ("uniobs.vm.device", "d0")))] == 0
    assert by[("uniobs.vm.kvm.stat", (("uniobs.kvm.stat", "exits"), ("uniobs.vm.vcpu", "0")))] == 1914
    assert by[("uniobs.vm.kvm.stat", (("uniobs.kvm.stat", "exits"), ("uniobs.vm.vcpu", "1")))] == 0
    assert by[("uniobs.vm.kvm.stat", (("uniobs.kvm.stat", "mmu_cache_miss"), ("uniobs.vm.vcpu", "vm")))] == 4
    assert by[("uniobs.vm.kvm.gauge", (("uniobs.kvm.stat", "guest_mode"), ("uniobs.vm.vcpu", "1")))] == 0
    assert len({s.attributes for s in samples if s.metric.startswith("uniobs.vm.kvm")}) == 16 + 2 * 44
    # The recorded thread ids are not threads of the fake server's process (our pid, via SO_PEERCRED):
    # no vCPU time, said once, not an error.
    assert not any(s.metric == "uniobs.vm.vcpu.time" for s in samples)
    assert caplog.text.count("is not a thread of pid") == 1
    events = list(collector.events(workload))
    assert [e.event_name for e in events] == ["qemu.reset"]
    assert list(collector.events(workload)) == []
    collector.close()
    server.close()
    # events = false: another reader reports them (e.g. a launcher watching a second -qmp socket)
    server = FakeQmp(sock_path + ".2", kvm_replay)
    quiet = QemuCollector(QemuConfig(events=False))
    list(quiet.collect(Workload(kind=Kind.UNIKERNEL, runtime="qemu", id="quiet", qmp=sock_path + ".2")))
    assert list(quiet.events(Workload(kind=Kind.UNIKERNEL, runtime="qemu", id="quiet", qmp=sock_path + ".2"))) == []
    quiet.close()
    server.close()


def test_status_history_device_cap_and_event_flood(sock_path: str, caplog: pytest.LogCaptureFixture) -> None:
    """A paused-then-running VM, 20 block devices, and 1000 events between two scrapes."""
    statuses = iter(["paused", "running"])
    reset = recorded("tcg-events-guest-reset-loop.json")[0]
    device = recorded("tcg-devices-query-blockstats.json")["return"][0]

    def script(peer: Peer) -> None:
        peer.handshake()
        while True:
            cmd = peer.read_command()
            name = cmd["execute"]
            if name == "query-status":
                status = next(statuses)
                value: Any = {"status": status, "running": status == "running", "singlestep": False}
                peer.send(line(reset) * (1000 if status == "running" else 0))
            elif name == "query-blockstats":
                value = [{**device, "device": f"disk{i}"} for i in range(20)]
            elif name == "query-balloon":
                peer.send(line({"id": cmd["id"], "error": {"class": "CommandNotFound", "desc": "no"}}))
                continue
            else:
                value = recorded(f"tcg-{name}.json")["return"]
            peer.send(line({"return": value, "id": cmd["id"]}))

    server = FakeQmp(sock_path, script)
    collector = QemuCollector()
    workload = Workload(kind=Kind.UNIKERNEL, runtime="qemu", id="fake", qmp=sock_path)
    with caplog.at_level(logging.INFO, logger="uniobs.collectors.qemu"):
        first = list(collector.collect(workload))
        assert list(collector.events(workload)) == []
        second = list(collector.collect(workload))
    status = {dict(s.attributes)["uniobs.vm.status"]: s.value for s in second if s.metric == "uniobs.vm.status"}
    assert status == {"paused": 0, "running": 1}  # the earlier state goes to 0, not stale at 1
    assert [s.value for s in first if s.metric == "uniobs.vm.status"] == [1]
    devices = {dict(s.attributes)["uniobs.vm.device"] for s in second if s.metric == "uniobs.vm.disk.io"}
    assert devices == {f"disk{i}" for i in range(16)}
    assert caplog.text.count("20 block devices, reporting the first 16") == 1
    assert caplog.text.count("no balloon figures (CommandNotFound)") == 1
    events = list(collector.events(workload))
    assert [e.event_name for e in events[:-1]] == ["qemu.reset"] * 256
    assert events[-1].event_name == "qemu.events_dropped" and events[-1].body.startswith("744 QMP events")
    collector.close()
    server.close()


class ScriptedVm:
    """A fake QEMU answering every query from what a test sets: the run state, the block devices,
    and an event (a STOP, or whichever) sent before or just after the reply to a given command;
    `asked` records the commands, in order."""

    def __init__(self, status: str = "running", disks: int = 0) -> None:
        self.status, self.disks = status, disks
        self.event: dict[str, Any] = {"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 0}}
        self.before = ""  # the command whose reply the event comes before
        self.after = ""  # the command whose reply the event comes just after, in the same write
        self.asked: list[str] = []
        self._device = recorded("tcg-devices-query-blockstats.json")["return"][0]

    def __call__(self, peer: Peer) -> None:
        peer.handshake()
        while True:
            cmd = peer.read_command()
            name = cmd["execute"]
            self.asked.append(name)
            value: Any
            if name == "query-status":
                value = {"status": self.status, "running": self.status == "running", "singlestep": False}
            elif name == "query-blockstats":
                value = [{**self._device, "device": f"disk{i}"} for i in range(self.disks)]
            elif name == "query-balloon":
                value = {"actual": 64 << 20}
            else:
                value = recorded(f"tcg-{name}.json")["return"]
                if name == "query-cpus-fast":  # threads of ours (the server's peer pid): their times are read
                    value = [{**cpu, "thread-id": os.getpid()} for cpu in value]
            reply = line({"return": value, "id": cmd["id"]})
            if self.before == name:
                self.before = ""
                reply = line(self.event) + reply
            if self.after == name:
                self.after = ""
                reply += line(self.event)
            peer.send(reply)


def test_only_what_may_have_changed_is_asked(sock_path: str) -> None:
    """What each scrape asks (QEMU spends ~0.3 ms of CPU per command): the vCPU list, memory size
    and balloon after an event, a reconnect or `static_refresh` scrapes; the run state after an
    event, at every scrape while not running, and every `status_refresh` scrapes while running;
    block counters at every scrape once a device exists (a plugged disk sends no event), an empty
    list with the run state. A quiet running VM without disks is asked nothing."""
    vm = ScriptedVm()
    vm.event = recorded("tcg-events-guest-reset-loop.json")[0]
    asked = vm.asked
    server = FakeQmp(sock_path, vm, connections=2)
    collector = QemuCollector(QemuConfig(static_refresh=9, status_refresh=3))
    workload = Workload(kind=Kind.UNIKERNEL, runtime="qemu", id="fake", qmp=sock_path)
    reported: dict[str, Any] = {}

    def scrape() -> set[str]:
        asked.clear()
        samples = list(collector.collect(workload))
        metrics = {s.metric for s in samples}
        # what was not asked is still reported, from what is known
        assert {"uniobs.vm.vcpu.count", "uniobs.vm.memory.size", "uniobs.vm.vcpu.time"} <= metrics
        assert "uniobs.vm.memory.balloon" in metrics
        attributes = [(s.metric, dict(s.attributes), s.value) for s in samples]
        reported["status"] = {a[VM_STATUS] for m, a, v in attributes if m == VM_STATUS and v == 1}
        reported["disks"] = {a["uniobs.vm.device"] for m, a, _ in attributes if m == "uniobs.vm.disk.io"}
        return set(asked)

    static = {"query-cpus-fast", "query-memory-size-summary", "query-balloon"}
    everything = static | {"query-status", "query-blockstats"}
    assert scrape() == everything | {"query-stats-schemas"}  # connect: learnt (TCG: no statistics)
    assert scrape() == set()  # running, no disk, no event: nothing to ask
    assert scrape() == set()
    assert scrape() == {"query-status", "query-blockstats"}  # status_refresh = 3 scrapes
    vm.disks = 1  # plugged without an event: seen at the refresh
    assert scrape() == set() and reported["disks"] == set()
    assert scrape() == set()
    assert scrape() == {"query-status", "query-blockstats"} and reported["disks"] == {"disk0"}
    assert scrape() == {"query-blockstats"}  # a disk's counters move: asked every scrape
    vm.before = "query-blockstats"
    assert scrape() == {"query-blockstats"}  # the RESET arrives with this scrape's replies...
    assert scrape() == everything  # ...so the next one asks it all again
    vm.status = "paused"  # paused by another client: an event comes first
    vm.before = "query-blockstats"
    assert scrape() == {"query-blockstats"} and reported["status"] == {"running"}
    assert scrape() == everything and reported["status"] == {"paused"}
    vm.status = "postmigrate"  # stopped states change without an event: asked every scrape
    assert scrape() == {"query-status", "query-blockstats"} and reported["status"] == {"postmigrate"}
    vm.status = "running"
    vm.disks = 0
    assert scrape() == {"query-status", "query-blockstats"} and reported["status"] == {"running"}
    assert reported["disks"] == set()
    assert scrape() == set()
    assert scrape() == set()
    assert scrape() == {"query-status", "query-blockstats"}
    assert scrape() == set()
    assert scrape() == set()
    assert scrape() == {"query-status", "query-blockstats"}
    assert scrape() == everything  # static_refresh = 9 scrapes since the last full ask
    collector._disconnect(collector._vms[workload.key])  # a dropped connection
    assert scrape() == everything | {"query-stats-schemas"}
    collector.close()
    server.close()


def test_prepared_queries_are_answered_before_collect_reads_them(sock_path: str) -> None:
    """prepare() sends the scrape's due queries without waiting and collect() reads the replies.
    When an event arrives before them, what the prepared batch left out may have changed:
    collect() asks again at once (here the run state of a VM paused meanwhile)."""
    vm = ScriptedVm(disks=1)
    asked = vm.asked
    server = FakeQmp(sock_path, vm)
    collector = QemuCollector()
    workload = Workload(kind=Kind.UNIKERNEL, runtime="qemu", id="fake", qmp=sock_path)
    collector.prepare(workload)  # not connected yet: nothing sent
    assert asked == []
    list(collector.collect(workload))

    def answered(count: int) -> None:
        deadline = time.monotonic() + 5
        while len(asked) < count:
            assert time.monotonic() < deadline
            time.sleep(0.001)

    def status_of(samples: Iterable[Any]) -> list[str]:
        return [dict(s.attributes)[VM_STATUS] for s in samples if s.metric == VM_STATUS and s.value == 1]

    asked.clear()
    collector.prepare(workload)
    answered(1)
    assert asked == ["query-blockstats"]  # the disk's counters, sent ahead
    samples = list(collector.collect(workload))
    assert asked == ["query-blockstats"] and status_of(samples) == ["running"]  # read, not asked again
    assert {dict(s.attributes)["uniobs.vm.device"] for s in samples if s.metric == "uniobs.vm.disk.io"} == {"disk0"}
    asked.clear()
    vm.status, vm.before = "paused", "query-blockstats"  # STOP before the prepared reply
    collector.prepare(workload)
    answered(1)
    samples = list(collector.collect(workload))
    assert asked[0] == "query-blockstats" and {"query-status", "query-cpus-fast"} <= set(asked[1:])
    assert status_of(samples) == ["paused"]
    assert [e.event_name for e in collector.events(workload)] == ["qemu.stop"]
    # An event just after the replies, in the same read, counts too: asked again at once, or,
    # after a batch that asked it all, at the next scrape.
    vm.status, vm.after = "running", "query-blockstats"
    collector.prepare(workload)
    answered(1)
    asked.clear()
    samples = list(collector.collect(workload))
    assert "query-status" in asked and status_of(samples) == ["running"]
    list(collector.events(workload))
    assert collector._vms[workload.key].stale is False
    asked.clear()
    collector._vms[workload.key].static_age = 10**6  # this scrape asks it all (static_refresh)
    vm.status, vm.after = "paused", "query-blockstats"
    collector.prepare(workload)
    answered(5)
    samples = list(collector.collect(workload))
    assert status_of(samples) == ["paused"] and collector._vms[workload.key].stale is True
    asked.clear()
    list(collector.collect(workload))
    assert {"query-status", "query-cpus-fast"} <= set(asked)  # the next scrape asks it all again
    collector.close()
    server.close()


def test_a_refusing_socket_is_gone_only_when_the_vmm_is(sock_path: str) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(sock_path)  # bound, not listening: a QEMU about to listen, or a SIGKILLed one's leftover
    stale.close()
    starting = Workload(kind=Kind.UNIKERNEL, runtime="qemu", id="a", pid=os.getpid(), qmp=sock_path)
    with pytest.raises(SourceUnavailable, match="refuses connections while pid"):
        QemuCollector().collect(starting)
    child = subprocess.Popen(["true"])
    child.wait()
    dead = Workload(kind=Kind.UNIKERNEL, runtime="qemu", id="b", pid=child.pid, qmp=sock_path)
    with pytest.raises(WorkloadGone, match="Connection refused"):
        QemuCollector().collect(dead)
    with pytest.raises(WorkloadGone):  # no pid to ask: the socket is all we know
        QemuCollector().collect(Workload(kind=Kind.UNIKERNEL, runtime="qemu", id="c", qmp=sock_path))


# --- real QEMU ------------------------------------------------------------------------------

qemu = requires_qemu


@pytest.fixture(scope="module")
def kernel() -> Path:
    if QEMU is None:
        pytest.skip("qemu-system-x86_64 is not on PATH")
    proc = subprocess.run(["make", "-C", str(KERNEL_DIR)], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        pytest.fail(f"make -C {KERNEL_DIR} failed:\n{proc.stdout}\n{proc.stderr}")
    return KERNEL


@dataclass
class Vm:
    proc: subprocess.Popen[bytes]
    workload: Workload

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        self.proc.wait(10)


def listening(path: str) -> bool:
    """Whether a server accepts on `path`. The probe connection is closed at once: QEMU drops it."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


@pytest.fixture
def boot(kernel: Path, sock_path: str) -> Iterator[Callable[..., Vm]]:
    vms: list[Vm] = []

    def start(append: str, *, debug_exit: bool = True, no_reboot: bool = True, extra: Sequence[str] = ()) -> Vm:
        path = sock_path if not vms else f"{sock_path}.{len(vms)}"
        assert QEMU is not None
        cmd = [
            QEMU, "-machine", "microvm", "-accel", "tcg", "-smp", "2", "-m", "64", "-nodefaults", "-nographic",
            "-serial", "null", "-qmp", f"unix:{path},server=on,wait=off", "-kernel", str(kernel), "-append", append,
        ]  # fmt: skip
        if debug_exit:
            cmd += ["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]
        if no_reboot:
            cmd.append("-no-reboot")
        proc = subprocess.Popen([*cmd, *extra], stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not listening(path):  # the file appears at bind(), a moment before listen()
            assert proc.poll() is None, f"QEMU exited with {proc.returncode}"
            assert time.monotonic() < deadline, "QEMU did not open its QMP socket"
            time.sleep(0.005)
        workload = Workload(
            kind=Kind.UNIKERNEL, runtime="qemu", id=f"qemu-{proc.pid}", name="minikernel", pid=proc.pid, qmp=path,
            executable="qemu-system-x86_64",
        )  # fmt: skip
        vm = Vm(proc, workload)
        vms.append(vm)
        return vm

    yield start
    for vm in vms:
        vm.kill()


@pytest.fixture
def logs() -> InMemoryLogRecordExporter:
    return InMemoryLogRecordExporter()


@pytest.fixture
def pipeline(logs: InMemoryLogRecordExporter) -> Iterator[Pipeline]:
    p = Pipeline(
        Settings(), export=[], collectors=["qemu", "process", "kvm"], strict=True,
        extra_sinks=[("memory", ExporterSinks(logs=logs))],
    )  # fmt: skip
    yield p
    p.close(2)


def points(pipeline: Pipeline, workload: Workload, metric: str) -> dict[tuple[tuple[str, Any], ...], tuple[Any, str]]:
    """{attributes: (value, unit)} of one metric of one workload."""
    data, _ = pipeline.telemetry.metrics_data()
    out = {}
    for rm in data.resource_metrics:
        if rm.resource.attributes.get("service.instance.id") != workload.id:
            continue
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name == metric:
                    for p in m.data.data_points:
                        out[tuple(sorted(p.attributes.items()))] = (p.value, m.unit)
    return out


def has_series(pipeline: Pipeline, workload: Workload) -> bool:
    data, _ = pipeline.telemetry.metrics_data()
    return any(rm.resource.attributes.get("service.instance.id") == workload.id for rm in data.resource_metrics)


def series_ended(pipeline: Pipeline, workload: Workload) -> bool:
    """A forgotten workload's series are exported one last time, then never again."""
    has_series(pipeline, workload)
    return not has_series(pipeline, workload)


def shutdown_logs(pipeline: Pipeline, logs: InMemoryLogRecordExporter) -> list[Any]:
    pipeline.flush(5)
    return [r.log_record for r in logs.get_finished_logs() if r.log_record.event_name == "qemu.shutdown"]


def errors_metric(pipeline: Pipeline) -> list[Any]:
    data, _ = pipeline.telemetry.metrics_data()
    return [
        p for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
        if m.name == "uniobs.collector.errors" for p in m.data.data_points
    ]  # fmt: skip


@pytest.mark.qemu
@qemu
def test_a_running_vm_through_the_pipeline(
    boot: Callable[..., Vm], pipeline: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    vm = boot("mode=ok run_ms=600000 idle=spin")  # vCPU 0 spins; vCPU 1 is never started by the guest
    w = vm.workload
    with caplog.at_level(logging.INFO):
        assert pipeline.scrape([w]) > 0
        time.sleep(0.5)
        pipeline.scrape([w])
        pipeline.scrape([w])
    times = points(pipeline, w, "uniobs.vm.vcpu.time")
    keys = {(("cpu.mode", mode), ("uniobs.vm.vcpu", cpu)) for cpu in ("0", "1") for mode in ("user", "system")}
    assert set(times) == keys
    assert {unit for _, unit in times.values()} == {"s"}
    vcpu0 = sum(v for k, (v, _) in times.items() if ("uniobs.vm.vcpu", "0") in k)
    assert vcpu0 > 0.1  # it spun for most of the last half second
    process_cpu = sum(v for v, _ in points(pipeline, w, "process.cpu.time").values())
    assert vcpu0 <= process_cpu + 0.05  # a vCPU thread is part of its process
    assert points(pipeline, w, "uniobs.vm.memory.size") == {(): (64 << 20, "By")}
    assert points(pipeline, w, "uniobs.vm.status") == {(("uniobs.vm.status", "running"),): (1, "{vm}")}
    assert points(pipeline, w, "uniobs.vm.vcpu.count") == {(): (2, "{vcpu}")}
    assert points(pipeline, w, "uniobs.vm.kvm.stat") == {}  # TCG has no query-stats
    assert points(pipeline, w, "uniobs.vm.memory.balloon") == {}  # no balloon device
    assert pipeline.error_count() == 0 and errors_metric(pipeline) == []
    # Each unavailable source is said once, not at every scrape.
    assert caplog.text.count("TCG has none") == 1
    assert caplog.text.count("no balloon figures (DeviceNotActive)") == 1
    assert caplog.text.count("kvm: minikernel:") == 1


@pytest.mark.qemu
@qemu
def test_kvm_collector_on_this_host_says_why_it_has_nothing(boot: Callable[..., Vm]) -> None:
    w = boot("mode=hang").workload
    with pytest.raises(SourceUnavailable, match=r"debugfs|lockdown|no KVM VM of pid"):
        KvmCollector().collect(w)


@pytest.mark.qemu
@qemu
def test_sigterm_gives_a_shutdown_event_and_ends_the_series(
    boot: Callable[..., Vm], pipeline: Pipeline, logs: InMemoryLogRecordExporter
) -> None:
    vm = boot("mode=hang")
    pipeline.scrape([vm.workload])
    assert has_series(pipeline, vm.workload)
    vm.kill(signal.SIGTERM)  # QEMU sends SHUTDOWN (host-signal), then exits
    pipeline.scrape([vm.workload])
    (record,) = shutdown_logs(pipeline, logs)
    assert record.attributes["qemu.shutdown.reason"] == "host-signal"
    assert record.attributes["qemu.shutdown.guest"] is False
    assert series_ended(pipeline, vm.workload)
    assert pipeline.error_count() == 0


@pytest.mark.qemu
@qemu
def test_a_guest_that_shuts_itself_down(
    boot: Callable[..., Vm], pipeline: Pipeline, logs: InMemoryLogRecordExporter
) -> None:
    # Without isa-debug-exit the guest's exit triple-faults; with -no-reboot QEMU shuts down
    # and says so: SHUTDOWN guest=true reason=guest-reset.
    vm = boot("mode=ok run_ms=1000", debug_exit=False)
    pipeline.scrape([vm.workload])
    assert vm.proc.wait(30) == 0
    pipeline.scrape([vm.workload])
    (record,) = shutdown_logs(pipeline, logs)
    assert (record.attributes["qemu.shutdown.reason"], record.attributes["qemu.shutdown.guest"]) == (
        "guest-reset",
        True,
    )
    assert series_ended(pipeline, vm.workload)
    assert pipeline.error_count() == 0


@pytest.mark.qemu
@qemu
def test_isa_debug_exit_ends_the_vm_without_an_event(
    boot: Callable[..., Vm], pipeline: Pipeline, logs: InMemoryLogRecordExporter
) -> None:
    vm = boot("mode=ok run_ms=300")
    pipeline.scrape([vm.workload])
    assert vm.proc.wait(30) == 1  # guest value 0
    pipeline.scrape([vm.workload])
    assert shutdown_logs(pipeline, logs) == []  # QEMU calls exit() directly: no SHUTDOWN
    assert series_ended(pipeline, vm.workload)
    assert pipeline.error_count() == 0


@pytest.mark.qemu
@qemu
def test_reset_events_are_warnings(
    boot: Callable[..., Vm], pipeline: Pipeline, logs: InMemoryLogRecordExporter
) -> None:
    vm = boot("mode=triplefault", no_reboot=False)  # the guest resets in a loop, every ~15 ms
    pipeline.scrape([vm.workload])
    time.sleep(0.5)
    pipeline.scrape([vm.workload])
    pipeline.flush(5)
    resets = [r.log_record for r in logs.get_finished_logs() if r.log_record.event_name == "qemu.reset"]
    assert len(resets) >= 5
    assert {r.severity_text for r in resets} == {"WARN"}
    assert {r.attributes["qemu.reset.reason"] for r in resets} == {"guest-reset"}
    assert pipeline.error_count() == 0


@pytest.mark.qemu
@qemu
def test_sigkill_between_two_scrapes(boot: Callable[..., Vm], pipeline: Pipeline) -> None:
    vm = boot("mode=hang")
    pipeline.scrape([vm.workload])
    assert has_series(pipeline, vm.workload)
    vm.kill(signal.SIGKILL)
    pipeline.scrape([vm.workload])  # nothing escapes
    assert series_ended(pipeline, vm.workload)
    assert pipeline.error_count() == 0 and errors_metric(pipeline) == []


@pytest.mark.qemu
@qemu
@pytest.mark.parametrize("at", ["query-status", "query-blockstats", "vcpu-threads"])
def test_sigkill_during_a_scrape(
    boot: Callable[..., Vm], pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, at: str
) -> None:
    vm = boot("mode=hang")
    pipeline.scrape([vm.workload])
    killed = threading.Event()

    def kill_from_a_thread() -> None:
        killer = threading.Thread(target=vm.kill)  # SIGKILL, then reap
        killer.start()
        killer.join(10)
        killed.set()

    execute, execute_many, task_times = QmpClient.execute, QmpClient.execute_many, ProcFS.task_times

    def execute_then_die(self: QmpClient, command: str, arguments: Any = None) -> Any:
        if command == at and not killed.is_set():
            kill_from_a_thread()
        return execute(self, command, arguments)

    def batch_then_die(self: QmpClient, calls: Any) -> Any:  # a scrape's queries go in one batch
        if any(command == at for command, _ in calls) and not killed.is_set():
            kill_from_a_thread()
        return execute_many(self, calls)

    def read_then_die(self: ProcFS, pid: int, tid: int) -> tuple[int, int]:
        if at == "vcpu-threads" and not killed.is_set():
            kill_from_a_thread()
        return task_times(self, pid, tid)

    monkeypatch.setattr(QmpClient, "execute", execute_then_die)
    monkeypatch.setattr(QmpClient, "execute_many", batch_then_die)
    monkeypatch.setattr(ProcFS, "task_times", read_then_die)
    for _ in range(10):  # up to the scrape that asks it: a quiet running VM is asked every status_refresh scrapes
        pipeline.scrape([vm.workload])
        if killed.is_set():
            break
    assert killed.is_set()
    assert series_ended(pipeline, vm.workload)
    assert pipeline.error_count() == 0 and errors_metric(pipeline) == []


@pytest.mark.qemu
@qemu
def test_sigkill_at_random_moments(boot: Callable[..., Vm], pipeline: Pipeline) -> None:
    rng = random.Random(7)
    for _ in range(6):
        vm = boot("mode=hang")
        pipeline.scrape([vm.workload])
        timer = threading.Timer(rng.uniform(0, 0.01), vm.kill)
        timer.start()
        deadline = time.monotonic() + 10
        while vm.proc.poll() is None:
            pipeline.scrape([vm.workload])
            assert time.monotonic() < deadline
        timer.join()
        pipeline.scrape([vm.workload])
        assert series_ended(pipeline, vm.workload)
    assert pipeline.error_count() == 0 and errors_metric(pipeline) == []


class Operator:
    """Another QMP client on a socket of its own (an operator, libvirt): it may change the VM."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.file = self.sock.makefile("rwb")
        json.loads(self.file.readline())  # greeting
        self("qmp_capabilities")

    def __call__(self, command: str, **arguments: Any) -> Any:
        self.file.write(json.dumps({"execute": command, "arguments": arguments}).encode() + b"\n")
        self.file.flush()
        while True:
            reply = json.loads(self.file.readline())
            if "event" not in reply:
                assert "return" in reply, reply
                return reply["return"]

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.mark.qemu
@qemu
def test_a_real_vm_is_asked_only_what_may_have_changed(
    kernel: Path, sock_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real QEMU (q35, a PCIe root port free for a disk). A quiet running VM is asked nothing; a
    pause and a resume by another client are seen at the next scrape (STOP, RESUME); a disk
    plugged by that client, which QEMU announces with no event, within `status_refresh` scrapes."""
    assert QEMU is not None
    operator_path = sock_path + ".operator"
    proc = subprocess.Popen(
        [QEMU, "-machine", "q35", "-accel", "tcg", "-m", "64", "-nodefaults", "-display", "none", "-serial", "null",
         "-device", "pcie-root-port,id=rp1,chassis=1", "-qmp", f"unix:{sock_path},server=on,wait=off",
         "-qmp", f"unix:{operator_path},server=on,wait=off", "-kernel", str(kernel), "-append", "mode=hang"],
        stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    asked: list[str] = []
    execute_many = QmpClient.execute_many

    def recording(self: QmpClient, calls: Any) -> Any:
        asked.extend(command for command, _ in calls)
        return execute_many(self, calls)

    monkeypatch.setattr(QmpClient, "execute_many", recording)
    collector = QemuCollector(QemuConfig(status_refresh=3))
    workload = Workload(kind=Kind.UNIKERNEL, runtime="qemu", id="q35", pid=proc.pid, qmp=sock_path)
    try:
        deadline = time.monotonic() + 10
        while not (listening(sock_path) and listening(operator_path)):
            assert proc.poll() is None and time.monotonic() < deadline, "QEMU did not open its QMP sockets"
            time.sleep(0.005)
        operator = Operator(operator_path)

        def scrape() -> tuple[list[str], str, set[str]]:
            asked.clear()
            samples = list(collector.collect(workload))
            status = [
                dict(s.attributes)["uniobs.vm.status"] for s in samples if s.metric == "uniobs.vm.status" and s.value
            ]
            disks = {dict(s.attributes)["uniobs.vm.device"] for s in samples if s.metric == "uniobs.vm.disk.io"}
            assert any(s.metric == "uniobs.vm.vcpu.time" for s in samples)
            return list(asked), status[0], disks

        assert scrape()[0]  # connect: what the VM is
        list(collector.events(workload))
        assert scrape() == ([], "running", set())  # quiet and running: nothing asked
        operator("stop")
        assert scrape()[1] == "paused"  # the STOP came first: asked at once
        assert [e.event_name for e in collector.events(workload)] == ["qemu.stop"]
        assert "query-status" in scrape()[0]  # not running: asked every scrape
        operator("cont")
        assert scrape()[1] == "running"
        assert [e.event_name for e in collector.events(workload)] == ["qemu.resume"]
        operator("blockdev-add", driver="null-co", **{"node-name": "n0", "size": 1 << 20})
        operator("device_add", driver="virtio-blk-pci", drive="n0", id="d0", bus="rp1")
        seen = [scrape()[2] for _ in range(3)]  # no event for a plugged disk: the refresh finds it
        assert seen[-1] == {"/machine/peripheral/d0/virtio-backend"}, seen
        assert list(collector.events(workload)) == []  # indeed no event
        assert scrape()[0] == ["query-blockstats"]  # a disk's counters: asked every scrape
        operator.close()
    finally:
        collector.close()
        proc.kill()
        proc.wait(10)


@pytest.mark.qemu
@qemu
def test_one_connection_kept_reopened_and_released(boot: Callable[..., Vm]) -> None:
    w = boot("mode=hang").workload
    collector = QemuCollector(QemuConfig(qmp_timeout=0.5))
    list(collector.collect(w))
    # QEMU serves one client per socket: while we are connected, another client gets no greeting.
    with pytest.raises(QmpBusy):
        QmpClient(w.qmp or "", timeout=0.5).execute("query-status")
    list(collector.collect(w))  # the same connection, still fine
    collector._vms[w.key].client.close()  # type: ignore[union-attr]  # the connection drops
    assert len(list(collector.collect(w))) > 0  # reconnected
    collector.forget(w)  # closes it: the socket is free again
    with QmpClient(w.qmp or "", timeout=2) as other:
        assert other.execute("query-status")["status"] == "running"


@pytest.mark.qemu
@qemu
def test_a_socket_held_by_another_client_is_unavailable_not_an_error(
    boot: Callable[..., Vm], caplog: pytest.LogCaptureFixture
) -> None:
    w = boot("mode=hang").workload
    holder = QmpClient(w.qmp or "")
    holder.execute("query-status")
    settings = Settings(collectors={"qemu": {"qmp_timeout": 0.3}})
    p = Pipeline(settings, export=[], collectors=["qemu"], strict=True)
    with caplog.at_level(logging.INFO, logger="uniobs.pipeline"):
        p.scrape([w])
        started = time.monotonic()
        p.scrape([w])  # not retried for busy_retry seconds: no second wait
        assert time.monotonic() - started < 0.2
    assert p.error_count() == 0
    assert caplog.text.count("another client") == 1
    holder.close()
    p.close(1)


# --- the kvm collector on recorded debugfs trees ----------------------------------------------


def recorded_tree() -> tuple[str, int, dict[str, Any]]:
    modes = json.loads((KVM_TREE / "modes.json").read_text())
    return str(KVM_TREE / "sys" / "kernel" / "debug" / "kvm"), int(modes["pid"]), modes["files"]


def unikernel(pid: int) -> Workload:
    return Workload(kind=Kind.UNIKERNEL, runtime="solo5-hvt", id=f"hvt-{pid}", pid=pid)


def test_kvm_debugfs_tree_recorded_here() -> None:
    root, pid, files = recorded_tree()
    collector = KvmCollector(KvmConfig(debugfs=root))
    samples = list(collector.collect(unikernel(pid)))
    telemetry = Telemetry(strict=True)
    telemetry.declare(collector.metrics, scope="uniobs.collectors.kvm")
    telemetry.record(unikernel(pid), samples)
    by = {dict(s.attributes)["uniobs.kvm.stat"]: s for s in samples}
    expected_counters = {
        "exits": 1863, "insn_emulation": 43201, "fpu_reload": 1872, "halt_exits": 1, "signal_exits": 20,
        "halt_wait_ns": 998895919, "mmu_cache_miss": 4, "io_exits": 0, "mmio_exits": 0,
    }  # fmt: skip
    for name, value in expected_counters.items():
        assert (by[name].metric, by[name].value) == ("uniobs.vm.kvm.debugfs.stat", value), name
    for name, value in {"blocking": 2, "guest_mode": 0, "pages_4k": 0, "max_mmu_rmap_size": 0}.items():
        assert (by[name].metric, by[name].value) == ("uniobs.vm.kvm.debugfs.gauge", value), name
    # histograms, the rmaps table and the vcpuN/ descriptions (pid, tsc-offset, ...) are not statistics
    skipped = {"halt_wait_hist", "halt_poll_fail_hist", "halt_poll_success_hist", "mmu_rmaps_stat", "pid", "tsc-offset"}
    assert not skipped & set(by)
    vm_files = {f for f in files if "/" not in f}
    assert set(by) == vm_files - skipped
    # read-only files (instant statistics, per the recorded modes) are gauges
    instant = {f for f, info in files.items() if info["mode"] == "0o444" and "/" not in f}
    assert instant <= {n for n, s in by.items() if s.metric == "uniobs.vm.kvm.debugfs.gauge"}


def test_kvm_stats_only_in_vcpu_directories_are_summed(tmp_path: Path) -> None:
    vm = tmp_path / "kvm" / "4242-11"
    for i, (exits, halts) in enumerate([(10, 1), (32, 2)]):
        (vm / f"vcpu{i}").mkdir(parents=True)
        (vm / f"vcpu{i}" / "exits").write_text(f"{exits}\n")
        (vm / f"vcpu{i}" / "halt_exits").write_text(f"{halts}\n")
        (vm / f"vcpu{i}" / "tsc-offset").write_text("-123456\n")
        (vm / f"vcpu{i}" / "pid").write_text(f"{5000 + i}\n")
    (vm / "halt_exits").write_text("99\n")  # the VM's own total wins over the vCPU files
    (vm / "remote_tlb_flush").write_text("5\n")
    (tmp_path / "kvm" / "42420-3").mkdir()  # another pid that merely starts with the same digits
    (tmp_path / "kvm" / "42420-3" / "exits").write_text("1000\n")
    samples = KvmCollector(KvmConfig(debugfs=str(tmp_path / "kvm"))).collect(unikernel(4242))
    got = {dict(s.attributes)["uniobs.kvm.stat"]: s.value for s in samples}
    assert got == {"exits": 42, "halt_exits": 99, "remote_tlb_flush": 5}


def test_kvm_debugfs_under_lockdown(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    root, pid, files = recorded_tree()
    read = kvm_module._read

    def lockdown(path: str) -> bytes:  # what this host's lockdown does: writable files are denied
        rel = path.split(f"/{pid}-", 1)[1].split("/", 1)[1]
        if files[rel]["mode"] == "0o644":
            raise PermissionError(1, "Operation not permitted", path)
        return read(path)

    monkeypatch.setattr(kvm_module, "_read", lockdown)
    collector = KvmCollector(KvmConfig(debugfs=root))
    with caplog.at_level(logging.INFO, logger="uniobs.collectors.kvm"):
        samples = list(collector.collect(unikernel(pid)))
        list(collector.collect(unikernel(pid)))
    assert {s.metric for s in samples} == {"uniobs.vm.kvm.debugfs.gauge"}  # only instant stats get through
    assert {dict(s.attributes)["uniobs.kvm.stat"] for s in samples} >= {"blocking", "pages_4k"}
    assert caplog.text.count("kernel lockdown") == 1

    def deny_all(path: str) -> bytes:
        raise PermissionError(1, "Operation not permitted", path)

    monkeypatch.setattr(kvm_module, "_read", deny_all)
    with pytest.raises(SourceUnavailable, match=r"not permitted.*lockdown"):
        collector.collect(unikernel(pid))


def test_kvm_source_unavailable_and_gone(tmp_path: Path) -> None:
    with pytest.raises(SourceUnavailable, match="no KVM debugfs"):
        KvmCollector(KvmConfig(debugfs=str(tmp_path / "absent"))).collect(unikernel(os.getpid()))
    (tmp_path / "kvm").mkdir()
    with pytest.raises(SourceUnavailable, match=f"no KVM VM of pid {os.getpid()}"):
        KvmCollector(KvmConfig(debugfs=str(tmp_path / "kvm"))).collect(unikernel(os.getpid()))
    child = subprocess.Popen(["true"])
    child.wait()
    with pytest.raises(WorkloadGone):
        KvmCollector(KvmConfig(debugfs=str(tmp_path / "kvm"))).collect(unikernel(child.pid))
    assert not KvmCollector().applies_to(Workload(kind=Kind.CONTAINER, runtime="runc", id="c", pid=1))
    with pytest.raises(ValueError, match="max_stats"):
        KvmConfig(max_stats=-1).validate()
