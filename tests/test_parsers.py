"""The boot-milestone parsers (uniobs/parsers) on real console transcripts, fuzzed, and live.

Every transcript in tests/testdata/consoles (copied from ../shared/consoles; each file's first
line names its public source) is replayed through the installed parsers: the family detected,
which families recognise its lines (exactly its own, or none), and the milestones with the line
each comes from are checked against tests/testdata/consoles/expected.json; a transcript added
without an entry there fails (`pytest --update-golden` writes it, for review).
Then one test per transcript checks the values printed there. Formats no transcript shows are
checked on lines written after the source code cited in each parser's docstring (marked
"derived"); the Linux microVM is checked on a real capture and, when QEMU is here, booted live.
Streams that interleave a VMM's own log with the guest's console (Firecracker's stdout, QEMU's
monitor on mon:stdio, a merged stderr) are checked line by line against each part alone, on the
real Firecracker capture and, fuzzed, on every interleaving of a VMM log and a guest transcript.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import ROOT, Golden, free_port, missing, requires_qemu, requires_vmlinuz

from uniobs.collectors.console import _Analyzer
from uniobs.guest.parsers.detect import (
    MAX_STAMP_LAG_S,
    REPLAY_LINE_NS,
    ParseResult,
    Phase,
    StreamParser,
    boot_phases,
    detect_family,
    parser_classes,
    read_console,
    replay,
)
from uniobs.model import Kind, LogEvent, Severity, Workload
from uniobs.plugin import ConsoleLine, ConsoleParser, GuestEvent, Milestone, VmmLogParser
from uniobs.registry import Registry

CONSOLES = ROOT / "tests" / "testdata" / "consoles"
EXPECTED = CONSOLES / "expected.json"  # per transcript: the family detected, and each milestone's line
GUEST_FAMILIES = {"solo5", "unikraft", "osv", "nanos", "includeos", "hermit", "linux"}
VMM_LOGS = {"firecracker", "qemu", "cloud-hypervisor"}  # VmmLogParsers: read beside the guest's family
FAMILIES = GUEST_FAMILIES | VMM_LOGS

B, K, A, R, X, C = (
    Milestone.BOOT, Milestone.KERNEL_READY, Milestone.APP_START, Milestone.READY, Milestone.EXIT, Milestone.CRASH,
)  # fmt: skip


@pytest.fixture(scope="module")
def parsers() -> dict[str, Any]:
    return Registry().parsers


def transcripts() -> list[Path]:
    return sorted(CONSOLES.glob("*.txt"))


def result(name: str) -> ParseResult:
    return replay(CONSOLES / name, Registry().parsers)


def named(res: ParseResult, name: str) -> list[GuestEvent]:
    return [ev for ev in res.events if ev.name == name]


def attrs(ev: GuestEvent) -> dict[str, Any]:
    return dict(ev.attributes)


def line_of(ev: GuestEvent) -> int:
    return ev.time_ns // REPLAY_LINE_NS


# --- every transcript -------------------------------------------------------------------------


def test_the_registry_has_every_family() -> None:
    found = Registry().parsers
    assert set(found) >= FAMILIES
    for name in FAMILIES:
        info = found[name]
        assert issubclass(info.plugin, ConsoleParser)
        assert info.plugin.family == name
        assert info.plugin.description
        assert info.distribution == "uniobs"
        assert issubclass(info.plugin, VmmLogParser) == (name in VMM_LOGS), name


def test_every_expectation_has_a_transcript() -> None:
    names = {p.name for p in transcripts()}
    assert names, f"no transcripts in {CONSOLES}"
    assert set(json.loads(EXPECTED.read_text())) <= names, f"entries of {EXPECTED.name} without a transcript"


def tagged(lines: list[ConsoleLine], parsers: dict[str, Any], **kwargs: Any) -> list[tuple[str, GuestEvent]]:
    """Every event of a stream with the name of the parser that found it (a guest family or a VMM log)."""
    stream = StreamParser(parsers, **kwargs)
    return [pair for line in lines for pair in stream.feed_tagged(line)]


def owned_by_vmm(line: ConsoleLine, parsers: dict[str, Any]) -> bool:
    return any(cls().owns(line) for cls in parser_classes(parsers).values() if issubclass(cls, VmmLogParser))


@pytest.mark.parametrize("path", transcripts(), ids=lambda p: p.name)
def test_transcript_family_and_milestones(path: Path, parsers: dict[str, Any], golden: Golden) -> None:
    lines = read_console(path)
    assert lines[0].text.startswith("# source: ")
    res = replay(path, parsers)
    entry: dict[str, Any] = {
        "family": res.family,
        "milestones": {m.value: line_of(ev) for m, ev in res.milestones.items()},
    }
    if res.vmm:
        entry["vmm"] = {name: {m.value: line_of(ev) for m, ev in ms.items()} for name, ms in res.vmm.items()}
    golden.check_entry(EXPECTED, path.name, entry)
    classes = parser_classes(parsers)
    # the VMM logs are the ones whose parser owns a line; the guest's family the only guest parser
    # recognising one of the other lines
    assert {n for n, c in classes.items() if issubclass(c, VmmLogParser) and any(c().owns(x) for x in lines)} == set(
        res.vmm
    )
    guest_lines = [line for line in lines if not owned_by_vmm(line, parsers)]
    recognising = {
        n for n, c in classes.items() if not issubclass(c, VmmLogParser) and any(c().recognises(x) for x in guest_lines)
    }
    assert recognising == ({res.family} if res.family else set())
    # each milestone is reported once per stream and writer (the guest, each VMM log)
    events = tagged(lines, parsers)
    for source in {name for name, _ in events}:
        reported = [ev.milestone for name, ev in events if name == source and ev.milestone is not None]
        assert len(reported) == len(set(reported)), source
    # timings say whose they are: the guest's own, or the VMM's
    for source, ev in events:
        if ev.guest_time_s is not None or ev.duration_s is not None:
            assert ("uniobs.guest_reported", source not in VMM_LOGS) in ev.attributes


# --- one transcript at a time -----------------------------------------------------------------


def test_solo5_hvt_exit_code() -> None:
    """solo5-1.txt (Solo5/solo5 docs/building.md): banner, bindings version, memory map, solo5_exit(0)."""
    res = result("solo5-1.txt")
    assert attrs(named(res, "solo5.bindings")[0]) == {"solo5.version": "v0.7.5"}
    assert attrs(named(res, "solo5.memory_map")[0]) == {"solo5.memory.addressable_bytes": 512 << 20}
    assert attrs(res.milestones[K]) == {"solo5.heap.start": 0x10B000, "solo5.memory.end": 0x20000000}
    end = res.milestones[X]
    assert (end.name, end.severity, attrs(end)) == ("solo5.exit", Severity.INFO, {"solo5.exit_code": 0})
    assert res.clock == "arrival"
    assert res.phases == [Phase("boot->kernel_ready", 0.002, 0.010), Phase("kernel_ready->exit", 0.012, 0.001)]


def test_solo5_trap_abort_and_tender_warnings() -> None:
    """solo5-2.txt (Solo5/solo5 issue #331): IncludeOS on hvt traps (#PF) and aborts; tender warnings on stderr."""
    res = result("solo5-2.txt")
    crash = res.milestones[C]
    assert crash.name == "solo5.trap" and crash.severity is Severity.ERROR
    assert attrs(crash)["solo5.trap.type"] == "#PF"
    assert attrs(crash)["solo5.crash.reason"] == "trap: type=#PF ec=0x3 rip=0x4653af rsp=0xa0000 rflags=0x10003"
    (abort,) = named(res, "solo5.abort")
    assert abort.milestone is None and abort.severity is Severity.ERROR
    assert attrs(abort) == {"solo5.crash.reason": "Fatal trap", "solo5.abort.location": "cpu_x86_64.c:172"}
    warnings = named(res, "solo5.tender.warning")
    assert [line_of(w) for w in warnings] == [13, 14, 15]
    assert all(w.severity is Severity.WARN for w in warnings)
    assert attrs(warnings[1])["solo5.message"].startswith("WARNING: Tender is configured with HVT_DROP_PRIVILEGES=0")
    assert X not in res.milestones


def test_solo5_legacy_ukvm() -> None:
    """solo5-3.txt (Solo5/solo5 pull request #76): legacy ukvm; `Solo5: new bindings`, then the OCaml stubs."""
    res = result("solo5-3.txt")
    assert attrs(res.milestones[K]) == {"solo5.legacy": True}
    assert attrs(res.milestones[A]) == {"solo5.stub": "getenv"}


def test_solo5_legacy_virtio_exit() -> None:
    """solo5-4.txt (Solo5/solo5 pull request #76): legacy virtio run to `solo5_app_main() returned with 0`."""
    res = result("solo5-4.txt")
    end = res.milestones[X]
    assert (end.name, attrs(end)) == ("solo5.app_main_returned", {"solo5.exit_code": 0})
    assert [p.name for p in res.phases] == ["boot->kernel_ready", "kernel_ready->app_start", "app_start->exit"]


def test_osv_bootchart() -> None:
    """osv-1.txt (cloudius-systems/osv README, Boot Time): version, DHCP lease, 12 bootchart phases, 178.01 ms."""
    res = result("osv-1.txt")
    assert attrs(res.milestones[B]) == {"osv.version": "v0.57.0-6-gb442a218"}
    assert attrs(res.milestones[K]) == {"osv.net.interface": "eth0", "osv.net.ipv4": "192.168.122.15"}
    assert attrs(res.milestones[A]) == {"osv.cmdline": "/hello"}
    (total,) = named(res, "osv.boot_time")
    assert total.duration_s == 0.17801 and total.guest_time_s == 0.17801
    assert attrs(total)["osv.bootchart.last_delta_s"] == 0.00113
    chart = [ev for ev in res.events if ev.name.startswith("osv.bootchart.")]
    assert len(chart) == 12
    (loaded,) = named(res, "osv.bootchart.drivers_loaded")
    assert (loaded.guest_time_s, loaded.duration_s) == (0.1748, 0.08091)
    assert attrs(loaded)["osv.bootchart.phase"] == "drivers loaded"
    assert named(res, "osv.bootchart.init_functions")[0].duration_s == 0.00179
    # the breakdown is the guest's own chart, on its clock
    assert res.clock == "guest"
    assert len(res.phases) == 12
    assert res.phases[0] == Phase("osv.bootchart.disk_read_real_mode", 0.0, 0.05862)
    assert res.phases[10] == Phase("osv.bootchart.drivers_loaded", 0.09389, 0.08091)
    # the phases add up to "ROFS mounted: 176.88ms", within the guest's rounding of each figure to 10 us
    assert sum(p.duration_s for p in res.phases) == pytest.approx(0.17688, abs=12 * 0.00001)


def test_osv_v0_24() -> None:
    """osv-3.txt (cloudius-systems/osv issue #718): v0.24 with DHCP and the httpserver module."""
    res = result("osv-3.txt")
    assert attrs(res.milestones[B]) == {"osv.version": "v0.24-51-g0ccc4ec"}
    assert attrs(res.milestones[A]) == {"osv.cmdline": "/libhttpserver.so &!"}
    (helper,) = named(res, "osv.program.returned")
    assert attrs(helper) == {"osv.program": "zpool.so", "osv.exit_code": 1}
    assert res.phases == [Phase("boot->kernel_ready", 0.002, 0.025), Phase("kernel_ready->app_start", 0.027, 0.002)]


def test_unikraft_redis_banner_and_stamps() -> None:
    """unikraft-1.txt (unikraft/unikraft issue #816): SeaBIOS, lwIP, banner with release, redis, a stamped ERR."""
    res = result("unikraft-1.txt")
    assert attrs(res.milestones[B]) == {"unikraft.seabios.version": "1.13.0-1ubuntu1.1"}
    ready = res.milestones[K]
    assert attrs(ready) == {"unikraft.codename": "Epimetheus", "unikraft.version": "0.12.0~4c7352c0"}
    assert attrs(res.milestones[A]) == {"uniobs.inferred": True}
    (err,) = named(res, "unikraft.error")
    assert err.guest_time_s == 0.153699 and err.severity is Severity.ERROR
    assert attrs(err)["unikraft.library"] == "libposix_process"
    assert attrs(err)["unikraft.source"] == "deprecated.c:348"
    assert attrs(named(res, "unikraft.network.address")[0])["unikraft.net.ipv4"] == "172.44.0.2"
    assert attrs(named(res, "unikraft.network.up")[0]) == {"unikraft.net.interface": "en1"}


def test_unikraft_urunc_kernel_entry() -> None:
    """unikraft-2.txt (urunc-dev/urunc issue #36): the kernel's first line follows `Booting from ROM..`."""
    res = result("unikraft-2.txt")
    (entry,) = named(res, "unikraft.kernel_entry")
    assert line_of(entry) == 10 and entry.milestone is None  # BOOT was SeaBIOS, two lines earlier
    assert entry.guest_time_s == 0.0
    assert attrs(entry)["unikraft.version"] == "0.12.0~4c7352c0-c"
    assert line_of(named(res, "unikraft.firmware.handoff")[0]) == 10


def test_unikraft_crit_mount_failure() -> None:
    """unikraft-3.txt (unikraft/app-python3 issue #5): `CRIT: [libvfscore] ... Failed to mount /` at 69.44 s."""
    res = result("unikraft-3.txt")
    crash = res.milestones[C]
    assert crash.guest_time_s == 69.438952 and crash.severity is Severity.ERROR
    assert attrs(crash)["unikraft.library"] == "libvfscore"
    assert attrs(crash)["unikraft.source"] == "rootfs.c:85"
    assert attrs(crash)["unikraft.crash.reason"] == "Failed to mount /: 0"
    # then the boot's failure (an init function returned an error): a crash, already counted
    (err,) = named(res, "unikraft.boot_failed")
    assert err.guest_time_s == 69.561104 and err.milestone is None and err.severity is Severity.ERROR
    assert attrs(err)["unikraft.message"] == "Init function at 0x11e360 returned error -1"


def test_unikraft_assertion_failure() -> None:
    """unikraft-4.txt (unikraft/unikraft issue #1111): an assertion failure on the ROM hand-off line."""
    res = result("unikraft-4.txt")
    crash = res.milestones[C]
    assert crash.guest_time_s == 0.0
    assert attrs(crash)["unikraft.crash.reason"] == "Assertion failure: ukarch_paddr_range_isvalid(pa)"
    assert attrs(crash)["unikraft.source"] == "paging.c:541"


def test_nanos_segfault() -> None:
    """nanos-1.txt (nanovms/ops-documentation debugging.md): address at 0.087239 s, then signal 11."""
    res = result("nanos-1.txt")
    ready = res.milestones[K]
    assert ready.guest_time_s == 0.087239
    assert attrs(ready)["nanos.net.ipv4"] == "10.0.2.15"
    crash = res.milestones[C]
    assert attrs(crash) == {
        "nanos.signal": 11,
        "nanos.tid": 2,
        "nanos.errno": 0,
        "nanos.crash.reason": "signal 11 received by tid 2",
    }
    assert crash.severity is Severity.ERROR


def test_nanos_klog_dump() -> None:
    """nanos-3.txt (nanovms/ops-documentation debugging.md): `dump -l` header with `exit code: 1`."""
    res = result("nanos-3.txt")
    assert attrs(res.milestones[X]) == {"nanos.exit_code": 1}
    assert res.milestones[X].severity is Severity.WARN
    assert attrs(named(res, "nanos.klog")[0]) == {"nanos.boot_id": 0}
    assert A not in res.milestones  # ops's "2021/03/22 11:35:35 Failed" is the host's line


def test_nanos_ntp_klib() -> None:
    """nanos-4.txt (nanovms/ops-documentation klibs.md): IPv4 then IPv6 SLAAC address, klib lines."""
    res = result("nanos-4.txt")
    (v6,) = named(res, "nanos.network.address")
    assert attrs(v6)["nanos.net.address"] == "FE80::447A:E3FF:FECF:B36F"
    assert A not in res.milestones  # klib lines are the kernel's


def test_nanos_2018() -> None:
    """nanos-5.txt (nanovms/nanos issue #104): 2018 boot `create fs`, `assigned: 10.0.2.15`."""
    res = result("nanos-5.txt")
    assert attrs(res.milestones[K]) == {"nanos.net.ipv4": "10.0.2.15"}


def test_nanos_ops_pkg_exit_status() -> None:
    """nanos-6.txt (nanovms/ops-documentation packages.md): `Hello`, then ops's `exit status 1`."""
    res = result("nanos-6.txt")
    assert attrs(res.milestones[B]) == {"nanos.image": "/Users/qtmsheep/.ops/images/program"}
    assert attrs(res.milestones[X]) == {"nanos.exit_code": 1}


def test_includeos_kernel_steps() -> None:
    """includeos-1.txt (includeos/IncludeOS issue #1806): caption, paging, multiboot (cut before the service)."""
    res = result("includeos-1.txt")
    assert [(ev.name, line_of(ev)) for ev in res.events] == [
        ("includeos.boot", 3),
        ("includeos.paging", 9),
        ("includeos.multiboot", 15),
    ]


def test_hermit_version_and_memory() -> None:
    """hermit-1.txt (hermit-os/uhyve issue #1081): `Welcome to Hermit 0.10.0`, `Total memory size: 2992 MiB`."""
    res = result("hermit-1.txt")
    assert attrs(res.milestones[B]) == {"hermit.version": "0.10.0"}
    assert attrs(named(res, "hermit.memory")[0]) == {"hermit.memory.total_bytes": 2992 << 20}


def test_firecracker_logger() -> None:
    """firecracker-2.txt (firecracker-microvm/firecracker issue #3418): version, PUT /boot-source, 376 us."""
    res = result("firecracker-2.txt")
    assert (res.family, res.milestones, list(res.vmm)) == (None, {}, ["firecracker"])  # the VMM's log, no guest
    assert attrs(res.vmm["firecracker"][B]) == {"firecracker.version": "v1.2.0-165-g81e771a2-dirty"}
    (request,) = named(res, "firecracker.api.request")
    assert attrs(request) == {"firecracker.api.method": "PUT", "firecracker.api.path": "/boot-source"}
    (duration,) = named(res, "firecracker.api.duration")
    assert duration.duration_s == 0.000376
    assert attrs(duration) == {"uniobs.guest_reported": False}  # the VMM's timing, not the guest's


# --- formats no transcript shows --------------------------------------------------------------


def parse_lines(family: str, texts: list[str]) -> ParseResult:
    return replay(texts, Registry().parsers, family=family)


# A real capture: examples/hello-node/unikernel under QEMU 7.2 (TCG, -machine microvm), Debian's
# kernel 6.1.0-56-amd64, on this project's build host. With `quiet` (what run.sh passes) the
# whole kernel output is the PCI line; the rest is the launcher's own line protocol.
MICROVM_QUIET = [
    "[    0.310313] PCI: Fatal: No config space access function found",
    "@@uniobs/1 mark kernel_ready t=2.840890",
    "@@uniobs/1 metric init.setup.duration gauge 0.080893 unit=s modules=7",
    "@@uniobs/1 mark app_start t=3.601068",
    "@@uniobs/1 mark ready t=3.721589 port=8002",
]
# The same boot with `EXTRA=loglevel=7` (excerpt: the first line and the end of the kernel's start).
MICROVM_VERBOSE = [
    "[    0.000000] Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14+deb12u1)"
    " 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2 (2026-11-16)",
    "[    0.000000] Command line: console=ttyS0 panic=-1 tsc_early_khz=2596134 tsc=reliable quiet loglevel=7",
    "[    0.721115] PCI: Fatal: No config space access function found",
    "[    4.316654] Freeing unused decrypted memory: 2036K",
    "[    4.428265] Freeing unused kernel image (initmem) memory: 2824K",
    "[    4.428713] Write protecting the kernel read-only data: 26624k",
    "[    4.435978] Freeing unused kernel image (text/rodata gap) memory: 2040K",
    "[    4.686706] Run /init as init process",
    "@@uniobs/1 mark kernel_ready t=4.741320",
]


def test_linux_microvm_quiet_is_recognised(parsers: dict[str, Any]) -> None:
    """Real capture of examples/hello-node/unikernel (quiet): only the PCI line identifies the kernel."""
    assert detect_family(MICROVM_QUIET, parsers) == "linux"
    res = replay(MICROVM_QUIET, parsers)
    assert (res.family, res.events, res.milestones, res.phases) == ("linux", (), {}, [])


def test_linux_microvm_verbose() -> None:
    """Real capture of examples/hello-node/unikernel with loglevel=7: version, initmem freed, Run /init."""
    res = replay(MICROVM_VERBOSE, Registry().parsers)
    assert res.family == "linux"
    boot = res.milestones[B]
    assert boot.guest_time_s == 0.0 and attrs(boot)["linux.version"] == "6.1.0-56-amd64"
    assert res.milestones[K].guest_time_s == 4.428265 and line_of(res.milestones[K]) == 5
    (init,) = named(res, "linux.init")
    assert init.milestone is None and init.guest_time_s == 4.686706 and attrs(init)["linux.init"] == "/init"
    assert res.clock == "guest"
    assert res.phases == [Phase("boot->kernel_ready", 0.0, 4.428265)]


def test_linux_panic_carries_the_functions_exit_status() -> None:
    """Derived (kernel/exit.c): PID 1 exiting panics the kernel with its wait status."""
    res = parse_lines(
        "linux",
        [
            "[    5.201234] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100",
            "[    5.201300] Kernel Offset: disabled",
            "[    5.210000] reboot: Restarting system",
        ],
    )
    crash = res.milestones[C]
    assert crash.guest_time_s == 5.201234
    assert attrs(crash)["linux.init.exit_status"] == 1
    assert attrs(crash)["linux.crash.reason"] == "Attempted to kill init! exitcode=0x00000100"
    assert X not in res.milestones  # the restart after a panic is not a clean exit
    res = parse_lines("linux", ["[   12.000001] reboot: Power down"])
    assert attrs(res.milestones[X]) == {"linux.reboot": "Power down", "uniobs.guest_reported": True}


def test_linux_and_unikraft_stamps_are_told_apart(parsers: dict[str, Any]) -> None:
    """Both print `[    0.000000] `; Unikraft's level and library tag follow, Nanos's stamp is unpadded."""
    assert detect_family(["[    0.000000] Info: [libkvmplat] <bootinfo.c @   56> x"], parsers) == "unikraft"
    assert detect_family(["[    0.000000] Linux version 6.1.0"], parsers) == "linux"
    assert detect_family(["[12345.678901] virtio_net virtio0 eth0: renamed"], parsers) == "linux"
    assert detect_family(["[0.087239] en1: assigned 10.0.2.15"], parsers) == "nanos"
    assert detect_family(["[0.087239] some other kernel line"], parsers) is None


def test_hermit_newer_log_prefixes() -> None:
    """Derived (hermit-os/kernel src/logging.rs, src/lib.rs): time column, core, level, target; initd; panic."""
    res = parse_lines(
        "hermit",
        [
            "[            ][0][INFO  hermit    ] Welcome to Hermit 0.11.0",
            "[            ][0][INFO  mm        ] Total memory size: 997 MiB",
            "[    0.052301][0][INFO  hermit    ] Hermit is running on common system!",
            "[    0.091502][0][INFO  hermit    ] Jumping into application",
            "[0][PANIC] panicked at src/fs/mod.rs:12:5:",
        ],
    )
    assert attrs(res.milestones[B]) == {"hermit.version": "0.11.0"}
    assert res.milestones[B].guest_time_s is None  # the time column is blank until the timer runs
    assert res.milestones[K].guest_time_s == 0.052301
    assert attrs(res.milestones[K])["hermit.platform"] == "common system"
    assert res.milestones[A].guest_time_s == 0.091502
    assert attrs(res.milestones[C])["hermit.crash.reason"] == "panicked at src/fs/mod.rs:12:5:"
    assert res.clock == "arrival"  # BOOT carries no stamp


def test_includeos_service_start_ready_and_panic() -> None:
    """Derived (includeos/IncludeOS src/kernel/os.cpp, panic.cpp): service start, event loop, panic."""
    res = parse_lines(
        "includeos",
        [
            "     [ Kernel ] Initializing plugins",
            "     [ Kernel ] Starting IncludeOS_example",
            "================================================================================",
            "Service started",
            " IncludeOS v0.14.1-1025",
            " +--> Running [ IncludeOS_example ]",
            "\\x15\\x07\t**** PANIC ****",
            "CPU: 0, Reason: Division by zero",
        ],
    )
    assert line_of(res.milestones[B]) == 1  # the caption was not seen: the first kernel line
    assert line_of(res.milestones[K]) == line_of(res.milestones[A]) == 2
    assert attrs(res.milestones[A]) == {"includeos.service": "IncludeOS_example"}
    assert attrs(named(res, "includeos.version")[0]) == {"includeos.version": "v0.14.1-1025"}
    assert line_of(res.milestones[R]) == 6
    assert line_of(res.milestones[C]) == 7
    (reason,) = named(res, "includeos.panic.reason")
    assert attrs(reason) == {"includeos.cpu": 0, "includeos.crash.reason": "Division by zero"}


def test_unikraft_debug_build_main() -> None:
    """Derived (unikraft/unikraft lib/ukboot/boot.c): `Calling main(...)` and `main returned N` at info level."""
    res = parse_lines(
        "unikraft",
        [
            "Powered by Unikraft Kiviuq (0.20.0~a1b2c3d)",
            "[    0.101000] Info: [libukboot] <boot.c @  418> Calling main(1, ['app'])",
            "hello",
            "[    0.102500] Info: [libukboot] <boot.c @  422> main returned 3",
            "[    0.102600] Info: [libukboot] <boot.c @  352> Halting system (1)",
        ],
    )
    assert attrs(res.milestones[K]) == {"unikraft.codename": "Kiviuq", "unikraft.version": "0.20.0~a1b2c3d"}
    assert res.milestones[A].guest_time_s == 0.101
    end = res.milestones[X]
    assert (end.name, end.guest_time_s, end.severity) == ("unikraft.main_returned", 0.1025, Severity.WARN)
    assert attrs(end)["unikraft.exit_code"] == 3
    assert named(res, "unikraft.halt")[0].milestone is None


def test_solo5_mirage_log_starts_the_app() -> None:
    """Derived (MirageOS Logs reporter on Solo5): the first Logs line is the application's start."""
    res = parse_lines(
        "solo5",
        [
            "Solo5: Bindings version v0.8.0",
            "Solo5:       heap >= 0x10b000 < stack < 0x20000000",
            "2023-04-01 10:00:00 -00:00: INF [netif] Plugging into service with mac 02:00:00:00:00:01",
            "Solo5: solo5_exit(2) called",
        ],
    )
    assert line_of(res.milestones[B]) == 1 and attrs(res.milestones[B]) == {}  # the banner was not seen
    assert line_of(res.milestones[A]) == 3
    assert res.milestones[X].severity is Severity.WARN and attrs(res.milestones[X]) == {"solo5.exit_code": 2}


def test_osv_booted_up_in_and_abort() -> None:
    """Derived (cloudius-systems/osv loader.cc): `Booted up in N ms` without a bootchart; an abort."""
    res = parse_lines("osv", ["OSv v0.56.0", "Booted up in 142.59 ms", "Cmdline: /tests/tst-x.so", "Aborted"])
    assert res.milestones[K].duration_s == 0.14259
    assert attrs(res.milestones[C])["osv.crash.reason"] == "Aborted"


# --- a VMM's own log beside the guest's console -----------------------------------------------

# Real lines, from the same vAccel tutorial as firecracker-3.txt: Firecracker v1.11.0 failing to
# start (its stdout; its `Error: RunWithApi(...)` line goes to stderr and is left out here).
FC_V111_FAILED = [
    "2025-03-30T17:56:21.871223256 [anonymous-instance:main] Running Firecracker v1.11.0",
    "2025-03-30T17:56:21.871393598 [anonymous-instance:main] RunWithApiError error: Failed to open the API socket at:"
    " fc.sock. Check that it is not already used.",
    "2025-03-30T17:56:21.871438293 [anonymous-instance:main] Firecracker exiting with error. exit_code=1",
]
# Derived (firecracker-microvm/firecracker src/vmm/src/devices/pseudo/boot_timer.rs, src/firecracker/src/main.rs):
# --boot-timer's line and a clean exit.
FC_DERIVED = [
    "2025-03-30T18:14:06.907712355 [anonymous-instance:fc_vcpu 0] Guest-boot-time =  61733 us 61 ms,"
    "  59950 CPU us 59 CPU ms",
    "2025-03-30T18:14:09.001000000 [anonymous-instance:main] Firecracker exiting successfully. exit_code=0",
]
# v0.11's tag, with no instance id and no thread (a real line: firecracker-microvm/firecracker
# issue #685), then the panic hook's line in the same format (derived: src/firecracker/src/main.rs).
FC_OLD_PANIC = [
    "2018-11-28T14:01:37.145332365 [:ERROR:vmm/src/lib.rs:1157] Failed to log metrics on abort. Failed to log"
    " metrics. Logger was not initialized.:?",
    "2018-11-28T14:01:37.145432365 [:ERROR:src/main.rs:40] Firecracker panicked at 'called `Option::unwrap()`'",
]
# QEMU's HMP monitor on the console (real banner and prompt: an OP-TEE guide running QEMU 3.0.93
# with its monitor on stdio), then QEMU's merged stderr (derived: util/error-report.c, runstate.c).
QEMU_MONITOR = ["QEMU 3.0.93 monitor - type 'help' for more information", "(qemu) c"]
QEMU_STDERR = [
    "qemu-system-x86_64: warning: host doesn't support requested feature: CPUID.80000001H:ECX.svm [bit 2]",
    "qemu-system-x86_64: terminating on signal 2 from pid 4242 (ops)",
]
# Derived (cloud-hypervisor src/main.rs, Logger::log): its -v log on stderr beside the serial console.
CLOUD_HYPERVISOR = [
    "cloud-hypervisor: 2.171875ms: <vmm> INFO:vmm/src/lib.rs:1845 -- Booting VM",
    "cloud-hypervisor: 12.345678ms: <vmm> WARN:vmm/src/vm.rs:1207 -- Guest TSC is not stable",
    "cloud-hypervisor: 1.500000s: <vcpu0> ERROR:vmm/src/cpu.rs:1034 -- VCPU generated error: VcpuUnhandledMmioRead",
]
VMM_SAMPLES = {
    "firecracker v1.11": [line.text for line in read_console(CONSOLES / "firecracker-3.txt")[1:6]] + FC_DERIVED,
    "firecracker v1.11 failed": FC_V111_FAILED,
    "firecracker v1.2": [line.text for line in read_console(CONSOLES / "firecracker-2.txt")[1:]],
    "firecracker v0.11": FC_OLD_PANIC,
    "qemu": QEMU_MONITOR + QEMU_STDERR,
    "cloud-hypervisor": CLOUD_HYPERVISOR,
}


def lines_at(texts: list[str], start_ns: int = 0, step_ns: int = REPLAY_LINE_NS) -> list[ConsoleLine]:
    return [ConsoleLine(start_ns + i * step_ns, text, i + 1) for i, text in enumerate(texts)]


def guest_part(path: Path, parsers: dict[str, Any]) -> list[str]:
    return [line.text for line in read_console(path) if not owned_by_vmm(line, parsers)]


def test_firecracker_stdout_carries_the_guests_console(parsers: dict[str, Any]) -> None:
    """firecracker-3.txt (issue 13 case 11): Firecracker v1.11's log, then the guest's printk log, on one stdout.

    Before: the stream was taken as "firecracker" and the 12 guest lines were ignored. Now the
    VMM's start (v1.11.0) and the guest's boot milestones are both there, each as for its part alone."""
    res = result("firecracker-3.txt")
    assert res.family == "linux" and list(res.vmm) == ["firecracker"]
    start = res.vmm["firecracker"][B]
    assert (start.name, line_of(start), attrs(start)) == ("firecracker.start", 2, {"firecracker.version": "v1.11.0"})
    (configured,) = named(res, "firecracker.instance_start")
    assert line_of(configured) == 6 and attrs(configured) == {"firecracker.config_file": True}
    boot, ready = res.milestones[B], res.milestones[K]
    assert (boot.name, line_of(boot), boot.guest_time_s) == ("linux.boot", 7, 0.0)
    assert attrs(boot)["linux.version"] == "6.1.132"
    assert (ready.name, line_of(ready), ready.guest_time_s) == ("linux.kernel_ready", 12, 0.450969)
    (init,) = named(res, "linux.init")
    assert (line_of(init), init.guest_time_s, attrs(init)["linux.init"]) == (16, 0.457615, "/sbin/init")
    assert (res.clock, res.phases) == ("guest", [Phase("boot->kernel_ready", 0.0, 0.450969)])
    # each part alone, its lines at the same times: the same events, found by the same parsers
    lines = read_console(CONSOLES / "firecracker-3.txt")
    vmm_lines = [line for line in lines if owned_by_vmm(line, parsers)]
    guest_lines = [line for line in lines if not owned_by_vmm(line, parsers)]
    assert [line.number for line in vmm_lines] == [2, 3, 4, 5, 6]
    both = tagged(lines, parsers)
    assert [pair for pair in both if pair[0] == "linux"] == tagged(guest_lines, parsers)
    assert [pair for pair in both if pair[0] == "firecracker"] == tagged(vmm_lines, parsers)
    alone = replay(guest_lines, parsers)
    assert (alone.family, alone.milestones, alone.phases) == (res.family, res.milestones, res.phases)


def test_a_vmm_log_after_the_guest_is_still_read(parsers: dict[str, Any]) -> None:
    """The guest first, then the VMM's end: Firecracker's exit after a Linux guest is not lost to the linux parser."""
    res = replay(MICROVM_VERBOSE + FC_DERIVED, parsers)
    assert res.family == "linux" and res.milestones[K].guest_time_s == 4.428265
    end = res.vmm["firecracker"][X]
    assert (end.name, end.severity, attrs(end)) == ("firecracker.exit", Severity.INFO, {"firecracker.exit_code": 0})
    (boot_time,) = named(res, "firecracker.guest_boot_time")
    assert boot_time.duration_s == 0.061733
    assert attrs(boot_time) == {"uniobs.guest_reported": False, "firecracker.boot.cpu_time_s": 0.05995}
    assert X not in res.milestones  # the VMM's exit is not the guest's


def test_firecracker_failures_and_old_formats(parsers: dict[str, Any]) -> None:
    """Real v1.11 lines of a failed start (exit_code=1); v0.11's tag with no instance id and no thread; a panic."""
    res = replay(FC_V111_FAILED, parsers)
    assert (res.family, list(res.vmm)) == (None, ["firecracker"])
    end = res.vmm["firecracker"][X]
    assert (end.severity, attrs(end)) == (Severity.WARN, {"firecracker.exit_code": 1})
    res = replay(FC_OLD_PANIC, parsers)
    (error,) = named(res, "firecracker.log")  # --show-level's ERROR, on a line with no other meaning
    assert error.severity is Severity.ERROR and attrs(error)["firecracker.message"].startswith("Failed to log metrics")
    crash = res.vmm["firecracker"][C]
    assert crash.name == "firecracker.panic" and attrs(crash)["firecracker.crash.reason"].startswith("'called")


def test_a_guests_own_iso_timestamps_stay_the_guests(parsers: dict[str, Any]) -> None:
    """Only Firecracker's exact tag is its own: an application logging ISO-8601 times is still the guest."""
    app = "2025-03-30T18:14:07.120Z info: listening on :8080"
    assert not any(owned_by_vmm(ConsoleLine(0, text, 1), parsers) for text in [app, "2025-03-30T18:14:07 [x] y"])
    res = replay(["running local instance", "[0.087239] en1: assigned 10.0.2.15", *FC_V111_FAILED[:1], app], parsers)
    assert res.family == "nanos" and line_of(res.milestones[A]) == 4  # the app's line, not Firecracker's
    assert attrs(res.vmm["firecracker"][B]) == {"firecracker.version": "v1.11.0"}


def test_qemu_monitor_and_stderr_are_not_the_guests(parsers: dict[str, Any]) -> None:
    """QEMU's monitor banner and prompt, and its merged stderr, are QEMU's: not a Nanos program's first line."""
    texts = [*QEMU_STDERR[:1], "running local instance", "booting /home/user/.ops/images/main ...",
             *QEMU_MONITOR, "[0.087239] en1: assigned 10.0.2.15", QEMU_STDERR[1]]  # fmt: skip
    res = replay(texts, parsers)
    assert res.family == "nanos" and list(res.vmm) == ["qemu"]
    assert A not in res.milestones  # before: the `terminating on signal 2` line was taken as the program's start
    assert res.vmm["qemu"] == {}  # QEMU's lines say nothing of the guest's boot
    assert [(ev.name, ev.severity) for ev in res.events if ev.name.startswith("qemu.")] == [
        ("qemu.warning", Severity.WARN),
        ("qemu.monitor", Severity.INFO),
        ("qemu.monitor.command", Severity.INFO),
        ("qemu.terminated", Severity.WARN),
    ]
    assert attrs(named(res, "qemu.monitor")[0]) == {"qemu.version": "3.0.93"}
    assert attrs(named(res, "qemu.monitor.command")[0]) == {"qemu.monitor.command": "c"}
    assert attrs(named(res, "qemu.terminated")[0]) == {
        "qemu.program": "qemu-system-x86_64",
        "qemu.signal": 2,
        "qemu.signal.sender_pid": 4242,
    }
    alone = replay([text for text in texts if text.startswith(("running", "booting", "[0."))], parsers)
    assert [(m, ev.name, ev.attributes) for m, ev in alone.milestones.items()] == [
        (m, ev.name, ev.attributes) for m, ev in res.milestones.items()
    ]


def test_cloud_hypervisor_log_beside_the_serial_console(parsers: dict[str, Any]) -> None:
    """Cloud Hypervisor's -v lines between the guest's printk lines: its warning and error, its relative stamps."""
    texts = [
        MICROVM_VERBOSE[0],
        CLOUD_HYPERVISOR[0],
        *MICROVM_VERBOSE[1:5],
        *CLOUD_HYPERVISOR[1:],
        *MICROVM_VERBOSE[5:],
    ]
    res = replay(texts, parsers)
    assert res.family == "linux" and list(res.vmm) == ["cloud-hypervisor"]
    alone = replay(MICROVM_VERBOSE, parsers)
    assert {m: (ev.name, ev.guest_time_s) for m, ev in res.milestones.items()} == {
        m: (ev.name, ev.guest_time_s) for m, ev in alone.milestones.items()
    }
    assert res.phases == alone.phases == [Phase("boot->kernel_ready", 0.0, 4.428265)]  # on the guest's clock
    warning, error = named(res, "cloud_hypervisor.warn"), named(res, "cloud_hypervisor.error")
    assert attrs(warning[0])["cloud_hypervisor.message"] == "Guest TSC is not stable"
    assert attrs(error[0])["cloud_hypervisor.thread"] == "vcpu0" and error[0].severity is Severity.ERROR
    (cls,) = [c for n, c in parser_classes(parsers).items() if n == "cloud-hypervisor"]
    stamps = [cls().stamp_ns(ConsoleLine(0, text, 1)) for text in CLOUD_HYPERVISOR]
    assert stamps == [2_171_875, 12_345_678, 1_500_000_000]


def test_vmm_lines_do_not_use_up_the_detection_window(parsers: dict[str, Any]) -> None:
    """A chatty VMM log before the guest's first line: the window counts the guest's lines only."""
    chatty = [f"2025-03-30T18:14:06.{n:09d} [anonymous-instance:fc_api] The API server received a Get request on"
              ' "/machine-config"' for n in range(250)]  # fmt: skip
    res = replay([*chatty, *MICROVM_VERBOSE], parsers, limit=5)
    assert res.family == "linux" and len(named(res, "firecracker.api.request")) == 250
    assert detect_family([*chatty, "OSv v0.57.0"], parsers, limit=1) == "osv"


def test_a_vmm_log_cannot_be_chosen_as_the_family(parsers: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="'firecracker' reads a VMM's own log"):
        replay(["x"], parsers, family="firecracker")
    forced = replay([*FC_V111_FAILED[:1], "[    1.000000] hello"], parsers, family="linux")
    assert forced.family == "linux" and list(forced.vmm) == ["firecracker"]


def fc_line(stamp_s: float, message: str) -> str:
    whole = int(stamp_s)
    return f"2025-03-30T18:14:{whole:02d}.{round((stamp_s - whole) * 1e9):09d} [anonymous-instance:main] {message}"


def test_a_live_console_places_vmm_events_at_their_stamps() -> None:
    """Live (`vmm_stamps`): an event sits at its stamp on the host's clock, through the smallest arrival-stamp offset.

    A line read late gets the time the VMM wrote it; one read sooner than the offset so far
    tightens it; a stamp far behind (the clock stepped back) starts over; unstamped lines keep
    their arrival."""
    t = 7_000_000_000
    arrivals_and_lines = [
        (t, fc_line(6.0, "Running Firecracker v1.11.0")),
        (t + 40_000_000, fc_line(6.010, "Successfully started microvm that was configured from one single json")),
        (t + 29_000_000, fc_line(6.030, 'The API server received a Put request on "/actions"')),
        (t + 31_000_000, fc_line(6.031, 'The API server received a Get request on "/"')),
        (t + 50_000_000, fc_line(6.040, 'The API server received a Get request on "/a"').replace("18:14", "17:14")),
        (t + 60_000_000, "Running Firecracker v1.2.0"),
    ]
    lines = [ConsoleLine(at, text, n) for n, (at, text) in enumerate(arrivals_and_lines, start=1)]
    stream = StreamParser(parser_classes(Registry().parsers), vmm_stamps=True)
    times = [ev.time_ns for line in lines for ev in stream.feed(line)]
    assert times == [
        t,  # the first stamped line: at its arrival
        t + 10_000_000,  # 30 ms late: at its stamp
        t + 29_000_000,  # 1 ms sooner than the offset so far: at its arrival, and the offset tightens
        t + 30_000_000,  # 1 ms late under the tightened offset
        t + 50_000_000,  # an hour behind: more than MAX_STAMP_LAG_S, so the clock starts over
        t + 60_000_000,  # no stamp: its arrival
    ]
    assert MAX_STAMP_LAG_S < 3600
    assert all(at <= line.time_ns for at, line in zip(times, lines, strict=True))  # never after the arrival
    # a replayed recording keeps every event at its line's position
    replayed = StreamParser(parser_classes(Registry().parsers), vmm_stamps=False)
    assert [ev.time_ns for line in lines for ev in replayed.feed(line)] == [line.time_ns for line in lines]
    assert [ev.time_ns for ev in replay(lines, Registry().parsers).events] == [line.time_ns for line in lines]


class RecordingSink:
    """An EventSink keeping what a console's analyzer delivers."""

    def __init__(self) -> None:
        self.logs: list[LogEvent] = []

    def log(self, workload: Workload, event: LogEvent) -> None:
        self.logs.append(event)

    def log_batch(self, workload: Workload, events: Any) -> None:
        self.logs.extend(events)

    def span(self, workload: Workload, event: Any) -> None:
        pass

    def record(self, workload: Workload, samples: Any) -> None:
        pass

    def declare(self, specs: Any, scope: str) -> None:
        pass


def test_the_console_collector_reads_both_writers_of_a_live_stream(parsers: dict[str, Any]) -> None:
    """collectors/console.py's analyzer on firecracker-3.txt as it would arrive: the VMM's lines late, in one read."""
    lines = read_console(CONSOLES / "firecracker-3.txt")[1:]
    t = 9_000_000_000
    burst = [dataclasses.replace(line, time_ns=t + 25_000_000) for line in lines[:5]]  # all read at once, late
    guest = [dataclasses.replace(line, time_ns=t + 30_000_000 + i * 1_000_000) for i, line in enumerate(lines[5:])]
    burst[0] = dataclasses.replace(burst[0], time_ns=t)  # the first line was read as it came
    seen: list[GuestEvent] = []
    sink = RecordingSink()
    workload = Workload(kind=Kind.UNIKERNEL, runtime="firecracker", id="fc-1", name="fc")
    analyzer = _Analyzer(workload, sink, parser_classes(parsers), False, seen.append)
    analyzer.feed(burst)
    analyzer.feed(guest)
    assert (analyzer.family, analyzer.vmms) == ("linux", ("firecracker",))
    assert [(ev.name, ev.milestone) for ev in seen] == [
        ("firecracker.start", B),
        ("firecracker.instance_start", None),
        ("linux.boot", B),
        ("linux.kernel_ready", K),
        ("linux.init", None),
    ]
    # Firecracker stamped `Successfully started` 20.794808 ms after `Running Firecracker`: that is its time
    times = {log.event_name: log.time_ns for log in sink.logs if log.event_name}
    assert times["firecracker.start"] == t
    assert times["firecracker.instance_start"] == t + 20_794_808
    assert times["linux.boot"] == t + 30_000_000 and times["linux.kernel_ready"] == t + 35_000_000
    ready = next(log for log in sink.logs if log.event_name == "linux.kernel_ready")
    assert ("uniobs.milestone", "kernel_ready") in ready.attributes


@st.composite
def interleaving(draw: st.DrawFn) -> tuple[list[ConsoleLine], list[ConsoleLine], list[ConsoleLine]]:
    """A VMM log and a guest transcript, each line at a time of its own, merged in a random order."""
    vmm_texts = draw(st.sampled_from(sorted(VMM_SAMPLES.values())))
    guest_texts = draw(st.sampled_from(GUEST_PARTS))
    vmm = lines_at(vmm_texts, start_ns=draw(st.integers(0, 10**9)), step_ns=draw(st.integers(0, 5 * 10**6)))
    guest = lines_at(guest_texts, step_ns=REPLAY_LINE_NS)
    cuts = sorted(draw(st.lists(st.integers(0, len(guest)), min_size=len(vmm), max_size=len(vmm))))
    merged: list[ConsoleLine] = []
    at = 0
    for line, cut in zip(vmm, cuts, strict=True):
        merged += [*guest[at:cut], line]
        at = cut
    return vmm, guest, merged + guest[at:]


GUEST_PARTS = [guest_part(path, Registry().parsers) for path in transcripts()] + [MICROVM_VERBOSE, MICROVM_QUIET]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=interleaving(), stamps=st.booleans())
def test_any_interleaving_reads_as_each_part_alone(
    case: tuple[list[ConsoleLine], list[ConsoleLine], list[ConsoleLine]], stamps: bool
) -> None:
    """Property: whatever the order of a VMM log's lines among a guest's, the guest's events and
    milestones (in order) and the VMM's events are those of each part alone."""
    parsers = Registry().parsers
    vmm, guest, merged = case
    both = tagged(merged, parsers, vmm_stamps=stamps)
    assert [pair for pair in both if pair[0] not in VMM_LOGS] == tagged(guest, parsers, vmm_stamps=stamps)
    assert [pair for pair in both if pair[0] in VMM_LOGS] == tagged(vmm, parsers, vmm_stamps=stamps)
    res, guest_alone, vmm_alone = (replay(lines, parsers, vmm_stamps=stamps) for lines in (merged, guest, vmm))
    assert (res.family, res.milestones, res.phases, res.clock) == (
        guest_alone.family, guest_alone.milestones, guest_alone.phases, guest_alone.clock,
    )  # fmt: skip
    assert res.vmm == vmm_alone.vmm and list(res.vmm)  # every sample is some VMM's own
    assert [ev.milestone for ev in res.milestones.values()] == [
        ev.milestone for ev in guest_alone.events if ev.milestone is not None
    ]


