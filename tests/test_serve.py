"""`uniobs serve`: scale from zero, idle stop, pause and resume, on the real shrink-wraps.

The real CLI in a subprocess, with the OTLP JSON file exporter read back as a user's tooling would:
the runc container and the Linux microVM (QEMU TCG) of examples/hello-node, Nanos where its image
can be built (../shared/unikernels), and a plain process function (no runc, no QEMU) for what does
not depend on the shrink-wrap: a launch that fails, an instance that dies on its own.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from otlpfile import Signals
from support import (
    ROOT,
    free_port,
    requires_nanos,
    requires_node,
    requires_qemu,
    requires_root,
    requires_runc,
)

from uniobs.ioloop import IoLoop
from uniobs.runtimes.qemu import QmpEventWatcher
from uniobs.runtimes.qmp import QmpClient, QmpForbidden

HELLO = ROOT / "examples" / "hello-node"
CALLER = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")  # a caller's trace and span ids
WAIT_S = 240.0  # a generous bound for what must happen (a TCG boot on a loaded 2-core host): not a timing check


# --- the serve process ---------------------------------------------------------------------------


class Serve:
    """`uniobs serve DEFINITION --as SIDE` in a subprocess, its run directories under `rundir`."""

    def __init__(self, tmp: Path, definition: Path, side: str, *args: str) -> None:
        self.port = free_port()
        self.out = tmp / "telemetry.jsonl"
        self.rundir = tmp / "run"
        self.stderr_path = tmp / "serve.stderr"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uniobs.cli", "serve", str(definition), "--as", side,
             "--listen", f"127.0.0.1:{self.port}", "--export", f"file:{self.out}", "--rundir", str(self.rundir),
             *args],
            stdout=subprocess.DEVNULL, stderr=self.stderr_path.open("wb"), stdin=subprocess.DEVNULL,
        )  # fmt: skip
        until(lambda: "uniobs: serving" in self.stderr() or self.proc.poll() is not None, 30, "serve to start")
        assert self.proc.poll() is None, self.stderr()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def get(self, path: str = "/", traceparent: str | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}")
        if traceparent:
            request.add_header("traceparent", traceparent)
        try:
            with urllib.request.urlopen(request, timeout=WAIT_S) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def instance(self) -> list[psutil.Process]:
        """The processes serve launched (the VMM, the runtime's CLI and what it started), none when stopped."""
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def run_dirs(self) -> list[str]:
        return sorted(p.name for p in self.rundir.glob("run-*")) if self.rundir.exists() else []

    def signals(self) -> Signals:
        return Signals(self.out)

    def terminate(self) -> int:
        """SIGTERM; its exit status."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)

    def kill(self) -> None:
        if self.proc.poll() is None:
            for child in self.instance():
                child.kill()
            self.proc.kill()
            self.proc.wait(10)


def until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {timeout:g} s")
        time.sleep(0.05)


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[list[Serve]]:
    started: list[Serve] = []
    yield started
    for serve in started:
        serve.kill()


def cgroups_of(run_dir: str) -> list[str]:
    """The cgroup directories a run named `run_dir` created (runc's: /uniobs/<run dir>), in any hierarchy."""
    return [str(p) for p in Path("/sys/fs/cgroup").glob(f"**/uniobs/{run_dir}") if p.is_dir()]


def traceparent(trace: str, span: str) -> str:
    return f"00-{trace}-{span}-01"


def invocation_spans(signals: Signals) -> list[dict[str, Any]]:
    return sorted((s for s in signals.spans() if s["attributes"].get("faas.trigger") == "http"),
                  key=lambda s: int(s["startTimeUnixNano"]))  # fmt: skip


def coldstart_roots(signals: Signals) -> list[dict[str, Any]]:
    return [s for s in signals.spans() if s["name"] == "coldstart"]


def serve_events(signals: Signals, what: str) -> list[dict[str, Any]]:
    return [r for r in signals.events("uniobs.serve.") if r["event"] == f"uniobs.serve.{what}"]


def check_clean_end(serve: Serve, run_dirs: list[str]) -> None:
    """SIGTERM ends serve with 0, leaving no process, run directory or cgroup."""
    children = serve.instance()
    assert serve.terminate() == 0, serve.stderr()
    assert "stopped serving (SIGTERM)" in serve.stderr()
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert serve.run_dirs() == []
    for name in run_dirs:
        assert cgroups_of(name) == [], name


def check_cold_invocation(signals: Signals, span: dict[str, Any], caller: tuple[str, str] | None) -> None:
    """The invocation paid a cold start, and the cold start's trace is its child."""
    assert span["attributes"]["faas.coldstart"] is True
    assert span["attributes"]["http.response.status_code"] == 200
    if caller is not None:  # the caller's trace is continued
        assert (span["traceId"], span.get("parentSpanId")) == caller
    roots = [s for s in coldstart_roots(signals) if s.get("parentSpanId") == span["spanId"]]
    assert len(roots) == 1, "the cold-start trace is not a child of the invocation span"
    assert roots[0]["traceId"] == span["traceId"]


# --- the container and the microVM: cold start, warm, idle stop, cold start again ----------------

SIDES = [
    pytest.param("container", marks=[pytest.mark.containers, requires_runc, requires_root, requires_node]),
    pytest.param("unikernel", marks=[pytest.mark.qemu, requires_qemu]),
]


@pytest.mark.parametrize("side", SIDES)
def test_scale_from_zero_and_idle_stop(tmp_path: Path, serving: list[Serve], side: str) -> None:
    serve = Serve(tmp_path, HELLO / "function.toml", side, "--idle-timeout", "3")
    serving.append(serve)
    assert f"serving hello-node ({side}) on http://127.0.0.1:{serve.port}" in serve.stderr()
    assert serve.instance() == [] and serve.run_dirs() == []  # nothing before the first request

    assert serve.get("/", traceparent(*CALLER)) == (200, b"Hello World\n")  # cold
    first_run = serve.run_dirs()
    assert len(first_run) == 1 and serve.instance()
    assert serve.get("/")[0] == 200  # warm: the same instance
    assert serve.run_dirs() == first_run

    until(lambda: serve.run_dirs() == [] and serve.instance() == [], WAIT_S, "the idle stop")
    assert cgroups_of(first_run[0]) == []
    assert serve.get("/")[0] == 200  # cold again
    second_run = serve.run_dirs()
    assert len(second_run) == 1 and second_run != first_run
    check_clean_end(serve, first_run + second_run)

    signals = serve.signals()
    first, warm, again = invocation_spans(signals)
    check_cold_invocation(signals, first, CALLER)
    assert warm["attributes"]["faas.coldstart"] is False and warm["traceId"] != CALLER[0]
    check_cold_invocation(signals, again, None)
    assert len(coldstart_roots(signals)) == 2
    assert len(serve_events(signals, "launch")) == 2
    assert len(serve_events(signals, "idle_stop")) == 1
    assert not serve_events(signals, "exited")  # stopped by serve: not an instance's own end
    exited = [r for r in signals.events("uniobs.exited")]
    assert len(exited) == 2 and all(r["severity"] == "INFO" for r in exited)
    reports = [r for r in signals.events("uniobs.invocation.report")]
    assert sum("Init Duration" in r["body"] for r in reports) == 2


# --- pausing ------------------------------------------------------------------------------------


def definition_with_qmp(tmp: Path, side: str, socket: Path) -> Path:
    """The example's definition, its paths absolute, with a `-qmp` socket of the user's own added to
    the side's QEMU command: the socket the test asks query-status on, and uniobs must leave alone."""
    import tomllib

    raw = tomllib.loads((HELLO / "function.toml").read_text())
    wrap = raw[side]

    def absolute(arg: str) -> str:
        for prefix in ("file=", ""):
            path = arg.split(prefix, 1)[-1] if prefix and prefix in arg else arg
            if not prefix and (HELLO / arg).exists() and "/" in arg:
                return str(HELLO / arg)
            if prefix and prefix in arg and (HELLO / path).exists():
                return arg.replace(f"{prefix}{path}", f"{prefix}{HELLO / path}")
        return arg

    command = [absolute(a) for a in wrap["command"]] + ["-qmp", f"unix:{socket},server=on,wait=off"]
    lines = [f"name = {json.dumps(raw['name'])}", f"ready = {json.dumps(raw['ready'])}", f"[{side}]"]
    lines.append(f"shrinkwrap = {json.dumps(wrap.get('shrinkwrap', side))}")
    lines.append(f"image = {json.dumps([str(HELLO / p) for p in wrap['image']])}")
    lines.append(f"command = {json.dumps(command)}")
    if "boot_args" in wrap:
        lines.append(f"boot_args = {json.dumps([sys.executable, str(HELLO / wrap['boot_args'][1])])}")
    path = tmp / "function.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def vm_status(socket: Path) -> str:
    with QmpClient(str(socket), timeout=5) as client:
        return str(client.execute("query-status")["status"])


VM_SIDES = [
    pytest.param("unikernel", marks=[pytest.mark.qemu, requires_qemu]),
    pytest.param("nanos", marks=[pytest.mark.qemu, requires_qemu, requires_nanos]),
]


@pytest.mark.parametrize("side", VM_SIDES)
def test_vm_paused_on_its_own_qmp_socket_and_resumed(tmp_path: Path, serving: list[Serve], side: str) -> None:
    if not all((HELLO / p).exists() for p in (["nanos/build/node.img"] if side == "nanos" else [])):
        pytest.skip("the Nanos image is not built here (examples/hello-node/nanos: python3 build.py)")
    user_socket = tmp_path / "mine.sock"
    serve = Serve(tmp_path, definition_with_qmp(tmp_path, side, user_socket), side,
                  "--idle-timeout", "2", "--on-idle", "pause")  # fmt: skip
    serving.append(serve)
    assert serve.get("/", traceparent(*CALLER))[0] == 200
    until(lambda: user_socket.exists(), 10, "the user's QMP socket")
    assert vm_status(user_socket) in ("running", "paused")  # (a slow host may be past the idle timeout already)
    until(lambda: vm_status(user_socket) == "paused", WAIT_S, "the idle pause")
    vmm = serve.instance()
    assert vmm and all(p.is_running() for p in vmm)  # paused, not stopped
    assert serve.get("/") == (200, b"Hello World\n")  # resumed for this request
    assert vm_status(user_socket) == "running"
    runs = serve.run_dirs()
    assert len(runs) == 1
    check_clean_end(serve, runs)

    signals = serve.signals()
    cold, resumed = invocation_spans(signals)
    check_cold_invocation(signals, cold, CALLER)
    assert resumed["attributes"]["faas.coldstart"] is False
    assert len(serve_events(signals, "launch")) == 1  # one instance: paused and resumed, never relaunched
    (pause,) = serve_events(signals, "pause")
    (resume,) = serve_events(signals, "resume")
    assert pause["attributes"]["uniobs.serve.pause_s"] > 0
    assert resume["attributes"]["uniobs.serve.resume_s"] > 0
    assert not serve_events(signals, "pause_refused")
    # QEMU told every monitor, uniobs' event socket included, that the VM stopped and resumed
    qmp_events = [r["event"] for r in signals.events("qemu.")]
    assert "qemu.stop" in qmp_events and "qemu.resume" in qmp_events, qmp_events


def runc_state(container_id: str) -> str:
    done = subprocess.run(["runc", "state", container_id], capture_output=True, text=True)
    return str(json.loads(done.stdout)["status"]) if done.returncode == 0 else "gone"


@pytest.mark.containers
@requires_runc
@requires_root
@requires_node
def test_container_frozen_and_resumed(tmp_path: Path, serving: list[Serve]) -> None:
    serve = Serve(tmp_path, HELLO / "function.toml", "container", "--idle-timeout", "2", "--on-idle", "pause")
    serving.append(serve)
    assert serve.get("/")[0] == 200
    runc = next(p for p in serve.instance() if p.name() == "runc" and "run" in p.cmdline())
    container = runc.cmdline()[-1]
    assert runc_state(container) in ("running", "paused")  # (a slow host may be past the idle timeout already)
    until(lambda: runc_state(container) == "paused", WAIT_S, "the idle pause")
    assert serve.get("/") == (200, b"Hello World\n")
    assert runc_state(container) == "running"
    runs = serve.run_dirs()
    check_clean_end(serve, runs)
    assert runc_state(container) == "gone"

    signals = serve.signals()
    assert len(serve_events(signals, "launch")) == 1
    (resume,) = serve_events(signals, "resume")
    assert resume["attributes"]["uniobs.serve.resume_s"] > 0
    cold, resumed = invocation_spans(signals)
    assert cold["attributes"]["faas.coldstart"] is True and resumed["attributes"]["faas.coldstart"] is False
    # the invocation that waited for the resume says so, with the resume the host measured
    measured = resumed["attributes"]["uniobs.invocation.resume_duration"]
    assert abs(measured - resume["attributes"]["uniobs.serve.resume_s"]) < 2e-6
    assert "uniobs.invocation.resume_duration" not in cold["attributes"]


# --- what does not depend on the shrink-wrap: a plain process function ---------------------------


def process_definition(tmp: Path, command: list[str], ready: str = "http://127.0.0.1:{port}/=200") -> Path:
    path = tmp / "function.toml"
    path.write_text(f'name = "pyhttp"\nready = {json.dumps(ready)}\n[unikernel]\ncommand = {json.dumps(command)}\n')
    return path


def test_a_listen_address_in_use_is_named_once_with_what_it_is_for(tmp_path: Path) -> None:
    definition = process_definition(tmp_path, [sys.executable, "-m", "http.server", "{port}"])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        at = f"127.0.0.1:{taken.getsockname()[1]}"
        done = subprocess.run(
            [sys.executable, "-m", "uniobs.cli", "serve", str(definition), "--listen", at,
             "--export", f"file:{tmp_path / 'out.jsonl'}"],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    assert done.returncode == 1
    assert f"cannot listen on {at} (serve's listen address, --listen): Address already in use" in done.stderr
    assert done.stderr.count(at) == 1, done.stderr


def test_a_failed_launch_is_a_503_with_the_reason(tmp_path: Path, serving: list[Serve]) -> None:
    script = "import sys; sys.exit(3)"
    serve = Serve(tmp_path, process_definition(tmp_path, [sys.executable, "-c", script]), "unikernel")
    serving.append(serve)
    assert serve.get("/")[0] == 503
    assert serve.terminate() == 0
    signals = serve.signals()
    (failed,) = serve_events(signals, "launch_failed")
    assert failed["severity"] == "ERROR" and "status 3" in failed["body"], failed
    (span,) = invocation_spans(signals)
    assert span["attributes"]["http.response.status_code"] == 503
    # the cold start that failed is still the invocation's child, with its error
    (root,) = coldstart_roots(signals)
    assert root.get("parentSpanId") == span["spanId"] and root["status"].get("code") == 2  # STATUS_CODE_ERROR


def test_an_instance_that_dies_is_reported_and_launched_again(tmp_path: Path, serving: list[Serve]) -> None:
    command = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "{port}"]
    serve = Serve(tmp_path, process_definition(tmp_path, command), "unikernel", "--idle-timeout", "600")
    serving.append(serve)
    assert serve.get("/")[0] == 200
    (instance,) = serve.instance()
    instance.kill()  # SIGKILL: a crash, not a clean exit
    until(lambda: serve.instance() == [] and serve.run_dirs() == [], 30, "the instance's end")
    assert serve.get("/")[0] == 200  # a new instance
    assert serve.terminate() == 0
    signals = serve.signals()
    (exited,) = serve_events(signals, "exited")
    assert exited["severity"] == "ERROR" and "SIGKILL" in exited["body"], exited
    assert len(serve_events(signals, "launch")) == 2
    assert [s["attributes"]["faas.coldstart"] for s in invocation_spans(signals)] == [True, True]


def test_concurrent_first_requests_share_one_launch(tmp_path: Path, serving: list[Serve]) -> None:
    import concurrent.futures

    command = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "{port}"]
    serve = Serve(tmp_path, process_definition(tmp_path, command), "unikernel", "--idle-timeout", "600")
    serving.append(serve)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda _: serve.get("/")[0], range(4)))
    assert statuses == [200] * 4
    assert serve.terminate() == 0
    signals = serve.signals()
    assert len(serve_events(signals, "launch")) == 1
    assert len(coldstart_roots(signals)) == 1
    assert len(signals.events("uniobs.spawned")) == 1
    # one cold invocation per launch (Lambda's rule); the others waited for that launch and say so
    spans = invocation_spans(signals)
    assert len(spans) == 4
    assert sum(s["attributes"]["faas.coldstart"] for s in spans) == 1
    waited = [s for s in spans if s["attributes"].get("uniobs.invocation.waited_for_launch")]
    assert waited and not [s for s in waited if s["attributes"]["faas.coldstart"]]  # (one may come once ready)


