"""How each family's exit reads (`Runtime.classify_exit`), from the exit status and what the console
and the tender's stderr showed: the rules, case by case, without booting anything.

The live counterparts boot real guests: tests/test_hvt.py (Solo5 hvt), tests/test_solo5_virtio.py,
tests/test_nanos_exit.py. Unikraft has no binaries here, so its rules are checked on the recorded
transcripts (tests/testdata/consoles/unikraft-*.txt, sources on their first lines) and on lines
written after Unikraft's own format strings (lib/ukboot/boot.c, lib/ukrandom/random.c; marked
"derived").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from support import ROOT

from uniobs.guest.parsers.detect import replay
from uniobs.model import Severity
from uniobs.plugin import EXIT_REASONS, ExitInfo, GuestEvent, Launch, Milestone
from uniobs.registry import Registry
from uniobs.runtimes.select import Runtimes

CONSOLES = ROOT / "tests" / "testdata" / "consoles"
SOLO5_VIRTIO = ["qemu-system-x86_64", "-cpu", "Westmere", "-device", "isa-debug-exit", "-kernel", "t.virtio"]
UNIKRAFT = ["qemu-system-x86_64", "-device", "isa-debug-exit", "-kernel", "app_qemu-x86_64"]
NANOS = ["qemu-system-x86_64", "-machine", "q35", "-device", "isa-debug-exit", "-drive", "file=fn.img,format=raw"]


def launch_of(argv: list[str], tmp_path: Path) -> Launch:
    runtimes = Runtimes()
    plan = runtimes.plan(argv, tmp_path, "vm")
    return runtimes.of(plan).start(plan)


def console(lines: list[str] | str) -> tuple[str | None, list[GuestEvent]]:
    """The family and the exit/crash events the installed parsers find in a console (a transcript's
    name, or lines)."""
    source: Any = CONSOLES / lines if isinstance(lines, str) else lines
    if isinstance(source, Path):
        source = source.read_text().splitlines()[1:]  # the first line names the source
    result = replay(source, Registry().parsers)
    return result.family, [e for e in result.events if e.milestone in (Milestone.EXIT, Milestone.CRASH)]


def classify(
    argv: list[str], returncode: int, tmp_path: Path, lines: list[str] | str = "", stderr: tuple[str, ...] = ()
) -> ExitInfo:
    """The runtime's reading of an exit, after a console of `lines` (or a transcript's name) and `stderr`."""
    launch = launch_of(argv, tmp_path)
    seen = launch.observed
    if lines:
        seen.console_family, events = console(lines)
        for event in events:
            seen.saw(event)
    seen.console_output = bool(lines)
    seen.stderr.extend(stderr)
    return launch.runtime.classify_exit(returncode, launch)


def test_one_vocabulary_and_one_wording() -> None:
    assert set(EXIT_REASONS) == {
        "exit", "crash", "tender-error", "signal", "host-signal", "guest-shutdown", "guest-reset", "oom-killed",
    }  # fmt: skip
    clean = ExitInfo.of(83, "exit", {}, guest_exit_code=0)
    assert (clean.describe(), clean.severity(), clean.clean) == (
        "exit (guest status 0), status 83",
        Severity.INFO,
        True,
    )
    failed = ExitInfo.of(15, "exit", {}, guest_exit_code=7)
    assert (failed.describe(), failed.severity()) == ("exit (guest status 7), status 15", Severity.WARN)
    unknown = ExitInfo.of(83, "exit", {}, detail="status unknown")
    assert (unknown.describe(), unknown.severity()) == ("exit (status unknown), status 83", Severity.WARN)
    crash = ExitInfo.of(255, "crash", {}, detail="Fatal trap", marker="solo5.abort")
    assert (crash.describe(), crash.severity()) == ("crash (Fatal trap), status 255", Severity.ERROR)
    assert crash.attributes == {
        "uniobs.exit.reason": "crash", "uniobs.exit.detail": "Fatal trap", "uniobs.exit.marker": "solo5.abort",
    }  # fmt: skip
    killed = ExitInfo.by_signal(9, -9, {})
    assert (killed.describe(), killed.severity()) == ("signal (SIGKILL), status 137", Severity.ERROR)
    assert ExitInfo.of(3, "exit", {}).describe() == "exit, status 3"  # a process: no guest status


# --- Solo5 hvt: the tender's status is the guest's; 255 is SOLO5_EXIT_ABORT; 1 with its own error is its failure


def test_hvt_rules(tmp_path: Path) -> None:
    hvt = ["solo5-hvt", "test.hvt"]
    ok = classify(hvt, 0, tmp_path, "solo5-1.txt")
    assert (ok.reason, ok.guest_exit_code, ok.attributes["uniobs.exit.marker"]) == ("exit", 0, "solo5.exit")
    trap = classify(hvt, 255, tmp_path, "solo5-2.txt")  # IncludeOS trapping under hvt (Solo5 issue #331)
    assert (trap.reason, trap.detail, trap.guest_exit_code) == (
        "crash", "trap: type=#PF ec=0x3 rip=0x4653af rsp=0xa0000 rflags=0x10003", None
    )  # fmt: skip
    quiet = classify(hvt, 255, tmp_path)  # --solo5:quiet, and the console lost: the status says abort
    assert (quiet.reason, quiet.detail) == ("crash", "status 255 (SOLO5_EXIT_ABORT), no console marker")
    assert classify(hvt, 1, tmp_path).describe() == "exit (guest status 1), status 1"  # solo5_exit(1), quiet
    # the tender's warnings are not its failure
    warned = classify(
        hvt, 1, tmp_path, stderr=("solo5-hvt: WARNING: Tender is configured with HVT_DROP_PRIVILEGES=0.",)
    )
    assert (warned.reason, warned.guest_exit_code) == ("exit", 1)
    # a KVM error after the guest started is still the tender's, not the guest's exit
    kvm = classify(
        hvt, 1, tmp_path, ["Solo5: Bindings version v0.12.1", "Solo5: Memory map: 512 MB addressable:"],
        stderr=("solo5-hvt: KVM: internal error exit: suberror = 0x1",),
    )  # fmt: skip
    assert (kvm.reason, kvm.detail, kvm.guest_exit_code) == (
        "tender-error", "solo5-hvt: KVM: internal error exit: suberror = 0x1", None
    )  # fmt: skip
    # solo5_exit(1) printed: the guest's own status 1, whatever the tender said
    said = classify(hvt, 1, tmp_path, ["Solo5: solo5_exit(1) called"], stderr=("solo5-hvt: something odd",))
    assert (said.reason, said.guest_exit_code) == ("exit", 1)
    # a quiet guest that printed and exited 1, with the tender's note about --mem: the guest's status
    noted = classify(hvt, 1, tmp_path, ["hello"], stderr=("solo5-hvt: adjusting memory to 4292870144 bytes",))
    assert (noted.reason, noted.guest_exit_code) == ("exit", 1)
    odd = classify(hvt, 1, tmp_path, ["hello"], stderr=("solo5-hvt: something odd",))  # after the guest ran
    assert (odd.reason, odd.guest_exit_code) == ("exit", 1)
    assert classify(hvt, -9, tmp_path).describe() == "signal (SIGKILL), status 137"


# --- Solo5 virtio: always 41 (QEMU 83); the console says what happened


def test_solo5_virtio_rules(tmp_path: Path) -> None:
    legacy = classify(SOLO5_VIRTIO, 83, tmp_path, "solo5-4.txt")  # `solo5_app_main() returned with 0`
    assert (legacy.reason, legacy.guest_exit_code, legacy.attributes["uniobs.guest.debug_exit"]) == ("exit", 0, 41)
    failed = classify(SOLO5_VIRTIO, 83, tmp_path, ["Solo5: Bindings version v0.12.1", "Solo5: solo5_exit(2) called"])
    assert failed.describe() == "exit (guest status 2), status 83"
    crashed = classify(
        SOLO5_VIRTIO, 83, tmp_path, ["Solo5: Bindings version v0.12.1", "Solo5: ABORT: Stack corruption detected"]
    )
    assert (crashed.reason, crashed.detail) == ("crash", "Stack corruption detected")
    unknown = classify(SOLO5_VIRTIO, 83, tmp_path, ["Solo5: Bindings version v0.12.1", "SUCCESS"])
    assert (unknown.reason, unknown.guest_exit_code) == ("exit", None) and "status unknown" in (unknown.detail or "")


# --- Unikraft: 41 (QEMU 83) a halt, 42 (QEMU 85) a crash; the console gives main()'s status and the crash's cause


def test_unikraft_crash_transcripts(tmp_path: Path) -> None:
    for transcript, detail in [
        ("unikraft-3.txt", "Failed to mount /: 0"),  # app-python3: rootfs mount failure at boot
        ("unikraft-4.txt", "Assertion failure: ukarch_paddr_range_isvalid(pa)"),  # elfloader
    ]:
        info = classify(UNIKRAFT, 85, tmp_path, transcript)
        assert (info.reason, info.detail, info.attributes["uniobs.guest.debug_exit"]) == ("crash", detail, 42)
        assert info.describe() == f"crash ({detail}), status 85"
    # without isa-debug-exit (Unikraft then powers off through ACPI): the console's crash still counts
    info = classify(["qemu-system-x86_64", "-kernel", "app"], 0, tmp_path, "unikraft-3.txt")
    assert (info.reason, info.detail) == ("crash", "Failed to mount /: 0")
    # the crash status alone (console lost) is a crash too
    lost = classify(
        UNIKRAFT, 85, tmp_path, ["[    0.000000] Info: [libkvmplat] <bootinfo.c @   56> Unikraft Epimetheus (0.12.0)"]
    )
    assert (lost.reason, lost.detail) == ("crash", "isa-debug-exit 42: Unikraft crashed")


# derived from lib/ukrandom/random.c ("Could not initialize the HWRNG (%d)") and lib/ukboot/boot.c
# ("Init function at %p returned error %d", "Halting system (%d)", "main returned %d")
HWRNG_FAILURE = [
    "[    0.000000] Info: [libkvmplat] <bootinfo.c @   56> Unikraft Pan (0.17.0~5bd4fa6)",
    "[    0.104117] ERR:  [libukrandom] <random.c @   75> Could not initialize the HWRNG (-95)",
    "[    0.104251] ERR:  [libukboot] <boot.c @  375> Init function at 0x13d230 returned error -95",
    "[    0.104331] Info: [libukboot] <boot.c @  400> Halting system (3)",
]
HALT = [
    "[    0.000000] Info: [libkvmplat] <bootinfo.c @   56> Unikraft Pan (0.17.0~5bd4fa6)",
    "[    0.201377] Info: [libukboot] <boot.c @  480> Calling main(1, ['app'])",
    "Hello world!",
    "[    0.201934] Info: [libukboot] <boot.c @  492> main returned 3",
    "[    0.202003] Info: [libukboot] <boot.c @  400> Halting system (0)",
]


def test_unikraft_hwrng_boot_failure_is_a_crash_not_exited_before_ready(tmp_path: Path) -> None:
    family, events = console(HWRNG_FAILURE)
    assert family == "unikraft"
    [crash] = [e for e in events if e.milestone is Milestone.CRASH]
    assert crash.name == "unikraft.boot_failed" and not any(e.milestone is Milestone.EXIT for e in events)
    info = classify(UNIKRAFT, 85, tmp_path, HWRNG_FAILURE)
    assert info.reason == "crash" and info.severity() is Severity.ERROR
    assert info.detail == "Could not initialize the HWRNG (-95); Init function at 0x13d230 returned error -95"
    # its halt line (UKPLAT_CRASH) alone also says crash
    _, events = console([HWRNG_FAILURE[0], HWRNG_FAILURE[-1]])
    assert [(e.name, e.milestone) for e in events] == [("unikraft.halt", Milestone.CRASH)]


def test_unikraft_halt_is_an_exit_with_main_s_status(tmp_path: Path) -> None:
    info = classify(UNIKRAFT, 83, tmp_path, HALT)
    assert (info.reason, info.guest_exit_code, info.describe()) == ("exit", 3, "exit (guest status 3), status 83")
    lost = classify(UNIKRAFT, 83, tmp_path, HALT[:1])  # no `main returned`: halted, status not printed
    assert (lost.reason, lost.guest_exit_code, lost.detail) == ("exit", None, "Unikraft halted (isa-debug-exit 41)")


# --- Nanos with debug_exit: (status << 1) | 1; a fatal signal only on the console


def test_nanos_rules(tmp_path: Path) -> None:
    assert classify(NANOS, 1, tmp_path, ["exiting with 0"]).describe() == "exit (guest status 0), status 1"
    assert classify(NANOS, 15, tmp_path, ["exiting with 7"]).describe() == "exit (guest status 7), status 15"
    crashed = classify(NANOS, 23, tmp_path, "nanos-1.txt")  # ops' debugging.md: a C program's SIGSEGV
    assert (crashed.reason, crashed.detail, crashed.attributes["uniobs.exit.marker"]) == (
        "crash", "signal 11 received by tid 2", "nanos.signal"
    )  # fmt: skip


# --- QEMU itself


def test_qemu_rules(tmp_path: Path) -> None:
    debug_exit = ["qemu-system-x86_64", "-device", "isa-debug-exit,iobase=0xf4", "-kernel", "k"]
    assert classify(debug_exit, 7, tmp_path, ["PANIC: x"]).describe() == "exit (guest status 3), status 7"
    failed = classify(debug_exit, 1, tmp_path, stderr=("qemu-system-x86_64: -kernel k: No such file",))
    assert (failed.reason, failed.guest_exit_code) == ("tender-error", None)  # not "guest status 0"
    warned = classify(debug_exit, 1, tmp_path, ["boot"], stderr=("qemu-system-x86_64: warning: TCG doesn't support",))
    assert (warned.reason, warned.guest_exit_code) == ("exit", 0)  # the guest wrote 0
    assert classify(["qemu-system-x86_64", "-kernel", "k"], 0, tmp_path).describe() == "exit, status 0"