class BoomVmm(VmmLogParser):
    family = "boomvmm"

    def owns(self, line: ConsoleLine) -> bool:
        if line.text == "crash owns":
            raise RuntimeError("owns bug")
        return line.text.startswith("VMM")

    def recognises(self, line: ConsoleLine) -> bool:
        return self.owns(line)

    def parse(self, line: ConsoleLine) -> list[GuestEvent]:
        return [GuestEvent(line.time_ns, "boomvmm.line")]


def test_a_failing_vmm_log_parser_is_switched_off(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    stream = StreamParser([BoomVmm, *parser_classes(Registry().parsers).values()])
    assert [ev.name for ev in stream.feed(ConsoleLine(1, "VMM up", 1))] == ["boomvmm.line"]
    assert stream.feed(ConsoleLine(2, "crash owns", 2)) == []  # then the line is the guest's
    assert "'boomvmm' failed to read a line; switched off" in caplog.text
    assert stream.feed(ConsoleLine(3, "VMM again", 3)) == []  # off for this console
    assert [ev.name for ev in stream.feed(ConsoleLine(4, "OSv v0.57.0", 4))] == ["osv.boot"]
    assert (stream.family, stream.vmms) == ("osv", ["boomvmm"])


# --- detection and replay ---------------------------------------------------------------------


def test_replay_of_lines_equals_replay_of_the_file(parsers: dict[str, Any]) -> None:
    for path in transcripts():
        texts = path.read_text().splitlines()
        assert replay(texts, parsers) == replay(path, parsers), path.name


def test_replay_keeps_real_arrival_times(parsers: dict[str, Any]) -> None:
    lines = [ConsoleLine(5_000_000_000 + i * 250_000_000, text, i + 1) for i, text in enumerate(
        ["            |      ___|", "Solo5:       heap >= 0x10b000 < stack < 0x20000000", "Solo5: solo5_exit(0) called"]
    )]  # fmt: skip
    res = replay(lines, parsers)
    assert res.milestones[X].time_ns == 5_500_000_000
    assert res.phases == [Phase("boot->kernel_ready", 0.0, 0.25), Phase("kernel_ready->exit", 0.25, 0.25)]


def test_unknown_console_gives_no_family(parsers: dict[str, Any]) -> None:
    """The minikernel's own output (examples/minikernel) belongs to no family: its records are the line protocol's."""
    minikernel = [
        "",
        "minikernel 0.1 (uniobs example unikernel)",
        "@@uniobs/1 mark boot cycles=2654964",
        "cmdline: mode=panic work_ms=50",
        "memory: heap 0x00109000-0x04000000 (64476 KiB free)",
        "PANIC: requested by mode=panic",
        "@@uniobs/1 log fatal panic: requested by mode=panic",
    ]
    assert replay(minikernel, parsers) == ParseResult(family=None)
    assert replay([], parsers) == ParseResult(family=None)


def test_detection_looks_at_the_first_lines_only(parsers: dict[str, Any]) -> None:
    lines = ["noise"] * 200 + ["OSv v0.57.0"]
    assert detect_family(lines, parsers) is None
    assert detect_family(lines, parsers, limit=201) == "osv"
    assert replay(lines, parsers, family="osv").milestones[B].time_ns == 201 * REPLAY_LINE_NS


def test_an_unknown_family_is_refused(parsers: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"unknown console family 'plan9'.*osv"):
        replay(["x"], parsers, family="plan9")


def test_parsers_may_be_given_as_classes() -> None:
    classes = list(parser_classes(Registry().parsers).values())
    assert detect_family(["OSv v0.57.0"], classes) == "osv"
    assert detect_family(["OSv v0.57.0"], {c.family: c for c in classes}) == "osv"


def test_a_live_console_keeps_what_came_before_its_family_showed(parsers: dict[str, Any]) -> None:
    """unikraft-1.txt line by line: nothing until the banner art (line 13), then lines 1-13 at once."""
    stream = StreamParser(parsers)
    lines = read_console(CONSOLES / "unikraft-1.txt")
    fed = [(line.number, stream.feed(line)) for line in lines]
    assert [n for n, events in fed if events] == [13, 18, 19, 22]
    first = dict(fed)[13]
    assert [(ev.name, line_of(ev)) for ev in first] == [
        ("unikraft.firmware", 2),
        ("unikraft.firmware.handoff", 9),
        ("unikraft.network.address", 9),
        ("unikraft.network.up", 11),
    ]
    assert (stream.family, stream.settled) == ("unikraft", True)
    assert [ev for _, events in fed for ev in events] == list(replay(lines, parsers).events)


def test_a_live_console_of_no_family_is_given_up_after_the_first_lines(parsers: dict[str, Any]) -> None:
    stream = StreamParser(parsers, limit=10)
    for n in range(1, 11):
        assert stream.feed(ConsoleLine(n, f"line {n}", n)) == []
    assert (stream.family, stream.settled, stream._held) == (None, True, [])
    assert stream.feed(ConsoleLine(11, "OSv v0.57.0", 11)) == []  # too late


class Boom(ConsoleParser):
    family = "boom"

    def recognises(self, line: ConsoleLine) -> bool:
        if line.text == "crash recognises":
            raise RuntimeError("recognises bug")
        return line.text.startswith("BOOM")

    def parse(self, line: ConsoleLine) -> list[GuestEvent]:
        if line.text == "BOOM crash":
            raise RuntimeError("parse bug")
        return [GuestEvent(line.time_ns, "boom.line")]


def test_a_failing_third_party_parser_is_switched_off(caplog: pytest.LogCaptureFixture) -> None:
    stream = StreamParser([Boom, *parser_classes(Registry().parsers).values()])
    assert stream.feed(ConsoleLine(1, "crash recognises", 1)) == []  # Boom is dropped from detection
    assert "'boom' failed to read a line" in caplog.text
    assert [ev.name for ev in stream.feed(ConsoleLine(2, "OSv v0.57.0", 2))] == ["osv.boot"]
    stream = StreamParser([Boom], family="boom")
    assert [ev.name for ev in stream.feed(ConsoleLine(1, "BOOM", 1))] == ["boom.line"]
    assert stream.feed(ConsoleLine(2, "BOOM crash", 2)) == []
    assert stream.feed(ConsoleLine(3, "BOOM", 3)) == []  # off for this console
    assert "'boom' failed; switched off" in caplog.text


def test_phases_from_milestones_use_the_guest_clock_when_every_milestone_is_stamped() -> None:
    def ev(t_ms: int, m: Milestone, guest: float | None) -> GuestEvent:
        return GuestEvent(t_ms * 1_000_000, m.value, m, guest_time_s=guest)

    stamped = {B: ev(10, B, 0.0), K: ev(20, K, 0.5), A: ev(30, A, 0.75)}
    assert boot_phases(stamped.values(), stamped, 0) == (
        "guest",
        [Phase("boot->kernel_ready", 0.0, 0.5), Phase("kernel_ready->app_start", 0.5, 0.25)],
    )
    mixed = {B: ev(10, B, None), K: ev(20, K, 0.5)}
    assert boot_phases(mixed.values(), mixed, 10_000_000) == ("arrival", [Phase("boot->kernel_ready", 0.0, 0.01)])
    assert boot_phases((), {}) == ("arrival", [])


# --- robustness -------------------------------------------------------------------------------

ALL_LINES = [line.text for path in transcripts() for line in read_console(path)] + MICROVM_VERBOSE
ALL_LINES += [text for texts in VMM_SAMPLES.values() for text in texts]
MAX_EVENTS_PER_LINE = 4
MAX_ATTR_CHARS = 256


def check_events(events: object) -> None:
    assert isinstance(events, (list, tuple))
    assert len(events) <= MAX_EVENTS_PER_LINE
    for ev in events:
        assert isinstance(ev, GuestEvent)
        for key, value in ev.attributes:
            assert key == key.lower() and "." in key and " " not in key
            if isinstance(value, str):
                assert len(value) <= MAX_ATTR_CHARS
        for t in (ev.guest_time_s, ev.duration_s):
            assert t is None or t >= 0


def fresh_parsers() -> list[ConsoleParser]:
    return [cls() for cls in parser_classes(Registry().parsers).values()]


@st.composite
def mutated_line(draw: st.DrawFn) -> str:
    """A transcript line, mutated: spliced with random text, cut, digits inflated, repeated."""
    text = draw(st.sampled_from(ALL_LINES))
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["insert", "delete", "digits", "repeat", "truncate"]))
        i = draw(st.integers(0, len(text)))
        if op == "insert":
            text = text[:i] + draw(st.text(max_size=40)) + text[i:]
        elif op == "delete":
            text = text[:i] + text[i + draw(st.integers(0, 20)) :]
        elif op == "digits":
            text = "".join(c * draw(st.integers(1, 30)) if c.isdigit() else c for c in text)
        elif op == "repeat":
            text = text * draw(st.integers(2, 20))
        else:
            text = text[:i]
    return text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=st.lists(st.one_of(st.text(max_size=300), mutated_line()), min_size=1, max_size=30))
