"""uniobs.host.procfs: the pure parsers over recorded lines (and hypothesis' garbage), the readers
over recorded /proc trees (tests/testdata/proc/<scenario>/), and the live /proc of this host,
checked against psutil and procps' ps with a real child process."""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import TESTDATA, Golden, scenario_params

from uniobs.collectors.process import ProcessCollector, ProcessConfig
from uniobs.host import procfs
from uniobs.host.procfs import (
    AccessDenied,
    ProcError,
    ProcessGone,
    ProcFormatError,
    ProcFS,
    parse_btime,
    parse_cmdline,
    parse_comm,
    parse_net_dev,
    parse_smaps_rollup,
    parse_stat,
    parse_statm,
    parse_status,
)
from uniobs.model import Kind, Workload
from uniobs.plugin import SourceUnavailable, WorkloadGone
from uniobs.runtimes.select import Runtimes

PROC_DATA = TESTDATA / "proc"
THREADED = PROC_DATA / "threaded_comm"
ZOMBIE = PROC_DATA / "zombie"
RECORDED_HZ, RECORDED_PAGE = 100, 4096  # the recording host's units (each scenario's SOURCE)


def recorded_pid(folder: Path) -> int:
    return int((folder / "pid").read_text())


def recorded(folder: Path) -> ProcFS:
    return ProcFS(str(folder / "proc"), hz=RECORDED_HZ, page_size=RECORDED_PAGE)


def stat_line(folder: Path) -> bytes:
    return (folder / "proc" / str(recorded_pid(folder)) / "stat").read_bytes()


# --- pure parsers ---------------------------------------------------------------------------


def test_a_comm_with_spaces_and_parentheses() -> None:
    s = parse_stat(stat_line(THREADED), hz=100, page_size=4096)
    assert (s.pid, s.comm, s.state, s.num_threads) == (recorded_pid(THREADED), "a) b (c", "S", 3)
    # every field after comm lands where proc(5) puts it: the same line with a plain comm agrees
    plain = parse_stat(stat_line(THREADED).replace(b"(a) b (c)", b"(python)"), hz=100, page_size=4096)
    assert dataclasses.replace(s, comm="python") == plain


def test_a_zombie_line() -> None:
    s = parse_stat(stat_line(ZOMBIE))
    assert s.state == "Z" and s.gone and (s.vsize, s.rss) == (0, 0)
    assert not parse_stat(stat_line(THREADED)).gone


def test_fields_proc5_numbers() -> None:
    # fields 1..24 numbered after proc(5): each value is its own field number (comm and state aside)
    line = b"1 (comm) R " + b" ".join(str(n).encode() for n in range(4, 53)) + b"\n"
    s = parse_stat(line, hz=100, page_size=4096)
    assert (s.ppid, s.pgrp, s.session, s.minflt, s.majflt) == (4, 5, 6, 10, 12)
    assert (s.utime_ticks, s.stime_ticks, s.num_threads, s.starttime, s.vsize, s.rss) == (14, 15, 20, 22, 23, 24)
    assert (s.utime, s.stime, s.start_seconds, s.rss_bytes) == (0.14, 0.15, 0.22, 24 * 4096)


def test_old_kernels_short_lines_parse_and_cut_lines_do_not() -> None:
    line = stat_line(THREADED)
    fields = line[line.rindex(b")") + 2 :].split()
    head = b"7 (x) "
    assert parse_stat(head + b" ".join(fields[:42]) + b"\n").starttime == int(fields[19])  # Linux 2.6: 44 fields
    assert parse_stat(head + b" ".join(fields[:22])).rss == int(fields[21])  # up to rss (24): enough
    with pytest.raises(ProcFormatError, match="23 fields"):
        parse_stat(head + b" ".join(fields[:21]))
    for garbage in (b"", b"\n", b"12 comm S 1 2", b"x (y) S " + b"1 " * 30, b"1 (y) S " + b"z " * 30):
        with pytest.raises(ProcFormatError):
            parse_stat(garbage)


