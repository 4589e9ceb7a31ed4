#!/usr/bin/env python3
"""Builds the hello-node container (the twin of ../unikernel) from what is installed on this host.

Outputs (in ``--out``, default ``build/``):

* ``bundle/rootfs/`` -- the container's root file system: ``/usr/bin/node`` (stripped copy), every
  library ``ldd`` lists at the path the binary asks for, the dynamic loader, ``/app/app.js``, a
  minimal ``/etc`` (passwd, group, hosts, resolv.conf, nsswitch.conf) and empty ``/tmp``,
  ``/proc``, ``/sys``, ``/dev`` mount points. No shell, no package manager, no distribution.
* ``bundle/config.json`` -- the OCI runtime configuration: ``runc spec``'s starter file, edited:
  ``node /app/app.js``, no terminal, hostname ``hello-node``, a tmpfs on ``/tmp``, and its own
  network namespace (only ``lo``, down, until the launcher adds interfaces or points
  ``linux.namespaces[network].path`` at a prepared namespace). ``linux.cgroupsPath`` is left
  unset: the launcher chooses it.
* ``bundle-hostnet/config.json`` -- the same container in the host's network namespace (what
  ``--network host`` gives with Docker or Podman); its ``root.path`` points at ``../bundle/rootfs``.
* ``rootfs.tar`` -- the root file system as a tar archive for ``podman import`` / ``docker
  import`` (fixed owner and times, so two builds from the same inputs give the same bytes).
* ``sizes.txt`` -- the sizes the README quotes.

Only the Python standard library and ``runc`` (for ``runc spec``) are used; ``strip`` (binutils)
when present. Everything is read from the host; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # examples/hello-node/ldd.py
from ldd import shared_libraries

HERE = Path(__file__).resolve().parent
MTIME = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))

ETC = {
    "etc/passwd": (
        "root:x:0:0:root:/root:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    ),
    "etc/group": "root:x:0:\nnogroup:x:65534:\n",
    "etc/hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    "etc/resolv.conf": "",
    "etc/nsswitch.conf": "passwd: files\ngroup: files\nhosts: files dns\n",
}
# Mount points the runtime mounts over; present so a read-only root works with any runtime.
MOUNT_POINTS = ("proc", "sys", "dev", "tmp", "root")


def install(src: Path, rootfs: Path, dest: str, mode: int = 0o755) -> None:
    target = rootfs / dest.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, target)
    os.chmod(target, mode)


def build_rootfs(rootfs: Path, node: Path, app: Path, strip: bool) -> None:
    if rootfs.exists():
        shutil.rmtree(rootfs)
    rootfs.mkdir(parents=True)
    node_dest = rootfs / "usr/bin/node"
    node_dest.parent.mkdir(parents=True)
    strip_tool = shutil.which("strip") if strip else None
    if strip_tool is not None:  # Node's binary carries ~12 MB of debug information
        subprocess.run([strip_tool, "--strip-unneeded", "-o", str(node_dest), str(node)], check=True)
        os.chmod(node_dest, 0o755)
    else:
        install(node, rootfs, "/usr/bin/node")
    for inside, host in shared_libraries(node):
        install(host, rootfs, inside)
    install(app, rootfs, "/app/app.js", 0o644)
    for rel, text in ETC.items():
        (rootfs / rel).parent.mkdir(parents=True, exist_ok=True)
        (rootfs / rel).write_text(text)
    for name in MOUNT_POINTS:
        (rootfs / name).mkdir(exist_ok=True)
    os.chmod(rootfs / "tmp", 0o1777)
    os.chmod(rootfs / "root", 0o700)


def runc_spec(bundle: Path) -> dict[str, Any]:
    """runc's starter configuration (runc spec), as a dict."""
    runc = shutil.which("runc")
    if runc is None:
        raise SystemExit("build.py: no runc on PATH (apt-get install runc)")
    spec = bundle / "config.json"
    spec.unlink(missing_ok=True)
    subprocess.run([runc, "spec", "--bundle", str(bundle)], check=True)
    config: dict[str, Any] = json.loads(spec.read_text())
    return config


def edit_config(config: dict[str, Any], *, own_netns: bool, root_path: str = "rootfs") -> dict[str, Any]:
    """The starter spec made into hello-node's: what runs, and with which namespaces."""
    config = json.loads(json.dumps(config))  # a deep copy
    process = config["process"]
    process["terminal"] = False  # runc run -d with a terminal needs a console socket
    process["args"] = ["/usr/bin/node", "/app/app.js"]
    process["cwd"] = "/app"
    process["env"] = ["PATH=/usr/bin", "NODE_ENV=production", "HOME=/root"]
    config["hostname"] = "hello-node"
    config["root"] = {"path": root_path, "readonly": True}
    config["mounts"].append(
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]}
    )
    namespaces = [ns for ns in config["linux"]["namespaces"] if ns["type"] != "network"]
    if own_netns:
        namespaces.append({"type": "network"})
    config["linux"]["namespaces"] = namespaces
    config["linux"].pop("cgroupsPath", None)  # the launcher's choice
    config.setdefault("annotations", {})["org.opencontainers.image.title"] = "hello-node"
    return config


def write_tar(rootfs: Path, tar_path: Path) -> None:
    """rootfs as a tar (root-owned, fixed times, sorted), the form podman/docker import take."""

    def normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mtime = MTIME
        return info

    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(rootfs):
            dirnames.sort()
            for name in [*sorted(dirnames), *sorted(filenames)]:
                path = Path(dirpath) / name
                tar.add(path, arcname=str(path.relative_to(rootfs)), recursive=False, filter=normalise)


def gzip_size(path: Path) -> int:
    """The size of `path` gzip'd at level 6 (what a registry layer would be), without writing it."""

    class Counter:
        n = 0

        def write(self, data: bytes) -> int:
            self.n += len(data)
            return len(data)

        def flush(self) -> None:
            return None

    counter = Counter()
    with open(path, "rb") as src, gzip.GzipFile(fileobj=counter, mode="wb", compresslevel=6, mtime=0) as gz:
        shutil.copyfileobj(src, gz, 1 << 20)
    return counter.n


def tree_bytes(root: Path) -> tuple[int, int]:
    """(bytes of regular files, number of files) under root."""
    total = files = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            total += st.st_size
            files += 1
    return total, files


def build(out: Path, node: Path, app: Path, strip: bool = True) -> dict[str, int]:
    bundle = out / "bundle"
    hostnet = out / "bundle-hostnet"
    bundle.mkdir(parents=True, exist_ok=True)
    hostnet.mkdir(parents=True, exist_ok=True)
    build_rootfs(bundle / "rootfs", node, app, strip)
    starter = runc_spec(bundle)
    (bundle / "config.json").write_text(json.dumps(edit_config(starter, own_netns=True), indent=2) + "\n")
    (hostnet / "config.json").write_text(
        json.dumps(edit_config(starter, own_netns=False, root_path="../bundle/rootfs"), indent=2) + "\n"
    )
    tar_path = out / "rootfs.tar"
    write_tar(bundle / "rootfs", tar_path)
    rootfs_bytes, files = tree_bytes(bundle / "rootfs")
    sizes = {
        "rootfs_bytes": rootfs_bytes,
        "rootfs_files": files,
        "node_bytes": (bundle / "rootfs/usr/bin/node").stat().st_size,
        "tar_bytes": tar_path.stat().st_size,
        "tar_gzip_bytes": gzip_size(tar_path),
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
    node = Path(os.path.realpath(args.node))
    if not node.is_file():
        raise SystemExit(f"build.py: no node binary at {args.node} (apt-get install nodejs)")
    sizes = build(args.out, node, args.app, strip=not args.no_strip)
    for key, value in sizes.items():
        print(f"{key:16} {value:>12,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
