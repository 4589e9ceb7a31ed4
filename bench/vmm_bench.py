"""CPU per workload-scrape of a running VMM: process + QMP + vCPU threads, against reading the same
/proc files with plain Python in the same run.

A real QEMU (TCG, 2 vCPUs) runs the example unikernel idle. uniobs scrapes it with the
`process` and `qemu` collectors (one batch of QMP queries a scrape, the vCPU list and memory
size asked once; per-vCPU times from /proc/<pid>/task/<tid>/stat); the baseline reads
/proc/<pid>/{stat,statm,status,smaps_rollup} and each vCPU thread's stat with os.open/os.read
and parses a few fields. QMP has no /proc equivalent, so the ratio shows what the socket
protocol adds. QEMU's own CPU per scrape (it answers the queries) is printed too, net of its
idle guest's CPU over the same wall time. CPU time is time.process_time; medians of rounds.
Goal from issue 14: <= 1.3x the baseline.

    python bench/vmm_bench.py [--scrapes 200] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from uniobs.config import Settings
from uniobs.model import Kind, Workload
from uniobs.pipeline import Pipeline

ROOT = Path(__file__).resolve().parent.parent
KERNEL = ROOT / "examples" / "minikernel" / "build" / "minikernel.elf"


def plain_read(pid: int, tids: list[int]) -> int:
    total = 0
    for name in ("stat", "statm", "status", "smaps_rollup"):
        fd = os.open(f"/proc/{pid}/{name}", os.O_RDONLY)
        try:
            data = os.read(fd, 65536)
        finally:
            os.close(fd)
        total += len(data.split())
    for tid in tids:
        fd = os.open(f"/proc/{pid}/task/{tid}/stat", os.O_RDONLY)
        try:
            fields = os.read(fd, 4096).rsplit(b")", 1)[1].split()
        finally:
            os.close(fd)
        total += int(fields[11]) + int(fields[12])
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if shutil.which("qemu-system-x86_64") is None:
        sys.exit("vmm benchmark: qemu-system-x86_64 is not installed")
    subprocess.run(["make", "-s", "-C", str(KERNEL.parent.parent)], check=True)
    tmp = tempfile.mkdtemp(prefix="uniobs-bench-")
    qmp = os.path.join(tmp, "qmp.sock")
    vm = subprocess.Popen(
        ["qemu-system-x86_64", "-machine", "microvm", "-accel", "tcg", "-smp", "2", "-m", "64", "-nodefaults",
         "-display", "none", "-serial", "null", "-qmp", f"unix:{qmp},server=on,wait=off",
         "-kernel", str(KERNEL), "-append", "mode=ok run_ms=600000 beat_ms=1000"],
    )  # fmt: skip
    try:
        while not os.path.exists(qmp):
            time.sleep(0.01)
        time.sleep(0.5)
        workload = Workload(kind=Kind.UNIKERNEL, runtime="qemu", id="bench", name="bench", pid=vm.pid, qmp=qmp)
        pipeline = Pipeline(Settings(), export=[], collectors=["process", "qemu"])
        pipeline.scrape([workload])  # connect, read schemas
        tids = [t.id for t in psutil.Process(vm.pid).threads()]
        qemu = psutil.Process(vm.pid)
        ours, base, theirs, idle, walls = [], [], [], [], []
        for _ in range(args.rounds):
            q0 = sum(qemu.cpu_times()[:2])
            t0, w0 = time.process_time(), time.monotonic()
            for _ in range(args.scrapes):
                pipeline.scrape([workload])
            ours.append((time.process_time() - t0) / args.scrapes)
            walls.append((time.monotonic() - w0) / args.scrapes)
            theirs.append((sum(qemu.cpu_times()[:2]) - q0) / args.scrapes)
            t0 = time.process_time()
            for _ in range(args.scrapes):
                plain_read(vm.pid, tids)
            base.append((time.process_time() - t0) / args.scrapes)
            q0, w0 = sum(qemu.cpu_times()[:2]), time.monotonic()
            time.sleep(0.5)
            idle.append((sum(qemu.cpu_times()[:2]) - q0) / (time.monotonic() - w0))
        pipeline.close(1)
    finally:
        vm.kill()
        vm.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    o, b = statistics.median(ours), statistics.median(base)
    print(f"vmm benchmark: QEMU, 2 vCPUs (TCG), {args.rounds} rounds x {args.scrapes} scrapes")
    print(f"  uniobs scrape (process + qemu collectors): {o * 1e6:8.0f} us CPU per workload-scrape")
    print(f"  plain Python reading the same /proc files: {b * 1e6:8.0f} us CPU")
    print(f"  ratio: {o / b:.2f}x the baseline (goal <= 1.3x; the difference is the QMP round trip)")
    gross, rate = statistics.median(theirs), statistics.median(idle)
    net = gross - rate * statistics.median(walls)
    print(f"  QEMU's own CPU per scrape answering QMP: {net * 1e6:.0f} us net "
          f"({gross * 1e6:.0f} us gross; its idle guest alone: {rate * 100:.1f}% of a core)")  # fmt: skip


if __name__ == "__main__":
    main()
