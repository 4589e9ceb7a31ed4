"""uniobs against the C collectors on the same cgroups: Netdata's cgroups plugin and collectd's cgroups
plugin (both from Debian: `apt-get install netdata collectd-core`), each measured from its own cpuacct
cgroup over the same windows, in the same run, with the plain-Python read floor as baseline.

N cgroups with a real `sleep` each, one level below a base cgroup (`/uniobs-peerbench-PID/wNNNNN`):
collectd's cgroups plugin reads exactly that depth (the children of each top-level cgroup of the
cpuacct mount; top-level cgroups themselves it never reads, which made an earlier version of this
bench measure a collectd collecting none of them). Each tool runs alone, at a 10 s interval,
in a cgroup of its own; its CPU over each window after a warm-up, divided by the cgroups it
collects and by the rounds in the window, is its ms CPU per container-scrape (medians of
`--windows` consecutive windows); RSS is its processes' total.

Each peer is checked to be collecting every test cgroup, from its own output, before it is measured
(a figure for a tool that collects nothing would be meaningless):
- Netdata: its API on a loopback port (`/api/v1/charts`): the test cgroups that have charts updated
  in the last rounds, and their dimensions (its series per container). Its cgroups plugin is told to
  take every cgroup (`enable by default cgroups matching = *`, `max cgroups to allow` above N), to
  make every chart whatever its values (`enable ... = yes`, not `auto`, which waits for non-zero
  values), not to run its renaming and network-interface scripts per cgroup, to look for new
  cgroups every round, and, on a hybrid host, to read the v1 hierarchies (`use unified cgroups =
  no`): left to itself it picks `unified`, which holds no controller here, and collects nothing,
  which is why an earlier run at 1,000 found it "cheap".
- collectd: the CSV files its `csv` plugin writes, one directory per cgroup.
A peer that does not collect every test cgroup within the warm-up is still measured, and its row
says how many it collects (and its per-container figure is divided by those). A peer that is not
installed or does not start is skipped with the reason. Bench only (not CI). Needs root.

    python bench/peers_bench.py [--counts 10,100,1000] [--window 30] [--windows 3] [--uniobs-only 10000]
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
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from agent_bench import ROOT, OwnCgroup, Workloads, counting_receiver, floor_ms, free_port, run_agent

from uniobs.host.cgroupfs import CgroupLayout, CgroupMode, detect_layout


def collectd_conf(tmp: str, interval: float) -> list[str]:
    conf = Path(tmp) / "collectd.conf"
    conf.write_text(
        f'Interval {interval}\nBaseDir "{tmp}"\nPIDFile "{tmp}/collectd.pid"\nTypesDB "/usr/share/collectd/types.db"\n'
        'Hostname "peerbench"\nLoadPlugin cgroups\nLoadPlugin csv\n'
        f'<Plugin csv>\n  DataDir "{tmp}/csv"\n  StoreRates false\n</Plugin>\n'
    )
    return ["collectd", "-f", "-C", str(conf)]


def collectd_collecting(tmp: str, since: float) -> tuple[int, float | None, int]:
    """(test cgroups with a CSV file written since `since`, value files per such cgroup, every cgroup
    with one), from its CSV output."""
    base = Path(tmp) / "csv" / "peerbench"
    mine, files, total = 0, 0, 0
    if base.is_dir():
        for d in base.iterdir():
            if not d.name.startswith("cgroups-"):
                continue
            written = [f for f in d.iterdir() if f.stat().st_mtime >= since]
            if not written:
                continue
            total += 1
            if d.name.startswith("cgroups-w") and d.name[9:].isdigit():  # the test cgroups' names
                mine += 1
                files += len({f.name.rsplit("-", 3)[0] for f in written})  # "cpu-user-2026-11-30" -> "cpu-user"
    return mine, files / mine if mine else None, total


def netdata_conf(tmp: str, interval: float, n: int, port: int, unified: bool) -> list[str]:
    conf = Path(tmp) / "netdata.conf"
    off = ["proc", "diskspace", "tc", "idlejitter", "apps", "python.d", "charts.d", "go.d", "ebpf", "node.d",
           "fping", "ioping", "perf", "slabinfo", "nfacct", "cups", "freeipmi", "statsd", "timex", "checks",
           "profile", "netdata monitoring"]  # fmt: skip
    charts = ["cpuacct stat (total CPU)", "cpuacct cpu throttling", "memory", "detailed memory",
              "memory limits fail count", "swap memory", "blkio throttle bandwidth",
              "blkio throttle operations"]  # fmt: skip
    conf.write_text(
        f"[global]\n  update every = {int(interval)}\n  memory mode = ram\n  history = 60\n"
        f"  run as user = root\n  cache directory = {tmp}/cache\n  lib directory = {tmp}/lib\n"
        f"  log directory = {tmp}/log\n  debug log = none\n  error log = {tmp}/log/error.log\n  access log = none\n"
        f"[web]\n  mode = static-threaded\n  bind to = 127.0.0.1:{port}\n  web files owner = root\n"
        "  web files group = root\n[health]\n  enabled = no\n[ml]\n  enabled = no\n"
        "[plugins]\n  cgroups = yes\n" + "".join(f"  {p} = no\n" for p in off) + "\n"
        f"[plugin:cgroups]\n  update every = {int(interval)}\n  check for new cgroups every = {int(interval)}\n"
        f"  max cgroups to allow = {n + 500}\n  max cgroups depth to monitor = 2\n"
        "  enable by default cgroups matching = *\n  enable by default cgroups names matching = *\n"
        "  search for cgroups in subpaths matching = *\n  run script to rename cgroups matching = !*\n"
        f"  script to get cgroup network interfaces = {tmp}/no-cgroup-network\n"
        f"  use unified cgroups = {'yes' if unified else 'no'}\n"
        + "".join(f"  enable {c} = yes\n" for c in charts)
        + "  enable cpuacct usage (per core CPU) = no\n  enable cpuacct cpu shares = no\n"
    )
    for d in ("cache", "lib", "log"):
        os.makedirs(f"{tmp}/{d}", exist_ok=True)
    return ["netdata", "-D", "-c", str(conf)]


def netdata_collecting(
    tmp: str, since: float, *, port: int, prefix: str, interval: float
) -> tuple[int, float | None, int]:
    """(test cgroups with a chart whose last entry is at most two rounds old, dimensions per such
    cgroup, every cgroup with such a chart), from Netdata's own API."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/charts", timeout=20) as r:
            charts = json.load(r).get("charts", {})
    except (OSError, ValueError):
        return 0, None, 0
    now = time.time()
    dims: dict[str, int] = {}
    fresh: set[str] = set()
    for chart in charts.values():
        kind = str(chart.get("type", ""))
        if not kind.startswith("cgroup_") or now - float(chart.get("last_entry") or 0) > 2 * interval + 2:
            continue
        fresh.add(kind)
        if kind.startswith(f"cgroup_{prefix.lstrip('/')}_"):
            dims[kind] = dims.get(kind, 0) + len(chart.get("dimensions", {}))
    return len(dims), (sum(dims.values()) / len(dims)) if dims else None, len(fresh)


