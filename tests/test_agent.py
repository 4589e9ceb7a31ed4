"""`uniobs agent` against real workloads started and stopped during the test, a real OTLP receiver
that goes down and comes back, SIGTERM flushing, SIGKILL of a watched VMM."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from otlp_receiver import HttpReceiver
from otlpfile import Signals
from support import ROOT, free_port, idle_node_bundle, requires_qemu

KERNEL = ROOT / "examples" / "minikernel" / "build" / "minikernel.elf"

pytestmark = [pytest.mark.qemu, requires_qemu]


@pytest.fixture(autouse=True)
def _no_agent_left_behind() -> Iterator[None]:
    """An agent left running would attach to every later test's guests: always end them."""
    yield
    for agent in STARTED:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    STARTED.clear()


STARTED: list[subprocess.Popen[str]] = []


def start_agent(tmp_path: Path, export: str, health_port: int, **core: Any) -> subprocess.Popen[str]:
    settings = "\n".join(f"{k} = {json.dumps(v)}" for k, v in core.items())
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[uniobs]\nexport = ["{export}"]\nexport_interval = 0.5\n{settings}\n'
        "[collectors.process]\ninterval = 0.5\n[collectors.qemu]\ninterval = 0.5\n[collectors.cgroup]\ninterval = 0.5\n"
        f'[agent]\ndiscovery_interval = 0.3\nhealth = "127.0.0.1:{health_port}"\nunhealthy_after = 1\n'
        # one request's timeout: a backend that went away must not hold an export thread long
        "[exporters.otlp-http]\ntimeout = 1\n"
    )
    agent = subprocess.Popen(
        [sys.executable, "-m", "uniobs.cli", "agent", "--config", str(config)],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    STARTED.append(agent)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            health(health_port)
            return agent
        except OSError:
            time.sleep(0.1)
    agent.kill()
    raise AssertionError("the agent's health endpoint never answered")


def health(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def stop_agent(agent: subprocess.Popen[str]) -> dict[str, Any]:
    agent.send_signal(signal.SIGTERM)
    _, stderr = agent.communicate(timeout=30)
    assert agent.returncode == 0, stderr[-3000:]
    match = re.search(r"final (\{.*\})", stderr)
    assert match, stderr[-3000:]
    return json.loads(match.group(1))  # type: ignore[no-any-return]


def guest(tmp_path: Path, append: str) -> subprocess.Popen[bytes]:
    subprocess.run(["make", "-s", "-C", str(KERNEL.parent.parent)], check=True)
    tag = secrets.token_hex(3)
    return subprocess.Popen(
        ["qemu-system-x86_64", "-machine", "microvm", "-accel", "tcg", "-m", "64", "-nodefaults", "-display", "none",
         "-no-reboot", "-name", f"agent-fn-{tag}", "-qmp", f"unix:{tmp_path}/qmp-{tag}.sock,server=on,wait=off",
         "-chardev", f"socket,id=c0,path={tmp_path}/con-{tag}.sock,server=on,wait=off", "-serial", "chardev:c0",
         "-kernel", str(KERNEL), "-append", append],
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.fixture
def container_bundle(tmp_path: Path) -> Iterator[Path]:
    if shutil.which("runc") is None or os.geteuid() != 0 or shutil.which("node") is None:
        pytest.skip("needs runc, root and node")
    yield idle_node_bundle(tmp_path)


def test_agent_picks_up_and_lets_go_of_guests_and_containers(tmp_path: Path, container_bundle: Path) -> None:
    from uniobs.host.cgroup_place import create_cgroup, remove_cgroup
    from uniobs.host.cgroupfs import detect_layout

    out, port = tmp_path / "t.jsonl", free_port()
    agent = start_agent(tmp_path, f"file:{out}", port)
    layout, parent = detect_layout(), f"/uniobs-agent-test-{secrets.token_hex(3)}"
    procs = create_cgroup(layout, parent)
    cid = f"uniobs-agent-{secrets.token_hex(3)}"
    vm = guest(tmp_path, "mode=ok run_ms=60000 beat_ms=200")
    try:
        with open(tmp_path / "runc.log", "wb") as runc_log:  # a cgroup of ours: one path in every hierarchy
            subprocess.run([sys.executable, "-m", "uniobs.host.cgexec", *procs, "--", "runc", "run", "-d", "--bundle",
                            str(container_bundle), cid], check=True, stdout=runc_log, stderr=runc_log,
                           stdin=subprocess.DEVNULL, timeout=30)  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and health(port)[1]["workloads"] < 2:
            time.sleep(0.2)
        time.sleep(1.5)  # scraped a few times
        vm.send_signal(signal.SIGKILL)  # the VMM dies, possibly mid-scrape
        subprocess.run(["runc", "kill", cid, "KILL"], capture_output=True)
        time.sleep(0.3)
        subprocess.run(["runc", "delete", "--force", cid], capture_output=True)  # its cgroup goes with it
        time.sleep(1.5)
        assert agent.poll() is None  # survived
    finally:
        vm.kill()
        vm.wait()
        subprocess.run(["runc", "delete", "--force", cid], capture_output=True)
        remove_cgroup(layout, parent)
    final = stop_agent(agent)
    assert sum(final["file"]["dropped"].values()) == 0  # SIGTERM flushed everything
    signals = Signals(out)
    by_instance: dict[str, list[str]] = {}
    for event in signals.events():
        by_instance.setdefault(event["resource"].get("faas.instance", ""), []).append(event["event"])
    vm_events = next(v for k, v in by_instance.items() if k.startswith("agent-fn-"))
    ct_events = by_instance[cid]
    assert vm_events[0] == "uniobs.discovered" and vm_events[-1] == "uniobs.vanished"
    assert ct_events[0] == "uniobs.discovered" and ct_events[-1] == "uniobs.vanished"
    assert any("heartbeat" in line for line in signals.console())  # its console was streamed
    points = signals.points("container.memory.usage")
    assert any(res.get("container.id") == cid for res, _, _ in points)
    assert any(
        res.get("faas.instance", "").startswith("agent-fn-") for res, _, _ in signals.points("uniobs.vm.vcpu.time")
    )


def test_backend_outage_bounded_memory_exact_loss_and_resumed_export(tmp_path: Path) -> None:
    port = free_port()
    receiver = HttpReceiver(port=free_port())
    otlp_port = receiver.port
    cap = 1 << 20
    agent = start_agent(tmp_path, f"otlp-http:http://127.0.0.1:{otlp_port}", port,
                        buffer_bytes=cap, retry_initial=0.2, retry_max=0.5)  # fmt: skip
    vm = guest(tmp_path, "mode=ok run_ms=60000 beat_ms=5")  # ~200 console lines a second: load
    try:
        assert receiver.received.wait_for(lambda r: len(r.log_records()) > 100, timeout=30)
        receiver.stop()  # the backend goes down
        outage_end = time.monotonic() + 8
        worst = 0
        while time.monotonic() < outage_end:
            status, body = health(port)
            worst = max(worst, body["buffer"]["peak_bytes"])
            time.sleep(0.25)
        assert status == 503 and not body["exporters"]["otlp-http"]["delivering"]
        assert worst <= cap  # memory bounded by the configured cap
        restarted = HttpReceiver(port=otlp_port)  # the backend returns, same address
        assert restarted.received.wait_for(lambda r: len(r.log_records()) > 0, timeout=30)  # resumed, no restart
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and health(port)[0] != 200:
            time.sleep(0.2)
        assert health(port)[0] == 200
    finally:
        vm.kill()
        vm.wait()
    final = stop_agent(agent)["otlp-http"]
    restarted.stop()
    received_logs = len(receiver.received.log_records()) + len(restarted.received.log_records())
    received_points = len(receiver.received.metric_points()) + len(restarted.received.metric_points())
    assert sum(final["dropped"].values()) > 0  # the outage cost data, oldest first...
    assert received_logs == final["sent"]["logs"]  # ...and everything reported sent arrived
    assert received_points == final["sent"]["metrics"]
    for sig in ("metrics", "logs", "traces"):  # every item handed over ended in exactly one outcome
        assert final["sent"][sig] + final["failed"][sig] + final["dropped"][sig] == final["handed"][sig]
    # so what did not arrive is exactly what the agent reports dropped:
    # produced = sent + dropped (nothing is queued after the SIGTERM flush)


def test_sighup_reloads_the_configuration_and_a_bad_one_is_refused(tmp_path: Path) -> None:
    first, second, port = tmp_path / "first.jsonl", tmp_path / "second.jsonl", free_port()
    prom = free_port()
    agent = start_agent(tmp_path, f"file:{first}", port)
    config = tmp_path / "agent.toml"
    text = config.read_text()
    # the new file exports elsewhere, and opens a Prometheus endpoint the reload must rebind
    config.write_text(
        text.replace(f'export = ["file:{first}"]', f'export = ["file:{second}", "prometheus:127.0.0.1:{prom}"]')
    )
    agent.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not (second.exists() and second.stat().st_size > 0):
        time.sleep(0.2)
    assert second.exists() and second.stat().st_size > 0
    with urllib.request.urlopen(f"http://127.0.0.1:{prom}/metrics", timeout=5) as response:
        assert b"uniobs_exporter_items_total" in response.read()
    config.write_text("[uniobs]\nintervall = 3\n")  # a typo: refused, the running configuration stays
    agent.send_signal(signal.SIGHUP)
    time.sleep(1.0)
    assert agent.poll() is None and health(port)[0] == 200
    agent.send_signal(signal.SIGHUP)  # and again: a second reload of a bad file changes nothing
    final = stop_agent(agent)
    assert "file" in final and "prometheus" in final
