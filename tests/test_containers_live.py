"""Real containers: the hello-node twin under runc (its own network namespace with a veth pair,
and the host's), then under Podman; found by `uniobs.containers` and measured by the cgroup and
netns collectors through the pipeline, in strict mode.

runc is started through `python -m uniobs.host.cgexec` from a cgroup created for the test in each
v1 hierarchy uniobs reads (or the unified one on v2), with a *relative* cgroupsPath: runc puts
a container relative to its own cgroup in each hierarchy, so the container lands at
<test cgroup>/<id> wherever it was launched from. A launcher that sits at different places in
different hierarchies (nested in memory only, as on hybrid hosts) is the subject of
`test_runc_from_a_nested_memory_cgroup`, and of the recorded runc_nested_memory scenario.

Needs root, runc, node (to build the bundle: make -C examples/hello-node/container), iproute2
for the veth pair; the Podman test needs podman (Debian 12: apt-get install podman). Each skips
with the reason when its tool is absent. Containers, images, namespaces and cgroups are removed
in the fixtures' teardown, whatever happens.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import ROOT, free_port, remove_cgroups

from uniobs.collectors.cgroup import CgroupCollector
from uniobs.collectors.netns import NetnsCollector
from uniobs.config import Settings
from uniobs.containers import discovery as containers
from uniobs.host import cgroup_place, cgroupfs
from uniobs.lifecycle import discover as discovery
from uniobs.model import Kind, Workload
from uniobs.pipeline import Pipeline
from uniobs.plugin import SourceUnavailable

pytestmark = pytest.mark.containers

EXAMPLE = ROOT / "examples" / "hello-node" / "container"
BUILD = EXAMPLE / "build"
CGROUP_ROOT = "/sys/fs/cgroup"
MiB = 1 << 20

# Tolerances. Node's own anonymous memory (V8 heap, libuv) is ~6-7 MiB here; the file pages of
# /usr/bin/node (~37 MiB resident) are charged to whichever cgroup faulted them in first, so a
# container's usage ranges from ~7 MiB (pages already cached by an earlier run) to ~90 MiB.
# Hence >= 4 MiB for usage and for rss. Start-up burns 50-100 ms of CPU: >= one 10 ms tick.
MIN_MEMORY = 4 * MiB
MIN_CPU_S = 0.01

PODMAN_FLAGS = ["--runtime", "runc", "--cgroup-manager=cgroupfs", "--events-backend=file"]


def _require(tool: str, hint: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed ({hint})")
    return path


def _get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        body: bytes = resp.read()
        return body


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def bundle() -> Path:
    if os.geteuid() != 0:
        pytest.skip("running containers needs root")
    _require("runc", "apt-get install runc")
    _require("node", "apt-get install nodejs; the container is built from the host's node")
    subprocess.run(["make", "-s", "-C", str(EXAMPLE)], check=True, stdout=subprocess.DEVNULL)
    return BUILD


@dataclass
class Launcher:
    """Starts runc containers from a cgroup of the test's, and removes everything after."""

    layout: cgroupfs.CgroupLayout
    parent: str  # the launcher's cgroup; containers land at <parent>/<id>
    procs: list[str]
    workdir: Path
    started: list[str]

    def run(self, bundle: Path, own_netns: str | None, port: int) -> tuple[str, Path]:
        """A detached hello-node container; returns its id and its stdout file."""
        cid = f"uniobs-t-{secrets.token_hex(4)}"
        source = bundle / ("bundle" if own_netns is not None else "bundle-hostnet") / "config.json"
        config = json.loads(source.read_text())
        config["root"]["path"] = str(bundle / "bundle" / "rootfs")
        config["linux"]["cgroupsPath"] = cid  # relative: lands under the launcher's cgroup
        config["process"]["env"].append(f"PORT={port}")
        for ns in config["linux"]["namespaces"]:
            if ns["type"] == "network" and own_netns is not None:
                ns["path"] = f"/run/netns/{own_netns}"
        directory = self.workdir / cid
        directory.mkdir()
        (directory / "config.json").write_text(json.dumps(config))
        out, err = directory / "stdout", directory / "stderr"
        with open(out, "wb") as fout, open(err, "wb") as ferr:  # never a pipe: runc -d keeps it open
            self.started.append(cid)
            subprocess.run(
                [sys.executable, "-m", "uniobs.host.cgexec", *self.procs, "--",
                 "runc", "run", "-d", "--bundle", str(directory), cid],
                stdin=subprocess.DEVNULL, stdout=fout, stderr=ferr, check=True, timeout=30,
            )  # fmt: skip
        _wait_for(lambda: b"mark ready" in out.read_bytes(), 20, f"{cid} to listen")
        return cid, out


