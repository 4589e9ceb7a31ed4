"""Solo5 hvt: `uniobs run -- solo5-hvt ...` owns the tender's stdout and reports its exit.

Solo5 is not packaged for Debian and cannot be built here, so the tender is a stand-in: a
script named `solo5-hvt` that replays a real hvt console transcript
(tests/testdata/consoles/solo5-1.txt, from Solo5's docs/building.md; source on its first line)
and exits with the status solo5_exit() printed. What is tested is uniobs' side of the contract:
the command is recognised, its stdout is the console from the first byte, and the exit status
becomes the guest's exit code.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from otlpfile import Signals

from uniobs.runtimes.launch import plan_launch
from uniobs.runtimes.procscan import parse_hvt

CONSOLES = Path(__file__).parent / "testdata" / "consoles"


def fake_tender(tmp_path: Path, transcript: str, status: int) -> Path:
    lines = (CONSOLES / transcript).read_text().splitlines()
    console = "\n".join(line for line in lines[1:] if not line.startswith("$ ")) + "\n"
    (tmp_path / "console.txt").write_text(console)
    tender = tmp_path / "solo5-hvt"
    tender.write_text(f"#!/bin/sh\ncat {tmp_path / 'console.txt'}\nexit {status}\n")
    tender.chmod(tender.stat().st_mode | stat.S_IXUSR)
    return tender


def test_the_hvt_command_line_is_understood() -> None:
    plan = plan_launch(["solo5-hvt", "--mem=64", "--net:service=tap0", "hello.hvt", "--arg"], "/tmp", "t")
    assert (plan.runtime, plan.kernel, plan.console) == ("solo5-hvt", "hello.hvt", "fd:stdout")
    assert plan.argv == ["solo5-hvt", "--mem=64", "--net:service=tap0", "hello.hvt", "--arg"]  # untouched
    assert plan_launch(["/opt/ukvm-bin", "app.ukvm"], "/tmp", "t").runtime == "solo5-hvt"  # the legacy tender
    info = parse_hvt(7, ["solo5-hvt", "--mem=64", "/srv/fn/hello.hvt"], "/var/log/hello.console")
    assert (info.name, info.console) == ("hello", "tail:/var/log/hello.console")
    assert parse_hvt(7, ["solo5-hvt", "a.hvt"], "pipe:[1234]").console is None


def test_run_owns_the_tender_stdout_and_reports_solo5_exit(tmp_path: Path) -> None:
    tender = fake_tender(tmp_path, "solo5-1.txt", 0)
    out = tmp_path / "t.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "uniobs.cli", "run", "--export", f"file:{out}", "--",
         str(tender), "--mem=32", "main.hvt"],
        capture_output=True, timeout=60, env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    signals = Signals(out)
    console = signals.console()
    assert console == (tmp_path / "console.txt").read_text().splitlines()
    assert console[-1] == "Solo5: solo5_exit(0) called"
    exited = signals.events()[-1]
    assert exited["attributes"]["uniobs.exit.reason"] == "guest-exit"
    assert exited["attributes"]["uniobs.guest.exit_code"] == 0
    assert exited["resource"]["uniobs.workload.runtime"] == "solo5-hvt"
    assert exited["resource"]["service.name"] == "main"  # named after the image


def test_a_failing_guest_status_is_the_run_status(tmp_path: Path) -> None:
    tender = fake_tender(tmp_path, "solo5-2.txt", 255)  # IncludeOS trapping under hvt: solo5_abort
    out = tmp_path / "t.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "uniobs.cli", "run", "-q", "--export", f"file:{out}", "--", str(tender), "demo.hvt"],
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 255
    exited = Signals(out).events()[-1]
    assert exited["attributes"]["uniobs.guest.exit_code"] == 255 and exited["severity"] == "WARN"
    assert any("Solo5: ABORT" in line for line in Signals(out).console())
