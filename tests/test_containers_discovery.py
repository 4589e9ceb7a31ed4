"""Container discovery without a daemon, and the netns collector, on recorded trees.

Each tests/testdata/containers/<scenario>/ holds the runtime state files, manager metadata and
cgroup directories of one situation, with a SOURCE naming where each file comes from (real
files written by runc, Podman, Docker and containerd on the test host, or files written after
the runtimes' source where the host cannot run them), and an expected.json: the Workloads
discovery must find there, in full. One parametrised test runs over every folder; the others
check what a golden value cannot say (claims, lookups, hostile and changing files, sockets).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import socketserver
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from support import Golden, scenario_params

from uniobs.collectors.cgroup import CgroupCollector, CgroupConfig
from uniobs.collectors.netns import NetnsCollector, NetnsConfig, parse_net_dev
from uniobs.collectors.process import ProcessCollector
from uniobs.config import Settings
from uniobs.containers import discovery as containers
from uniobs.host import cgroup_place, cgroupfs
from uniobs.lifecycle import discover as discovery
from uniobs.model import Kind, Workload
from uniobs.pipeline import Pipeline
from uniobs.plugin import SourceUnavailable, WorkloadGone

DATA = Path(__file__).resolve().parent / "testdata" / "containers"

PODMAN_ID = "1b4facc52b0846f30fbf4c391eecb8c25d3d6b8fa139b6566867c22b9f33af19"
DOCKER_ID = "589e97be1dfd110a893b18a97e4e80839fc2ac455eb9870d60de99cbb8645feb"
WEB_ID = "4b5e57f6eb2f42b9039b3d1e13929295f231749c510cbe341cd68036d9af97e2"
K8S_APP = "a172cedcae47474b615c54d510a5d84a8dea3032e958587430b413538be3f333"
POD1 = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0b1a7c4e_6f43_4a8e_9d1b_2c3d4e5f6a7b.slice"
POD2 = "/kubepods.slice/kubepods-pod5e6f7a8b_9c0d_4e1f_8a2b_3c4d5e6f7a8b.slice"

Fields = tuple[Kind, str, str, str, int | None, str | None, dict[str, str]]


def fields(w: Workload) -> Fields:
    return (w.kind, w.runtime, w.id, w.name, w.pid, w.cgroup, dict(w.labels))


def roots(scenario: str | Path) -> tuple[cgroupfs.CgroupLayout, str, str]:
    base = DATA / scenario if isinstance(scenario, str) else scenario
    return cgroupfs.detect_layout(str(base / "sys/fs/cgroup")), str(base / "run"), str(base / "var/lib")


def discover_workloads(scenario: str | Path, **kwargs: Any) -> list[Workload]:
    layout, run, var_lib = roots(scenario)
    kwargs.setdefault("proc_dir", None)
    kwargs.setdefault("use_sockets", False)
    return containers.discover_containers(layout, run, var_lib, **kwargs)


def discover(scenario: str | Path, **kwargs: Any) -> list[Fields]:
    return [fields(w) for w in discover_workloads(scenario, **kwargs)]


C = Kind.CONTAINER

# --- each recorded runtime, against its expected.json -----------------------------------------

NOT_DISCOVERY = ("netns",)  # the netns collector's recorded /proc: see its tests at the end


def as_json(w: Workload) -> dict[str, Any]:
    return {
        "kind": w.kind.value, "runtime": w.runtime, "id": w.id, "name": w.name, "pid": w.pid, "cgroup": w.cgroup,
        "cgroups": dict(w.cgroups), "labels": dict(w.labels),
    }  # fmt: skip


@pytest.mark.parametrize("folder", scenario_params("containers", exclude=NOT_DISCOVERY))
def test_recorded_runtime_state_is_discovered_as_expected(folder: Path, golden: Golden) -> None:
    """Discovery without a daemon over one recorded host: the runtimes' files under run/ and
    var/lib/, the cgroup tree, and the inits' /proc entries where the scenario recorded them
    (elsewhere pids are taken as the state files write them)."""
    golden.scenario(folder)
    layout, run, var_lib = roots(folder)
    proc = folder / "proc"
    found = containers.discover_containers(
        layout, run, var_lib, proc_dir=str(proc) if proc.is_dir() else None, use_sockets=False
    )
    golden.check_scenario(folder, {"containers": [as_json(w) for w in found]})


# --- each runtime, beyond what it discovers ---------------------------------------------------


def test_runc_with_a_relative_cgroups_path_whose_controllers_disagree() -> None:
    """runc put memory under the launcher's own memory cgroup: the majority path wins, once."""
    layout, run, var_lib = roots("runc_hybrid")
    finder = containers.ContainerDiscovery(layout, run, var_lib, proc_dir=None, use_sockets=False)
    memory_path = "/process_api/6144ffd417ca7b4fb1b610c5a05bbc7d/uniobs-probe/probe1"
    alt, main = finder.identify(memory_path), finder.identify("/uniobs-probe/probe1")
    assert alt is not None and main is not None and fields(alt) == fields(main)
    assert dict(main.cgroups) == {"memory": memory_path}  # each hierarchy is read at its own path
    # discover_cgroups sees the path in both walked hierarchies: both claimed as one container
    claimed = [w for w in discovery.discover_cgroups(layout, identify=finder.identify) if w.kind is C]
    assert {w.key for w in claimed} == {(C.value, "runc", "probe1")}
    # by name alone (no state scan), an arbitrary runc path is not recognisable
    assert containers.identify("/uniobs-probe/probe1", run_dir=run, var_lib=var_lib, use_sockets=False) is None


