"""`uniobs compare` for real: the seed function on three sides -- a Nanos unikernel (the real Nanos
toolchain from ../shared/unikernels, as NANOS_DIR) and a single-application microVM under QEMU, and
a runc container (crun refuses this hybrid cgroup host) -- a one-sided comparison of the minimal
unikernel, re-rendering and diffing result files, the HTML report in headless Chromium, and the
invocation rows (each launch triggered by a request, as `uniobs serve`) checked against the
exported telemetry file."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from otlpfile import Signals
from support import ROOT, UNIKERNELS, requires_node, requires_qemu, requires_root, requires_runc, requires_vmlinuz
from test_report import _chromium, _js_errors, _png_pixels, _screenshot

from uniobs.compare import function as fn
from uniobs.compare.comparison import WARM_REQUESTS
from uniobs.compare.results import ROWS, lookup

HELLO = ROOT / "examples" / "hello-node" / "function.toml"
MINI = ROOT / "examples" / "minikernel" / "function.toml"

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.slow,
    requires_qemu,
]


def uniobs(*args: str, timeout: float = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "uniobs.cli", *args], capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL, env={**os.environ, **env} if env else None,
    )  # fmt: skip


def plausible(side: dict[str, Any]) -> None:
    cs = side["coldstart"]
    assert cs["failures"] == 0 and len(cs["samples_s"]) == 2
    assert 0 < cs["min_s"] <= cs["median_s"] <= cs["p95_s"] <= cs["max_s"]
    assert all(p["median_s"] >= 0 for p in cs["phases"].values())
    image = side["image"]
    on_disk = 0
    for entry in image["files"]:  # image size equals the files' sizes
        path = Path(entry["path"])
        size = (
            sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
            if path.is_dir() else path.stat().st_size
        )  # fmt: skip
        assert entry["bytes"] == size or path.is_dir()  # a directory's hard links are counted once
        on_disk += entry["bytes"]
    assert image["bytes"] == on_disk and 0 < image["compressed_bytes"] < image["bytes"]
    for key in ("rss_bytes", "pss_bytes"):
        assert side["memory"]["idle"][key] is None or side["memory"]["idle"][key] >= 0
    assert side["cpu"]["idle_percent"] is not None and side["cpu"]["idle_percent"] >= 0
    assert side["observability"]["logs"] > 0 and side["observability"]["metrics"]
    for block in ("image", "coldstart", "memory", "cpu", "attack_surface", "observability"):
        assert side[block].get("method"), f"{block} says how it was measured"


def exported(signals: Signals, metric: str, window: dict[str, Any]) -> list[tuple[int, Any]]:
    """A metric's distinct exported points for a window's instance and span of time, read from the
    OTLP JSON lines alone: (timeUnixNano, value), the points of one instant (cpu.mode) summed."""
    by_time: dict[int, dict[tuple[Any, ...], Any]] = {}
    for resource, attributes, point in signals.points(metric):
        t = int(point["timeUnixNano"])
        if (
            resource.get("faas.instance") == window["instance"]
            and window["start_unix_nano"] <= t <= window["end_unix_nano"]
        ):
            value = int(point["asInt"]) if "asInt" in point else float(point.get("asDouble", 0.0))
            by_time.setdefault(t, {})[tuple(sorted(attributes.items()))] = value
    return [(t, math.fsum(v.values()) if len(v) > 1 else next(iter(v.values()))) for t, v in sorted(by_time.items())]


def figures_are_the_exported_telemetry(results: dict[str, Any], telemetry: Path) -> None:
    """The report's memory and CPU figures, recomputed from the exported telemetry file for the
    instances and instants each side's `windows` name, are equal to it: the same samples."""
    signals = Signals(telemetry)
    for side in results["sides"]:
        container = side["shrinkwrap"] == "container"
        windows = side["windows"]
        assert windows and {w["run"] for w in windows} == set(range(1, results["runs_per_side"] + 1))
        memory: dict[str, list[dict[str, int | None]]] = {}
        cpu: dict[str, list[float]] = {}
        for w in windows:
            mem: dict[str, int | None] = {}
            for key, metric in (("rss_bytes", "process.memory.usage"), ("pss_bytes", "uniobs.process.memory.pss"),
                                ("cgroup_bytes", "container.memory.usage")):  # fmt: skip
                values = [v for _, v in exported(signals, metric, w)]
                mem[key] = int(statistics.median(values)) if values else None
            memory.setdefault(w["phase"], []).append(mem)
            assert mem["rss_bytes"] is not None and mem["pss_bytes"] is not None
            assert (mem["cgroup_bytes"] is not None) == container
            times = exported(signals, "container.cpu.time" if container else "process.cpu.time", w)
            assert len(times) >= 2, "a window has a sample at its start and one at its end"
            (t0, c0), (t1, c1) = times[0], times[-1]
            cpu.setdefault(w["phase"], []).append((c1 - c0) / ((t1 - t0) / 1e9) * 100)
        for phase, per_run in memory.items():
            for key in ("rss_bytes", "pss_bytes", "cgroup_bytes"):
                values = [m[key] for m in per_run if m[key] is not None]
                expected = int(statistics.median(values)) if values else None
                assert side["memory"][phase][key] == expected, (phase, key)
            # the runtime CLI's own RSS is the one figure compare measures itself (no collector has it)
            assert (side["memory"][phase]["runtime_rss_bytes"] is not None) == container
        for phase, percents in cpu.items():
            assert side["cpu"][f"{phase}_percent"] == round(statistics.median(percents), 2), phase
        # the timeline: the first launch's exported points of its metric, across its windows
        first = [w for w in windows if w["run"] == 1]
        span = {**first[0], "end_unix_nano": first[-1]["end_unix_nano"]}
        points = exported(signals, "container.memory.usage" if container else "process.memory.usage", span)
        assert [v for _, v in side["memory"]["timeline"]] == [v for _, v in points]
        assert len(points) >= 3


