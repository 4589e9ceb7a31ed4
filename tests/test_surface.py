"""uniobs.surface: image sizes and attack surfaces measured on the real shrink-wraps of hello-node
(built here with make), on trees and archives written by the tests, and on a real QEMU and a real
runc container.

The expected figures are counted independently in the tests (a walk and an ELF magic check, a
newc writer of their own, /proc read by hand), never taken from the module under test.
"""

from __future__ import annotations

import contextlib
import glob
import gzip
import json
import lzma
import os
import re
import secrets
import shutil
import socket
import stat
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import ROOT, free_port, missing, requires_qemu, requires_root, requires_runc

from uniobs.compare import surface
from uniobs.compare.surface import attack_surface, image_block, seccomp_profile, surface_of_image, surface_of_process

CONTAINER = ROOT / "examples" / "hello-node" / "container"
UNIKERNEL = ROOT / "examples" / "hello-node" / "unikernel"
MINIKERNEL = ROOT / "examples" / "minikernel"
QEMU = shutil.which("qemu-system-x86_64")
UNISTD = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")
SHELL_ELF = Path(os.path.realpath("/bin/sh"))  # Debian: /usr/bin/dash, a PIE with an interpreter
LOADER = Path(os.path.realpath("/lib64/ld-linux-x86-64.so.2"))


def make(directory: Path, *tools: str, extra: str = "") -> None:
    absent = missing("make", *tools)
    if absent or extra:
        pytest.skip(f"cannot build {directory.relative_to(ROOT)}: {', '.join(absent) or extra} missing")
    done = subprocess.run(["make", "-s", "-C", str(directory)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def container_build() -> Path:
    make(CONTAINER, "node", "runc")
    return CONTAINER / "build"


@pytest.fixture(scope="module")
def unikernel_build() -> Path:
    make(UNIKERNEL, "gcc", "node", extra="" if glob.glob("/boot/vmlinuz-*") else "/boot/vmlinuz-*")
    return UNIKERNEL / "build"


@pytest.fixture(scope="module")
def minikernel() -> Path:
    make(MINIKERNEL, "gcc", "ld")
    return MINIKERNEL / "build" / "minikernel.elf"


def independent_count(root: Path) -> dict[str, int]:
    """Executables, libraries, setuid files under root: a walk, lstat and the ELF magic, nothing more."""
    counts = {"executables": 0, "shared_libraries": 0, "setuid_files": 0}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode):
                continue
            if st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                counts["setuid_files"] += 1
            with open(path, "rb") as f:
                if f.read(4) != b"\x7fELF":
                    continue
            if ".so" in name:
                counts["shared_libraries"] += 1
            elif st.st_mode & 0o111:
                counts["executables"] += 1
    return counts


def stat_sum(root: Path) -> int:
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def gzip6_size(path: Path) -> int:
    out = 0
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            out += len(compressor.compress(chunk))
    return out + len(compressor.flush())


# --------------------------------------------------------------------------------------------
# The real images
# --------------------------------------------------------------------------------------------


def test_container_rootfs_counts_equal_an_independent_count(container_build: Path) -> None:
    rootfs = container_build / "bundle" / "rootfs"
    measured = surface_of_image([str(rootfs)])
    expected = independent_count(rootfs)
    assert {k: measured[k] for k in expected} == expected
    assert expected["executables"] >= 1 and expected["shared_libraries"] >= 2  # node, libc, the loader
    assert measured["shell"] is False and measured["shells"] == []  # the rootfs has no shell
    assert "/usr/bin/node" in measured["executable_paths"]


def test_container_image_block_is_the_stat_sum_and_the_gzip_of_its_tar(container_build: Path) -> None:
    rootfs = container_build / "bundle" / "rootfs"
    started = time.monotonic()
    block = image_block([str(rootfs)])
    elapsed = time.monotonic() - started
    assert block["bytes"] == stat_sum(rootfs) > 50 << 20
    assert block["files"] == [{"path": str(rootfs), "bytes": block["bytes"]}]
    assert 0 < block["compressed_bytes"] < block["bytes"]
    assert block["compression"] == "gzip -6" and "tar" in block["method"]
    # The build writes the same tar (sorted, root-owned, mtime 0) for `podman import`: within 1%.
    assert abs(block["compressed_bytes"] - gzip6_size(container_build / "rootfs.tar")) < block["bytes"] // 100
    assert elapsed < 20, f"{block['bytes']} bytes took {elapsed:.1f} s"  # ~4 s here; the machines are noisy


def test_unikernel_image_has_the_kernel_init_and_node_and_no_shell(
    unikernel_build: Path, container_build: Path
) -> None:
    parts = [str(unikernel_build / "vmlinux"), str(unikernel_build / "initramfs.cpio.gz")]
    measured = surface_of_image(parts)
    container = independent_count(container_build / "bundle" / "rootfs")
    # The same node and ldd libraries as the container, plus the kernel and the static /init.
    assert measured["executables"] == container["executables"] + 2
    assert measured["shared_libraries"] == container["shared_libraries"]
    assert set(measured["executable_paths"]) == {parts[0], "/init", "/usr/bin/node"}
    assert measured["shell"] is False  # the microVM's initramfs has no shell either
    assert measured["setuid_files"] == 0
    assert measured["kernel_modules"] >= 1  # virtio modules: ET_REL, not counted as executables
    assert "gzip" in measured["method"] and "1 executable" in measured["method"]
    block = image_block(parts)
    assert block["bytes"] == sum(os.stat(p).st_size for p in parts)
    assert [f["bytes"] for f in block["files"]] == [os.stat(p).st_size for p in parts]
    assert 0 < block["compressed_bytes"] < block["bytes"]


def test_minikernel_is_one_executable(minikernel: Path) -> None:
    measured = surface_of_image([str(minikernel)])
    assert (measured["executables"], measured["shared_libraries"], measured["shell"]) == (1, 0, False)
    assert measured["setuid_files"] == 0
    block = image_block([str(minikernel)])
    assert block["bytes"] == os.stat(minikernel).st_size
    assert 0 < block["compressed_bytes"] < block["bytes"]


# --------------------------------------------------------------------------------------------
# Trees and archives made here
# --------------------------------------------------------------------------------------------


def write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)