# runc_nested_memory: runc launched from a nested memory cgroup (see its SOURCE)
NESTED = DATA / "runc_nested_memory"
NESTED_CPU = "/uniobs-probe/nested1"
NESTED_MEMORY = "/uniobs-test-nest/a/uniobs-probe/nested1"
NESTED_PID = 5695
NESTED_LABELS = {"com.example.team": "green", "org.opencontainers.image.title": "hello-node"}


def nested_container(base: Path = NESTED, **kwargs: Any) -> tuple[cgroupfs.CgroupLayout, Workload]:
    layout, run, var_lib = roots(base)
    kwargs.setdefault("proc_dir", str(base / "proc"))
    [found] = containers.discover_containers(layout, run, var_lib, use_sockets=False, **kwargs)
    return layout, found


def test_runc_from_a_nested_memory_cgroup_is_read_per_hierarchy() -> None:
    layout, w = nested_container()
    assert fields(w) == (C, "runc", "nested1", "nested1", NESTED_PID, NESTED_CPU, NESTED_LABELS)
    assert dict(w.cgroups) == {"memory": NESTED_MEMORY}
    assert [w.cgroup_of(c) for c in ("memory", "cpu", "cpuacct", "pids", "blkio", "")] == [
        NESTED_MEMORY,
        *[NESTED_CPU] * 5,
    ]
    assert w.cgroup_paths == (NESTED_CPU, NESTED_MEMORY)
    # the kernel's view of the init agrees with runc's state
    seen = cgroupfs.proc_cgroup_paths(NESTED_PID, str(NESTED / "proc"))
    assert (seen["memory"], seen["cpu"], seen[""], seen["name=systemd"]) == (NESTED_MEMORY, *[NESTED_CPU] * 3)

    # every figure, each from its own hierarchy (values as recorded)
    stats = cgroupfs.read_stats(layout, w.cgroup or "", paths=w.cgroups)
    assert stats.absent == ()
    assert (stats.memory_usage, stats.memory_rss, stats.memory_cache) == (19308544, 7032832, 11497472)
    assert stats.memory_working_set == 19308544 - 4096  # total_inactive_file
    assert (stats.memory_pgfault, stats.memory_pgmajfault, stats.memory_oom_kills) == (2919, 3, 0)
    assert stats.cpu_usage_s == pytest.approx(0.06184079)
    assert stats.pids_current is not None and stats.pids_current >= 1 and stats.memory_pressure is not None
    assert cgroupfs.cgroup_pids(layout, w.cgroup or "", w.cgroups) == [NESTED_PID]
    # at the one path, as uniobs read it before: no memory, and the reason is in `absent`
    blind = cgroupfs.read_stats(layout, NESTED_CPU)
    assert blind.memory_usage is None and blind.memory_rss is None and blind.absent == ("memory",)
    assert blind.cpu_usage_s == stats.cpu_usage_s and blind.pids_current == stats.pids_current

    # the walk sees the container at both paths and claims both as the one container
    finder = containers.ContainerDiscovery(layout, *roots(NESTED)[1:], proc_dir=str(NESTED / "proc"), use_sockets=False)
    claimed = [w for w in discovery.discover_cgroups(layout, identify=finder.identify) if w.kind is C]
    assert {x.key for x in claimed} == {w.key} and all(dict(x.cgroups) == dict(w.cgroups) for x in claimed)


def test_the_cgroup_collector_says_which_hierarchy_yields_nothing() -> None:
    layout, w = nested_container()
    collector = CgroupCollector(CgroupConfig(root=layout.root))
    got = {(s.metric, s.attributes): s.value for s in collector.collect(w)}
    assert got[("container.memory.usage", ())] == 19308544 and list(collector.gaps(w)) == []
    blind = Workload(kind=C, runtime="runc", id="nested1", pid=NESTED_PID, cgroup=NESTED_CPU)
    got = {(s.metric, s.attributes): s.value for s in collector.collect(blind)}
    assert ("container.memory.usage", ()) not in got and ("container.cpu.time", (("cpu.mode", "user"),)) in got
    assert list(collector.gaps(blind)) == [
        f"memory: no cgroup {NESTED_CPU} in {layout.v1['memory']} "
        "(container.memory.*, container.paging.faults, uniobs.container.memory.* not read)"
    ]
    assert list(collector.gaps(blind)) == []  # taken once per collect()
    # a plain host cgroup is often in some hierarchies only: not a gap
    plain = Workload(kind=Kind.CGROUP, runtime="cgroup", id=NESTED_CPU, cgroup=NESTED_CPU)
    assert list(collector.collect(plain)) and list(collector.gaps(plain)) == []


def test_an_empty_or_vanishing_cgroup_is_not_a_gap(tmp_path: Path) -> None:
    """A runtime deleting a container removes its hierarchies one at a time, once it is empty."""
    base = tmp_path / "t"
    shutil.copytree(NESTED, base)
    for procs in (base / "sys/fs/cgroup").glob(f"*{NESTED_CPU}/cgroup.procs"):
        procs.write_text("")  # the init has exited: its cgroup may be being removed
    layout = cgroupfs.detect_layout(str(base / "sys/fs/cgroup"))
    collector = CgroupCollector(CgroupConfig(root=layout.root))
    blind = Workload(kind=C, runtime="runc", id="nested1", cgroup=NESTED_CPU)
    assert list(collector.collect(blind)) and list(collector.gaps(blind)) == []
    for hierarchy in ("cpu", "cpuacct", "pids", "blkio"):  # every directory went between two reads
        shutil.rmtree(base / f"sys/fs/cgroup/{hierarchy}{NESTED_CPU}")
    with pytest.raises(WorkloadGone):
        collector.collect(blind)


