"""QEMU under every name distributions give it (issue 13, case 08), and Solo5's debug tender:
recognised as a command to launch and as a running process, by argv[0] or by /proc/PID/exe.

The recorded RHEL/KubeVirt command line (`/usr/libexec/qemu-kvm`) is a scenario of
tests/testdata/proc/ (test_procfs.py); here real QEMU runs under those names: through symlinks
named as RHEL and Debian install it, Debian's own `qemu-system-x86_64-microvm` binary, and with an
argv[0] no name rule knows, and `uniobs run` launches the example unikernel through `qemu-kvm`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from otlpfile import Signals
from support import ROOT, requires_qemu

from uniobs.runtimes.procscan import scan_vmms, vmm_info
from uniobs.runtimes.qmp import QmpClient, QmpError, parse_status
from uniobs.runtimes.select import Runtimes

KERNEL = ROOT / "examples" / "minikernel" / "build" / "minikernel.elf"
QEMU = shutil.which("qemu-system-x86_64")

QEMU_NAMES = [
    "qemu-system-x86_64",
    "/usr/bin/qemu-system-aarch64",
    "/usr/bin/qemu-system-x86_64-microvm",  # Debian's microvm-only build
    "qemu-system-x86_64-spice",  # a distribution's wrapper
    "qemu-system-x86_64-7.2",  # a versioned install
    "/usr/libexec/qemu-kvm",  # RHEL, CentOS, Rocky, Fedora, KubeVirt's virt-launcher
    "/usr/bin/qemu-kvm",  # older Debian/Ubuntu and SUSE compatibility names
    "/usr/bin/kvm",  # Debian's and Ubuntu's symlink, Proxmox VE's binary
    "kvm-spice",  # Ubuntu
    "/nix/store/x-qemu-8.1.2/bin/.qemu-system-x86_64-wrapped",  # Nix's wrapped binary
]
NOT_QEMU = [
    "qemu-img", "qemu-nbd", "qemu-io", "qemu-ga", "qemu-pr-helper", "qemu-storage-daemon", "qemu-edid",
    "qemu-x86_64", "qemu-aarch64-static",  # user-mode emulators (binfmt_misc): no VM, no QMP
    "kvm-ok", "lkvm", "kvm_stat", "qemu-kvm.sh", "my-kvm", "qemu-system-", "qemu-system-X86",
]  # fmt: skip


@pytest.mark.parametrize("name", QEMU_NAMES)
def test_qemu_is_recognised_under_the_names_distributions_give_it(name: str) -> None:
    runtimes = Runtimes()
    assert runtimes.for_command([name, "-machine", "q35"]).name == "qemu"
    info = runtimes.get("qemu").inspect(
        7, [name, "-name", "guest=vm,debug-threads=on", "-qmp", "unix:/q.sock,server=on,wait=off"]
    )
    assert info is not None and (info.runtime, info.executable, info.name, info.qmp) == (
        "qemu", os.path.basename(name), "vm", "/q.sock"
    )  # fmt: skip


# Proxmox VE's command line (`qm showcmd 109 --pretty`, as published in its users' write-ups):
# /usr/bin/kvm, the name with a trailing option, and a second control monitor that is a *client*
# socket (QEMU connects to qmeventd): not the VM's QMP, whatever the order of the two.
PROXMOX = ["/usr/bin/kvm", "-id", "109", "-name", "q35-iGPU,debug-threads=on", "-no-shutdown",
           "-chardev", "socket,id=qmp,path=/var/run/qemu-server/109.qmp,server=on,wait=off",
           "-mon", "chardev=qmp,mode=control",
           "-chardev", "socket,id=qmp-event,path=/var/run/qmeventd.sock,reconnect=5",
           "-mon", "chardev=qmp-event,mode=control",
           "-pidfile", "/var/run/qemu-server/109.pid", "-daemonize", "-nodefaults"]  # fmt: skip


def test_proxmox_ve_s_kvm_and_its_qmp_socket() -> None:
    qemu = Runtimes().get("qemu")
    for argv in (PROXMOX, [*PROXMOX[:6], *PROXMOX[10:14], *PROXMOX[6:10], *PROXMOX[14:]]):  # either order
        info = qemu.inspect(109, argv)
        assert info is not None and (info.executable, info.name, info.qmp) == (
            "kvm", "q35-iGPU", "/var/run/qemu-server/109.qmp"
        )  # fmt: skip
    # a QMP socket QEMU would connect to, not listen on, is no QMP of the VM's
    client = ["qemu-system-x86_64", "-qmp", "unix:/run/other.sock", "-chardev", "socket,id=m,path=/run/m.sock",
              "-mon", "chardev=m,mode=control"]  # fmt: skip
    info = qemu.inspect(1, client)
    assert info is not None and info.qmp is None


@pytest.mark.parametrize("name", NOT_QEMU)
def test_other_qemu_and_kvm_tools_are_not_vmms(name: str) -> None:
    assert Runtimes().for_command([name, "info", "x"]).name == "process"


def test_solo5_s_debug_tender_is_the_hvt_runtime_s() -> None:
    runtimes = Runtimes()
    for name in ("solo5-hvt", "/usr/local/bin/solo5-hvt-debug", "ukvm-bin"):
        assert runtimes.for_command([name, "--mem=32", "k.hvt"]).name == "solo5-hvt", name
    for name in ("solo5-hvt-configure", "solo5-spt", "solo5-elftool"):  # a build script, another target, a tool
        assert runtimes.for_command([name, "k.hvt"]).name == "process", name


def test_a_launch_of_qemu_kvm_is_planned_as_qemu(tmp_path: Path) -> None:
    plan = Runtimes().plan(
        ["/usr/libexec/qemu-kvm", "-machine", "q35", "-serial", "stdio", "-kernel", "/srv/fn.elf"], tmp_path, "vm"
    )
    assert (plan.planned_by, plan.runtime, plan.executable) == ("qemu", "qemu", "qemu-kvm")
    assert plan.qmp is not None and f"unix:{plan.qmp},server=on,wait=off" in plan.argv  # uniobs' own QMP socket


# --- real QEMU under other names --------------------------------------------------------------


def _start(argv: list[str], qmp: Path, executable: str | None = None) -> subprocess.Popen[bytes]:
    """A QEMU that waits before its first instruction (-S), with a QMP socket at `qmp`."""
    proc = subprocess.Popen(
        [*argv, "-display", "none", "-nodefaults", "-S", "-name", "guest=named-vm,debug-threads=on",
         "-chardev", f"socket,id=charmonitor,path={qmp},server=on,wait=off",
         "-mon", "chardev=charmonitor,id=monitor,mode=control"],
        executable=executable, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while proc.poll() is None and time.monotonic() < deadline:
        try:  # QEMU binds its sockets before it listens, and may still fail after (an accelerator it lacks)
            with QmpClient(str(qmp)) as client:
                client.connect()
                if parse_status(client.execute("query-status")).status == "prelaunch":
                    return proc
        except QmpError:
            time.sleep(0.05)
    proc.kill()
    _, err = proc.communicate()
    pytest.fail(f"{argv[0]} did not start: {err.decode(errors='replace')}")


def _link(tmp_path: Path, rel: str) -> str:
    """QEMU's binary under another name, as a distribution installs it (a symlink: argv[0] is that name)."""
    assert QEMU is not None
    path = tmp_path / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(QEMU)
    return str(path)


