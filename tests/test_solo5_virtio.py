"""Solo5's virtio target under QEMU (TCG): `uniobs run -- qemu-system-x86_64 ... -kernel test_X.virtio`.

Solo5 virtio always writes 41 to isa-debug-exit, so QEMU exits 83 whatever the guest did: the guest's
own end is on its console (`Solo5: solo5_exit(N) called`, a trap, an abort), and uniobs reads it there.
The binaries are Solo5 v0.12's test unikernels (../shared/unikernels/solo5, see its README); the tests
skip, visibly, where that folder is absent.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from otlpfile import Signals
from support import UNIKERNELS, requires_qemu, requires_solo5

pytestmark = [pytest.mark.qemu, requires_qemu, requires_solo5]

TESTS = UNIKERNELS / "solo5" / "tests"
QEMU = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "Westmere", "-m", "128", "-nodefaults", "-no-acpi",
        "-display", "none", "-serial", "stdio", "-device", "isa-debug-exit"]  # fmt: skip


def uniobs_run(tmp_path: Path, *qemu_args: str, flags: tuple[str, ...] = ()) -> tuple[int, str, Signals]:
    out = tmp_path / "t.jsonl"
    out.unlink(missing_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "uniobs.cli", "run", "-q", *flags, "--export", f"file:{out}", "--", *QEMU, *qemu_args],
        capture_output=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    return result.returncode, result.stderr.decode(errors="replace"), Signals(out)


def exited(signals: Signals) -> dict[str, Any]:
    record = signals.events()[-1]
    assert record["event"] == "uniobs.exited"
    return record


def summary(stderr: str) -> str:
    return next(line for line in stderr.splitlines() if " exited: " in line)


def root_span(signals: Signals) -> dict[str, Any]:
    [root] = [s for s in signals.spans() if s["name"] == "coldstart"]
    return root


def test_hello_gets_exactly_its_command_line_and_its_status_comes_from_the_console(tmp_path: Path) -> None:
    status, stderr, signals = uniobs_run(
        tmp_path, "-kernel", str(TESTS / "test_hello.virtio"), "-append", "Hello_Solo5"
    )
    assert status == 83, stderr  # QEMU's: (41 << 1) | 1, whatever the guest did; uniobs exits with it
    console = signals.console()
    assert "Command line is: 'Hello_Solo5'" in console and "SUCCESS" in console  # -append as given
    record = exited(signals)
    attributes = record["attributes"]
    assert (attributes["uniobs.exit.reason"], attributes["uniobs.guest.exit_code"]) == ("exit", 0)
    assert (attributes["uniobs.guest.debug_exit"], attributes["process.exit.code"]) == (41, 83)
    assert (attributes["uniobs.exit.marker"], record["severity"]) == ("solo5.exit", "INFO")
    # one wording everywhere: the record, the summary line (and the cold-start span when it fails: below)
    assert record["body"] == "exited: exit (guest status 0), status 83"
    assert summary(stderr).startswith("uniobs: test_hello exited: exit (guest status 0), status 83 -> ")


def test_propagate_trace_appends_the_traceparent_to_append(tmp_path: Path) -> None:
    status, stderr, signals = uniobs_run(
        tmp_path, "-kernel", str(TESTS / "test_hello.virtio"), "-append", "Hello_Solo5", flags=("--propagate-trace",)
    )
    root = root_span(signals)
    assert f"Command line is: 'Hello_Solo5 traceparent=00-{root['traceId']}-{root['spanId']}-01'" in signals.console()
    assert "SUCCESS" not in signals.console()
    assert (status, exited(signals)["attributes"]["uniobs.exit.reason"]) == (83, "exit"), stderr


@pytest.mark.parametrize(
    ("name", "detail", "marker"),
    [("exception", "trap: type=#PF ec=0x2 rip=", "solo5.trap"), ("dumpcore", "solo5_abort() called", "solo5.abort")],
)
def test_a_trap_or_abort_is_a_crash_though_qemu_exits_83_as_for_success(
    tmp_path: Path, name: str, detail: str, marker: str
) -> None:
    status, stderr, signals = uniobs_run(tmp_path, "-kernel", str(TESTS / f"test_{name}.virtio"))
    assert status == 83, stderr
    record = exited(signals)
    attributes = record["attributes"]
    assert (attributes["uniobs.exit.reason"], attributes["uniobs.exit.marker"], record["severity"]) == (
        "crash", marker, "ERROR"
    )  # fmt: skip
    assert attributes["uniobs.exit.detail"].startswith(detail) and "uniobs.guest.exit_code" not in attributes
    assert summary(stderr).startswith(
        f"uniobs: test_{name} exited: crash ({attributes['uniobs.exit.detail']}), status 83"
    )
    assert signals.last("uniobs.workload.exits", uniobs_exit_reason="crash") == 1


def test_a_quiet_guest_s_status_is_unknown_not_41(tmp_path: Path) -> None:
    # --solo5:quiet: no solo5_exit() line; the image's Solo5 ABI note says it is Solo5 virtio
    status, stderr, signals = uniobs_run(
        tmp_path, "-kernel", str(TESTS / "test_quiet.virtio"), "-append", "--solo5:quiet"
    )
    assert status == 83 and "SUCCESS" in signals.console(), stderr
    record = exited(signals)
    assert record["attributes"]["uniobs.exit.reason"] == "exit" and record["severity"] == "WARN"
    assert "uniobs.guest.exit_code" not in record["attributes"]  # not 41: that is Solo5's constant
    assert "status unknown" in record["attributes"]["uniobs.exit.detail"]
    described = f"exit ({record['attributes']['uniobs.exit.detail']}), status 83"
    assert record["body"] == f"exited: {described}"
    assert root_span(signals)["status"]["message"] == f"exited before ready: {described}"  # the same words
    assert summary(stderr).startswith(f"uniobs: test_quiet exited: {described} -> ")


def test_qemu_s_own_failure_is_a_tender_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.virtio"
    status, stderr, signals = uniobs_run(tmp_path, "-kernel", str(missing))
    assert status == 1
    record = exited(signals)
    message = f"qemu: could not open kernel file '{missing}': No such file or directory"
    assert (record["attributes"]["uniobs.exit.reason"], record["attributes"]["uniobs.exit.detail"]) == (
        "tender-error", message
    )  # fmt: skip
    assert "uniobs.guest.exit_code" not in record["attributes"]  # isa-debug-exit's "0" was never written
    assert signals.stderr() == [message] and message in stderr  # exported, and still shown with -q