@pytest.mark.containers
@requires_runc
@requires_root
@requires_vmlinuz
@requires_node
def test_seed_function_compared_on_three_sides(tmp_path: Path) -> None:
    """The README's main command: Nanos, the Linux microVM and the container, side by side. Where
    ../shared/unikernels has no Nanos toolchain the Nanos side is skipped (and says so): visible here."""
    out = tmp_path / "report"
    toolchain = UNIKERNELS / "nanos"
    nanos = all((toolchain / t).exists() for t in ("kernel.img", "boot.img", "mkfs", "dump"))
    # without the shared toolchain: none at all (not a developer's own ~/.ops), so the side is skipped
    env = {"NANOS_DIR": str(toolchain)} if nanos else {"NANOS_DIR": "", "HOME": str(tmp_path)}
    result = uniobs("compare", str(HELLO), "--runs", "2", "--idle", "1", "--out", str(out), "--no-color", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    sides = results["sides"]
    for side in sides:
        plausible(side)
        invocations_plausible(side, 200, Signals(out / "telemetry.jsonl"))
    if nanos:
        assert [s["side"] for s in sides] == ["nanos", "unikernel", "container"] and results["skipped"] == []
        assert [s["shrinkwrap"] for s in sides] == ["unikernel", "unikernel", "container"]
        nk = sides[0]
        # Nanos: node, its 7 libraries and the kernel, read from the image through the toolchain's dump
        assert nk["attack_surface"]["complete"] is True and "unknown" not in nk["attack_surface"]
        assert (nk["attack_surface"]["executables"], nk["attack_surface"]["shared_libraries"]) == (2, 7)
        assert nk["attack_surface"]["shell"] is False and nk["attack_surface"]["listening_sockets"] == 1
        assert nk["load"]["errors"] == 0 and nk["memory"]["idle"]["rss_bytes"] > 100 << 20
        assert "uniobs compare: hello-node, nanos vs unikernel vs container" in result.stdout
    else:
        assert [s["side"] for s in sides] == ["unikernel", "container"]
        assert [s["side"] for s in results["skipped"]] == ["nanos"] and "nanos: skipped" in result.stdout
    uk, ct = sides[-2:]
    assert set(uk["coldstart"]["phases"]) >= {"vmm_spawn", "guest_boot", "app_init", "readiness"}
    assert set(ct["coldstart"]["phases"]) >= {"runtime_create", "runtime_start", "app_init", "readiness"}
    assert ct["memory"]["idle"]["cgroup_bytes"] > 0 and uk["memory"]["idle"]["rss_bytes"] > 100 << 20
    assert uk["load"]["errors"] == 0 and ct["load"]["errors"] == 0
    assert uk["attack_surface"]["listening_sockets"] == 1 and ct["attack_surface"]["listening_sockets"] == 1
    assert results["host"]["accelerator"] in ("kvm", "tcg") and results["host"]["versions"]["qemu"]
    # the terminal table has every row that either side measured, for each side
    table = result.stdout
    for path, label, _, _ in ROWS:
        if any(lookup(s, path) is not None for s in sides):
            assert label in table, label
    # the same runs reached the configured exporter (the embedded default: a file)
    telemetry = (out / "telemetry.jsonl").read_text()
    assert '"name":"faas.init_duration"' in telemetry and '"name":"coldstart.guest_boot"' in telemetry
    figures_are_the_exported_telemetry(results, out / "telemetry.jsonl")
    # the HTML report, in a real browser
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium: `apt-get install -y chromium` (scripts/bootstrap.sh installs it)")
    shot = tmp_path / "report.png"
    log = _screenshot(browser, out / "report.html", shot, tmp_path / "profile")
    assert not _js_errors(log)
    _, _, rows = _png_pixels(shot.read_bytes())
    pixels: Counter[bytes] = Counter()
    for row in rows[::4]:
        pixels.update(row[i : i + 3] for i in range(0, len(row), 12))
    background, _ = pixels.most_common(1)[0]
    assert sum(n for px, n in pixels.items() if px != background) / sum(pixels.values()) > 0.2
    assert len(pixels) > 50  # text, table and charts, not a blank page
    if not nanos:
        pytest.skip(f"compared 2 of 3 sides: no Nanos toolchain in {toolchain} (the real unikernel binaries)")


INVOCATION_ROWS = [label for path, label, _, _ in ROWS if path.startswith("invocations.")]


def invocations_plausible(side: dict[str, Any], load_requests: int, signals: Signals | None = None) -> None:
    """The invocation figures of a side whose every launch was triggered by a request: counts equal to
    the requests sent, the cold request at least the same launch's exec -> ready, warm below cold,
    resumed from pause; and, given the exported telemetry, the figures' spans are in it."""
    inv = side["invocations"]
    assert "unknown" not in inv, inv.get("unknown")
    runs = inv["runs"]
    cs = side["coldstart"]
    assert len(runs) == len(cs["samples_s"])
    for run, exec_to_ready in zip(runs, cs["samples_s"], strict=True):
        sent = 1 + WARM_REQUESTS + load_requests + 1  # cold, warm, the load, the one that resumed it
        assert run["sent"] == run["spans"] == run["faas_invocations"] == sent, run
        assert (run["cold_spans"], run["warm_spans"], run["load_spans"], run["resume_spans"]) == (
            1, WARM_REQUESTS, load_requests, 1)  # fmt: skip
        # the request that launched the instance waited for its whole cold start
        assert run["cold_s"] >= exec_to_ready and run["init_s"] is not None and run["cold_s"] >= run["init_s"]
        assert abs(run["init_s"] - exec_to_ready) < 0.05, run  # the REPORT's Init Duration: the same launch
        # the host's resume (QMP cont, runc resume) happened inside the request's span
        assert 0 < run["resume_host_s"] <= run["resume_s"]
    assert inv["cold_p50_s"] <= inv["cold_p95_s"] and inv["warm_p50_s"] <= inv["warm_p99_s"]
    assert inv["warm_p50_s"] < inv["cold_p50_s"] and inv["warm_invocations"] == WARM_REQUESTS * len(runs)
    assert inv["resume_p50_s"] is not None and inv["resume_p50_s"] < inv["cold_p50_s"]
    assert 0 < inv["max_memory_used_bytes"] <= inv["max_memory_used_max_bytes"]
    assert inv["load_invocations"] == load_requests * len(runs) and inv["load_errors"] == 0
    assert inv["load_throughput_per_s"] > 0 and 0 < inv["load_p50_s"] <= inv["load_p90_s"] <= inv["load_p99_s"]
    assert {w["phase"] for w in inv["windows"]} == {"cold", "warm", "load", "resume"}
    assert inv["method"]
    if signals is None:
        return
    # recomputed from the OTLP JSON lines alone: the same spans, per instance and window
    spans = [s for s in signals.spans() if "faas.invocation_id" in s["attributes"]]
    for w in inv["windows"]:
        inside = [s for s in spans if s["resource"].get("faas.instance") == w["instance"]
                  and w["start_unix_nano"] <= int(s["startTimeUnixNano"]) <= w["end_unix_nano"]]  # fmt: skip
        assert len(inside) == w["spans"] == w["sent"], w
        if w["phase"] == "cold":
            [cold] = inside
            assert cold["attributes"]["faas.coldstart"] is True
            run = next(r for r in runs if r["instance"] == w["instance"])
            took = (int(cold["endTimeUnixNano"]) - int(cold["startTimeUnixNano"])) / 1e9
            assert round(took, 6) == run["cold_s"]
            # the launch's cold-start trace is a child of the request's span
            roots = [s for s in signals.spans() if s["name"] == "coldstart" and s["resource"].get("faas.instance")
                     == w["instance"]]  # fmt: skip
            assert [r.get("parentSpanId") for r in roots] == [cold["spanId"]]
        else:
            assert not any(s["attributes"]["faas.coldstart"] for s in inside)


def _two_sides(tmp_path: Path, load_requests: int) -> Path:
    """The seed definition's runc container and Nanos sides (its images built as the definition says),
    with paths made absolute, in a definition of their own: one container and one VM side."""
    d = fn.load_definition(HELLO)
    for name in ("container", "nanos"):
        try:
            fn.ensure_built(d, d.wraps[name])
        except fn.SideSkipped as exc:
            pytest.skip(f"the {name} side cannot be built here: {exc.reason}")
    text = HELLO.read_text()
    text = text[: text.index("[unikernel]")] + text[text.index("[container]") :]
    base = str(HELLO.parent)
    for prefix in ("nanos/", "container/"):
        text = text.replace(f'"{prefix}', f'"{base}/{prefix}').replace(f"file={prefix}", f"file={base}/{prefix}")
    text = text.replace("requests = 200", f"requests = {load_requests}")
    path = tmp_path / "function.toml"
    path.write_text(text)
    return path


@pytest.mark.containers
@requires_runc
@requires_root
def test_invocation_rows_for_a_container_and_a_vm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each launch is triggered by its first request through the serve host (scale from zero); the
    invocation rows come from the spans, REPORTs and faas.invocations uniobs exported."""
    monkeypatch.setenv("NANOS_DIR", str(UNIKERNELS / "nanos"))
    definition = _two_sides(tmp_path, load_requests=40)
    out = tmp_path / "out"
    result = uniobs("compare", str(definition), "--runs", "2", "--idle", "0.5", "--out", str(out), "--no-color")
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert [s["side"] for s in results["sides"]] == ["nanos", "container"]
    signals = Signals(out / "telemetry.jsonl")
    for side in results["sides"]:
        invocations_plausible(side, 40, signals)
        assert "first_request" not in side["coldstart"]["phases"]  # the first request is the invocation now
        assert "first_request" in side["coldstart"]["method"]  # ... and the method says so
    for label in INVOCATION_ROWS:
        assert label in result.stdout, label
    md = (out / "report.md").read_text()
    assert "### Invocations" in md and "| warm invocation, p50 |" in md


def test_one_sided_comparison_then_from_and_diff(tmp_path: Path) -> None:
    out1, out2 = tmp_path / "a", tmp_path / "b"
    first = uniobs("compare", str(MINI), "--runs", "2", "--idle", "0.5", "--out", str(out1), "--no-color")
    assert first.returncode == 0, first.stderr[-3000:]
    results = json.loads((out1 / "results.json").read_text())
    [side] = results["sides"]
    plausible(side)
    assert side["attack_surface"]["executables"] == 1 and side["attack_surface"]["shell"] is False
    # a function with no port has no invocations to observe: not measured, and it says why
    assert side["invocations"] == {"method": side["invocations"]["method"]}
    assert "no port" in side["invocations"]["method"]
    assert not any(label in first.stdout for label in INVOCATION_ROWS)
    table = first.stdout.split("★ marks")[0].split("figure", 1)[1]
    assert "★" not in table  # one side: no winners
    again = uniobs("compare", "--from", str(out1 / "results.json"), "--out", str(out2), "--no-color")
    assert again.returncode == 0 and again.stdout == first.stdout  # re-rendered, identical
    second = uniobs("compare", str(MINI), "--runs", "2", "--idle", "0.5", "--out", str(tmp_path / "c"), "--no-color")
    assert second.returncode == 0
    diff = uniobs("compare", "--diff", str(out1 / "results.json"), str(tmp_path / "c" / "results.json"))
    assert diff.returncode == 0 and "cold start to ready, median" in diff.stdout
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "something-else"}')
    refused = uniobs("compare", "--from", str(bad))
    assert refused.returncode != 0 and "not a uniobs comparison" in refused.stderr


def test_report_figures_are_the_exported_telemetry(tmp_path: Path) -> None:
    """`compare` reads what the collectors measure: its memory and CPU figures are computed from the
    very samples it exported, so the report and the telemetry file agree exactly."""
    out = tmp_path / "out"
    result = uniobs("compare", str(MINI), "--runs", "2", "--idle", "0.6", "--out", str(out), "--no-color")
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    figures_are_the_exported_telemetry(results, out / "telemetry.jsonl")
