"""The cgroup collector on a real cgroup of this host: created here (v1 memory, cpu, cpuacct,
pids and blkio, as present), with a real process moved into it that burns ~0.3 s of CPU and
touches 50 MiB, then read through the collector; finally removed, and read again.

Needs root and v1 hierarchies (this host is a v1/v2 hybrid, see ../shared/HOST-NOTES.md);
skips with the reason otherwise. The cgroup is created at the root of each hierarchy with a
256 MiB memory limit, so the child cannot grow past it whatever happens.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from support import remove_cgroups, v1_cgroup_layout

from uniobs.collectors.cgroup import CgroupCollector, CgroupConfig
from uniobs.host import cgroupfs
from uniobs.lifecycle import discover as discovery
from uniobs.model import Kind, Workload
from uniobs.plugin import WorkloadGone

pytestmark = pytest.mark.cgroup

ROOT = "/sys/fs/cgroup"
CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "blkio")
MiB = 1 << 20

# Waits on stdin until it is in the cgroup, then burns 0.3 s of CPU (process time, so a busy
# host does not shorten it) and writes 50 MiB so every page is resident and charged here.
CHILD = r"""
import sys, time
sys.stdin.readline()
start = time.process_time()
while time.process_time() - start < 0.3:
    pass
buf = b"\x01" * (50 << 20)
sys.stdout.write("ready\n")
sys.stdout.flush()
sys.stdin.readline()
"""

# Tolerances: the CPU burn is 0.3 s by the child's own clock; cpuacct.stat's user/system
# ticks are 10 ms each, so >= 0.2 s leaves a third for rounding. The 50 MiB buffer is
# charged in full once written; >= 40 MiB leaves 10 MiB for pages reclaimed or not yet
# accounted (the per-CPU charge batches are 64 pages).
MIN_CPU_S = 0.2
MIN_MEMORY = 40 * MiB


@dataclass
class LiveCgroup:
    layout: cgroupfs.CgroupLayout
    path: str
    dirs: list[str]  # one per distinct hierarchy directory


def _write(path: str, value: str) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(value)


@pytest.fixture
def live_cgroup() -> Iterator[LiveCgroup]:
    layout = v1_cgroup_layout(("memory", "cpuacct", "pids"), ROOT)
    path = f"/uniobs-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    dirs: list[str] = []
    try:
        for controller in CONTROLLERS:
            if controller not in layout.v1:
                continue
            directory = layout.v1[controller] + path
            if directory in dirs:  # a combined cpu,cpuacct mount
                continue
            try:
                os.mkdir(directory)
            except OSError as exc:
                pytest.skip(f"cannot create a cgroup in {layout.v1[controller]}: {exc}")
            dirs.append(directory)
        _write(f"{layout.v1['memory']}{path}/memory.limit_in_bytes", str(256 * MiB))
        yield LiveCgroup(layout, path, dirs)
    finally:
        remove_cgroups(reversed(dirs), timeout=5)


def _start_child(cg: LiveCgroup) -> subprocess.Popen[str]:
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdin is not None and child.stdout is not None
    for directory in cg.dirs:
        _write(f"{directory}/cgroup.procs", str(child.pid))
    child.stdin.write("go\n")
    child.stdin.flush()
    assert child.stdout.readline() == "ready\n"
    return child


def _stop(child: subprocess.Popen[str]) -> None:
    if child.poll() is None:
        child.kill()
    child.wait(timeout=10)
    for stream in (child.stdin, child.stdout):
        if stream is not None:
            stream.close()


def test_a_real_cgroup_read_through_the_collector(live_cgroup: LiveCgroup) -> None:
    cg = live_cgroup
    _write(f"{cg.layout.v1['pids']}{cg.path}/pids.max", "32")
    child = _start_child(cg)
    try:
        assert cgroupfs.cgroup_pids(cg.layout, cg.path) == [child.pid]
        found = [w for w in discovery.discover_cgroups(cg.layout) if w.cgroup == cg.path]
        assert [(w.kind, w.id) for w in found] == [(Kind.CGROUP, cg.path)]

        collector = CgroupCollector(CgroupConfig(root=ROOT))
        got: dict[tuple[str, tuple[tuple[str, object], ...]], float | int] = {
            (s.metric, s.attributes): s.value for s in collector.collect(found[0])
        }
        cpu = (
            got[("container.cpu.time", (("cpu.mode", "user"),))]
            + got[("container.cpu.time", (("cpu.mode", "system"),))]
        )
        assert cpu >= MIN_CPU_S, got
        assert got[("container.memory.usage", ())] >= MIN_MEMORY, got
        assert got[("container.memory.rss", ())] >= MIN_MEMORY, got  # anonymous: the bytes object
        assert MIN_MEMORY <= got[("container.memory.working_set", ())] <= got[("container.memory.usage", ())]
        assert got[("uniobs.container.memory.limit", ())] == 256 * MiB
        assert got[("uniobs.container.pids.limit", ())] == 32
        assert got[("uniobs.container.pids.count", ())] >= 1  # the interpreter and any threads of its own
        assert got[("uniobs.container.memory.oom_kills", ())] == 0
        assert ("uniobs.container.cpu.throttling.periods", ()) in got  # cpu.stat read (0: no quota set)
        # a v1-only cgroup has no unified/<path>: no PSI, and that is not taken for a vanished cgroup
        assert not [key for key in got if key[0] == "uniobs.container.pressure.stall"]

        # the same figures straight from the backend, cross-checked against the precise total
        stats = cgroupfs.read_stats(cg.layout, cg.path)
        assert stats.cpu_usage_s is not None and stats.cpu_usage_s >= MIN_CPU_S
        assert stats.cpu_user_s is not None and stats.cpu_system_s is not None
        assert abs(stats.cpu_user_s + stats.cpu_system_s - stats.cpu_usage_s) < 0.1  # ticks vs ns
    finally:
        _stop(child)


def test_a_removed_cgroup_is_workload_gone(live_cgroup: LiveCgroup) -> None:
    cg = live_cgroup
    child = _start_child(cg)
    collector = CgroupCollector(CgroupConfig(root=ROOT))
    workload = Workload(kind=Kind.CGROUP, runtime="cgroup", id=cg.path, cgroup=cg.path)
    assert list(collector.collect(workload))  # alive: figures come
    _stop(child)
    remove_cgroups(reversed(cg.dirs), timeout=5)
    with pytest.raises(WorkloadGone):
        collector.collect(workload)
    with pytest.raises(WorkloadGone):
        cgroupfs.cgroup_pids(cg.layout, cg.path)
    assert cg.path not in cgroupfs.list_cgroups(cg.layout)


# --- the cgroup2 hierarchy of this host: optional files the kernel itself refuses (issue 13) ----


def _read_as_nobody(layout: cgroupfs.CgroupLayout, path: str) -> dict[str, Any]:
    """Reads a cgroup as an unprivileged user does (uid/gid 65534, in a forked child: the
    interpreter may sit where that user cannot reach), twice with one FileFailures; returns what
    came and what was said."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop privileges, read, report, never return into pytest
        status = 1
        try:
            os.close(rfd)
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            said: list[str] = []
            handler = logging.Handler()
            handler.emit = lambda record: said.append(record.getMessage())  # type: ignore[method-assign]
            logging.getLogger("uniobs.cgroupfs").addHandler(handler)
            failures = cgroupfs.FileFailures()
            first = cgroupfs.read_stats(layout, path, failures=failures)
            second = cgroupfs.read_stats(layout, path, failures=failures)
            out = {
                "cpu": second.cpu_usage_s,
                "cpu_pressure": second.cpu_pressure is not None,
                "memory_pressure": second.memory_pressure is not None,
                "same": first == second,
                "said": said,
            }
            os.write(wfd, json.dumps(out).encode())
            status = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(status)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and data, "the unprivileged reader failed"
    got: dict[str, Any] = json.loads(data)
    return got


