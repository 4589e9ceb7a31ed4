"""What the tests share: the checkout's root, a free loopback port, skip markers, in-memory
exporter sinks and the recorded-scenario (golden file) helpers.

`from support import ROOT, free_port, requires_qemu` (tests/ is on sys.path: conftest.py puts it
there). One place for each, so a test file never copies a helper or hard-codes a checkout path.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from support.golden import Golden, scenario_dirs, scenario_params
from support.paths import ROOT, TESTDATA, UNIKERNELS
from support.sinks import MemoryMetrics, MemorySinks


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the kernel picks it; another process may take it later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- skip markers: a test skips only when what it needs cannot exist here, and says why -------


def missing(*tools: str) -> list[str]:
    """The tools of `tools` that are not on PATH."""
    return [tool for tool in tools if shutil.which(tool) is None]


def requires(*tools: str, why: str = "") -> pytest.MarkDecorator:
    """Skip unless every tool is on PATH; the reason names the missing ones (and `why`, e.g. the
    Debian package or what the tool is for)."""
    absent = missing(*tools)
    return pytest.mark.skipif(bool(absent), reason=f"{', '.join(absent)} not on PATH" + (f" ({why})" if why else ""))


requires_qemu = requires("qemu-system-x86_64", why="Debian: qemu-system-x86")
requires_runc = requires("runc", why="Debian: runc")
requires_node = requires("node", why="Debian: nodejs")
requires_prometheus = requires("prometheus", why="Debian: prometheus")
requires_gcc = requires("gcc", why="Debian: gcc")
requires_make_gcc = requires("make", "gcc", why="Debian: make gcc")
requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (runs containers, creates cgroups)")


def requires_shared(*paths: str) -> pytest.MarkDecorator:
    """Skip unless every path exists under ../shared/unikernels (the real unikernel binaries, test data)."""
    absent = [p for p in paths if not (UNIKERNELS / p).exists()]
    return pytest.mark.skipif(bool(absent), reason=f"{', '.join(absent)} not in {UNIKERNELS} (real unikernel binaries)")


requires_solo5 = requires_shared("solo5/solo5-hvt", "solo5/tests/test_hello.hvt")
requires_nanos = requires_shared("nanos/mkfs", "nanos/kernel.img", "nanos/boot.img")
requires_kvm = pytest.mark.skipif(
    not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="no usable /dev/kvm (the Solo5 hvt tender drives KVM)"
)
requires_vmlinuz = pytest.mark.skipif(
    not list(Path("/boot").glob("vmlinuz-*")), reason="no /boot/vmlinuz-* (Debian: linux-image-amd64)"
)

__all__ = [
    "ROOT",
    "TESTDATA",
    "UNIKERNELS",
    "Golden",
    "MemoryMetrics",
    "MemorySinks",
    "free_port",
    "missing",
    "requires",
    "requires_gcc",
    "requires_kvm",
    "requires_make_gcc",
    "requires_nanos",
    "requires_node",
    "requires_prometheus",
    "requires_qemu",
    "requires_root",
    "requires_runc",
    "requires_shared",
    "requires_solo5",
    "requires_vmlinuz",
    "scenario_dirs",
    "scenario_params",
]


def uniobs_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The real `uniobs` CLI with exactly the OTEL_*/UNIOBS_* variables given (none leak in from
    the caller's environment)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "UNIOBS_"))}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "uniobs.cli", *args], capture_output=True, text=True, env=full_env, timeout=timeout
    )
