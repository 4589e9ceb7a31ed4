"""`uniobs run -- runc run ...` and `podman run`: the container shrink-wrap launched and observed
like a unikernel (console, lifecycle, exit status, OOM kills), with real runc and Podman."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from otlpfile import Signals
from support import ROOT, free_port, requires_node, requires_root, requires_runc

CONTAINER = ROOT / "examples" / "hello-node" / "container"
PODMAN_FLAGS = ["--runtime", "runc", "--cgroup-manager=cgroupfs", "--events-backend=file"]

pytestmark = [pytest.mark.containers, requires_runc, requires_root, requires_node]


@pytest.fixture(scope="module")
def built() -> Path:
    subprocess.run(["make", "-s", "-C", str(CONTAINER)], check=True, capture_output=True)
    return CONTAINER / "build"


def make_bundle(built: Path, tmp: Path, args: list[str] | None = None, **resources: Any) -> Path:
    """A bundle sharing the example's root file system, with other args and resource limits."""
    config = json.loads((built / "bundle-hostnet" / "config.json").read_text())
    config["root"]["path"] = str(built / "bundle" / "rootfs")
    if args is not None:
        config["process"]["args"] = args
    config.setdefault("linux", {}).setdefault("resources", {}).update(resources)
    bundle = tmp / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


def uniobs_run(out: Path, *command: str, timeout: float = 90) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "uniobs.cli", "run", "--interval", "0.2", "--export", f"file:{out}", "--", *command],
        capture_output=True, timeout=timeout,
    )  # fmt: skip


def cid() -> str:
    return f"uniobs-t-{secrets.token_hex(4)}"


