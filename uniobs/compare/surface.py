"""Image size and attack surface, measured from the image's bytes and from a running process's /proc.

Three functions fill the `image` and `attack_surface` blocks of a comparison (see uniobs.results):

* `image_block(paths)` -- what the image weighs: the apparent sizes of its files, and gzip -6 of its
  contents (a directory as the tar stream `podman import` / `docker import` would carry).
* `surface_of_image(paths)` -- what the image holds: ELF executables, shared libraries, a shell,
  setuid/setgid files. A directory is walked; a newc cpio (an initramfs: plain, gzip, xz, lzma,
  bzip2, or zstd when a zstd module is importable) and a tar are read as streams; a kernel or a
  bare unikernel ELF given as a path is one executable; a Nanos disk image (TFS file systems) is
  read through the Nanos toolchain's own `dump` ($NANOS_DIR, else ~/.ops/<version>/). What cannot
  be read (no `dump` here, a format this module does not know, a damaged archive) makes those
  figures unknown -- None, `complete` false, the reason in `unknown` -- never a count of 0.
* `surface_of_process(pid)` -- what the running process exposes: listening TCP/UDP sockets it (or
  a descendant) holds, its seccomp state (and the container profile's allow list), and the host
  device nodes it holds open or, in a container, can see in its /dev.

`attack_surface(image, process)` joins the two parts into one block.

Reads: /proc/<pid>/{fd,net/tcp,net/tcp6,net/udp,net/udp6,status,ns/net,ns/mnt,root/dev} (Linux >= 5.9
for `Seccomp_filters:`; older kernels give only `Seccomp:`). Only the standard library is used.
Everything is streamed: no file or archive is held whole in memory.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import importlib
import json
import lzma
import os
import posixpath
import re
import shutil
import socket
import stat
import struct
import subprocess
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

CHUNK = 1 << 20  # streaming unit for compression and skipping
RAW_CHUNK = 1 << 16  # compressed bytes fed to a decompressor at a time (bounds its output)
ELF_HEAD = 4096  # bytes read to classify an ELF (header and, nearly always, program headers)
DYNAMIC_MAX = 1 << 16  # bytes of a PT_DYNAMIC segment read, at most
LIST_MAX = 50  # paths listed per kind in a block (the counts are complete)

# Runtime bounds: a process with more is read up to these and the method says so.
MAX_PROCS = 256  # the process and its descendants examined
MAX_SCAN = 65536  # /proc entries scanned for descendants
MAX_FDS = 4096  # fds read per process
MAX_NET_LINES = 65536  # lines read per /proc/<pid>/net table
MAX_DEV_ENTRIES = 4096  # entries walked under a container's /dev

# --------------------------------------------------------------------------------------------
# Image size
# --------------------------------------------------------------------------------------------


class _Counter:
    """A write-only sink that only counts: the compressed stream is measured, never kept."""

    def __init__(self) -> None:
        self.n = 0

    def write(self, data: bytes) -> int:
        self.n += len(data)
        return len(data)

    def flush(self) -> None:
        return None


def _tree_in_tar_order(root: str) -> Iterator[tuple[str, str]]:
    """(path, name relative to root) in the order the example builds write their tars: top-down,
    each directory's subdirectories then its files, sorted; symlinks are listed, never followed."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in [*dirnames, *sorted(filenames)]:
            path = os.path.join(dirpath, name)
            yield path, os.path.relpath(path, root)


def image_block(paths: Sequence[str]) -> dict[str, Any]:
    """The `image` block: bytes on disk and gzip -6 bytes of the files making an image."""
    if not paths:
        raise ValueError("image_block: no paths")
    seen: set[tuple[int, int]] = set()
    files: list[dict[str, Any]] = []
    total = nfiles = links = 0
    unreadable: list[str] = []
    counter = _Counter()

    def normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mtime = 0
        return info

    with gzip.GzipFile(fileobj=counter, mode="wb", compresslevel=6, mtime=0) as gz:
        for top in paths:
            st = os.stat(top)  # a path named by the caller is followed; links inside are not
            own = 0
            if stat.S_ISDIR(st.st_mode):
                with tarfile.TarFile(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT, copybufsize=CHUNK) as tar:
                    for path, arcname in _tree_in_tar_order(top):
                        try:
                            lst = os.lstat(path)
                        except OSError:
                            unreadable.append(path)
                            continue
                        if stat.S_ISREG(lst.st_mode):
                            if (lst.st_dev, lst.st_ino) in seen:
                                links += 1
                            else:
                                seen.add((lst.st_dev, lst.st_ino))
                                own += lst.st_size
                                nfiles += 1
                        info = tar.gettarinfo(path, arcname)
                        if info is None:  # a socket: tar cannot carry it
                            continue
                        info = normalise(info)
                        try:
                            if info.isreg():
                                with open(path, "rb") as src:
                                    tar.addfile(info, src)
                            else:
                                tar.addfile(info)
                        except OSError:
                            unreadable.append(path)
            else:
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    own = st.st_size
                    nfiles += 1
                    with open(top, "rb") as src:
                        while chunk := src.read(CHUNK):
                            gz.write(chunk)
            total += own
            files.append({"path": str(top), "bytes": own})
    method = (
        f"bytes: the apparent sizes (st_size) of {nfiles} regular files in {', '.join(map(str, paths))}; "
        "directories walked without following symlinks, a file reached by several hard links counted once"
        f"{f' ({links} further links)' if links else ''}, directories, symlinks and device nodes counting 0. "
        "compressed_bytes: one gzip stream at level 6 (zlib, header mtime 0) of each path in the order given: "
        "a file's bytes as they are; a directory as a POSIX (pax) tar of its contents, names sorted, owner "
        "root, mtime 0, hard links stored once, the form `podman import`/`docker import` take"
    )
    if unreadable:
        method += f"; {len(unreadable)} entries could not be read and are missing: {', '.join(unreadable[:5])}"
    return {
        "files": files,
        "bytes": total,
        "compressed_bytes": counter.n,
        "compression": "gzip -6",
        "method": method,
    }


# --------------------------------------------------------------------------------------------
# Streams: forward-only readers over files, decompressors and archive members
# --------------------------------------------------------------------------------------------


class _Readable(Protocol):
    def read(self, n: int, /) -> bytes: ...


def _read_exact(src: _Readable, n: int) -> bytes:
    """n bytes, or fewer at the end of the stream."""
    parts: list[bytes] = []
    while n > 0:
        data = src.read(min(n, CHUNK))
        if not data:
            break
        parts.append(data)
        n -= len(data)
    return b"".join(parts)


def _skip(src: _Readable, n: int) -> int:
    """Read and drop n bytes; how many there were."""
    done = 0
    while done < n:
        data = src.read(min(n - done, CHUNK))
        if not data:
            break
        done += len(data)
    return done


