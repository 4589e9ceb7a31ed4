"""Cold-start accuracy and the cost of observing, on the example unikernel under QEMU (TCG).

1. Agreement: for each boot, the boot duration uniobs measured on the host (arrival of the
   guest's `ready` line minus arrival of its `boot` line, each stamped as the bytes arrived)
   against the guest's own TSC-based account of the same interval (`t=` on both marks; the
   guest gets `tsc_khz=` so its first mark is timed too).
2. Overhead: exec-to-ready of the same QEMU command, launched bare by this script (reading
   QEMU's stdout itself) and launched by uniobs (`Runner`: two QMP sockets, console capture,
   parsers, collectors), in alternating pairs so drift hits both alike; the median ratio.

    python bench/coldstart_bench.py [--boots 21]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from uniobs.config import Settings
from uniobs.lifecycle.run import Runner
from uniobs.lifecycle.rundir import RunDir
from uniobs.pipeline import Pipeline
from uniobs.runtimes.launch import plan_launch

ROOT = Path(__file__).resolve().parent.parent
KERNEL = ROOT / "examples" / "minikernel" / "build" / "minikernel.elf"
T = re.compile(r" t=(\d+\.\d+)")


def host_tsc_khz() -> int:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "hello-node" / "unikernel" / "boot_args.py"), "--khz"],
        capture_output=True, text=True,
    )  # fmt: skip
    match = re.search(r"(\d+)", out.stdout)
    return int(match.group(1)) if match else 2_000_000


def qemu_argv(append: str) -> list[str]:
    return ["qemu-system-x86_64", "-machine", "microvm", "-accel", "tcg", "-m", "64", "-nodefaults", "-nographic",
            "-no-reboot", "-serial", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-kernel", str(KERNEL), "-append", append]  # fmt: skip


def bare(append: str) -> float:
    """exec -> arrival of the ready line, QEMU's stdout read directly."""
    start = time.monotonic_ns()
    proc = subprocess.Popen(qemu_argv(append), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    ready = None
    for line in proc.stdout:
        if line.startswith(b"@@uniobs/1 mark ready"):
            ready = time.monotonic_ns()
    proc.wait()
    assert ready is not None
    return (ready - start) / 1e9


def observed(append: str) -> tuple[float, float, float] | None:
    """(exec -> ready as uniobs saw it, host boot->ready, guest boot->ready)."""
    with RunDir.create() as rundir:
        plan = plan_launch(qemu_argv(append), rundir, "vm")
        pipeline = Pipeline(Settings(), export=[])
        runner = Runner(pipeline, plan, "bench", rundir=rundir, mirror_console=False, interval=0.2)
        runner.run()
        pipeline.close(1)
    cs = runner.coldstart
    guest = cs.guest_times
    if not {"ready", "boot", "exec"} <= set(cs.marks) or not {"ready", "boot"} <= set(guest):
        return None  # a boot whose marks were not all seen: counted, not used
    return (
        (cs.marks["ready"] - cs.marks["exec"]) / 1e9,
        (cs.marks["ready"] - cs.marks["boot"]) / 1e9,
        guest["ready"] - guest["boot"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--boots", type=int, default=21)
    args = parser.parse_args()
    if shutil.which("qemu-system-x86_64") is None:
        sys.exit("coldstart benchmark: qemu-system-x86_64 is not installed")
    subprocess.run(["make", "-s", "-C", str(KERNEL.parent.parent)], check=True)
    append = f"mode=ok work_ms=50 tsc_khz={host_tsc_khz()}"
    bare_s, obs_s, diffs = [], [], []
    incomplete = 0
    for _ in range(args.boots):
        bare_one = bare(append)
        result = observed(append)
        if result is None:
            incomplete += 1
            continue
        total, host, guest = result
        bare_s.append(bare_one)
        obs_s.append(total)
        diffs.append((host - guest) * 1e3)
    ratios = [o / b for o, b in zip(obs_s, bare_s, strict=True)]
    print(f"cold-start benchmark: example unikernel, QEMU microvm TCG, {args.boots} paired boots ({append})")
    print("  agreement, boot->ready: host-measured minus guest-reported (TSC)")
    print(f"    median {statistics.median(diffs):+.3f} ms, |max| {max(abs(d) for d in diffs):.3f} ms, "
          f"stdev {statistics.pstdev(diffs):.3f} ms")  # fmt: skip
    print("  cost of observing, exec->ready")
    print(f"    bare QEMU   median {statistics.median(bare_s) * 1e3:7.1f} ms")
    print(f"    uniobs run  median {statistics.median(obs_s) * 1e3:7.1f} ms")
    ratio = statistics.median(ratios)
    print(f"    paired ratio uniobs/bare: median {ratio:.3f} ({(ratio - 1) * 100:+.1f} %)")
    if incomplete:
        print(f"  {incomplete} boot(s) left out: not every mark was seen")
    print(f"  monotonic clock resolution: {time.get_clock_info('monotonic').resolution * 1e9:.0f} ns")


if __name__ == "__main__":
    os.environ.setdefault("UNIOBS_LOG_LEVEL", "error")
    main()
