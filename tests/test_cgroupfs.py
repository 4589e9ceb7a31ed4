"""The cgroup backend and collector on recorded trees (tests/testdata/cgroup/<scenario>/, each
with a SOURCE file naming where its formats and values come from, and an expected.json of what
the reader returns for it: layout, listing, discovery, pids, figures and samples), parsers with
exact expected values, the metrics through a strict telemetry bridge, counter resets, and
cgroups that vanish between listing and reading."""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from support import Golden, scenario_dirs, scenario_params

from uniobs.collectors.cgroup import CgroupCollector, CgroupConfig
from uniobs.host import cgroupfs
from uniobs.host.cgroupfs import DeviceIO, Pressure
from uniobs.lifecycle import discover as discovery
from uniobs.metrics import SELF_METRICS
from uniobs.model import Kind, Sample, Workload
from uniobs.plugin import SourceUnavailable, WorkloadGone
from uniobs.telemetry.bridge import Telemetry

TESTDATA = Path(__file__).resolve().parent / "testdata" / "cgroup"
SCENARIOS = ("v2", "v1_combined", "v1_separate", "hybrid")

DOCKER_V2 = "/system.slice/docker-4b6f2ce0a1d9e8f7c6b5a4930281706f5e4d3c2b1a0f9e8d7c6b5a4930281706.scope"
DOCKER_V1 = "/docker/9f2c41d7e8b3a6051c4d2e7f8a9b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b"
LIBPOD = "/libpod_parent/libpod-0c3e5a7f9b1d2c4e6a8b0d1f3e5c7a9b1d3f5e7c9a1b3d5f7e9c1a3b5d7f9e1c"
SNAPSHOT = "/uniobs-snapshot"
# the container-like cgroup of each scenario
MAIN = {"v2": DOCKER_V2, "v1_combined": DOCKER_V1, "v1_separate": LIBPOD, "hybrid": SNAPSHOT}

TICK = cgroupfs.CLK_TCK  # cpuacct.stat is in USER_HZ: 100 on every mainstream Linux build


def root_of(scenario: str) -> str:
    return str(TESTDATA / scenario / "sys" / "fs" / "cgroup")


def layout_of(scenario: str) -> cgroupfs.CgroupLayout:
    return cgroupfs.detect_layout(root_of(scenario))


def copy_tree(scenario: str, tmp_path: Path) -> Path:
    """A writable copy of a recorded tree, symlinks kept as symlinks."""
    dst = tmp_path / scenario
    shutil.copytree(TESTDATA / scenario, dst, symlinks=True)
    return dst / "sys" / "fs" / "cgroup"


def by_key(samples: list[Sample]) -> dict[tuple[str, tuple[tuple[str, Any], ...]], float | int]:
    out: dict[tuple[str, tuple[tuple[str, Any], ...]], float | int] = {}
    for s in samples:
        key = (s.metric, s.attributes)
        assert key not in out, f"duplicate sample {key}"
        out[key] = s.value
    return out


# --- layout ---------------------------------------------------------------------------------


def test_every_scenario_names_its_source() -> None:
    for folder in scenario_dirs("cgroup"):
        source = (folder / "SOURCE").read_text()
        assert "Documentation/" in source or "verbatim copy of the real file" in source, folder.name


def test_v2_has_reads_a_controller_from_the_unified_hierarchy_only_when_v1_lacks_it() -> None:
    v2, hybrid = layout_of("v2"), layout_of("hybrid")
    assert v2.v2_has("memory") and v2.v2_has("io") and not v2.v2_has("blkio")
    assert not hybrid.v2_has("memory")


