"""CPU per container-scrape for N = 10, 100, 1,000 cgroups, each with a real process, against a
baseline that reads the same files with plain Python in the same run.

Creates N cgroups (v1 controllers here, or v2), puts a `sleep` in each, and scrapes them with
the `cgroup` collector through the pipeline (intake into the bridge included). The baseline
opens and reads the same files (the list comes from the cgroup backend's own directories) with
plain open()/read(), parsing nothing. Goal from the issue: within 2x of the baseline and
<= 1 ms per container-scrape. Needs root.

    python bench/cgroup_bench.py [--counts 10,100,1000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

from uniobs.config import Settings
from uniobs.host.cgroup_place import create_cgroup, remove_cgroup
from uniobs.host.cgroupfs import detect_layout
from uniobs.model import Kind, Workload
from uniobs.pipeline import Pipeline

FILES = ("cpuacct.usage", "cpuacct.stat", "cpu.stat", "memory.usage_in_bytes", "memory.limit_in_bytes",
         "memory.stat", "memory.oom_control", "memory.failcnt", "pids.current", "pids.max",
         "blkio.throttle.io_service_bytes", "blkio.throttle.io_serviced",
         "cpu.stat", "memory.current", "memory.max", "memory.events", "memory.swap.current", "io.stat",
         "cpu.pressure", "memory.pressure", "io.pressure")  # fmt: skip


def files_of(layout: object, path: str) -> list[str]:
    from uniobs.host.cgroupfs import _cgroup_dirs

    dirs, _ = _cgroup_dirs(layout, path)  # type: ignore[arg-type]
    out = []
    for directory in dict.fromkeys(dirs.values()):
        out += [os.path.join(directory, f) for f in FILES if os.path.exists(os.path.join(directory, f))]
    return out


def plain(paths: list[list[str]]) -> None:
    for files in paths:
        for path in files:
            with open(path, "rb") as f:
                f.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", default="10,100,1000")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("cgroup benchmark: needs root to create cgroups")
    layout = detect_layout()
    sleep = shutil.which("sleep") or "/bin/sleep"
    print(f"cgroup benchmark: layout {layout.mode}, {args.rounds} rounds, median CPU (process_time)")
    print(f"  {'N':>6} {'uniobs/container':>18} {'plain read':>12} {'ratio':>7} {'files':>6}")
    for n in (int(c) for c in args.counts.split(",")):
        base = f"/uniobs-bench-{os.getpid()}"
        procs: list[subprocess.Popen[bytes]] = []
        paths = [f"{base}/c{i:04d}" for i in range(n)]
        try:
            for path in paths:
                files = create_cgroup(layout, path)
                procs.append(subprocess.Popen([sys.executable, "-m", "uniobs.host.cgexec", *files, "--", sleep, "600"]))
            time.sleep(0.5)
            workloads = [Workload(kind=Kind.CGROUP, runtime="cgroup", id=p, name=p, cgroup=p) for p in paths]
            pipeline = Pipeline(Settings(), export=[], collectors=["cgroup"])
            pipeline.scrape(workloads)  # warm up
            file_lists = [files_of(layout, p) for p in paths]
            ours, theirs = [], []
            for _ in range(args.rounds):
                t0 = time.process_time()
                pipeline.scrape(workloads)
                ours.append((time.process_time() - t0) / n)
                t0 = time.process_time()
                plain(file_lists)
                theirs.append((time.process_time() - t0) / n)
            pipeline.close(1)
            o, b = statistics.median(ours), statistics.median(theirs)
            print(f"  {n:>6} {o * 1e3:>15.3f} ms {b * 1e3:>9.3f} ms {o / b:>6.2f}x {len(file_lists[0]):>6}")
        finally:
            for proc in procs:
                proc.kill()
            for proc in procs:
                proc.wait()
            for path in paths:
                remove_cgroup(layout, path)
            remove_cgroup(layout, base)


if __name__ == "__main__":
    main()
