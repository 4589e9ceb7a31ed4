"""The reports of `uniobs compare`: units, winners, missing figures, escaping, diff, and the HTML page
rendered by a real headless Chromium, its screenshot decoded here with the standard library."""

from __future__ import annotations

import copy
import os
import re
import shutil
import struct
import subprocess
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from uniobs.compare import report
from uniobs.compare.results import ROWS, SCHEMA, ResultsError, load, validate

HOSTILE = "<script>alert(1)</script>"
MB = 1_000_000


def _timeline(start: int, plateau: int, points: int = 20, step_s: float = 0.5) -> list[list[float]]:
    """Memory rising from `start` to `plateau` over the first third, then flat with a little noise."""
    out = []
    for k in range(points):
        rise = min(1.0, k / (points / 3))
        noise = ((k * 7919) % 13 - 6) * 40_000
        out.append([round(k * step_s, 3), int(start + (plateau - start) * rise + noise)])
    return out


INVOCATION_METHOD = "From the exported invocation spans and REPORT records of each launch's instance."


def _invocations(cold: tuple[float, float], warm: tuple[float, float], resume: float, memory: tuple[int, int],
                 rate: float, load: tuple[float, float, float]) -> dict[str, Any]:  # fmt: skip
    """An `invocations` block as compare writes it (the figures; runs and windows abridged)."""
    return {
        "cold_p50_s": cold[0], "cold_p95_s": cold[1], "warm_p50_s": warm[0], "warm_p99_s": warm[1],
        "warm_invocations": 100, "resume_p50_s": resume, "resume_host_p50_s": resume / 4,
        "max_memory_used_bytes": memory[0], "max_memory_used_max_bytes": memory[1],
        "load_invocations": 1000, "load_errors": 0, "load_throughput_per_s": rate,
        "load_p50_s": load[0], "load_p90_s": load[1], "load_p99_s": load[2],
        "runs": [], "windows": [], "method": INVOCATION_METHOD,
    }  # fmt: skip