def test_no_hierarchy_is_an_oserror(tmp_path: Path) -> None:
    (tmp_path / "stray").mkdir()  # a directory without cgroup.procs is not a hierarchy
    with pytest.raises(FileNotFoundError, match="no cgroup hierarchy"):
        cgroupfs.detect_layout(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        cgroupfs.detect_layout(str(tmp_path / "absent"))


# --- listing --------------------------------------------------------------------------------


def test_list_cgroups_is_bounded(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="uniobs.cgroupfs"):
        listed = cgroupfs.list_cgroups(layout_of("v2"), max_cgroups=3)
    assert listed == ["/", "/init.scope", "/system.slice"]
    assert "stopped at 3 cgroups" in caplog.text
    with pytest.raises(ValueError, match="max_cgroups"):
        cgroupfs.list_cgroups(layout_of("v2"), max_cgroups=0)


def test_paths_that_leave_the_tree_are_refused() -> None:
    assert cgroupfs.normalize_path("docker//abc/") == "/docker/abc"
    assert cgroupfs.normalize_path("") == "/"
    for bad in ("/../etc", "/docker/../../x", "/a\0b"):
        with pytest.raises(ValueError):
            cgroupfs.read_stats(layout_of("v2"), bad)


# --- parsers --------------------------------------------------------------------------------


def test_single_values_and_limits() -> None:
    assert cgroupfs.parse_int("188743680\n") == 188743680
    assert cgroupfs.parse_int("max\n") is None
    assert cgroupfs.parse_v1_limit("268435456\n") == 268435456
    assert cgroupfs.parse_v1_limit("9223372036854771712\n") is None  # 4 KiB pages
    assert cgroupfs.parse_v1_limit("9223372036854710272\n") is None  # 64 KiB pages


def test_flat_keyed() -> None:
    assert cgroupfs.parse_flat_keyed("user 180\nsystem 68\n") == {"user": 180, "system": 68}
    assert cgroupfs.parse_flat_keyed_raw("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n\n") == {
        "oom_kill_disable": "0",
        "under_oom": "0",
        "oom_kill": "1",
    }
    assert cgroupfs.parse_cpuacct_stat("user 180\nsystem 68\n", clk_tck=100) == (1.8, 0.68)


def test_blkio_v1_keeps_read_and_write_and_skips_totals() -> None:
    text = (TESTDATA / "v1_combined/sys/fs/cgroup/blkio" / DOCKER_V1.lstrip("/")).joinpath(
        "blkio.throttle.io_service_bytes"
    )
    assert cgroupfs.parse_blkio_v1(text.read_text()) == {
        "8:16": {"read": 0, "write": 4096},
        "8:0": {"read": 10846208, "write": 1273856},
    }
    assert cgroupfs.parse_blkio_v1("Total 0\n") == {}


def test_io_stat() -> None:
    text = "8:16 rbytes=1459200 wbytes=314773504 rios=192 wios=353 dbytes=0 dios=0\n"
    assert cgroupfs.parse_io_stat(text) == {
        "8:16": {"rbytes": 1459200, "wbytes": 314773504, "rios": 192, "wios": 353, "dbytes": 0, "dios": 0}
    }
    # iocost adds fractional cost.* keys; they are not counters and are skipped
    assert cgroupfs.parse_io_stat("8:0 rbytes=4096 cost.vrate=135.89 cost.usage=1\n") == {
        "8:0": {"rbytes": 4096, "cost.usage": 1}
    }


def test_pressure() -> None:
    text = "some avg10=0.00 avg60=0.12 avg300=0.30 total=1523067\nfull avg10=0.00 avg60=0.05 avg300=0.11 total=800412\n"
    assert cgroupfs.parse_pressure(text) == Pressure(1.523067, 0.800412)
    # cpu.pressure before Linux 5.13 has no "full" line
    assert cgroupfs.parse_pressure("some avg10=1.00 avg60=0.50 avg300=0.10 total=2000000\n") == Pressure(2.0, None)


def test_proc_cgroup_gives_each_hierarchys_path() -> None:
    text = (
        "12:memory:/nest/a/ctr\n"  # a launcher nested in memory only
        "4:cpu,cpuacct:/ctr\n"  # a combined mount names both
        "1:name=systemd:/ctr\n"
        "0::/ctr\n"  # the cgroup2 hierarchy
    )
    assert cgroupfs.parse_proc_cgroup(text) == {
        "memory": "/nest/a/ctr",
        "cpu": "/ctr",
        "cpuacct": "/ctr",
        "name=systemd": "/ctr",
        "": "/ctr",
    }
    assert cgroupfs.parse_proc_cgroup("0::/gone (deleted)\n5:pids:/a/../../b\nnot a line\n") == {}
    assert cgroupfs.parse_proc_cgroup("0::/\n") == {"": "/"}
    with pytest.raises(FileNotFoundError):
        cgroupfs.proc_cgroup_paths(2**22 + 1, "/proc")  # above any pid_max: no such process
    assert cgroupfs.proc_cgroup_paths(os.getpid()) == cgroupfs.parse_proc_cgroup(Path("/proc/self/cgroup").read_text())


def test_working_set_is_floored_at_zero() -> None:
    assert cgroupfs.working_set(188743680, 41943040) == 146800640
    assert cgroupfs.working_set(4096, 8192) == 0  # two reads, not one snapshot
    assert cgroupfs.working_set(4096, None) is None  # inactive_file unknown: not taken for 0


# --- read_stats beyond the golden files ------------------------------------------------------


def test_v1_figures_are_hierarchical_like_v2() -> None:
    """libpod_parent has no pages or I/O of its own: the total_* keys and the _recursive
    blkio files carry its children's, the plain ones zeros. A live cgroup without cpuacct
    files (none recorded for it) gets None there, not WorkloadGone."""
    stats = cgroupfs.read_stats(layout_of("v1_separate"), "/libpod_parent")
    assert stats.memory_rss == 27262976 + 1048576  # container + conmon, not its own 0
    assert stats.memory_pgfault == 9120 + 310 and stats.memory_pgmajfault == 1
    assert stats.memory_working_set == 35651584 - 3145728
    assert stats.io == (DeviceIO("254:0", 2097152, 65536, 64, 4),)  # the plain files say "Total 0"
    assert stats.cpu_usage_s is None and stats.cpu_user_s is None and stats.pids_current is None
    assert stats.memory_failcnt is None  # not recorded for it


def test_hybrid_snapshot_cpu_time_agrees_with_the_unified_cpu_stat() -> None:
    """The figures of a real cgroup on this host (see hybrid/SOURCE and its expected.json): ~0.6 s
    CPU under a 50% quota, 48 MiB touched, 8 MiB written and 4 MiB read with O_DIRECT, PSI from unified/."""
    assert cgroupfs.read_stats(layout_of("hybrid"), SNAPSHOT).cpu_usage_s == 0.655734934
    # the same CPU time seen by the v2 hierarchy's always-present cpu.stat, to the microsecond
    v2_cpu = cgroupfs.parse_flat_keyed((Path(root_of("hybrid")) / "unified/uniobs-snapshot/cpu.stat").read_text())
    assert v2_cpu["usage_usec"] == 655734934 // 1000


def test_io_and_pressure_can_be_skipped() -> None:
    stats = cgroupfs.read_stats(layout_of("v2"), DOCKER_V2, io=False, pressure=False)
    assert stats.io is None and stats.cpu_pressure is None and stats.io_pressure is None
    assert stats.memory_usage == 188743680


# --- the collector, through a strict telemetry bridge ---------------------------------------


def workload(path: str) -> Workload:
    return Workload(kind=Kind.CGROUP, runtime="cgroup", id=path, name=path.rsplit("/", 1)[-1], cgroup=path)


def collector_for(root: str, **config: Any) -> CgroupCollector:
    cfg = CgroupConfig(root=root, **config)
    cfg.validate()
    return CgroupCollector(cfg)


def strict_telemetry() -> Telemetry:
    telemetry = Telemetry(strict=True)
    telemetry.declare(CgroupCollector.metrics, scope="uniobs.collectors.cgroup")
    return telemetry


def points(telemetry: Telemetry, metric: str) -> dict[tuple[tuple[str, Any], ...], Any]:
    data, _ = telemetry.metrics_data()
    return {
        tuple(sorted((p.attributes or {}).items())): p
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == metric
        for p in m.data.data_points
    }


@pytest.mark.parametrize("folder", scenario_params("cgroup"))
def test_every_scenario_passes_strict_telemetry(folder: Path) -> None:
    collector = collector_for(str(folder / "sys" / "fs" / "cgroup"))
    telemetry = strict_telemetry()
    for path in cgroupfs.list_cgroups(collector.layout()):
        telemetry.record(workload(path), collector.collect(workload(path)))  # raises on anything undeclared
    names = {m.name for m in CgroupCollector.metrics}
    data, count = telemetry.metrics_data()
    emitted = {m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    assert count > 0 and emitted - {spec.name for spec in SELF_METRICS} <= names  # uniobs' own come too
    for spec in CgroupCollector.metrics:
        assert spec.unit in ("s", "By") or spec.unit.startswith("{"), spec.name


def test_without_a_user_system_split_one_point_has_no_mode(tmp_path: Path) -> None:
    """No cpuacct.stat: the convention's "no mode labels at all" form, not a partial split."""
    root = copy_tree("v1_combined", tmp_path)
    (root / "cpu,cpuacct/system.slice/containerd.service/cpuacct.stat").unlink()
    got = by_key(list(collector_for(str(root)).collect(workload("/system.slice/containerd.service"))))
    assert got == {("container.cpu.time", ()): 73.219004411}


def test_devices_are_capped_busiest_first_and_the_rest_summed_as_other() -> None:
    collector = collector_for(root_of("v2"), max_devices=16)
    got = by_key(list(collector.collect(workload("/system.slice"))))
    devices = {dict(attrs)["system.device"] for (name, attrs) in got if name == "container.disk.io"}
    # the two disks, then the 14 busiest loop devices; loops 7:0..7:5 add up into "other"
    assert devices == {"254:0", "259:0", "other"} | {f"7:{n}" for n in range(6, 20)}
    other_read = (("disk.io.direction", "read"), ("system.device", "other"))
    assert got[("container.disk.io", other_read)] == sum((n + 1) * 40960 for n in range(6))
    assert got[("uniobs.container.disk.operations", other_read)] == sum((n + 1) * 10 for n in range(6))
    # admission is sticky: a second reading keeps the same series
    again = by_key(list(collector.collect(workload("/system.slice"))))
    assert again.keys() == got.keys()
    collector.forget(workload("/system.slice"))
    small = collector_for(root_of("v2"), max_devices=1)
    got = by_key(list(small.collect(workload("/system.slice"))))
    assert {dict(a)["system.device"] for (n, a) in got if n == "container.disk.io"} == {"254:0", "other"}


def test_counter_reset_gets_a_new_start_time_and_no_negative_value(tmp_path: Path) -> None:
    """The container is recreated under the same cgroup path between scrapes 2 and 3: its
    counters restart from near zero. The bridge must start a new series, not go negative."""
    root = copy_tree("v1_combined", tmp_path)
    cpuacct = root / "cpu,cpuacct" / DOCKER_V1.lstrip("/")
    collector = collector_for(str(root))
    telemetry = strict_telemetry()
    w = workload(DOCKER_V1)
    t1, t2, t3 = 1_000_000_000, 11_000_000_000, 21_000_000_000
    telemetry.record(w, collector.collect(w), now_ns=t1)
    (cpuacct / "cpuacct.stat").write_text("user 250\nsystem 90\n")  # grows
    (cpuacct / "cpuacct.usage").write_text("3412876001\n")
    telemetry.record(w, collector.collect(w), now_ns=t2)
    user = points(telemetry, "container.cpu.time")[(("cpu.mode", "user"),)]
    assert (user.start_time_unix_nano, user.time_unix_nano, user.value) == (t1, t2, 250 / TICK)
    (cpuacct / "cpuacct.stat").write_text("user 3\nsystem 1\n")  # the new container
    (cpuacct / "cpuacct.usage").write_text("41000000\n")
    telemetry.record(w, collector.collect(w), now_ns=t3)
    after = points(telemetry, "container.cpu.time")
    user, system = after[(("cpu.mode", "user"),)], after[(("cpu.mode", "system"),)]
    # the new start is just after the last point before the reset
    assert (user.start_time_unix_nano, user.time_unix_nano, user.value) == (t2 + 1, t3, 3 / TICK)
    assert (system.start_time_unix_nano, system.value) == (t2 + 1, 1 / TICK)
    # a counter that did not go down keeps its series
    faults = points(telemetry, "container.paging.faults")[(("system.paging.fault.type", "major"),)]
    assert (faults.start_time_unix_nano, faults.value) == (t1, 12)
    for metric in ("container.cpu.time", "container.paging.faults", "container.disk.io"):
        assert all(p.value >= 0 for p in points(telemetry, metric).values())


def test_counter_reset_at_the_second_scrape_is_visible(tmp_path: Path) -> None:
    """A reset seen at the second scrape must move the start time past the first point's,
    or a consumer could see the reset only from the lower value."""
    root = copy_tree("v1_combined", tmp_path)
    cpuacct = root / "cpu,cpuacct" / DOCKER_V1.lstrip("/")
    collector, telemetry, w = collector_for(str(root)), strict_telemetry(), workload(DOCKER_V1)
    telemetry.record(w, collector.collect(w), now_ns=1_000_000_000)
    (cpuacct / "cpuacct.stat").write_text("user 3\nsystem 1\n")
    telemetry.record(w, collector.collect(w), now_ns=11_000_000_000)
    user = points(telemetry, "container.cpu.time")[(("cpu.mode", "user"),)]
    assert user.value == 3 / TICK
    assert user.start_time_unix_nano > 1_000_000_000


# --- vanishing cgroups ----------------------------------------------------------------------


def remove_everywhere(root: Path, path: str, hierarchies: list[str]) -> None:
    for hierarchy in hierarchies:
        target = Path(hierarchy) / path.lstrip("/")
        if target.is_dir():
            shutil.rmtree(target)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_a_cgroup_removed_between_list_and_read_is_workload_gone(scenario: str, tmp_path: Path) -> None:
    root = copy_tree(scenario, tmp_path)
    collector = collector_for(str(root))
    layout = collector.layout()
    path = MAIN[scenario]
    assert path in cgroupfs.list_cgroups(layout)
    primary = list(layout.v1.values()) or [str(layout.unified)]
    remove_everywhere(root, path, primary)  # in hybrid, unified/<path> stays: it is secondary
    with pytest.raises(WorkloadGone, match="is gone"):
        cgroupfs.read_stats(layout, path)
    with pytest.raises(WorkloadGone):
        list(collector.collect(workload(path)))
    with pytest.raises(WorkloadGone):
        cgroupfs.cgroup_pids(layout, path)
    assert path not in cgroupfs.list_cgroups(layout)


def test_a_cgroup_missing_from_one_hierarchy_is_alive(tmp_path: Path) -> None:
    """A cgroup may exist in some v1 hierarchies only: its other figures still come."""
    root = copy_tree("v1_separate", tmp_path)
    shutil.rmtree(root / "cpuacct" / LIBPOD.lstrip("/"))
    stats = cgroupfs.read_stats(cgroupfs.detect_layout(str(root)), LIBPOD)
    assert stats.cpu_usage_s is None and stats.cpu_user_s is None
    assert stats.cpu_periods == 0 and stats.memory_usage == 33554432 and stats.pids_limit == 2048


def test_no_hierarchy_is_source_unavailable(tmp_path: Path) -> None:
    collector = collector_for(str(tmp_path))
    with pytest.raises(SourceUnavailable, match="no cgroup hierarchy"):
        list(collector.collect(workload(DOCKER_V2)))


def test_config_is_validated_naming_the_key() -> None:
    with pytest.raises(ValueError, match=r"^root:"):
        CgroupConfig(root="sys/fs/cgroup").validate()
    with pytest.raises(ValueError, match=r"^max_devices:"):
        CgroupConfig(max_devices=0).validate()
    assert CgroupCollector().applies_to(workload("/x")) and not CgroupCollector().applies_to(
        Workload(kind=Kind.PROCESS, runtime="test", id="p", pid=1)
    )


# --- discovery ------------------------------------------------------------------------------


def test_discovery_keeps_an_intermediate_cgroup_with_processes_of_its_own(tmp_path: Path) -> None:
    root = copy_tree("v1_combined", tmp_path)
    (root / "memory/docker/cgroup.procs").write_text("777\n")  # v1 allows it
    paths = [w.cgroup for w in discovery.discover_cgroups(cgroupfs.detect_layout(str(root)))]
    assert paths == ["/docker", DOCKER_V1, "/system.slice/containerd.service"]


def test_discovery_lets_a_runtime_claim_a_cgroup() -> None:
    def identify(path: str) -> Workload | None:
        if "/docker-" in path:
            cid = path.rsplit("docker-", 1)[1].removesuffix(".scope")
            return Workload(kind=Kind.CONTAINER, runtime="docker", id=cid, name="hello", cgroup=path)
        return None

    found = discovery.discover_cgroups(layout_of("v2"), identify=identify)
    containers = [w for w in found if w.kind is Kind.CONTAINER]
    assert [(w.runtime, w.name, w.cgroup) for w in containers] == [("docker", "hello", DOCKER_V2)]
    assert len(found) == 4


# --- every recorded tree against its expected.json --------------------------------------------


def sample_map(samples: Iterable[Sample]) -> dict[str, float | int]:
    """{"metric{attribute='value',...}": value}, attributes in the order emitted; a duplicate fails."""
    return {
        metric + ("{" + ",".join(f"{k}={v!r}" for k, v in attrs) + "}" if attrs else ""): value
        for (metric, attrs), value in by_key(list(samples)).items()
    }


def read_tree(folder: Path, expected: dict[str, Any]) -> dict[str, Any]:
    """What the reader returns for one recorded tree: its layout, the cgroups listed and
    discovered and, for the cgroups expected.json names under "pids", "stats" and "samples"
    (every discovered one when the scenario has no expected.json yet), their pids, figures
    (CgroupStats) and the cgroup collector's samples."""
    root = str(folder / "sys" / "fs" / "cgroup")
    layout = cgroupfs.detect_layout(root)
    found = discovery.discover_cgroups(layout)

    def rel(path: str | None) -> str | None:
        return None if path is None else os.path.relpath(path, root)

    out: dict[str, Any] = {
        "layout": {
            "mode": layout.mode.value,
            "unified": rel(layout.unified),
            "unified_controllers": sorted(layout.unified_controllers),
            "v1": {controller: rel(path) for controller, path in sorted(layout.v1.items())},
        },
        "cgroups": cgroupfs.list_cgroups(layout),
        "discovered": [
            {"cgroup": w.cgroup, "kind": w.kind.value, "runtime": w.runtime, "id": w.id, "name": w.name} for w in found
        ],
    }
    readers = {
        "pids": lambda path: cgroupfs.cgroup_pids(layout, path),
        "stats": lambda path: dataclasses.asdict(cgroupfs.read_stats(layout, path)),
        "samples": lambda path: sample_map(collector_for(root).collect(workload(path))),
    }
    for section, read in readers.items():
        if section in expected or not expected:
            paths = expected[section] if section in expected else [w.cgroup for w in found if w.cgroup]
            out[section] = {path: read(path) for path in paths}
    return out


@pytest.mark.parametrize("folder", scenario_params("cgroup"))
def test_recorded_tree_reads_as_expected(folder: Path, golden: Golden) -> None:
    if cgroupfs.CLK_TCK != 100:
        pytest.skip(f"the recorded cpuacct.stat files count USER_HZ 100 ticks; this host's USER_HZ is {TICK}")
    expected = golden.scenario(folder)
    golden.check_scenario(folder, read_tree(folder, expected))


# --- optional files that cannot be read (issue 13, case 01 and its kind) ----------------------

PSI_CASE = TESTDATA / "01-psi-read-eopnotsupp"
IO_TORN_CASE = TESTDATA / "04-iostat-torn-device-line"
IO_UNKNOWN_CASE = TESTDATA / "06-iostat-unknown-device-rows"
APP = "/system.slice/app.service"  # the one cgroup of each issue-13 case tree


class Faults:
    """The one fault injection of these tests (issue 13, case 01): os.open or os.read of the files
    `match` accepts fails with a real errno, as the kernel's would (open: EACCES; read: a
    seq_file's show() refusing, EOPNOTSUPP from PSI with PSI disabled, EINVAL). Every other call
    is the real one; `attempts` lists the paths whose call was failed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, match: Callable[[str], bool], err: int, at: str) -> None:
        self.match, self.err = match, err
        self.attempts: list[str] = []
        real_open, real_read = os.open, os.read

        def fail(path: str) -> None:
            self.attempts.append(path)
            raise OSError(self.err, os.strerror(self.err), path)

        def open_(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            if isinstance(path, str) and self.match(path):
                fail(path)
            return real_open(path, flags, *args, **kwargs)

        def read(fd: int, n: int) -> bytes:
            try:
                path = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                path = ""
            if self.match(path):
                fail(path)
            return real_read(fd, n)

        if at == "open":
            monkeypatch.setattr(os, "open", open_)
        else:
            monkeypatch.setattr(os, "read", read)


def fault_at(err: int) -> str:
    """Where the kernel gives this errno: EACCES at open(), the others from the file's read."""
    return "open" if err in (errno.EACCES, errno.EPERM) else "read"


def stats_dict(layout: cgroupfs.CgroupLayout, path: str, **kwargs: Any) -> dict[str, Any]:
    """A reading as expected.json holds it."""
    normalised: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(cgroupfs.read_stats(layout, path, **kwargs))))
    return normalised