@dataclass
class UnifiedCgroup:
    layout: cgroupfs.CgroupLayout  # the cgroup2 hierarchy as a pure v2 layout (on hybrid hosts: unified/)
    path: str
    made: list[str]  # directories to remove, deepest last


@pytest.fixture
def unified_cgroup() -> Iterator[UnifiedCgroup]:
    if os.geteuid() != 0:
        pytest.skip("creating cgroups needs root")
    try:
        host = cgroupfs.detect_layout(ROOT)
    except OSError as exc:
        pytest.skip(f"no cgroup hierarchy under {ROOT}: {exc}")
    if host.unified is None:
        pytest.skip(f"no cgroup2 hierarchy under {ROOT} (pure v1 host)")
    layout = cgroupfs.detect_layout(host.unified)
    path = f"/uniobs-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        os.mkdir(host.unified + path)
    except OSError as exc:
        pytest.skip(f"cannot create a cgroup in {host.unified}: {exc}")
    cg = UnifiedCgroup(layout, path, [host.unified + path])
    try:
        yield cg
    finally:
        remove_cgroups(reversed(cg.made), timeout=5)


def test_a_threaded_cgroup_has_no_processes_of_its_own_and_discovery_goes_on(unified_cgroup: UnifiedCgroup) -> None:
    """The kernel answers EOPNOTSUPP to a read of a threaded cgroup's cgroup.procs (its processes
    are its threaded domain's): cgroup_pids gives [], and discovery over a threaded subtree with
    an intermediate threaded cgroup does not stop there (it raised before issue 13)."""
    cg = unified_cgroup
    domain = cg.layout.root + cg.path
    for rel in ("/t", "/t/u"):
        os.mkdir(domain + rel)
        cg.made.append(domain + rel)
        _write(f"{domain}{rel}/cgroup.type", "threaded")
    with pytest.raises(OSError) as refused, open(f"{domain}/t/cgroup.procs", encoding="ascii") as f:
        f.read()
    assert refused.value.errno == errno.EOPNOTSUPP  # the kernel's own answer, not an injected one
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        _write(f"{domain}/cgroup.procs", str(child.pid))
        assert cgroupfs.cgroup_pids(cg.layout, cg.path) == [child.pid]
        assert cgroupfs.cgroup_pids(cg.layout, cg.path + "/t") == []
        found = [w.cgroup for w in discovery.discover_cgroups(cg.layout)]
        assert cg.path in found and cg.path + "/t/u" in found and cg.path + "/t" not in found
        stats = cgroupfs.read_stats(cg.layout, cg.path + "/t")
        assert stats.cpu_usage_s is not None  # cpu.stat of a threaded cgroup reads as any other
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=10)


