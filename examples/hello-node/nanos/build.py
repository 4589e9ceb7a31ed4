#!/usr/bin/env python3
"""Builds hello-node as a Nanos unikernel image from this host's node, ``../app.js`` and a Nanos
toolchain found on this host.

The toolchain (``kernel.img``, ``boot.img``, ``mkfs``) is looked for, in this order:

1. ``$NANOS_DIR`` -- a folder holding those files (an error if they are not all there);
2. ``~/.ops/<version>/`` -- where NanoVMs' ``ops`` installs them, the newest version first
   (``~/.ops/nightly/`` only when no numbered version has them).

Neither: the build exits with status 77 ("cannot be built on this host", the automake skip
status) and says so on its last line; ``uniobs compare`` then reports the side as skipped, with
that line as the reason.

Outputs (in ``--out``, default ``build/``):

* ``node.img`` -- the bootable disk image ``mkfs`` writes: Nanos' boot loader, a boot partition
  holding the kernel, and a root file system (TFS) with ``/node`` (a stripped copy of this host's
  node), every library ``ldd`` lists at the path the binary asks for, the dynamic loader,
  ``/etc/ld.so.cache`` and ``/app.js``; the program is ``/node /app.js`` with ``PORT=8002``.
* ``node`` -- the stripped copy of node the image holds.
* ``manifest`` -- the manifest given to ``mkfs`` (its ``host:`` paths name the files copied in).
* ``run.sh`` -- the documented QEMU command.
* ``toolchain.txt``, ``sizes.txt`` -- which toolchain made the image; the sizes the README quotes.

Only the Python standard library is used. Everything is read from the host; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # examples/hello-node/ldd.py
from ldd import shared_libraries

HERE = Path(__file__).resolve().parent
TOOLS = ("kernel.img", "boot.img", "mkfs")
SKIP = 77  # "cannot be built on this host": the side is skipped, not failed
NO_TOOLCHAIN = "no Nanos toolchain on this host (set NANOS_DIR or install ops)"


class Skip(Exception):
    """The image cannot be built on this host; str() says why, in one line."""


# --------------------------------------------------------------------------------------------
# The toolchain
# --------------------------------------------------------------------------------------------


def _version_key(name: str) -> tuple[int, ...] | None:
    """(0, 1, 51) for "0.1.51" or "v0.1.51"; None for a name that is no version number."""
    match = re.fullmatch(r"v?(\d+(?:\.\d+)*)", name)
    return tuple(int(p) for p in match.group(1).split(".")) if match else None


def find_toolchain(environ: dict[str, str] | None = None, home: Path | None = None) -> Path:
    """The folder of the Nanos toolchain this build uses; Skip when this host has none."""
    environ = dict(os.environ) if environ is None else environ
    explicit = environ.get("NANOS_DIR")
    if explicit:
        folder = Path(explicit).expanduser()
        absent = [t for t in TOOLS if not (folder / t).is_file()]
        if absent:  # asked for by name: a mistake to report, not a host to skip
            raise SystemExit(f"build.py: NANOS_DIR={explicit}: no {', '.join(absent)} there")
        return folder
    ops = (home or Path.home()) / ".ops"
    try:
        entries = [p for p in ops.iterdir() if p.is_dir()]
    except OSError:
        entries = []
    numbered = sorted(
        ((key, p) for p in entries if (key := _version_key(p.name)) is not None), key=lambda kp: kp[0], reverse=True
    )
    candidates = [p for _, p in numbered] + [p for p in entries if p.name == "nightly"]
    for folder in candidates:
        if all((folder / t).is_file() for t in TOOLS):
            return folder
    raise Skip(NO_TOOLCHAIN)


# --------------------------------------------------------------------------------------------
# Node.js and its libraries
# --------------------------------------------------------------------------------------------


def stripped_copy(binary: Path, dest: Path) -> Path:
    """A copy without debug information (Node's package ships ~12 MB of it), as the container and
    the microVM carry it; node as is when binutils' strip is not installed."""
    strip = shutil.which("strip")
    if strip is None:
        shutil.copyfile(binary, dest)
    else:
        subprocess.run([strip, "--strip-unneeded", "-o", str(dest), str(binary)], check=True)
    os.chmod(dest, 0o755)
    return dest


# --------------------------------------------------------------------------------------------
# The manifest
# --------------------------------------------------------------------------------------------


def _name(part: str) -> str:
    """A file name as a manifest symbol: plain names as they are (mkfs' parser takes letters,
    digits and . _ - +); anything else refused rather than quoted wrongly."""
    if not re.fullmatch(r"[A-Za-z0-9._+\-]+", part):
        raise SystemExit(f"build.py: a path part mkfs' manifest cannot name: {part!r}")
    return part


def _host(path: Path) -> str:
    text = str(path)
    if not re.fullmatch(r"[A-Za-z0-9._+\-/]+", text):
        raise SystemExit(f"build.py: a host path mkfs' manifest cannot carry: {text!r}")
    return f"(contents:(host:{text}))"


def manifest(files: dict[str, Path], program: str, arguments: list[str], environment: dict[str, str]) -> str:
    """The mkfs manifest of a root file system holding `files` (path inside -> host file)."""
    tree: dict[str, object] = {}
    for inside, host in sorted(files.items()):
        parts = [p for p in inside.split("/") if p]
        node = tree
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            assert isinstance(child, dict), inside
            node = child
        node[parts[-1]] = host

    def render(node: dict[str, object], indent: str) -> str:
        lines = []
        for name, value in node.items():
            if isinstance(value, dict):
                inner = render(value, indent + "  ")
                lines.append(f"{indent}{_name(name)}:(children:(\n{inner}{indent}))\n" if inner else
                             f"{indent}{_name(name)}:(children:())\n")  # fmt: skip
            else:
                assert isinstance(value, Path)
                lines.append(f"{indent}{_name(name)}:{_host(value)}\n")
        return "".join(lines)

    tree.setdefault("proc", {})  # Nanos serves /proc (app.js reads /proc/cmdline) on an empty directory
    env = " ".join(f"{_name(k)}:{_name(v)}" for k, v in environment.items())
    args = " ".join(_name(a) if not a.startswith("/") else a for a in arguments)
    return (
        "(\n children:(\n" + render(tree, "  ") + " )\n"
        f" program:{program}\n arguments:[{args}]\n environment:({env})\n)\n"
    )


# --------------------------------------------------------------------------------------------
# run.sh
# --------------------------------------------------------------------------------------------

RUN_SH = """#!/bin/sh
# Boots the hello-node Nanos image (written by build.py). HTTP on 127.0.0.1:${PORT:-8002} -> guest :8002.
#   PORT=18002 build/run.sh      # another host port
# snapshot=on: Nanos writes to its root file system; every boot starts from the image as built.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
# KVM only where a real probe boot says it works and is faster (uniobs/runtimes/accel.py); else TCG.
accel=${ACCEL:-$(python3 -m uniobs.runtimes.accel 2>/dev/null || echo tcg)}
echo "hello-node on Nanos: accelerator $accel" >&2
exec ${QEMU:-qemu-system-x86_64} -machine q35 -accel "$accel" -cpu max -m ${MEM:-1G} \\
  -display none -serial stdio -no-reboot \\
  -drive if=none,id=hd0,format=raw,snapshot=on,file="$here/node.img" \\
  -device virtio-scsi-pci,id=scsi0 -device scsi-hd,bus=scsi0.0,drive=hd0 \\
  -device virtio-net-pci,netdev=n0 -netdev user,id=n0,hostfwd=tcp:127.0.0.1:${PORT:-8002}-:8002 \\
  -device virtio-rng-pci
"""


# --------------------------------------------------------------------------------------------


def build(out: Path, node: Path, app: Path, toolchain: Path, strip: bool = True) -> dict[str, int]:
    out.mkdir(parents=True, exist_ok=True)
    image = out / "node.img"
    image.unlink(missing_ok=True)  # a failed build leaves no image behind
    node_copy = stripped_copy(node, out / "node") if strip else node
    files: dict[str, Path] = {"/node": node_copy, "/app.js": app.resolve()}
    for inside, host in shared_libraries(node):
        files[inside] = host
    if Path("/etc/ld.so.cache").is_file():
        files["/etc/ld.so.cache"] = Path("/etc/ld.so.cache")
    text = manifest(files, "/node", ["node", "/app.js"], {"PORT": "8002"})
    (out / "manifest").write_text(text)
    partial = out / "node.img.partial"
    done = subprocess.run(
        [str(toolchain / "mkfs"), "-b", str(toolchain / "boot.img"), "-k", str(toolchain / "kernel.img"), str(partial)],
        input=text, capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-5:]) or f"status {done.returncode}"
        raise SystemExit(f"build.py: {toolchain / 'mkfs'} failed: {tail}")
    partial.replace(image)
    (out / "toolchain.txt").write_text(f"{toolchain}\n")
    run_sh = out / "run.sh"
    run_sh.write_text(RUN_SH)
    run_sh.chmod(0o755)
    sizes = {
        "image_bytes": image.stat().st_size,
        "node_bytes": node_copy.stat().st_size,
        "libraries_bytes": sum(p.stat().st_size for k, p in files.items() if k.startswith(("/lib", "/lib64"))),
        "kernel_bytes": (toolchain / "kernel.img").stat().st_size,
    }
    (out / "sizes.txt").write_text("".join(f"{k} {v}\n" for k, v in sizes.items()))
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=HERE / "build")
    parser.add_argument("--node", type=Path, default=Path(shutil.which("node") or "/usr/bin/node"))
    parser.add_argument("--app", type=Path, default=HERE.parent / "app.js")
    parser.add_argument("--no-strip", action="store_true", help="copy node as is")
    args = parser.parse_args(argv)
    try:
        toolchain = find_toolchain()
    except Skip as exc:
        print(exc, file=sys.stderr)  # the reason alone, on the last line: compare quotes it
        return SKIP
    node = Path(os.path.realpath(args.node))
    if not node.is_file():
        raise SystemExit(f"build.py: no node binary at {args.node} (apt-get install nodejs)")
    sizes = build(args.out, node, args.app, toolchain, strip=not args.no_strip)
    print(f"{'toolchain':16} {toolchain}")
    for key, value in sizes.items():
        print(f"{key:16} {value:>12,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
