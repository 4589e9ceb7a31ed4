"""What a command needs and the project can build, it builds; anything else missing ends in one clear
line and a non-zero status, never a traceback. The real `uniobs` CLI, from states where the build
outputs are absent (copies in tmp_path: the real build outputs other tests use stay put)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import ROOT, requires_make_gcc, requires_qemu

QEMU = shutil.which("qemu-system-x86_64")


def uniobs(
    *args: str, tmp_path: Path, env: dict[str, str] | None = None, pythonpath: Path | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:  # fmt: skip
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "UNIOBS_"))}
    full_env["UNIOBS_ACCEL_CACHE"] = str(tmp_path / "accel-cache" / "accel.json")  # a fresh machine has none
    if pythonpath is not None:
        full_env["PYTHONPATH"] = str(pythonpath)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "uniobs.cli", *args], capture_output=True, text=True, env=full_env, timeout=timeout,
        cwd=pythonpath or tmp_path, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def one_clear_line(result: subprocess.CompletedProcess[str]) -> str:
    """The command failed with exactly one error line (progress lines before it are fine)."""
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0], result.stderr
    return errors[0]


def definition(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "fn" / "function.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('name = "fn"\n' + body)
    return path


def both_commands(path: Path, tmp_path: Path) -> list[str]:
    """The error line of `compare` and of `run --function` on the same definition."""
    out = tmp_path / "out"
    return [
        one_clear_line(uniobs("compare", str(path), "--runs", "1", "--out", str(out), tmp_path=tmp_path)),
        one_clear_line(uniobs("run", "--function", str(path), tmp_path=tmp_path)),
    ]


def test_a_missing_function_file(tmp_path: Path) -> None:
    for line in both_commands(tmp_path / "nosuch.toml", tmp_path):
        assert line == f"Error: {tmp_path / 'nosuch.toml'}: no such file"


def test_a_failing_build_is_its_last_lines(tmp_path: Path) -> None:
    path = definition(tmp_path, """
[unikernel]
build = ["sh", "-c", "echo compiling; echo 'cc: error: boom.c: No such file' >&2; exit 2"]
image = ["build/fn.elf"]
command = ["sh", "-c", "true"]
""")  # fmt: skip
    for line in both_commands(path, tmp_path):
        assert line.startswith(f"Error: {path}: [unikernel] build failed (sh -c "), line
        assert line.endswith("cc: error: boom.c: No such file"), line


def test_a_build_that_makes_no_image(tmp_path: Path) -> None:
    path = definition(tmp_path, '[container]\nbuild = ["true"]\nimage = ["build/rootfs"]\ncommand = ["true"]\n')
    for line in both_commands(path, tmp_path):
        assert line == f"Error: {path}: [container] the build (true) succeeded but did not make: build/rootfs"


def test_a_missing_image_without_a_build(tmp_path: Path) -> None:
    path = definition(tmp_path, '[container]\nimage = ["build/rootfs"]\ncommand = ["true"]\n')
    for line in both_commands(path, tmp_path):
        assert line == f"Error: {path}: [container] image missing and no build command: build/rootfs"


def test_a_build_tool_or_runtime_that_is_not_installed(tmp_path: Path) -> None:
    path = definition(tmp_path, '[container]\nbuild = ["no-such-make"]\nimage = ["x"]\ncommand = ["true"]\n')
    for line in both_commands(path, tmp_path):
        assert line == f"Error: {path}: [container] cannot build the missing image (no-such-make): " + (
            "no-such-make is not installed"
        )
    path = definition(tmp_path, '[container]\ncommand = ["runc", "run", "--bundle", "b", "{id}"]\n')
    empty = tmp_path / "empty-path"
    empty.mkdir()
    for line in [
        one_clear_line(uniobs("compare", str(path), "--out", str(tmp_path / "o"), tmp_path=tmp_path,
                              env={"PATH": str(empty)})),
        one_clear_line(uniobs("run", "--function", str(path), tmp_path=tmp_path, env={"PATH": str(empty)})),
    ]:  # fmt: skip
        assert line == f"Error: {path}: [container] cannot launch: runc is not installed (Debian: apt-get install runc)"


def _minikernel(tmp_path: Path) -> Path:
    """A copy of examples/minikernel without its build outputs."""
    copy = tmp_path / "minikernel"
    shutil.copytree(ROOT / "examples" / "minikernel", copy, ignore=shutil.ignore_patterns("build"))
    return copy / "function.toml"


@requires_qemu
def test_no_make_to_build_the_image(tmp_path: Path) -> None:
    path = _minikernel(tmp_path)
    bin_dir = tmp_path / "bin"  # QEMU, and no make
    bin_dir.mkdir()
    (bin_dir / "qemu-system-x86_64").symlink_to(QEMU or "")
    line = one_clear_line(
        uniobs("compare", str(path), "--out", str(tmp_path / "out"), tmp_path=tmp_path, env={"PATH": str(bin_dir)})
    )
    assert line == (
        f"Error: {path}: [unikernel] cannot build the missing image (make -s): "
        "make is not installed (Debian: apt-get install make gcc)"
    )


@pytest.mark.qemu
@pytest.mark.slow
@requires_qemu
@requires_make_gcc
def test_compare_builds_the_image_and_without_a_probe_kernel_says_why_it_chose_tcg(tmp_path: Path) -> None:
    # an installed uniobs: the package without the checkout's examples/ (so no probe kernel to build)
    installed = tmp_path / "site"
    shutil.copytree(ROOT / "uniobs", installed / "uniobs", ignore=shutil.ignore_patterns("__pycache__"))
    path = _minikernel(tmp_path)
    out = tmp_path / "out"
    result = uniobs(
        "compare", str(path), "--runs", "1", "--idle", "0.2", "--out", str(out), "--no-color",
        tmp_path=tmp_path, pythonpath=installed,
    )  # fmt: skip
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert (path.parent / "build" / "minikernel.elf").is_file()  # built, as the definition says
    assert "uniobs compare: accelerator: tcg (not probed: no probe kernel" in result.stderr
    host = json.loads((out / "results.json").read_text())["host"]
    assert host["accelerator"] == "tcg"
    assert host["accelerator_reason"].startswith("tcg (not probed: no probe kernel (an installed uniobs")
    assert not (tmp_path / "accel-cache" / "accel.json").exists()  # a guess is not cached as a probe
    for name in ("report.html", "report.md", "telemetry.jsonl"):
        assert (out / name).is_file()


def test_a_first_side_this_host_cannot_build_names_the_other_sides(tmp_path: Path) -> None:
    """The first table is the default side of `run --function` and `serve`: when its build says this
    host cannot build it (status 77), the error names the sides that remain."""
    path = definition(tmp_path, """
[nanos]
shrinkwrap = "unikernel"
build = ["sh", "-c", "echo 'no Nanos toolchain on this host' >&2; exit 77"]
image = ["build/fn.img"]
command = ["true"]

[container]
command = ["true"]
""")  # fmt: skip
    for args in (["run", "--function", str(path)], ["serve", str(path)]):
        line = one_clear_line(uniobs(*args, tmp_path=tmp_path))
        assert "no Nanos toolchain on this host" in line and line.endswith("(another side: --as container)"), line