def make_results() -> dict[str, Any]:
    """A comparison like the talk's: Node.js hello world, a unikernel on QEMU (TCG) vs Alpine under runc."""
    unikernel = {
        "shrinkwrap": "unikernel",
        "runtime": "qemu",
        "label": "unikernel (QEMU microvm, TCG)",
        "image": {
            "files": [
                {"path": "build/vmlinuz", "bytes": 8_100_000},
                {"path": "build/initrd.cpio", "bytes": 92_900_000},
            ],
            "bytes": 101_000_000,
            "compressed_bytes": 35_400_000,
            "compression": "gzip -6",
            "method": "Sum of the files QEMU boots (kernel and initrd), stat(2) st_size; compressed with gzip -6.",
        },
        "coldstart": {
            "samples_s": [2.91, 3.12, 2.87, 3.40, 2.95],
            "median_s": 2.95,
            "p95_s": 3.34,
            "min_s": 2.87,
            "max_s": 3.40,
            "failures": 0,
            "phases": {
                "vmm_spawn": {"median_s": 0.041, "samples_s": [0.040, 0.041, 0.043, 0.039, 0.041]},
                "guest_boot": {"median_s": 2.31, "samples_s": [2.30, 2.31, 2.29, 2.60, 2.33]},
                "app_init": {"median_s": 0.52, "samples_s": [0.50, 0.52, 0.51, 0.62, 0.53]},
                "readiness": {"median_s": 0.012, "samples_s": [0.011, 0.012, 0.012, 0.013, 0.012]},
                "first_request": {"median_s": 0.018, "samples_s": [0.017, 0.018, 0.019, 0.018, 0.018]},
            },
            "method": "Monotonic clock from the exec of QEMU to the first HTTP 200 from the guest's port.",
        },
        "memory": {
            "idle": {"rss_bytes": 212 * MB, "pss_bytes": 205 * MB, "cgroup_bytes": None, "runtime_rss_bytes": None},
            "load": {"rss_bytes": 231 * MB, "pss_bytes": 224 * MB, "cgroup_bytes": None, "runtime_rss_bytes": None},
            "timeline": _timeline(30 * MB, 212 * MB),
            "timeline_metric": "QEMU process RSS (/proc/PID/status VmRSS)",
            "method": "/proc/PID/smaps_rollup of the QEMU process, 1 s after ready and at the end of the load.",
        },
        "cpu": {"idle_percent": 3.4, "load_percent": 97.2, "method": "utime+stime of QEMU over 5 s, % of one CPU."},
        "load": {"requests": 2000, "errors": 0, "duration_s": 5.0, "rps": 400.0},
        "attack_surface": {
            "executables": 1,
            "shared_libraries": 0,
            "shell": False,
            "setuid_files": 0,
            "listening_sockets": 1,
            "syscalls": None,
            "seccomp_profile_syscalls": None,
            "host_devices": ["/dev/net/tun"],
            "method": "Files in the initrd by ELF type and mode bits; sockets from the guest's /proc/net.",
        },
        "observability": {
            "metrics": ["process.cpu.time", "process.memory.usage", "uniobs.vm.vcpu.time"],
            "logs": 42,
            "trace_phases": ["vmm_spawn", "guest_boot", "app_init", "readiness", "first_request"],
            "guest_spans": 2,
            "guest_metrics": 1,
            "method": "What uniobs run exported: metric names, log records, trace spans.",
        },
        "invocations": _invocations(
            (3.4, 3.9), (0.012, 0.06), 0.004, (277 * MB, 309 * MB), 56.4, (0.032, 0.178, 0.293)
        ),
    }
    container = {
        "shrinkwrap": "container",
        "runtime": "runc",
        "label": "container (Alpine, runc)",
        "image": {
            "files": [{"path": "rootfs", "bytes": 92_000_000}],
            "bytes": 92_000_000,
            "compressed_bytes": 34_800_000,
            "compression": "gzip -6",
            "method": "du --apparent-size of the bundle's root file system; compressed with gzip -6 as a tar.",
        },
        "coldstart": {
            "samples_s": [0.108, 0.097, 0.121, 0.103, 0.099],
            "median_s": 0.103,
            "p95_s": 0.118,
            "min_s": 0.097,
            "max_s": 0.121,
            "failures": 1,
            "phases": {
                "runtime_create": {"median_s": 0.031, "samples_s": [0.03, 0.031, 0.033, 0.031, 0.029]},
                "runtime_start": {"median_s": 0.006, "samples_s": [0.006, 0.005, 0.007, 0.006, 0.006]},
                "app_init": {"median_s": 0.058, "samples_s": [0.057, 0.058, 0.06, 0.058, 0.056]},
                "readiness": {"median_s": 0.004, "samples_s": [0.004, 0.004, 0.005, 0.004, 0.004]},
                "first_request": {"median_s": 0.003, "samples_s": [0.003, 0.003, 0.004, 0.003, 0.003]},
            },
            "method": "Monotonic clock from the exec of runc run to the first HTTP 200 from the container's port.",
        },
        "memory": {
            "idle": {"rss_bytes": 44 * MB, "pss_bytes": 41 * MB, "cgroup_bytes": 51 * MB, "runtime_rss_bytes": 9 * MB},
            "load": {"rss_bytes": 58 * MB, "pss_bytes": 55 * MB, "cgroup_bytes": 66 * MB, "runtime_rss_bytes": 9 * MB},
            "timeline": _timeline(8 * MB, 51 * MB, points=19),
            "timeline_metric": "cgroup memory.current",
            "method": "memory.current of the container's cgroup v2; node's smaps_rollup for RSS/PSS.",
        },
        "cpu": {"idle_percent": 0.3, "load_percent": 41.5, "method": "cpu.stat usage_usec of the cgroup over 5 s."},
        "load": {"requests": 2000, "errors": 0, "duration_s": 5.0, "rps": 400.0},
        "attack_surface": {
            "executables": 21,
            "shared_libraries": 12,
            "shell": True,
            "setuid_files": 1,
            "listening_sockets": 1,
            "syscalls": 268,
            "seccomp_profile_syscalls": 352,
            "host_devices": [],
            "method": "Files in the root file system by ELF type and mode bits; runc's default seccomp profile.",
        },
        "observability": {
            "metrics": ["container.cpu.time", "container.memory.usage"],
            "logs": 12,
            "trace_phases": ["runtime_create", "runtime_start", "app_init", "readiness", "first_request"],
            "guest_spans": 1,
            "guest_metrics": 0,
            "method": "What uniobs run exported: metric names, log records, trace spans.",
        },
        "invocations": _invocations(
            (1.28, 1.5), (0.0007, 0.006), 0.0057, (9_600_000, 10_100_000), 1193.7, (0.0012, 0.0023, 0.004)
        ),
    }
    return {
        "schema": SCHEMA,
        "function": {"name": "hello-node", "definition": "examples/hello-node/function.toml"},
        "host": {
            "hostname": "ci-runner-3",
            "kernel": "6.1.0-18-amd64",
            "cpus": 2,
            "memory_bytes": 8_330_000_000,
            "os": "Debian GNU/Linux 12 (bookworm)",
            "uniobs_version": "0.4.0",
            "accelerator": "tcg",
            "accelerator_reason": "/dev/kvm is absent",
            "versions": {"qemu": "7.2.15", "runc": "1.1.5", "node": "18.19.0"},
        },
        "runs_per_side": 5,
        "started_at": "2026-11-26T17:30:00Z",
        "duration_s": 81.2,
        "sides": [unikernel, container],
    }


