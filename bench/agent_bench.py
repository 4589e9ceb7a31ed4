"""The agent's own cost: CPU and RSS with 10, 100 and 1,000 workloads at a 10 s scrape interval.

Workloads are synthetic cgroups with a real process each (`sleep`), which the agent follows as
plain cgroups (`[agent] cgroups = true`) with the cgroup collector; one real QEMU guest is added
for the small count so the VMM path (process + QMP + console) is in the mix. The agent runs as
its own process, exporting OTLP/HTTP to a loopback receiver; its CPU time (user + system) is
read from /proc over a window of several intervals, after a warm-up. Goal from the issue: 1,000
workloads on one core with headroom, RSS under 150 MB. Needs root.

    python bench/agent_bench.py [--counts 10,100,1000] [--window 40]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from otlp_receiver import HttpReceiver

from uniobs.host.cgroup_place import create_cgroup, remove_cgroup
from uniobs.host.cgroupfs import detect_layout

ROOT = Path(__file__).resolve().parent.parent
KERNEL = ROOT / "examples" / "minikernel" / "build" / "minikernel.elf"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", default="10,100,1000")
    parser.add_argument("--window", type=float, default=40.0, help="seconds measured (after a 12 s warm-up)")
    parser.add_argument("--interval", type=float, default=10.0)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("agent benchmark: needs root to create cgroups")
    layout = detect_layout()
    receiver = HttpReceiver()
    print(f"agent benchmark: {args.interval:.0f} s interval, {args.window:.0f} s window, cgroup layout {layout.mode}")
    print(f"  {'workloads':>9} {'agent CPU':>10} {'per workload-scrape':>20} {'RSS':>9}")
    for n in (int(c) for c in args.counts.split(",")):
        base = f"/uniobs-agentbench-{os.getpid()}"
        procs: list[subprocess.Popen[bytes]] = []
        paths = [f"{base}/w{i:04d}" for i in range(n)]
        tmp = tempfile.mkdtemp(prefix="uniobs-agentbench-")
        vm = None
        agent = None
        try:
            for path in paths:
                files = create_cgroup(layout, path)
                procs.append(
                    subprocess.Popen([sys.executable, "-m", "uniobs.host.cgexec", *files, "--", "sleep", "3600"])
                )
            if n <= 10 and shutil.which("qemu-system-x86_64") and KERNEL.exists():
                vm = subprocess.Popen(
                    ["qemu-system-x86_64", "-machine", "microvm", "-accel", "tcg", "-m", "64", "-nodefaults",
                     "-display", "none", "-qmp", f"unix:{tmp}/qmp.sock,server=on,wait=off",
                     "-chardev", f"socket,id=c0,path={tmp}/con.sock,server=on,wait=off", "-serial", "chardev:c0",
                     "-kernel", str(KERNEL), "-append", "mode=ok run_ms=3600000 beat_ms=1000"],
                    stdin=subprocess.DEVNULL,
                )  # fmt: skip
            config = Path(tmp) / "agent.toml"
            config.write_text(
                f'[uniobs]\nexport = ["otlp-http:{receiver.endpoint}"]\nexport_interval = {args.interval}\n'
                f"interval = {args.interval}\n"
                + "".join(f"[collectors.{c}]\ninterval = {args.interval}\n" for c in ("process", "cgroup", "qemu"))
                + f'[agent]\ndiscovery_interval = {args.interval}\ncgroups = true\nhealth = ""\n'
                f"max_workloads = {n + 100}\n"
            )
            agent = subprocess.Popen(
                [sys.executable, "-m", "uniobs.cli", "agent", "--config", str(config)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(12)  # start-up, first discovery and scrape
            proc = psutil.Process(agent.pid)
            cpu0, t0 = sum(proc.cpu_times()[:2]), time.monotonic()
            time.sleep(args.window)
            cpu1, t1 = sum(proc.cpu_times()[:2]), time.monotonic()
            rss = proc.memory_info().rss
            percent = (cpu1 - cpu0) / (t1 - t0) * 100
            scrapes = (t1 - t0) / args.interval * n
            per = (cpu1 - cpu0) / scrapes * 1e3 if scrapes else 0.0
            print(f"  {n:>9} {percent:>9.2f}% {per:>17.3f} ms {rss / 2**20:>7.1f} MB")
        finally:
            if agent is not None:
                agent.terminate()
                agent.wait(30)
            if vm is not None:
                vm.kill()
                vm.wait()
            for p in procs:
                p.kill()
            for p in procs:
                p.wait()
            for path in paths:
                remove_cgroup(layout, path)
            remove_cgroup(layout, base)
            shutil.rmtree(tmp, ignore_errors=True)
    receiver.stop()


if __name__ == "__main__":
    main()
