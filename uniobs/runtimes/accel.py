"""Choosing QEMU's accelerator by a real probe boot, not by the presence of /dev/kvm.

`/dev/kvm` can exist and still be the wrong choice: nested or software hypervisors (PVM, for
one) emulate instructions so slowly that KVM loses to TCG, and long-mode guests may not run at
all. So the probe boots the example unikernel (examples/minikernel, mode=ok with a little work)
under KVM and under TCG, and picks KVM only if it booted to its exit and was not slower.

    python -m uniobs.runtimes.accel            # prints "kvm" or "tcg"
    python -m uniobs.runtimes.accel --explain  # and why, with the probe timings

The answer is cached per QEMU binary and /dev/kvm state in /run/uniobs/accel.json (or the temp
dir; `UNIOBS_ACCEL_CACHE=FILE` puts it elsewhere), so scripts can ask it on every boot.

The probe kernel comes from a checkout: when examples/minikernel/build/minikernel.elf is missing
and its source is there, the probe builds it (`make -s -C examples/minikernel`). Where it cannot
(an installed uniobs has no examples/ folder, no `make`, a failed build, no QEMU), the answer is
TCG, not probed, with the reason and what to run; such an answer is not cached.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

PROBE_TIMEOUT_S = 10.0
BUILD_TIMEOUT_S = 120.0
PROBE_ARGS = "mode=ok work_ms=20"
CACHE_ENV = "UNIOBS_ACCEL_CACHE"
_REPO_SOURCE = Path(__file__).resolve().parents[2] / "examples" / "minikernel"
_REPO_KERNEL = _REPO_SOURCE / "build" / "minikernel.elf"


@dataclass(frozen=True)
class Probe:
    accel: str  # the choice: "kvm" or "tcg"
    reason: str
    kvm_s: float | None  # wall seconds from exec to exit under KVM; None if it failed or was not tried
    tcg_s: float | None
    qemu: str
    probed: bool = True  # False: no probe boot was possible; `reason` says why and what to run

    def describe(self) -> str:
        def fmt(v: float | None) -> str:
            return "failed" if v is None else f"{v * 1000:.0f} ms"

        if not self.probed:
            return f"{self.accel} (not probed: {self.reason})"
        return f"{self.accel} ({self.reason}; probe boot: kvm {fmt(self.kvm_s)}, tcg {fmt(self.tcg_s)})"


def _not_probed(reason: str, qemu: str) -> Probe:
    return Probe("tcg", reason, None, None, qemu, probed=False)


def _boot(qemu: str, kernel: str, accel: str) -> float | None:
    cmd = [qemu, "-machine", "microvm", "-accel", accel, "-m", "32", "-nodefaults", "-display", "none",
           "-no-reboot", "-serial", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
           "-kernel", kernel, "-append", PROBE_ARGS]  # fmt: skip
    started = time.monotonic()
    try:
        result = subprocess.run(cmd, capture_output=True, timeout=PROBE_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (subprocess.TimeoutExpired, OSError):
        return None
    elapsed = time.monotonic() - started
    # the guest exits with 0 through isa-debug-exit: QEMU's status is (0 << 1) | 1
    if result.returncode != 1 or b"@@uniobs/1 mark ready" not in result.stdout:
        return None
    return elapsed


def _cache_path() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    for base in ("/run/uniobs", os.path.join(tempfile.gettempdir(), "uniobs")):
        try:
            os.makedirs(base, exist_ok=True)
            return Path(base) / "accel.json"
        except OSError:
            continue
    return Path(tempfile.gettempdir()) / "uniobs-accel.json"


def _cache_key(qemu: str) -> str:
    st = os.stat(qemu)
    kvm = os.stat("/dev/kvm") if os.path.exists("/dev/kvm") else None
    text = f"{qemu}:{st.st_size}:{st.st_mtime_ns}:{kvm.st_rdev if kvm else '-'}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _repo_kernel() -> tuple[str | None, str]:
    """The checkout's probe kernel, built if missing and buildable: (path, "") or (None, why not)."""
    if _REPO_KERNEL.exists():
        return str(_REPO_KERNEL), ""
    if not (_REPO_SOURCE / "Makefile").exists():
        return None, (
            "no probe kernel (an installed uniobs has no examples/minikernel; `python -m uniobs.runtimes.accel "
            "--kernel minikernel.elf` probes once, and caches, with one built from a checkout)"
        )
    cmd = ["make", "-s", "-C", str(_REPO_SOURCE)]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        return (
            None,
            "no probe kernel and no `make` to build it: install make and gcc, then `make -C examples/minikernel`",
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"no probe kernel: its build failed ({exc}); run `make -C examples/minikernel`"
    if result.returncode != 0 or not _REPO_KERNEL.exists():
        lines = (result.stderr or result.stdout).strip().splitlines()
        why = [line for line in lines if not line.startswith("make")] or lines or [f"status {result.returncode}"]
        return None, f"no probe kernel: its build failed ({why[-1][:200]}); run `make -C examples/minikernel`"
    return str(_REPO_KERNEL), ""


def probe(
    qemu: str = "qemu-system-x86_64", kernel: str | None = None, use_cache: bool = True,
    cache_file: str | os.PathLike[str] | None = None,
) -> Probe:  # fmt: skip
    """KVM or TCG for this host, by a probe boot of the example unikernel (cached; see the module doc).

    Never raises for a missing input: without QEMU or a probe kernel the answer is TCG with
    `probed=False` and the reason (not cached). `cache_file` (else $UNIOBS_ACCEL_CACHE, else
    /run/uniobs/accel.json) is where the answer is kept.
    """
    path = shutil.which(qemu)
    if path is None:
        hint = " (Debian: apt-get install qemu-system-x86)" if os.path.basename(qemu).startswith("qemu-system-") else ""
        return _not_probed(f"{qemu} is not installed{hint}", qemu)
    cache = Path(cache_file) if cache_file is not None else _cache_path()
    key = _cache_key(path)
    if use_cache:
        try:
            cached = json.loads(cache.read_text())
            if cached.get("key") == key:
                return Probe(**cached["probe"])
        except (OSError, ValueError, TypeError, KeyError):
            pass
    if kernel is None:
        kernel, why = _repo_kernel()
        if kernel is None:
            return _not_probed(why, path)
    elif not os.path.exists(kernel):
        return _not_probed(f"probe kernel {kernel} is missing", path)
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        result = Probe("tcg", "no usable /dev/kvm", None, _boot(path, kernel, "tcg"), path)
    else:
        kvm_s, tcg_s = _boot(path, kernel, "kvm"), _boot(path, kernel, "tcg")
        if kvm_s is None:
            result = Probe("tcg", "/dev/kvm exists but the probe guest did not boot under KVM", kvm_s, tcg_s, path)
        elif tcg_s is not None and kvm_s > tcg_s:
            result = Probe("tcg", "KVM booted the probe slower than TCG (a nested or software hypervisor)", kvm_s,
                           tcg_s, path)  # fmt: skip
        else:
            result = Probe("kvm", "KVM booted the probe and was not slower than TCG", kvm_s, tcg_s, path)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"key": key, "probe": asdict(result)}))
    except OSError:
        pass
    return result