class _Raw:
    """A file read front to back, with a push-back buffer (a decompressor hands back what follows it)."""

    def __init__(self, f: _Readable) -> None:
        self._f = f
        self._back = b""

    def read(self, n: int) -> bytes:
        if self._back:
            out, self._back = self._back[:n], self._back[n:]
            return out
        return self._f.read(n)

    def unread(self, data: bytes) -> None:
        self._back = data + self._back

    def peek(self, n: int) -> bytes:
        data = _read_exact(self, n)
        self.unread(data)
        return data


class _Decompressor(Protocol):
    @property
    def eof(self) -> bool: ...
    @property
    def unused_data(self) -> bytes: ...
    def decompress(self, data: bytes, /) -> bytes: ...


class _Decompressing:
    """One compressed stream read out of a _Raw; at its end, what follows goes back to the _Raw."""

    def __init__(self, raw: _Raw, decompressor: _Decompressor) -> None:
        self._raw = raw
        self._d = decompressor
        self._buf = b""
        self.truncated = False

    def read(self, n: int) -> bytes:
        while not self._buf:
            if self._d.eof:
                if self._d.unused_data:
                    self._raw.unread(self._d.unused_data)
                return b""
            chunk = self._raw.read(RAW_CHUNK)
            if not chunk:
                self.truncated = True
                return b""
            try:
                self._buf = self._d.decompress(chunk)
            except Exception as exc:  # zlib.error, lzma.LZMAError, OSError, a zstd module's own error
                raise _Unsupported(f"damaged compressed data: {exc}") from None
        out, self._buf = self._buf[:n], self._buf[n:]
        return out


def _zstd_decompressor() -> _Decompressor | None:
    """A zstd decompressor from Python >= 3.14's compression.zstd or the zstandard package, if any."""
    for name in ("compression.zstd", "zstandard"):
        try:
            module: Any = importlib.import_module(name)
        except ImportError:
            continue
        if name == "compression.zstd":
            return module.ZstdDecompressor()  # type: ignore[no-any-return]
        return module.ZstdDecompressor().decompressobj()  # type: ignore[no-any-return]
    return None


# (magic, name, factory): the formats the Linux kernel unpacks an initramfs from, that Python reads.
_COMPRESSIONS: tuple[tuple[bytes, str, Callable[[], _Decompressor | None]], ...] = (
    (b"\x1f\x8b", "gzip", lambda: zlib.decompressobj(16 + zlib.MAX_WBITS)),
    (b"\xfd7zXZ\x00", "xz", lambda: lzma.LZMADecompressor(lzma.FORMAT_XZ)),
    (b"\x5d\x00\x00", "lzma", lambda: lzma.LZMADecompressor(lzma.FORMAT_ALONE)),
    (b"BZh", "bzip2", lambda: bz2.BZ2Decompressor()),
    (b"\x28\xb5\x2f\xfd", "zstd", _zstd_decompressor),
)
# Formats the kernel also takes but Python cannot read without a third-party module.
_UNREADABLE = ((b"\x02\x21\x4c\x18", "lz4"), (b"\x89LZO", "lzo"))


class _Unsupported(Exception):
    """A stream this reader cannot go through (a compression with no module here, an unknown format)."""


class _Chain:
    """The logical byte stream of an initramfs: segments, each compressed or not, one after another.

    Like the kernel (init/initramfs.c), a compression magic is looked for where an archive may
    start, and a compressed segment that ends mid-archive continues with what follows it.
    """

    def __init__(self, raw: _Raw) -> None:
        self.raw = raw
        self.layer: _Decompressing | None = None
        self.segments: list[str] = []
        self._back = b""

    def open_segment(self) -> None:
        """Start a decompressor if the raw stream is at a compression magic."""
        head = self.raw.peek(6)
        for magic, name, factory in _COMPRESSIONS:
            if head.startswith(magic):
                decompressor = factory()
                if decompressor is None:
                    raise _Unsupported(f"a {name} segment, and no {name} module here (compression.zstd, zstandard)")
                self.layer = _Decompressing(self.raw, decompressor)
                self.segments.append(name)
                return
        for magic, name in _UNREADABLE:
            if head.startswith(magic):
                raise _Unsupported(f"a {name} segment, which the standard library cannot read")

    def read(self, n: int) -> bytes:
        if self._back:
            out, self._back = self._back[:n], self._back[n:]
            return out
        while self.layer is not None:
            data = self.layer.read(n)
            if data:
                return data
            truncated = self.layer.truncated
            self.layer = None
            if truncated:
                raise _Unsupported(f"the {self.segments[-1]} segment is truncated")
            self.open_segment()
        return self.raw.read(n)

    def unread(self, data: bytes) -> None:
        self._back = data + self._back

    def at_archive(self) -> bool:
        """Skip the NUL padding between archives; False at the end of the stream."""
        while True:
            data = self.read(4096)
            if not data:
                return False
            rest = data.lstrip(b"\0")
            if rest:
                break
        if self.layer is None:  # between raw segments: the next one may be compressed
            self.raw.unread(rest + self._back)
            self._back = b""
            self.open_segment()
        else:
            self.unread(rest)
        return True


class _Reader(Protocol):
    size: int

    def read_at(self, offset: int, n: int) -> bytes: ...


class _FileReader:
    """A regular file, readable anywhere."""

    def __init__(self, f: IO[bytes], size: int) -> None:
        self._f = f
        self.size = size

    def read_at(self, offset: int, n: int) -> bytes:
        self._f.seek(offset)
        return self._f.read(max(0, min(n, self.size - offset)))


class _StreamReader:
    """`size` bytes of a stream (an archive member), readable forward only: a read behind the
    current position gives b"" (the classifier then says it does not know)."""

    def __init__(self, src: _Readable, size: int) -> None:
        self._src = src
        self.size = size
        self._pos = 0

    def read_at(self, offset: int, n: int) -> bytes:
        if offset < self._pos or offset >= self.size:
            return b""
        self._pos += _skip(self._src, offset - self._pos)
        data = _read_exact(self._src, min(n, self.size - offset))
        self._pos += len(data)
        return data

    def drain(self) -> int:
        """Read what the consumer left of the member; how many bytes were missing at the end."""
        missing = self.size - self._pos - _skip(self._src, self.size - self._pos)
        self._pos = self.size
        return missing


# --------------------------------------------------------------------------------------------
# ELF
# --------------------------------------------------------------------------------------------

ET_REL, ET_EXEC, ET_DYN = 1, 2, 3
PT_DYNAMIC, PT_INTERP = 2, 3
DT_FLAGS_1 = 0x6FFFFFFB
DF_1_PIE = 0x08000000


@dataclass(frozen=True)
class Elf:
    e_type: int
    interp: bool  # has a PT_INTERP (asks for a dynamic loader)
    pie: bool  # DT_FLAGS_1 carries DF_1_PIE (a position-independent executable, static-pie too)


