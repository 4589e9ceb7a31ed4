"""uniobs against the C collectors on the same cgroups: Netdata's cgroups plugin and collectd's cgroups
plugin (both from Debian: `apt-get install netdata collectd-core`), each measured from its own cpuacct
cgroup over the same window length, in the same run, with the plain-Python read floor as baseline.

N top-level cgroups with a real `sleep` each (top level because collectd's cgroups plugin reads one
level below the cpuacct mount). Each tool runs alone, at a 10 s interval, in a cgroup of its own; its
CPU over the window after a warm-up, divided by N and by the rounds in the window, is its ms CPU per
container-scrape; RSS is its processes' total. A peer that is not installed or does not start is
skipped with the reason. Bench only (not CI). Needs root.

    python bench/peers_bench.py [--counts 10,100,1000] [--window 40]
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

from agent_bench import ROOT, OwnCgroup, Workloads, floor_ms, run_agent
from otlp_receiver import HttpReceiver

from uniobs.host.cgroupfs import CgroupLayout, detect_layout


def collectd_conf(tmp: str, interval: float) -> list[str]:
    conf = Path(tmp) / "collectd.conf"
    conf.write_text(
        f'Interval {interval}\nBaseDir "{tmp}"\nPIDFile "{tmp}/collectd.pid"\nTypesDB "/usr/share/collectd/types.db"\n'
        "LoadPlugin cgroups\nLoadPlugin csv\n"
        f'<Plugin csv>\n  DataDir "{tmp}/csv"\n  StoreRates false\n</Plugin>\n'
    )
    return ["collectd", "-f", "-C", str(conf)]


def netdata_conf(tmp: str, interval: float, n: int) -> list[str]:
    conf = Path(tmp) / "netdata.conf"
    off = ["proc", "diskspace", "tc", "idlejitter", "apps", "python.d", "charts.d", "go.d", "ebpf", "node.d",
           "fping", "ioping", "perf", "slabinfo", "nfacct", "cups", "freeipmi", "statsd", "timex", "checks",
           "profile", "netdata monitoring"]  # fmt: skip
    conf.write_text(
        f"[global]\n  update every = {int(interval)}\n  memory mode = ram\n  history = 60\n"
        f"  run as user = root\n  cache directory = {tmp}/cache\n  lib directory = {tmp}/lib\n"
        f"  log directory = {tmp}/log\n  debug log = none\n  error log = none\n  access log = none\n"
        "[web]\n  mode = none\n[health]\n  enabled = no\n[ml]\n  enabled = no\n"
        "[plugins]\n  cgroups = yes\n" + "".join(f"  {p} = no\n" for p in off) + "\n"
        f"[plugin:cgroups]\n  update every = {int(interval)}\n  check for new cgroups every = {int(interval)}\n"
        f"  max cgroups to allow = {n + 500}\n  max cgroups depth to monitor = 2\n"
        "  enable by default cgroups matching = *\n  search for cgroups in subpaths matching = *\n"
    )
    for d in ("cache", "lib", "log"):
        os.makedirs(f"{tmp}/{d}", exist_ok=True)
    return ["netdata", "-D", "-c", str(conf)]


def measure(layout: CgroupLayout, name: str, argv: list[str], n: int, args: argparse.Namespace) -> str:
    tmp = tempfile.mkdtemp(prefix=f"uniobs-peer-{name}-")
    own = OwnCgroup(layout, f"/uniobs-peerbench-tool-{name}-{os.getpid()}")
    try:
        with open(Path(tmp) / "out.log", "wb") as log:  # the child keeps its own copy
            proc = own.spawn(argv(tmp) if callable(argv) else argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        time.sleep(args.interval * 2 + 2)
        if proc.poll() is not None:
            return f"skipped: exited with {proc.returncode}: {(Path(tmp) / 'out.log').read_text()[-300:]!r}"
        cpu0, t0 = own.cpu_ns(), time.monotonic()
        time.sleep(args.window)
        cpu1, t1 = own.cpu_ns(), time.monotonic()
        rss = own.rss()
        rounds = (t1 - t0) / args.interval
        per = (cpu1 - cpu0) / 1e9 / (rounds * n) * 1e3
        return f"{per:.3f} ms/ctr-scrape {(cpu1 - cpu0) / 1e9 / (t1 - t0) * 100:.2f}% core RSS {rss / 2**20:.1f} MB"
    finally:
        own.remove()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", default="10,100,1000")
    parser.add_argument("--window", type=float, default=40.0)
    parser.add_argument("--interval", type=float, default=10.0)
    args = parser.parse_args()
    args.tree, args.with_vm, args.vm_pid = [], False, None
    if os.geteuid() != 0:
        sys.exit("peers benchmark: needs root to create cgroups")
    layout = detect_layout()
    receiver = HttpReceiver()
    print(f"peers benchmark: {args.interval:.0f} s interval, {args.window:.0f} s window per tool, layout {layout.mode}")
    print("  baseline: plain Python os.open/os.read + split of the usual cgroup files, same cgroups, same run")
    for n in (int(c) for c in args.counts.split(",")):
        # collectd reads one level below the mount: the workloads are top-level cgroups
        workloads = Workloads(layout, f"/uniobs-peerbench-{os.getpid()}", n, flat=True)
        try:
            floor = floor_ms(layout, workloads.paths)
            r = run_agent(args, layout, n, ROOT, "uniobs", receiver)
            ours = r["per_ms"]
            print(f"  N={n}: floor {floor:.3f} ms/ctr; uniobs {ours:.3f} ms/ctr-scrape ({ours / floor:.2f}x floor), "
                  f"{r['percent']:.2f}% core, RSS {r['rss_mb']:.1f} MB, {r['series']:.1f} series/ctr, "
                  f"{r['us_per_series']:.1f} us/series, discovery {r['discovery_ms'] or 0:.1f} ms/round"
                  + (" (CPU split: discovery {:.0f}% / collect {:.0f}% / main {:.0f}% / export {:.0f}% / other {:.0f}%)"
                     .format(*r["split"])
                     if r["split"] else ""))  # fmt: skip
            for name, argv in (
                ("collectd", lambda tmp: collectd_conf(tmp, args.interval)),
                ("netdata", lambda tmp, n=n: netdata_conf(tmp, args.interval, n)),
            ):
                if shutil.which(name) is None:
                    print(f"    {name}: skipped: not installed (apt-get install {name})")
                    continue
                text = measure(layout, name, argv, n, args)  # type: ignore[arg-type]
                if not text.startswith("skipped"):
                    per = float(text.split()[0])
                    text += f"  ({per / ours:.2f}x uniobs, {per / floor:.2f}x floor)"
                print(f"    {name}: {text}", flush=True)
        finally:
            workloads.remove()
    receiver.stop()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
