"""The accelerator is chosen by a real probe boot under real QEMU."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from uniobs.accel import accel_of, probe

ROOT = Path(__file__).resolve().parent.parent


def test_the_command_line_says_which_accelerator() -> None:
    assert accel_of(["qemu-system-x86_64", "-accel", "kvm"]) == "kvm"
    assert accel_of(["qemu-system-x86_64", "-enable-kvm"]) == "kvm"
    assert accel_of(["qemu-system-x86_64", "-machine", "q35,accel=kvm:tcg"]) == "kvm"
    assert accel_of(["qemu-system-x86_64", "-accel", "tcg,thread=multi"]) == "tcg"
    assert accel_of(["qemu-system-x86_64", "-kernel", "k"]) == "tcg"  # QEMU's default


@pytest.mark.qemu
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86 is not installed")
def test_the_probe_boots_and_picks_kvm_only_when_it_works_and_is_faster() -> None:
    subprocess.run(["make", "-s", "-C", str(ROOT / "examples" / "minikernel")], check=True)
    result = probe(use_cache=False)
    assert result.accel in ("kvm", "tcg")
    assert result.tcg_s is not None and result.tcg_s > 0  # TCG always boots the probe
    if result.accel == "kvm":
        assert result.kvm_s is not None and result.kvm_s <= result.tcg_s
    elif result.kvm_s is not None:
        assert result.kvm_s > result.tcg_s and "slower" in result.reason
    assert result.accel in result.describe()
    assert probe().accel == result.accel  # cached
