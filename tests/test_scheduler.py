"""The scheduler (uniobs/scheduler.py): collectors on their own intervals, `[uniobs] interval` for
those that set none, every `collect()` bounded by its collector's timeout; and the three front-ends
(`agent`, `run`, `attach`) driven by it, with a third-party plugin installed the way pip lays one
out and the cadence read back from the exported telemetry."""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from otlpfile import Signals
from support import ROOT, free_port, requires_qemu

from uniobs.config import CoreConfig, Settings, load
from uniobs.model import Instrument, Kind, MetricSpec, Sample, Workload
from uniobs.pipeline import Pipeline
from uniobs.plugin import Collector, CollectorConfig
from uniobs.scheduler import CollectPool, CollectTimeout, Scheduler

KERNEL = ROOT / "examples" / "minikernel" / "build" / "minikernel.elf"
qemu = requires_qemu


# --- unit: one pipeline, collectors injected, a clock of our own ------------------------------


class Counting(Collector):
    """Counts its calls per workload; with `hangs`, blocks on `gate` for the workload named `stuck`."""

    def __init__(self, name: str, interval: float | None = None, timeout: float = 5.0, hangs: bool = False) -> None:
        super().__init__(CollectorConfig(interval=interval, timeout=timeout))
        self.hangs = hangs
        self.name = name
        self.metrics = (MetricSpec(f"test.{name}.collects", Instrument.COUNTER, "{collect}", "collect() calls."),)
        self.calls: dict[str, int] = {}
        self.gate = threading.Event()
        self.blocked = 0

    def applies_to(self, workload: Workload) -> bool:
        return True

    def collect(self, workload: Workload) -> Iterable[Sample]:
        if self.hangs and workload.name == "stuck":
            self.blocked += 1
            self.gate.wait(30)
        n = self.calls[workload.id] = self.calls.get(workload.id, 0) + 1
        return [Sample(f"test.{self.name}.collects", n)]


def pipeline_with(*collectors: Collector, core: CoreConfig | None = None) -> Pipeline:
    pipeline = Pipeline(Settings(core=core or CoreConfig()), export=[], collectors=[], strict=True)
    pipeline.collectors = list(collectors)
    for collector in collectors:
        pipeline.telemetry.declare(collector.metrics, scope=f"test.{collector.name}")
    return pipeline


def workload(name: str) -> Workload:
    return Workload(kind=Kind.PROCESS, runtime="test", id=name, name=name)


def errors(pipeline: Pipeline) -> dict[tuple[str, str], float]:
    data, _ = pipeline.telemetry.metrics_data()
    return {
        (dict(p.attributes)["uniobs.collector"], dict(p.attributes)["error.type"]): p.value
        for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
        if m.name == "uniobs.collector.errors" for p in m.data.data_points
    }  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_each_collector_on_its_interval_and_unset_ones_on_uniobs_interval() -> None:
    fast, slow = Counting("fast", interval=1.0), Counting("slow")
    pipeline = pipeline_with(fast, slow, core=CoreConfig(interval=2.5))
    clock = Clock()
    scheduler = Scheduler(pipeline, clock=clock)
    assert slow.config.interval == 2.5  # the collector is told the interval it runs at
    w = workload("w")
    for _ in range(21):  # t = 0 .. 10 s, every 0.5 s
        scheduler.tick([w])
        clock.now += 0.5
    assert fast.calls["w"] == 11  # 0, 1, ..., 10
    assert slow.calls["w"] == 5  # 0, 2.5, 5, 7.5, 10
    pipeline.close(1)


def test_the_commands_interval_comes_before_uniobs_interval_and_a_default_after_it() -> None:
    own, unset = Counting("own", interval=4.0), Counting("unset")
    pipeline = pipeline_with(own, unset, core=CoreConfig(interval=2.5))
    assert Scheduler(pipeline, interval=0.5).interval_of(own) == 4.0  # a collector's own interval wins
    assert Scheduler(pipeline, interval=0.5).interval == 0.5  # run/attach --interval
    assert Scheduler(pipeline).interval == 2.5  # [uniobs] interval
    bare = pipeline_with(Counting("unset"))
    assert Scheduler(bare).interval == 10.0  # the agent's default
    assert Scheduler(bare, default_interval=1.0).interval == 1.0  # run's and attach's
    pipeline.close(1)
    bare.close(1)
    # the configuration: a collector table without interval leaves it unset; [uniobs] interval is optional
    assert CollectorConfig().interval is None and CoreConfig().interval is None
    assert load(None, environ={"UNIOBS__UNIOBS__INTERVAL": "3"}).core.interval == 3.0


def test_a_late_tick_does_not_make_up_missed_scrapes() -> None:
    every = Counting("every", interval=1.0)
    pipeline = pipeline_with(every)
    clock = Clock()
    scheduler = Scheduler(pipeline, clock=clock)
    scheduler.tick([workload("w")])
    clock.now += 5.5  # the host was busy
    scheduler.tick([workload("w")])
    scheduler.tick([workload("w")])
    assert every.calls["w"] == 2
    assert scheduler.wait_s() == pytest.approx(1.0)  # the next one is an interval after the late one
    pipeline.close(1)


class Preparing(Counting):
    """Counting, with a prepare() that records its calls (and with `fails`, raises)."""

    def __init__(self, name: str, calls: list[tuple[str, str, str]], fails: bool = False, **kw: Any) -> None:
        super().__init__(name, **kw)
        self.order, self.fails = calls, fails

    def prepare(self, workload: Workload) -> None:
        self.order.append(("prepare", self.name, workload.name))
        if self.fails:
            raise RuntimeError("a broken prepare")

    def collect(self, workload: Workload) -> Iterable[Sample]:
        self.order.append(("collect", self.name, workload.name))
        return super().collect(workload)


def test_prepare_comes_first_and_the_preparing_collectors_last(caplog: pytest.LogCaptureFixture) -> None:
    """prepare() of every (collector, workload) pair before any collect(); the collectors that
    prepare are collected after the others, so their sources answer meanwhile. A pair whose last
    collect() has not returned is not prepared; a prepare() that raises is said once and the
    collect() still happens."""
    order: list[tuple[str, str, str]] = []
    ahead = Preparing("ahead", order, timeout=0.2, hangs=True)
    broken = Preparing("broken", order, fails=True)

    class Plain(Counting):
        def collect(self, workload: Workload) -> Iterable[Sample]:
            order.append(("collect", self.name, workload.name))
            return super().collect(workload)

    pipeline = pipeline_with(ahead, Plain("plain"), broken)
    a, b = workload("a"), workload("b")
    caplog.set_level(logging.INFO, logger="uniobs.pipeline")
    try:
        pipeline.scrape([a, b])
        kinds = [(kind, name) for kind, name, _ in order]
        assert kinds[:4] == [("prepare", "ahead")] * 2 + [("prepare", "broken")] * 2
        assert [name for _, name in kinds[4:]] == ["plain"] * 2 + ["ahead"] * 2 + ["broken"] * 2
        stuck = workload("stuck")
        pipeline.scrape([stuck, a])  # ahead's collect() of `stuck` hangs
        order.clear()
        pipeline.scrape([stuck, a])
        assert ("prepare", "ahead", "stuck") not in order and ("prepare", "ahead", "a") in order
        assert broken.calls == {"a": 3, "b": 1, "stuck": 2}  # collected although prepare() raised
        said = [r for r in caplog.records if "prepare() failed" in r.getMessage()]
        assert len(said) == 1 and "a broken prepare" in caplog.text
    finally:
        ahead.gate.set()
        pipeline.close(1)


def test_a_hung_collect_is_bounded_counted_and_not_piled_up(caplog: pytest.LogCaptureFixture) -> None:
    hang, other = Counting("hang", timeout=0.2, hangs=True), Counting("other")
    pipeline = pipeline_with(hang, other)
    stuck, fine = workload("stuck"), workload("fine")
    caplog.set_level(logging.INFO, logger="uniobs.pipeline")
    try:
        started = time.monotonic()
        pipeline.scrape([stuck, fine])
        assert time.monotonic() - started < 1.5  # bounded: 0.2 s, not the 30 s the call takes
        assert hang.calls == {"fine": 1} and other.calls == {"stuck": 1, "fine": 1}  # the rest carried on
        assert errors(pipeline) == {("hang", "timeout"): 1}
        threads = pipeline._pool.threads()
        for _ in range(3):  # while the call has not returned, the pair is skipped, and counted
            pipeline.scrape([stuck, fine])
        assert hang.blocked == 1 and pipeline._pool.threads() == threads  # no second call, no new thread
        assert hang.calls == {"fine": 4} and other.calls == {"stuck": 4, "fine": 4}
        assert errors(pipeline) == {("hang", "timeout"): 4}
        failed = [r for r in caplog.records if "collection failed" in r.getMessage()]
        assert len(failed) == 1 and "did not return within 0.2 s" in failed[0].getMessage()  # said once
    finally:
        hang.gate.set()
        pipeline.close(1)


def test_a_collection_recovers_after_a_timeout(caplog: pytest.LogCaptureFixture) -> None:
    hang = Counting("hang", timeout=0.2, hangs=True)
    pipeline = pipeline_with(hang)
    stuck = workload("stuck")
    caplog.set_level(logging.INFO, logger="uniobs.pipeline")
    try:
        pipeline.scrape([stuck])
        hang.gate.set()  # the call returns, late: its result is dropped
        deadline = time.monotonic() + 5
        while pipeline._pool.hung(("hang", stuck.key)) is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pipeline._pool.hung(("hang", stuck.key)) is None
        pipeline.scrape([stuck])  # collected again
        assert hang.calls["stuck"] == 2 and errors(pipeline) == {("hang", "timeout"): 1}
        assert dict(pipeline._samples) == {"hang": 1}  # only the new call's sample: the late one was dropped
        assert any("collecting again" in r.getMessage() for r in caplog.records)
    finally:
        hang.gate.set()
        pipeline.close(1)


def test_the_pool_is_bounded_and_calls_that_cannot_start_are_timeouts() -> None:
    pool = CollectPool(workers=2)
    gate = threading.Event()

    def call(item: str) -> str:
        if item.startswith("hang"):
            gate.wait(30)
        return item.upper()

    try:
        got = pool.run(call, ["a", "hang1", "b", "hang2", "c", "d"], 0.1, key=lambda item: item)
        assert [o.value for o in got[:3]] == ["A", None, "B"]
        assert all(isinstance(o.error, CollectTimeout) for o in got[3:])  # hang2 timed out, c and d not started
        assert "not started" in str(got[4].error) and pool.threads() == 2 and pool.held() == 2
        gate.set()
        deadline = time.monotonic() + 5
        while pool.held() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [o.value for o in pool.run(call, ["e", "f"], 1.0, key=lambda item: item)] == ["E", "F"]
        assert pool.threads() == 2  # the workers came back
        errors_raised = pool.run(lambda item: 1 / 0, ["x"], 1.0, key=lambda item: item)
        assert isinstance(errors_raised[0].error, ZeroDivisionError)
    finally:
        gate.set()
        pool.close()


# --- the front-ends, with a plugin package installed the way pip lays one out ----------------

PACE = """
import time
from dataclasses import dataclass
from uniobs.model import Instrument, MetricSpec, Sample
from uniobs.plugin import Collector, CollectorConfig

@dataclass(frozen=True)
class PaceConfig(CollectorConfig):
    only: str = ""  # a workload name prefix: the test's own workloads, not whatever else runs here

class Pace(Collector):
    config_class = PaceConfig
    name = "pace"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.metrics = (
            MetricSpec(f"acme.{cls.name}.collects", Instrument.COUNTER, "{collect}", "collect() calls."),
            MetricSpec(f"acme.{cls.name}.span", Instrument.GAUGE, "s", "From the first collect() to this one."),
        )

    def __init__(self, config=None):
        super().__init__(config)
        self.first, self.calls = {}, {}

    def applies_to(self, workload):
        return (workload.name or workload.id).startswith(self.config.only)

    def collect(self, workload):
        now = time.monotonic()
        first = self.first.setdefault(workload.key, now)
        n = self.calls[workload.key] = self.calls.get(workload.key, 0) + 1
        return [Sample(f"acme.{self.name}.collects", n), Sample(f"acme.{self.name}.span", now - first)]

class FastCollector(Pace):
    name = "fast"

class SlowCollector(Pace):
    name = "slow"

class HangCollector(Pace):
    name = "hang"

    def collect(self, workload):
        time.sleep(3600)  # a read that never answers
        return super().collect(workload)
"""

BUILTINS_OFF = "".join(
    f"[collectors.{name}]\nenabled = false\n" for name in ("process", "cgroup", "qemu", "kvm", "netns")
)


@pytest.fixture
def pace_plugin(tmp_path: Path) -> dict[str, str]:
    """The environment for a uniobs process that has the `fast`, `slow` and `hang` collectors."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "pace_uniobs.py").write_text(textwrap.dedent(PACE))
    info = site / "pace_uniobs-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pace-uniobs\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[uniobs.collectors]\nfast = pace_uniobs:FastCollector\nslow = pace_uniobs:SlowCollector\n"
        "hang = pace_uniobs:HangCollector\n"
    )
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}


def cadence(signals: Signals, collector: str) -> tuple[int, float]:
    """(collect() calls, mean seconds between them), from the exported counter and gauge."""
    calls = int(signals.last(f"acme.{collector}.collects"))
    span = signals.last(f"acme.{collector}.span")
    assert calls >= 3, f"{collector}: only {calls} calls"
    return calls, span / (calls - 1)


def timeouts(signals: Signals, collector: str) -> float:
    return signals.last("uniobs.collector.errors", uniobs_collector=collector, error_type="timeout")


def guest(tmp_path: Path, name: str) -> subprocess.Popen[bytes]:
    subprocess.run(["make", "-s", "-C", str(KERNEL.parent.parent)], check=True)
    qmp, con = tmp_path / f"qmp-{name}.sock", tmp_path / f"con-{name}.sock"
    proc = subprocess.Popen(
        ["qemu-system-x86_64", "-machine", "microvm", "-accel", "tcg", "-m", "64", "-nodefaults", "-display", "none",
         "-no-reboot", "-name", name, "-qmp", f"unix:{qmp},server=on,wait=off",
         "-chardev", f"socket,id=c0,path={con},server=on,wait=off", "-serial", "chardev:c0",
         "-kernel", str(KERNEL), "-append", "mode=ok run_ms=60000 beat_ms=500"],
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while not qmp.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return proc


def test_run_honours_each_interval_and_bounds_a_hung_collect(tmp_path: Path, pace_plugin: dict[str, str]) -> None:
    out, config = tmp_path / "t.jsonl", tmp_path / "uniobs.toml"
    config.write_text(
        "[uniobs]\ninterval = 1.0\nexport_interval = 0.5\n"  # slow sets none: [uniobs] interval
        "[collectors.fast]\ninterval = 0.25\n[collectors.hang]\ninterval = 0.25\ntimeout = 0.3\n" + BUILTINS_OFF
    )
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "uniobs.cli", "run", "--quiet", "--config", str(config), "--export", f"file:{out}",
         "--", sys.executable, "-c", "import time; time.sleep(4)"],
        env=pace_plugin, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 15  # the hung call did not hold up the end of the run
    signals = Signals(out)
    fast_calls, fast_every = cadence(signals, "fast")
    slow_calls, slow_every = cadence(signals, "slow")
    assert 0.24 <= fast_every <= 0.45, (fast_calls, fast_every)  # kept its cadence beside the hung call
    assert 0.95 <= slow_every <= 1.4, (slow_calls, slow_every)
    assert fast_calls >= 2.5 * slow_calls
    assert timeouts(signals, "hang") >= 5  # the hung call, then each scrape skipped while it hangs
    assert result.stderr.count("collection failed") == 1  # said once


@qemu
@pytest.mark.qemu
def test_attach_honours_each_interval(tmp_path: Path, pace_plugin: dict[str, str]) -> None:
    out, config = tmp_path / "t.jsonl", tmp_path / "uniobs.toml"
    config.write_text(
        "[uniobs]\ninterval = 1.2\nexport_interval = 0.5\n[collectors.fast]\ninterval = 0.3\n"
        "[collectors.hang]\nenabled = false\n" + BUILTINS_OFF
    )
    vm = guest(tmp_path, f"sched-attach-{secrets.token_hex(3)}")
    try:
        attach = subprocess.Popen(
            [sys.executable, "-m", "uniobs.cli", "attach", "--config", str(config), "--export", f"file:{out}",
             str(vm.pid)],
            env=pace_plugin, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert attach.stderr is not None and "attached to qemu" in attach.stderr.readline()
        time.sleep(4)
        attach.send_signal(signal.SIGINT)
        _, stderr = attach.communicate(timeout=30)
        assert attach.returncode == 0, stderr
    finally:
        vm.kill()
        vm.wait()
    signals = Signals(out)
    fast_calls, fast_every = cadence(signals, "fast")
    slow_calls, slow_every = cadence(signals, "slow")
    assert 0.29 <= fast_every <= 0.5, (fast_calls, fast_every)
    assert 1.15 <= slow_every <= 1.6, (slow_calls, slow_every)  # [uniobs] interval, not --interval's default
    assert fast_calls >= 2.5 * slow_calls


def workloads_followed(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            body: dict[str, Any] = json.load(response)
    except urllib.error.HTTPError as exc:
        body = json.load(exc)
    return int(body["workloads"])


@pytest.fixture
def agent_guest(tmp_path: Path) -> Iterator[str]:
    name = f"sched-agent-{secrets.token_hex(3)}"
    vm = guest(tmp_path, name)
    yield name
    vm.kill()
    vm.wait()


@qemu
@pytest.mark.qemu
def test_agent_honours_each_interval_beside_a_hung_collect(
    tmp_path: Path, pace_plugin: dict[str, str], agent_guest: str
) -> None:
    out, config, port = tmp_path / "t.jsonl", tmp_path / "agent.toml", free_port()
    only = f'only = "{agent_guest}"\n'  # this test's guest, not whatever else runs on the host
    config.write_text(
        f'[uniobs]\ninterval = 1.5\nexport_interval = 0.5\nexport = ["file:{out}"]\n'
        f"[collectors.fast]\ninterval = 0.3\n{only}[collectors.slow]\n{only}"
        f"[collectors.hang]\ninterval = 0.3\ntimeout = 0.5\n{only}"
        + BUILTINS_OFF
        + "[collectors.console]\nenabled = false\n"
        f'[agent]\ndiscovery_interval = 0.3\nhealth = "127.0.0.1:{port}"\ncontainers = false\n'
    )
    agent = subprocess.Popen(
        [sys.executable, "-m", "uniobs.cli", "agent", "--config", str(config)],
        env=pace_plugin, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if workloads_followed(port) >= 1:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        time.sleep(4.5)
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=30)
        assert agent.returncode == 0, stderr[-3000:]
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    signals = Signals(out)
    fast_calls, fast_every = cadence(signals, "fast")
    slow_calls, slow_every = cadence(signals, "slow")
    assert 0.29 <= fast_every <= 0.5, (fast_calls, fast_every)  # its cadence held beside the hung call
    assert 1.45 <= slow_every <= 2.0, (slow_calls, slow_every)
    assert fast_calls >= 2.5 * slow_calls
    assert timeouts(signals, "hang") >= 5
    assert stderr.count("collection failed") == 1