def measure(
    layout: CgroupLayout,
    name: str,
    argv: Callable[[str], list[str]],
    collecting: Callable[[str, float], tuple[int, float | None, int]],
    n: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    tmp = tempfile.mkdtemp(prefix=f"uniobs-peer-{name}-")
    own = OwnCgroup(layout, f"/uniobs-peerbench-tool-{name}-{os.getpid()}")
    try:
        with open(Path(tmp) / "out.log", "wb") as log:  # the child keeps its own copy
            proc = own.spawn(argv(tmp), stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        # warm-up: until it collects every test cgroup (or the deadline), then one more round
        started = time.time()
        deadline = time.monotonic() + args.interval * 3 + 30 + n / 100
        seen, series, total = 0, None, 0
        while time.monotonic() < deadline:
            time.sleep(args.interval / 2)
            if proc.poll() is not None:
                return {"skipped": f"exited with {proc.returncode}: {(Path(tmp) / 'out.log').read_text()[-300:]!r}"}
            seen, series, total = collecting(tmp, started)
            if seen >= n:
                break
        time.sleep(args.interval)
        windows = []
        for _ in range(args.windows):
            cpu0, t0, w0 = own.cpu_ns(), time.monotonic(), time.time()
            time.sleep(args.window)
            cpu1, t1 = own.cpu_ns(), time.monotonic()
            seen, series, total = collecting(tmp, w0)
            rounds = (t1 - t0) / args.interval
            cpu_s = (cpu1 - cpu0) / 1e9
            # per cgroup it collects: the test cgroups and the host's own, as for uniobs (per followed)
            windows.append((cpu_s / (rounds * max(1, total)) * 1e3, cpu_s / (t1 - t0) * 100))
        return {
            "per_ms": statistics.median(w[0] for w in windows), "percent": statistics.median(w[1] for w in windows),
            "rss_mb": own.rss() / 2**20, "collecting": seen, "series": series, "total": total,
        }  # fmt: skip
    finally:
        own.remove()
        shutil.rmtree(tmp, ignore_errors=True)


def row(tool: str, n: int, r: dict[str, Any], ours: float | None, floor: float) -> str:
    if "skipped" in r:
        return f"  {n:>6} {tool:<26} skipped: {r['skipped']}"
    series = r.get("series")
    us = r["per_ms"] * 1e3 / series if series else None
    note = "" if r["collecting"] >= n else f"  (!) collects {r['collecting']} of {n} test cgroups"
    note += f"  ({r['total']} cgroups in all, host's included: the divisor)" if "total" in r else ""
    return (
        f"  {n:>6} {tool:<26} {r['collecting']:>10.0f} {r['percent']:>6.2f}% {r['per_ms']:>13.3f} "
        f"{(r['per_ms'] / ours if ours else float('nan')):>7.2f}x {r['per_ms'] / floor:>7.2f}x "
        f"{(f'{series:.1f}' if series else '-'):>10} {(f'{us:.1f}' if us else '-'):>9} {r['rss_mb']:>7.1f}{note}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", default="10,100,1000")
    parser.add_argument("--uniobs-only", default="", help="counts (e.g. 10000) at which only uniobs is measured")
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--windows", type=int, default=3, help="consecutive windows per tool; medians printed")
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--tools", default="uniobs,collectd,netdata")
    args = parser.parse_args()
    args.tree, args.with_vm, args.vm_pid, args.profile = [], False, None, None
    if os.geteuid() != 0:
        sys.exit("peers benchmark: needs root to create cgroups")
    layout = detect_layout()
    receiver = counting_receiver()
    tools = args.tools.split(",")
    print(
        f"peers benchmark: {args.interval:.0f} s interval, medians of {args.windows} windows of {args.window:.0f} s "
        f"per tool, layout {layout.mode}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
    )
    print("  baseline: plain Python os.open/os.read + split of the usual cgroup files, same cgroups, same run;")
    print("  'x uniobs' is a tool's ms/ctr-scrape over uniobs's at the same N")
    print(
        f"  {'N':>6} {'tool':<26} {'collecting':>10} {'% core':>7} {'ms/ctr-scrape':>13} {'x uniobs':>8} "
        f"{'x floor':>8} {'series/ctr':>10} {'us/series':>9} {'RSS MB':>7}"
    )
    counts = [(int(c), False) for c in args.counts.split(",") if c]
    counts += [(int(c), True) for c in args.uniobs_only.split(",") if c]
    for n, only_uniobs in counts:
        # collectd reads the children of the top-level cgroups: the workloads are /base/wNNNNN
        prefix = f"/uniobs-peerbench-{os.getpid()}"
        workloads = Workloads(layout, prefix, n)
        try:
            floor = floor_ms(layout, workloads.paths)
            print(f"  {n:>6} {'plain-Python floor':<26} {n:>10} {'':>7} {floor:>13.3f} {'':>8} {1:>7.2f}x", flush=True)
            ours = None
            if "uniobs" in tools:
                r = run_agent(args, layout, n, ROOT, "uniobs", receiver)
                r["collecting"] = r["followed"]
                ours = r["per_ms"]
                print(row("uniobs agent, OTLP/HTTP", n, r, ours, floor), flush=True)
                print(
                    f"  {'':>6} {'':<26} discovery {r['discovery_ms'] or 0:.2f} ms/round, "
                    f"{r['full_walks'] if r['full_walks'] is not None else 'n/a'} full walks in the window"
                    + (
                        "; CPU split: discovery {:.0f}% / collect {:.0f}% / main {:.0f}% / export {:.0f}% / "
                        "other {:.0f}%".format(*r["split"])
                        if r["split"]
                        else ""
                    ),
                    flush=True,
                )
            if only_uniobs:
                continue
            port = free_port()
            unified = layout.mode is CgroupMode.V2
            peers: list[
                tuple[str, str, Callable[[str], list[str]], Callable[[str, float], tuple[int, float | None, int]]]
            ]
            peers = [
                ("collectd", "collectd 5 cgroups (C)", partial(collectd_conf, interval=args.interval),
                 collectd_collecting),
                ("netdata", "Netdata cgroups.plugin (C)",
                 partial(netdata_conf, interval=args.interval, n=n, port=port, unified=unified),
                 partial(netdata_collecting, port=port, prefix=prefix, interval=args.interval)),
            ]  # fmt: skip
            for name, tool, argv, collecting in peers:
                if name not in tools:
                    continue
                if shutil.which(name) is None:
                    print(f"  {n:>6} {tool:<26} skipped: not installed (apt-get install {name})", flush=True)
                    continue
                print(row(tool, n, measure(layout, name, argv, collecting, n, args), ours, floor), flush=True)
        finally:
            workloads.remove()
    print(f"  load average at the end: {os.getloadavg()[0]:.2f}")
    receiver.stop()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