def test_huge_values_are_kept_exact() -> None:
    top = 2**64 - 1
    line = f"4194304 (big) R 1 1 1 0 -1 0 {top} 0 {top} 0 {top} {top} 0 0 20 -20 9999999 0 {top} {top} {top}"
    s = parse_stat(line.encode())
    assert (s.pid, s.minflt, s.majflt, s.utime_ticks, s.starttime, s.vsize, s.rss) == (
        2**22,
        top,
        top,
        top,
        top,
        top,
        top,
    )


STAT_FIELDS = st.lists(st.integers(0, 2**64 - 1), min_size=49, max_size=49)


@given(
    pid=st.integers(1, 2**22),
    comm=st.binary(max_size=64),
    state=st.sampled_from("RSDZTtXIPKW"),
    values=STAT_FIELDS,
)
def test_stat_round_trip_whatever_the_comm(pid: int, comm: bytes, state: str, values: list[int]) -> None:
    line = b"%d (%s) %s " % (pid, comm, state.encode()) + b" ".join(b"%d" % v for v in values) + b"\n"
    s = parse_stat(line)
    assert (s.pid, s.comm, s.state) == (pid, comm.decode("utf-8", "replace"), state)
    assert (s.ppid, s.minflt, s.majflt, s.utime_ticks, s.stime_ticks) == (
        values[0],
        values[6],
        values[8],
        values[10],
        values[11],
    )
    assert (s.num_threads, s.starttime, s.vsize, s.rss) == (values[16], values[18], values[19], values[20])


@given(st.binary(max_size=600))
def test_stat_on_garbage_parses_or_raises_its_one_error(data: bytes) -> None:
    try:
        parse_stat(data)
    except ProcFormatError:
        pass


@given(st.binary(max_size=400))
def test_the_other_parsers_never_raise_on_garbage(data: bytes) -> None:
    parse_status(data)
    parse_cmdline(data)
    parse_comm(data)
    parse_smaps_rollup(data)
    parse_net_dev(data.decode("utf-8", "replace"))
    for strict in (parse_btime, parse_statm):
        try:
            strict(data)
        except ProcFormatError:
            pass


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["stat", "statm", "status", "cmdline", "comm", "smaps_rollup"]))
def test_a_reader_over_garbage_returns_or_raises_a_proc_error(data: bytes, name: str) -> None:
    with tempfile.TemporaryDirectory() as root:
        shutil.copytree(THREADED / "proc", root, dirs_exist_ok=True)
        pid = recorded_pid(THREADED)
        Path(root, str(pid), name).write_bytes(data)
        fs = ProcFS(root)
        for read in (fs.stat, fs.statm, fs.status, fs.cmdline, fs.comm, fs.memory_rollup, fs.num_fds, fs.is_alive):
            try:
                read(pid)
            except ProcError:
                pass


def test_status_cmdline_comm_smaps_btime() -> None:
    base = THREADED / "proc" / str(recorded_pid(THREADED))
    seen = json.loads((THREADED / "psutil.json").read_text())
    status = parse_status((base / "status").read_bytes())
    assert (status.name, status.state, status.threads) == ("a) b (c", "S", 3)
    assert [status.voluntary_ctxt_switches, status.nonvoluntary_ctxt_switches] == seen["num_ctx_switches"]
    assert parse_cmdline((base / "cmdline").read_bytes()) == seen["cmdline"]
    assert parse_comm((base / "comm").read_bytes()) == "a) b (c"
    rollup = parse_smaps_rollup((base / "smaps_rollup").read_bytes())
    assert {"pss": rollup.pss, "uss": rollup.uss, "swap": rollup.swap} == seen["memory_full_info"]
    assert parse_btime((THREADED / "proc/stat").read_bytes()) == pytest.approx(
        seen["create_time"] - parse_stat(stat_line(THREADED)).starttime / 100
    )
    statm = parse_statm((base / "statm").read_bytes(), page_size=4096)
    assert {"rss": statm.rss_bytes, "vms": statm.vms_bytes} == seen["memory_info"]


def test_cmdline_edge_cases() -> None:
    assert parse_cmdline(b"qemu\0-append\0\0-m\0") == ["qemu", "-append", "", "-m"]  # an empty argument is kept
    assert parse_cmdline(b"nginx: worker process") == ["nginx: worker process"]  # setproctitle: no NUL
    assert parse_cmdline(b"") == []  # a zombie, a kernel thread
    assert parse_status(b"Name:\tx\nThreads:\tmany\n").threads is None


