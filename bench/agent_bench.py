"""What the agent costs its users: CPU per container-scrape, series, RSS and discovery CPU, at 10, 100
and 1,000 workloads (10,000 with `--counts ...,10000`), against the plain-Python read floor measured in
the same run.

Workloads are synthetic cgroups with a real process each (`sleep`, placed with
`uniobs.host.cgroup_place` + `uniobs.host.cgexec`), which the agent follows as plain cgroups
(`[agent] cgroups = true`) with the cgroup collector; one real QEMU guest is added for the small count
so the VMM path (process + QMP + console) is in the mix. The agent runs as its own process in a cgroup
of its own, exporting OTLP/HTTP to a loopback receiver; its CPU is that cgroup's cpuacct usage over a
window of several intervals after a warm-up, and it is divided by the workloads the agent says it
follows (its health endpoint), not by N. Printed per count:

- agent % of one core, ms CPU per container-scrape and its ratio to the floor;
- series (data points) per container per export and µs CPU per series;
- RSS of the agent process;
- discovery CPU per round (the agent's health endpoint reports it; "n/a" for an agent that does not);
- the floor: plain Python opening, reading (os.open/os.read) and splitting the 8 usual cgroup files of
  each of the same N cgroups, in this process, median of 5 rounds.

Goals from issue 14: <= 0.30 ms CPU per container-scrape at 1,000 workloads export included, RSS <= 80
MB; 10,000 workloads at a 10 s interval on <= 30 % of one core. Needs root.

    python bench/agent_bench.py [--counts 10,100,1000] [--window 40] [--tree DIR]

`--tree` runs the agent from another checkout (e.g. `git archive HEAD` extracted, with
`uniobs/collectors` and `uniobs/exporters` symlinked to its `collectors/` and `exporters/`) to get a
before/after pair from one run of this script.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from otlp_receiver import HttpReceiver

from uniobs.host.cgroup_place import create_cgroup, remove_cgroup
from uniobs.host.cgroupfs import CgroupLayout, CgroupMode, detect_layout

ROOT = Path(__file__).resolve().parent.parent
KERNEL = ROOT / "examples" / "minikernel" / "build" / "minikernel.elf"

# The 8 files HOST-NOTES measures the floor with, by controller (v1) and their v2 counterparts.
V1_FILES = (("cpuacct", "cpuacct.usage"), ("cpuacct", "cpuacct.stat"), ("cpu", "cpu.stat"),
            ("memory", "memory.usage_in_bytes"), ("memory", "memory.limit_in_bytes"), ("memory", "memory.stat"),
            ("pids", "pids.current"), ("blkio", "blkio.throttle.io_service_bytes"))  # fmt: skip
V2_FILES = ("cpu.stat", "memory.current", "memory.max", "memory.stat", "pids.current", "io.stat")


# --- a tool in a cgroup of its own (shared with peers_bench.py) ---------------------------------


class OwnCgroup:
    """A cgroup for one measured tool; its CPU (ns) from cpuacct.usage (v1) or cpu.stat (v2)."""

    def __init__(self, layout: CgroupLayout, path: str) -> None:
        self.layout, self.path = layout, path
        self.procs = create_cgroup(layout, path)
        if layout.mode is CgroupMode.V2 or "cpuacct" not in layout.v1:
            assert layout.unified is not None
            self._usage = os.path.join(layout.unified + path, "cpu.stat")
        else:
            self._usage = os.path.join(layout.v1["cpuacct"] + path, "cpuacct.usage")

    def cpu_ns(self) -> int:
        with open(self._usage) as f:
            text = f.read()
        if self._usage.endswith("cpuacct.usage"):
            return int(text)
        return next(int(v) for k, v in (line.split() for line in text.splitlines()) if k == "usage_usec") * 1000

    def pids(self) -> list[int]:
        with open(self.procs[0]) as f:
            return [int(p) for p in f.read().split()]

    def rss(self) -> int:
        total = 0
        for pid in self.pids():
            try:
                total += psutil.Process(pid).memory_info().rss
            except psutil.Error:
                pass
        return total

    def spawn(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start `argv` inside the cgroup from its first instruction."""
        return subprocess.Popen([sys.executable, "-m", "uniobs.host.cgexec", *self.procs, "--", *argv], **kwargs)

    def remove(self) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.1)
        remove_cgroup(self.layout, self.path)


class Workloads:
    """N cgroups under `base` (`flat`: named `base-wNNNNN`, top-level), each with a real `sleep`."""

    def __init__(self, layout: CgroupLayout, base: str, n: int, flat: bool = False) -> None:
        self.layout, self.base, self.flat = layout, base, flat
        self.paths = [f"{base}-w{i:05d}" if flat else f"{base}/w{i:05d}" for i in range(n)]
        self.procs: list[subprocess.Popen[bytes]] = []
        for path in self.paths:
            files = create_cgroup(layout, path)
            self.procs.append(
                subprocess.Popen([sys.executable, "-m", "uniobs.host.cgexec", *files, "--", "sleep", "3600"])
            )

    def remove(self) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()
        for path in self.paths:
            remove_cgroup(self.layout, path)
        if not self.flat:
            remove_cgroup(self.layout, self.base)