def _runc_state(cid: str) -> dict[str, Any]:
    result = subprocess.run(["runc", "state", cid], capture_output=True, text=True, check=True)
    state: dict[str, Any] = json.loads(result.stdout)
    return state


def _runc_remove(cid: str) -> None:
    subprocess.run(["runc", "delete", "--force", cid], stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)  # fmt: skip


@pytest.fixture
def launcher(bundle: Path, tmp_path: Path) -> Iterator[Launcher]:
    layout = cgroupfs.detect_layout(CGROUP_ROOT)
    parent = f"/uniobs-ctest-{os.getpid()}-{secrets.token_hex(3)}"
    procs = cgroup_place.create_cgroup(layout, parent)
    launch = Launcher(layout, parent, procs, tmp_path, [])
    try:
        yield launch
    finally:
        for cid in launch.started:
            _runc_remove(cid)
        deadline = time.monotonic() + 10
        while True:  # EBUSY until the killed init is reaped
            cgroup_place.remove_cgroup(layout, parent)
            if not any(os.path.isdir(os.path.dirname(p)) for p in procs) or time.monotonic() > deadline:
                break
            time.sleep(0.05)


@dataclass
class Netns:
    name: str
    host_ip: str
    container_ip: str


@pytest.fixture
def netns() -> Iterator[Netns]:
    """A network namespace with lo up and the end of a veth pair, its peer on the host."""
    _require("ip", "apt-get install iproute2")
    tag = secrets.token_hex(3)
    name, host_if, peer_if = f"uniobs-t-{tag}", f"uoh{tag}", f"uoc{tag}"
    subnet = f"10.213.{secrets.randbelow(250) + 2}"
    host_ip, container_ip = f"{subnet}.1", f"{subnet}.2"
    commands = [
        ["ip", "netns", "add", name],
        ["ip", "link", "add", host_if, "type", "veth", "peer", "name", peer_if],
        ["ip", "link", "set", peer_if, "netns", name],
        ["ip", "addr", "add", f"{host_ip}/30", "dev", host_if],
        ["ip", "link", "set", host_if, "up"],
        ["ip", "-n", name, "addr", "add", f"{container_ip}/30", "dev", peer_if],
        ["ip", "-n", name, "link", "set", peer_if, "up"],
        ["ip", "-n", name, "link", "set", "lo", "up"],
    ]
    try:
        for command in commands:
            subprocess.run(command, check=True, capture_output=True)
        yield Netns(name, host_ip, container_ip)
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


# --- helpers over the pipeline's telemetry -----------------------------------------------------


def points(pipeline: Pipeline, workload: Workload, metric: str) -> dict[tuple[tuple[str, Any], ...], Any]:
    data, _ = pipeline.telemetry.metrics_data()
    out = {}
    for rm in data.resource_metrics:
        if rm.resource.attributes.get("container.id") != workload.id:
            continue
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name == metric:
                    for p in m.data.data_points:
                        out[tuple(sorted(p.attributes.items()))] = p.value
    return out


def has_series(pipeline: Pipeline, workload: Workload) -> bool:
    data, _ = pipeline.telemetry.metrics_data()
    return any(rm.resource.attributes.get("container.id") == workload.id for rm in data.resource_metrics)