def weaker(got: Any, base: Any) -> bool:
    """`got` says what `base` says or less: each figure equal or None, a device left out at most,
    nothing invented."""
    if got is None or got == base:
        return True
    if isinstance(got, dict) and isinstance(base, dict):
        return got.keys() == base.keys() and all(weaker(got[k], base[k]) for k in got)
    if isinstance(got, list) and isinstance(base, list):  # io: devices, by name
        by_device = {b["device"]: b for b in base}
        return all(g["device"] in by_device and weaker(g, by_device[g["device"]]) for g in got)
    return False


def files_read(layout: cgroupfs.CgroupLayout, path: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every file read_stats opens for this cgroup (the real calls, only watched)."""
    seen: list[str] = []
    real_open = os.open

    def watch(p: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        fd = real_open(p, flags, *args, **kwargs)
        seen.append(str(p))
        return fd

    with monkeypatch.context() as m:
        m.setattr(os, "open", watch)
        cgroupfs.read_stats(layout, path)
    return seen


def test_psi_read_eopnotsupp_leaves_every_other_figure_and_is_said_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """Case 01 (below #8135, netdata #7531): on a PSI-disabled kernel every *.pressure file opens
    and its read fails with EOPNOTSUPP. The cgroup keeps its CPU and memory figures (the case's
    right values, also the scenario's expected.json), PSI is absent, each file is said once, and
    no cgroup of that hierarchy tries it again."""
    expected = json.loads((PSI_CASE / "expected.json").read_text())
    shutil.copytree(PSI_CASE, tmp_path / "case", symlinks=True)
    root = tmp_path / "case" / "sys" / "fs" / "cgroup"
    shutil.copytree(root / APP.lstrip("/"), root / "system.slice/other.service")  # a second cgroup, same host
    faults = Faults(monkeypatch, lambda p: p.endswith(".pressure"), errno.EOPNOTSUPP, at="read")
    collector = collector_for(str(root))
    with caplog.at_level(logging.WARNING, logger="uniobs.cgroupfs"):
        first = sample_map(collector.collect(workload(APP)))
        assert len(faults.attempts) == 3  # cpu, memory, io: the real failure, met once each
        second = sample_map(collector.collect(workload(APP)))
        other = sample_map(collector.collect(workload("/system.slice/other.service")))
    assert first == second == other == expected["samples"][APP]
    assert len(faults.attempts) == 3  # remembered per hierarchy: not tried again, for any cgroup
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 3 and all("EOPNOTSUPP" in m and "psi=1" in m and "not read again" in m for m in said), said

    failures = cgroupfs.FileFailures()
    layout = cgroupfs.detect_layout(str(root))
    stats = cgroupfs.read_stats(layout, APP, failures=failures)
    assert (stats.cpu_usage_s, stats.memory_usage) == (5.0, 104857600)  # the case's right values
    assert stats.cpu_pressure is None and stats.memory_pressure is None and stats.io_pressure is None
    assert stats_dict(layout, APP, failures=failures) == expected["stats"][APP]
    assert failures.unreadable() == [(str(root), f"{r}.pressure") for r in ("cpu", "io", "memory")]


@pytest.mark.parametrize("err", [errno.EOPNOTSUPP, errno.EINVAL, errno.EACCES, errno.EIO])
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_an_unreadable_optional_file_leaves_only_its_own_figures_absent(
    scenario: str, err: int, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Each file read_stats reads for the scenario's container, failing alone: the others' figures
    come as recorded, its own are None (never another value), nothing raises. Said once; tried
    again at the next read unless the errno says it never will be readable."""
    layout, path = layout_of(scenario), MAIN[scenario]
    base = stats_dict(layout, path)
    names = files_read(layout, path, monkeypatch)
    assert len(names) >= 8, names
    for name in names:
        failures = cgroupfs.FileFailures()
        caplog.clear()
        with monkeypatch.context() as m, caplog.at_level(logging.WARNING, logger="uniobs.cgroupfs"):
            faults = Faults(m, lambda p, name=name: p == name, err, at=fault_at(err))
            got = stats_dict(layout, path, failures=failures)
            again = stats_dict(layout, path, failures=failures)
        assert got == again and weaker(got, base), (name, got)
        assert len(faults.attempts) == (1 if err in (errno.EOPNOTSUPP, errno.EINVAL) else 2), name  # it was met
        shown = "EOPNOTSUPP" if err == errno.EOPNOTSUPP else errno.errorcode[err]
        assert len(caplog.records) == 1 and shown in caplog.records[0].getMessage()


@pytest.mark.parametrize("content", ["", "\n", "garbage \x00 -1 +5 \u00b2 1_0\n", " max \n", "9" * 5000])
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_an_empty_or_garbled_file_leaves_only_its_own_figures_absent(
    scenario: str, content: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The same with what a file holds instead of how it fails: an empty, torn or garbled file
    (a count with a sign, an underscore, a latin-1 digit, 5000 digits) gives no figure and no
    exception."""
    root = copy_tree(scenario, tmp_path)
    layout = cgroupfs.detect_layout(str(root))
    path = MAIN[scenario]
    base = stats_dict(layout, path)
    for name in files_read(layout, path, monkeypatch):
        original = Path(name).read_bytes()
        Path(name).write_text(content, encoding="latin-1")
        try:
            got = stats_dict(layout, path)
        finally:
            Path(name).write_bytes(original)
        assert weaker(got, base), (name, got)


def test_a_cgroup_none_of_whose_files_can_be_read_raises_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not one optional file, the whole cgroup: that is a failing workload (counted), not a
    reading of Nones."""
    layout = layout_of("v2")
    Faults(monkeypatch, lambda p: DOCKER_V2 in p, errno.EACCES, at="open")
    with pytest.raises(PermissionError):
        cgroupfs.read_stats(layout, DOCKER_V2)
    with pytest.raises(PermissionError):
        collector_for(root_of("v2")).collect(workload(DOCKER_V2))
    assert cgroupfs.read_stats(layout, "/system.slice").memory_usage is not None  # the others read on


def test_cgroup_pids_passes_over_a_hierarchy_it_cannot_read(monkeypatch: pytest.MonkeyPatch) -> None:
    layout = layout_of("v1_combined")
    expected = cgroupfs.cgroup_pids(layout, DOCKER_V1)
    memory_procs = f"{layout.v1['memory']}{DOCKER_V1}/cgroup.procs"
    with monkeypatch.context() as m:
        faults = Faults(m, lambda p: p == memory_procs, errno.EACCES, at="open")
        assert cgroupfs.cgroup_pids(layout, DOCKER_V1) == expected
        assert faults.attempts == [memory_procs]
    Faults(monkeypatch, lambda p: p.endswith("/cgroup.procs"), errno.EACCES, at="open")
    with pytest.raises(PermissionError):
        cgroupfs.cgroup_pids(layout, DOCKER_V1)


# --- block I/O: absent stays absent, devices are MAJ:MIN (issue 13, cases 04 and 06) ----------


def test_a_device_row_with_no_keys_is_no_reading_and_no_reset(tmp_path: Path) -> None:
    """Case 04 (green-metrics-tool #1837): io.stat holding only "252:0 " between two readings
    with figures. No sample for 252:0 that time, and the series keeps its start time: the
    bridge sees no counter reset, as it would for a reading of zeros."""
    recorded = (IO_TORN_CASE / "sys/fs/cgroup" / APP.lstrip("/") / "io.stat").read_text()
    assert recorded == "252:0 "
    shutil.copytree(IO_TORN_CASE, tmp_path / "case")
    root = tmp_path / "case/sys/fs/cgroup"
    io_stat = root / APP.lstrip("/") / "io.stat"
    collector, telemetry, w = collector_for(str(root)), strict_telemetry(), workload(APP)
    read = (("disk.io.direction", "read"), ("system.device", "252:0"))
    t1, t2, t3 = 1_000_000_000, 11_000_000_000, 21_000_000_000

    io_stat.write_text("252:0 rbytes=1449984 wbytes=0 rios=12 wios=0 dbytes=0 dios=0\n")
    telemetry.record(w, collector.collect(w), now_ns=t1)
    io_stat.write_text(recorded)
    torn = list(collector.collect(w))
    assert not [s for s in torn if s.metric.startswith(("container.disk", "uniobs.container.disk"))]
    assert cgroupfs.read_stats(collector.layout(), APP).io == ()
    telemetry.record(w, torn, now_ns=t2)
    io_stat.write_text("252:0 rbytes=1454080 wbytes=0 rios=13 wios=0 dbytes=0 dios=0\n")
    telemetry.record(w, collector.collect(w), now_ns=t3)
    point = points(telemetry, "container.disk.io")[read]
    assert (point.start_time_unix_nano, point.time_unix_nano, point.value) == (t1, t3, 1454080)


def test_unknown_device_rows_take_no_device_slot_and_their_order_does_not_matter(tmp_path: Path) -> None:
    """Case 06 (cgroup-exporter #23, lxd #18609): "(unknown)" rows are no device. With one device
    slot, 259:0 has it and there is no "other" fed by them; swapping the rows changes nothing
    (a last-row-wins value would)."""
    expected = json.loads((IO_UNKNOWN_CASE / "expected.json").read_text())["samples"][APP]
    shutil.copytree(IO_UNKNOWN_CASE, tmp_path / "case")
    root = tmp_path / "case/sys/fs/cgroup"
    io_stat = root / APP.lstrip("/") / "io.stat"
    assert sample_map(collector_for(str(root), max_devices=1).collect(workload(APP))) == expected
    lines = io_stat.read_text().splitlines(keepends=True)
    io_stat.write_text("".join([lines[2], lines[1], lines[0]]))
    assert sample_map(collector_for(str(root), max_devices=1).collect(workload(APP))) == expected


def test_io_stat_rows_are_validated_and_duplicates_summed_whatever_their_order() -> None:
    # the kernel's own example line, then the shapes issue 13 met
    assert cgroupfs.parse_io_stat("8:16 rbytes=1459200 wbytes=314773504 rios=192 wios=353\n") == {
        "8:16": {"rbytes": 1459200, "wbytes": 314773504, "rios": 192, "wios": 353}
    }
    assert cgroupfs.parse_io_stat("252:0 ") == {}  # case 04: a device with no figures yet
    unknown = "(unknown) rbytes=0 wbytes=0 rios=6 wios=0\n(unknown) rbytes=4096 wbytes=8192 rios=1 wios=2\n"
    assert cgroupfs.parse_io_stat(unknown + "259:0 rbytes=1\n") == {"259:0": {"rbytes": 1}}  # case 06
    # two request queues naming one device: summed, in either order
    twice = ["259:0 rbytes=100 wbytes=10 rios=1\n", "259:0 rbytes=5 wbytes=1\n"]
    for rows in (twice, twice[::-1]):
        assert cgroupfs.parse_io_stat("".join(rows)) == {"259:0": {"rbytes": 105, "wbytes": 11}}  # rios: not in both
    # Linux 5.15-5.17 left out a bare row's newline ("blk-cgroup: always terminate io.stat lines")
    assert cgroupfs.parse_io_stat("252:0 259:0 rbytes=7 wbytes=8\n(unknown) 8:0 rios=3\n") == {
        "259:0": {"rbytes": 7, "wbytes": 8},
        "8:0": {"rios": 3},
    }
    # a key given twice in a row, or with no count, is no figure; "08:00" is 8:0
    assert cgroupfs.parse_io_stat("08:00 rbytes=1 rbytes=2 wbytes=-1 rios=3\n8:0 rios=4\n") == {"8:0": {"rios": 7}}


def test_blkio_v1_rows_are_validated_and_duplicates_summed() -> None:
    text = (
        "8:0 Read 4194304\n8:0 Write 8396800\n8:0 Sync 12591104\n8:0 Async 0\n8:0 Discard 0\n8:0 Total 12591104\n"
        "(unknown) Read 512\n(unknown) Write 1024\n"  # no device: skipped
        "8:0 Read 4096\n"  # a second queue of 8:0: summed
        "8:16 Read 12x\n8:16 Write 2048\n"  # a torn Read is no figure; Write stands
        "Total 12591104\n"
    )
    assert cgroupfs.parse_blkio_v1(text) == {"8:0": {"read": 4194304 + 4096, "write": 8396800}, "8:16": {"write": 2048}}


def test_a_blkio_device_one_file_does_not_list_has_no_figures_there(tmp_path: Path) -> None:
    """v1: a device io_service_bytes lists and io_serviced does not (or lists without Write)
    has its operations absent, not 0; the collector emits no operation sample for it."""
    root = copy_tree("v1_combined", tmp_path)
    serviced = root / "blkio" / DOCKER_V1.lstrip("/") / "blkio.throttle.io_serviced"
    serviced.write_text("8:0 Read 321\n8:0 Total 321\nTotal 321\n")
    io = cgroupfs.read_stats(cgroupfs.detect_layout(str(root)), DOCKER_V1).io
    assert io == (DeviceIO("8:0", 10846208, 1273856, 321, None), DeviceIO("8:16", 0, 4096, None, None))
    got = sample_map(collector_for(str(root)).collect(workload(DOCKER_V1)))
    ops = {k: v for k, v in got.items() if k.startswith("uniobs.container.disk.operations")}
    assert ops == {"uniobs.container.disk.operations{disk.io.direction='read',system.device='8:0'}": 321}
    assert got["container.disk.io{disk.io.direction='write',system.device='8:16'}"] == 4096


def test_other_is_absent_for_a_counter_one_of_its_devices_does_not_give() -> None:
    collector = collector_for(root_of("v2"), max_devices=1)
    devices = (DeviceIO("8:0", 10, 20, 1, 2), DeviceIO("8:16", 1, 2, 3, None), DeviceIO("8:32", 4, 5, 6, 7))
    assert collector._bounded_io("/x", devices) == {"8:0": (10, 20, 1, 2), "other": (5, 7, 9, None)}


def test_parsers_leave_a_missing_key_absent() -> None:
    assert cgroupfs.parse_cpuacct_stat("user 180\n", clk_tck=100) == (1.8, None)
    assert cgroupfs.parse_cpuacct_stat("", clk_tck=100) == (None, None)
    assert cgroupfs.parse_flat_keyed("a 1\nb 2\na 3\nc\nd 4 5\ne -1\n") == {"b": 2}  # a: twice; c, d, e: no count
    assert cgroupfs.parse_pressure("") is None
    assert cgroupfs.parse_pressure("full avg10=0.00 avg60=0.00 avg300=0.00 total=5\n") == Pressure(None, 5e-6)
    assert cgroupfs.parse_pressure("some total=1\nsome total=2\nfull total=3\n") == Pressure(None, 3e-6)
    assert cgroupfs.parse_int("") is None and cgroupfs.parse_int("12 34") is None
    assert cgroupfs.parse_int(f"{2**64 - 1}\n") == 2**64 - 1
    assert cgroupfs.parse_v1_limit("") is None
    assert cgroupfs.parse_procs("12\n34\n5x\n") == [12, 34]


def test_a_directory_that_cannot_be_listed_hides_only_its_own_children(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """EACCES on one directory (an unprivileged reader, a subtree made 0700): it is listed
    without its children, the rest of the host is listed, and it is said."""
    layout = layout_of("v2")
    everything = cgroupfs.list_cgroups(layout)
    hidden = f"{layout.root}/user.slice"
    real = os.scandir

    def scandir(path: Any) -> Any:
        if str(path) == hidden:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with caplog.at_level(logging.WARNING, logger="uniobs.cgroupfs"):
        listed = cgroupfs.list_cgroups(layout)
    assert listed == [p for p in everything if not p.startswith("/user.slice/")]
    assert "/user.slice" in listed and len(caplog.records) == 1 and "EACCES" in caplog.text