# ---------------------------------------------------------------- units


@pytest.mark.parametrize(
    ("value", "unit", "text"),
    [
        (101_000_000, "bytes", "101 MB"),
        (92_000_000, "bytes", "92.0 MB"),
        (35_400_000, "bytes", "35.4 MB"),
        (1_234_567_890, "bytes", "1.23 GB"),
        (999_700, "bytes", "1.00 MB"),
        (4_500, "bytes", "4.50 kB"),
        (512, "bytes", "512 B"),
        (2.95, "s", "2.95 s"),
        (0.103, "s", "103 ms"),
        (0.0042, "s", "4.20 ms"),
        (0.9996, "s", "1.00 s"),
        (97.25, "%", "97.2 %"),
        (3, "%", "3.0 %"),
        (True, "bool", "yes"),
        (False, "bool", "no"),
        (["/dev/kvm", "/dev/net/tun"], "list", "2: /dev/kvm, /dev/net/tun"),
        ([], "list", "0"),
        (1234, "count", "1,234"),
        (None, "bytes", "—"),
    ],
)
def test_units(value: Any, unit: str, text: str) -> None:
    assert report.fmt_value(value, unit) == text


# ---------------------------------------------------------------- the table


def _cells(table: str, label: str) -> list[str]:
    """The cells of the row whose first column is `label` (columns are 2+ spaces apart)."""
    for line in table.splitlines():
        if line.startswith(label + "  "):
            return re.split(r"\s{2,}", line.strip())[1:]
    raise AssertionError(f"no row {label!r} in\n{table}")


EXPECTED = {  # label: (unikernel cell, container cell); ★ marks the winner
    "image size on disk": ("101 MB", "92.0 MB ★"),
    "image size, compressed": ("35.4 MB", "34.8 MB ★"),
    "cold start to ready, median": ("2.95 s", "103 ms ★"),
    "cold start to ready, p95": ("3.34 s", "118 ms ★"),
    "memory idle: VMM/process RSS": ("212 MB", "44.0 MB ★"),
    "memory idle: VMM/process PSS": ("205 MB", "41.0 MB ★"),
    "memory idle: cgroup": ("—", "51.0 MB"),  # one figure: no winner
    "memory under load: RSS": ("231 MB", "58.0 MB ★"),
    "memory under load: cgroup": ("—", "66.0 MB"),
    "CPU idle": ("3.4 %", "0.3 % ★"),
    "CPU under load": ("97.2 %", "41.5 % ★"),
    "cold request (sent → response), p50": ("3.40 s", "1.28 s ★"),
    "cold request (sent → response), p95": ("3.90 s", "1.50 s ★"),
    "warm invocation, p50": ("12.0 ms", "0.700 ms ★"),
    "warm invocation, p99": ("60.0 ms", "6.00 ms ★"),
    "request resuming from pause, p50": ("4.00 ms ★", "5.70 ms"),
    "max memory used per invocation, median": ("277 MB", "9.60 MB ★"),
    "max memory used per invocation, max": ("309 MB", "10.1 MB ★"),
    "load: invocations per second": ("56.4/s", "1190/s ★"),  # higher is better
    "load: invocation latency p50": ("32.0 ms", "1.20 ms ★"),
    "load: invocation latency p90": ("178 ms", "2.30 ms ★"),
    "load: invocation latency p99": ("293 ms", "4.00 ms ★"),
    "load: invocation errors": ("0", "0"),  # a tie
    "executables in the image": ("1 ★", "21"),
    "shared libraries in the image": ("0 ★", "12"),
    "a shell in the image": ("no ★", "yes"),
    "setuid/setgid files": ("0 ★", "1"),
    "listening sockets": ("1", "1"),  # a tie: no winner
    "syscalls the VMM/runtime may make": ("—", "268"),
    "host devices exposed": ("1: /dev/net/tun", "0 ★"),
    "observability: signals obtained": ("9 ★", "8"),
}


def test_every_row_with_its_winner() -> None:
    table = report.terminal_table(make_results(), color=False)
    assert {label for _, label, _, _ in ROWS} == set(EXPECTED)
    for label, expected in EXPECTED.items():
        assert tuple(_cells(table, label)) == expected, label
    assert "\x1b" not in table