# --- the QMP rule -------------------------------------------------------------------------------


def test_control_commands_go_only_on_a_socket_uniobs_created(tmp_path: Path) -> None:
    loop = IoLoop().start()
    try:
        attached = QmpEventWatcher(str(tmp_path / "theirs.sock"), loop, lambda _e: None)  # owned=False
        with pytest.raises(QmpForbidden, match="not a QMP socket uniobs created"):
            attached.control("stop")
        own = QmpEventWatcher(str(tmp_path / "ours.sock"), loop, lambda _e: None, owned=True)
        with pytest.raises(QmpForbidden, match="not one uniobs sends"):
            own.control("quit")
        attached.close()
        own.close()
    finally:
        loop.stop()
    # the stats client stays read-only
    with pytest.raises(QmpForbidden):
        QmpClient(str(tmp_path / "x.sock")).execute("stop")
    assert os.listdir(tmp_path) == []  # nothing was even connected to


def test_the_default_address_is_the_definitions_port_on_loopback() -> None:
    from uniobs.cli.serve import _listen
    from uniobs.compare.function import load_definition

    assert load_definition(HELLO / "function.toml").port == 8002
    assert _listen(None, 8002) == ("127.0.0.1", 8002)
    assert _listen(None, None) == ("127.0.0.1", 0)  # no port: a free one, printed
    assert _listen("0.0.0.0:9000", 8002) == ("0.0.0.0", 9000)
    assert _listen("[::1]:9000", 8002) == ("::1", 9000)