def test_the_pipeline_says_a_gap_once_and_counts_it(caplog: pytest.LogCaptureFixture) -> None:
    layout, w = nested_container()
    settings = Settings(collectors={"cgroup": {"root": layout.root}})
    blind = Workload(kind=C, runtime="runc", id="nested1", name="nested1", pid=NESTED_PID, cgroup=NESTED_CPU)
    pipeline = Pipeline(settings, export=[], collectors=["cgroup"], strict=True)
    try:
        with caplog.at_level(logging.INFO, logger="uniobs.pipeline"):
            for _ in range(3):
                assert pipeline.scrape([w, blind]) > 0
        said = [r for r in caplog.records if "yields nothing" in r.getMessage()]
        assert [(r.levelno, r.getMessage()) for r in said] == [
            (
                logging.WARNING,
                f"cgroup: nested1: yields nothing: memory: no cgroup {NESTED_CPU} in {layout.v1['memory']} "
                "(container.memory.*, container.paging.faults, uniobs.container.memory.* not read)",
            )
        ]
        assert pipeline.error_count() == 3  # NoData at each collection of `blind`, none for `w`
        data, _ = pipeline.telemetry.metrics_data()
        errors = [
            (dict(p.attributes or {}), p.value)
            for rm in data.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
            if m.name == "uniobs.collector.errors"
            for p in m.data.data_points
        ]
        assert errors == [({"uniobs.collector": "cgroup", "error.type": "NoData"}, 3)]
    finally:
        pipeline.close(2)


STATE_NAMES_ONE_PATH = {
    "no path at all": None,  # a relative cgroupsPath and no cgroup_paths: /proc alone says where it is
    "one absolute path": NESTED_CPU,  # as crun's status or containerd's config.json name it
}


@pytest.mark.parametrize("config_path", list(STATE_NAMES_ONE_PATH.values()), ids=list(STATE_NAMES_ONE_PATH))
def test_hierarchies_no_state_names_come_from_the_inits_proc_cgroup(tmp_path: Path, config_path: str | None) -> None:
    base = tmp_path / "t"
    shutil.copytree(NESTED, base)
    state_path = base / "run/runc/nested1/state.json"
    state = json.loads(state_path.read_text())
    del state["cgroup_paths"]
    if config_path is not None:
        state["config"]["cgroups"]["path"] = config_path
    state_path.write_text(json.dumps(state))
    layout, w = nested_container(base)
    assert (w.cgroup, dict(w.cgroups)) == (NESTED_CPU, {"memory": NESTED_MEMORY})
    assert cgroupfs.read_stats(layout, w.cgroup or "", paths=w.cgroups).memory_usage == 19308544
    # without /proc, nothing says where the memory cgroup is
    _, trusted = nested_container(base, proc_dir=None)
    assert dict(trusted.cgroups) == {} and trusted.cgroup == config_path
    # an init below the container's cgroup (systemd's init.scope in it) is still the container
    if config_path is not None:
        proc_cgroup = base / f"proc/{NESTED_PID}/cgroup"
        proc_cgroup.write_text(proc_cgroup.read_text().replace(NESTED_MEMORY, f"{NESTED_CPU}/init.scope"))
        _, inside = nested_container(base)
        assert (inside.cgroup, dict(inside.cgroups)) == (NESTED_CPU, {})


def test_the_oom_watch_follows_the_memory_hierarchy(tmp_path: Path) -> None:
    base = tmp_path / "t"
    shutil.copytree(NESTED, base)
    layout, w = nested_container(base)
    oom_control = base / f"sys/fs/cgroup/memory{NESTED_MEMORY}/memory.oom_control"
    watch = cgroup_place.OomWatch(layout, w.cgroup or "", w.cgroups)
    blind = cgroup_place.OomWatch(layout, NESTED_CPU)  # the one path: a memory cgroup that is not there
    try:
        assert watch.check() == 0 and blind.check() == 0
        oom_control.write_text(oom_control.read_text().replace("oom_kill 0", "oom_kill 1"))
        assert watch.check() == 1
        assert blind.check() == 0  # would miss the kill
    finally:
        watch.close()
        blind.close()


def test_the_process_collector_covers_a_containers_init() -> None:
    collector = ProcessCollector()
    init = Workload(kind=C, runtime="runc", id="c", pid=os.getpid(), cgroup="/c")
    assert collector.applies_to(init)
    got = {s.metric for s in collector.collect(init)}
    assert {"process.cpu.time", "process.memory.usage", "process.thread.count"} <= got
    unknown = Workload(kind=C, runtime="docker", id="d", cgroup="/docker/d")
    assert collector.applies_to(unknown)  # said, not skipped in silence
    with pytest.raises(SourceUnavailable, match="init process is not known"):
        collector.collect(unknown)
    assert not collector.applies_to(Workload(kind=Kind.CGROUP, runtime="cgroup", id="/x", cgroup="/x"))


def test_podman_with_runc_and_cgroupfs() -> None:
    labels = {
        "org.opencontainers.image.stopSignal": "15",
        "container.image.name": "localhost/uniobs-probe/hello-node",
        "container.image.tags": "v1",
        "uniobs.container.oci_runtime": "runc",
    }
    cgroup = f"/libpod_parent/libpod-{PODMAN_ID}"
    # as the discover_cgroups seam, by name: conmon's shared cgroup stays a plain cgroup
    layout, run, var_lib = roots("podman_cgroupfs")
    by_name = functools.partial(containers.identify, run_dir=run, var_lib=var_lib, proc_dir=None, use_sockets=False)
    found = discovery.discover_cgroups(layout, identify=by_name)
    assert [(w.kind, w.cgroup) for w in found] == [(Kind.CGROUP, "/libpod_parent/conmon"), (C, cgroup)]
    assert fields(found[1]) == (C, "podman", PODMAN_ID, "probe-pod", 18956, cgroup, labels)