def test_header_and_footer() -> None:
    table = report.terminal_table(make_results(), color=False)
    assert "hello-node" in table and "ci-runner-3" in table
    assert "TCG (/dev/kvm is absent)" in table
    assert "qemu 7.2.15" in table and "runc 1.1.5" in table and "uniobs 0.4.0" in table
    assert "5 per side" in table
    assert "cgroup" in table and "measure different things" in table
    assert "container (Alpine, runc): 1 launch failed to become ready" in table
    # the phase breakdown: medians per side, "—" for a phase a side does not have
    assert _cells(table, "guest_boot") == ["2.31 s", "—"]
    assert _cells(table, "runtime_create") == ["—", "31.0 ms"]
    assert _cells(table, "app_init") == ["520 ms", "58.0 ms"]
    phases = [line.split()[0] for line in table.split("cold-start phases")[1].splitlines()[3:] if line.strip()]
    assert phases == [
        "vmm_spawn",
        "guest_boot",
        "runtime_create",
        "runtime_start",
        "app_init",
        "readiness",
        "first_request",
    ]


def test_color_marks_winners_green() -> None:
    table = report.terminal_table(make_results(), color=True)
    line = next(line for line in table.splitlines() if line.startswith("image size on disk"))
    assert "\x1b[32m\x1b[1m" in line and "92.0 MB ★\x1b[0m" in line
    assert (
        "\x1b[32m" not in line.split("92.0 MB")[0].split("image size on disk")[1].replace("\x1b[32m\x1b[1m", "", 1)[:-1]
    )


def test_missing_figures_and_rows() -> None:
    results = make_results()
    del results["sides"][1]["memory"]["load"]  # a whole block missing on one side
    for side in results["sides"]:
        side["attack_surface"]["syscalls"] = None  # a row nobody measured: not shown at all
        side["image"]["bytes"] = None if side["shrinkwrap"] == "unikernel" else side["image"]["bytes"]
    del results["sides"][0]["observability"]
    table = report.terminal_table(results, color=False)
    assert _cells(table, "memory under load: RSS") == ["231 MB", "—"]
    assert _cells(table, "image size on disk") == ["—", "92.0 MB"]  # one figure: no ★
    assert _cells(table, "observability: signals obtained") == ["—", "8"]
    assert "syscalls the VMM/runtime may make" not in table
    md = report.markdown(results)
    assert "| memory under load: RSS | 231 MB | — |" in md
    assert '<td class="missing">—</td>' in report.html(results)


def test_a_tie_has_no_winner() -> None:
    results = make_results()
    results["sides"][1]["image"]["compressed_bytes"] = results["sides"][0]["image"]["compressed_bytes"]
    assert _cells(report.terminal_table(results, color=False), "image size, compressed") == ["35.4 MB", "35.4 MB"]


# ---------------------------------------------------------------- three sides, unknown figures, skipped sides

NO_TOOLCHAIN = "no Nanos toolchain on this host (set NANOS_DIR or install ops)"
NO_DUMP = "node.img: a Nanos disk image (2 TFS file systems), not read: no Nanos toolchain on this host to read it with"


def make_three() -> dict[str, Any]:
    """The seed function on three sides: Nanos, the Linux microVM and the container."""
    results = make_results()
    microvm, container = results["sides"]
    nanos = copy.deepcopy(microvm)
    nanos.update(side="nanos", label="unikernel (Nanos, QEMU q35, TCG)")
    nanos["image"].update(bytes=107_000_000, compressed_bytes=36_100_000)
    nanos["coldstart"].update(samples_s=[1.9, 2.0, 2.1, 1.95, 2.05], median_s=2.0, p95_s=2.09, min_s=1.9, max_s=2.1)
    nanos["coldstart"]["phases"] = {
        "vmm_spawn": {"median_s": 0.045, "samples_s": [0.045] * 5},  # each of the 5 cold starts
        "guest_boot": {"median_s": 0.35, "samples_s": [0.35] * 5},
        "app_init": {"median_s": 1.6, "samples_s": [1.6] * 5},
    }
    nanos["memory"]["idle"]["rss_bytes"] = 250 * MB
    nanos["memory"]["timeline"] = _timeline(20 * MB, 250 * MB, points=15)
    nanos["attack_surface"].update(executables=2, shared_libraries=7, shell=False, setuid_files=0)
    microvm["side"], container["side"] = "unikernel", "container"
    results["sides"] = [nanos, microvm, container]
    results["skipped"] = []
    return results


