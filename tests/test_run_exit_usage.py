"""A launch's own resource usage at its exit: `uniobs run` reaps its command with wait4 and exports
the rusage (CPU time by mode, peak RSS), so a guest that lives too briefly to be scraped still has
its figures. With the real Solo5 hvt tender (../shared/unikernels, skipped visibly where absent) and
a plain process that holds a known amount of memory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from otlpfile import Signals
from support import UNIKERNELS, requires_kvm, requires_solo5

from uniobs.lifecycle.child import Child

SOLO5 = UNIKERNELS / "solo5"


def uniobs_run(out: Path, *command: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "uniobs.cli", "--log-level", "info", "run", "-q", "--interval", "5",
         "--export", f"file:{out}", "--", *command],
        capture_output=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def cpu_points(signals: Signals) -> dict[str, float]:
    return {a["cpu.mode"]: float(p["asDouble"]) for _, a, p in signals.points("process.cpu.time")}


@requires_solo5
@requires_kvm
def test_a_guest_too_short_lived_to_be_scraped_gets_its_cpu_time(tmp_path: Path) -> None:
    """`test_hello` lives ~12 ms: the first scrape (50 ms after the spawn) never sees it. Its CPU
    time comes from its exit. Its peak RSS (the tender's ~1.5 MB) is below uniobs' own, which the
    kernel folds into ru_maxrss until the exec: unknown, said so, and not exported as a figure."""
    out = tmp_path / "t.jsonl"
    result = uniobs_run(out, str(SOLO5 / "solo5-hvt"), str(SOLO5 / "tests" / "test_hello.hvt"), "Hello_Solo5")
    assert result.returncode == 0, result.stderr
    signals = Signals(out)
    cpu = cpu_points(signals)
    assert set(cpu) == {"user", "system"} and cpu["user"] + cpu["system"] > 0
    [resource] = {tuple(sorted(r.items())) for r, _, _ in signals.points("process.cpu.time")}
    assert dict(resource)["process.executable.name"] == "solo5-hvt"  # the tender, on the guest's resource
    assert dict(resource)["service.name"] == "test_hello"
    assert not signals.points("process.memory.usage")  # never scraped: these are all it has
    assert not signals.points("uniobs.process.memory.peak")
    assert b"peak RSS unknown" in result.stderr


def test_a_run_to_completion_process_gets_its_cpu_time_and_peak_memory(tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    hold = 300 << 20
    result = uniobs_run(out, sys.executable, "-c", f"x = b'x' * {hold}")  # 300 MiB, touched, then it exits
    assert result.returncode == 0, result.stderr
    signals = Signals(out)
    peak = signals.points("uniobs.process.memory.peak")[-1][2]
    assert int(peak["asInt"]) >= hold and peak["unit"] == "By"
    cpu = cpu_points(signals)
    assert cpu["user"] + cpu["system"] > 0.01  # it filled 300 MiB


def test_every_reap_keeps_the_rusage_whoever_polls() -> None:
    child = Child(["sh", "-c", "exit 3"])
    while child.poll() is None:  # polls, as a runtime waiting for its container does
        pass
    assert child.returncode == 3 and child.rusage is not None and child.exit_ns is not None
    assert child.wait() == 3
    killed = Child(["sleep", "30"])
    killed.terminate()
    assert killed.wait(timeout=10) == -15 and killed.rusage is not None
