"""What the agent costs its users: CPU per container-scrape, series, RSS and discovery CPU, at 10, 100
and 1,000 workloads (10,000 with `--counts ...,10000`), against the plain-Python read floor measured in
the same run.

Workloads are synthetic cgroups with a real process each (`sleep`, started with posix_spawn and
written into its cgroup in every hierarchy: 10,000 are made in seconds), which the agent follows as plain cgroups
(`[agent] cgroups = true`) with the cgroup collector; one real QEMU guest is added for the small count
so the VMM path (process + QMP + console) is in the mix. The agent runs as its own process in a cgroup
of its own, exporting OTLP/HTTP to a loopback receiver; its CPU is that cgroup's cpuacct usage over a
window of several intervals after a warm-up, and it is divided by the workloads the agent says it
follows (its health endpoint), not by N. Printed per count:

- agent % of one core, ms CPU per container-scrape and its ratio to the floor;
- series (data points) per container per export and µs CPU per series;
- RSS of the agent process;
- discovery CPU per round and the full walks of the cgroup tree in the window, with the CPU of one
  (the agent's health endpoint reports them; the other rounds were answered from inotify events;
  "n/a" for an agent that does not say);
- the floor: plain Python opening, reading (os.open/os.read) and splitting the 8 usual cgroup files of
  each of the same N cgroups, in this process, median of 5 rounds.

Goals from issue 14: <= 0.30 ms CPU per container-scrape at 1,000 workloads export included, RSS <= 80
MB; 10,000 workloads at a 10 s interval on <= 30 % of one core. Needs root.

    python bench/agent_bench.py [--counts 10,100,1000] [--window 40] [--windows 3] [--tree DIR] [--profile DIR]

Figures are medians of `--windows` consecutive windows. `--profile DIR` samples the agent with
py-spy (`pip install py-spy`) over the first window, from outside its cgroup, into DIR (raw stacks).

`--tree` runs the agent from another checkout (e.g. `git archive HEAD` extracted, with
`uniobs/collectors` and `uniobs/exporters` symlinked to its `collectors/` and `exporters/`) to get a
before/after pair from one run of this script.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
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
    """N cgroups under `base` (`flat`: named `base-wNNNNN`, top-level), each with a real `sleep`.

    Fast enough for 10,000: the cgroups are made with mkdir, each `sleep` is started with
    posix_spawn and then written into its cgroup's `cgroup.procs` in every hierarchy (rather than a
    Python `cgexec` per workload, ~40 ms each). The pid limit is raised when the host's is too low.
    """

    def __init__(self, layout: CgroupLayout, base: str, n: int, flat: bool = False) -> None:
        self.layout, self.base, self.flat = layout, base, flat
        self.paths = [f"{base}-w{i:05d}" if flat else f"{base}/w{i:05d}" for i in range(n)]
        self.pids: list[int] = []
        raise_limits(n)
        sleep = shutil.which("sleep") or "/bin/sleep"
        started = time.monotonic()
        try:
            for path in self.paths:
                files = create_cgroup(self.layout, path)
                pid = os.posix_spawn(sleep, [sleep, "3600"], os.environ)
                self.pids.append(pid)
                for procs in files:
                    fd = os.open(procs, os.O_WRONLY)
                    try:
                        os.write(fd, b"%d" % pid)
                    finally:
                        os.close(fd)
        except BaseException:
            self.remove()
            raise
        self.create_s = time.monotonic() - started

    def remove(self) -> None:
        for pid in self.pids:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        for pid in self.pids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        self.pids = []
        for path in self.paths:
            remove_cgroup(self.layout, path)
        if not self.flat:
            remove_cgroup(self.layout, self.base)


def raise_limits(n: int) -> None:
    """Room for n more processes and the agent's files: the kernel's pid_max if it is too close,
    and this process's RLIMIT_NOFILE (the agent inherits it)."""
    try:
        with open("/proc/sys/kernel/pid_max") as f:
            pid_max = int(f.read())
        running = len([d for d in os.listdir("/proc") if d.isdigit()])
        if running + n + 4096 > pid_max:
            with open("/proc/sys/kernel/pid_max", "w") as f:
                f.write(str(running + n + 32768))
            print(f"  (raised kernel.pid_max from {pid_max} to {running + n + 32768})", flush=True)
    except OSError as exc:
        print(f"  (could not raise kernel.pid_max: {exc})", flush=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, min(hard, 1 << 20))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


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