def test_three_sides_star_the_best_of_three() -> None:
    results = make_three()
    table = report.terminal_table(results, color=False)
    assert table.startswith("uniobs compare: hello-node, nanos vs unikernel vs container\n")
    assert _cells(table, "cold start to ready, median") == ["2.00 s", "2.95 s", "103 ms ★"]
    assert _cells(table, "executables in the image") == ["2", "1 ★", "21"]
    assert _cells(table, "shared libraries in the image") == ["7", "0 ★", "12"]
    assert _cells(table, "image size on disk") == ["107 MB", "101 MB", "92.0 MB ★"]
    assert _cells(table, "memory idle: VMM/process RSS") == ["250 MB", "212 MB", "44.0 MB ★"]
    assert _cells(table, "a shell in the image") == ["no ★", "no ★", "yes"]  # a tie of two: both
    assert _cells(table, "guest_boot") == ["350 ms", "2.31 s", "—"]
    md = report.markdown(results)
    head = "| figure | unikernel (Nanos, QEMU q35, TCG) | unikernel (QEMU microvm, TCG) | container (Alpine, runc) |"
    assert head in md
    assert "| executables in the image | 2 | **1** ★ | 21 |" in md
    page = report.html(results)
    assert page.count("<th>unikernel (Nanos, QEMU q35, TCG)</th>") == 2  # the figures and the phases
    assert page.count("<svg ") == 4
    for chart in (report.svg_coldstart(results), report.svg_waterfall(results), report.svg_image(results)):
        for label in ("Nanos, QEMU q35", "QEMU microvm", "Alpine, runc"):
            assert label in chart
    memory = report.svg_memory(results)
    assert memory.count("<polyline") == 3 and all(c in memory for c in report.SIDE_COLORS[:3])


def test_an_unknown_figure_is_said_so_and_wins_nothing() -> None:
    results = make_three()
    nanos = results["sides"][0]
    nanos["attack_surface"].update(executables=None, shared_libraries=None, shell=None, setuid_files=None)
    nanos["attack_surface"]["complete"] = False
    nanos["attack_surface"]["unknown"] = {
        k: NO_DUMP for k in ("executables", "shared_libraries", "shell", "setuid_files")
    }
    table = report.terminal_table(results, color=False)
    # unknown, not "—" (not measured) and never 0; and no side wins a row one side could not be measured in
    assert _cells(table, "executables in the image") == ["unknown", "1", "21"]
    assert _cells(table, "shared libraries in the image") == ["unknown", "0", "12"]
    assert _cells(table, "a shell in the image") == ["unknown", "no", "yes"]
    assert _cells(table, "setuid/setgid files") == ["unknown", "0", "1"]
    assert _cells(table, "cold start to ready, median") == ["2.00 s", "2.95 s", "103 ms ★"]  # other rows as before
    note = (
        "unikernel (Nanos, QEMU q35, TCG): unknown (executables in the image, shared libraries in the image, "
        f"a shell in the image, setuid/setgid files): {NO_DUMP}."
    )
    assert note in report.notes(results)
    assert "| executables in the image | unknown | 1 | 21 |" in report.markdown(results)
    assert '<td class="missing">unknown</td>' in report.html(results)
    # the diff shows it, and calls nothing a regression
    old = make_three()
    text = report.diff(old, results)
    line = next(x for x in text.splitlines() if x.startswith("| executables in the image | unikernel (Nanos"))
    assert "2 → —" in line and "REGRESSION" not in line


NO_PAUSE = "not paused: crun: pausing is done with runc/crun's own `pause` (not for this runtime)"


def test_invocation_rows_unknown_and_absent() -> None:
    """An invocation figure that could not be measured reads unknown, with its reason in the notes,
    and wins nothing; a file written before the invocation rows (no block) shows them as —."""
    results = make_three()
    container = results["sides"][2]
    container["invocations"].update(resume_p50_s=None, resume_host_p50_s=None)
    container["invocations"]["unknown"] = {"resume_p50_s": NO_PAUSE}
    del results["sides"][1]["invocations"]  # the microVM's results file predates them
    table = report.terminal_table(results, color=False)
    assert _cells(table, "request resuming from pause, p50") == ["4.00 ms", "—", "unknown"]
    assert _cells(table, "warm invocation, p50") == ["12.0 ms", "—", "0.700 ms ★"]
    assert f"container (Alpine, runc): unknown (request resuming from pause, p50): {NO_PAUSE}." in report.notes(results)
    md = report.markdown(results)
    assert "| request resuming from pause, p50 | 4.00 ms | — | unknown |" in md
    assert "### Invocations" in md and INVOCATION_METHOD in md
    page = report.html(results)
    assert "<td>load: invocations per second</td>" in page and "<h3>Invocations</h3>" in page
    # the diff: an unknown figure is no regression; a changed one is
    new = copy.deepcopy(results)
    new["sides"][0]["invocations"]["warm_p50_s"] = 0.024
    text = report.diff(results, new)
    line = next(x for x in text.splitlines() if x.startswith("| warm invocation, p50 | unikernel (Nanos"))
    assert "12.0 ms → 24.0 ms" in line and "REGRESSION" in line
    # unknown on both runs: nothing to compare, no row
    assert not any(x.startswith("| request resuming from pause, p50 | container") for x in text.splitlines())
    # a whole comparison without invocation figures: no such rows
    for side in results["sides"]:
        side.pop("invocations", None)
    assert "warm invocation" not in report.terminal_table(results, color=False)