def test_a_container_found_by_name_is_placed_by_its_inits_proc_cgroup(tmp_path: Path) -> None:
    """Docker's config names the init (pid 7000); its /proc/<pid>/cgroup says where it is."""
    scope = f"/system.slice/docker-{WEB_ID}.scope"
    (tmp_path / "7000").mkdir()
    (tmp_path / "7000/stat").write_text("7000 (nginx) S 1 7000 7000 0 -1 4194560 " + "0 " * 30 + "\n")
    layout, run, var_lib = roots("docker_systemd")

    def found(proc_cgroup: str) -> Workload:
        (tmp_path / "7000/cgroup").write_text(proc_cgroup)
        [w] = containers.discover_containers(layout, run, var_lib, proc_dir=str(tmp_path), use_sockets=False)
        return w

    # an init below the container's cgroup (a systemd inside it) is still the container
    inside = found(f"0::{scope}/init.scope\n")
    assert (inside.pid, inside.cgroup, dict(inside.cgroups)) == (7000, scope, {})
    moved = found("0::/elsewhere/web\n")  # the init's cgroup is not the one its name says
    assert (moved.pid, moved.cgroup, dict(moved.cgroups)) == (7000, scope, {"": "/elsewhere/web"})


def test_containerd_default_namespace_path() -> None:
    labels = {"com.example.tier": "bronze", "uniobs.container.oci_runtime": "runc"}
    expected = (C, "containerd", "probe-ctr", "probe-ctr", 21683, "/default/probe-ctr", labels)
    _, run, var_lib = roots("containerd_cgroupfs")
    found = containers.identify("/default/probe-ctr", run_dir=run, var_lib=var_lib, proc_dir=None, use_sockets=False)
    assert found is not None and fields(found) == expected  # targeted lookup, no scan
    assert containers.identify("/default/other", run_dir=run, var_lib=var_lib, use_sockets=False) is None


def test_resource_attributes_take_only_derived_labels() -> None:
    layout, run, var_lib = roots("kubepods_systemd")
    app = containers.ContainerDiscovery(layout, run, var_lib, proc_dir=None, use_sockets=False).identify(
        f"{POD1}/cri-containerd-{K8S_APP}.scope"
    )
    assert app is not None
    attrs = app.resource_attributes()
    assert {k: v for k, v in attrs.items() if k.startswith(("k8s.", "container."))} == {
        "container.id": K8S_APP,
        "container.name": "web",
        "container.runtime.name": "containerd",
        "container.image.name": "registry.example:5000/shop/web",
        "container.image.tags": ("3.4",),
        "k8s.pod.uid": "0b1a7c4e-6f43-4a8e-9d1b-2c3d4e5f6a7b",
        "k8s.pod.name": "shop-7d9f",
        "k8s.namespace.name": "prod",
        "k8s.container.name": "web",
    }
    assert "com.example.git" not in attrs and "uniobs.k8s.pod.qos_class" not in attrs


# --- pure parsers ---------------------------------------------------------------------------


def test_cgroup_names() -> None:
    hexid = "0123456789abcdef" * 4
    assert containers.match_cgroup(f"/docker/{hexid}") == containers.CgroupMatch("docker", hexid)
    assert containers.match_cgroup(f"/docker/{hexid}/docker/{hexid[::-1]}") == containers.CgroupMatch(
        "docker", hexid[::-1]
    )  # Docker in Docker: the innermost
    assert containers.match_cgroup(f"/system.slice/docker-{hexid}.scope") == containers.CgroupMatch("docker", hexid)
    assert containers.match_cgroup(f"/machine.slice/libpod-{hexid}.scope") == containers.CgroupMatch("podman", hexid)
    assert containers.match_cgroup(f"/libpod_parent/libpod-{hexid}") == containers.CgroupMatch("podman", hexid)
    uid = f"{'1' * 8}_{'2' * 4}_{'3' * 4}_{'4' * 4}_{'5' * 12}"
    kind = (  # kind's nodes root the kubelet's cgroups at /kubelet.slice
        "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
        f"kubelet-kubepods-besteffort-pod{uid}.slice/cri-containerd-{hexid}.scope"
    )
    assert containers.match_cgroup(kind) == containers.CgroupMatch(
        "containerd", hexid, "11111111-2222-3333-4444-555555555555", "besteffort"
    )
    for not_a_container in (
        f"/machine.slice/libpod-conmon-{hexid}.scope",
        "/libpod_parent/conmon",
        f"{POD2}/crio-conmon-{hexid}.scope",
        "/system.slice/docker.service",
        f"/docker/{hexid[:12]}",
        f"/system.slice/docker-{hexid.upper()}.scope",
        POD1,
        "/",
    ):
        assert containers.match_cgroup(not_a_container) is None, not_a_container


