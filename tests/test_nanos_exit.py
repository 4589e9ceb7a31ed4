"""Nanos exits under `uniobs run`: a small static C program packed with Nanos' own `mkfs`
(../shared/unikernels/nanos, see its README; skipped, visibly, where absent) and booted under QEMU TCG.

With the `debug_exit` manifest option Nanos ends QEMU through isa-debug-exit with
`(program status << 1) | 1`: exit 0 -> QEMU 1, exit 7 -> QEMU 15, and a crash (SIGSEGV) -> QEMU 23,
which only the console's `*** signal 11 received by tid N` tells apart from `exit(11)`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from otlpfile import Signals
from support import UNIKERNELS, requires_gcc, requires_nanos, requires_qemu

pytestmark = [pytest.mark.qemu, requires_qemu, requires_gcc, requires_nanos]

NANOS = UNIKERNELS / "nanos"
PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "crash") == 0) {
        printf("about to crash\n");
        fflush(stdout);
        *(volatile int *)0 = 1; /* SIGSEGV */
    }
    int status = argc > 1 ? atoi(argv[1]) : 0;
    printf("exiting with %d\n", status);
    fflush(stdout);
    return status;
}
"""


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One Nanos image per program argument: `0`, `7`, `crash`."""
    folder = tmp_path_factory.mktemp("nanos")
    (folder / "prog.c").write_text(PROGRAM)
    subprocess.run(["gcc", "-static", "-O1", "-o", str(folder / "prog"), str(folder / "prog.c")], check=True)
    built = {}
    for argument in ("0", "7", "crash"):
        image = folder / f"prog-{argument}.img"
        manifest = f"(children:(prog:(contents:(host:{folder / 'prog'}))) program:/prog arguments:[prog {argument}])"
        subprocess.run(
            [str(NANOS / "mkfs"), "-b", str(NANOS / "boot.img"), "-k", str(NANOS / "kernel.img"),
             "-t", "(debug_exit:t)", str(image)],
            input=manifest.encode(), check=True, capture_output=True,
        )  # fmt: skip
        built[argument] = image
    return built


def boot(image: Path, out: Path) -> tuple[subprocess.CompletedProcess[bytes], dict[str, Any], Signals]:
    qemu = ["qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-cpu", "max", "-m", "256M", "-display", "none",
            "-serial", "stdio", "-no-reboot", "-device", "isa-debug-exit",
            "-drive", f"if=none,id=hd0,format=raw,file={image}", "-device", "virtio-scsi-pci,id=scsi0",
            "-device", "scsi-hd,bus=scsi0.0,drive=hd0"]  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "uniobs.cli", "run", "-q", "--export", f"file:{out}", "--", *qemu],
        capture_output=True, timeout=180, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    signals = Signals(out)
    record = signals.events()[-1]
    assert record["event"] == "uniobs.exited", result.stderr
    return result, record, signals


@pytest.mark.parametrize(("argument", "qemu_status", "severity"), [("0", 1, "INFO"), ("7", 15, "WARN")])
def test_the_program_s_exit_status_is_the_guest_status(
    images: dict[str, Path], tmp_path: Path, argument: str, qemu_status: int, severity: str
) -> None:
    result, record, signals = boot(images[argument], tmp_path / "t.jsonl")
    assert result.returncode == qemu_status, result.stderr  # uniobs exits with QEMU's status
    assert f"exiting with {argument}" in signals.console()
    attributes = record["attributes"]
    assert (attributes["uniobs.exit.reason"], attributes["uniobs.guest.exit_code"], record["severity"]) == (
        "exit", int(argument), severity
    )  # fmt: skip
    described = f"exit (guest status {argument}), status {qemu_status}"
    assert record["body"] == f"exited: {described}"
    assert f" exited: {described} -> " in result.stderr.decode()
    assert signals.last("uniobs.workload.exits", uniobs_exit_reason="exit") == 1


def test_a_segfault_is_a_crash_not_exit_11(images: dict[str, Path], tmp_path: Path) -> None:
    result, record, signals = boot(images["crash"], tmp_path / "t.jsonl")
    assert result.returncode == 23, result.stderr  # (11 << 1) | 1
    assert "about to crash" in signals.console()
    attributes = record["attributes"]
    assert (attributes["uniobs.exit.reason"], attributes["uniobs.exit.marker"], record["severity"]) == (
        "crash", "nanos.signal", "ERROR"
    )  # fmt: skip
    assert attributes["uniobs.exit.detail"].startswith("signal 11 received by tid ")
    assert "uniobs.guest.exit_code" not in attributes
    assert f" exited: crash ({attributes['uniobs.exit.detail']}), status 23 -> " in result.stderr.decode()
    assert signals.last("uniobs.workload.exits", uniobs_exit_reason="crash") == 1