def test_psi_switched_off_for_one_cgroup_leaves_its_other_figures(
    unified_cgroup: UnifiedCgroup, caplog: pytest.LogCaptureFixture
) -> None:
    """Linux 6.1+: writing 0 to cgroup.pressure hides the cgroup's *.pressure files; an fd opened
    before reads ENODEV. Absent PSI, the other figures, nothing to say."""
    cg = unified_cgroup
    directory = cg.layout.root + cg.path
    if not os.path.exists(f"{directory}/cgroup.pressure"):
        pytest.skip("no cgroup.pressure on this kernel (Linux 6.1+)")
    before = cgroupfs.read_stats(cg.layout, cg.path)
    if before.cpu_pressure is None:
        pytest.skip("PSI is disabled on this kernel")
    _write(f"{directory}/cgroup.pressure", "0")
    with caplog.at_level(logging.WARNING, logger="uniobs.cgroupfs"):
        after = cgroupfs.read_stats(cg.layout, cg.path)
    assert after.cpu_pressure is None and after.memory_pressure is None and after.io_pressure is None
    assert after.cpu_usage_s is not None and after.cpu_usage_s >= 0
    assert not caplog.records


def test_a_file_an_unprivileged_reader_may_not_open_is_absent_and_said_once(unified_cgroup: UnifiedCgroup) -> None:
    """A real EACCES: the cgroup's cpu.pressure made 0600, read by uid 65534. The rest comes,
    cpu.pressure is absent, said once (and tried again: permissions can change)."""
    cg = unified_cgroup
    directory = cg.layout.root + cg.path
    if cgroupfs.read_stats(cg.layout, cg.path).cpu_pressure is None:
        pytest.skip("PSI is disabled on this kernel")
    os.chmod(f"{directory}/cpu.pressure", 0o600)
    got = _read_as_nobody(cg.layout, cg.path)
    assert not got["cpu_pressure"] and got["memory_pressure"] and got["cpu"] is not None, got
    assert got["same"] and len(got["said"]) == 1 and "EACCES" in got["said"][0], got


def test_a_cgroup_made_anew_at_the_same_path_is_read_anew(live_cgroup: LiveCgroup) -> None:
    """The collector keeps descriptors of the cgroup directories it reads (CgroupHandles): one
    whose directory was removed and made again under the same path (a container restarted under
    its name) must not serve the old directory, nor stop the new one being read."""
    cg = live_cgroup
    collector = CgroupCollector(CgroupConfig(root=ROOT))
    workload = Workload(kind=Kind.CGROUP, runtime="cgroup", id=cg.path, cgroup=cg.path)

    def limit() -> object:
        return {s.metric: s.value for s in collector.collect(workload)}.get("uniobs.container.memory.limit")

    assert limit() == 256 * MiB
    handles = collector._handles
    assert handles is not None and handles.held() >= 1  # the memory directory, at least
    remove_cgroups(reversed(cg.dirs), timeout=5)
    for directory in cg.dirs:
        os.mkdir(directory)
    _write(f"{cg.layout.v1['memory']}{cg.path}/memory.limit_in_bytes", str(128 * MiB))
    assert limit() == 128 * MiB
    assert limit() == 128 * MiB
    collector.forget(workload)
    assert handles.held() == 0
