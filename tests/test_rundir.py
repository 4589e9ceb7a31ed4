"""Run directories: who owns them, what a sweep removes, and a Runner that fails half-way leaving
nothing behind (a real child process; the container and QEMU cases are in test_run_cleanup.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from uniobs.config import Settings
from uniobs.lifecycle import rundir as rd
from uniobs.lifecycle.run import RunInterrupted, Runner
from uniobs.pipeline import Pipeline
from uniobs.runtimes.launch import plan_process


def owner(path: Path, **fields: Any) -> None:
    record = {"boot_id": rd._boot_id(), "pid_ns": rd._pid_ns(), "pids": [], "cgroups": [], **fields}
    path.mkdir()
    (path / rd.OWNER_FILE).write_text(json.dumps(record))


@pytest.fixture
def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_run_dir_records_its_owner_and_is_removed_whole(tmp_path: Path) -> None:
    with rd.RunDir.create(str(tmp_path)) as run:
        assert Path(run.path).parent == tmp_path and Path(run.path).name.startswith("run-")
        record = json.loads((Path(run.path) / rd.OWNER_FILE).read_text())
        assert record["pids"] == [[os.getpid(), rd._start_time(os.getpid())]]
        os.mkfifo(Path(run.path) / "x.fifo")
        (Path(run.path) / "bundle").mkdir()
        (Path(run.path) / "bundle" / "config.json").write_text("{}")
        assert os.fspath(run) == run.path
    assert os.listdir(tmp_path) == []


def test_the_run_base_comes_from_the_argument_then_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(rd.RUNDIR_ENV, str(tmp_path / "env"))
    assert rd.run_base() == str(tmp_path / "env") and (tmp_path / "env").is_dir()
    assert rd.run_base(str(tmp_path / "arg")) == str(tmp_path / "arg")
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError):
        rd.run_base(str(tmp_path / "file"))  # an explicit choice that cannot be used is an error


def test_a_sweep_removes_only_runs_that_are_over(tmp_path: Path, dead_pid: int) -> None:
    me = [os.getpid(), rd._start_time(os.getpid())]
    owner(tmp_path / "run-dead", pids=[[dead_pid, 12345]])
    owner(tmp_path / "run-reused", pids=[[os.getpid(), me[1] - 1]])  # our pid, another start: a reused pid
    owner(tmp_path / "run-oldboot", boot_id="another-boot", pids=[me])
    owner(tmp_path / "run-live", pids=[[dead_pid, 1], me])  # one live process is enough
    owner(tmp_path / "run-otherns", pid_ns=1, pids=[[dead_pid, 12345]])  # cannot be judged from here
    (tmp_path / "run-noowner").mkdir()  # being created, or an older uniobs': not ours to judge
    owner(tmp_path / "run-badcgroup", pids=[[dead_pid, 1]], cgroups=["/"])  # over, but names no cgroup of ours
    (tmp_path / "run-dead" / "vm-qmp.sock").write_text("")
    (tmp_path / "accel.json").write_text("{}")
    removed = rd.sweep(str(tmp_path))
    assert sorted(Path(p).name for p in removed) == ["run-dead", "run-oldboot", "run-reused"]
    assert sorted(os.listdir(tmp_path)) == ["accel.json", "run-badcgroup", "run-live", "run-noowner", "run-otherns"]


def test_creating_a_run_dir_sweeps_first(tmp_path: Path, dead_pid: int) -> None:
    owner(tmp_path / "run-dead", pids=[[dead_pid, 1]])
    with rd.RunDir.create(str(tmp_path)) as run:
        assert os.listdir(tmp_path) == [Path(run.path).name]


@pytest.fixture
def pipeline() -> Iterator[Pipeline]:
    p = Pipeline(Settings(), export=[])
    yield p
    p.close(1)


def test_an_exception_mid_run_ends_the_command_and_removes_the_run_dir(
    tmp_path: Path, pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(_workload: Any) -> list[str]:
        raise RuntimeError("a bug after the spawn")

    monkeypatch.setattr(pipeline, "start_streams", broken)
    handlers = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)]
    run = rd.RunDir.create(str(tmp_path))
    with run:
        runner = Runner(pipeline, plan_process(["sleep", "60"]), "t", rundir=run, mirror_console=False)
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="a bug after the spawn"):
            runner.run()
        assert runner.proc is not None and runner.proc.returncode is not None  # ended, and reaped
        assert time.monotonic() - started < 10
        assert os.listdir(run.path) == [rd.OWNER_FILE]  # the runner's own files are gone already
    assert os.listdir(tmp_path) == []
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)] == handlers  # given back


def test_a_signal_before_the_spawn_runs_nothing_and_leaves_nothing(
    tmp_path: Path, pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(rd.RUNDIR_ENV, str(tmp_path))
    runner = Runner(pipeline, plan_process(["sleep", "60"]), "t", mirror_console=False)  # a run dir of its own
    real = runner._with_traceparent

    def and_a_sigterm(*args: Any) -> list[str]:
        os.kill(os.getpid(), signal.SIGTERM)  # handled: recorded, not forwarded (nothing to forward it to)
        return real(*args)

    monkeypatch.setattr(runner, "_with_traceparent", and_a_sigterm)
    with pytest.raises(RunInterrupted) as raised:
        runner.run()
    assert raised.value.signum == signal.SIGTERM and runner.proc is None
    assert os.listdir(tmp_path) == []