def test_no_input_breaks_a_parser(texts: list[str]) -> None:
    """Random text and mutated transcript lines, fed in sequence through one instance of every parser."""
    for parser in fresh_parsers():
        milestones: list[Milestone] = []
        for number, text in enumerate(texts, start=1):
            line = ConsoleLine(number * REPLAY_LINE_NS, text, number)
            assert parser.recognises(line) in (True, False)
            if isinstance(parser, VmmLogParser):
                owned = parser.owns(line)
                assert owned in (True, False)
                # the stream asks `owns` only of lines that start with one of the parser's prefixes
                assert not owned or not parser.prefixes or text.startswith(parser.prefixes), parser.family
                stamp = parser.stamp_ns(line)
                assert stamp is None or (owned and isinstance(stamp, int) and stamp >= 0), parser.family
            events = parser.parse(line)
            check_events(events)
            milestones += [ev.milestone for ev in events if ev.milestone is not None]
        assert len(milestones) == len(set(milestones)), parser.family


def adversarial_lines() -> Iterator[str]:
    """16 KiB lines (the capture's default cap) built to provoke regex backtracking."""
    n = 16 * 1024
    for unit in ["[", " ", "\t", "0", "0.", "[ ", "] ", "a ", ": ", "(+", "[0]", "Solo5: ", "|", "@ ", "<", "*"]:
        yield (unit * (n // len(unit)))[:n]
    for prefix in ["Solo5: trap: ", "[    0.000000] Info: [lib", "[0][INFO] ", "OSv v", "\t" + "x" * 40 + ": 1",
                   "2025-03-30T18:14:06.845979099 [", "2025-03-30T18:14:06 [a:", "cloud-hypervisor: 1", "(qemu) ",
                   "qemu-system-x86_64: terminating on signal "]:  # fmt: skip
        yield prefix + ("9" * n)
        yield prefix + (" " * n) + "!"


def test_long_hostile_lines_are_parsed_in_linear_time() -> None:
    for parser in fresh_parsers():
        # warm the stateful paths too (banners, panics) before the hostile lines
        for text in ["Powered by", "\\x15\\x07\t**** PANIC ****", "OSv v0.57.0", "en1: assigned 10.0.2.15"]:
            parser.parse(ConsoleLine(0, text, 0))
        started = time.perf_counter()
        for number, text in enumerate(adversarial_lines(), start=1):
            line = ConsoleLine(number, text, number, truncated=True)
            parser.recognises(line)
            if isinstance(parser, VmmLogParser):
                parser.owns(line)
                parser.stamp_ns(line)
            check_events(parser.parse(line))
        elapsed = time.perf_counter() - started
        assert elapsed < 2.0, f"{parser.family}: {elapsed:.2f}s for {sum(1 for _ in adversarial_lines())} lines"


# --- live: the hello-node microVM under QEMU --------------------------------------------------

UNIKERNEL_DIR = ROOT / "examples" / "hello-node" / "unikernel"
MISSING = missing("gcc", "make", "ldd", "node")


@pytest.mark.qemu
@pytest.mark.slow
@requires_qemu
@requires_vmlinuz
@pytest.mark.skipif(bool(MISSING), reason=f"cannot build the microVM: {', '.join(MISSING)} not on PATH")
def test_live_microvm_console_is_linux(tmp_path: Path, parsers: dict[str, Any]) -> None:
    """Boots examples/hello-node/unikernel (quiet) and detects its console as `linux` from what it prints."""
    subprocess.run(["make", "-C", str(UNIKERNEL_DIR)], check=True, capture_output=True, timeout=600)
    env = {**os.environ, "PORT": str(free_port())}
    proc = subprocess.Popen(
        ["sh", str(UNIKERNEL_DIR / "build" / "run.sh")], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, env=env, start_new_session=True, cwd=ROOT,
    )  # fmt: skip
    assert proc.stdout is not None
    out = bytearray()
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            deadline = time.monotonic() + 120
            while b"@@uniobs/1 mark ready" not in out and time.monotonic() < deadline:
                if sel.select(timeout=1.0):
                    chunk = os.read(proc.stdout.fileno(), 65536)
                    if not chunk:
                        break
                    out += chunk
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the group this test started: run.sh and the QEMU it execs
        proc.wait(timeout=10)
        proc.stdout.close()
    console = tmp_path / "console.log"
    console.write_bytes(bytes(out))
    assert b"@@uniobs/1 mark ready" in out, out[-2000:].decode("utf-8", "replace")
    res = replay(console, parsers)
    assert res.family == "linux", out[:2000].decode("utf-8", "replace")


def test_uniobs_parse_replays_a_recorded_console(tmp_path: Path) -> None:
    """`uniobs parse` on the OSv transcript (tests/testdata/consoles/osv-1.txt, OSv's --bootchart)."""
    import sys

    out = tmp_path / "t.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "uniobs.cli", "parse", "--export", f"file:{out}", str(CONSOLES / "osv-1.txt")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "family: osv"
    assert any(line.startswith("milestone kernel_ready") for line in lines)
    assert "boot phases (as the guest timed them):" in lines
    assert any("osv.bootchart.vfs_initialized" in line for line in lines)
    assert '"eventName":"osv.boot"' in out.read_text()
    unknown = subprocess.run(
        [sys.executable, "-m", "uniobs.cli", "parse", "-"], input="just\nsome text\n", capture_output=True, text=True
    )
    assert unknown.returncode == 0 and unknown.stdout.startswith("family: unknown")


def test_uniobs_parse_of_a_console_without_times_says_lines_not_ms() -> None:
    """A recorded console has no arrival times: phases between milestones are line positions, and
    `uniobs parse` says so instead of printing line differences as milliseconds (nanos-1.txt: only
    kernel_ready carries a guest stamp)."""
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "uniobs.cli", "parse", str(CONSOLES / "nanos-1.txt")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "milestone kernel_ready  line     4, guest 0.087239 s: nanos.network.up" in lines
    header = lines.index(next(line for line in lines if line.startswith("boot phases")))
    assert "has no times" in lines[header]
    phases = [line for line in lines[header + 1 :] if line.startswith("  ")]
    assert phases[0].split() == ["boot->kernel_ready", "line", "2", "->", "4", "(2", "lines", "later)"]
    assert not any(" ms" in line for line in phases)