def test_rootfs_with_a_setuid_file_and_a_shell(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    write(root / "bin" / "sh", SHELL_ELF.read_bytes(), 0o755)
    write(root / "usr" / "bin" / "su", b"#!/bin/sh\nexit 0\n", 0o4755)
    write(root / "app" / "data.txt", b"hello\n" * 1000, 0o644)
    os.link(root / "app" / "data.txt", root / "app" / "again.txt")  # one file, two names
    measured = surface_of_image([str(root)])
    assert (measured["setuid_files"], measured["shell"], measured["executables"]) == (1, True, 1)
    assert measured["setuid_paths"] == ["/usr/bin/su"]
    block = image_block([str(root)])
    assert block["bytes"] == stat_sum(root) == SHELL_ELF.stat().st_size + 17 + 6000  # the link once
    assert block == image_block([str(root)])  # deterministic


@pytest.mark.parametrize(
    ("layout", "shell"),
    [
        ("merged-usr", True),  # /bin -> usr/bin, /usr/bin/sh -> dash, dash an ELF
        ("busybox", True),  # /bin/sh -> /bin/busybox
        ("script", False),  # /bin/sh is a script: no ELF behind the name
        ("ssh-only", False),  # /usr/bin/ssh ends in "sh" and is no shell
        ("dangling", False),  # /bin/sh -> a missing file
    ],
)
def test_shell_detection_follows_links_inside_the_image(tmp_path: Path, layout: str, shell: bool) -> None:
    root = tmp_path / "rootfs"
    (root / "usr" / "bin").mkdir(parents=True)
    elf = SHELL_ELF.read_bytes()
    if layout == "merged-usr":
        os.symlink("usr/bin", root / "bin")
        write(root / "usr" / "bin" / "dash", elf, 0o755)
        os.symlink("dash", root / "usr" / "bin" / "sh")
    elif layout == "busybox":
        write(root / "bin" / "busybox", elf, 0o755)
        os.symlink("/bin/busybox", root / "bin" / "sh")
    elif layout == "script":
        write(root / "bin" / "sh", b"#!/usr/bin/python3\n", 0o755)
    elif layout == "ssh-only":
        write(root / "usr" / "bin" / "ssh", elf, 0o755)
    else:
        (root / "bin").mkdir()
        os.symlink("/bin/nothing", root / "bin" / "sh")
    assert surface_of_image([str(root)])["shell"] is shell


def newc(entries: list[tuple[str, int, bytes, int, int]]) -> bytes:
    """A newc cpio of (name, mode, data, ino, nlink) written here, independently of the module."""
    out = bytearray()
    for name, mode, data, ino, nlink in [*entries, ("TRAILER!!!", 0, b"", 0, 1)]:
        encoded = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 1 if stat.S_ISCHR(mode) else 0, 3, len(encoded), 0]
        out += b"070701" + b"".join(b"%08X" % v for v in fields) + encoded
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out + b"\0" * (-len(out) % 512))


