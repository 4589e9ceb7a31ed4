"""The seed function as a real Nanos unikernel, with the real Nanos toolchain (kernel.img, boot.img,
mkfs, dump) from ../shared/unikernels/nanos, which stands in for what `ops` installs on a user's host:
the example's build (NANOS_DIR, else the newest ~/.ops/<version>/, a skip without either), the
attack surface of the image it makes read through the toolchain's own `dump` (equal to its
manifest; unknown where it cannot be read), a boot under `uniobs run --function ... --as nanos` that
answers HTTP 200 under QEMU TCG, and `compare` skipping a side this host cannot build.

Expected figures come from the manifest the build handed to mkfs and from `ldd`, read here."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest
from otlpfile import Signals
from support import ROOT, UNIKERNELS, requires_make_gcc, requires_node, requires_qemu, requires_shared

from uniobs.compare.surface import image_block, parse_tuple, surface_of_image

NANOS = UNIKERNELS / "nanos"
EXAMPLE = ROOT / "examples" / "hello-node" / "nanos"
HELLO = ROOT / "examples" / "hello-node" / "function.toml"
MINIKERNEL = ROOT / "examples" / "minikernel"
TOOLCHAIN = ("kernel.img", "boot.img", "mkfs", "dump")
NO_TOOLCHAIN = "no Nanos toolchain on this host (set NANOS_DIR or install ops)"

requires_toolchain = requires_shared(*(f"nanos/{t}" for t in TOOLCHAIN))
pytestmark = [requires_toolchain, requires_node]


def host_env(home: Path, **extra: str) -> dict[str, str]:
    """This process's environment for a child, minus any NANOS_DIR and with its own (empty) home."""
    env = {k: v for k, v in os.environ.items() if k != "NANOS_DIR" and not k.startswith(("OTEL_", "UNIOBS_"))}
    env["HOME"] = str(home)
    env.update(extra)
    return env


