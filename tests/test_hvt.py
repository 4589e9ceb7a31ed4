"""Solo5 hvt: `uniobs run -- solo5-hvt ...` with the real tender and Solo5's own test unikernels.

The binaries are Solo5 v0.12 (../shared/unikernels/solo5, see its README): the tests skip, visibly,
where that folder is absent. What is tested: the guest's command line is exactly the user's (unless
--propagate-trace), the tender's stdout is the console from the first byte, its stderr is its own
(exported as log records), and the exit reads by Solo5's conventions: `solo5_exit(N)` is an exit with
guest status N; an abort or trap (tender status 255) a crash, with the console's marker; the tender's
own failure (status 1, its error on stderr, no guest exit) a tender error, with its message.

The stand-in tender (a script replaying a published console) stays for one thing the real one cannot
show here: a console whose tender is not Solo5 v0.12 (the legacy v0.7 banner of solo5-1.txt).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from otlpfile import Signals
from support import UNIKERNELS, requires_kvm, requires_solo5

from uniobs.runtimes.launch import plan_launch
from uniobs.runtimes.procscan import parse_hvt

CONSOLES = Path(__file__).parent / "testdata" / "consoles"
SOLO5 = UNIKERNELS / "solo5"
TENDER = SOLO5 / "solo5-hvt"


def image(name: str, target: str = "hvt") -> str:
    """One of Solo5's test unikernels."""
    return str(SOLO5 / "tests" / f"test_{name}.{target}")


class Run:
    def __init__(self, result: subprocess.CompletedProcess[bytes], out: Path) -> None:
        self.result = result
        self.status = result.returncode
        self.stderr = result.stderr.decode(errors="replace")
        self.signals = Signals(out)
        self.exited: dict[str, Any] = self.signals.events()[-1]
        assert self.exited["event"] == "uniobs.exited"
        self.attributes: dict[str, Any] = self.exited["attributes"]
        self.reason = self.attributes["uniobs.exit.reason"]

    def summary(self) -> str:
        return next(line for line in self.stderr.splitlines() if " exited: " in line)

    def root_span(self) -> dict[str, Any]:
        [root] = [s for s in self.signals.spans() if s["name"] == "coldstart"]
        return root


def uniobs_run(tmp_path: Path, *command: str, flags: tuple[str, ...] = ("-q",)) -> Run:
    out = tmp_path / "t.jsonl"
    out.unlink(missing_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "uniobs.cli", "run", *flags, "--export", f"file:{out}", "--", *command],
        capture_output=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    return Run(result, out)


def test_the_hvt_command_line_is_understood() -> None:
    plan = plan_launch(["solo5-hvt", "--mem=64", "--net:service=tap0", "hello.hvt", "--arg"], "/tmp", "t")
    assert (plan.runtime, plan.kernel, plan.console, plan.capture_stderr) == (
        "solo5-hvt", "hello.hvt", "fd:stdout", True
    )  # fmt: skip
    assert plan.argv == ["solo5-hvt", "--mem=64", "--net:service=tap0", "hello.hvt", "--arg"]  # untouched
    assert plan_launch(["/opt/ukvm-bin", "app.ukvm"], "/tmp", "t").runtime == "solo5-hvt"  # the legacy tender
    info = parse_hvt(7, ["solo5-hvt", "--mem=64", "/srv/fn/hello.hvt"], "/var/log/hello.console")
    assert (info.name, info.console) == ("hello", "tail:/var/log/hello.console")
    assert parse_hvt(7, ["solo5-hvt", "a.hvt"], "pipe:[1234]").console is None


@pytest.mark.parametrize("flags", [("-q",), ()], ids=["quiet", "console-copied"])
@requires_solo5
@requires_kvm
def test_hello_runs_with_exactly_its_argv_and_exits_clean(tmp_path: Path, flags: tuple[str, ...]) -> None:
    run = uniobs_run(tmp_path, str(TENDER), image("hello"), "Hello_Solo5", flags=flags)
    assert run.status == 0, run.stderr
    console = run.signals.console()
    assert "Command line is: 'Hello_Solo5'" in console and "SUCCESS" in console  # nothing was added
    assert console[-1] == "Solo5: solo5_exit(0) called"
    assert (run.reason, run.attributes["uniobs.guest.exit_code"], run.exited["severity"]) == ("exit", 0, "INFO")
    assert run.attributes["uniobs.exit.marker"] == "solo5.exit"
    assert run.exited["resource"]["uniobs.workload.runtime"] == "solo5-hvt"
    assert run.exited["resource"]["service.name"] == "test_hello"  # named after the image
    assert run.summary().startswith("uniobs: test_hello exited: exit (guest status 0), status 0 -> ")
    assert run.signals.last("uniobs.workload.exits", uniobs_exit_reason="exit") == 1
    if not flags:  # the console is copied to our stdout too
        assert b"SUCCESS" in run.result.stdout


@requires_solo5
@requires_kvm
def test_propagate_trace_adds_the_traceparent_as_the_guest_s_last_argument(tmp_path: Path) -> None:
    run = uniobs_run(tmp_path, str(TENDER), image("hello"), "Hello_Solo5", flags=("-q", "--propagate-trace"))
    root = run.root_span()
    traceparent = f"00-{root['traceId']}-{root['spanId']}-01"
    # the guest printed the command line it was given: the user's, then the traceparent
    assert f"Command line is: 'Hello_Solo5 traceparent={traceparent}'" in run.signals.console()
    assert "SUCCESS" not in run.signals.console()  # which is why it is not done unless asked
    assert (run.status, run.reason) == (0, "exit")