def floor_ms(layout: CgroupLayout, paths: list[str], rounds: int = 5) -> float:
    """Plain Python: os.open/os.read/close and split the usual files of each cgroup; ms CPU each."""
    if layout.mode is CgroupMode.V2:
        assert layout.unified is not None
        files = [[f"{layout.unified}{p}/{name}" for name in V2_FILES] for p in paths]
    else:
        files = [[f"{layout.v1[c]}{p}/{name}" for c, name in V1_FILES if c in layout.v1] for p in paths]
    times = []
    for _ in range(rounds):
        t0 = time.process_time()
        for group in files:
            for path in group:
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    continue
                try:
                    [line.split() for line in os.read(fd, 65536).decode().splitlines()]
                finally:
                    os.close(fd)
        times.append(time.process_time() - t0)
    return statistics.median(times) / max(1, len(paths)) * 1e3


def health(port: int) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
            body: dict[str, Any] = json.load(r)
            return body
    except urllib.error.HTTPError as exc:  # 503 while an exporter fails: the body is still the status
        body = json.load(exc)
        return body


def threads_cpu(pid: int, threads: dict[str, int]) -> dict[str, float]:
    """utime + stime (s) of each named thread of the agent (names and ids from its health endpoint)."""
    out = {}
    for name, tid in threads.items():
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        out[name] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def foreign_vmms() -> list[int]:
    """The QEMU processes running on the machine (the agent follows every one it finds)."""
    return [p.pid for p in psutil.process_iter(["name"]) if (p.info["name"] or "").startswith("qemu-system")]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_agent(
    args: argparse.Namespace, layout: CgroupLayout, n: int, tree: Path, label: str, receiver: HttpReceiver
) -> dict[str, Any]:
    tmp = tempfile.mkdtemp(prefix="uniobs-agentbench-")
    port = free_port()
    own = OwnCgroup(layout, f"/uniobs-agentbench-agent-{os.getpid()}")
    agent = None
    try:
        config = Path(tmp) / "agent.toml"
        config.write_text(
            f'[uniobs]\nexport = ["otlp-http:{receiver.endpoint}"]\nexport_interval = {args.interval}\n'
            f"interval = {args.interval}\n"
            + "".join(f"[collectors.{c}]\ninterval = {args.interval}\n" for c in ("process", "cgroup", "qemu"))
            + f'[agent]\ndiscovery_interval = {args.interval}\ncgroups = true\nhealth = "127.0.0.1:{port}"\n'
            # VMMs only where the bench runs its own guest: VM discovery is host-wide, and another
            # QEMU on the machine (a console flood test) would be followed and measured too
            f"vmms = {'true' if args.with_vm else 'false'}\n"
            f"max_workloads = {n + 500}\n"
        )
        env = dict(os.environ, PYTHONPATH=str(tree))
        agent = own.spawn(
            [sys.executable, "-m", "uniobs.cli", "agent", "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, cwd=str(tree), env=env,
        )  # fmt: skip
        # Start-up, first discovery and a full scrape: wait until it follows them all, then one interval.
        deadline = time.monotonic() + 60 + n / 20
        followed = 0
        while time.monotonic() < deadline:
            time.sleep(1)
            try:
                followed = health(port)["workloads"]
            except OSError:
                continue
            if followed >= n:
                break
        time.sleep(args.interval * 1.5)
        before = health(port)
        points0 = len(receiver.received.metric_points())
        threads = before.get("threads", {})
        by0, cpu0, t0 = threads_cpu(agent.pid, threads), own.cpu_ns(), time.monotonic()
        time.sleep(args.window)
        by1, cpu1, t1 = threads_cpu(agent.pid, threads), own.cpu_ns(), time.monotonic()
        points1 = len(receiver.received.metric_points())
        after = health(port)
        rss = own.rss()
        followed = after["workloads"]
        foreign = [p for p in foreign_vmms() if p != args.vm_pid] if args.with_vm else []
        rounds = (t1 - t0) / args.interval
        cpu_s = (cpu1 - cpu0) / 1e9
        disc = None
        d_cpu = 0.0
        if "discovery" in before and "discovery" in after:
            d_rounds = after["discovery"]["rounds"] - before["discovery"]["rounds"]
            d_cpu = after["discovery"]["cpu_s"] - before["discovery"]["cpu_s"]
            disc = d_cpu / d_rounds * 1e3 if d_rounds else None
        # The split, from the threads the agent names on its health endpoint: discovery (on the main
        # thread, reported by the agent), collect workers (reads), the rest of the main thread
        # (intake, flush hand-over, ticks), export workers (build, encode, send), the rest.
        used = {k: by1.get(k, 0.0) - by0.get(k, 0.0) for k in by1}
        split = None
        if cpu_s and used:
            collect = sum(v for k, v in used.items() if k.startswith("uniobs-collect-"))
            export = sum(v for k, v in used.items() if k.startswith("uniobs-export-"))
            main = used.get("MainThread", 0.0) - d_cpu
            rest = cpu_s - d_cpu - collect - main - export
            split = tuple(x / cpu_s * 100 for x in (d_cpu, collect, main, export, rest))
        series = (points1 - points0) / rounds / max(1, followed)
        per = cpu_s / (rounds * max(1, followed)) * 1e3
        return {
            "label": label, "followed": followed, "percent": cpu_s / (t1 - t0) * 100, "per_ms": per,
            "series": series, "us_per_series": per * 1e3 / series if series else float("nan"),
            "rss_mb": rss / 2**20, "discovery_ms": disc, "foreign_vmms": foreign,
            "split": split,
        }  # fmt: skip
    finally:
        if agent is not None:
            own.remove()
            agent.wait(30)
        else:
            own.remove()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", default="10,100,1000")
    parser.add_argument("--window", type=float, default=40.0, help="seconds measured (after the warm-up)")
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--tree", action="append", default=[], help="another checkout to measure besides this one")
    parser.add_argument("--no-self", action="store_true", help="measure only the --tree checkouts")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("agent benchmark: needs root to create cgroups")
    layout = detect_layout()
    receiver = HttpReceiver()
    trees = [(Path(t).resolve(), Path(t).name) for t in args.tree] + ([] if args.no_self else [(ROOT, "this tree")])
    print(f"agent benchmark: {args.interval:.0f} s interval, {args.window:.0f} s window, cgroup layout {layout.mode}")
    print("  baseline: plain Python os.open/os.read + split of the usual cgroup files, same cgroups, same run")
    print(
        f"  {'N':>6} {'tree':<12} {'followed':>8} {'% core':>7} {'ms/ctr-scrape':>13} {'x floor':>7} "
        f"{'series/ctr':>10} {'us/series':>9} {'RSS MB':>7} {'disc ms/round':>13} {'floor ms':>8}"
    )
    for n in (int(c) for c in args.counts.split(",")):
        vm = None
        tmp = tempfile.mkdtemp(prefix="uniobs-agentbench-vm-")
        workloads = Workloads(layout, f"/uniobs-agentbench-{os.getpid()}", n)
        try:
            if n <= 10 and shutil.which("qemu-system-x86_64") and KERNEL.exists():
                vm = subprocess.Popen(
                    ["qemu-system-x86_64", "-machine", "microvm", "-accel", "tcg", "-m", "64", "-nodefaults",
                     "-display", "none", "-qmp", f"unix:{tmp}/qmp.sock,server=on,wait=off",
                     "-chardev", f"socket,id=c0,path={tmp}/con.sock,server=on,wait=off", "-serial", "chardev:c0",
                     "-kernel", str(KERNEL), "-append", "mode=ok run_ms=3600000 beat_ms=1000"],
                    stdin=subprocess.DEVNULL,
                )  # fmt: skip
            args.with_vm, args.vm_pid = vm is not None, vm.pid if vm is not None else None
            for tree, label in trees:
                floor = floor_ms(layout, workloads.paths)
                r = run_agent(args, layout, n, tree, label, receiver)
                disc = f"{r['discovery_ms']:.2f}" if r["discovery_ms"] is not None else "n/a"
                print(
                    f"  {n:>6} {label:<12} {r['followed']:>8} {r['percent']:>6.2f}% {r['per_ms']:>13.3f} "
                    f"{r['per_ms'] / floor:>6.2f}x {r['series']:>10.1f} {r['us_per_series']:>9.1f} "
                    f"{r['rss_mb']:>7.1f} {disc:>13} {floor:>8.3f}"
                    + (
                        "  CPU split: discovery {:.0f}% / collect (read) {:.0f}% / main (intake, flush) {:.0f}% / "
                        "export {:.0f}% / other {:.0f}%".format(*r["split"])
                        if r["split"]
                        else ""
                    )
                    + (f"  (!) other QEMUs ran, followed too: pids {r['foreign_vmms']}" if r["foreign_vmms"] else ""),
                    flush=True,
                )
        finally:
            if vm is not None:
                vm.kill()
                vm.wait()
            workloads.remove()
            shutil.rmtree(tmp, ignore_errors=True)
    receiver.stop()


if __name__ == "__main__":
    main()