def test_smaps_without_rollup_sums_every_mapping() -> None:
    smaps = b"".join(
        b"7f00-7f01 r-xp 0 0:0 0 /lib\nRss: 8 kB\nPss: %d kB\nPss_Anon: 99 kB\nPrivate_Clean: 1 kB\n"
        b"Private_Dirty: 2 kB\nPrivate_Hugetlb: 0 kB\nSwap: 3 kB\nSwapPss: 77 kB\n" % pss
        for pss in (4, 5)
    )
    assert parse_smaps_rollup(smaps) == procfs.MemoryRollup(pss=9 * 1024, uss=6 * 1024, swap=6 * 1024)


# --- recorded trees ---------------------------------------------------------------------------


def _attempt(read: Callable[[], Any]) -> Any:
    try:
        value = read()
    except (ProcError, OSError) as exc:
        return type(exc).__name__
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = dataclasses.asdict(value)
        for name in ("utime", "stime", "rss_bytes", "vms_bytes", "gone"):
            if hasattr(value, name):
                out[name] = getattr(value, name)
        return out
    return value


def describe(fs: ProcFS, pid: int) -> dict[str, Any]:
    """What every reader returns for one pid of a tree (an error by its class name)."""
    tasks = _attempt(lambda: fs.tasks(pid))
    return {
        "stat": _attempt(lambda: fs.stat(pid)),
        "stat_zombie_ok": _attempt(lambda: fs.stat(pid, zombie_ok=True)),
        "is_alive": _attempt(lambda: fs.is_alive(pid)),
        "statm": _attempt(lambda: fs.statm(pid)),
        "status": _attempt(lambda: fs.status(pid)),
        "cmdline": _attempt(lambda: fs.cmdline(pid)),
        "comm": _attempt(lambda: fs.comm(pid)),
        "tasks": tasks,
        "task_times": {
            str(tid): _attempt(lambda tid=tid: [fs.task_stat(pid, tid).utime, fs.task_stat(pid, tid).stime])
            for tid in (tasks if isinstance(tasks, list) else [])
        },
        "memory_rollup": _attempt(lambda: fs.memory_rollup(pid)),
        "num_fds": _attempt(lambda: fs.num_fds(pid)),
        "boot_time": _attempt(fs.boot_time),
        # every VMM an installed runtime finds in the tree (uniobs.runtimes.select)
        "vmms": [{**dataclasses.asdict(v), "kind": v.kind.value} for v in Runtimes().discover(fs.root)],
    }


@pytest.mark.parametrize("folder", scenario_params("proc"))
def test_recorded_tree(folder: Path, golden: Golden) -> None:
    golden.scenario(folder)  # it names its source
    golden.check_scenario(folder, describe(recorded(folder), recorded_pid(folder)))


def test_the_readers_agree_with_what_psutil_read_from_the_recorded_process() -> None:
    fs, pid = recorded(THREADED), recorded_pid(THREADED)
    seen = json.loads((THREADED / "psutil.json").read_text())
    s = fs.stat(pid)
    assert (s.comm, s.ppid, s.num_threads) == (seen["name"], seen["ppid"], seen["num_threads"])
    assert {"user": s.utime, "system": s.stime} == seen["cpu_times"]
    assert fs.tasks(pid) == seen["threads"] and fs.num_fds(pid) == seen["num_fds"]
    assert s.start_seconds + fs.boot_time() == seen["create_time"]


def test_the_process_collector_gives_psutils_figures_for_the_recorded_process() -> None:
    if (procfs.CLK_TCK, procfs.PAGE_SIZE) != (RECORDED_HZ, RECORDED_PAGE):
        pytest.skip(f"this host's USER_HZ/page size {procfs.CLK_TCK}/{procfs.PAGE_SIZE} differ from the recording's")
    seen = json.loads((THREADED / "psutil.json").read_text())
    seen.update(ps_faults(THREADED))  # psutil has no API for page faults: ps said them
    collector = ProcessCollector(ProcessConfig(proc=str(THREADED / "proc")))
    got = {(s.metric, s.attributes): s.value for s in collector.collect(workload(recorded_pid(THREADED)))}
    uptime = got.pop(("process.uptime", ()))
    assert time.time() - uptime == pytest.approx(seen["create_time"], abs=1.0)
    assert got == expected_from_psutil(seen)
    with pytest.raises(WorkloadGone, match=f"pid {recorded_pid(ZOMBIE)} exited"):
        ProcessCollector(ProcessConfig(proc=str(ZOMBIE / "proc"))).collect(workload(recorded_pid(ZOMBIE)))