def _find(found: list[Workload], cid: str) -> Workload:
    matches = [w for w in found if w.id == cid]
    assert len(matches) == 1, [w.id for w in found]
    return matches[0]


# What the cgroup collector reads on v1 (and hybrid), per controller; PSI from the unified
# hierarchy only where the container has a directory there.
PLAIN_FILES = {
    "cpuacct": ("cpuacct.usage", "cpuacct.stat"),
    "cpu": ("cpu.stat",),
    "memory": ("memory.usage_in_bytes", "memory.limit_in_bytes", "memory.stat", "memory.failcnt", "memory.oom_control"),
    "pids": ("pids.current", "pids.max"),
    "blkio": ("blkio.throttle.io_service_bytes_recursive", "blkio.throttle.io_serviced_recursive"),
    "unified": ("cpu.pressure", "memory.pressure", "io.pressure"),
}


def _plain_read(paths: list[str], pid: int) -> int:
    """The same files read and parsed with plain Python (open/read, split, int): the floor."""
    n = 0
    for path in paths:
        with open(path, "rb") as f:
            for line in f.read().split(b"\n"):
                n += sum(int(p) for p in line.split() if p.isdigit())
    os.stat(f"/proc/{pid}/ns/net")
    with open(f"/proc/{pid}/net/dev", "rb") as f:
        for line in f.read().split(b"\n")[2:]:
            n += sum(int(p) for p in line.partition(b":")[2].split())
    return n


# --- runc ---------------------------------------------------------------------------------------


def test_runc_containers_found_and_measured(
    bundle: Path, launcher: Launcher, netns: Netns, caplog: pytest.LogCaptureFixture
) -> None:
    own_id, _ = launcher.run(bundle, netns.name, 8002)
    host_id, _ = launcher.run(bundle, None, free_port())
    for _ in range(3):  # real traffic over the veth pair
        assert _get(f"http://{netns.container_ip}:8002/") == b"Hello World\n"

    found = containers.discover_containers(launcher.layout)
    own, host = _find(found, own_id), _find(found, host_id)
    for workload, cid in ((own, own_id), (host, host_id)):
        assert (workload.kind, workload.runtime, workload.name) == (Kind.CONTAINER, "runc", cid)
        assert workload.pid == _runc_state(cid)["pid"]
        assert workload.cgroup == f"{launcher.parent}/{cid}"
        assert workload.labels["org.opencontainers.image.title"] == "hello-node"  # the bundle's annotation

    pipeline = Pipeline(Settings(), export=[], collectors=["cgroup", "netns", "process"], strict=True)
    try:
        with caplog.at_level(logging.INFO, logger="uniobs.pipeline"):
            assert pipeline.scrape([own, host]) > 0
            assert pipeline.scrape([own, host]) > 0
        assert pipeline.error_count() == 0
        for workload in (own, host):
            cpu = points(pipeline, workload, "container.cpu.time")
            assert sum(cpu.values()) >= MIN_CPU_S, cpu
            assert points(pipeline, workload, "container.memory.usage")[()] >= MIN_MEMORY
            assert points(pipeline, workload, "container.memory.rss")[()] >= MIN_MEMORY
        net = points(pipeline, own, "container.network.io")
        veth = {dict(k)["network.interface.name"] for k in net}
        assert len(veth) == 1 and veth.pop().startswith("uoc")  # lo excluded
        assert all(v > 0 for v in net.values()), net  # the three requests, both ways
        packets = points(pipeline, own, "uniobs.container.network.packets")
        assert all(v >= 3 for v in packets.values()), packets
        assert points(pipeline, host, "container.network.io") == {}
        said = [r.getMessage() for r in caplog.records if "host's network namespace" in r.getMessage()]
        assert len(said) == 1 and host_id in said[0], said  # once, over two scrapes

        # cost of one container-scrape: the collectors vs plain Python on the same files
        cg, ns = CgroupCollector(), NetnsCollector()
        layout = launcher.layout
        plain_paths = []
        for controller, names in PLAIN_FILES.items():
            hierarchy = layout.unified if controller == "unified" else layout.v1.get(controller)
            directory = f"{hierarchy}{own.cgroup}"
            if hierarchy is not None and os.path.isdir(directory):
                plain_paths += [f"{directory}/{name}" for name in names if os.path.exists(f"{directory}/{name}")]
        assert own.pid is not None
        collector_times, plain_times, pipeline_times = [], [], []
        for _ in range(200):
            t0 = time.process_time()
            list(cg.collect(own))
            list(ns.collect(own))
            t1 = time.process_time()
            _plain_read(plain_paths, own.pid)
            t2 = time.process_time()
            collector_times.append(t1 - t0)
            plain_times.append(t2 - t1)
        for _ in range(50):
            t0 = time.process_time()
            pipeline.scrape([own])
            pipeline_times.append(time.process_time() - t0)
        collectors_ms = statistics.median(collector_times) * 1e3
        plain_ms = statistics.median(plain_times) * 1e3
        scrape_ms = statistics.median(pipeline_times) * 1e3
        sys.stderr.write(
            f"\ncontainer-scrape CPU (median of 200): cgroup+netns collectors {collectors_ms:.3f} ms, "
            f"plain Python {plain_ms:.3f} ms, ratio {collectors_ms / plain_ms:.2f}; "
            f"whole pipeline.scrape (3 collectors + bridge) {scrape_ms:.3f} ms\n"
        )
        assert collectors_ms < 10 * plain_ms + 1.0  # generous: noisy 2-core VMs
    finally:
        pipeline.close(2)


