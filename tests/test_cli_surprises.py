"""A CLI without surprises (issue 16, part 4), each point through the real `uniobs` command: help
that names variables and defaults, unknown options refused, errors that name what they are about,
scrape-once exporting once and counting items, /healthz's failing time, and what a non-root user
still reads of a root-owned process (docs/agent.md)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from otlp_receiver import HttpReceiver
from support import free_port, uniobs_cli


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands run in the test's folder: a default ./uniobs-telemetry.jsonl lands there."""
    monkeypatch.chdir(tmp_path)


uniobs = uniobs_cli


def flat(text: str) -> str:
    """Help text without click's line wrapping (which also breaks words after a hyphen)."""
    return re.sub(r"\s+", " ", re.sub(r"-\n\s+", "-", text))


@pytest.mark.parametrize(
    ("command", "default"),
    [
        ("scrape-once", "file:uniobs-telemetry.jsonl"),
        ("run", "file:uniobs-telemetry.jsonl"),
        ("attach", "file:uniobs-telemetry.jsonl"),
        ("serve", "file:uniobs-telemetry.jsonl"),
        ("agent", "file:uniobs-telemetry.jsonl"),
        ("compare", "file:OUT/telemetry.jsonl"),
        ("parse", "none: only with --export"),
    ],
)
def test_help_names_each_variable_and_the_default_exporter(command: str, default: str) -> None:
    result = uniobs(command, "--help")
    assert result.returncode == 0, result.stderr
    text = flat(result.stdout)
    assert f"[default: {default}" in text
    assert "[env var: UNIOBS_EXPORT]" in text and "[env var: UNIOBS_CONFIG]" in text
    if command in ("run", "serve"):
        assert "[env var: UNIOBS_RUNDIR]" in text
    assert "[env var: UNIOBS_LOG_LEVEL; default: warning]" in flat(uniobs("--help").stdout)


def test_run_says_where_telemetry_goes_before_the_command_runs(tmp_path: Path) -> None:
    result = uniobs("run", "-q", "--", "sh", "-c", "echo hello")
    assert result.returncode == 0, result.stderr
    first = result.stderr.splitlines()[0]
    assert first == "uniobs: sh: telemetry -> file uniobs-telemetry.jsonl (OTLP JSON lines)", result.stderr
    assert (tmp_path / "uniobs-telemetry.jsonl").stat().st_size > 0


def test_an_unknown_option_before_the_command_is_an_error(tmp_path: Path) -> None:
    result = uniobs("run", "--expor", f"file:{tmp_path / 'x'}", "--", "true")
    assert result.returncode == 2
    assert "No such option '--expor'" in result.stderr and "--export" in result.stderr
    assert not (tmp_path / "x").exists()
    # the command's own options are its own: after `--`, and after the command's name
    out = tmp_path / "t.jsonl"
    result = uniobs("run", "-q", "-e", f"file:{out}", "--", "sh", "-c", "exit 3", "--anything")
    assert result.returncode == 3, result.stderr
    result = uniobs("run", "-e", f"file:{out}", "echo", "-m", "512", "--foo")
    assert result.returncode == 0 and result.stdout.strip() == "-m 512 --foo", result.stderr


def test_an_environment_error_names_the_variable() -> None:
    result = uniobs("scrape-once", env={"UNIOBS__UNIOBS__INTERVAL": '"fast"'})
    assert result.returncode != 0
    assert "environment UNIOBS__UNIOBS__INTERVAL: [uniobs] interval: expected float" in result.stderr
    assert "<defaults>" not in result.stderr
    result = uniobs("scrape-once", env={"UNIOBS__COLLECTORS__PROCESS__PSS": "3"})
    assert "environment UNIOBS__COLLECTORS__PROCESS__PSS: [collectors.process] pss: expected bool" in result.stderr
    result = uniobs("scrape-once", env={"UNIOBS__UNIOBS__EXPORT_INTERVAL": "-1"})
    assert "environment UNIOBS__UNIOBS__EXPORT_INTERVAL: [uniobs]: export_interval: must be > 0" in result.stderr