def test_a_skipped_side_is_named_with_its_reason() -> None:
    results = make_results()
    results["skipped"] = [
        {"side": "nanos", "shrinkwrap": "unikernel", "label": "unikernel (Nanos, QEMU q35)", "reason": NO_TOOLCHAIN}
    ]
    validate(results)
    assert ("skipped", f"nanos: {NO_TOOLCHAIN}") in report.header(results)
    table = report.terminal_table(results, color=False)
    assert f"skipped      nanos: {NO_TOOLCHAIN}" in table
    assert f"nanos: skipped: {NO_TOOLCHAIN}." in table.replace("\n  ", " ")
    assert f"- **skipped**: nanos: {NO_TOOLCHAIN}" in report.markdown(results)
    assert f"<dt>skipped</dt><dd>nanos: {NO_TOOLCHAIN}</dd>" in report.html(results)
    assert "skipped" not in report.terminal_table(make_results(), color=False)  # nothing skipped: no line
    results["skipped"] = "nanos"
    with pytest.raises(ResultsError, match="skipped"):
        validate(results)


def test_diff_pairs_sides_by_name() -> None:
    """Two sides of the same shrink-wrap and runtime (Nanos and the microVM, both QEMU) pair by name;
    a file from before names existed pairs by its shrink-wrap."""
    old, new = make_three(), make_three()
    new["sides"][0]["coldstart"]["median_s"] = 2.4
    text = report.diff(old, new)
    line = next(x for x in text.splitlines() if x.startswith("| cold start to ready, median | unikernel (Nanos"))
    assert "2.00 s → 2.40 s" in line and "REGRESSION" in line
    line = next(x for x in text.splitlines() if x.startswith("| cold start to ready, median | unikernel (QEMU"))
    assert "2.95 s → 2.95 s" in line
    older = make_results()  # no "side" keys
    text = report.diff(older, make_three())
    line = next(x for x in text.splitlines() if x.startswith("| cold start to ready, median | unikernel (QEMU"))
    assert "2.95 s → 2.95 s" in line
    line = next(x for x in text.splitlines() if x.startswith("| cold start to ready, median | unikernel (Nanos"))
    assert "— → 2.00 s" in line


# ---------------------------------------------------------------- Markdown


def test_markdown() -> None:
    md = report.markdown(make_results())
    assert md.startswith("# uniobs compare: hello-node\n")
    assert "| figure | unikernel (QEMU microvm, TCG) | container (Alpine, runc) |" in md
    assert "| cold start to ready, median | 2.95 s | **103 ms** ★ |" in md
    assert "| executables in the image | **1** ★ | 21 |" in md
    assert "- **accelerator**: TCG (/dev/kvm is absent)\n" in md
    assert "- **versions**: qemu 7.2.15 · runc 1.1.5 · node 18.19.0 · uniobs 0.4.0\n" in md
    assert "## How each figure was measured" in md
    methods = md.split("## How each figure was measured")[1]
    for title in ("### Image size", "### Cold start", "### Memory", "### CPU", "### Attack surface"):
        assert title in methods
    assert "- **unikernel (QEMU microvm, TCG)**: Monotonic clock from the exec of QEMU" in methods
    # the same method on every side is said once
    assert "### Observability\n\n- What uniobs run exported: metric names, log records, trace spans.\n" in methods
    assert "| `guest_boot` | 2.31 s | — |" in md


def test_markdown_escapes_cells() -> None:
    results = make_results()
    results["sides"][0]["label"] = "a | b <i>"
    md = report.markdown(results)
    assert "a \\| b &lt;i&gt;" in md and "<i>" not in md


# ---------------------------------------------------------------- HTML


