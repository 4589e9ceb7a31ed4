"""Cold starts as traces: every `uniobs run` launch is one trace, phase by phase, continued
inside the guest through the W3C traceparent — on real QEMU, real runc, the real Solo5 hvt tender
and virtio kernels, and a real Nanos image (../shared/unikernels, skipped visibly where absent).

Whatever the guest, the phases of a cold start are one chain from the exec to the moment it was
ready: contiguous, none of 0 ns (a phase whose bounds were not observed is absent), and their
durations add up to the cold start exactly. No timing is asserted."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from otlpfile import Signals
from support import (
    ROOT,
    UNIKERNELS,
    free_port,
    requires_kvm,
    requires_node,
    requires_qemu,
    requires_root,
    requires_runc,
    requires_shared,
    requires_solo5,
)

from uniobs.coldstart.trace import UNATTRIBUTED, ColdStart, traceparent
from uniobs.plugin import CONTAINER_PHASES, PROCESS_PHASES

KERNEL = ROOT / "examples" / "minikernel" / "build" / "minikernel.elf"
CONTAINER = ROOT / "examples" / "hello-node" / "container"
QEMU = ["qemu-system-x86_64", "-machine", "microvm", "-accel", "tcg", "-m", "64", "-nodefaults", "-nographic",
        "-no-reboot", "-serial", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-kernel", str(KERNEL)]  # fmt: skip


SOLO5 = UNIKERNELS / "solo5"
NANOS = UNIKERNELS / "nanos"


def uniobs_run(out: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "uniobs.cli", "run", "--quiet", "--interval", "0.2", "--export", f"file:{out}", *args],
        capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def trace(signals: Signals) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """(root span, host phase spans in start order, guest spans)."""
    spans = signals.spans()
    [root] = [s for s in spans if s["name"] == "coldstart"]
    phases = sorted((s for s in spans if s["name"].startswith("coldstart.")), key=lambda s: int(s["startTimeUnixNano"]))
    guest = [s for s in spans if not s["name"].startswith("coldstart")]
    return root, phases, guest


def check_consistent(root: dict[str, Any], phases: list[dict[str, Any]]) -> None:
    """Every phase in the root's trace and time; the cold start's phases (all but the first
    request) one contiguous chain from the exec, none of 0 ns, each cut at two named marks."""
    start, end = int(root["startTimeUnixNano"]), int(root["endTimeUnixNano"])
    assert root["attributes"]["faas.coldstart"] is True and "parentSpanId" not in root
    for phase in phases:
        assert phase["traceId"] == root["traceId"] and phase["parentSpanId"] == root["spanId"]
        p_start, p_end = int(phase["startTimeUnixNano"]), int(phase["endTimeUnixNano"])
        assert start <= p_start < p_end <= end  # within the root; none of 0 ns (none fabricated)
        assert phase["attributes"]["uniobs.coldstart.from"] and phase["attributes"]["uniobs.coldstart.to"]
    chain = [p for p in phases if p["name"] != "coldstart.first_request"]
    if chain:
        assert int(chain[0]["startTimeUnixNano"]) == start  # from the exec
    for a, b in itertools.pairwise(chain):  # contiguous: no gap, no overlap
        assert a["endTimeUnixNano"] == b["startTimeUnixNano"]  # (two marks of one instant: a phase absent between)


def check_adds_up(signals: Signals, *, unattributed: bool = False) -> list[dict[str, Any]]:
    """A cold start that completed: its phases add up to it exactly (exec -> ready, as
    faas.init_duration says), with no unattributed stretch unless `unattributed`. Returns them."""
    root, phases, _ = trace(signals)
    assert root.get("status", {}).get("code") != 2, root["status"]
    check_consistent(root, phases)
    chain = [p for p in phases if p["name"] != "coldstart.first_request"]
    total = int(chain[-1]["endTimeUnixNano"]) - int(root["startTimeUnixNano"])
    assert sum(int(p["endTimeUnixNano"]) - int(p["startTimeUnixNano"]) for p in chain) == total
    ended_by = root["attributes"]["uniobs.coldstart.ended_by"]
    if chain[-1]["attributes"]["uniobs.coldstart.to"] != ended_by:
        # the mark that ended it arrived with the previous one (same read): that phase has no
        # measurable length and is left out (never a 0), so the chain ends at the same instant one
        # mark earlier (the instant is checked against faas.init_duration below)
        assert ended_by not in [p["attributes"]["uniobs.coldstart.to"] for p in chain]
    init = signals.points("faas.init_duration")[-1][2]
    assert init["count"] == "1" and abs(float(init["sum"]) * 1e9 - total) < 1_000  # the same interval (float seconds)
    names = [p["attributes"]["uniobs.phase"] for p in chain]
    assert (UNATTRIBUTED in names) == unattributed, names
    recorded = [a["uniobs.phase"] for _, a, _ in signals.points("uniobs.coldstart.phase.duration")]
    assert set(names) <= set(recorded)
    return chain


def phase_names(chain: list[dict[str, Any]]) -> list[str]:
    return [p["attributes"]["uniobs.phase"] for p in chain]


def cuts(cs: ColdStart, until_ns: int | None = None) -> list[tuple[str, int, int]]:
    return [(c.phase, c.start_ns, c.end_ns) for c in cs.timeline(until_ns)]


def test_phases_are_cut_only_where_markers_exist() -> None:
    cs = ColdStart("unikernel", "qemu")
    cs.mark("exec", 0)
    cs.mark("first_byte", 40)
    cs.mark("kernel_ready", 50)
    cs.mark("kernel_ready", 99)  # only the first occurrence counts
    # no QMP-ready mark: no vmm_spawn phase; not ready yet: cut up to the last mark seen
    assert cuts(cs, 500) == [("guest_load", 0, 40), ("guest_boot", 40, 50)]
    [root, load, boot] = cs.spans(end_ns=500)
    assert root.error == "the function never became ready" and root.end_ns == 500
    assert (boot.start_ns, boot.end_ns, boot.parent_span_id) == (40, 50, root.span_id)
    assert dict(load.attributes)["uniobs.coldstart.from"] == "exec"
    cs.mark("app_start", 55)
    cs.mark("ready", 70)
    root = cs.spans(end_ns=500)[0]
    assert root.error is None and root.end_ns == 70
    assert dict(root.attributes)["uniobs.coldstart.ended_by"] == "ready"
    assert [s.metric for s in cs.samples()].count("faas.init_duration") == 1
    assert cs.traceparent == traceparent(cs.trace_id, cs.root_span_id)
    assert len(cs.traceparent) == 55 and cs.traceparent.startswith("00-") and cs.traceparent.endswith("-01")


def test_the_phases_cover_the_cold_start_contiguously() -> None:
    cs = ColdStart("unikernel", "qemu", probe=True)
    for mark, t in (("exec", 1000), ("qmp_ready", 1030), ("first_byte", 1400), ("kernel_ready", 1400),
                    ("app_start", 2500), ("ready", 2650), ("probe_ok", 2700), ("request_sent", 2701),
                    ("request_done", 2800)):  # fmt: skip
        cs.mark(mark, t)
    cs.guest_clock(1400, 0.000000300)  # Nanos' "[0.000000300] en1: assigned ...": its clock read 0 at 1100
    cs.guest_clock(2900, 0.000001700)  # a later stamp does not move the zero later
    chain = cs.timeline()
    assert [(c.phase, c.start_ns, c.end_ns) for c in chain] == [
        ("vmm_spawn", 1000, 1030), ("guest_load", 1030, 1100), ("guest_boot", 1100, 1400),
        ("runtime_load", 1400, 2500), ("app_init", 2500, 2650), ("readiness", 2650, 2700),
    ]  # fmt: skip
    assert sum(c.duration_ns for c in chain) == cs.ready_ns() - cs.marks["exec"] == 1700  # type: ignore[operator]
    assert (chain[2].start_mark, chain[2].end_mark) == ("guest_start", "kernel_ready")
    assert cs.phases()[-1] == ("first_request", 2701, 2800)  # after the cold start, not in its chain
    # without the guest's stamp, the first byte and kernel_ready are one line: guest_boot is
    # absent (not 0), and nothing is unattributed
    cs.guest_zero_ns = None
    assert [c.phase for c in cs.timeline()] == ["vmm_spawn", "guest_load", "runtime_load", "app_init", "readiness"]
    assert all(c.duration_ns > 0 for c in cs.timeline())


def test_a_stretch_no_observed_phase_explains_is_unattributed_and_said() -> None:
    cs = ColdStart("unikernel", "qemu")
    for mark, t in (("exec", 0), ("qmp_ready", 20), ("first_byte", 100), ("kernel_ready", 150), ("ready", 400)):
        cs.mark(mark, t)  # no app_start: runtime_load and app_init cannot be told apart
    chain = cs.timeline()
    assert [(c.phase, c.start_ns, c.end_ns) for c in chain][-1] == (UNATTRIBUTED, 150, 400)
    assert chain[-1].covers == ("runtime_load", "app_init")
    root, *spans = cs.spans(end_ns=999)
    assert dict(root.attributes)["uniobs.coldstart.unattributed_s"] == 250e-9
    assert dict(spans[-1].attributes)["uniobs.coldstart.covers"] == "runtime_load, app_init"
    assert sum(c.duration_ns for c in chain) == 400


def test_marks_that_contradict_a_later_one_are_not_used() -> None:
    cs = ColdStart("unikernel", "qemu", probe=True)
    # QMP answered only after the guest had printed; the probe got through before the "ready" line
    for mark, t in (("exec", 0), ("first_byte", 30), ("qmp_ready", 45), ("kernel_ready", 60), ("app_start", 70),
                    ("probe_ok", 90), ("ready", 95)):  # fmt: skip
        cs.mark(mark, t)
    assert cuts(cs) == [("guest_load", 0, 30), ("guest_boot", 30, 60), ("runtime_load", 60, 70), ("app_init", 70, 90)]
    assert cs.ready_ns() == 90  # readiness is the probe's


def test_a_run_to_completion_function_completed_its_cold_start() -> None:
    cs = ColdStart("unikernel", "solo5-hvt")
    for mark, t in (("exec", 0), ("first_byte", 6), ("kernel_ready", 14), ("exit", 15)):
        cs.mark(mark, t)
    assert cs.ready_ns() is None
    assert cs.complete(exit_ns=18) == "kernel_ready"  # its last boot milestone, not its exit
    assert cuts(cs) == [("guest_load", 0, 6), ("guest_boot", 6, 14)]
    root = cs.spans(end_ns=18)[0]
    assert root.error is None and root.end_ns == 14
    assert dict(root.attributes)["uniobs.coldstart.run_to_completion"] is True
    assert ("error.type", "not_ready") not in [a for s in cs.samples() for a in s.attributes]
    # a process with no milestone at all: its cold start is its whole run, unattributed
    process = ColdStart("process", "process", phases_spec=PROCESS_PHASES)
    process.mark("exec", 0)
    assert process.complete(exit_ns=5) == "exited"
    assert [(c.phase, c.covers) for c in process.timeline()] == [(UNATTRIBUTED, ("runtime_load", "app_init"))]


def test_container_phases_add_up_from_the_runtime_s_own_marks() -> None:
    cs = ColdStart("container", "runc", phases_spec=CONTAINER_PHASES)
    for mark, t in (("exec", 0), ("created", 40), ("started", 45), ("app_start", 80), ("ready", 120)):
        cs.mark(mark, t)
    assert cuts(cs) == [("runtime_create", 0, 40), ("runtime_start", 40, 45), ("runtime_load", 45, 80),
                        ("app_init", 80, 120)]  # fmt: skip


@pytest.mark.qemu
@requires_qemu
def test_unikernel_cold_start_trace_continues_inside_the_guest(tmp_path: Path) -> None:
    subprocess.run(["make", "-s", "-C", str(KERNEL.parent.parent)], check=True)
    out = tmp_path / "t.jsonl"
    result = uniobs_run(out, "--propagate-trace", "--", *QEMU, "-append", "mode=ok work_ms=30 run_ms=600")
    assert result.returncode == 1, result.stderr
    signals = Signals(out)
    root, _, guest = trace(signals)
    chain = check_adds_up(signals)
    names = phase_names(chain)
    assert names[-1] == "app_init" and "guest_boot" in names and set(names) <= {
        "vmm_spawn", "guest_load", "guest_boot", "runtime_load", "app_init"
    }  # fmt: skip
    # its lines carry the guest's clock (t=): guest_boot starts where that clock read 0
    boot = next(p for p in chain if p["attributes"]["uniobs.phase"] == "guest_boot")
    assert boot["attributes"]["uniobs.coldstart.from"] == "guest_start"
    # asked to (--propagate-trace), uniobs put the traceparent on the kernel command line: the
    # guest's spans are in the host's trace
    by_name = {s["name"]: s for s in guest}
    assert {"init", "work"} <= set(by_name)
    assert all(s["traceId"] == root["traceId"] for s in guest)
    assert by_name["init"]["parentSpanId"] == root["spanId"]
    assert by_name["work"]["parentSpanId"] == by_name["init"]["spanId"]
    # the same data as metrics
    assert signals.last("faas.coldstarts", uniobs_shrinkwrap="unikernel") == 1
    init = signals.points("faas.init_duration")[-1][2]
    assert init["count"] == "1" and init["unit"] == "s"
    phase_points = {a["uniobs.phase"] for _, a, _ in signals.points("uniobs.coldstart.phase.duration")}
    assert phase_points == set(names)


@pytest.mark.qemu
@requires_qemu
def test_a_boot_that_fails_ends_the_trace_with_an_error(tmp_path: Path) -> None:
    subprocess.run(["make", "-s", "-C", str(KERNEL.parent.parent)], check=True)
    out = tmp_path / "t.jsonl"
    result = uniobs_run(out, "--", *QEMU, "-append", "mode=panic")
    assert result.returncode == 7
    root, phases, _ = trace(Signals(out))
    assert root["status"]["code"] == 2  # ERROR
    assert "exited before ready" in root["status"]["message"] or "crash" in root["status"]["message"]
    check_consistent(root, phases)


@pytest.mark.qemu
@requires_qemu
def test_a_console_probe_marks_readiness(tmp_path: Path) -> None:
    subprocess.run(["make", "-s", "-C", str(KERNEL.parent.parent)], check=True)
    out = tmp_path / "t.jsonl"
    result = uniobs_run(out, "--ready", "console:heartbeat", "--", *QEMU, "-append", "mode=ok run_ms=800 beat_ms=100")
    assert result.returncode == 1, result.stderr
    signals = Signals(out)
    chain = check_adds_up(signals)
    assert phase_names(chain)[-1] in ("readiness", "app_init")  # the probe may see the line that said ready


@pytest.mark.containers
@requires_runc
@requires_root
@requires_node
def test_container_cold_start_with_readiness_and_first_request(tmp_path: Path) -> None:
    subprocess.run(["make", "-s", "-C", str(CONTAINER)], check=True, capture_output=True)
    port, out = free_port(), tmp_path / "t.jsonl"
    config = json.loads((CONTAINER / "build" / "bundle-hostnet" / "config.json").read_text())
    config["root"]["path"] = str(CONTAINER / "build" / "bundle" / "rootfs")
    script = "require('/app/app.js'); setTimeout(() => process.exit(0), 1500)"
    config["process"]["args"] = ["/usr/bin/node", "-e", script]
    config["process"]["env"] = [*config["process"].get("env", []), f"PORT={port}"]
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps(config))
    url = f"http://127.0.0.1:{port}/"
    result = uniobs_run(
        out, "--ready", f"tcp:127.0.0.1:{port}", "--request", url, "--",
        "runc", "run", "--bundle", str(bundle), f"uniobs-cs-{os.getpid()}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    signals = Signals(out)
    root, phases, guest = trace(signals)
    names = phase_names(check_adds_up(signals))
    assert names[:4] == ["runtime_create", "runtime_start", "runtime_load", "app_init"]
    assert phases[-1]["name"] == "coldstart.first_request"
    # TRACEPARENT reached the container: the function's own span is in the host's trace
    [listen] = [s for s in guest if s["name"] == "app.listen"]
    assert listen["traceId"] == root["traceId"] and listen["parentSpanId"] == root["spanId"]
    assert root["attributes"]["uniobs.shrinkwrap"] == "container"


# --- real unikernels: the phases of each add up to its cold start ------------------------------


@requires_solo5
@requires_kvm
def test_solo5_hvt_hello_runs_to_completion_and_its_phases_add_up(tmp_path: Path) -> None:
    """`test_hello` exits 0 ~12 ms after the exec, before anything could probe it: a completed run,
    not a failed cold start. It ends at kernel_ready (Solo5's last line before solo5_app_main())."""
    out = tmp_path / "t.jsonl"
    result = uniobs_run(out, "--", str(SOLO5 / "solo5-hvt"), str(SOLO5 / "tests" / "test_hello.hvt"), "Hello_Solo5")
    assert result.returncode == 0, result.stderr
    signals = Signals(out)
    assert "SUCCESS" in signals.console()
    chain = check_adds_up(signals)
    assert phase_names(chain) == ["guest_load", "guest_boot"]  # the tender has no ready mark of its own
    root, _, _ = trace(signals)
    assert root["attributes"]["uniobs.coldstart.ended_by"] == "kernel_ready"
    assert root["attributes"]["uniobs.coldstart.run_to_completion"] is True
    assert signals.last("faas.coldstarts", uniobs_shrinkwrap="unikernel") == 1
    assert not [a for _, a, _ in signals.points("faas.coldstarts") if "error.type" in a]
    [record] = [e for e in signals.events() if e["event"] == "uniobs.coldstart"]
    assert record["severity"] == "INFO" and "ran to completion" in record["body"]


@pytest.mark.qemu
@requires_qemu
@requires_shared("solo5/tests/test_hello.virtio")
def test_solo5_virtio_hello_phases_add_up(tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    result = uniobs_run(
        out, "--", "qemu-system-x86_64", "-accel", "tcg", "-cpu", "Westmere", "-m", "128", "-nodefaults", "-no-acpi",
        "-display", "none", "-serial", "stdio", "-device", "isa-debug-exit",
        "-kernel", str(SOLO5 / "tests" / "test_hello.virtio"), "-append", "Hello_Solo5",
    )  # fmt: skip
    assert result.returncode == 83, result.stderr  # Solo5's virtio target always writes 41
    signals = Signals(out)
    chain = check_adds_up(signals)
    # (vmm_spawn is absent when QEMU's QMP socket answered only after the guest's first byte)
    # (guest_boot is left out, never 0, when the banner and kernel_ready arrived in one read)
    assert phase_names(chain) in (
        ["vmm_spawn", "guest_load", "guest_boot"], ["guest_load", "guest_boot"], ["vmm_spawn", "guest_load"],
        ["guest_load"],
    )  # fmt: skip
    assert signals.events()[-1]["resource"]["service.name"] == "test_hello"


def build_nanos_node_image(tmp_path: Path, name: str = "hello") -> Path:
    """The talk's function on Nanos (../shared/unikernels/nanos/README.md): Debian's node, its `ldd`
    libraries and examples/hello-node/app.js, run by a wrapper that ends it 4 s after it starts."""
    (tmp_path / "run.js").write_text('require("/app.js");\nsetTimeout(() => process.exit(0), 4000);\n')
    ldd = subprocess.run(["ldd", "/usr/bin/node"], check=True, capture_output=True, text=True).stdout
    libs = " ".join(f"{Path(lib).name}:(contents:(host:{lib}))" for lib in re.findall(r"=> (/\S+)", ldd))
    app = ROOT / "examples" / "hello-node" / "app.js"
    manifest = (
        f"(children:(node:(contents:(host:/usr/bin/node)) app.js:(contents:(host:{app}))"
        f" run.js:(contents:(host:{tmp_path / 'run.js'}))"
        f" lib:(children:(x86_64-linux-gnu:(children:({libs}))))"
        " lib64:(children:(ld-linux-x86-64.so.2:(contents:(host:/lib64/ld-linux-x86-64.so.2))))"
        " etc:(children:(ld.so.cache:(contents:(host:/etc/ld.so.cache)))) proc:(children:()))"
        " program:/node arguments:[node /run.js] environment:(PORT:8002))"
    )
    image = tmp_path / f"{name}.img"
    subprocess.run(
        [str(NANOS / "mkfs"), "-b", str(NANOS / "boot.img"), "-k", str(NANOS / "kernel.img"), "-t", "(debug_exit:t)",
         str(image)], input=manifest, text=True, check=True, capture_output=True,
    )  # fmt: skip
    return image


@pytest.mark.qemu
@pytest.mark.slow
@requires_qemu
@requires_node
@requires_shared("nanos/mkfs", "nanos/kernel.img", "nanos/boot.img")
def test_nanos_node_phases_add_up_on_the_guest_s_own_clock(tmp_path: Path) -> None:
    """Nanos' first console line (`[0.3] en1: assigned 10.0.2.15`) is also its kernel_ready: its
    uptime stamp, not the line's arrival, says when the guest started, so guest_boot is measured
    (not 0), and the ~1 s from kernel_ready to the program's first line is runtime_load."""
    image = build_nanos_node_image(tmp_path)
    port, out = free_port(), tmp_path / "t.jsonl"
    result = uniobs_run(
        out, "--ready", f"http://127.0.0.1:{port}/=200", "--request", f"http://127.0.0.1:{port}/", "--",
        "qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-cpu", "max", "-m", "1G", "-display", "none",
        "-serial", "stdio", "-no-reboot", "-device", "isa-debug-exit",
        "-drive", f"if=none,id=hd0,format=raw,file={image}", "-device", "virtio-scsi-pci,id=scsi0",
        "-device", "scsi-hd,bus=scsi0.0,drive=hd0", "-device", "virtio-net-pci,netdev=n0",
        "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:8002", "-device", "virtio-rng-pci",
        timeout=240,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr.decode(errors="replace")[-3000:]  # debug_exit: (0 << 1) | 1
    signals = Signals(out)
    chain = check_adds_up(signals)
    names = phase_names(chain)
    # vmm_spawn is absent when QEMU's QMP socket answered only after the guest's clock had started
    # guest_boot is the guest's own clock; when QEMU answered QMP only after that clock started (a
    # loaded host), its start conflicts with vmm_spawn's end and it is left out, never made 0
    after = [n for n in names[names.index("guest_load") :] if n != "guest_boot"][:3]
    assert after == ["guest_load", "runtime_load", "app_init"], names
    assert "guest_boot" in names or "vmm_spawn" in names
    assert names[-1] in ("readiness", "app_init")  # the probe may beat the line that says ready
    if "guest_boot" in names:  # measured on the guest's own clock, from its zero to kernel_ready
        boot = chain[names.index("guest_boot")]
        assert (boot["attributes"]["uniobs.coldstart.from"], boot["attributes"]["uniobs.coldstart.to"]) == (
            "guest_start",
            "kernel_ready",
        )
    root, phases, _ = trace(signals)
    assert root["attributes"]["uniobs.guest.kernel_ready_s"] > 0  # the stamp the guest printed
    assert phases[-1]["name"] == "coldstart.first_request"
    # booted from a disk image: named after it, not after QEMU
    assert signals.events()[-1]["resource"]["service.name"] == "hello"