def build(out: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLE / "build.py"), "--out", str(out)], env=env, capture_output=True, text=True,
        timeout=600, stdin=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example built with NANOS_DIR pointing at the toolchain: its build folder."""
    out = tmp_path_factory.mktemp("nanos") / "build"
    done = build(out, host_env(out.parent / "home", NANOS_DIR=str(NANOS)))
    assert done.returncode == 0, done.stderr
    return out


def ops_home(home: Path, versions: tuple[str, ...]) -> Path:
    """A home folder laid out as `ops` installs the toolchain: ~/.ops/<version>/{kernel.img,...}."""
    for version in versions:
        folder = home / ".ops" / version
        folder.mkdir(parents=True)
        for tool in TOOLCHAIN:
            (folder / tool).symlink_to(NANOS / tool)
    return home


# --------------------------------------------------------------------------------------------
# The build
# --------------------------------------------------------------------------------------------


def test_the_build_skips_without_a_toolchain_and_takes_the_newest_ops_version(tmp_path: Path) -> None:
    # no NANOS_DIR, no ~/.ops: status 77 ("cannot be built here"), the reason alone on the last line
    empty_home = tmp_path / "empty-home"
    empty_home.mkdir()
    done = build(tmp_path / "none", host_env(empty_home))
    assert done.returncode == 77 and done.stderr.strip().splitlines()[-1] == NO_TOOLCHAIN, done.stderr
    assert not (tmp_path / "none" / "node.img").exists()
    # NANOS_DIR names a folder without the toolchain: a mistake, reported as one (not a skip)
    done = build(tmp_path / "bad", host_env(empty_home, NANOS_DIR=str(empty_home)))
    assert done.returncode not in (0, 77) and f"NANOS_DIR={empty_home}: no kernel.img, boot.img, mkfs" in done.stderr
    # as ops installs it: 0.1.10 is newer than 0.1.9 (numbers, not strings); nightly only as a last resort
    home = ops_home(tmp_path / "home", ("0.1.9", "0.1.10", "nightly"))
    done = build(tmp_path / "ops", host_env(home))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "ops" / "toolchain.txt").read_text().strip() == str(home / ".ops" / "0.1.10")
    assert (tmp_path / "ops" / "node.img").stat().st_size > 50 << 20


def manifest_files(manifest: str) -> dict[str, str]:
    """path in the image -> host file, from the manifest text the build handed to mkfs."""
    root = parse_tuple("\nmetadata\n" + manifest)
    assert root is not None, manifest
    out: dict[str, str] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for name, entry in node.get("children", {}).items():
            if "children" in entry:
                walk(entry, f"{prefix}/{name}")
            else:
                out[f"{prefix}/{name}"] = entry["contents"]["host"]

    walk(root, "")
    assert root["program"] == "/node" and root["arguments"] == ["node", "/app.js"]
    assert root["environment"] == {"PORT": "8002"} and "debug_exit" not in manifest
    return out


def ldd_paths(binary: str) -> set[str]:
    """The libraries and the loader `ldd` names for a binary, as paths the binary asks for."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    paths = set(re.findall(r"=> (/\S+)", out)) | set(re.findall(r"^\s*(/\S+) \(", out, re.M))
    return {re.sub(r"^/usr(?=/lib)", "", p) for p in paths}  # merged /usr: node asks for /lib/...


# --------------------------------------------------------------------------------------------
# The image's attack surface
# --------------------------------------------------------------------------------------------


def test_the_attack_surface_of_the_nanos_image_is_its_manifest(built: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = manifest_files((built / "manifest").read_text())
    elf = {p: h for p, h in files.items() if Path(h).read_bytes()[:4] == b"\x7fELF"}
    libraries = {p for p in elf if ".so" in p.rsplit("/", 1)[-1]}
    programs = set(elf) - libraries
    # the manifest holds node, every library ldd names and the loader: 7 here
    assert programs == {"/node"}
    assert libraries == ldd_paths(os.path.realpath(shutil.which("node") or "node"))
    assert set(files) - set(elf) == {"/app.js", "/etc/ld.so.cache"}

    monkeypatch.setenv("NANOS_DIR", str(NANOS))
    image = str(built / "node.img")
    measured = surface_of_image([image])
    assert measured["complete"] is True and "unknown" not in measured, measured["method"]
    # ... and the image holds exactly that, plus the kernel mkfs -k put in its boot partition
    assert set(measured["executable_paths"]) == programs | {"partition 1:/kernel"}
    assert set(measured["library_paths"]) == libraries
    assert (measured["executables"], measured["shared_libraries"]) == (2, len(libraries))
    assert (measured["shell"], measured["setuid_files"]) == (False, 0)
    assert "read with" in measured["method"] and "dump" in measured["method"]
    block = image_block([image])
    assert block["bytes"] == os.stat(image).st_size and 0 < block["compressed_bytes"] < block["bytes"]


def test_a_nanos_image_that_cannot_be_read_is_unknown_not_zero(
    built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = str(built / "node.img")

    def unknown(why: str) -> None:
        measured = surface_of_image([image])
        assert measured["complete"] is False, measured
        for key in ("executables", "shared_libraries", "shell", "setuid_files"):
            assert measured[key] is None and why in measured["unknown"][key], (key, measured["unknown"])

    # no dump where NANOS_DIR points; no NANOS_DIR and no ~/.ops
    monkeypatch.setenv("NANOS_DIR", str(tmp_path))
    unknown(f"no Nanos `dump` in NANOS_DIR={tmp_path}")
    monkeypatch.delenv("NANOS_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    unknown("no Nanos toolchain on this host to read it with (`dump`: set NANOS_DIR or install ops)")
    # the toolchain as ops installs it reads it
    ops_home(tmp_path, ("0.1.51",))
    assert surface_of_image([image])["executables"] == 2
    # a damaged image: the real dump lists every file, extracts (next to) none of them and exits 0
    monkeypatch.setenv("NANOS_DIR", str(NANOS))
    damaged = tmp_path / "damaged.img"
    with open(image, "rb") as f:
        damaged.write_bytes(f.read(20 << 20))  # the root file system's log, without the files' data
    image = str(damaged)
    unknown("files but extracted")


# --------------------------------------------------------------------------------------------
# Boot, and compare
# --------------------------------------------------------------------------------------------


def hostfwd_port(runner: psutil.Process, deadline: float) -> int:
    """The host port of the QEMU that `uniobs run` launched (its hostfwd rule), from its command line."""
    while time.monotonic() < deadline:
        for child in runner.children(recursive=True):
            try:
                match = re.search(r"hostfwd=tcp:127\.0\.0\.1:(\d+)-", " ".join(child.cmdline()))
            except psutil.Error:
                continue
            if match:
                return int(match.group(1))
        time.sleep(0.1)
    raise AssertionError("no QEMU with a hostfwd rule under uniobs run")


@pytest.mark.qemu
@pytest.mark.slow
@requires_qemu
def test_the_nanos_image_boots_under_uniobs_run_and_answers_http_200(tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    env = host_env(tmp_path, NANOS_DIR=str(NANOS))  # builds examples/hello-node/nanos/build if missing
    cmd = [sys.executable, "-m", "uniobs.cli", "run", "--quiet", "--interval", "0.5", "--export", f"file:{out}",
           "--function", str(HELLO), "--as", "nanos"]  # fmt: skip
    runner = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    status = body = None
    try:
        deadline = time.monotonic() + 240
        port = hostfwd_port(psutil.Process(runner.pid), deadline)
        while time.monotonic() < deadline and runner.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    status, body = response.status, response.read()
                    break
            except OSError:
                time.sleep(0.2)
        assert (status, body) == (200, b"Hello World\n")
        time.sleep(1.0)  # one more scrape while it serves
    finally:
        runner.send_signal(signal.SIGTERM)
        _, stderr = runner.communicate(timeout=60)
    assert runner.returncode == 0, stderr.decode(errors="replace")[-3000:]
    signals = Signals(out)
    console = signals.console()
    marks = [line.split()[2] for line in console if line.startswith("@@uniobs/1 mark")]
    assert marks[:2] == ["app_start", "ready"], console[:20]
    assert any("en1: assigned 10.0.2.15" in line for line in console)  # Nanos' own console line
    # the cold start ended at the definition's readiness probe: HTTP 200 from the guest, seen by uniobs
    [root] = [s for s in signals.spans() if s["name"] == "coldstart"]
    assert root.get("status", {}).get("code") != 2, root
    assert signals.last("process.memory.usage") > 100 << 20  # QEMU holding a booted Nanos and Node.js
    assert signals.events()[-1]["resource"]["service.name"] == "hello-node"


@pytest.mark.qemu
@pytest.mark.slow
@requires_qemu
@requires_make_gcc
def test_compare_skips_a_side_this_host_cannot_build_and_says_why(tmp_path: Path) -> None:
    """No Nanos toolchain on this host: the Nanos side is skipped with its reason, the others are
    compared; `run --as nanos` ends in one clear line."""
    elf = MINIKERNEL / "build" / "minikernel.elf"
    definition = tmp_path / "fn" / "function.toml"
    definition.parent.mkdir()
    definition.write_text(
        'name = "two-sides"\n\n'
        "[nanos]\n"
        'shrinkwrap = "unikernel"\n'
        f'build = ["python3", "{EXAMPLE / "build.py"}", "--out", "{tmp_path / "nanos-build"}"]\n'
        f'image = ["{tmp_path / "nanos-build" / "node.img"}"]\n'
        'command = ["qemu-system-x86_64", "-accel", "{accel}"]\n\n'
        "[unikernel]\n"
        f'build = ["make", "-s", "-C", "{MINIKERNEL}"]\n'
        f'image = ["{elf}"]\n'
        'command = ["qemu-system-x86_64", "-machine", "microvm", "-accel", "{accel}", "-m", "64", "-nodefaults", '
        '"-nographic", "-no-reboot", "-serial", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", '
        f'"-kernel", "{elf}", "-append", "mode=ok work_ms=50 run_ms=3000"]\n'
    )
    home = tmp_path / "home"
    home.mkdir()
    env = host_env(home, UNIOBS_ACCEL_CACHE=str(tmp_path / "accel.json"))
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "uniobs.cli", "compare", str(definition), "--runs", "1", "--idle", "0.5",
         "--out", str(out), "--no-color"],
        env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert [s["side"] for s in results["sides"]] == ["unikernel"]
    assert results["skipped"] == [
        {"side": "nanos", "shrinkwrap": "unikernel", "label": "nanos", "reason": NO_TOOLCHAIN}
    ]
    assert f"uniobs compare: nanos: skipped: {NO_TOOLCHAIN}" in done.stderr
    assert f"skipped      nanos: {NO_TOOLCHAIN}" in done.stdout
    for report in ("report.md", "report.html"):
        assert NO_TOOLCHAIN in (out / report).read_text()
    # the same side, launched alone: an error in one line, not a traceback
    ran = subprocess.run(
        [sys.executable, "-m", "uniobs.cli", "run", "--function", str(definition), "--as", "nanos"],
        env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert ran.returncode != 0 and "Traceback" not in ran.stderr
    assert ran.stderr.strip().splitlines()[-1] == (
        f"Error: {definition}: [nanos] cannot be built on this host: {NO_TOOLCHAIN}"
    )