STARTS = {
    "qemu-kvm": lambda tmp: ([_link(tmp, "usr/libexec/qemu-kvm"), "-machine", "none"], None),
    "kvm": lambda tmp: ([_link(tmp, "usr/bin/kvm"), "-machine", "none"], None),
    # argv[0] set to a name no rule knows (`exec -a`): only /proc/PID/exe says what it is
    "renamed": lambda tmp: (["vm-launcher", "-machine", "none"], QEMU),
}


@pytest.fixture(params=list(STARTS))
def named_qemu(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    argv, executable = STARTS[request.param](tmp_path)
    qmp = tmp_path / "monitor.sock"
    proc = _start(argv, qmp, executable)
    try:
        yield request.param, proc, qmp
    finally:
        proc.kill()
        proc.communicate()


@pytest.mark.qemu
@requires_qemu
def test_a_running_qemu_is_found_whatever_its_name(named_qemu: tuple[str, subprocess.Popen[bytes], Path]) -> None:
    case, proc, qmp = named_qemu
    expected_exe = {"qemu-kvm": "qemu-kvm", "kvm": "kvm", "renamed": os.path.basename(QEMU or "")}[case]
    [found] = [v for v in scan_vmms() if v.pid == proc.pid]
    assert (found.runtime, found.executable, found.name, found.qmp) == ("qemu", expected_exe, "named-vm", str(qmp))
    assert vmm_info(proc.pid) == found  # `uniobs attach PID` asks the same


MICROVM = shutil.which("qemu-system-x86_64-microvm")


@pytest.mark.qemu
@pytest.mark.skipif(MICROVM is None, reason="qemu-system-x86_64-microvm not on PATH (Debian: qemu-system-x86)")
@pytest.mark.skipif(
    not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="no usable /dev/kvm (the microvm build has KVM only)"
)
def test_debian_s_microvm_build_is_found(tmp_path: Path) -> None:
    qmp = tmp_path / "monitor.sock"
    proc = _start([MICROVM or "", "-machine", "microvm", "-accel", "kvm"], qmp)
    try:
        [found] = [v for v in scan_vmms() if v.pid == proc.pid]
        assert (found.executable, found.name, found.qmp) == ("qemu-system-x86_64-microvm", "named-vm", str(qmp))
    finally:
        proc.kill()
        proc.communicate()


@pytest.mark.qemu
@requires_qemu
def test_uniobs_run_launches_qemu_kvm_as_qemu(tmp_path: Path) -> None:
    """`uniobs run -- /usr/libexec/qemu-kvm ...` (here a symlink so named): planned as QEMU, with its
    QMP sockets and console capture, and its exit read by QEMU's rules."""
    if shutil.which("gcc") is None or shutil.which("make") is None:
        pytest.skip("make and gcc are needed to build the example unikernel (Debian: make gcc)")
    subprocess.run(["make", "-s", "-C", str(KERNEL.parent.parent)], check=True)
    qemu_kvm = _link(tmp_path, "usr/libexec/qemu-kvm")
    out = tmp_path / "t.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "uniobs.cli", "run", "--export", f"file:{out}", "--",
         qemu_kvm, "-machine", "microvm", "-accel", "tcg", "-m", "64", "-nodefaults", "-nographic", "-no-reboot",
         "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-serial", "stdio", "-kernel", str(KERNEL),
         "-append", "mode=ok work_ms=30 run_ms=1500 exit=5"],
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 11, result.stderr  # isa-debug-exit: (5 << 1) | 1
    signals = Signals(out)
    exited = signals.events()[-1]
    assert exited["event"] == "uniobs.exited" and exited["attributes"]["uniobs.guest.exit_code"] == 5
    assert exited["resource"]["process.executable.name"] == "qemu-kvm"
    assert "minikernel 0.1 (uniobs example unikernel)" in signals.console()
    assert {a["cpu.mode"] for _, a, _ in signals.points("uniobs.vm.vcpu.time")} == {"user", "system"}  # over QMP
