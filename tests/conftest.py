"""Shared fixtures: real OTLP receivers on loopback, a real child process to observe, the golden
files of recorded scenarios (`--update-golden`). Shared helpers live in tests/support."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from otlp_receiver import GrpcReceiver, HttpReceiver
from support import Golden

from uniobs.model import Kind, Workload


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden", action="store_true", default=False,
        help="rewrite the expected.json of recorded scenarios (tests/testdata/<area>/<scenario>/) from the code",
    )  # fmt: skip


@pytest.fixture
def golden(request: pytest.FixtureRequest) -> Golden:
    """Compares a recorded scenario's output with its expected.json (or rewrites it: --update-golden)."""
    return Golden(update=bool(request.config.getoption("--update-golden")))


@pytest.fixture(autouse=True)
def _clean_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests choose their endpoints explicitly; a developer's OTEL_* settings must not leak in."""
    for name in list(os.environ):
        if name.startswith(("OTEL_", "UNIOBS_")):
            monkeypatch.delenv(name)


@pytest.fixture
def grpc_receiver() -> Iterator[GrpcReceiver]:
    receiver = GrpcReceiver()
    yield receiver
    receiver.stop()


@pytest.fixture
def http_receiver() -> Iterator[HttpReceiver]:
    receiver = HttpReceiver()
    yield receiver
    receiver.stop()


@pytest.fixture
def child_process() -> Iterator[subprocess.Popen[bytes]]:
    """A real process that allocates ~20 MiB and idles: something with real stats to read."""
    code = (
        "import sys, time; b = bytearray(20 << 20); b[::4096] = b'x' * len(b[::4096]); "
        "print('ready', flush=True); time.sleep(600)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"  # its memory is touched
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def process_workload(child_process: subprocess.Popen[bytes]) -> Workload:
    return Workload(
        kind=Kind.PROCESS, runtime="test", id=f"child-{child_process.pid}", name="child", pid=child_process.pid,
        executable="python3",
    )  # fmt: skip