def test_a_container_killed_and_deleted_mid_scrape(bundle: Path, launcher: Launcher, netns: Netns) -> None:
    cid, _ = launcher.run(bundle, netns.name, 8002)
    workload = _find(containers.discover_containers(launcher.layout), cid)
    pipeline = Pipeline(Settings(), export=[], collectors=["cgroup", "netns", "process"], strict=True)
    try:
        assert pipeline.scrape([workload]) > 0 and has_series(pipeline, workload)

        def kill() -> None:
            time.sleep(0.05)
            subprocess.run(["runc", "kill", cid, "KILL"], capture_output=True, timeout=10)
            _runc_remove(cid)

        killer = threading.Thread(target=kill)
        killer.start()
        deadline = time.monotonic() + 15
        cgroup_dir = f"{launcher.layout.v1['cpuacct']}{workload.cgroup}" if launcher.layout.v1 else ""
        while time.monotonic() < deadline:
            pipeline.scrape([workload])  # raises nothing while the container goes away under it
            if not killer.is_alive() and not (cgroup_dir and os.path.isdir(cgroup_dir)):
                break
        killer.join()
        pipeline.scrape([workload])  # gone: WorkloadGone inside, its series end
        has_series(pipeline, workload)  # the last export of a forgotten workload
        assert not has_series(pipeline, workload)
        assert pipeline.error_count() == 0  # churn, not errors
        assert cid not in [w.id for w in containers.discover_containers(launcher.layout)]
    finally:
        pipeline.close(2)


# --- a launcher nested in the memory hierarchy only (issue 10, part 5) ---------------------------


