"""The accelerator is chosen by a real probe boot under real QEMU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import ROOT, requires_make_gcc, requires_qemu

from uniobs.runtimes import accel
from uniobs.runtimes.accel import accel_of, probe


def test_the_command_line_says_which_accelerator() -> None:
    assert accel_of(["qemu-system-x86_64", "-accel", "kvm"]) == "kvm"
    assert accel_of(["qemu-system-x86_64", "-enable-kvm"]) == "kvm"
    assert accel_of(["qemu-system-x86_64", "-machine", "q35,accel=kvm:tcg"]) == "kvm"
    assert accel_of(["qemu-system-x86_64", "-accel", "tcg,thread=multi"]) == "tcg"
    assert accel_of(["qemu-system-x86_64", "-kernel", "k"]) == "tcg"  # QEMU's default


@pytest.mark.qemu
@requires_qemu
def test_the_probe_boots_and_picks_kvm_only_when_it_works_and_is_faster(tmp_path: Path) -> None:
    subprocess.run(["make", "-s", "-C", str(ROOT / "examples" / "minikernel")], check=True)
    cache = tmp_path / "accel.json"  # not the host's /run/uniobs/accel.json
    result = probe(use_cache=False, cache_file=cache)
    assert result.accel in ("kvm", "tcg")
    assert result.tcg_s is not None and result.tcg_s > 0  # TCG always boots the probe
    if result.accel == "kvm":
        assert result.kvm_s is not None and result.kvm_s <= result.tcg_s
    elif result.kvm_s is not None:
        assert result.kvm_s > result.tcg_s and "slower" in result.reason
    assert result.accel in result.describe()
    assert result.probed and json.loads(cache.read_text())["probe"]["accel"] == result.accel
    assert probe(cache_file=cache) == result  # cached


def _checkout(tmp_path: Path, with_examples: bool) -> Path:
    """A copy of the package, laid out as a checkout (examples/minikernel's source, no build) or as an
    installed uniobs (no examples/ folder)."""
    root = tmp_path / ("checkout" if with_examples else "installed")
    shutil.copytree(ROOT / "uniobs", root / "uniobs", ignore=shutil.ignore_patterns("__pycache__"))
    if with_examples:
        shutil.copytree(ROOT / "examples" / "minikernel", root / "examples" / "minikernel",
                        ignore=shutil.ignore_patterns("build"))  # fmt: skip
    return root


def _accel_cli(root: Path, cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root), "UNIOBS_ACCEL_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "uniobs.runtimes.accel", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)  # fmt: skip


@pytest.mark.qemu
@requires_qemu
@requires_make_gcc
def test_first_use_in_a_checkout_builds_the_probe_kernel(tmp_path: Path) -> None:
    root = _checkout(tmp_path, with_examples=True)
    cache = tmp_path / "cache" / "accel.json"  # set aside: a fresh machine has none
    result = _accel_cli(root, cache, "--explain")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert (root / "examples" / "minikernel" / "build" / "minikernel.elf").is_file()
    assert "probe boot:" in result.stdout and "not probed" not in result.stdout, result.stdout
    assert json.loads(cache.read_text())["probe"]["probed"] is True


@requires_qemu
def test_an_installed_uniobs_without_a_probe_kernel_says_tcg_and_why(tmp_path: Path) -> None:
    root = _checkout(tmp_path, with_examples=False)
    cache = tmp_path / "accel.json"
    explained = _accel_cli(root, cache, "--explain")
    assert explained.returncode == 0 and "Traceback" not in explained.stderr, explained.stderr
    assert explained.stdout.startswith("tcg (not probed: no probe kernel"), explained.stdout
    plain = _accel_cli(root, cache)
    assert plain.stdout == "tcg\n" and len(plain.stderr.strip().splitlines()) == 1, plain.stderr
    assert not cache.exists()  # an answer that is not a probe is not cached


def test_no_qemu_is_tcg_not_probed_and_not_cached(tmp_path: Path) -> None:
    result = probe("no-such-qemu-system-x86_64", cache_file=tmp_path / "accel.json")
    assert (result.accel, result.probed) == ("tcg", False)
    assert result.describe() == "tcg (not probed: no-such-qemu-system-x86_64 is not installed)"
    assert not (tmp_path / "accel.json").exists()


@requires_qemu
def test_a_failed_probe_kernel_build_is_tcg_with_the_command_to_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "minikernel"
    source.mkdir()
    (source / "Makefile").write_text("all:\n\t@echo 'gcc: not found' >&2; exit 1\n")
    monkeypatch.setattr(accel, "_REPO_SOURCE", source)
    monkeypatch.setattr(accel, "_REPO_KERNEL", source / "build" / "minikernel.elf")
    result = probe(cache_file=tmp_path / "accel.json")
    assert not result.probed and result.accel == "tcg"
    assert result.describe() == (
        "tcg (not probed: no probe kernel: its build failed (gcc: not found); run `make -C examples/minikernel`)"
    )
