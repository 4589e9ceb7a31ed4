"""`uniobs compare` for real: the seed function as a single-application microVM under QEMU and as a
runc container (crun refuses this hybrid cgroup host), a one-sided comparison of the minimal
unikernel, re-rendering and diffing result files, and the HTML report in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from test_report import _chromium, _js_errors, _png_pixels, _screenshot

from uniobs.compare.results import ROWS, lookup

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello-node" / "function.toml"
MINI = ROOT / "examples" / "minikernel" / "function.toml"

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86 is not installed"),
]


def uniobs(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "uniobs.cli", *args], capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
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


@pytest.mark.containers
@pytest.mark.skipif(shutil.which("runc") is None or os.geteuid() != 0, reason="needs runc and root")
@pytest.mark.skipif(not list(Path("/boot").glob("vmlinuz-*")), reason="no /boot/vmlinuz-* (linux-image-amd64)")
@pytest.mark.skipif(shutil.which("node") is None, reason="the function is built from the host's node")
def test_seed_function_compared_unikernel_vs_container(tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = uniobs("compare", str(HELLO), "--runs", "2", "--idle", "1", "--out", str(out), "--no-color")
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    sides = results["sides"]
    assert [s["shrinkwrap"] for s in sides] == ["unikernel", "container"]
    for side in sides:
        plausible(side)
    uk, ct = sides
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


def test_one_sided_comparison_then_from_and_diff(tmp_path: Path) -> None:
    out1, out2 = tmp_path / "a", tmp_path / "b"
    first = uniobs("compare", str(MINI), "--runs", "2", "--idle", "0.5", "--out", str(out1), "--no-color")
    assert first.returncode == 0, first.stderr[-3000:]
    results = json.loads((out1 / "results.json").read_text())
    [side] = results["sides"]
    plausible(side)
    assert side["attack_surface"]["executables"] == 1 and side["attack_surface"]["shell"] is False
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