@pytest.mark.cgroup
def test_runc_from_a_nested_memory_cgroup(bundle: Path, launcher: Launcher, caplog: pytest.LogCaptureFixture) -> None:
    """runc started by a launcher that sits at <parent> in every hierarchy but memory, where it
    is nested at /uniobs-nest-<tag>/a: the container's memory cgroup is <nest>/a/<id>, its cpu,
    cpuacct, pids and blkio ones <parent>/<id>. Its memory figures, its init's process figures
    and its OOM watch must all come from the right places; read at the one path, memory is
    missing and the pipeline says so once and counts it."""
    layout = launcher.layout
    if not {"memory", "cpuacct", "cpu"} <= set(layout.v1):
        pytest.skip("needs v1 memory, cpu and cpuacct hierarchies (a v1 or hybrid host)")
    memory_root = layout.v1["memory"]
    nest = f"/uniobs-nest-{secrets.token_hex(3)}"
    nested = f"{nest}/a"
    os.makedirs(memory_root + nested)
    # the launcher (cgexec, which execs runc) joins <parent> everywhere but memory, <nest>/a there
    procs = [p for p in launcher.procs if not p.startswith(memory_root + "/")]
    procs.append(f"{memory_root}{nested}/cgroup.procs")
    nested_launcher = dataclasses.replace(launcher, procs=procs)  # shares `started`: the fixture cleans up
    cid = ""
    pipelines: list[Pipeline] = []
    try:
        cid, _ = nested_launcher.run(bundle, None, free_port())
        init = _runc_state(cid)["pid"]
        cpu_path, memory_path = f"{launcher.parent}/{cid}", f"{nested}/{cid}"
        assert os.path.isdir(memory_root + memory_path) and not os.path.isdir(memory_root + cpu_path)

        # discovery: the container is named by its majority path, each hierarchy has its own
        workload = _find(containers.discover_containers(layout), cid)
        assert (workload.cgroup, workload.pid) == (cpu_path, init)
        assert workload.cgroups["memory"] == memory_path
        assert workload.cgroup_of("cpu") == workload.cgroup_of("cpuacct") == workload.cgroup_of("pids") == cpu_path
        seen = cgroupfs.proc_cgroup_paths(init)  # the kernel agrees with runc's state
        assert (seen["memory"], seen["cpu"], seen["cpuacct"]) == (memory_path, cpu_path, cpu_path)
        assert init in cgroupfs.cgroup_pids(layout, workload.cgroup, workload.cgroups)
        # the walk sees both paths; the container claims both (what `agent.cgroups` relies on)
        walked = {w.cgroup for w in discovery.discover_cgroups(layout)}
        assert {cpu_path, memory_path} <= walked and {cpu_path, memory_path} <= set(workload.cgroup_paths)

        # the OOM watch of `uniobs run` watches the memory cgroup the container is really in
        watch = cgroup_place.OomWatch(layout, workload.cgroup, workload.cgroups)
        try:
            assert watch.fileno() is not None and watch.check() == 0  # the eventfd registered on its file
        finally:
            watch.close()

        # the pipeline, as deploy/uniobs.toml runs it: cgroup, netns and process collectors
        pipeline = Pipeline(Settings(), export=[], collectors=["cgroup", "netns", "process"], strict=True)
        pipelines.append(pipeline)
        with caplog.at_level(logging.INFO, logger="uniobs.pipeline"):
            assert pipeline.scrape([workload]) > 0
            assert pipeline.scrape([workload]) > 0
        assert pipeline.error_count() == 0
        assert points(pipeline, workload, "container.memory.usage")[()] >= MIN_MEMORY
        assert points(pipeline, workload, "container.memory.rss")[()] >= MIN_MEMORY
        assert points(pipeline, workload, "container.memory.working_set")[()] > 0
        assert set(points(pipeline, workload, "container.paging.faults")) == {
            (("system.paging.fault.type", "major"),),
            (("system.paging.fault.type", "minor"),),
        }
        assert sum(points(pipeline, workload, "container.cpu.time").values()) >= MIN_CPU_S
        assert points(pipeline, workload, "uniobs.container.pids.count")[()] >= 1
        # the init's own figures (node: ~40 MiB resident, a few threads)
        assert points(pipeline, workload, "process.memory.usage")[()] >= MIN_MEMORY
        assert sum(points(pipeline, workload, "process.cpu.time").values()) > 0
        assert points(pipeline, workload, "process.thread.count")[()] >= 1
        said = [r.getMessage() for r in caplog.records if "yields nothing" in r.getMessage()]
        assert said == [], said
        caplog.clear()

        # read at the one path (what uniobs did before): memory is missing, and that is said once
        # over two scrapes, and counted at each
        blind = dataclasses.replace(workload, cgroups={})
        stats = cgroupfs.read_stats(layout, cpu_path)
        assert stats.memory_usage is None and stats.absent == ("memory",) and stats.cpu_usage_s is not None
        pipeline = Pipeline(Settings(), export=[], collectors=["cgroup"], strict=True)
        pipelines.append(pipeline)
        with caplog.at_level(logging.INFO, logger="uniobs.pipeline"):
            assert pipeline.scrape([blind]) > 0
            assert pipeline.scrape([blind]) > 0
        said = [r.getMessage() for r in caplog.records if "yields nothing" in r.getMessage()]
        assert len(said) == 1, said
        assert said[0].startswith(f"cgroup: {cid}: yields nothing: memory: no cgroup {cpu_path} in {memory_root}")
        assert pipeline.error_count() == 2  # error.type NoData, at each collection
        assert points(pipeline, blind, "container.memory.usage") == {}
    finally:
        for pipeline in pipelines:
            pipeline.close(2)
        if cid:
            _runc_remove(cid)  # before its memory cgroup's parents can go
        remove_cgroups([memory_root + nested, memory_root + nest])