@pytest.fixture
def taken() -> Iterator[int]:
    """A port something else listens on."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock.getsockname()[1]
    sock.close()


def test_address_in_use_names_the_address_and_what_it_is_for(taken: int, tmp_path: Path) -> None:
    result = uniobs("scrape-once", "--export", f"prometheus:127.0.0.1:{taken}")
    assert result.returncode != 0
    assert f"prometheus http://127.0.0.1:{taken}/metrics: Address already in use" in result.stderr, result.stderr
    config = tmp_path / "agent.toml"
    config.write_text(f'[uniobs]\nexport = ["file:{tmp_path / "t.jsonl"}"]\n[agent]\nhealth = "127.0.0.1:{taken}"\n')
    result = uniobs("agent", "--config", str(config), timeout=60)
    assert result.returncode != 0
    assert f"127.0.0.1:{taken} (the agent's health endpoint, [agent] health): Address already in use" in result.stderr


# --- scrape-once -------------------------------------------------------------------------------


def test_scrape_once_exports_each_point_once(http_receiver: HttpReceiver) -> None:
    result = uniobs("scrape-once", "--export", f"otlp-http:{http_receiver.endpoint}")
    assert result.returncode == 0, result.stderr
    assert len(http_receiver.attempts["/v1/metrics"]) >= 1
    seen: dict[tuple[Any, ...], int] = {}
    for res, metric, point in http_receiver.received.metric_points():
        key = (tuple(sorted(res.items())), metric.name, point.SerializeToString(deterministic=True)[:0],
               tuple((kv.key, str(kv.value)) for kv in point.attributes))  # fmt: skip
        seen[key] = seen.get(key, 0) + 1
    assert seen and max(seen.values()) == 1, [k[1] for k, n in seen.items() if n > 1][:5]


def test_scrape_once_counts_lost_items_not_attempts(tmp_path: Path) -> None:
    refusing = HttpReceiver(refuse={"/v1/metrics": 400})
    out = tmp_path / "t.jsonl"
    try:
        result = uniobs("scrape-once", "-e", f"otlp-http:{refusing.endpoint}", "-e", f"file:{out}")
    finally:
        refusing.stop()
    assert result.returncode == 1
    lost = re.search(r"exporter otlp-http: metrics not delivered: (\d+) failed", result.stderr)
    assert lost, result.stderr
    points = 0
    for line in out.read_text().splitlines():
        for rm in json.loads(line).get("resourceMetrics", []):
            for sm in rm["scopeMetrics"]:
                for metric in sm["metrics"]:
                    kind = next(k for k in ("sum", "gauge", "histogram") if k in metric)
                    points += len(metric[kind]["dataPoints"])
    assert int(lost.group(1)) == points  # the same data points the file got, each counted once


def test_scrape_once_honours_its_timeout() -> None:
    """A backend that accepts and never answers, with a request timeout of 60 s: --timeout 3 bounds
    the wait (before: 15 s + 5 s + the request's own timeout). The bound is loose on purpose."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []

    def hold() -> None:  # accept and never answer, until the server is closed at the end
        with contextlib.suppress(OSError):
            for _ in range(16):
                held.append(server.accept()[0])

    threading.Thread(target=hold, daemon=True).start()
    port = server.getsockname()[1]
    started = time.monotonic()
    try:
        result = uniobs(
            "scrape-once", "-e", f"otlp-http:http://127.0.0.1:{port}", "--timeout", "3",
            env={"OTEL_EXPORTER_OTLP_TIMEOUT": "60000"}, timeout=120,
        )  # fmt: skip
    finally:
        elapsed = time.monotonic() - started
        for sock in held:
            sock.close()
        server.close()
    assert result.returncode == 1 and "items not delivered: no answer within --timeout 3 s" in result.stderr
    assert elapsed < 30, elapsed  # far below the 60 s the request alone would take


# --- /healthz -----------------------------------------------------------------------------------


def test_healthz_failing_for_counts_from_the_first_failed_delivery(tmp_path: Path) -> None:
    """Not polled while exports fail: the first poll already reports the time since they began to."""
    dead, health = free_port(), free_port()
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[uniobs]\nexport = ["otlp-http:http://127.0.0.1:{dead}"]\nexport_interval = 0.3\nretry_initial = 0.2\n'
        f'[agent]\nhealth = "127.0.0.1:{health}"\nunhealthy_after = 1\ncontainers = false\nvmms = false\n'
        "[exporters.otlp-http]\ntimeout = 1\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "UNIOBS_"))}
    agent = subprocess.Popen(
        [sys.executable, "-m", "uniobs.cli", "agent", "--config", str(config)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert agent.stderr is not None
        banner = agent.stderr.readline()
        assert "health http://127.0.0.1" in banner, banner
        # the export thread logs its first failure; the health endpoint is not asked until well after
        for line in agent.stderr:
            if "export failed" in line:
                break
        failing_at = time.monotonic()
        time.sleep(3)
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=10)
            pytest.fail("healthy while every export fails")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503
            body = json.loads(exc.read())
        failing_for = body["exporters"]["otlp-http"]["failing_for_s"]
        assert failing_for >= 2.0, body  # counted from the failure, not from this first poll (0 before)
        assert failing_for <= time.monotonic() - failing_at + 2.0
    finally:
        agent.terminate()
        try:
            agent.wait(30)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()


# --- what a non-root user reads of a root-owned process ------------------------------------------

NON_ROOT = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]

SCRAPE_AS_NOBODY = """
import sys, time
from uniobs.config import Settings
from uniobs.model import Kind, Workload
from uniobs.pipeline import Pipeline
pid, out = int(sys.argv[1]), sys.argv[2]
pipeline = Pipeline(Settings(), export=[f"file:{out}"], collectors=["process"])
workload = Workload(kind=Kind.UNIKERNEL, runtime="qemu", id=f"vm-{pid}", name="vm", pid=pid, executable="sleep")
pipeline.scrape([workload])
pipeline.close(10)
"""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to start a root-owned "
                    "process and setpriv to read it as nobody")  # fmt: skip
