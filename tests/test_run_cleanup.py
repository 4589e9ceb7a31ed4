"""`uniobs run` leaves nothing behind: after a real runc container or a real QEMU guest ends
(normally, with a failure status, crashed, on SIGINT or SIGTERM to uniobs, or never started),
its run base directory holds exactly what it held before, and no cgroup of the run is left.
A run killed with SIGKILL leaves its directory (and cgroup); the next run removes them.

Each test has its own run base (`--rundir`, or UNIOBS_RUNDIR), holding a file and a foreign
`run-*` directory that must survive, so the comparison does not race other tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import test_run_container as containers
import test_run_qemu as qemu
from support import requires_gcc, requires_node, requires_qemu, requires_root, requires_runc

from uniobs.lifecycle.rundir import OWNER_FILE, _start_time, default_bases

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="run directories are Linux-only")

F = TypeVar("F", bound=Callable[..., Any])


def _marked(*marks: pytest.MarkDecorator) -> Callable[[F], F]:
    def apply(test: F) -> F:
        for mark in marks:
            test = mark(test)
        return test

    return apply


needs_runc = _marked(pytest.mark.containers, requires_runc, requires_root, requires_node)
needs_qemu = _marked(pytest.mark.qemu, requires_qemu, requires_gcc)
# QEMU in a cgroup of its own too, when we may create one: its removal is checked as well
QEMU_CGROUP = ("--cgroup", "auto") if os.geteuid() == 0 else ()


def _cgroups() -> set[str]:
    """Every cgroup directory below /uniobs in every hierarchy, as 'HIERARCHY/uniobs/NAME...'."""
    from uniobs.lifecycle.rundir import cgroup_dirs

    try:
        from uniobs.host.cgroupfs import detect_layout

        tops = cgroup_dirs(detect_layout(), "/uniobs")
    except OSError:
        return set()
    return {str(Path(d)) for top in tops for d, _, _ in os.walk(top) if d != top}


def _ours(name: str) -> bool:
    """A cgroup that no live run of another test (run directory in a default base) owns."""
    leaf = Path(name).name
    return not any(
        (Path(base) / leaf).exists() or any(leaf.endswith("-" + p.name) for p in Path(base).glob("run-*"))
        for base in default_bases()
    )


class Base:
    """A private run base and what it held before: compared after the run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir()
        (path / "accel.json").write_text("{}")  # something else kept there
        (path / "run-foreign").mkdir()  # no owner record: a sweep never touches it
        (path / "run-foreign" / "keep").write_text("")
        self.before = self.listing()
        self.cgroups_before = _cgroups()

    def listing(self) -> list[str]:
        return sorted(str(p.relative_to(self.path)) for p in self.path.rglob("*"))

    def assert_as_before(self) -> None:
        assert self.listing() == self.before
        leaked = {c for c in _cgroups() - self.cgroups_before if _ours(c)}
        assert not leaked, f"cgroups left behind: {leaked}"

    def run_dir(self, timeout: float = 30) -> Path:
        """The live run's directory, once the run has recorded its command's pid."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for owner in self.path.glob(f"run-*/{OWNER_FILE}"):
                try:
                    if len(json.loads(owner.read_text())["pids"]) >= 2:
                        return owner.parent
                except (OSError, ValueError):
                    pass
            time.sleep(0.01)
        raise AssertionError("no run directory with a spawned command appeared")


@pytest.fixture
def base(tmp_path: Path) -> Base:
    return Base(tmp_path / "runs")


def uniobs(base: Base, out: Path, *command: str, extra: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, "-m", "uniobs.cli", "run", "--interval", "0.2", "--rundir", str(base.path),
            "--export", f"file:{out}", *extra, "--", *command]  # fmt: skip


# --- runc -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built() -> Path:
    subprocess.run(["make", "-s", "-C", str(containers.CONTAINER)], check=True, capture_output=True)
    return containers.CONTAINER / "build"


def runc(bundle: Path, name: str) -> tuple[str, ...]:
    return ("runc", "run", "--bundle", str(bundle), name)


@pytest.mark.parametrize(
    ("script", "status"),
    [
        ("console.log('ok')", {0}),
        ("console.error('failing'); process.exit(3)", {3}),
        # the function crashes: abort() (as pid 1 of its namespace, SIGABRT is ignored and
        # glibc's fallback faults: SIGSEGV)
        ("process.abort()", {128 + signal.SIGABRT, 128 + signal.SIGSEGV}),
    ],
    ids=["exit-0", "exit-3", "crash"],
)
@needs_runc
def test_a_container_run_that_ends_leaves_nothing(
    built: Path, base: Base, tmp_path: Path, script: str, status: set[int]
) -> None:
    bundle = containers.make_bundle(built, tmp_path, ["/usr/bin/node", "-e", script])
    result = subprocess.run(uniobs(base, tmp_path / "t.jsonl", *runc(bundle, containers.cid())),
                            capture_output=True, timeout=90)  # fmt: skip
    assert result.returncode in status, result.stderr
    base.assert_as_before()


@pytest.mark.parametrize("broken", ["no-such-program", "unparsable-config"])
@needs_runc
def test_a_container_that_never_starts_leaves_nothing(built: Path, base: Base, tmp_path: Path, broken: str) -> None:
    bundle = containers.make_bundle(built, tmp_path, ["/nonexistent/function"])
    if broken == "unparsable-config":
        (bundle / "config.json").write_text("{not json")
    result = subprocess.run(uniobs(base, tmp_path / "t.jsonl", *runc(bundle, containers.cid())),
                            capture_output=True, timeout=90)  # fmt: skip
    assert result.returncode != 0 and b"Traceback" not in result.stderr, result.stderr
    base.assert_as_before()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@needs_runc
def test_a_container_run_stopped_by_a_signal_to_uniobs_leaves_nothing(
    built: Path, base: Base, tmp_path: Path, signum: int
) -> None:
    # pid 1 of its namespace: a signal it does not handle is ignored (SIGINT, here)
    script = "process.on('SIGTERM', () => process.exit(0)); console.log('up'); setInterval(() => {}, 1000)"
    bundle = containers.make_bundle(built, tmp_path, ["/usr/bin/node", "-e", script])
    name = containers.cid()
    run = subprocess.Popen(uniobs(base, tmp_path / "t.jsonl", *runc(bundle, name)),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        assert run.stdout is not None and run.stdout.readline() == b"up\n"  # the function runs
        assert (base.run_dir() / "bundle" / "config.json").exists()  # the bundle copy, to be removed
        run.send_signal(signum)
        _, stderr = run.communicate(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
        subprocess.run(["runc", "delete", "--force", name], capture_output=True)
    assert run.returncode == 0, stderr  # forwarded to the function as SIGTERM, which it handled
    base.assert_as_before()


@needs_runc
def test_a_container_run_killed_with_sigkill_is_cleaned_by_the_next_run(
    built: Path, base: Base, tmp_path: Path
) -> None:
    bundle = containers.make_bundle(
        built, tmp_path, ["/usr/bin/node", "-e", "console.log('up'); setInterval(() => {}, 1000)"]
    )
    name = containers.cid()
    run = subprocess.Popen(uniobs(base, tmp_path / "t.jsonl", *runc(bundle, name)),
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        assert run.stdout is not None and run.stdout.readline() == b"up\n"
        left = base.run_dir()
        run.kill()  # nothing of uniobs runs any more: runc and the container do
        run.wait(10)
        subprocess.run(["runc", "kill", name, "KILL"], check=True, capture_output=True)
        deadline = time.monotonic() + 10
        while subprocess.run(["runc", "state", name], capture_output=True).returncode == 0:
            assert time.monotonic() < deadline, "runc did not end the container"
            time.sleep(0.05)
    finally:
        subprocess.run(["runc", "delete", "--force", name], capture_output=True)
    assert left.exists()  # what SIGKILL leaves: the run's directory (and its cgroup)
    assert any(c.endswith("/uniobs/" + left.name) for c in _cgroups())
    again = subprocess.run(uniobs(base, tmp_path / "u.jsonl", "true"), capture_output=True, timeout=60)
    assert again.returncode == 0, again.stderr
    base.assert_as_before()


# --- QEMU -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kernel() -> Path:
    subprocess.run(["make", "-s", "-C", str(qemu.KERNEL.parent.parent)], check=True, capture_output=True)
    return qemu.KERNEL


def vm(kernel: Path, append: str, *more: str) -> tuple[str, ...]:
    return (*qemu.QEMU, "-serial", "stdio", "-kernel", str(kernel), "-append", append, *more)


@pytest.mark.parametrize(
    ("append", "more", "status"),
    [
        ("mode=ok exit=0", (), 1),  # isa-debug-exit: (0 << 1) | 1
        ("mode=panic", (), 7),  # the guest panics: exit code 3
        ("mode=triplefault", (), 0),  # the guest resets (-no-reboot)
        ("mode=ok", ("-kernel", "/nonexistent/kernel.elf"), 1),  # QEMU refuses to start
    ],
    ids=["exit", "panic", "triple-fault", "never-starts"],
)
@needs_qemu
def test_a_guest_run_that_ends_leaves_nothing(
    kernel: Path, base: Base, tmp_path: Path, append: str, more: tuple[str, ...], status: int
) -> None:
    command = uniobs(base, tmp_path / "t.jsonl", *vm(kernel, append, *more), extra=("--quiet", *QEMU_CGROUP))
    result = subprocess.run(command, capture_output=True, timeout=60)
    assert result.returncode == status, result.stderr
    base.assert_as_before()


@needs_qemu
def test_the_run_base_can_come_from_the_environment(kernel: Path, base: Base, tmp_path: Path) -> None:
    command = uniobs(base, tmp_path / "t.jsonl", *vm(kernel, "mode=ok exit=0"), extra=("--quiet",))
    at = command.index("--rundir")
    del command[at : at + 2]
    env = {**os.environ, "UNIOBS_RUNDIR": str(base.path)}
    run = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert base.run_dir().parent == base.path  # it ran there, not in /run/uniobs
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == 1, stderr
    base.assert_as_before()


def _start_hanging_guest(base: Base, kernel: Path, out: Path) -> tuple[subprocess.Popen[bytes], Path]:
    run = subprocess.Popen(uniobs(base, out, *vm(kernel, "mode=hang"), extra=("--quiet", *QEMU_CGROUP)),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    rundir = base.run_dir()
    deadline = time.monotonic() + 30
    while not (rundir / "vm-events.sock").exists():  # QEMU listens: it is up
        assert time.monotonic() < deadline and run.poll() is None, "QEMU did not start"
        time.sleep(0.01)
    time.sleep(0.5)  # booted, and scraped
    return run, rundir


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@needs_qemu
def test_a_guest_run_stopped_by_a_signal_to_uniobs_leaves_nothing(
    kernel: Path, base: Base, tmp_path: Path, signum: int
) -> None:
    run, _ = _start_hanging_guest(base, kernel, tmp_path / "t.jsonl")
    run.send_signal(signum)
    _, stderr = run.communicate(timeout=30)
    assert run.returncode == 0, stderr  # QEMU shut down on the forwarded SIGTERM: host-signal
    base.assert_as_before()


@needs_qemu
def test_a_crashed_vmm_leaves_nothing(kernel: Path, base: Base, tmp_path: Path) -> None:
    run, rundir = _start_hanging_guest(base, kernel, tmp_path / "t.jsonl")
    vmm = json.loads((rundir / OWNER_FILE).read_text())["pids"][1][0]
    os.kill(vmm, signal.SIGKILL)
    _, stderr = run.communicate(timeout=30)
    assert run.returncode == 128 + signal.SIGKILL, stderr
    base.assert_as_before()


@needs_qemu
def test_a_guest_run_killed_with_sigkill_is_cleaned_by_the_next_run(kernel: Path, base: Base, tmp_path: Path) -> None:
    run, rundir = _start_hanging_guest(base, kernel, tmp_path / "t.jsonl")
    vmm = json.loads((rundir / OWNER_FILE).read_text())["pids"][1][0]
    run.kill()
    run.wait(10)
    try:
        assert rundir.exists()
        # QEMU outlives uniobs: a run whose VMM still runs is not stale, the next start keeps it
        kept = subprocess.run(uniobs(base, tmp_path / "u.jsonl", "true"), capture_output=True, timeout=60)
        assert kept.returncode == 0, kept.stderr
        assert (rundir / "vm-qmp.sock").exists()
    finally:
        os.kill(vmm, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _start_time(vmm) is not None:  # gone (or a zombie)
        assert time.monotonic() < deadline, "QEMU did not end"
        time.sleep(0.01)
    swept = subprocess.run(uniobs(base, tmp_path / "v.jsonl", "true"), capture_output=True, timeout=60)
    assert swept.returncode == 0, swept.stderr
    base.assert_as_before()