def counting_receiver() -> HttpReceiver:
    """The tests' OTLP/HTTP receiver (real decoding of what crossed the wire), made to count data
    points and keep no request: at 10,000 workloads it would hold millions of points, and listing
    them under its lock slowed its answers until the agent's exports timed out."""
    receiver = HttpReceiver()
    count = [0]
    lock = threading.Lock()

    def add(signal: str, request: Any, headers: dict[str, str]) -> None:
        if signal != "metrics":
            return
        n = 0
        for rm in request.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    n += len(getattr(metric, metric.WhichOneof("data")).data_points)
        with lock:
            count[0] += n

    receiver.received.add = add  # type: ignore[method-assign]
    receiver.points = lambda: count[0]  # type: ignore[attr-defined]
    return receiver


def received_points(receiver: HttpReceiver) -> int:
    points: int = receiver.points()  # type: ignore[attr-defined]
    return points


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


def measure_window(
    args: argparse.Namespace, pid: int, own: OwnCgroup, port: int, receiver: HttpReceiver, n: int, label: str, i: int
) -> dict[str, Any]:
    """One window of `args.window` seconds: the agent's CPU from its cgroup, per workload followed."""
    before = health(port)
    points0 = received_points(receiver)
    threads = before.get("threads", {})
    by0, cpu0, t0 = threads_cpu(pid, threads), own.cpu_ns(), time.monotonic()
    spy = None
    if args.profile and i == 0:  # py-spy samples from outside the agent's cgroup, without pausing it
        out = Path(args.profile) / f"agent-{label.replace(' ', '_')}-{n}.txt"
        spy = subprocess.Popen(
            [args.py_spy, "record", "--pid", str(pid), "--nonblocking", "--threads", "--format", "raw",
             "--rate", "250", "--duration", str(int(args.window)), "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
    time.sleep(args.window)
    if spy is not None:
        spy.wait(60)
    by1, cpu1, t1 = threads_cpu(pid, threads), own.cpu_ns(), time.monotonic()
    points1 = received_points(receiver)
    after = health(port)
    lost = _lost(after) - _lost(before)
    rss = own.rss()
    followed = after["workloads"]
    foreign = [p for p in foreign_vmms() if p != args.vm_pid] if args.with_vm else []
    rounds = (t1 - t0) / args.interval
    cpu_s = (cpu1 - cpu0) / 1e9
    disc = walks = walk_ms = None
    d_cpu = 0.0
    if "discovery" in before and "discovery" in after:
        d_rounds = after["discovery"]["rounds"] - before["discovery"]["rounds"]
        d_cpu = after["discovery"]["cpu_s"] - before["discovery"]["cpu_s"]
        disc = d_cpu / d_rounds * 1e3 if d_rounds else None
        if "full_walks" in after["discovery"]:
            walks = after["discovery"]["full_walks"] - before["discovery"]["full_walks"]
            walk_ms = after["discovery"].get("full_walk_ms")
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
        "rss_mb": rss / 2**20, "discovery_ms": disc, "full_walks": walks, "full_walk_ms": walk_ms,
        "foreign_vmms": foreign, "lost": lost,
        "split": split,
    }  # fmt: skip


def _lost(status: dict[str, Any]) -> int:
    """Metric data points the agent's exporters dropped or failed to deliver, so far."""
    total = 0
    for exporter in status.get("exporters", {}).values():
        for key in ("dropped", "failed"):
            total += sum(v for k, v in exporter.get(key, {}).items() if "metric" in k or "point" in k)
    return total


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
            # the byte budget of what waits for delivery: the default (32 MiB) holds less than one
            # flush of 10,000 workloads, whose oldest batches are then dropped (and counted)
            f"buffer_bytes = {max(32 << 20, n * (64 << 10))}\n"
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
        windows = [measure_window(args, agent.pid, own, port, receiver, n, label, w) for w in range(args.windows)]
        result = dict(windows[0])
        keys = (
            "followed",
            "percent",
            "per_ms",
            "series",
            "us_per_series",
            "rss_mb",
            "discovery_ms",
            "full_walks",
            "lost",
        )
        for key in keys:
            values = [w[key] for w in windows if w[key] is not None]
            result[key] = statistics.median(values) if values else None
        splits = [w["split"] for w in windows if w["split"] is not None]
        result["split"] = tuple(statistics.median(x) for x in zip(*splits, strict=True)) if splits else None
        result["windows"] = len(windows)
        return result
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
    parser.add_argument("--windows", type=int, default=3, help="consecutive windows measured; medians printed")
    parser.add_argument("--tree", action="append", default=[], help="another checkout to measure besides this one")
    parser.add_argument("--no-self", action="store_true", help="measure only the --tree checkouts")
    parser.add_argument("--profile", metavar="DIR", help="py-spy the agent over the window; raw stacks into DIR")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("agent benchmark: needs root to create cgroups")
    args.py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if args.profile and not os.path.exists(args.py_spy):
        sys.exit("--profile: py-spy is not installed (pip install py-spy)")
    layout = detect_layout()
    receiver = counting_receiver()
    trees = [(Path(t).resolve(), Path(t).name) for t in args.tree] + ([] if args.no_self else [(ROOT, "this tree")])
    print(
        f"agent benchmark: {args.interval:.0f} s interval, medians of {args.windows} windows of {args.window:.0f} s, "
        f"cgroup layout {layout.mode}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
    )
    print("  baseline: plain Python os.open/os.read + split of the usual cgroup files, same cgroups, same run")
    if len(trees) > 1:
        print(f"  and the first tree ({trees[0][1]}): the 'x base' column is ms/ctr-scrape over its figure, same N")
    print(
        f"  {'N':>6} {'tree':<12} {'followed':>8} {'% core':>7} {'ms/ctr-scrape':>13} {'x floor':>7} {'x base':>6} "
        f"{'series/ctr':>10} {'us/series':>9} {'RSS MB':>7} {'disc ms/round':>13} {'full walks (ms each)':>20} "
        f"{'floor ms':>8}"
    )
    for n in (int(c) for c in args.counts.split(",")):
        vm = None
        tmp = tempfile.mkdtemp(prefix="uniobs-agentbench-vm-")
        workloads = Workloads(layout, f"/uniobs-agentbench-{os.getpid()}", n)
        print(f"  ({n} cgroups with a sleep each made in {workloads.create_s:.1f} s)", flush=True)
        base = None
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
                walks = f"{r['full_walks']:.0f}" if r["full_walks"] is not None else "n/a"
                if r.get("full_walk_ms") is not None:
                    walks += f" ({r['full_walk_ms']:.0f} ms)"
                base = base or r["per_ms"]
                print(
                    f"  {n:>6} {label:<12} {r['followed']:>8.0f} {r['percent']:>6.2f}% {r['per_ms']:>13.3f} "
                    f"{r['per_ms'] / floor:>6.2f}x {r['per_ms'] / base:>5.2f}x {r['series']:>10.1f} "
                    f"{r['us_per_series']:>9.1f} {r['rss_mb']:>7.1f} {disc:>13} {walks:>20} {floor:>8.3f}"
                    + (
                        "  CPU split: discovery {:.0f}% / collect (read) {:.0f}% / main (intake, flush) {:.0f}% / "
                        "export {:.0f}% / other {:.0f}%".format(*r["split"])
                        if r["split"]
                        else ""
                    )
                    + (f"  (!) other QEMUs ran, followed too: pids {r['foreign_vmms']}" if r["foreign_vmms"] else "")
                    + (f"  (!) {r['lost']:.0f} data points dropped or failed per window" if r["lost"] else ""),
                    flush=True,
                )
        finally:
            if vm is not None:
                vm.kill()
                vm.wait()
            workloads.remove()
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"  load average at the end: {os.getloadavg()[0]:.2f}")
    receiver.stop()


if __name__ == "__main__":
    main()