def test_a_non_root_user_still_reads_cpu_and_rss_of_a_root_owned_process() -> None:
    shared = Path(tempfile.mkdtemp(prefix="uniobs-nonroot-"))  # pytest's own folders are root-only
    shared.chmod(0o777)  # nobody writes the export file here
    out = shared / "t.jsonl"
    vmm = subprocess.Popen(["sleep", "120"])  # root-owned, as a VMM started by root is
    try:
        scraper = subprocess.run(
            [*NON_ROOT, sys.executable, "-c", SCRAPE_AS_NOBODY, str(vmm.pid), str(out)],
            capture_output=True, text=True, timeout=120, cwd=shared,
        )  # fmt: skip
    finally:
        vmm.kill()
        vmm.wait()
    text = out.read_text() if out.exists() else ""
    shutil.rmtree(shared)
    assert scraper.returncode == 0, scraper.stderr
    names: set[str] = set()
    for line in text.splitlines():
        for rm in json.loads(line).get("resourceMetrics", []):
            attrs = {a["key"]: a["value"] for a in rm["resource"]["attributes"]}
            if attrs.get("process.pid", {}).get("intValue") in (vmm.pid, str(vmm.pid)):
                names |= {m["name"] for sm in rm["scopeMetrics"] for m in sm["metrics"]}
    # what docs/agent.md says still works without ptrace access (world-readable stat, statm, status)
    assert {"process.cpu.time", "process.memory.usage", "process.thread.count", "process.paging.faults"} <= names
    # what needs it (fd/, smaps_rollup) is left out, and said
    assert "process.unix.file_descriptor.count" not in names and "uniobs.process.memory.pss" not in names
    assert "fd/: permission denied" in scraper.stderr and "smaps_rollup: permission denied" in scraper.stderr