# --- Podman -------------------------------------------------------------------------------------


@pytest.fixture
def podman_image(bundle: Path) -> Iterator[str]:
    podman = _require("podman", "apt-get install podman")
    image = f"localhost/uniobs-test/hello-node:{secrets.token_hex(3)}"
    subprocess.run(
        [podman, *PODMAN_FLAGS, "import", "--change", 'CMD ["/usr/bin/node", "/app/app.js"]',
         str(bundle / "rootfs.tar"), image],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    try:
        yield image
    finally:
        subprocess.run([podman, *PODMAN_FLAGS, "rmi", "--force", image], capture_output=True, timeout=60)


@pytest.fixture
def podman_container(podman_image: str) -> Iterator[tuple[str, str, int]]:
    name = f"uniobs-test-{secrets.token_hex(3)}"
    port = free_port()
    try:
        result = subprocess.run(
            ["podman", *PODMAN_FLAGS, "run", "-d", "--name", name, "--network", "host",
             "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096",
             "-e", f"PORT={port}", podman_image],
            check=True, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        cid = result.stdout.strip().splitlines()[-1]
        _wait_for(lambda: _answers(port), 20, f"{name} to answer on port {port}")
        yield cid, name, port
    finally:
        subprocess.run(["podman", *PODMAN_FLAGS, "rm", "--force", "--time", "0", name], capture_output=True, timeout=60)


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError):
        return _get(f"http://127.0.0.1:{port}/", timeout=1) == b"Hello World\n"
    return False


def test_podman_container_found_with_its_name_and_image(
    podman_container: tuple[str, str, int], podman_image: str
) -> None:
    cid, name, _ = podman_container
    layout = cgroupfs.detect_layout(CGROUP_ROOT)
    workload = _find(containers.discover_containers(layout), cid)
    image_name, tag = podman_image.rsplit(":", 1)
    assert (workload.kind, workload.runtime, workload.name) == (Kind.CONTAINER, "podman", name)
    assert workload.cgroup is not None and workload.cgroup.endswith(f"libpod-{cid}")
    assert workload.labels["container.image.name"] == image_name
    assert workload.labels["container.image.tags"] == tag
    inspect = subprocess.run(["podman", *PODMAN_FLAGS, "inspect", "--format", "{{.State.Pid}}", cid],
                             capture_output=True, text=True, check=True)  # fmt: skip
    assert workload.pid == int(inspect.stdout)
    attrs = workload.resource_attributes()
    assert (attrs["container.name"], attrs["container.image.name"], attrs["container.image.tags"]) == (
        name,
        image_name,
        (tag,),
    )
    # host network: the netns collector says so and emits nothing
    with pytest.raises(SourceUnavailable, match="host's network namespace"):
        NetnsCollector().collect(workload)
