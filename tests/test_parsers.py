"""The boot-milestone parsers (uniobs/parsers) on real console transcripts, fuzzed, and live.

Every transcript in tests/testdata/consoles (copied from ../shared/consoles; each file's first
line names its public source) is replayed through the installed parsers: the family detected,
which families recognise its lines (exactly its own, or none), and the milestones with the line
each comes from are checked against tests/testdata/consoles/expected.json; a transcript added
without an entry there fails (`pytest --update-golden` writes it, for review).
Then one test per transcript checks the values printed there. Formats no transcript shows are
checked on lines written after the source code cited in each parser's docstring (marked
"derived"); the Linux microVM is checked on a real capture and, when QEMU is here, booted live.
"""

from __future__ import annotations

import json
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

from uniobs.guest.parsers.detect import (
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
from uniobs.model import Severity
from uniobs.plugin import ConsoleLine, ConsoleParser, GuestEvent, Milestone
from uniobs.registry import Registry

CONSOLES = ROOT / "tests" / "testdata" / "consoles"
EXPECTED = CONSOLES / "expected.json"  # per transcript: the family detected, and each milestone's line
FAMILIES = {"solo5", "unikraft", "osv", "nanos", "includeos", "hermit", "linux", "firecracker"}

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


def test_every_expectation_has_a_transcript() -> None:
    names = {p.name for p in transcripts()}
    assert names, f"no transcripts in {CONSOLES}"
    assert set(json.loads(EXPECTED.read_text())) <= names, f"entries of {EXPECTED.name} without a transcript"


@pytest.mark.parametrize("path", transcripts(), ids=lambda p: p.name)
def test_transcript_family_and_milestones(path: Path, parsers: dict[str, Any], golden: Golden) -> None:
    lines = read_console(path)
    assert lines[0].text.startswith("# source: ")
    res = replay(path, parsers)
    milestones = {m.value: line_of(ev) for m, ev in res.milestones.items()}
    golden.check_entry(EXPECTED, path.name, {"family": res.family, "milestones": milestones})
    recognising = {
        name for name, cls in parser_classes(parsers).items() if any(cls().recognises(line) for line in lines)
    }
    assert recognising == ({res.family} if res.family else set())
    # each milestone is reported once per stream
    reported = [ev.milestone for ev in res.events if ev.milestone is not None]
    assert len(reported) == len(set(reported))
    # guest-reported timings say so
    for ev in res.events:
        if ev.guest_time_s is not None or ev.duration_s is not None:
            assert ("uniobs.guest_reported", ev.name != "firecracker.api.duration") in ev.attributes


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
    (err,) = named(res, "unikraft.error")
    assert err.guest_time_s == 69.561104


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
    assert attrs(res.milestones[B]) == {"firecracker.version": "v1.2.0-165-g81e771a2-dirty"}
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
            events = parser.parse(line)
            check_events(events)
            milestones += [ev.milestone for ev in events if ev.milestone is not None]
        assert len(milestones) == len(set(milestones)), parser.family


def adversarial_lines() -> Iterator[str]:
    """16 KiB lines (the capture's default cap) built to provoke regex backtracking."""
    n = 16 * 1024
    for unit in ["[", " ", "\t", "0", "0.", "[ ", "] ", "a ", ": ", "(+", "[0]", "Solo5: ", "|", "@ ", "<", "*"]:
        yield (unit * (n // len(unit)))[:n]
    for prefix in ["Solo5: trap: ", "[    0.000000] Info: [lib", "[0][INFO] ", "OSv v", "\t" + "x" * 40 + ": 1"]:
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