@pytest.mark.parametrize(
    ("name", "detail", "marker"),
    [
        ("exception", "trap: type=#PF ec=0x2 rip=", "solo5.trap"),
        ("zeropage", "trap: type=#PF ec=0x2 rip=", "solo5.trap"),
        ("ssp", "Stack corruption detected", "solo5.abort"),
        ("dumpcore", "solo5_abort() called", "solo5.abort"),
    ],
)
@requires_solo5
@requires_kvm
def test_aborts_and_traps_are_crashes_with_their_marker(tmp_path: Path, name: str, detail: str, marker: str) -> None:
    run = uniobs_run(tmp_path, str(TENDER), image(name))
    assert run.status == 255  # SOLO5_EXIT_ABORT: the tender's status is the run's
    assert (run.reason, run.exited["severity"], run.attributes["uniobs.exit.marker"]) == ("crash", "ERROR", marker)
    assert run.attributes["uniobs.exit.detail"].startswith(detail)
    assert "uniobs.guest.exit_code" not in run.attributes  # a crash is not a status the guest chose
    described = f"crash ({run.attributes['uniobs.exit.detail']}), status 255"
    assert run.summary().startswith(f"uniobs: test_{name} exited: {described} -> ")
    assert run.exited["body"] == f"exited: {described}"
    assert run.root_span()["status"]["message"] == f"crash ({run.attributes['uniobs.exit.detail']})"
    assert run.signals.last("uniobs.workload.exits", uniobs_exit_reason="crash") == 1


@requires_solo5
@requires_kvm
def test_quiet_and_time_exit_clean(tmp_path: Path) -> None:
    # --solo5:quiet: Solo5 prints neither banner nor solo5_exit(); the tender's status is the guest's
    run = uniobs_run(tmp_path, str(TENDER), image("quiet"), "--solo5:quiet")
    assert (run.status, run.reason, run.attributes["uniobs.guest.exit_code"]) == (0, "exit", 0), run.stderr
    assert "SUCCESS" in run.signals.console()
    assert not any(line.startswith("Solo5: ") for line in run.signals.console())
    assert "uniobs.exit.marker" not in run.attributes
    run = uniobs_run(tmp_path, str(TENDER), image("time"))  # sleeps and checks its clocks (about 3 s)
    assert (run.status, run.reason, run.attributes["uniobs.guest.exit_code"]) == (0, "exit", 0), run.stderr
    assert run.signals.console()[-2:] == ["SUCCESS", "Solo5: solo5_exit(0) called"]


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (
            ("/nonexistent/missing.hvt",),
            "solo5-hvt: /nonexistent/missing.hvt: Could not open: No such file or directory",
        ),
        (
            (image("hello", "virtio"),),
            f"solo5-hvt: {image('hello', 'virtio')}: Executable is not for the solo5-hvt target",
        ),
        (("--bogus", image("hello")), "solo5-hvt: Invalid option: `--bogus'"),
        (("--mem=abc", image("hello")), "solo5-hvt: Malformed argument to --mem"),
    ],
    ids=["missing-image", "wrong-target", "bad-option", "bad-value"],
)
@requires_solo5
def test_the_tender_s_own_failure_is_a_tender_error_not_a_guest_exit(
    tmp_path: Path, command: tuple[str, ...], message: str
) -> None:
    run = uniobs_run(tmp_path, str(TENDER), *command)
    assert run.status == 1  # the tender's errx(1): still the run's status
    assert (run.reason, run.attributes["uniobs.exit.detail"], run.exited["severity"]) == (
        "tender-error", message, "ERROR"
    )  # fmt: skip
    assert "uniobs.guest.exit_code" not in run.attributes  # no guest ran
    assert run.signals.console() == []
    assert run.signals.stderr()[0] == message  # the tender's stderr is exported (log.iostream=stderr)
    assert message in run.stderr  # and still shown, even with --quiet (it is not the guest console)
    described = f"tender-error ({message}), status 1"
    assert run.summary().startswith(f"uniobs: {Path(command[-1]).stem} exited: {described} -> ")
    assert run.root_span()["status"]["message"] == f"exited before ready: {described}"
    assert run.signals.last("uniobs.workload.exits", uniobs_exit_reason="tender-error") == 1


# --- the stand-in: a published console of an older Solo5 (v0.7.5), which the real tender cannot show


def fake_tender(tmp_path: Path, transcript: str, status: int) -> Path:
    lines = (CONSOLES / transcript).read_text().splitlines()
    console = "\n".join(line for line in lines[1:] if not line.startswith("$ ")) + "\n"
    (tmp_path / "console.txt").write_text(console)
    tender = tmp_path / "solo5-hvt"
    tender.write_text(f"#!/bin/sh\ncat {tmp_path / 'console.txt'}\nexit {status}\n")
    tender.chmod(tender.stat().st_mode | stat.S_IXUSR)
    return tender


def test_a_published_v0_7_console_is_read_the_same_way(tmp_path: Path) -> None:
    tender = fake_tender(tmp_path, "solo5-1.txt", 0)  # Solo5's docs/building.md: the v0.7.5 banner
    out = tmp_path / "t.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "uniobs.cli", "run", "--export", f"file:{out}", "--",
         str(tender), "--mem=32", "main.hvt"],
        capture_output=True, timeout=60, env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    signals = Signals(out)
    assert signals.console() == (tmp_path / "console.txt").read_text().splitlines()
    exited = signals.events()[-1]
    assert (exited["attributes"]["uniobs.exit.reason"], exited["attributes"]["uniobs.guest.exit_code"]) == ("exit", 0)
    assert exited["resource"]["service.name"] == "main"