def test_html_escapes_everything_from_the_results() -> None:
    results = make_results()
    results["sides"][0]["label"] = HOSTILE
    results["function"]["name"] = HOSTILE
    results["host"]["hostname"] = "a&b<c>"
    results["sides"][1]["coldstart"]["method"] = HOSTILE
    results["sides"][1]["memory"]["timeline_metric"] = HOSTILE
    results["sides"][0]["coldstart"]["phases"][HOSTILE] = {"median_s": 0.2, "samples_s": [0.2]}
    page = report.html(results)
    assert HOSTILE not in page
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "a&amp;b&lt;c&gt;" in page and "a&b<c>" not in page


def test_html_is_self_contained() -> None:
    page = report.html(make_results())
    assert page.startswith("<!doctype html>")
    assert not re.search(r"""(src|href)\s*=|@import|url\(|https?://(?!www\.w3\.org/2000/svg)""", page)
    assert page.count("<svg ") == 4 and page.count("<figcaption>") == 4
    for title in ("Cold start to ready", "Where a cold start goes", "Memory over time", "Image size"):
        assert title in page
    assert "accelerator TCG (/dev/kvm is absent)" in page  # every caption says on what
    assert "seconds since launch" in page and "memory (MB)" in page
    assert '<td class="win">92.0 MB ★</td>' in page


def test_charts_without_data() -> None:
    results = make_results()
    for side in results["sides"]:
        side["coldstart"] = {"samples_s": [], "failures": 5, "method": "x"}
        side["memory"]["timeline"] = []
        del side["image"]
    page = report.html(results)
    assert "no cold-start samples" in page and "no memory timeline" in page and "no image sizes" in page


# ---------------------------------------------------------------- diff


def test_diff_marks_regressions_and_improvements() -> None:
    old = make_results()
    new = copy.deepcopy(old)
    new["started_at"] = "2026-11-27T09:00:00Z"
    new["sides"][1]["coldstart"]["median_s"] = 0.131  # +27.2 %: a regression
    new["sides"][0]["image"]["bytes"] = 95_000_000  # -5.9 %: an improvement
    new["sides"][0]["memory"]["idle"]["rss_bytes"] = 214 * MB  # +0.9 %: within the noise
    new["sides"][1]["attack_surface"]["shell"] = False  # the shell is gone: an improvement
    new["sides"][0]["coldstart"]["phases"]["guest_boot"]["median_s"] = 2.9  # +25.5 %
    text = report.diff(old, new)
    line = next(x for x in text.splitlines() if x.startswith("| cold start to ready, median | container"))
    assert "103 ms → 131 ms" in line and "+27.2 %" in line and "REGRESSION" in line
    line = next(x for x in text.splitlines() if x.startswith("| image size on disk | unikernel"))
    assert "101 MB → 95.0 MB" in line and "-5.9 %" in line and "improved" in line
    line = next(x for x in text.splitlines() if x.startswith("| memory idle: VMM/process RSS | unikernel"))
    assert "+0.9 %" in line and "REGRESSION" not in line and "improved" not in line
    line = next(x for x in text.splitlines() if x.startswith("| a shell in the image | container"))
    assert "yes → no" in line and "improved" in line
    line = next(x for x in text.splitlines() if x.startswith("| phase `guest_boot`, median | unikernel"))
    assert "+25.5 %" in line and "REGRESSION" in line
    assert "2 regressions, 2 improvements (threshold 5 %)." in text
    assert "warning" not in text


def test_diff_warns_when_not_comparable() -> None:
    old, new = make_results(), make_results()
    new["host"]["accelerator"] = "kvm"
    assert "the accelerator changed (tcg → kvm)" in report.diff(old, new)


# ---------------------------------------------------------------- files and schema


def test_write_reports(tmp_path: Path) -> None:
    results = make_results()
    paths = report.write_reports(results, tmp_path / "out")
    assert {p.name for p in paths.values()} == {"report.md", "report.html", "results.json"}
    assert load(paths["json"]) == results
    assert paths["markdown"].read_text(encoding="utf-8") == report.markdown(results)
    assert paths["html"].read_text(encoding="utf-8") == report.html(results)


def test_a_wrong_schema_is_rejected(tmp_path: Path) -> None:
    results = make_results()
    results["schema"] = "uniobs.compare/0"
    with pytest.raises(ResultsError, match="not a uniobs comparison"):
        validate(results)
    with pytest.raises(ResultsError):
        report.terminal_table(results, color=False)
    broken = make_results()
    broken["sides"][0]["shrinkwrap"] = "vm"
    with pytest.raises(ResultsError, match="shrinkwrap"):
        validate(broken)
    path = tmp_path / "r.json"
    path.write_text('{"schema": "something/else"}')
    with pytest.raises(ResultsError):
        load(path)