def ps_faults(folder: Path) -> dict[str, int]:
    """MINFL and MAJFL from the scenario's ps.txt."""
    _, header, row = (folder / "ps.txt").read_text().splitlines()[:3]
    values = dict(zip(header.split(), row.split(), strict=False))
    return {"minflt": int(values["MINFL"]), "majflt": int(values["MAJFL"])}


def test_a_thread_that_is_not_the_process_s_is_not_the_process_gone() -> None:
    fs, pid = recorded(THREADED), recorded_pid(THREADED)
    for read in (fs.task_stat, fs.task_times):
        with pytest.raises(FileNotFoundError):  # e.g. a vCPU thread id from QEMU's own pid namespace
            read(pid, 1)
        with pytest.raises(ProcessGone):  # a zombie's threads are gone with it
            getattr(recorded(ZOMBIE), read.__name__)(recorded_pid(ZOMBIE), 1)


def test_task_times_are_task_stat_s_times() -> None:
    fs, pid = recorded(THREADED), recorded_pid(THREADED)
    for tid in fs.tasks(pid):
        thread = fs.task_stat(pid, tid)
        assert fs.task_times(pid, tid) == (thread.utime_ticks, thread.stime_ticks)


@given(st.binary(max_size=400))
def test_task_times_on_garbage_give_stat_s_times_or_a_format_error(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as root:
        Path(root, "7", "task", "7").mkdir(parents=True)
        Path(root, "7", "stat").write_bytes(stat_line(THREADED))
        Path(root, "7", "task", "7", "stat").write_bytes(data)
        try:
            times = ProcFS(root).task_times(7, 7)
        except ProcFormatError:
            return
        try:
            full = parse_stat(data)
        except ProcFormatError:
            return  # task_times reads only two fields: it may accept what parse_stat refuses
        assert times == (full.utime_ticks, full.stime_ticks)


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[tuple[ProcFS, int, Path]]:
    shutil.copytree(THREADED / "proc", tmp_path / "proc")
    pid = recorded_pid(THREADED)
    yield ProcFS(str(tmp_path / "proc"), hz=100, page_size=4096), pid, tmp_path / "proc" / str(pid)


def test_a_vanished_pid_is_gone_for_every_reader(tree: tuple[ProcFS, int, Path]) -> None:
    fs, pid, base = tree
    shutil.rmtree(base)
    for read in (fs.stat, fs.statm, fs.status, fs.cmdline, fs.comm, fs.tasks, fs.memory_rollup, fs.num_fds, fs.net_dev):
        with pytest.raises(ProcessGone, match=f"^pid {pid} exited$") as caught:
            read(pid)
        assert isinstance(caught.value, WorkloadGone) and caught.value.pid == pid
    assert not fs.is_alive(pid)


def test_a_reused_pid_is_not_alive(tree: tuple[ProcFS, int, Path]) -> None:
    fs, pid, _ = tree
    start = fs.stat(pid).starttime
    assert fs.is_alive(pid) and fs.is_alive(pid, start)
    assert not fs.is_alive(pid, start + 1)


def test_smaps_stands_in_for_a_missing_rollup(tree: tuple[ProcFS, int, Path]) -> None:
    fs, pid, base = tree
    rollup = fs.memory_rollup(pid)
    (base / "smaps_rollup").rename(base / "smaps")  # Linux < 4.14 has only smaps
    assert fs.memory_rollup(pid) == rollup


def test_access_denied_is_source_unavailable_and_alive(
    tree: tuple[ProcFS, int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    fs, pid, base = tree
    real = os.listdir

    def listdir(path: Any) -> list[str]:
        if str(path) == f"{base}/fd":
            raise PermissionError(13, "Permission denied", path)
        return real(path)

    monkeypatch.setattr(os, "listdir", listdir)
    with pytest.raises(AccessDenied, match=f"^{base}/fd: permission denied") as caught:
        fs.num_fds(pid)
    assert isinstance(caught.value, SourceUnavailable) and not isinstance(caught.value, WorkloadGone)
    real_open = os.open

    def deny_stat(path: Any, flags: int, *args: Any) -> int:
        if str(path) == f"{base}/stat":
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", deny_stat)
    assert fs.is_alive(pid)  # hidepid: it runs, we may not look


# --- this host's /proc ------------------------------------------------------------------------

CHILD = """
import sys, threading
with open("/proc/self/comm", "w") as f:
    f.write("a) b (c")
block = bytearray(8 << 20)
block[::4096] = b"x" * len(block[::4096])
stop = threading.Event()
for _ in range(2):
    threading.Thread(target=stop.wait, daemon=True).start()
print("ready", flush=True)
stop.wait()
"""


@pytest.fixture
def child() -> Iterator[int]:
    """A real process named `a) b (c` with three threads that then does nothing at all."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    time.sleep(0.1)  # its threads are parked
    yield proc.pid
    proc.kill()
    proc.wait()


def workload(pid: int) -> Workload:
    return Workload(kind=Kind.PROCESS, runtime="test", id=f"p{pid}", pid=pid)


def expected_from_psutil(seen: dict[str, Any]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The process collector's samples, as psutil's figures (the collector's values before procfs)."""
    ctx, cpu, mem = seen["num_ctx_switches"], seen["cpu_times"], seen["memory_info"]
    return {
        ("process.cpu.time", (("cpu.mode", "user"),)): cpu["user"],
        ("process.cpu.time", (("cpu.mode", "system"),)): cpu["system"],
        ("process.memory.usage", ()): mem["rss"],
        ("process.memory.virtual", ()): mem["vms"],
        ("process.thread.count", ()): seen["num_threads"],
        ("process.unix.file_descriptor.count", ()): seen["num_fds"],
        ("process.context_switches", (("process.context_switch.type", "voluntary"),)): ctx[0],
        ("process.context_switches", (("process.context_switch.type", "involuntary"),)): ctx[1],
        ("process.paging.faults", (("process.paging.fault_type", "minor"),)): seen["minflt"],
        ("process.paging.faults", (("process.paging.fault_type", "major"),)): seen["majflt"],
        ("uniobs.process.memory.pss", ()): seen["memory_full_info"]["pss"],
        ("uniobs.process.memory.uss", ()): seen["memory_full_info"]["uss"],
    }


def psutil_figures(pid: int) -> dict[str, Any]:
    p = psutil.Process(pid)
    with p.oneshot():
        cpu, mem, full = p.cpu_times(), p.memory_info(), p.memory_full_info()
        return {
            "name": p.name(),
            "ppid": p.ppid(),
            "create_time": p.create_time(),
            "num_threads": p.num_threads(),
            "threads": sorted(t.id for t in p.threads()),
            "cpu_times": {"user": cpu.user, "system": cpu.system},
            "memory_info": {"rss": mem.rss, "vms": mem.vms},
            "memory_full_info": {"pss": full.pss, "uss": full.uss, "swap": full.swap},
            "num_ctx_switches": list(p.num_ctx_switches()),
            "num_fds": p.num_fds(),
            "cmdline": p.cmdline(),
        }


_T = TypeVar("_T")
_U = TypeVar("_U")


def settled(ours: Callable[[], _T], theirs: Callable[[], _U]) -> tuple[_T, _U]:
    """Our reading and psutil's, taken while nothing moved: our readings before and after
    psutil's agree. The child is idle, but PSS moves whenever another process maps or unmaps a
    library it shares (other tests start Pythons all the time)."""
    for _ in range(50):
        before, seen, after = ours(), theirs(), ours()
        if before == after:
            return before, seen
    pytest.fail("the process kept changing while it was read")


def test_live_child_against_psutil(child: int) -> None:
    fs = ProcFS()
    (s, statm, status, rollup), seen = settled(
        lambda: (fs.stat(child), fs.statm(child), fs.status(child), fs.memory_rollup(child)),
        lambda: psutil_figures(child),
    )
    assert (s.comm, s.state, s.ppid, s.num_threads) == (seen["name"], "S", os.getpid(), seen["num_threads"])
    assert {"user": s.utime, "system": s.stime} == seen["cpu_times"]
    assert {"rss": statm.rss_bytes, "vms": statm.vms_bytes} == seen["memory_info"]
    assert s.vsize == statm.vms_bytes
    assert [status.voluntary_ctxt_switches, status.nonvoluntary_ctxt_switches] == seen["num_ctx_switches"]
    assert dataclasses.asdict(rollup) == seen["memory_full_info"]
    assert fs.tasks(child) == seen["threads"] and fs.num_fds(child) == seen["num_fds"]
    assert fs.cmdline(child) == seen["cmdline"] and fs.comm(child) == "a) b (c"
    assert s.start_seconds + fs.boot_time() == seen["create_time"]
    for tid in fs.tasks(child):  # threads inherit the comm; a task's stat names the thread
        thread = fs.task_stat(child, tid)
        assert (thread.pid, thread.comm) == (tid, "a) b (c")
        # the child's threads sleep: their times do not move between the two reads
        assert fs.task_times(child, tid) == (thread.utime_ticks, thread.stime_ticks)
    assert fs.is_alive(child, s.starttime) and not fs.is_alive(child, s.starttime - 1)
    assert fs.netns(child) == fs.netns(os.getpid())
    assert [i.name for i in fs.net_dev(child)] == [i.name for i in fs.net_dev(os.getpid())]


def test_live_child_against_ps(child: int) -> None:
    fs = ProcFS()
    columns = "ppid=,stat=,nlwp=,rss=,vsz=,min_flt=,maj_flt=,comm="
    out = subprocess.run(["ps", "-o", columns, "-p", str(child)], capture_output=True, text=True, check=True).stdout
    ppid, state, nlwp, rss, vsz, minflt, majflt, comm = out.strip().split(None, 7)
    s, statm = fs.stat(child), fs.statm(child)
    assert (int(ppid), state[0], int(nlwp), comm) == (s.ppid, s.state, s.num_threads, s.comm)
    assert (int(rss) * 1024, int(vsz) * 1024) == (statm.rss_bytes, s.vsize)
    assert (int(minflt), int(majflt)) == (s.minflt, s.majflt)
    lwps = subprocess.run(["ps", "-L", "-o", "lwp=", "-p", str(child)], capture_output=True, text=True, check=True)
    assert sorted(int(t) for t in lwps.stdout.split()) == fs.tasks(child)


def test_the_process_collector_gives_psutils_figures_live(child: int) -> None:
    collector = ProcessCollector()

    def collect() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        got = {(s.metric, s.attributes): s.value for s in collector.collect(workload(child))}
        got[("process.uptime", ())] = round(time.time() - got[("process.uptime", ())], 1)  # the start
        return got

    got, seen = settled(collect, lambda: psutil_figures(child))
    s = ProcFS().stat(child)
    seen.update(minflt=s.minflt, majflt=s.majflt)  # psutil has no API for page faults
    started = got.pop(("process.uptime", ()))
    assert started == pytest.approx(seen["create_time"], abs=0.2)
    assert got == expected_from_psutil(seen)


def test_live_zombie_and_gone() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    fs = ProcFS()
    deadline = time.monotonic() + 10
    while fs.stat(proc.pid, zombie_ok=True).state != "Z":  # exited, not reaped: we have not waited
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not fs.is_alive(proc.pid)
    for read in (fs.stat, fs.memory_rollup, fs.netns):
        with pytest.raises(ProcessGone):
            read(proc.pid)
    # what a zombie's files hold, read as they are: nothing
    assert (fs.cmdline(proc.pid), fs.num_fds(proc.pid), fs.statm(proc.pid).resident) == ([], 0, 0)
    with pytest.raises(WorkloadGone):
        ProcessCollector().collect(workload(proc.pid))
    proc.wait()
    with pytest.raises(ProcessGone):
        fs.stat(proc.pid, zombie_ok=True)
    assert not fs.is_alive(proc.pid)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_live_access_denied_for_another_user_s_process() -> None:
    """As nobody, pid 1's descriptors and memory map are out of reach; its stat is not."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            fs, said = ProcFS(), []
            for read in (fs.num_fds, fs.memory_rollup):
                try:
                    read(1)
                    said.append("read")
                except AccessDenied as exc:
                    said.append(f"AccessDenied:{isinstance(exc, SourceUnavailable)}")
                except BaseException as exc:
                    said.append(type(exc).__name__)
            said.append(f"alive:{fs.is_alive(1)}")
            os.write(w, ",".join(said).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        said = f.read().decode()
    os.waitpid(pid, 0)
    assert said == "AccessDenied:True,AccessDenied:True,alive:True"


# --- files kept open between reads (ProcFS(keep_open=)) -------------------------------------


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_kept_files_are_read_again_fresh_and_bounded() -> None:
    """A kept file read again gives what the kernel says now (pread at 0 runs `show` again);
    no more than `keep_open` files are held; forget() and close() give them back."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys\nx = []\nfor line in sys.stdin:\n    x.append(bytearray(8 << 20))"],
        stdin=subprocess.PIPE,
    )
    assert child.stdin is not None
    try:
        proc = ProcFS(keep_open=3)
        before = open_fds()
        first = proc.statm(child.pid).rss_bytes
        proc.status(child.pid)
        proc.memory_rollup(child.pid)
        proc.stat(child.pid)  # a fourth file: over the budget, read by path
        assert open_fds() == before + 3
        for _ in range(3):
            child.stdin.write(b"grow\n")
            child.stdin.flush()
        deadline = time.monotonic() + 10
        while proc.statm(child.pid).rss_bytes < first + (20 << 20):  # the same kept descriptor, fresh figures
            assert time.monotonic() < deadline, "RSS read through the kept file never grew"
            time.sleep(0.02)
        assert proc.memory_rollup(child.pid).pss > first
        assert open_fds() == before + 3
        proc.forget(child.pid)
        assert open_fds() == before
        proc.statm(child.pid)
        proc.close()
        assert open_fds() == before
    finally:
        child.kill()
        child.wait()


def test_a_kept_file_of_a_process_that_exec_d_or_exited() -> None:
    """smaps_rollup holds the memory map it was opened on: after an exec its kept descriptor
    answers ESRCH, and the file is read again by path (the new program's). After the exit, the
    process is gone, as without kept files."""
    child = subprocess.Popen(["sh", "-c", "read line; exec sleep 60"], stdin=subprocess.PIPE)
    assert child.stdin is not None
    try:
        proc = ProcFS(keep_open=16)
        proc.memory_rollup(child.pid)
        proc.stat(child.pid)
        assert proc.stat(child.pid).comm == "sh"
        child.stdin.write(b"go\n")
        child.stdin.flush()
        deadline = time.monotonic() + 10
        while proc.stat(child.pid).comm != "sleep":  # the kept stat follows the exec
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.05)
        assert proc.memory_rollup(child.pid).pss > 0  # ESRCH on the kept one: read by path
        assert proc.stat(child.pid).comm == "sleep"
        child.kill()
        child.wait()
        with pytest.raises(ProcessGone):
            proc.stat(child.pid)
        with pytest.raises(ProcessGone):
            proc.memory_rollup(child.pid)
        proc.close()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


@pytest.mark.parametrize(("soft", "hard"), [(256, 4096), (256, 256), (1024, None)])
def test_the_open_files_budget_is_within_the_raised_limit(soft: int, hard: int | None) -> None:
    """The soft RLIMIT_NOFILE is raised to the hard one, once; kept /proc files take at most an
    eighth of it, and 1,024 at most (in a child, whose limits this test may lower; None: this
    host's hard limit, which only a privileged process may raise)."""
    hard = hard or resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    budget = min(1024, hard // 8)
    script = textwrap.dedent(f"""
        import resource
        resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard}))
        from uniobs.host import open_files_limit
        from uniobs.host.procfs import keep_open_budget
        print(open_files_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0], keep_open_budget())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert [int(x) for x in out] == [hard, hard, budget]