UUID_09 = "5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a8b"
STATIC_UID = "8f6a44fc62e8cb075753c843896568ca"  # a static pod's config hash (kubernetes#67537)
UUID = "11111111-2222-3333-4444-555555555555"
HEX = "0123456789abcdef" * 4
INNER = "fedcba9876543210" * 4
POD_NAMES = {  # cgroup path -> (runtime, id, pod uid, QoS): every driver, both pod UID shapes, CRI-O's cgroupfs name
    f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{STATIC_UID}.slice/cri-containerd-{HEX}.scope": (
        "containerd",
        HEX,
        STATIC_UID,
        "burstable",
    ),
    f"/kubepods.slice/kubepods-pod{STATIC_UID}.slice/crio-{HEX}.scope": ("cri-o", HEX, STATIC_UID, "guaranteed"),
    f"/kubepods/burstable/pod{STATIC_UID}/{HEX}": ("cri", HEX, STATIC_UID, "burstable"),
    f"/kubepods/pod{STATIC_UID}/{HEX}": ("cri", HEX, STATIC_UID, "guaranteed"),
    f"/kubepods/besteffort/pod{UUID}/crio-{HEX}": ("cri-o", HEX, UUID, "besteffort"),
    f"/kubepods/pod{UUID}/crio-{HEX}": ("cri-o", HEX, UUID, "guaranteed"),
    f"/crio/crio-{HEX}": ("cri-o", HEX, None, None),  # CRI-O's default cgroupfs parent, outside Kubernetes
    # a UID of neither shape names no pod; the container is still recognised
    f"/kubepods.slice/kubepods-pod{STATIC_UID[:31]}.slice/crio-{HEX}.scope": ("cri-o", HEX, None, None),
    f"/kubepods.slice/kubepods-pod{STATIC_UID}0000.slice/crio-{HEX}.scope": ("cri-o", HEX, None, None),
}


@pytest.mark.parametrize("path", list(POD_NAMES))
def test_pod_uids_of_both_shapes_in_both_drivers(path: str) -> None:
    runtime, cid, uid, qos = POD_NAMES[path]
    assert containers.match_cgroup(path) == containers.CgroupMatch(runtime, cid, uid, qos)


SCOPE = (
    f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UUID.replace('-', '_')}.slice/crio-{HEX}.scope"
)
NESTED_LEAVES = {  # a cgroup below the container's -> the container's own cgroup
    f"{SCOPE}/container": SCOPE,  # crun's run.oci.systemd.subgroup (default on cgroup v2)
    f"{SCOPE}/container/delegated": SCOPE,  # crun's run.oci.delegate-cgroup below it
    f"/machine.slice/libpod-{HEX}.scope/container": f"/machine.slice/libpod-{HEX}.scope",  # Podman with crun
    f"/system.slice/docker-{HEX}.scope/init": f"/system.slice/docker-{HEX}.scope",  # Docker in Docker's init
    f"/docker/{HEX}/init": f"/docker/{HEX}",
    f"/system.slice/docker-{HEX}.scope/init.scope": f"/system.slice/docker-{HEX}.scope",  # systemd inside
    f"/system.slice/docker-{HEX}.scope/system.slice/payload.service": f"/system.slice/docker-{HEX}.scope",
    f"/kubepods/burstable/pod{UUID}/{HEX}/payload": f"/kubepods/burstable/pod{UUID}/{HEX}",
    # a container in a container: the innermost
    f"/system.slice/docker-{HEX}.scope/docker/{INNER}": f"/system.slice/docker-{HEX}.scope/docker/{INNER}",
    f"/system.slice/docker-{HEX}.scope/docker/{INNER}/init": f"/system.slice/docker-{HEX}.scope/docker/{INNER}",
}


@pytest.mark.parametrize("path", list(NESTED_LEAVES))
def test_a_cgroup_below_a_container_s_is_that_container_s(path: str) -> None:
    found = containers.container_cgroup(path)
    assert found is not None
    at, match = found
    assert at == NESTED_LEAVES[path]
    assert match == containers.match_cgroup(at)  # the same container, with its pod
    if at.startswith("/kubepods"):
        assert (match.pod_uid, match.qos_class) == (UUID, "burstable")


def test_below_a_conmon_or_a_pod_is_no_container() -> None:
    for path in (
        f"{SCOPE.rsplit('/', 1)[0]}/crio-conmon-{HEX}.scope/sub",
        f"{SCOPE.rsplit('/', 1)[0]}/sub",
        f"/kubepods/burstable/pod{UUID}/crio-conmon-{HEX}",
        "/system.slice/docker.service/init",
    ):
        assert containers.container_cgroup(path) is None, path


def test_the_walk_gives_a_containers_nested_cgroups_to_it(tmp_path: Path) -> None:
    """A state-known container (runc's state names /uniobs-probe/probe1) with a systemd inside,
    and a container known by name only with crun's sub-cgroup: each nested cgroup is claimed by
    its container, which keeps its own path, rather than becoming a host cgroup of its own."""
    base = tmp_path / "t"
    shutil.copytree(DATA / "runc_hybrid", base)
    layout, run, var_lib = roots(base)
    for hierarchy in layout.v1.values():
        for sub in ("init.scope", "system.slice/app.service"):
            (Path(hierarchy) / "uniobs-probe/probe1" / sub).mkdir(parents=True)
            (Path(hierarchy) / "uniobs-probe/probe1" / sub / "cgroup.procs").write_text("7\n")
        crun = Path(hierarchy) / f"docker/{HEX}/container"
        crun.mkdir(parents=True)
        (crun / "cgroup.procs").write_text("8\n")
    finder = containers.ContainerDiscovery(layout, run, var_lib, proc_dir=None, use_sockets=False)
    walked = discovery.discover_cgroups(layout, identify=finder.identify)
    assert {w.cgroup: (w.kind, w.runtime, w.id) for w in walked if "probe1" in (w.cgroup or "") or HEX in w.id} == {
        "/uniobs-probe/probe1": (C, "runc", "probe1"),
        f"/docker/{HEX}": (C, "docker", HEX),
    }
    by_key = {w.key: w for w in finder.discover()}
    assert by_key[(C.value, "docker", HEX)].cgroup == f"/docker/{HEX}"
    assert by_key[(C.value, "runc", "probe1")].cgroup == "/uniobs-probe/probe1"
    # by name alone (no scan), a cgroup below a known one is found the same way
    sub = containers.identify(f"/docker/{HEX}/container", run_dir=run, var_lib=var_lib, use_sockets=False)
    assert sub is not None and (sub.runtime, sub.id, sub.cgroup) == ("docker", HEX, f"/docker/{HEX}")