def read_elf(r: _Reader) -> Elf | None:
    """The ELF facts that tell an executable from a library, or None for a file that is no ELF."""
    head = r.read_at(0, ELF_HEAD)
    if len(head) < 52 or head[:4] != b"\x7fELF" or head[4] not in (1, 2) or head[5] not in (1, 2):
        return None
    e = "<" if head[5] == 1 else ">"
    if head[4] == 2:  # ELFCLASS64
        if len(head) < 64:
            return None
        (e_type,) = struct.unpack_from(e + "H", head, 16)
        (phoff,) = struct.unpack_from(e + "Q", head, 32)
        phentsize, phnum = struct.unpack_from(e + "HH", head, 54)
        ph = struct.Struct(e + "IIQQQQ")  # p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz
        dyn = struct.Struct(e + "qQ")
        ph_offset, ph_filesz = 2, 5
    else:
        (e_type,) = struct.unpack_from(e + "H", head, 16)
        (phoff,) = struct.unpack_from(e + "I", head, 28)
        phentsize, phnum = struct.unpack_from(e + "HH", head, 42)
        ph = struct.Struct(e + "IIIII")  # p_type, p_offset, p_vaddr, p_paddr, p_filesz
        dyn = struct.Struct(e + "iI")
        ph_offset, ph_filesz = 1, 4

    def get(offset: int, n: int) -> bytes:
        return head[offset : offset + n] if offset + n <= len(head) else r.read_at(offset, n)

    if phentsize < ph.size or phnum == 0 or phnum > 4096:
        return Elf(e_type, False, False)
    table = get(phoff, phentsize * phnum)
    interp = False
    dynamic: tuple[int, int] | None = None
    for i in range(len(table) // phentsize):
        fields = ph.unpack_from(table, i * phentsize)
        if fields[0] == PT_INTERP:
            interp = True
        elif fields[0] == PT_DYNAMIC:
            dynamic = (fields[ph_offset], fields[ph_filesz])
    pie = False
    if e_type == ET_DYN and not interp and dynamic is not None:
        data = get(dynamic[0], min(dynamic[1], DYNAMIC_MAX))
        for i in range(len(data) // dyn.size):
            tag, value = dyn.unpack_from(data, i * dyn.size)
            if tag == 0:  # DT_NULL
                break
            if tag == DT_FLAGS_1:
                pie = bool(value & DF_1_PIE)
    return Elf(e_type, interp, pie)


def classify(elf: Elf, name: str, mode: int) -> str:
    """The kind of an ELF: executable, library, module, not-executable (a program without +x) or other."""
    base = name.rsplit("/", 1)[-1]
    so_name = base.endswith(".so") or ".so." in base
    if elf.e_type == ET_REL:
        return "module" if base.endswith(".ko") else "other"
    if elf.e_type == ET_DYN and (so_name or not (elf.interp or elf.pie)):
        return "library"
    if elf.e_type in (ET_EXEC, ET_DYN):
        return "executable" if mode & 0o111 else "not-executable"
    return "other"


# --------------------------------------------------------------------------------------------
# Image contents
# --------------------------------------------------------------------------------------------

# Shells, by the names a program or a user would exec; "/usr/bin/*sh" and "/bin/*sh" are added
# from each tree's listing, minus the programs whose names only end like a shell's.
SHELL_PATHS = (
    "/bin/sh", "/bin/bash", "/bin/dash", "/bin/ash", "/bin/busybox",
    "/usr/bin/sh", "/usr/bin/bash", "/usr/bin/dash", "/usr/bin/busybox", "/sbin/busybox",
)  # fmt: skip
SHELL_DIRS = ("/bin", "/usr/bin")
NOT_SHELLS = frozenset({"ssh", "chsh", "rsh", "mosh", "autossh", "slogin"})
COMPRESSED_MODULE_SUFFIXES = (".ko.xz", ".ko.gz", ".ko.zst")


def _norm(name: str) -> str:
    """An archive member's name as an absolute path: "./usr/bin" and "usr/bin/" -> "/usr/bin"."""
    return posixpath.normpath("/" + name.lstrip("/"))


@dataclass
class _Tree:
    """One file tree of an image (a directory, a cpio, a tar): what it holds, and its names."""

    label: str
    # path -> ("dir", "") | ("file", classification or "" for non-ELF) | ("link", target) | ("other", "")
    nodes: dict[str, tuple[str, str]] = field(default_factory=lambda: {"/": ("dir", "")})
    found: dict[str, list[str]] = field(default_factory=dict)
    seen: set[tuple[int, ...]] = field(default_factory=set)
    entries: int = 0

    def add(self, path: str, mode: int, identity: tuple[int, ...] | None, reader: _Reader | None) -> None:
        """A file system object; `identity` names its inode for hard links (None: unique);
        `reader` gives a regular file's bytes or a symlink's target."""
        path = _norm(path)
        self.entries += 1
        if stat.S_ISDIR(mode):
            self.nodes[path] = ("dir", "")
            return
        if stat.S_ISLNK(mode):
            target = reader.read_at(0, 4096).decode("utf-8", "surrogateescape") if reader else ""
            self.nodes[path] = ("link", target)
            return
        if not stat.S_ISREG(mode):
            self.nodes[path] = ("other", "")
            return
        elf = read_elf(reader) if reader is not None else None
        kind = classify(elf, path, mode) if elf is not None else ""
        self.nodes[path] = ("file", kind)
        if identity is not None:
            if identity in self.seen:
                return
            self.seen.add(identity)
        if not kind and path.endswith(COMPRESSED_MODULE_SUFFIXES):
            kind = "module"
        if kind:
            self.found.setdefault(kind, []).append(path)
        if mode & (stat.S_ISUID | stat.S_ISGID):
            self.found.setdefault("setuid", []).append(path)

    def resolve(self, path: str) -> str | None:
        """The path a name leads to inside this tree, symlinks followed as the tree's own root would."""
        parts = [p for p in path.split("/") if p]
        current = ""
        hops = 0
        while parts:
            part = parts.pop(0)
            if part == ".":
                continue
            if part == "..":
                current = current.rsplit("/", 1)[0]
                continue
            node = self.nodes.get(current + "/" + part)
            if node is None:
                return None
            if node[0] == "link":
                hops += 1
                if hops > 40:  # ELOOP
                    return None
                if node[1].startswith("/"):
                    current = ""
                parts = [p for p in node[1].split("/") if p] + parts
                continue
            current += "/" + part
        return current or "/"

    def shells(self) -> list[str]:
        """Shell names that lead to an ELF file, as "name" or "name -> target"."""
        names = set(SHELL_PATHS)
        for path in self.nodes:
            directory, _, base = path.rpartition("/")
            if directory in SHELL_DIRS and base.endswith("sh") and base not in NOT_SHELLS:
                names.add(path)
        out = []
        for name in sorted(names):
            target = self.resolve(name)
            node = self.nodes.get(target) if target else None
            if node is not None and node[0] == "file" and node[1]:
                out.append(name if target == name else f"{name} -> {target}")
        return out


def _walk_dir(tree: _Tree, root: str, no_modes: bool = False) -> list[str]:
    """Every object under root (symlinks not followed) into tree; the paths that could not be read.
    `no_modes`: the files come from a file system without permission bits (Nanos' TFS, extracted):
    any ELF program in it can be run, so each regular file is taken as executable and none as setuid."""
    problems: list[str] = []
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as it:
                entries = list(it)
        except OSError:
            problems.append(directory)
            continue
        for entry in entries:
            rel = os.path.relpath(entry.path, root)
            try:
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    tree.add(rel, st.st_mode, None, None)
                    stack.append(entry.path)
                elif stat.S_ISLNK(st.st_mode):
                    target = os.readlink(entry.path).encode("utf-8", "surrogateescape")
                    tree.add(rel, st.st_mode, None, _BytesReader(target))
                elif stat.S_ISREG(st.st_mode):
                    mode = stat.S_IFREG | 0o755 if no_modes else st.st_mode
                    with open(entry.path, "rb") as f:
                        tree.add(rel, mode, (st.st_dev, st.st_ino), _FileReader(f, st.st_size))
                else:
                    tree.add(rel, st.st_mode, None, None)
            except OSError:
                problems.append(entry.path)
    return problems


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self.size = len(data)

    def read_at(self, offset: int, n: int) -> bytes:
        return self._data[offset : offset + n]


@dataclass(frozen=True)
class CpioEntry:
    name: str
    mode: int
    ino: int
    nlink: int
    dev: tuple[int, int]
    rdev: tuple[int, int]
    size: int


def iter_newc(chain: _Chain) -> Iterator[tuple[CpioEntry, _StreamReader]]:
    """The members of newc ("070701") / crc ("070702") cpio archives, one after another, each with
    a forward-only reader of its data (drained when the consumer moves on).

    Header: the magic, then 13 fields of 8 hex digits (ino, mode, uid, gid, nlink, mtime, filesize,
    devmajor, devminor, rdevmajor, rdevminor, namesize, check); the name (namesize bytes with its
    NUL) is padded so header + name is a multiple of 4, and the data is padded to 4 as well. An
    archive ends with the member "TRAILER!!!"; another may follow after NUL padding.
    """
    while chain.at_archive():
        while True:
            header = _read_exact(chain, 110)
            if len(header) < 110:
                raise _Unsupported("the cpio archive is truncated (no TRAILER!!!)")
            if header[:6] not in (b"070701", b"070702"):
                raise _Unsupported(f"not a newc cpio header: {header[:6]!r}")
            try:
                f = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
            except ValueError:
                raise _Unsupported(f"a damaged cpio header: {header!r}") from None
            namesize, size = f[11], f[6]
            name = _read_exact(chain, namesize).rstrip(b"\0").decode("utf-8", "surrogateescape")
            _skip(chain, -(110 + namesize) % 4)
            if name == "TRAILER!!!":
                break
            reader = _StreamReader(chain, size)
            yield CpioEntry(name, f[1], f[0], f[4], (f[7], f[8]), (f[9], f[10]), size), reader
            if reader.drain():
                raise _Unsupported(f"the cpio archive is truncated in {name}")
            _skip(chain, -size % 4)


def _read_cpio(tree: _Tree, f: IO[bytes]) -> tuple[list[str], str | None]:
    """A (compressed) newc initramfs into tree; (notes, why it was not read to its end, or None)."""
    chain = _Chain(_Raw(f))
    notes: list[str] = []
    stopped: str | None = None
    # newc stores a hard-linked file's data with the last of its names; the others come first, empty.
    pending: dict[tuple[int, ...], list[tuple[str, int]]] = {}
    try:
        chain.open_segment()
        for entry, reader in iter_newc(chain):
            identity = (*entry.dev, entry.ino) if entry.nlink > 1 and stat.S_ISREG(entry.mode) else None
            if identity is not None and entry.size == 0:
                pending.setdefault(identity, []).append((entry.name, entry.mode))
                continue
            tree.add(entry.name, entry.mode, identity, reader)
            for name, _ in pending.pop(identity, []) if identity else []:
                tree.nodes[_norm(name)] = tree.nodes[_norm(entry.name)]
    except _Unsupported as exc:
        stopped = f"stopped after {tree.entries} members: {exc}"
        notes.append(stopped)
    for key, names in pending.items():  # hard links to an empty file
        for name, mode in names:
            tree.add(name, mode, key, _BytesReader(b""))
    segments = ", ".join(chain.segments) if chain.segments else "uncompressed"
    notes.insert(0, f"{tree.entries} members read ({segments})")
    return notes, stopped


def _read_tar(tree: _Tree, path: str) -> list[str]:
    """A tar (plain or compressed; tarfile detects which) read as a stream into tree."""
    with tarfile.open(path, mode="r|*") as tar:
        for member in tar:
            if member.islnk():  # a hard link: its file was counted under its first name
                tree.nodes[_norm(member.name)] = ("link", _norm(member.linkname))
                continue
            mode = member.mode | {
                tarfile.DIRTYPE: stat.S_IFDIR, tarfile.SYMTYPE: stat.S_IFLNK,
                tarfile.CHRTYPE: stat.S_IFCHR, tarfile.BLKTYPE: stat.S_IFBLK, tarfile.FIFOTYPE: stat.S_IFIFO,
            }.get(member.type, stat.S_IFREG)  # fmt: skip
            if member.issym():
                tree.add(member.name, mode, None, _BytesReader(member.linkname.encode("utf-8", "surrogateescape")))
            elif member.isreg():
                src = tar.extractfile(member)
                tree.add(member.name, mode, None, _StreamReader(src, member.size) if src else None)
            else:
                tree.add(member.name, mode, None, None)
    return [f"{tree.entries} members read"]


def _sniff(path: str) -> tuple[str, str]:
    """What a file given as part of an image is: ("elf" | "bzimage" | "cpio" | "tar" | "data", detail)."""
    with open(path, "rb") as f:
        head = f.read(1024)
    if head.startswith(b"\x7fELF"):
        return "elf", ""
    if head[0x202:0x206] == b"HdrS":  # the Linux x86 boot protocol header of a bzImage
        return "bzimage", ""
    if head[257:262] == b"ustar":
        return "tar", ""
    if head.startswith((b"070701", b"070702")):
        return "cpio", "uncompressed"
    tfs = tfs_filesystems(path)
    if tfs:
        return "nanos", f"a Nanos disk image ({len(tfs)} TFS file system{'s' * (len(tfs) != 1)})"
    for magic, name in _UNREADABLE:
        if head.startswith(magic):
            return "data", f"{name}-compressed, which the standard library cannot read: not looked into"
    for magic, name, _ in _COMPRESSIONS:
        if head.startswith(magic):
            with open(path, "rb") as f:
                chain = _Chain(_Raw(f))
                try:
                    chain.open_segment()
                    inner = _read_exact(chain, 512)
                except _Unsupported as exc:
                    return "data", f"{name}-compressed: not looked into ({exc})"
            if inner.startswith((b"070701", b"070702")):
                return "cpio", name
            if inner[257:262] == b"ustar" and name != "zstd":
                return "tar", name
            return "data", f"{name}-compressed data that is neither cpio nor tar"
    return "data", "neither ELF, kernel, cpio, tar nor a Nanos disk image, a format this reader does not know"


# --------------------------------------------------------------------------------------------
# Nanos disk images
# --------------------------------------------------------------------------------------------

TFS_MAGIC = b"NVMTFS"  # the first bytes of a Nanos TFS file system (its log's first extent)
SECTOR = 512
DUMP_TIMEOUT_S = 300.0


def tfs_filesystems(path: str) -> list[tuple[int, int]]:
    """(offset, bytes) of each Nanos TFS file system in a disk image: the MBR partitions that start
    with TFS's magic (mkfs -b writes a boot partition holding the kernel and a root partition), or
    the whole file when it is one bare TFS. [] for anything else."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(SECTOR)
            if head.startswith(TFS_MAGIC):
                return [(0, size)]
            if len(head) < SECTOR or head[510:512] != b"\x55\xaa":
                return []
            found = []
            for i in range(4):
                entry = head[446 + 16 * i : 462 + 16 * i]
                start, count = struct.unpack_from("<II", entry, 8)
                offset = start * SECTOR
                if entry[4] == 0 or count == 0 or offset >= size:
                    continue
                f.seek(offset)
                if f.read(len(TFS_MAGIC)) == TFS_MAGIC:
                    found.append((offset, min(count * SECTOR, size - offset)))
            return found
    except OSError:
        return []


def _version_key(name: str) -> tuple[int, ...] | None:
    match = re.fullmatch(r"v?(\d+(?:\.\d+)*)", name)
    return tuple(int(p) for p in match.group(1).split(".")) if match else None


def nanos_tool(name: str, environ: Mapping[str, str] | None = None, home: str | None = None) -> tuple[str | None, str]:
    """(path, where it was found) of a program of the Nanos toolchain (`dump`, `mkfs`), or (None, why
    not): $NANOS_DIR when set (only there), else the newest ~/.ops/<version>/ holding it, as NanoVMs'
    `ops` installs it (~/.ops/nightly/ when no numbered version has it). Never the PATH: Debian's
    `dump` is the ext2 backup tool."""
    environ = os.environ if environ is None else environ
    explicit = environ.get("NANOS_DIR")
    if explicit:
        path = os.path.join(os.path.expanduser(explicit), name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path, f"NANOS_DIR={explicit}"
        return None, f"no Nanos `{name}` in NANOS_DIR={explicit}"
    ops = os.path.join(home if home is not None else os.path.expanduser("~"), ".ops")
    try:
        names = os.listdir(ops)
    except OSError:
        names = []
    numbered = sorted(((k, n) for n in names if (k := _version_key(n)) is not None), reverse=True)
    for version in [n for _, n in numbered] + [n for n in names if n == "nightly"]:
        path = os.path.join(ops, version, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path, f"{os.path.join(ops, version)} (ops)"
    return None, f"no Nanos toolchain on this host to read it with (`{name}`: set NANOS_DIR or install ops)"


def _copy_range(src: str, offset: int, size: int, dest: str) -> None:
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        fin.seek(offset)
        left = size
        while left > 0 and (chunk := fin.read(min(CHUNK, left))):
            fout.write(chunk)
            left -= len(chunk)


def _dump(dump: str, image: str, into: str) -> tuple[str | None, str]:
    """Run `dump -d into image`; (its stdout, "") or (None, why it failed)."""
    try:
        done = subprocess.run(
            [dump, "-d", into, image], capture_output=True, text=True, errors="replace", timeout=DUMP_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return None, f"{dump} -d did not finish in {DUMP_TIMEOUT_S:g} s"
    except OSError as exc:
        return None, f"cannot run {dump}: {exc.strerror or exc}"
    if done.returncode != 0 or not os.path.isdir(into):
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:]) or f"status {done.returncode}"
        return None, f"{dump} -d failed: {tail}"
    return done.stdout, ""


_TUPLE_TOKEN = re.compile(r"[()\[\]]|[^\s()\[\]]+")


def parse_tuple(text: str) -> dict[str, Any] | None:
    """The metadata `dump` prints (after a "metadata" line): Nanos' tuple notation, `(key:value ...)`
    with nested tuples, `[...]` vectors and bare atoms, as nested dicts, lists and strings; None
    when it cannot be parsed."""
    _, found, body = text.partition("\nmetadata\n")
    if not found:
        return None
    tokens = _TUPLE_TOKEN.findall(body)
    pos = 0

    def value() -> Any:
        nonlocal pos
        token = tokens[pos]
        pos += 1
        if token == "(":
            out: dict[str, Any] = {}
            while tokens[pos] != ")":
                key, sep, rest = tokens[pos].partition(":")
                pos += 1
                if not sep:
                    raise ValueError(f"a tuple entry without a key: {key!r}")
                out[key] = rest if rest else value()
            pos += 1
            return out
        if token == "[":
            items = []
            while tokens[pos] != "]":
                items.append(value())
            pos += 1
            return items
        if token in (")", "]"):
            raise ValueError(f"an unexpected {token!r}")
        return token

    try:
        parsed = value()
    except (IndexError, ValueError):
        return None
    return parsed if isinstance(parsed, dict) else None


def listed_files(node: Mapping[str, Any], prefix: str = "") -> dict[str, int]:
    """path -> length of every regular file a parsed TFS root (`parse_tuple`) lists; directories
    (a `children` tuple) are walked, symlinks (`linktarget`) and parent links (`..`) skipped."""
    out: dict[str, int] = {}
    children = node.get("children")
    if not isinstance(children, Mapping):
        return out
    for name, entry in children.items():
        if name in (".", "..") or not isinstance(entry, Mapping):
            continue
        path = f"{prefix}/{name}"
        if "children" in entry:
            out.update(listed_files(entry, path))
        elif "linktarget" not in entry:
            length = entry.get("filelength", "0")
            out[path] = int(length) if isinstance(length, str) and length.isdigit() else -1
    return out


def _check_extracted(listing: str, folder: str) -> str | None:
    """None when every file `dump` listed was extracted whole into folder, else what is missing. On
    a damaged image `dump -d` can list every file, extract none and still exit 0."""
    root = parse_tuple(listing)
    if root is None:
        return "dump's listing of the image could not be parsed, so what it extracted cannot be checked"
    listed = listed_files(root)
    missing = [
        p for p, n in sorted(listed.items()) if not (os.path.isfile(folder + p) and os.path.getsize(folder + p) == n)
    ]
    if missing:
        return (
            f"dump listed {len(listed)} files but extracted {len(listed) - len(missing)} of them whole "
            f"(not: {', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}): a damaged image?"
        )
    return None


def _read_nanos(top: str, filesystems: Sequence[tuple[int, int]]) -> tuple[list[_Tree], list[str], str | None]:
    """A Nanos disk image's TFS file systems, each extracted by the toolchain's `dump -d` into a
    temporary folder and walked: (one tree per file system, notes, why it could not be read or None).

    `dump IMAGE` reads the root file system (it says at which offset); any other one (the boot
    partition holding the kernel) is copied out to a file of its own first, which `dump` reads as
    a bare TFS. Paths in the root file system are as the program sees them ("/node"); in another
    one they are prefixed with its partition ("partition 1:/kernel")."""
    dump, where = nanos_tool("dump")
    if dump is None:
        return [], [], where
    trees: list[_Tree] = []
    notes = [f"{top}: a Nanos disk image, {len(filesystems)} TFS file system(s), read with {dump} ({where})"]
    with tempfile.TemporaryDirectory(prefix="uniobs-tfs-") as tmp:
        out, failed = _dump(dump, top, os.path.join(tmp, "root"))
        if out is None:
            return [], notes, failed
        damaged = _check_extracted(out, os.path.join(tmp, "root"))
        if damaged:
            return [], notes, damaged
        match = re.search(r"detected filesystem at 0x([0-9a-fA-F]+)", out)
        root_offset = int(match.group(1), 16) if match else (0 if filesystems == [(0, os.path.getsize(top))] else None)
        extracted: list[tuple[str, str]] = []
        if root_offset is not None and any(o == root_offset for o, _ in filesystems):
            extracted.append(("", os.path.join(tmp, "root")))
        else:  # which one dump read is not known: read each partition on its own, and label them all
            shutil.rmtree(os.path.join(tmp, "root"), ignore_errors=True)
            root_offset = None
        for number, (offset, size) in enumerate(filesystems, 1):
            if offset == root_offset:
                continue
            part = os.path.join(tmp, f"partition{number}.tfs")
            _copy_range(top, offset, size, part)
            into = os.path.join(tmp, f"partition{number}")
            listing, why = _dump(dump, part, into)
            os.unlink(part)
            if listing is not None:
                why = _check_extracted(listing, into) or ""
            if why:
                return [], notes, f"partition {number}: {why}"
            extracted.append((f"partition {number}:", into))
        for prefix, folder in extracted:
            tree = _Tree(f"{top}:{prefix}" if prefix else top)
            problems = _walk_dir(tree, folder, no_modes=True)
            if problems:
                return [], notes, f"{len(problems)} extracted paths unreadable ({', '.join(problems[:3])})"
            if prefix:
                tree.found = {k: [prefix + p for p in v] for k, v in tree.found.items()}
            notes.append(f"{prefix.rstrip(':') or 'the root file system'}: {tree.entries} entries extracted")
            trees.append(tree)
    notes.append("TFS stores no permission bits: every ELF program counts as an executable, no file as setuid")
    return trees, notes, None


def _image_file(top: str, kind: str) -> tuple[str, str]:
    """A kernel or unikernel given as a file: ("executable" | "library" | "", note)."""
    with open(top, "rb") as f:
        elf = read_elf(_FileReader(f, os.fstat(f.fileno()).st_size)) if kind == "elf" else Elf(ET_EXEC, False, False)
    if elf is None or elf.e_type not in (ET_EXEC, ET_DYN):
        return "", f"{top}: an ELF that is neither a program nor a shared library, not counted"
    if classify(elf, top, 0o755) == "library":
        return "library", f"{top}: an ELF shared library"
    what = "a Linux bzImage" if kind == "bzimage" else f"an ELF image (e_type {elf.e_type})"
    # Booted by a VMM, not exec'd: its mode bits do not matter.
    return "executable", f"{top}: {what}, a kernel or unikernel: 1 executable"


# The image figures `surface_of_image` gives; each is unknown (None) when the image was not read whole.
IMAGE_FIGURES = ("executables", "shared_libraries", "shell", "setuid_files")


def surface_of_image(paths: Sequence[str]) -> dict[str, Any]:
    """The static part of `attack_surface`: what the files making an image hold.

    A part that cannot be read, or only in part, makes the figures unknown: None, `complete`
    false, and `unknown` maps each such figure to the reason (a shell found all the same is still
    a shell). A count of what could be read would claim a smaller surface than the image has."""
    if not paths:
        raise ValueError("surface_of_image: no paths")
    found: dict[str, list[str]] = {}
    shells: list[str] = []
    notes: list[str] = []
    unread: list[str] = []  # why a part of the image was not read, or not to its end
    for top in map(str, paths):
        tree = _Tree(top)
        trees = [tree]
        if os.path.isdir(top):
            problems = _walk_dir(tree, top)
            note = f"{top}: a directory, {tree.entries} entries walked"
            notes.append(note + (f", {len(problems)} unreadable ({', '.join(problems[:3])})" if problems else ""))
            if problems:
                unread.append(f"{top}: {len(problems)} paths unreadable ({', '.join(problems[:3])})")
        else:
            kind, detail = _sniff(top)
            if kind in ("elf", "bzimage"):
                what, note = _image_file(top, kind)
                notes.append(note)
                if what:
                    tree.found[what] = [top]
                if os.stat(top).st_mode & (stat.S_ISUID | stat.S_ISGID):
                    tree.found["setuid"] = [top]
            elif kind == "cpio":
                with open(top, "rb") as f:
                    cpio_notes, stopped = _read_cpio(tree, f)
                notes.append(f"{top}: a newc cpio, " + "; ".join(cpio_notes))
                if stopped:
                    unread.append(f"{top}: {stopped}")
            elif kind == "tar":
                try:
                    notes.append(f"{top}: a tar ({detail or 'uncompressed'}), " + "; ".join(_read_tar(tree, top)))
                except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
                    notes.append(f"{top}: a tar, stopped after {tree.entries} members: {exc}")
                    unread.append(f"{top}: a tar, stopped after {tree.entries} members: {exc}")
            elif kind == "nanos":
                trees, nanos_notes, why = _read_nanos(top, tfs_filesystems(top))
                notes += nanos_notes
                if why:
                    notes.append(f"{top}: {detail}, not read: {why}")
                    unread.append(f"{top}: {detail}, not read: {why}")
            else:
                notes.append(f"{top}: {detail}: not read")
                unread.append(f"{top}: {detail}: not read")
        for t in trees:
            for what, names in t.found.items():
                found.setdefault(what, []).extend(names)
            prefix = t.label if t.label.endswith(":") else f"{t.label}:"
            shells += [f"{prefix}{s}" for s in t.shells()]
    executables, setuid = found.get("executable", []), found.get("setuid", [])
    modules, not_executable = len(found.get("module", [])), len(found.get("not-executable", []))
    method = (
        "executables: ELF files (magic 7f 45 4c 46) of type ET_EXEC, or ET_DYN with a PT_INTERP or DF_1_PIE, "
        "with an x bit in their mode, and each kernel or unikernel image given as a file (one each); "
        "shared_libraries: ELF ET_DYN with no interpreter and no PIE flag, or named *.so / *.so.*; "
        "a file with several hard links counted once, symlinks not counted; "
        f"shell: {', '.join(SHELL_PATHS[:5])} or /usr/bin/*sh, /bin/*sh (not ssh, chsh, ...) leading, "
        "symlinks followed inside the image, to an ELF file; "
        "setuid_files: regular files with S_ISUID or S_ISGID. " + "; ".join(notes)
    )
    if modules:
        method += f"; {modules} kernel modules (ET_REL *.ko) are not counted as executables"
    if not_executable:
        method += f"; {not_executable} ELF programs without an x bit are not counted"
    complete = not unread
    block: dict[str, Any] = {
        "executables": len(executables) if complete else None,
        "shared_libraries": len(found.get("library", [])) if complete else None,
        "shell": True if shells else (False if complete else None),
        "setuid_files": len(setuid) if complete else None,
        "shells": shells[:LIST_MAX],
        "setuid_paths": setuid[:LIST_MAX],
        "executable_paths": executables[:LIST_MAX],
        "library_paths": found.get("library", [])[:LIST_MAX],
        "kernel_modules": modules,
        "complete": complete,
    }
    if not complete:
        why = "; ".join(unread)
        block["unknown"] = {k: why for k in IMAGE_FIGURES if block[k] is None}
        method = f"unknown: the image was not read whole ({why}); the paths listed are what was read. " + method
    block["method"] = method
    return block


# --------------------------------------------------------------------------------------------
# A running process
# --------------------------------------------------------------------------------------------

TCP_LISTEN = 0x0A
TCP_CLOSE = 0x07  # an unconnected UDP socket's state in /proc/net/udp
SECCOMP_MODES = {0: "disabled", 1: "strict", 2: "filter"}
STRICT_SYSCALLS = 4  # SECCOMP_MODE_STRICT: read, write, _exit, sigreturn
BENIGN_DEVICES = frozenset({"/dev/null", "/dev/zero", "/dev/urandom", "/dev/random", "/dev/tty", "/dev/ptmx"})
ALLOW_ACTIONS = frozenset({"SCMP_ACT_ALLOW", "SCMP_ACT_LOG"})


def _address(hex_address: str) -> tuple[str, int]:
    """'0100007F:1F90' (IPv4 or IPv6 words in host byte order, then the port) -> ('127.0.0.1', 8080)."""
    address, _, port = hex_address.partition(":")
    raw = b"".join(struct.pack("=I", int(address[i : i + 8], 16)) for i in range(0, len(address), 8))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, raw), int(port, 16)


def _net_table(path: str) -> list[tuple[str, int, int]] | None:
    """(local address, state, inode) of each socket in a /proc/<pid>/net/{tcp,udp}[6] table."""
    rows: list[tuple[str, int, int]] = []
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            next(f, None)  # the column titles
            for n, line in enumerate(f):
                if n >= MAX_NET_LINES:
                    break
                fields = line.split()
                if len(fields) >= 10:
                    with contextlib.suppress(ValueError):
                        rows.append((fields[1], int(fields[3], 16), int(fields[9])))
    except OSError:
        return None
    return rows


def _children(proc: str, pid: int, notes: list[str]) -> list[int]:
    """The descendants of pid (bounded), from the parent pid in each /proc/<n>/stat."""
    parent_of: dict[int, list[int]] = {}
    try:
        names = os.listdir(proc)
    except OSError:
        return []
    if len(names) > MAX_SCAN:
        notes.append(f"only {MAX_SCAN} of {len(names)} /proc entries scanned for descendants")
    for name in names[:MAX_SCAN]:
        if not name.isdigit():
            continue
        try:
            with open(f"{proc}/{name}/stat", "rb") as f:
                text = f.read(1024)
            ppid = int(text.rpartition(b")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # exited meanwhile
        parent_of.setdefault(ppid, []).append(int(name))
    out: list[int] = []
    todo = [pid]
    while todo and len(out) < MAX_PROCS:
        for child in parent_of.get(todo.pop(), []):
            if child != pid and child not in out:
                out.append(child)
                todo.append(child)
    if len(out) >= MAX_PROCS:
        notes.append(f"only {MAX_PROCS} descendants examined")
    return out[:MAX_PROCS]


def _status(path: str) -> dict[str, str] | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return {k: v.strip() for k, _, v in (line.partition(":") for line in f)}
    except OSError:
        return None


def seccomp_profile(config_path: str) -> tuple[int | None, str]:
    """(syscall names the OCI config's linux.seccomp allows, how that was counted)."""
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as exc:
        return None, f"{config_path}: unreadable ({exc})"
    profile = (config.get("linux") or {}).get("seccomp") if isinstance(config, dict) else None
    if not isinstance(profile, dict):
        return None, f"{config_path} has no linux.seccomp: the runtime installs no profile"
    default = profile.get("defaultAction")
    rules = [r for r in profile.get("syscalls") or [] if isinstance(r, dict)]
    if default in ALLOW_ACTIONS:
        denied = {n for r in rules if r.get("action") not in ALLOW_ACTIONS for n in r.get("names") or []}
        return None, f"{config_path}: linux.seccomp allows by default ({default}) and denies {len(denied)} names"
    allowed: set[str] = set()
    conditional: set[str] = set()
    for rule in rules:
        if rule.get("action") in ALLOW_ACTIONS:
            names = [*(rule.get("names") or []), *([rule["name"]] if "name" in rule else [])]
            allowed.update(names)
            if rule.get("args"):
                conditional.update(names)
    note = f"{config_path}: linux.seccomp (default {default}) allows {len(allowed)} syscall names"
    if conditional:
        note += f", {len(conditional)} of them only with given arguments"
    return len(allowed), note


def _held(proc: str, pids: list[int], notes: list[str]) -> tuple[dict[int, int], set[str], int]:
    """(socket inode -> pid holding it, device nodes held open, fds read): /proc/<p>/fd/<n> links."""
    inodes: dict[int, int] = {}
    opened: set[str] = set()
    fds_read = 0
    for p in pids:
        try:
            fds = os.listdir(f"{proc}/{p}/fd")
        except OSError:
            if p == pids[0]:
                notes.append(f"/proc/{p}/fd unreadable")
            continue
        if len(fds) > MAX_FDS:
            notes.append(f"only {MAX_FDS} of {len(fds)} fds of {p} read")
        for fd in fds[:MAX_FDS]:
            try:
                link = os.readlink(f"{proc}/{p}/fd/{fd}")
            except OSError:  # closed meanwhile, or the process is gone
                continue
            fds_read += 1
            if link.startswith("socket:["):
                with contextlib.suppress(ValueError):
                    inodes.setdefault(int(link[8:-1]), p)
            elif link.startswith("/dev/") and link not in BENIGN_DEVICES and not link.startswith("/dev/pts/"):
                try:
                    mode = os.stat(f"{proc}/{p}/fd/{fd}").st_mode  # the open file itself, not the name
                except OSError:
                    continue
                if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                    opened.add(link)
    return inodes, opened, fds_read


def _listening(
    proc: str, pids: list[int], inodes: Mapping[int, int], notes: list[str]
) -> tuple[list[dict[str, Any]] | None, int]:
    """(listening sockets held by pids, or None when no table could be read; network namespaces read)."""
    namespaces: dict[str, int] = {}
    for p in pids:
        with contextlib.suppress(OSError):
            namespaces.setdefault(os.readlink(f"{proc}/{p}/ns/net"), p)
    listening: list[dict[str, Any]] = []
    tables = missing = 0
    for p in namespaces.values():
        for table in ("tcp", "tcp6", "udp", "udp6"):
            rows = _net_table(f"{proc}/{p}/net/{table}")
            if rows is None:
                missing += 1
                continue
            tables += 1
            for local, state, inode in rows:
                owner = inodes.get(inode)
                if owner is None or state != (TCP_LISTEN if table.startswith("tcp") else TCP_CLOSE):
                    continue
                try:
                    address, port = _address(local)
                except (ValueError, struct.error):
                    continue
                if port:  # port 0: a UDP socket never bound
                    listening.append({"proto": table.rstrip("6"), "address": address, "port": port, "pid": owner})
    if missing:
        notes.append(f"{missing} of {4 * max(1, len(namespaces))} socket tables unreadable")
    return (listening if tables else None), len(namespaces)


def _seccomp(
    status: Mapping[str, str] | None, pid: int, profile: tuple[int | None, str]
) -> tuple[dict[str, Any] | None, int | None, str]:
    """(the seccomp state, the syscalls allowed where known, how that was decided) from the status file."""
    mode_field = (status or {}).get("Seccomp", "")
    if not mode_field.isdigit():
        return None, None, f"seccomp state unknown (no Seccomp: line read from /proc/{pid}/status)"
    mode = int(mode_field)
    filters_field = (status or {}).get("Seccomp_filters", "")
    filters = int(filters_field) if filters_field.isdigit() else None
    state = {"mode": SECCOMP_MODES.get(mode, str(mode)), "filters": filters}
    where = f"Seccomp: {mode}, Seccomp_filters: {filters} in /proc/{pid}/status"
    if mode == 0:
        return state, None, f"no seccomp filter: every syscall is allowed ({where})"
    if mode == 1:
        return state, STRICT_SYSCALLS, f"strict seccomp: read, write, _exit and sigreturn only ({where})"
    if profile[0] is not None:
        return state, profile[0], f"a seccomp filter ({where}) from the container profile: {profile[1]}"
    return state, None, f"a seccomp filter ({where}) whose rules were not given: count unknown"


def _visible_devices(base: str, notes: list[str]) -> list[str]:
    """Device nodes under <base>/root/dev (the process's own /dev), as it names them; symlinks not followed."""
    root = f"{base}/root/dev"
    visible: list[str] = []
    stack = [root]
    walked = 0
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as it:
                for entry in it:
                    walked += 1
                    if walked > MAX_DEV_ENTRIES:
                        notes.append(f"only {MAX_DEV_ENTRIES} entries of its /dev walked")
                        return sorted(visible)
                    st = entry.stat(follow_symlinks=False)
                    if stat.S_ISDIR(st.st_mode):
                        stack.append(entry.path)
                    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                        visible.append("/dev/" + os.path.relpath(entry.path, root))
        except OSError:
            if directory == root:
                notes.append(f"{root} unreadable")
    return sorted(visible)


def surface_of_process(pid: int, *, container_config: str | None = None, proc: str = "/proc") -> dict[str, Any]:
    """The runtime part of `attack_surface`: what the running process (a VMM, a container's init)
    and its descendants expose. Bounded, and robust to the process exiting while it is read: then
    the figures are what was read, `complete` is false and the method says so."""
    base = f"{proc}/{pid}"
    notes: list[str] = []
    profile = seccomp_profile(container_config) if container_config else (None, "")
    block: dict[str, Any] = {
        "listening_sockets": None,
        "listening": [],
        "syscalls": None,
        "seccomp_profile_syscalls": profile[0],
        "seccomp": None,
        "host_devices": [],
        "devices_open": [],
        "devices_visible": [],
        "complete": False,
    }
    if not os.path.isdir(base):
        block["method"] = f"process {pid} not found in {proc}: nothing measured" + (
            f"; {profile[1]}" if profile[1] else ""
        )
        return block
    pids = [pid, *_children(proc, pid, notes)]
    inodes, opened, fds_read = _held(proc, pids, notes)
    listening, namespaces = _listening(proc, pids, inodes, notes)
    if listening is not None:
        block["listening_sockets"] = len(listening)
        block["listening"] = listening
    status = _status(f"{base}/status")
    block["seccomp"], block["syscalls"], syscall_note = _seccomp(status, pid, profile)

    # A container sees its own /dev; a process in the host's mount namespace sees the host's, not listed.
    mnt: list[str | None] = []
    for path in (f"{proc}/self/ns/mnt", f"{base}/ns/mnt"):
        try:
            mnt.append(os.readlink(path))
        except OSError:
            mnt.append(None)
    contained = container_config is not None or (None not in mnt and mnt[0] != mnt[1])
    visible = _visible_devices(base, notes) if contained else []
    block["devices_open"] = sorted(opened)
    block["devices_visible"] = visible
    block["host_devices"] = sorted(opened | set(visible))

    if not os.path.isdir(base) or (status or {}).get("State", "").startswith(("Z", "X")):
        notes.append("the process exited while it was read: the figures are what was read before")
    block["complete"] = not notes
    method = (
        f"listening_sockets: TCP sockets in LISTEN and bound unconnected UDP sockets in /proc/<pid>/net/"
        f"{{tcp,tcp6,udp,udp6}} of {namespaces} network namespace(s), counted only when their inode is "
        f"held by pid {pid} or one of its {len(pids) - 1} descendants (/proc/<pid>/fd -> socket:[inode], "
        f"{fds_read} fds read); syscalls: {syscall_note}; host_devices: character and block devices held open "
        "(fds under /dev/ other than null, zero, random, urandom, tty, ptmx, pts/*)"
        + (f" and those visible in its own root's /dev (/proc/{pid}/root/dev)" if contained else "")
    )
    if profile[1] and profile[1] not in syscall_note:
        method += f"; seccomp_profile_syscalls: {profile[1]}"
    if notes:
        method += "; " + "; ".join(notes)
    block["method"] = method
    return block


def attack_surface(image: Mapping[str, Any], process: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One `attack_surface` block from the image's part and (when measured) the process's part."""
    runtime = dict(process or {})
    out = {
        "executables": image["executables"],
        "shared_libraries": image["shared_libraries"],
        "shell": image["shell"],
        "setuid_files": image["setuid_files"],
        "listening_sockets": runtime.get("listening_sockets"),
        "syscalls": runtime.get("syscalls"),
        "seccomp_profile_syscalls": runtime.get("seccomp_profile_syscalls"),
        "host_devices": list(runtime.get("host_devices") or []),
    }
    # complete: both parts measured whole (an image read in part, a process not measured or read in part: not)
    out["complete"] = bool(image.get("complete", True)) and bool(runtime.get("complete", False))
    if image.get("unknown"):
        out["unknown"] = dict(image["unknown"])
    method = f"image: {image['method']}"
    method += f". process: {runtime['method']}" if "method" in runtime else ". process: not measured"
    out["method"] = method
    return out
