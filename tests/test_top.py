"""`uniobs top` against real workloads: a QEMU minikernel guest (TCG) and a runc container (the
hello-node twin, idling), both found by the agent's discovery and measured by its collectors.

The live view runs under a real tmux (its own server socket): keys are sent with `send-keys` and
the pane is read with `capture-pane -p`, and the assertions are on what a person would see. `--once`
and `--json` run as plain subprocesses without a terminal. `--from` reads a real `uniobs run`'s
Prometheus endpoint, which is the one place a cold start is known (uniobs launched that guest).

Needs root, QEMU, gcc (the guest), runc and node (the container bundle), tmux (Debian: tmux).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import ROOT, free_port, idle_node_bundle, requires_qemu

KERNEL = ROOT / "examples" / "minikernel" / "build" / "minikernel.elf"
QEMU = ["qemu-system-x86_64", "-machine", "microvm", "-accel", "tcg", "-m", "64", "-nodefaults", "-display", "none",
        "-no-reboot"]  # fmt: skip

pytestmark = [pytest.mark.qemu, pytest.mark.containers, pytest.mark.slow, requires_qemu]


@dataclass
class Workloads:
    tag: str
    vm: str  # the guest's name (QEMU -name)
    container: str  # the runc container's id (its name)


def _uniobs(*args: str) -> list[str]:
    return [sys.executable, "-m", "uniobs.cli", *args]


@pytest.fixture(scope="module")
def workloads(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workloads]:
    for tool in ("runc", "node", "gcc"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")
    if os.geteuid() != 0:
        pytest.skip("needs root (runc, cgroups)")
    from uniobs.host.cgroup_place import create_cgroup, remove_cgroup
    from uniobs.host.cgroupfs import detect_layout

    tmp = tmp_path_factory.mktemp("top")
    subprocess.run(["make", "-s", "-C", str(KERNEL.parent.parent)], check=True)
    bundle = idle_node_bundle(tmp)
    tag = secrets.token_hex(3)
    found = Workloads(tag, f"top-{tag}-vm", f"top-{tag}-ct")
    vm = subprocess.Popen(
        [*QEMU, "-name", found.vm, "-qmp", f"unix:{tmp}/qmp.sock,server=on,wait=off",
         "-chardev", f"socket,id=c0,path={tmp}/con.sock,server=on,wait=off", "-serial", "chardev:c0",
         "-kernel", str(KERNEL), "-append", "mode=ok run_ms=600000 beat_ms=100"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    layout, parent = detect_layout(), f"/uniobs-top-test-{tag}"
    procs = create_cgroup(layout, parent)
    try:
        with open(tmp / "runc.log", "wb") as runc_log:  # stderr on a pipe would hang (HOST-NOTES)
            subprocess.run([sys.executable, "-m", "uniobs.host.cgexec", *procs, "--", "runc", "run", "-d", "--bundle",
                            str(bundle), found.container], check=True, stdout=runc_log, stderr=runc_log,
                           stdin=subprocess.DEVNULL, timeout=30)  # fmt: skip
        yield found
    finally:
        vm.kill()
        vm.wait()
        subprocess.run(["runc", "kill", found.container, "KILL"], capture_output=True)
        time.sleep(0.3)
        subprocess.run(["runc", "delete", "--force", found.container], capture_output=True)
        try:
            remove_cgroup(layout, parent)
        except OSError:
            pass


# -- the live view, under tmux


class Tmux:
    """One tmux server of the test's own (its socket), one session running a command."""

    def __init__(self, tmp: Path, command: list[str]) -> None:
        if shutil.which("tmux") is None:
            pytest.skip("needs tmux (Debian: tmux)")
        self.socket = f"uniobs-top-{secrets.token_hex(3)}"
        conf = tmp / "tmux.conf"
        conf.write_text("set -g remain-on-exit on\nset -g history-limit 100\n")  # the last screen stays readable
        self.status = tmp / f"{self.socket}.status"
        line = " ".join(shlex_quote(part) for part in command) + f"; echo $? > {shlex_quote(str(self.status))}"
        self.tmux("-f", str(conf), "new-session", "-d", "-s", "top", "-x", "200", "-y", "40", line)

    def tmux(self, *args: str) -> str:
        # COLUMNS/LINES (pytest's 80x24) would override the pane's size in the terminal library
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "TMUX")}
        done = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=10, env=env)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "top")

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "top", *keys)

    def ended(self, timeout: float = 20) -> str:
        """The command's exit status, as the shell in the pane wrote it when the command ended (tmux's
        own pane_dead_status is not always set: its server may leave the child unreaped a while)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.status.exists() and self.status.read_text().strip():
                return self.status.read_text().strip()
            time.sleep(0.2)
        raise AssertionError(f"still running after {timeout} s")

    def wait(self, predicate: Callable[[str], bool], what: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if predicate(screen):
                return screen
            time.sleep(0.3)
        raise AssertionError(f"not seen within {timeout} s: {what}\n{screen}")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


def shlex_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def table(screen: str) -> tuple[list[str], list[dict[str, str]], str]:
    """(headings, rows as {heading: cell}, status line) of a captured pane: cells are separated by
    two spaces or more (a cell such as "67.2 MiB" or the heading "COLD START" holds one)."""
    lines = screen.splitlines()
    at = next((i for i, line in enumerate(lines) if line.strip().startswith("NAME ")), None)
    if at is None:  # not drawn yet
        return [], [], ""
    heads = re.split(r"\s{2,}", lines[at].strip())
    assert len(heads) == 12, screen
    rows = []
    for line in lines[at + 1 :]:
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) != len(heads):
            continue
        rows.append(dict(zip(heads, cells, strict=True)))
    return heads, rows, lines[at - 1] if at else ""


def ours(screen: str, w: Workloads) -> list[dict[str, str]]:
    return [r for r in table(screen)[1] if w.tag in r["NAME"]]


def number(cell: str) -> float | None:
    return None if cell == "—" else float(cell)


def test_live_view_under_tmux_sorts_filters_pauses_and_quits(workloads: Workloads, tmp_path: Path) -> None:
    w = workloads
    tmux = Tmux(tmp_path, _uniobs("top", "--interval", "1"))
    try:
        # both shrink-wraps, with a CPU % and a memory figure measured by the collectors
        def measured(screen: str) -> bool:
            rows = {r["NAME"]: r for r in ours(screen, w)} if "NAME " in screen else {}
            measured = all(r["CPU%"] != "—" and r["MEM"] != "—" for r in rows.values())
            return len(rows) == 2 and measured and rows[w.vm]["STATE"] != "up"  # QMP answered once

        screen = tmux.wait(measured, "both workloads with CPU% and MEM, and the guest's QMP state")
        rows = {r["NAME"]: r for r in ours(screen, w)}
        vm, ct = rows[w.vm], rows[w.container]
        assert (vm["KIND"], vm["RUNTIME"]) == ("unikernel", "qemu")
        assert (ct["KIND"], ct["RUNTIME"]) == ("container", "runc")
        assert re.fullmatch(r"\d+\.\d", vm["CPU%"]) and re.fullmatch(r"\d+\.\d", ct["CPU%"])
        assert re.fullmatch(r"\d+(\.\d)? (KiB|MiB|GiB)", vm["MEM"]), vm
        assert re.fullmatch(r"\d+(\.\d)? (KiB|MiB|GiB)", ct["MEM"]), ct
        assert vm["STATE"] == "running"  # QMP query-status
        assert vm["COLD START"] == "—" and ct["COLD START"] == "—"  # not launched by uniobs: unknown, not 0
        assert vm["INV/S"] == "—" and vm["ERR%"] == "—" and vm["P99"] == "—"
        assert "sort CPU% ↓" in table(screen)[2]

        # sort by name (n), then the other way (n again): the order on screen flips
        tmux.keys("n")
        screen = tmux.wait(lambda s: "sort NAME ↑" in s, "the name sort")
        assert [r["NAME"] for r in ours(screen, w)] == [w.container, w.vm]  # ...-ct before ...-vm
        tmux.keys("n")
        screen = tmux.wait(lambda s: "sort NAME ↓" in s, "the reversed name sort")
        assert [r["NAME"] for r in ours(screen, w)] == [w.vm, w.container]
        names = [r["NAME"].lower() for r in table(screen)[1]]
        assert names == sorted(names, reverse=True)

        # sort by CPU (c): every row with a figure, high first
        tmux.keys("c")
        screen = tmux.wait(lambda s: "sort CPU% ↓" in s, "the CPU sort")
        cpu = [number(r["CPU%"]) for r in table(screen)[1]]
        known = [c for c in cpu if c is not None]
        assert known == sorted(known, reverse=True) and cpu[: len(known)] == known

        # filter (/): only the guest's row is left; Esc brings everything back
        tmux.keys("/")
        tmux.wait(lambda s: "filter:" in s or "▊" in s, "the filter box")
        tmux.keys(w.vm, "Enter")
        screen = tmux.wait(lambda s: f"filter '{w.vm}'" in s and "shown" in s, "the filtered table")
        shown = [r["NAME"] for r in table(screen)[1]]
        assert shown == [w.vm], screen
        tmux.keys("Escape")
        screen = tmux.wait(lambda s: len(ours(s, w)) == 2 and "filter '" not in s, "the filter cleared")

        # pause (p) and back
        tmux.keys("p")
        tmux.wait(lambda s: "PAUSED" in s, "paused")
        tmux.keys("p")
        tmux.wait(lambda s: "PAUSED" not in s, "resumed")

        # q quits, with status 0
        tmux.keys("q")
        assert tmux.ended() == "0", tmux.screen()
    finally:
        tmux.close()


# -- --once and --json, without a terminal


def test_json_has_every_field_and_null_for_what_is_not_measured(workloads: Workloads) -> None:
    w = workloads
    done = subprocess.run(_uniobs("top", "--json", "--interval", "1", "--filter", f"top-{w.tag}"),
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)  # fmt: skip
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    rows = {r["name"]: r for r in data["workloads"]}
    assert set(rows) == {w.vm, w.container}, data
    fields = {"name", "kind", "runtime", "instance", "pid", "state", "uptime_s", "cpu_percent", "cpu_source",
              "memory_bytes", "memory_source", "coldstart_s", "console_lines_per_s", "invocations_per_s",
              "error_rate", "p99_s"}  # fmt: skip
    vm, ct = rows[w.vm], rows[w.container]
    assert set(vm) == fields and set(ct) == fields
    assert (vm["kind"], vm["runtime"], vm["state"]) == ("unikernel", "qemu", "running")
    assert (ct["kind"], ct["runtime"]) == ("container", "runc")
    assert vm["cpu_percent"] > 0  # TCG keeps a host CPU busy
    assert ct["cpu_percent"] is not None and ct["cpu_percent"] >= 0
    assert vm["memory_bytes"] > 1 << 20 and ct["memory_bytes"] > 1 << 20
    assert ct["memory_source"] == "container.memory.working_set"
    assert vm["uptime_s"] > 0 and isinstance(vm["pid"], int)
    assert vm["console_lines_per_s"] > 0  # a beat every 100 ms, read from its console socket
    assert ct["console_lines_per_s"] is None  # no console followed: unknown, not 0
    for row in (vm, ct):  # neither was launched through uniobs' proxy, nor by uniobs at all
        assert row["coldstart_s"] is None and row["invocations_per_s"] is None
        assert row["error_rate"] is None and row["p99_s"] is None


def test_once_prints_a_plain_table(workloads: Workloads) -> None:
    w = workloads
    done = subprocess.run(_uniobs("top", "--once", "--interval", "1", "--sort", "name", "--filter", f"top-{w.tag}"),
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert re.split(r"\s{2,}", lines[0]) == ["NAME", "KIND", "RUNTIME", "STATE", "UPTIME", "CPU%", "MEM",
                                             "COLD START", "LINES/S", "INV/S", "ERR%", "P99"]  # fmt: skip
    assert [line.split()[0] for line in lines[1:]] == [w.container, w.vm]
    assert "\x1b" not in done.stdout  # no terminal codes


def test_live_view_refuses_without_a_terminal() -> None:
    done = subprocess.run(_uniobs("top"), capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 2 and "--once or --json" in done.stderr


def test_from_an_endpoint_that_does_not_answer_is_an_error_not_an_empty_table() -> None:
    url = f"127.0.0.1:{free_port()}"  # nothing listens there
    done = subprocess.run(_uniobs("top", "--once", "--from", url), capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done
    assert "no --from endpoint answered" in done.stderr and "Connection refused" in done.stderr


# -- --from: a running uniobs' Prometheus endpoint


def test_from_a_running_uniobs_shows_the_cold_start_it_measured(tmp_path: Path) -> None:
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc (the example guest)")
    subprocess.run(["make", "-s", "-C", str(KERNEL.parent.parent)], check=True)
    port, name = free_port(), f"top-{secrets.token_hex(3)}-run"
    config = tmp_path / "run.toml"
    config.write_text("[uniobs]\nexport_interval = 0.5\ninterval = 0.5\n")
    run = subprocess.Popen(
        _uniobs("run", "--config", str(config), "--export", f"prometheus:127.0.0.1:{port}", "-q", "-n", name, "--",
                *QEMU, "-serial", "stdio", "-kernel", str(KERNEL), "-append", "mode=ok run_ms=600000 beat_ms=100"),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        row: dict[str, Any] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done = subprocess.run(_uniobs("top", "--json", "--interval", "1", "--from", f"127.0.0.1:{port}"),
                                  capture_output=True, text=True, timeout=60)  # fmt: skip
            assert done.returncode == 0, done.stderr
            data = json.loads(done.stdout)
            row = next((r for r in data["workloads"] if r["name"] == name), {})
            if row.get("coldstart_s") is not None and row.get("cpu_percent") is not None:
                break
            time.sleep(0.5)
        assert row, data
        assert (row["kind"], row["runtime"]) == ("unikernel", "qemu")
        assert 0 < row["coldstart_s"] < 60  # its boot to `ready`, as that `uniobs run` measured it
        assert row["cpu_percent"] > 0 and row["memory_bytes"] > 1 << 20
        assert row["console_lines_per_s"] is not None and row["console_lines_per_s"] > 0
        assert row["invocations_per_s"] is None  # no invocation proxy in front of this guest
        assert all(r["runtime"] != "uniobs" for r in data["workloads"])  # uniobs itself is not a workload
    finally:
        run.send_signal(signal.SIGINT)
        try:
            run.wait(timeout=20)
        except subprocess.TimeoutExpired:
            run.kill()
            run.wait()


def test_from_a_function_behind_the_proxy_shows_invocations_errors_and_p99(tmp_path: Path) -> None:
    for tool in ("runc", "node"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")
    if os.geteuid() != 0:
        pytest.skip("needs root (runc)")
    port, public = free_port(), free_port()
    config = tmp_path / "run.toml"
    config.write_text("[uniobs]\nexport_interval = 0.5\ninterval = 0.5\n")
    run = subprocess.Popen(
        _uniobs("run", "--config", str(config), "--export", f"prometheus:127.0.0.1:{port}", "-q", "--function",
                str(ROOT / "examples" / "hello-node" / "function.toml"), "--as", "container",
                "--listen", f"127.0.0.1:{public}"),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    stop = threading.Event()

    def invoke() -> None:  # half the invocations answer 500: an error each (faas.errors)
        import urllib.error
        import urllib.request

        while not stop.is_set():
            for path in ("/", "/status/500"):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{public}{path}", timeout=5).read()
                except (urllib.error.HTTPError, OSError):
                    pass
            time.sleep(0.02)

    load = threading.Thread(target=invoke, daemon=True)
    try:
        load.start()
        row: dict[str, Any] = {}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and run.poll() is None:
            done = subprocess.run(_uniobs("top", "--json", "--interval", "1", "--from", f"127.0.0.1:{port}"),
                                  capture_output=True, text=True, timeout=60)  # fmt: skip
            assert done.returncode == 0, done.stderr
            row = next((r for r in json.loads(done.stdout)["workloads"] if r["name"] == "hello-node"), {})
            if row.get("invocations_per_s") and row.get("p99_s") is not None:
                break
            time.sleep(0.5)
        assert row.get("invocations_per_s"), (row, run.poll())
        assert (row["kind"], row["runtime"]) == ("container", "runc")
        assert row["coldstart_s"] is not None and row["coldstart_s"] > 0  # that run launched it
        assert row["error_rate"] is not None and 0 < row["error_rate"] < 1  # some 500s, some 200s
        assert row["p99_s"] > 0
    finally:
        stop.set()
        run.send_signal(signal.SIGINT)
        try:
            run.wait(timeout=30)
        except subprocess.TimeoutExpired:
            run.kill()
            run.wait()
        load.join(timeout=10)