def test_a_state_known_container_nested_in_another_is_itself(tmp_path: Path) -> None:
    """crun's status for a container whose cgroup sits inside another container's scope (an
    engine run in a container): it is its own container, without the outer one's pod."""
    base = tmp_path / "t"
    shutil.copytree(DATA / "09-crun-container-subgroup-kubepods", base)
    [outer_status] = base.glob("run/crun/*/status")
    status = json.loads(outer_status.read_text())
    nested = status["cgroup-path"] + "/inner"
    (base / "run/crun/inner").mkdir()
    (base / "run/crun/inner/status").write_text(json.dumps({**status, "pid": 7002, "cgroup-path": nested}))
    (base / f"sys/fs/cgroup{nested}").mkdir()
    (base / f"sys/fs/cgroup{nested}/cgroup.procs").write_text("7002\n")
    found = {w.id: w for w in discover_workloads(base)}
    inner = found["inner"]
    assert (inner.runtime, inner.pid, inner.cgroup, dict(inner.labels)) == ("crun", 7002, nested, {})
    assert found[outer_status.parent.name].labels["k8s.pod.uid"] == UUID_09


def test_image_references_and_systemd_paths() -> None:
    assert containers.split_image("nginx") == ("nginx", None)
    assert containers.split_image("nginx:1.25") == ("nginx", "1.25")
    assert containers.split_image("registry:5000/team/app") == ("registry:5000/team/app", None)
    assert containers.split_image("registry:5000/team/app:1.2@sha256:" + "a" * 64) == ("registry:5000/team/app", "1.2")
    assert containers.split_image("app@sha256:" + "a" * 64) == ("app", None)
    assert containers.expand_slice("kubepods-besteffort-pod1.slice") == (
        "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice"
    )
    assert containers.expand_slice("-.slice") == "/"
    with pytest.raises(ValueError):
        containers.expand_slice("a--b.slice")
    assert containers.cgroups_path_to_cgroup("system.slice:crun:plain") == "/system.slice/crun-plain.scope"
    assert containers.cgroups_path_to_cgroup(":docker:ab") == "/system.slice/docker-ab.scope"
    assert containers.cgroups_path_to_cgroup("/docker/ab") == "/docker/ab"
    assert containers.cgroups_path_to_cgroup("uniobs/x") is None  # relative: the runtime says where it landed
    assert containers.cgroups_path_to_cgroup("/a/../../etc") is None
    assert containers.relative_cgroup("memory", "/sys/fs/cgroup/memory/a/b", False) == "/a/b"
    assert containers.relative_cgroup("", "/sys/fs/cgroup/unified/a", False) == "/a"
    assert containers.relative_cgroup("", "/sys/fs/cgroup/a", True) == "/a"
    assert containers.relative_cgroup("cpu", "/elsewhere/cpu/a", False) is None


def test_malformed_files_are_skipped(tmp_path: Path) -> None:
    base = tmp_path / "t"
    shutil.copytree(DATA / "podman_cgroupfs", base)
    (base / f"run/runc/{PODMAN_ID}/state.json").write_text('{"id": ' + "[" * 100_000)  # and deep
    (base / "var/lib/containers/storage/overlay-containers/containers.json").write_text("not json")
    cgroup = f"/libpod_parent/libpod-{PODMAN_ID}"
    # still found by its cgroup name, with what is left
    assert discover(base) == [(C, "podman", PODMAN_ID, PODMAN_ID[:12], None, cgroup, {})]


# --- hostile containers ---------------------------------------------------------------------

MiB = 1 << 20


def _hostile_runc_tree(tmp_path: Path, labels: list[str]) -> Path:
    base = tmp_path / "hostile"
    shutil.copytree(DATA / "runc_hybrid", base)
    state_path = base / "run/runc/probe1/state.json"
    state = json.loads(state_path.read_text())
    state["config"]["labels"] = labels
    state_path.write_text(json.dumps(state))
    return base


def test_hostile_labels_are_capped(tmp_path: Path) -> None:
    labels = [f"k{i:05d}=v" for i in range(10_000)]
    labels += ["a-huge-value=" + "x" * MiB, "b-huge-value=" + "y" * MiB, "c" * MiB + "=huge-key"]
    labels += ["k8s.pod.name=spoofed", "container.image.name=spoofed", "uniobs.container.oci_runtime=spoofed"]
    base = _hostile_runc_tree(tmp_path, labels)
    assert (base / "run/runc/probe1/state.json").stat().st_size > 3 * MiB
    started = time.process_time()
    [found] = discover(base)
    assert time.process_time() - started < 2.0
    kept = found[6]
    limits = containers.Limits()
    assert len(kept) == limits.max_labels
    assert all(len(k) <= limits.max_key_chars and len(v) <= limits.max_value_chars for k, v in kept.items())
    assert kept["a-huge-value"] == "x" * limits.max_value_chars  # cut, not dropped
    assert list(kept)[:3] == ["a-huge-value", "b-huge-value", "k00000"]  # smallest keys first: a stable choice
    assert not {"k8s.pod.name", "container.image.name", "uniobs.container.oci_runtime"} & set(kept)