def test_runc_run_of_the_function_is_observed_from_create_to_exit(built: Path, tmp_path: Path) -> None:
    port, name, out = free_port(), cid(), tmp_path / "t.jsonl"
    bundle = make_bundle(built, tmp_path)
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["env"] = [*config["process"].get("env", []), f"PORT={port}"]
    (bundle / "config.json").write_text(json.dumps(config))
    runner = subprocess.Popen(
        [sys.executable, "-m", "uniobs.cli", "run", "--interval", "0.2", "--export", f"file:{out}", "--",
         "runc", "run", "--bundle", str(bundle), name],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    body = b""
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not body:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                    body = response.read()
            except OSError:
                time.sleep(0.05)
        time.sleep(0.6)  # a few scrapes while it serves
    finally:
        subprocess.run(["runc", "kill", name, "TERM"], capture_output=True)
        stdout, stderr = runner.communicate(timeout=30)
    assert body == b"Hello World\n"
    assert runner.returncode == 0, stderr
    signals = Signals(out)
    events = {e["event"]: e for e in signals.events()}
    lifecycle = ["uniobs.spawned", "uniobs.created", "uniobs.started", "uniobs.exited"]
    assert sorted((e for e in events if e in lifecycle), key=lambda e: events[e]["time"]) == lifecycle
    resource = events["uniobs.exited"]["resource"]
    assert (resource["container.id"], resource["container.runtime.name"]) == (name, "runc")
    assert resource["uniobs.workload.kind"] == "container" and resource["service.name"] == name
    assert events["uniobs.exited"]["attributes"]["uniobs.exit.reason"] == "exit"
    console = signals.console()
    assert console[0] == "@@uniobs/1 mark app_start" and "@@uniobs/1 mark ready port=" + str(port) in console
    assert stdout.decode().splitlines() == console  # the function's stdout, still shown to the user
    # node's own pages (its file pages may be charged to whoever touched them first)
    # while it served (the last reading may be taken as node exits and frees its heap)
    assert max(float(p.get("asInt", 0)) for _, _, p in signals.points("container.memory.usage")) > 4 << 20
    assert signals.last("container.cpu.time", cpu_mode="user") > 0


def test_exit_status_and_stderr_of_the_function(built: Path, tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    script = "console.log('to stdout'); console.error('to stderr'); process.exit(3)"
    bundle = make_bundle(built, tmp_path, ["/usr/bin/node", "-e", script])
    result = uniobs_run(out, "runc", "run", "--bundle", str(bundle), cid())
    assert result.returncode == 3, result.stderr
    signals = Signals(out)
    logs = {r["body"]: r["attributes"] for r in signals.logs() if not r["event"]}
    assert "to stdout" in logs and logs["to stderr"]["log.iostream"] == "stderr"
    assert b"to stderr" in result.stderr  # copied to ours too
    exited = signals.events()[-1]
    assert exited["attributes"] == {"process.exit.code": 3, "uniobs.exit.reason": "exit"}


def test_an_oom_kill_is_detected_and_the_pids_limit_reported(built: Path, tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    hog = "const a = []; setInterval(() => { for (let i = 0; i < 8; i++) a.push(Buffer.alloc(1 << 20, 1)); }, 20)"
    bundle = make_bundle(
        built, tmp_path, ["/usr/bin/node", "-e", hog], memory={"limit": 96 << 20, "swap": 96 << 20}, pids={"limit": 64}
    )
    result = uniobs_run(out, "runc", "run", "--bundle", str(bundle), cid())
    assert result.returncode == 137, result.stderr  # SIGKILLed by the kernel's OOM killer
    signals = Signals(out)
    exited = signals.events()[-1]
    assert exited["attributes"]["uniobs.exit.reason"] == "oom-killed", exited
    assert exited["attributes"]["uniobs.container.oom_kills"] >= 1 and exited["severity"] == "ERROR"
    assert signals.last("uniobs.container.pids.limit") == 64
    assert signals.last("uniobs.container.memory.limit") == 96 << 20
    assert signals.last("uniobs.workload.exits", uniobs_exit_reason="oom-killed") == 1


def test_detached_runs_are_refused_with_a_pointer_to_attach(tmp_path: Path) -> None:
    result = uniobs_run(tmp_path / "t.jsonl", "runc", "run", "-d", "--bundle", "/nonexistent", "x")
    assert result.returncode != 0 and b"uniobs attach CONTAINER-ID" in result.stderr


@pytest.fixture
def podman_image(built: Path) -> Iterator[str]:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (Debian: podman)")
    image = f"localhost/uniobs-test/hello-node-run:{secrets.token_hex(3)}"
    subprocess.run(
        ["podman", *PODMAN_FLAGS, "import", "--change", 'CMD ["/usr/bin/node", "/app/app.js"]',
         str(built / "rootfs.tar"), image],
        check=True, capture_output=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    yield image
    subprocess.run(["podman", *PODMAN_FLAGS, "rmi", "--force", image], capture_output=True, timeout=60)


def test_podman_run_is_observed_with_the_engine_s_container_id(podman_image: str, tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    result = uniobs_run(
        out, "podman", *PODMAN_FLAGS, "run", "--rm", "--network", "host", "--ulimit", "nofile=20000:20000",
        "--ulimit", "nproc=4096:4096", podman_image, "/usr/bin/node", "-e",
        "console.log('hello from podman'); setTimeout(() => process.exit(5), 800)",
    )  # fmt: skip
    assert result.returncode == 5, result.stderr
    signals = Signals(out)
    assert "hello from podman" in signals.console()
    exited = signals.events()[-1]
    resource = exited["resource"]
    assert len(resource["container.id"]) == 64 and resource["container.runtime.name"] == "podman"
    assert resource["service.name"] == "hello-node-run"  # named after the image
    assert exited["attributes"]["process.exit.code"] == 5
    assert "uniobs.created" in [e["event"] for e in signals.events()]


def test_attach_to_a_running_container_by_id_and_follow_it_to_its_end(built: Path, tmp_path: Path) -> None:
    name, out = cid(), tmp_path / "t.jsonl"
    bundle = make_bundle(built, tmp_path, ["/usr/bin/node", "-e", "setTimeout(() => {}, 60000)"])
    # Started from a cgroup of its own, so its relative cgroup path is the same in every hierarchy
    # (this host's session sits in a memory cgroup of its own); as `uniobs run` does.
    from uniobs.host.cgroup_place import create_cgroup, remove_cgroup
    from uniobs.host.cgroupfs import detect_layout

    layout, parent = detect_layout(), f"/uniobs-test-{secrets.token_hex(3)}"
    procs = create_cgroup(layout, parent)
    with open(tmp_path / "runc.log", "wb") as runc_log:
        subprocess.run([sys.executable, "-m", "uniobs.host.cgexec", *procs, "--", "runc", "run", "-d", "--bundle",
                        str(bundle), name], check=True, stdout=runc_log, stderr=runc_log,
                       stdin=subprocess.DEVNULL, timeout=30)  # fmt: skip
    try:
        attach = subprocess.Popen(
            [sys.executable, "-m", "uniobs.cli", "attach", "--interval", "0.2", "--export", f"file:{out}", name[:12]],
            stderr=subprocess.PIPE,
        )
        assert attach.stderr is not None and b"attached to runc container" in attach.stderr.readline()
        time.sleep(1.0)
        subprocess.run(["runc", "kill", name, "KILL"], check=True, capture_output=True)
        _, stderr = attach.communicate(timeout=30)
        assert attach.returncode == 0 and f"{name}: exited".encode() in stderr, stderr
    finally:
        subprocess.run(["runc", "delete", "--force", name], capture_output=True)
        remove_cgroup(layout, parent)
    signals = Signals(out)
    assert [e["event"] for e in signals.events()] == ["uniobs.attached", "uniobs.exited"]
    assert signals.events()[0]["resource"]["container.id"] == name
    assert signals.last("container.memory.usage") > 0