def accel_of(argv: list[str]) -> str:
    """The accelerator a QEMU command line asks for ("tcg" when it names none: QEMU's default)."""
    for i, arg in enumerate(argv):
        value = argv[i + 1] if i + 1 < len(argv) else ""
        if arg in ("-enable-kvm", "--enable-kvm"):
            return "kvm"
        if arg in ("-accel", "--accel"):
            return value.split(",")[0]
        if arg in ("-machine", "--machine", "-M"):
            for part in value.split(","):
                if part.startswith("accel="):
                    return part[6:].split(":")[0]
    return "tcg"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m uniobs.runtimes.accel", description=__doc__.split("\n")[0])
    parser.add_argument("--qemu", default="qemu-system-x86_64")
    parser.add_argument("--kernel", default=None, help="probe kernel (default: examples/minikernel)")
    parser.add_argument("--explain", action="store_true", help="say why, with the probe timings")
    parser.add_argument("--fresh", action="store_true", help="ignore the cached answer")
    args = parser.parse_args()
    result = probe(args.qemu, args.kernel, use_cache=not args.fresh)
    if not result.probed and not args.explain:
        print(f"uniobs.accel: not probed: {result.reason}; assuming tcg", file=sys.stderr)
    print(result.describe() if args.explain else result.accel)


if __name__ == "__main__":
    main()