def test_a_state_file_past_the_size_limit_is_not_read(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    base = _hostile_runc_tree(tmp_path, ["big=" + "z" * (5 * MiB), "zz=last", "org.opencontainers.image.title=hello"])
    with caplog.at_level(logging.WARNING, logger="uniobs.containers"):
        layout, run, var_lib = roots(base)
        finder = containers.ContainerDiscovery(layout, run, var_lib, proc_dir=None, use_sockets=False)
        assert finder.discover() == [] and finder.discover() == []  # its cgroup name says nothing either
    assert [r.getMessage() for r in caplog.records].count(
        f"{run}/runc/probe1/state.json: larger than {4 * MiB} bytes, not read"
    ) == 1  # said once
    small = containers.Limits(max_labels=2, max_value_chars=3, max_file_bytes=16 * MiB)
    [found] = discover(base, limits=small)
    assert found[6] == {"big": "zzz", "org.opencontainers.image.title": "hel"}


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match=r"^max_labels"):
        containers.Limits(max_labels=0).validate()


# --- pids and files -------------------------------------------------------------------------


def test_a_reused_pid_is_not_the_container(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "18689").mkdir(parents=True)
    stat = "18689 (node) S 1 18689 18689 0 -1 4194560 " + " ".join(["0"] * 8) + " 20 0 7 0 {start} 1 2 3\n"
    # init_process_start in the recorded state.json is 190882
    (proc / "18689/stat").write_text(stat.format(start=190882))
    assert discover("runc_hybrid", proc_dir=str(proc))[0][4] == 18689
    (proc / "18689/stat").write_text(stat.format(start=999999))
    assert discover("runc_hybrid", proc_dir=str(proc))[0][4] is None
    shutil.rmtree(proc / "18689")
    assert discover("runc_hybrid", proc_dir=str(proc))[0][4] is None


def test_unchanged_files_are_parsed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = containers.parse_runc_state

    def counting(data: bytes | str, limits: containers.Limits, root: str = "") -> containers.RuntimeState:
        calls.append(1)
        return real(data, limits, root)

    monkeypatch.setattr(containers, "parse_runc_state", counting)
    base = tmp_path / "t"
    shutil.copytree(DATA / "docker_cgroupfs", base)
    layout, run, var_lib = roots(base)
    finder = containers.ContainerDiscovery(layout, run, var_lib, proc_dir=None, use_sockets=False)
    assert len(finder.discover()) == 1 and len(finder.discover()) == 1
    assert len(calls) == 1
    state = base / f"run/docker/runtime-runc/moby/{DOCKER_ID}/state.json"
    state.write_text(state.read_text().replace('"init_process_pid":21186', '"init_process_pid":21187'))
    assert finder.discover()[0].pid == 21187 and len(calls) == 2


# --- the optional daemon socket -------------------------------------------------------------