# ---------------------------------------------------------------- a real browser


def _png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and the RGB rows of an 8-bit RGB or RGBA PNG (non-interlaced): zlib and the five filters."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, bytearray(), b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and ctype in (2, 6) and interlace == 0, f"unsupported PNG: depth {depth}, type {ctype}"
    bpp = 3 if ctype == 2 else 4
    raw = zlib.decompress(bytes(idat))
    stride = width * bpp
    prev = bytearray(stride)
    rows = []
    for y in range(height):
        start = y * (stride + 1)
        ftype, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        if ftype == 1:  # Sub
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif ftype == 2:  # Up
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prev, strict=True))
        elif ftype == 3:  # Average
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif ftype == 4:  # Paeth
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = prev[i], prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        else:
            assert ftype == 0, f"unknown PNG filter {ftype}"
        prev = line
        rows.append(bytes(line) if bpp == 3 else bytes(b for i, b in enumerate(line) if i % 4 != 3))
    return width, height, rows


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


def _screenshot(browser: str, page: Path, shot: Path, profile: Path) -> str:
    """Chromium's log of rendering `page` into `shot` (1280 by 2600 pixels: the table and the charts)."""
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
           "--force-device-scale-factor=1", f"--user-data-dir={profile}", f"--screenshot={shot}",
           "--window-size=1280,2600", "--enable-logging=stderr", "--v=0", page.as_uri()]  # fmt: skip
    env = {**os.environ, "HOME": str(profile)}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    log = done.stdout + done.stderr
    assert done.returncode == 0 and shot.exists(), log
    return log


def _js_errors(log: str) -> list[str]:
    # Chromium logs page errors as `INFO:CONSOLE:1] "Uncaught TypeError: ...", source: file://...`
    return [line for line in log.splitlines() if "Uncaught" in line or re.search(r"CONSOLE[:(]\d+.*Error", line)]


def test_html_in_a_real_browser(tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium: `apt-get install -y chromium` (scripts/bootstrap.sh installs it)")
    # First a page that throws: the log must show it, or the check below would prove nothing.
    bad = tmp_path / "bad.html"
    bad.write_text("<!doctype html><p>x</p><script>null.x()</script>", encoding="utf-8")
    assert _js_errors(_screenshot(browser, bad, tmp_path / "bad.png", tmp_path / "profile"))

    page = tmp_path / "report.html"
    page.write_text(report.html(make_results()), encoding="utf-8")
    shot = tmp_path / "report.png"
    log = _screenshot(browser, page, shot, tmp_path / "profile")
    assert not _js_errors(log)
    if keep := os.environ.get("REPORT_SCREENSHOT"):  # to look at it: REPORT_SCREENSHOT=/tmp/r.png pytest ...
        shutil.copy(shot, keep)

    width, height, rows = _png_pixels(shot.read_bytes())
    assert (width, height) == (1280, 2600)
    pixels: Counter[bytes] = Counter()
    for row in rows[::2]:  # every other row is plenty for counting
        pixels.update(row[i : i + 3] for i in range(0, len(row), 6))
    total = sum(pixels.values())
    background, _ = pixels.most_common(1)[0]
    assert sum(n for px, n in pixels.items() if px != background) / total > 0.25  # cards, table, charts
    assert sum(n for px, n in pixels.items() if px != b"\xff\xff\xff") / total > 0.3
    assert len(pixels) > 50
    # the two sides' colours, as solid bars: the charts were drawn
    for color in report.SIDE_COLORS[:2]:
        rgb = bytes.fromhex(color[1:])
        assert pixels[rgb] > 200, f"{color} barely on the screenshot"


def test_a_phase_some_runs_did_not_show_says_over_how_many() -> None:
    """Phase medians over different runs do not add up to the cold start's: a phase seen in fewer
    cold starts than the side had says so, in every table (a new user's demo had 2 of 3 Nanos
    runs without their console phases)."""
    results = make_results()
    phases = results["sides"][0]["coldstart"]["phases"]
    phases["guest_boot"] = {"median_s": 2.31, "samples_s": [2.30, 2.31]}
    phases["unattributed"] = {"median_s": 2.9, "samples_s": [2.9, 2.8, 3.0]}
    for text in (report.terminal_table(results, color=False), report.markdown(results), report.html(results)):
        assert "2.31 s (2 of 5 runs)" in text and "2.90 s (3 of 5 runs)" in text
        assert "41.0 ms (" not in text  # a phase every run showed: its median alone