# A 64-bit little-endian ELF header of type ET_REL (a kernel module's), no program headers.
ET_REL_HEADER = (
    b"\x7fELF\x02\x01\x01" + b"\0" * 9 + struct.pack("<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, 0, 0, 64, 0, 0, 64, 0, 0)
)


def initramfs_entries() -> list[tuple[str, int, bytes, int, int]]:
    elf = SHELL_ELF.read_bytes()
    return [
        (".", stat.S_IFDIR | 0o755, b"", 1, 2),
        ("bin", stat.S_IFDIR | 0o755, b"", 2, 2),
        ("bin/dash", stat.S_IFREG | 0o755, elf, 3, 1),
        ("bin/sh", stat.S_IFLNK | 0o777, b"dash", 4, 1),
        ("lib/libloader.so.2", stat.S_IFREG | 0o644, LOADER.read_bytes(), 5, 1),
        ("usr/bin/su", stat.S_IFREG | 0o4755, b"#!/bin/sh\n", 6, 1),
        ("usr/bin/one", stat.S_IFREG | 0o755, b"", 7, 2),  # a hard link: the data comes with the last name
        ("usr/bin/two", stat.S_IFREG | 0o755, elf, 7, 2),
        ("dev/console", stat.S_IFCHR | 0o600, b"", 8, 1),
        ("etc/odd", stat.S_IFREG | 0o644, b"12345", 9, 1),
        ("lib/modules/virtio.ko", stat.S_IFREG | 0o644, ET_REL_HEADER, 10, 1),
    ]


@pytest.mark.parametrize("compression", ["none", "gzip", "xz", "microcode+gzip"])
def test_a_newc_cpio_written_here_is_read(tmp_path: Path, compression: str) -> None:
    archive = newc(initramfs_entries())
    if compression == "gzip":
        archive = gzip.compress(archive, mtime=0)
    elif compression == "xz":
        archive = lzma.compress(archive, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    elif compression == "microcode+gzip":  # an uncompressed early cpio, then the compressed main one
        early = newc([("kernel", stat.S_IFDIR | 0o755, b"", 1, 2), ("kernel/x.bin", stat.S_IFREG | 0o644, b"u", 2, 1)])
        archive = early + gzip.compress(archive, mtime=0)
    path = tmp_path / "initramfs.img"
    path.write_bytes(archive)
    measured = surface_of_image([str(path)])
    # bin/dash and the hard-linked pair once; the .so; su is not ELF
    assert (measured["executables"], measured["shared_libraries"]) == (2, 1), measured["method"]
    assert (measured["shell"], measured["setuid_files"], measured["kernel_modules"]) == (True, 1, 1)
    assert measured["shells"] == [f"{path}:/bin/dash", f"{path}:/bin/sh -> /bin/dash"]
    assert "stopped" not in measured["method"]


def unknown_figures(measured: dict[str, Any]) -> None:
    """An image not read whole: no figure (not a 0), complete false, and the reason for each figure."""
    assert measured["complete"] is False
    for key in ("executables", "shared_libraries", "setuid_files"):
        assert measured[key] is None and measured["unknown"][key], key
    assert measured["method"].startswith("unknown: ")


def test_damaged_and_unreadable_archives_are_unknown_not_zero_and_never_raise(tmp_path: Path) -> None:
    whole = gzip.compress(newc(initramfs_entries()), mtime=0)
    truncated = tmp_path / "truncated.cpio.gz"
    truncated.write_bytes(whole[: len(whole) // 2])
    measured = surface_of_image([str(truncated)])
    assert "stopped after" in measured["method"] and "truncated" in measured["method"]
    unknown_figures(measured)
    zstd = tmp_path / "initramfs.zst"
    zstd.write_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 64)
    measured = surface_of_image([str(zstd)])
    unknown_figures(measured)
    assert "zstd" in measured["unknown"]["executables"] and measured["shell"] is None
    data = tmp_path / "blob"
    data.write_bytes(b"nothing to see")
    measured = surface_of_image([str(data)])
    unknown_figures(measured)
    assert "does not know" in measured["unknown"]["executables"]
    # a kernel read whole beside a part that was not: still unknown, not "1 executable"
    measured = surface_of_image([str(SHELL_ELF), str(data)])
    unknown_figures(measured)
    assert measured["executable_paths"] == [str(SHELL_ELF)]  # what was read is listed all the same


# --------------------------------------------------------------------------------------------
# Running processes: a recorded /proc, a real QEMU, a real runc container, a process that exits
# --------------------------------------------------------------------------------------------

MNT_SELF, MNT_OTHER, NET = "mnt:[4026531841]", "mnt:[4026532999]", "net:[4026531840]"
TCP_HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"


def net_line(n: int, local: str, state: int, inode: int) -> str:
    return f"{n:4}: {local} 00000000:0000 {state:02X} 00000000:00000000 00:00000000 00000000     0        0 {inode}\n"


def recorded_proc(tmp: Path, *, container: bool) -> Path:
    """A /proc with pid 100 (a VMM) and its child 101, and the host's pid 1 holding its own listener."""
    proc = tmp / "proc"
    for pid, ppid in ((1, 0), (100, 1), (101, 100)):
        d = proc / str(pid)
        (d / "fd").mkdir(parents=True)
        (d / "ns").mkdir()
        (d / "stat").write_text(f"{pid} (x) S {ppid} 0 0\n")
        os.symlink(NET, d / "ns" / "net")
        os.symlink(MNT_OTHER if container and pid != 1 else MNT_SELF, d / "ns" / "mnt")
    (proc / "self" / "ns").mkdir(parents=True)
    os.symlink(MNT_SELF, proc / "self" / "ns" / "mnt")
    links = {1: {"3": "socket:[500]"}, 100: {"0": "/dev/null", "5": "socket:[600]", "6": "/dev/full"}}
    links[101] = {"3": "socket:[601]", "4": "socket:[602]", "5": "socket:[603]", "7": "pipe:[9]"}
    for pid, fds in links.items():
        for fd, target in fds.items():
            os.symlink(target, proc / str(pid) / "fd" / fd)
    net = proc / "100" / "net"
    net.mkdir()
    (net / "tcp").write_text(
        TCP_HEADER
        + net_line(0, "00000000:0016", 0x0A, 500)  # the host's sshd on :22 (pid 1): not ours
        + net_line(1, "0100007F:1F90", 0x0A, 600)  # 127.0.0.1:8080, listening: counted
        + net_line(2, "0100007F:9C40", 0x01, 601)  # an established connection: not listening
    )
    (net / "tcp6").write_text(TCP_HEADER + net_line(0, "00000000000000000000000001000000:0050", 0x0A, 602))
    (net / "udp").write_text(TCP_HEADER + net_line(0, "00000000:0035", 0x07, 603))  # 0.0.0.0:53 bound
    (net / "udp6").write_text(TCP_HEADER)
    (proc / "100" / "status").write_text("Name:\tqemu\nState:\tS (sleeping)\nSeccomp:\t0\nSeccomp_filters:\t0\n")
    if container:
        dev = proc / "100" / "root" / "dev"
        (dev / "pts").mkdir(parents=True)
        os.symlink("/dev/null", dev / "null")  # a symlink: not followed, not listed
        os.symlink("pts/ptmx", dev / "ptmx")
        if os.geteuid() == 0:  # a real device node (only root may make one)
            os.mknod(dev / "pts" / "full", stat.S_IFCHR | 0o666, os.makedev(1, 7))
    return proc


def test_recorded_proc_counts_only_the_sockets_the_process_tree_holds(tmp_path: Path) -> None:
    proc = recorded_proc(tmp_path, container=False)
    block = surface_of_process(100, proc=str(proc))
    listening = sorted((s["proto"], s["address"], s["port"], s["pid"]) for s in block["listening"])
    assert listening == [("tcp", "127.0.0.1", 8080, 100), ("tcp", "::1", 80, 101), ("udp", "0.0.0.0", 53, 101)]
    assert block["listening_sockets"] == 3
    assert block["syscalls"] is None and block["seccomp"] == {"mode": "disabled", "filters": 0}
    assert "no seccomp filter: every syscall is allowed" in block["method"]
    assert block["host_devices"] == ["/dev/full"] and block["devices_visible"] == []  # /dev/null is stdio
    assert block["complete"] is True


def test_recorded_proc_of_a_container_lists_its_dev(tmp_path: Path) -> None:
    proc = recorded_proc(tmp_path, container=True)
    block = surface_of_process(100, proc=str(proc))
    # Symlinks are not followed; the device node made as root is listed as the container names it.
    assert block["devices_visible"] == (["/dev/pts/full"] if os.geteuid() == 0 else [])
    assert block["host_devices"] == sorted({"/dev/full", *block["devices_visible"]})
    assert "/proc/100/root/dev" in block["method"]


def test_seccomp_profiles_are_counted(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    rules = [
        {"names": ["read", "write", "openat"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["write", "clone"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 1, "op": "EQ"}]},
        {"names": ["ptrace"], "action": "SCMP_ACT_ERRNO"},
    ]
    config.write_text(json.dumps({"linux": {"seccomp": {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": rules}}}))
    count, note = seccomp_profile(str(config))
    assert count == 4 and "2 of them only with given arguments" in note
    config.write_text(json.dumps({"linux": {"seccomp": {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": rules[2:]}}}))
    assert seccomp_profile(str(config))[0] is None
    config.write_text(json.dumps({"linux": {}}))
    assert seccomp_profile(str(config)) == (None, f"{config} has no linux.seccomp: the runtime installs no profile")


def status_of(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return dict(re.findall(r"^(Seccomp\w*):\s*(\S+)", text, re.M))


def wait_listening(pid: int, timeout: float = 20, **kwargs: Any) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        block = surface_of_process(pid, **kwargs)
        if block["listening_sockets"] or time.monotonic() > deadline:
            return block
        time.sleep(0.05)


@pytest.mark.qemu
@requires_qemu
def test_qemu_counts_its_hostfwd_listener_and_nothing_of_the_host(minikernel: Path, tmp_path: Path) -> None:
    port = free_port()
    host_listener = socket.create_server(("127.0.0.1", 0))  # in the same namespace, held by another process
    command = [
        str(QEMU), "-machine", "microvm", "-accel", "tcg", "-m", "64", "-nodefaults", "-display", "none",
        "-kernel", str(minikernel), "-append", "mode=hang",
        "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:8002", "-device", "virtio-net-device,netdev=n0",
    ]  # fmt: skip
    with open(tmp_path / "qemu.log", "wb") as log:
        qemu = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        wait_listening(qemu.pid)
        time.sleep(0.2)
        block = surface_of_process(qemu.pid)
        seccomp = status_of(qemu.pid)
    finally:
        qemu.kill()
        qemu.wait()
        host_listener.close()
    assert block["listening_sockets"] == 1, (block, (tmp_path / "qemu.log").read_text())
    assert [(s["proto"], s["address"], s["port"]) for s in block["listening"]] == [("tcp", "127.0.0.1", port)]
    assert block["seccomp"]["filters"] == int(seccomp["Seccomp_filters"])
    if seccomp["Seccomp"] == "0":  # Debian's QEMU runs without -sandbox unless asked
        assert block["syscalls"] is None and "every syscall is allowed" in block["method"]
    assert block["host_devices"] == block["devices_open"]  # not a container: the host's /dev is not listed
    whole = attack_surface(surface_of_image([str(minikernel)]), block)
    assert whole["listening_sockets"] == 1 and whole["executables"] == 1 and "process:" in whole["method"]


def runc_bundle(built: Path, tmp: Path, port: int, seccomp: dict[str, Any] | None = None) -> Path:
    config = json.loads((built / "bundle-hostnet" / "config.json").read_text())
    config["root"]["path"] = str(built / "bundle" / "rootfs")
    config["process"]["env"] = [*config["process"].get("env", []), f"PORT={port}"]
    if seccomp is not None:
        config["linux"]["seccomp"] = seccomp
    bundle = tmp / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


@contextlib.contextmanager
def run_container(bundle: Path, port: int) -> Iterator[int]:
    """runc run -d (its output to a file: a pipe would hang the caller), then the container's pid."""
    name = f"uniobs-surface-{secrets.token_hex(4)}"
    with open(bundle / "container.log", "wb") as log:
        done = subprocess.run(
            ["runc", "run", "-d", "--bundle", str(bundle), name],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, timeout=60,
        )  # fmt: skip
    try:
        assert done.returncode == 0, (bundle / "container.log").read_text()
        state = json.loads(subprocess.run(["runc", "state", name], capture_output=True, check=True).stdout)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield int(state["pid"])
    finally:
        subprocess.run(["runc", "kill", name, "KILL"], capture_output=True)
        subprocess.run(["runc", "delete", "-f", name], capture_output=True)


@pytest.mark.containers
@requires_runc
@requires_root
def test_runc_container_listens_once_and_sees_its_dev(container_build: Path, tmp_path: Path) -> None:
    port = free_port()
    bundle = runc_bundle(container_build, tmp_path, port)
    with run_container(bundle, port) as pid:
        block = surface_of_process(pid, container_config=str(bundle / "config.json"))
        visible = sorted(
            "/dev/" + os.path.relpath(os.path.join(d, n), f"/proc/{pid}/root/dev")
            for d, _, names in os.walk(f"/proc/{pid}/root/dev")
            for n in names
            if stat.S_ISCHR(os.lstat(os.path.join(d, n)).st_mode)
        )
        seccomp = status_of(pid)
    assert block["listening_sockets"] == 1, block
    assert [(s["proto"], s["port"], s["pid"]) for s in block["listening"]] == [("tcp", port, pid)]
    assert block["devices_visible"] == visible and {"/dev/null", "/dev/zero", "/dev/urandom"} <= set(visible)
    assert block["host_devices"] == sorted(set(block["devices_open"]) | set(visible))
    # The hello-node bundle (runc spec's starter) carries no seccomp profile: measured, not assumed.
    assert seccomp["Seccomp"] == "0" and block["syscalls"] is None
    assert block["seccomp_profile_syscalls"] is None and "no linux.seccomp" in block["method"]


@pytest.mark.containers
@requires_runc
@requires_root
@pytest.mark.skipif(not UNISTD.exists(), reason=f"no {UNISTD} to take syscall names from (linux-libc-dev)")
def test_runc_container_with_a_seccomp_allow_list(container_build: Path, tmp_path: Path) -> None:
    names = set(re.findall(r"^#define __NR_(\w+)\s", UNISTD.read_text(), re.M)) - {"ptrace", "kexec_load"}
    profile = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": sorted(names), "action": "SCMP_ACT_ALLOW"}]}
    port = free_port()
    bundle = runc_bundle(container_build, tmp_path, port, seccomp=profile)
    with run_container(bundle, port) as pid:
        block = surface_of_process(pid, container_config=str(bundle / "config.json"))
        seccomp = status_of(pid)
    assert seccomp["Seccomp"] == "2" and block["seccomp"]["mode"] == "filter"
    assert block["seccomp"]["filters"] == int(seccomp["Seccomp_filters"]) >= 1
    assert block["syscalls"] == block["seccomp_profile_syscalls"] == len(names)
    assert block["listening_sockets"] == 1


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process listening on a loopback port, once it says so."""
    code = "import socket, time; s = socket.create_server(('127.0.0.1', 0)); print('ready', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("when", ["_children", "_net_table", "_status"])
def test_a_process_that_exits_mid_read_gives_what_was_read(
    sleeper: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    assert surface_of_process(sleeper.pid)["listening_sockets"] == 1
    real = getattr(surface, when)

    def exit_then_read(*args: Any) -> Any:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()  # reaped: /proc/<pid> is gone
        return real(*args)

    monkeypatch.setattr(surface, when, exit_then_read)
    block = surface_of_process(sleeper.pid)
    assert block["complete"] is False
    assert "exited" in block["method"] or "unreadable" in block["method"]


def test_processes_exiting_at_any_moment_never_raise() -> None:
    for _ in range(30):
        proc = subprocess.Popen(["true"])
        block = surface_of_process(proc.pid)
        proc.wait()
        assert "method" in block
    assert surface_of_process(2**22 + 1)["listening_sockets"] is None  # above pid_max: never a process