class _FakeDocker(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def fake_docker(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """A Docker API answering GET /containers/<id>/json on a unix socket, counting requests."""
    requests: list[str] = []
    answer = {
        "Name": "/from-socket",
        "Config": {"Image": "ghcr.io/acme/api:7", "Labels": {"team": "api"}},
        "State": {"Running": True, "Pid": 7000},
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            body = json.dumps(answer).encode()
            self.send_response(200 if self.path == f"/containers/{WEB_ID}/json" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            return None

    path = str(tmp_path / "docker.sock")
    server = _FakeDocker(path, Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield path, requests
    server.shutdown()
    server.server_close()


def test_the_docker_socket_fills_in_when_the_files_are_missing(
    tmp_path: Path, fake_docker: tuple[str, list[str]]
) -> None:
    socket_path, requests = fake_docker
    base = tmp_path / "t"
    shutil.copytree(DATA / "docker_systemd", base)
    shutil.rmtree(base / "var/lib/docker")  # config.v2.json not readable from here
    layout, run, var_lib = roots(base)
    finder = containers.ContainerDiscovery(layout, run, var_lib, proc_dir=None, docker_socket=socket_path)
    labels = {"team": "api", "container.image.name": "ghcr.io/acme/api", "container.image.tags": "7"}
    cgroup = f"/system.slice/docker-{WEB_ID}.scope"
    for _ in range(3):
        assert [fields(w) for w in finder.discover()] == [(C, "docker", WEB_ID, "from-socket", 7000, cgroup, labels)]
    assert requests == [f"/containers/{WEB_ID}/json"]  # asked once, then remembered


def test_a_silent_docker_socket_costs_one_short_timeout(tmp_path: Path) -> None:
    import socket

    path = str(tmp_path / "docker.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(8)  # accepts connections (backlog) but never answers
    try:
        base = tmp_path / "t"
        shutil.copytree(DATA / "docker_systemd", base)
        shutil.rmtree(base / "var/lib/docker")
        layout, run, var_lib = roots(base)
        finder = containers.ContainerDiscovery(
            layout, run, var_lib, proc_dir=None, docker_socket=path, socket_timeout=0.2
        )
        started = time.monotonic()
        for _ in range(3):
            [found] = finder.discover()
            assert (found.runtime, found.name, dict(found.labels)) == ("docker", WEB_ID[:12], {})
        assert time.monotonic() - started < 1.0  # one timeout, then the socket rests
    finally:
        listener.close()


# --- the netns collector on recorded /proc ----------------------------------------------------

NETNS = DATA / "netns"


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    """A writable copy of the recorded /proc, where pid 5151 is in the host's namespace."""
    root = tmp_path / "proc"
    shutil.copytree(NETNS / "proc", root)
    (root / "5151/ns").mkdir()
    os.link(root / "1/ns/net", root / "5151/ns/net")  # same inode: the host's namespace
    return root


def netns_collector(proc: Path, **kwargs: Any) -> NetnsCollector:
    config = NetnsConfig(proc=str(proc), host_netns=str(proc / "1/ns/net"), root=str(proc / "none"), **kwargs)
    config.validate()
    return NetnsCollector(config)


def container(pid: int | None, cid: str = "c1", cgroup: str | None = None) -> Workload:
    return Workload(kind=C, runtime="runc", id=cid, pid=pid, cgroup=cgroup)


def test_net_dev_parsing() -> None:
    text = (NETNS / "proc/4242/net/dev").read_text()
    assert [(i.name, i.rx_bytes, i.rx_packets, i.tx_bytes, i.tx_packets) for i in parse_net_dev(text)] == [
        ("lo", 0, 0, 0, 0),
        ("uprobe-c", 2007, 25, 1956, 19),
    ]
    header = text.splitlines(keepends=True)[:2]
    tight = "".join(header) + "verylongname0:123 1 2 3 0 0 0 0 456 4 5 6 0 0 0 0\n"  # name touching the figures
    [i] = parse_net_dev(tight)
    assert (i.name, i.rx_bytes, i.rx_errors, i.rx_dropped, i.tx_bytes, i.tx_errors, i.tx_dropped) == (
        "verylongname0",
        123,
        2,
        3,
        456,
        5,
        6,
    )


def test_a_container_in_its_own_namespace(proc: Path) -> None:
    got = {(s.metric, s.attributes): s.value for s in netns_collector(proc).collect(container(4242))}
    rx = (("network.io.direction", "receive"), ("network.interface.name", "uprobe-c"))
    tx = (("network.io.direction", "transmit"), ("network.interface.name", "uprobe-c"))
    assert got == {
        ("container.network.io", rx): 2007,
        ("container.network.io", tx): 1956,
        ("uniobs.container.network.packets", rx): 25,
        ("uniobs.container.network.packets", tx): 19,
        ("uniobs.container.network.errors", rx): 0,
        ("uniobs.container.network.errors", tx): 0,
        ("uniobs.container.network.dropped", rx): 0,
        ("uniobs.container.network.dropped", tx): 0,
    }  # lo excluded


def test_a_host_network_container_is_skipped(proc: Path) -> None:
    with pytest.raises(SourceUnavailable, match="host's network namespace"):
        netns_collector(proc).collect(container(5151))


def test_the_host_reference_falls_back_to_our_own_namespace(proc: Path) -> None:
    (proc / "self/ns").mkdir(parents=True)
    os.link(proc / "1/ns/net", proc / "self/ns/net")
    collector = netns_collector(proc)
    denied = str(proc / "1/ns/net")
    real_stat = os.stat

    def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if str(path) == denied:
            raise PermissionError(13, "Permission denied", denied)
        return real_stat(path, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "stat", stat)
        with pytest.raises(SourceUnavailable, match="host's network namespace"):
            collector.collect(container(5151))


def test_a_gone_pid_without_a_cgroup_is_workload_gone(proc: Path) -> None:
    with pytest.raises(WorkloadGone):
        netns_collector(proc).collect(container(999_999))


def test_interfaces_past_the_cap_add_up_as_other(proc: Path) -> None:
    header = "".join((NETNS / "proc/4242/net/dev").read_text().splitlines(keepends=True)[:2])
    rows = [f"eth{i}: {100 + i} 1 0 0 0 0 0 0 {10 * i} 1 0 0 0 0 0 0\n" for i in range(40)]
    (proc / "4242/net/dev").write_text(header + "    lo: 5 5 0 0 0 0 0 0 5 5 0 0 0 0 0 0\n" + "".join(rows))
    collector = netns_collector(proc, max_interfaces=3)
    got = {(s.metric, s.attributes): s.value for s in collector.collect(container(4242))}
    names = {dict(attrs)["network.interface.name"] for _, attrs in got}
    assert names == {"eth39", "eth38", "eth37", ":other"}  # busiest first
    other_rx = (("network.io.direction", "receive"), ("network.interface.name", ":other"))
    assert got[("container.network.io", other_rx)] == sum(100 + i for i in range(37))
    # admission is sticky: a later burst on eth0 does not take eth37's series
    rows[0] = "eth0: 999999 1 0 0 0 0 0 0 999999 1 0 0 0 0 0 0\n"
    (proc / "4242/net/dev").write_text(header + "".join(rows))
    again = {dict(s.attributes)["network.interface.name"] for s in collector.collect(container(4242))}
    assert again == names


def test_containers_sharing_a_namespace_report_it_once(proc: Path) -> None:
    (proc / "4343/ns").mkdir(parents=True)
    (proc / "4343/net").mkdir()
    os.link(proc / "4242/ns/net", proc / "4343/ns/net")  # a pod: two containers, one namespace
    shutil.copy(proc / "4242/net/dev", proc / "4343/net/dev")
    collector = netns_collector(proc)
    first, second = container(4242, "app"), container(4343, "sidecar")
    assert list(collector.collect(first))
    with pytest.raises(SourceUnavailable, match="shares the network namespace of runc app"):
        collector.collect(second)
    assert list(collector.collect(first))  # still the reporter
    collector.forget(first)
    assert list(collector.collect(second))  # takes over once the first is gone


def test_netns_applies_to_containers_only_and_validates() -> None:
    collector = NetnsCollector()
    assert collector.applies_to(container(1)) and collector.applies_to(container(None, cgroup="/x"))
    assert not collector.applies_to(Workload(kind=Kind.UNIKERNEL, runtime="qemu", id="q", pid=1))
    assert not collector.applies_to(container(None))
    with pytest.raises(ValueError, match=r"^max_interfaces"):
        NetnsConfig(max_interfaces=0).validate()
    with pytest.raises(ValueError, match=r"^proc"):
        NetnsConfig(proc="proc").validate()
