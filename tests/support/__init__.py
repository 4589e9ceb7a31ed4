"""What the tests share: the checkout's root, a free loopback port, skip markers, in-memory
exporter sinks and the recorded-scenario (golden file) helpers.

`from support import ROOT, free_port, requires_qemu` (tests/ is on sys.path: conftest.py puts it
there). One place for each, so a test file never copies a helper or hard-codes a checkout path.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from support.golden import Golden, scenario_dirs, scenario_params
from support.paths import ROOT, TESTDATA, UNIKERNELS
from support.sinks import MemoryMetrics, MemorySinks
from uniobs.host import cgroupfs


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


# --- live cgroups -------------------------------------------------------------------------------


def v1_cgroup_layout(controllers: Iterable[str], root: str = "/sys/fs/cgroup") -> cgroupfs.CgroupLayout:
    """This host's cgroup layout (`uniobs.host.cgroupfs.CgroupLayout`) for a test that makes v1
    cgroups with these controllers: skipped, with the reason, where that cannot be done here
    (not root, no hierarchy, a pure v2 host, a controller not mounted)."""
    if os.geteuid() != 0:
        pytest.skip("creating cgroups needs root")
    try:
        layout = cgroupfs.detect_layout(root)
    except OSError as exc:
        pytest.skip(f"no cgroup hierarchy under {root}: {exc}")
    if layout.mode is cgroupfs.CgroupMode.V2:
        pytest.skip("pure cgroup v2 host: this test makes v1 cgroups")
    missing = [c for c in controllers if c not in layout.v1]
    if missing:
        pytest.skip(f"v1 controllers not mounted under {root}: {', '.join(missing)}")
    return layout


def remove_cgroups(directories: Iterable[str], timeout: float = 10.0) -> None:
    """Remove cgroup directories in the order given (deepest first), waiting out the EBUSY of a
    killed process still being reaped; one already gone is fine."""
    deadline = time.monotonic() + timeout
    for directory in directories:
        while True:
            try:
                os.rmdir(directory)
                break
            except FileNotFoundError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)


def idle_node_bundle(directory: Path) -> Path:
    """An OCI bundle in `directory/bundle` of the example container's image running an idle node
    (a long-lived container with the example's rootfs and host network), built first if needed."""
    container = ROOT / "examples" / "hello-node" / "container"
    subprocess.run(["make", "-s", "-C", str(container)], check=True, capture_output=True)
    config = json.loads((container / "build" / "bundle-hostnet" / "config.json").read_text())
    config["root"]["path"] = str(container / "build" / "bundle" / "rootfs")
    config["process"]["args"] = ["/usr/bin/node", "-e", "setInterval(() => {}, 1000)"]
    bundle = directory / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle
