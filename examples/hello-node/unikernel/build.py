#!/usr/bin/env python3
"""Builds the hello-node microVM from what Debian installed on this host.

Outputs (in ``--out``, default ``build/``):

* ``vmlinux`` -- the uncompressed ELF kernel, cut out of ``/boot/vmlinuz-<version>`` (Debian 12
  compresses the bzImage payload with xz). QEMU boots an ELF with a PVH note directly on
  ``-machine microvm``: no firmware, no bootloader, no real-mode setup code.
* ``initramfs.cpio.gz`` -- a newc cpio archive written here (no ``cpio`` tool needed), gzip'd:
  ``/init`` (the static launcher from init.c), ``/usr/bin/node`` (stripped copy) and the shared
  libraries ``ldd`` names, the dynamic loader, the kernel modules for virtio-mmio networking in
  load order (``/etc/modules.load``), and ``/app/app.js``.
* ``run.sh`` -- the documented QEMU command; it asks ``boot_args.py`` for the ``-append`` value
  (which needs this host's TSC frequency, so it is computed at run time, not here).
* ``sizes.txt`` -- the sizes the README quotes.

Only the Python standard library is used. Everything is read from the host; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import lzma
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # examples/hello-node/ldd.py
from ldd import shared_libraries

HERE = Path(__file__).resolve().parent

# Modules the guest needs, by name; their dependencies are added from modules.dep. On Debian 12's
# kernel all of virtio (core, ring, mmio transport, net, rng) is built as modules (=m in
# /boot/config-*), and CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES is off, so the mmio devices are found
# through the ACPI tables QEMU's microvm machine generates (acpi=on is its default).
DEFAULT_MODULES = ("virtio_mmio", "virtio_net", "virtio_rng")

# Fixed metadata so that two builds from the same inputs give the same bytes.
MTIME = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))


# --------------------------------------------------------------------------------------------
# Kernel
# --------------------------------------------------------------------------------------------


def kernel_version_key(path: Path) -> list[int | str]:
    """Sort key for 'vmlinuz-6.1.0-56-amd64' that orders 6.1.0-9 before 6.1.0-56."""
    version = path.name.removeprefix("vmlinuz-")
    return [int(p) if p.isdigit() else p for p in re.split(r"[.\-+~]", version)]


def find_vmlinuz(boot: Path = Path("/boot")) -> Path:
    """The newest /boot/vmlinuz-* (Debian's linux-image-amd64 installs it)."""
    candidates = sorted(boot.glob("vmlinuz-*"), key=kernel_version_key)
    if not candidates:
        raise SystemExit(f"build.py: no {boot}/vmlinuz-* (apt-get install linux-image-amd64)")
    return candidates[-1]


def _decompress_xz(data: bytes) -> bytes:
    # The kernel's xz stream uses CRC32 and ends before the trailing size word; the decompressor
    # stops at the end of the stream and leaves the rest in unused_data.
    return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)


def _decompress_gzip(data: bytes) -> bytes:
    return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)


def _decompress_lzma(data: bytes) -> bytes:
    return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(data)


def _decompress_zstd(data: bytes) -> bytes:
    try:  # Python 3.14+ has compression.zstd; older ones may have the zstandard package.
        from compression import zstd  # type: ignore[import-not-found]

        return bytes(zstd.ZstdDecompressor().decompress(data))
    except ImportError:
        pass
    try:
        import zstandard  # type: ignore[import-not-found]

        return bytes(zstandard.ZstdDecompressor().decompressobj().decompress(data))
    except ImportError:
        pass
    zstd_bin = shutil.which("zstd")
    if zstd_bin is None:
        raise ValueError("no zstd decompressor available")
    # zstd -d stops with an error at the trailing bytes after the frame, but has written the frame.
    proc = subprocess.run([zstd_bin, "-dc"], input=data, capture_output=True)
    return proc.stdout


# Magic bytes of every payload format a bzImage may use (the same list as the kernel's own
# scripts/extract-vmlinux), in the order they are tried.
PAYLOAD_FORMATS = (
    ("xz", b"\xfd7zXZ\x00", _decompress_xz),
    ("gzip", b"\x1f\x8b\x08", _decompress_gzip),
    ("zstd", b"\x28\xb5\x2f\xfd", _decompress_zstd),
    ("lzma", b"\x5d\x00\x00", _decompress_lzma),
)


def extract_vmlinux(vmlinuz: bytes) -> tuple[bytes, str]:
    """Finds the compressed kernel inside a bzImage by magic bytes; returns (ELF image, format)."""
    if vmlinuz.startswith(b"\x7fELF"):
        return vmlinuz, "none"
    for name, magic, decompress in PAYLOAD_FORMATS:
        start = 0
        while (offset := vmlinuz.find(magic, start)) >= 0:
            start = offset + 1
            try:
                image = decompress(vmlinuz[offset:])
            except (lzma.LZMAError, zlib.error, ValueError, EOFError):
                continue
            if image.startswith(b"\x7fELF"):
                return image, name
    raise SystemExit("build.py: found no compressed ELF kernel inside the vmlinuz")


def has_pvh_note(elf: bytes) -> bool:
    """True if the ELF carries XEN_ELFNOTE_PHYS32_ENTRY (type 18, owner 'Xen'): QEMU's PVH boot."""
    return b"Xen\x00" in elf and _find_note(elf, b"Xen\x00", 18)


def _find_note(elf: bytes, owner: bytes, note_type: int) -> bool:
    (phoff,) = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        p_type, _flags, p_offset, _vaddr, _paddr, p_filesz = struct.unpack_from("<IIQQQQ", elf, phoff + i * phentsize)
        if p_type != 4:  # PT_NOTE
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12 : pos + 12 + namesz]
            if name == owner and ntype == note_type:
                return True
            pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


# --------------------------------------------------------------------------------------------
# Kernel modules
# --------------------------------------------------------------------------------------------


def _modname(path_or_name: str) -> str:
    """'kernel/drivers/char/hw_random/virtio-rng.ko' -> 'virtio_rng' (the kernel treats - and _ alike)."""
    base = path_or_name.rsplit("/", 1)[-1]
    for suffix in (".ko", ".ko.xz", ".ko.gz", ".ko.zst"):
        base = base.removesuffix(suffix)
    return base.replace("-", "_")


def resolve_modules(moddir: Path, wanted: Iterable[str]) -> list[Path]:
    """The .ko files to load, dependencies first, from modules.dep; built-in modules are skipped."""
    deps: dict[str, tuple[str, list[str]]] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        target, _, rest = line.partition(":")
        deps[_modname(target)] = (target, rest.split())
    builtin = set()
    builtin_file = moddir / "modules.builtin"
    if builtin_file.exists():
        builtin = {_modname(line) for line in builtin_file.read_text().split()}

    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        if name in builtin:
            return
        if name not in deps:
            raise SystemExit(f"build.py: module {name} is neither in modules.dep nor built in ({moddir})")
        # modules.dep lists the full closure, most-depended-on last; visiting each dependency
        # before the module itself gives a valid order whatever the listing order is.
        for dep in deps[name][1]:
            visit(_modname(dep))
        order.append(name)

    for name in wanted:
        visit(_modname(name))
    return [moddir / deps[name][0] for name in order]


# --------------------------------------------------------------------------------------------
# Node.js and its libraries
# --------------------------------------------------------------------------------------------


def stripped_copy(binary: Path, workdir: Path) -> Path:
    """A copy without debug information (Node's package ships ~12 MB of it); falls back to as-is."""
    strip = shutil.which("strip")
    if strip is None:
        return binary
    dest = workdir / binary.name
    subprocess.run([strip, "--strip-unneeded", "-o", str(dest), str(binary)], check=True)
    return dest


# --------------------------------------------------------------------------------------------
# newc cpio
# --------------------------------------------------------------------------------------------


class Cpio:
    """Writes a newc ("070701") cpio archive, the format the kernel unpacks as an initramfs."""

    def __init__(self, out: io.BufferedIOBase | gzip.GzipFile) -> None:
        self.out = out
        self.ino = 1
        self.size = 0  # uncompressed bytes written
        self.dirs: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0), nlink: int = 1) -> None:
        name_bytes = name.encode() + b"\x00"
        fields = (self.ino, mode, 0, 0, nlink, MTIME, len(data), 0, 0, rdev[0], rdev[1], len(name_bytes), 0)
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self.ino += 1
        self._write(header + name_bytes + b"\x00" * (-(len(header) + len(name_bytes)) % 4))
        self._write(data + b"\x00" * (-len(data) % 4))

    def _write(self, b: bytes) -> None:
        self.out.write(b)
        self.size += len(b)

    def directory(self, path: str) -> None:
        """Adds path and every missing parent directory."""
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d and d not in self.dirs:
                self.dirs.add(d)
                self._entry(d, stat.S_IFDIR | 0o755, nlink=2)

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self.directory(os.path.dirname(path.strip("/")))
        self._entry(path.strip("/"), stat.S_IFREG | mode, data)

    def chardev(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        self.directory(os.path.dirname(path.strip("/")))
        self._entry(path.strip("/"), stat.S_IFCHR | mode, rdev=(major, minor))

    def symlink(self, path: str, target: str) -> None:
        self.directory(os.path.dirname(path.strip("/")))
        self._entry(path.strip("/"), stat.S_IFLNK | 0o777, target.encode())

    def trailer(self) -> None:
        self._entry("TRAILER!!!", 0, nlink=1)
        self._write(b"\x00" * (-self.size % 512))


# --------------------------------------------------------------------------------------------
# run.sh
# --------------------------------------------------------------------------------------------

RUN_SH = """#!/bin/sh
# Boots the hello-node microVM (written by build.py). HTTP on 127.0.0.1:${PORT:-8002} -> guest :8002.
#   PORT=18002 build/run.sh                                   # another host port
#   EXTRA="traceparent=00-<32 hex>-<16 hex>-01" build/run.sh  # more kernel command line words
# The -append value needs this host's TSC frequency: boot_args.py computes it at run time.
# QEMU exits when the guest powers off, or panics (panic=-1 + -no-reboot), e.g. when Node.js exits.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
append=$(python3 "$here/@BOOT_ARGS@" ${EXTRA:+--extra "$EXTRA"})
# KVM only where a real probe boot says it works and is faster (uniobs/runtimes/accel.py); else TCG.
accel=${ACCEL:-$(python3 -m uniobs.runtimes.accel 2>/dev/null || echo tcg)}
echo "hello-node microVM: accelerator $accel" >&2
exec ${QEMU:-qemu-system-x86_64} -machine microvm,pit=on,rtc=on -accel "$accel" -m ${MEM:-1024} \\
  -nodefaults -nographic -no-reboot -serial stdio \\
  -kernel "$here/vmlinux" -initrd "$here/@INITRD@" -append "$append" \\
  -netdev user,id=n0,hostfwd=tcp:127.0.0.1:${PORT:-8002}-:8002 -device virtio-net-device,netdev=n0 \\
  -device virtio-rng-device
"""


# --------------------------------------------------------------------------------------------


def initramfs_name(compress: str) -> str:
    return "initramfs.cpio.gz" if compress == "gzip" else "initramfs.cpio"


def build(
    out_dir: Path, init: Path, app: Path, node: Path, vmlinuz: Path, modules: list[str], compress: str, level: int
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)

    # 1. The kernel.
    image, fmt = extract_vmlinux(vmlinuz.read_bytes())
    if not has_pvh_note(image):
        raise SystemExit(f"build.py: {vmlinuz} has no PVH entry note; QEMU cannot boot it directly")
    (out_dir / "vmlinux").write_bytes(image)
    version = vmlinuz.name.removeprefix("vmlinuz-")
    moddir = Path("/lib/modules") / version

    # 2. The initramfs.
    kos = resolve_modules(moddir, modules)
    initramfs = out_dir / initramfs_name(compress)
    tmp_out = initramfs.with_name(initramfs.name + ".tmp")
    with tempfile.TemporaryDirectory() as work, open(tmp_out, "wb") as raw:
        node_file = stripped_copy(node, Path(work))
        node_size = node_file.stat().st_size
        # mtime=0 and no file name in the gzip header: reproducible output.
        with (
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=level, mtime=0)
            if compress == "gzip"
            else contextlib.nullcontext(raw)
        ) as out:
            cpio = Cpio(out)
            for d in ("dev", "proc", "sys", "tmp", "etc", "app", "root"):
                cpio.directory(d)
            # The kernel opens /dev/console for init's stdin/stdout/stderr before /dev is mounted.
            cpio.chardev("dev/console", 5, 1)
            cpio.chardev("dev/null", 1, 3, 0o666)
            cpio.file("init", init.read_bytes(), 0o755)
            cpio.file("usr/bin/node", node_file.read_bytes(), 0o755)
            for guest_path, host_path in shared_libraries(node):
                cpio.file(guest_path, host_path.read_bytes(), 0o755)
            load_order = []
            for ko in kos:
                guest_path = f"lib/modules/{ko.name}"
                cpio.file(guest_path, ko.read_bytes())
                load_order.append("/" + guest_path)
            cpio.file("etc/modules.load", "".join(p + "\n" for p in load_order).encode())
            cpio.file("etc/hostname", b"hello-node\n")
            cpio.file("etc/hosts", b"127.0.0.1 localhost hello-node\n")
            cpio.file("etc/resolv.conf", b"nameserver 10.0.2.3\n")  # QEMU user networking's DNS
            cpio.file("app/app.js", app.read_bytes())
            cpio.trailer()
            uncompressed = cpio.size
    tmp_out.replace(initramfs)

    # 3. The launcher script and the sizes.
    run_sh = out_dir / "run.sh"
    boot_args = os.path.relpath(HERE / "boot_args.py", out_dir.resolve())
    run_sh.write_text(RUN_SH.replace("@INITRD@", initramfs.name).replace("@BOOT_ARGS@", boot_args))
    run_sh.chmod(0o755)
    sizes = {
        "kernel": version,
        "kernel_payload_format": fmt,
        "vmlinuz_bytes": vmlinuz.stat().st_size,
        "vmlinux_bytes": len(image),
        "initramfs_file": initramfs.name,
        "initramfs_file_bytes": initramfs.stat().st_size,
        "initramfs_cpio_bytes": uncompressed,
        "node_bytes": node.stat().st_size,
        "node_stripped_bytes": node_size,
        "modules": " ".join(ko.name for ko in kos),
    }
    (out_dir / "sizes.txt").write_text("".join(f"{k}={v}\n" for k, v in sizes.items()))
    for k, v in sizes.items():
        print(f"  {k}: {v}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--out", type=Path, default=HERE / "build")
    p.add_argument("--init", type=Path, default=HERE / "build" / "init", help="the static /init binary")
    p.add_argument("--app", type=Path, default=HERE.parent / "app.js")
    p.add_argument("--node", type=Path, default=Path(shutil.which("node") or "/usr/bin/node"))
    p.add_argument("--vmlinuz", type=Path, default=None, help="default: newest /boot/vmlinuz-*")
    p.add_argument("--module", action="append", dest="modules", help=f"default: {' '.join(DEFAULT_MODULES)}")
    p.add_argument(
        "--compress",
        choices=("gzip", "none"),
        default="gzip",
        help="gzip (default): initramfs.cpio.gz; none: initramfs.cpio, larger but boots faster under TCG",
    )
    p.add_argument("--level", type=int, default=6, help="gzip level (default 6)")
    args = p.parse_args(argv)
    if not args.node.exists():
        raise SystemExit(f"build.py: {args.node} not found (apt-get install nodejs)")
    node = Path(os.path.realpath(args.node))
    vmlinuz = args.vmlinuz or find_vmlinuz()
    print(f"build.py: kernel {vmlinuz}, node {node}")
    build(
        args.out, args.init, args.app, node, vmlinuz, args.modules or list(DEFAULT_MODULES), args.compress, args.level
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
