"""Containers on this host, found without asking any daemon.

Two sources, merged (`ContainerDiscovery`):

1. **The OCI runtimes' own state files**, which say which cgroup, init pid and bundle each
   container has, whatever cgroup path its launcher chose:

   | state file (under `run_dir`, default /run)                       | written by               |
   |------------------------------------------------------------------|--------------------------|
   | `runc/<id>/state.json`                                           | runc (plain, Podman, CRI-O) |
   | `crun/<id>/status` + `crun/<id>/config.json`                     | crun (plain, Podman)     |
   | `containerd/runc/<namespace>/<id>/state.json`                    | runc under containerd    |
   | `docker/runtime-runc/moby/<id>/state.json`                       | runc under Docker        |
   | `containerd/io.containerd.runtime.v2.task/<ns>/<id>/{config.json,init.pid}` | containerd's v2 shim |
   | `docker/containerd/daemon/io.containerd.runtime.v2.task/moby/<id>/...` | Docker's own containerd |

   runc's `state.json` (libcontainer `State`, stable since runc 1.0): `id`, `init_process_pid`,
   `init_process_start` (the pid's start time in clock ticks, to detect pid reuse), `created`,
   `cgroup_paths` (controller -> absolute path; "" is the unified hierarchy), and
   `config.labels`: the bundle's annotations as "key=value" plus `bundle=<path>`. crun's
   `status` (src/libcrun/status.c): `pid`, `process-start-time`, `cgroup-path`, `bundle`,
   `created`; its annotations are in the `config.json` copy next to it.

2. **Cgroup names**, for containers whose state lives where we cannot see it:

   | runtime     | cgroupfs driver                     | systemd driver                          |
   |-------------|-------------------------------------|-----------------------------------------|
   | Docker      | `/docker/<id>`                      | `/system.slice/docker-<id>.scope`       |
   | Podman      | `/libpod_parent/libpod-<id>`        | `/machine.slice/libpod-<id>.scope`      |
   | containerd  | `/<namespace>/<id>` (state only)    | `<slice>/cri-containerd-<id>.scope`, `nerdctl-<id>.scope` |
   | CRI-O       | `<parent>/crio-<id>`                | `<slice>/crio-<id>.scope`               |
   | Kubernetes  | `/kubepods[/<qos>]/pod<uid>/<id>`   | see below                               |

   Kubernetes with the systemd driver: `/kubepods.slice[/kubepods-<qos>.slice]/`
   `kubepods[-<qos>]-pod<uid, "_" for "-">.slice/<cri-containerd|crio|docker>-<id>.scope`. A pod
   UID is the API server's UUID, or for a static pod (the kubeadm control plane) and its mirror
   pod the manifest's 32-hex config hash; with either driver.

   A cgroup belongs to the nearest container at or above it (`container_cgroup`), so nested roots
   (kind's `/kubelet.slice/...`, Docker in Docker) work, and so do the cgroups runtimes and
   containers nest below the one named after the container: crun's `container` sub-cgroup (the
   default with the systemd driver on cgroup v2) and `run.oci.delegate-cgroup` below it,
   Docker-in-Docker's `init`, a systemd inside the container. The same holds for a cgroup below
   one a state file names. conmon's cgroups (`libpod-conmon-<id>.scope`, `/libpod_parent/conmon`,
   `crio-conmon-<id>[.scope]`) are not containers and are not claimed.

Names, images and labels, in this order: Docker's `var_lib/docker/containers/<id>/config.v2.json`
(read-only; `Name`, `Config.Image`, `Config.Labels`), Podman's
`var_lib/containers/storage/overlay-containers/containers.json` (`names`, `metadata`'s
`image-name`), the OCI annotations (`io.kubernetes.cri.*` from containerd's CRI plugin,
`io.kubernetes.*` and `io.kubernetes.cri-o.*` from CRI-O). When a daemon's socket exists
(`run_dir/docker.sock`, `run_dir/podman/podman.sock`) it is asked `GET /containers/<id>/json`
with a short timeout, only for what the files did not say (Podman keeps labels only in its
database); a socket that fails is left alone for a while. Nothing here requires a daemon.

Everything a container names is tenant-controlled and bounded (`Limits`): files are read up
to a size, labels are capped in number and length, and the keys uniobs derives itself
(`container.image.*`, `k8s.*`, `uniobs.*`) cannot be set through labels. Kubernetes attributes
are only derived for a container whose cgroup is in a kubepods hierarchy, and the pod UID
comes from that path, not from an annotation.

A container's path can differ between hierarchies (a relative cgroupsPath lands under the
launcher's cgroup in each one, and a launcher on a hybrid host is often nested in memory only):
`Workload.cgroup` names the container, `Workload.cgroups` gives its path in each hierarchy where
that is another, from runc's per-controller `cgroup_paths`, else from `/proc/<init>/cgroup`.

Each root (`run_dir`, `var_lib`, `proc_dir`, the cgroup layout's root) is a parameter so tests
point them at recorded trees; absolute paths found inside state files (bundles under /run or
/var/lib) are re-rooted under them.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import heapq
import http.client
import json
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

from uniobs.host import cgroupfs
from uniobs.host.procfs import ProcError, ProcFS
from uniobs.lifecycle import discover as discovery
from uniobs.model import LABEL_RESOURCE_ATTRIBUTES, Kind, Workload

log = logging.getLogger("uniobs.containers")
_T = TypeVar("_T")

DEFAULT_RUN_DIR = "/run"
DEFAULT_VAR_LIB = "/var/lib"
DEFAULT_PROC = "/proc"
# Where the runtimes saw cgroupfs when they wrote `cgroup_paths` (the host's mount point).
HOST_CGROUP_MOUNT = "/sys/fs/cgroup"

# Label keys uniobs derives; a container's own labels cannot set them.
IMAGE_NAME = "container.image.name"
IMAGE_TAGS = "container.image.tags"
POD_UID = "k8s.pod.uid"
POD_NAME = "k8s.pod.name"
NAMESPACE_NAME = "k8s.namespace.name"
CONTAINER_NAME = "k8s.container.name"
QOS_CLASS = "uniobs.k8s.pod.qos_class"
OCI_RUNTIME = "uniobs.container.oci_runtime"
DERIVED_KEYS = frozenset(LABEL_RESOURCE_ATTRIBUTES)
_IMAGE = "image"  # internal: an image reference found in annotations
RESERVED_PREFIXES = ("uniobs.",)

# Annotations a runtime writes for itself: read into derived keys, never passed on as labels
# (CRI-O alone writes ~30 of them, which would crowd the owner's labels out of the cap).
INTERNAL_ANNOTATION_PREFIXES = ("io.kubernetes.", "io.podman.annotations.", "org.systemd.property.")
INTERNAL_ANNOTATIONS = frozenset({"io.container.manager", "bundle"})
# The annotations discovery reads. Always kept when a file is parsed, whatever the container
# adds: a flood of labels must not push out what tells who launched it and for which pod.
CONSUMED_ANNOTATIONS = frozenset(
    {
        "io.container.manager",
        "io.kubernetes.cri.sandbox-uid",
        "io.kubernetes.cri.sandbox-name",
        "io.kubernetes.cri.sandbox-namespace",
        "io.kubernetes.cri.container-name",
        "io.kubernetes.cri.image-name",
        "io.kubernetes.pod.uid",
        "io.kubernetes.pod.name",
        "io.kubernetes.pod.namespace",
        "io.kubernetes.container.name",
        "io.kubernetes.cri-o.ImageName",
    }
)

_HEX64 = re.compile(r"[0-9a-f]{64}")
_ID = r"([0-9a-f]{64})"
# A cgroup name that names a container, per runtime (conmon's never match: "conmon-" is not 64
# hex digits). Each id is 64 hex digits, so a shorter name is not looked at (`_names_container`).
_LEAF_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(rf"docker-{_ID}\.scope"), "docker"),
    (re.compile(rf"libpod-(?:payload-)?{_ID}(?:\.scope)?"), "podman"),
    (re.compile(rf"cri-containerd-{_ID}\.scope"), "containerd"),
    (re.compile(rf"nerdctl-{_ID}\.scope"), "containerd"),
    # CRI-O: `crio-<id>.scope` (systemd driver), `<parent>/crio-<id>` (cgroupfs driver, internal/config/cgmgr)
    (re.compile(rf"crio-{_ID}(?:\.scope)?"), "cri-o"),
)
# A pod's UID as the kubelet writes it into its cgroup's name: the API server's UUID, or for a
# static pod (a manifest the kubelet reads itself: the kubeadm control plane) and its mirror pod,
# the manifest's 32-hex md5 config hash (pkg/kubelet/config/common.go, "Generated UID ...").
_POD_UID = r"(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32})"
_UID = re.compile(_POD_UID)
# Kubernetes pod cgroups. systemd: `kubepods[-<qos>]-pod<uid, "_" for "-">.slice` (with any prefix,
# e.g. kind's `kubelet-kubepods-...`); cgroupfs: `[...]/kubepods[/<qos>]/pod<uid>`.
_K8S_SYSTEMD_POD = re.compile(r"(?:.*-)?kubepods(?:-(besteffort|burstable))?-pod([0-9a-f_]{32,36})\.slice")
_K8S_CGROUPFS_POD = re.compile(rf"(?:^|.*/)kubepods(?:/(besteffort|burstable))?/pod({_POD_UID})")

# The controllers uniobs reads, in the order that breaks ties when a container's controllers
# disagree on its path (see `canonical_cgroup`).
_READ_CONTROLLERS = ("cpuacct", "memory", "cpu", "pids", "blkio", "")


@dataclass(frozen=True)
class Limits:
    """Bounds on what a container can make uniobs read or keep."""

    max_labels: int = 64  # labels kept per container (smallest keys first, so the choice is stable)
    max_key_chars: int = 128  # a longer key is dropped
    max_value_chars: int = 256  # a longer value is cut
    max_name_chars: int = 256  # container and image names are cut
    max_file_bytes: int = 4 << 20  # a larger state or metadata file is not parsed
    max_containers: int = 10_000  # entries read per state directory

    def validate(self) -> None:
        for name in ("max_labels", "max_key_chars", "max_value_chars", "max_name_chars", "max_file_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1")
        if self.max_containers < 1:
            raise ValueError("max_containers: must be >= 1")


# --- pure parsers: bytes in, values out, no I/O ----------------------------------------------


@dataclass(frozen=True)
class RuntimeState:
    """What one runtime state record says about one container."""

    source: str  # "runc", "crun" or "containerd-task": which kind of record
    root: str  # the state root it was found under, e.g. "/run/containerd/runc/k8s.io"
    id: str
    pid: int | None = None
    pid_start: int | None = None  # the pid's start time (/proc/<pid>/stat field 22), to detect reuse
    created: str = ""
    cgroups: tuple[tuple[str, str], ...] = ()  # (controller, path in its hierarchy); "" is unified
    cgroups_path: str | None = None  # the spec's linux.cgroupsPath, as a path, when absolute
    bundle: str | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def cgroup(self) -> str | None:
        return canonical_cgroup(self.cgroups) or self.cgroups_path


@dataclass(frozen=True)
class OciConfig:
    """The parts of an OCI runtime config (config.json) discovery uses."""

    annotations: Mapping[str, str] = field(default_factory=dict)
    hostname: str = ""
    cgroups_path: str | None = None  # as a cgroup path: absolute, or converted from systemd's form


@dataclass(frozen=True)
class ManagerMeta:
    """What a container manager (Docker, Podman) knows about a container."""

    name: str = ""
    image: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    pid: int | None = None


@dataclass(frozen=True)
class CgroupMatch:
    """A container recognised from its cgroup path alone."""

    runtime: str  # "docker", "podman", "containerd", "cri-o"; "cri" for a kubepods cgroupfs leaf
    id: str
    pod_uid: str | None = None
    qos_class: str | None = None  # "guaranteed", "burstable", "besteffort"


def _json(data: bytes | str) -> Any:
    try:
        return json.loads(data)
    except RecursionError:  # hostile nesting: as unreadable as any other bad JSON
        raise ValueError("JSON nested too deeply") from None


def _str(value: Any, limit: int) -> str:
    return value[:limit] if isinstance(value, str) else ""


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _own_label(key: str) -> bool:
    """Whether a container may set this label (not a key uniobs derives or a runtime's own)."""
    return not (
        key in DERIVED_KEYS
        or key in INTERNAL_ANNOTATIONS
        or key.startswith(RESERVED_PREFIXES)
        or key.startswith(INTERNAL_ANNOTATION_PREFIXES)
    )


def cap_labels(items: Iterable[tuple[Any, Any]], limits: Limits, keep: frozenset[str] = frozenset()) -> dict[str, str]:
    """A container's own labels, bounded: string pairs only, keys a container may set (see
    `_own_label`) within `max_key_chars`, values cut to `max_value_chars`, and at most
    `max_labels` of them, the smallest keys first so the same labels always give the same
    choice. Keys in `keep` (a fixed set the caller reads) are kept besides, values cut."""
    valid: dict[str, str] = {}
    kept: dict[str, str] = {}
    for key, value in items:
        if not isinstance(key, str) or not isinstance(value, str):
            continue
        if key in keep:
            kept[key] = value[: limits.max_value_chars]
        elif 0 < len(key) <= limits.max_key_chars and _own_label(key):
            valid[key] = value
    keys = heapq.nsmallest(limits.max_labels, valid) if len(valid) > limits.max_labels else sorted(valid)
    return {**{k: valid[k][: limits.max_value_chars] for k in keys}, **kept}


def _pairs(entries: Any) -> Iterator[tuple[str, str]]:
    """runc's `config.labels`: "key=value" strings."""
    if isinstance(entries, list):
        for entry in entries:
            if isinstance(entry, str):
                key, sep, value = entry.partition("=")
                if sep:
                    yield key, value


def _items(mapping: Any) -> Iterable[tuple[Any, Any]]:
    return mapping.items() if isinstance(mapping, dict) else ()


def relative_cgroup(controller: str, value: str, unified_only: bool) -> str | None:
    """An absolute `cgroup_paths` value to the path inside its hierarchy.

    "/sys/fs/cgroup/memory/docker/ab" -> "/docker/ab" (v1: the mount's own directory goes);
    the unified "" entry is "/sys/fs/cgroup/<path>" on a pure v2 host and
    "/sys/fs/cgroup/unified/<path>" on a hybrid one (`unified_only` tells which).
    """
    prefix = HOST_CGROUP_MOUNT + "/"
    if not value.startswith(prefix):
        return None
    rest = value[len(prefix) :]
    if controller or not unified_only:
        rest = rest.partition("/")[2]
    try:
        return cgroupfs.normalize_path(rest)
    except ValueError:
        return None


def canonical_cgroup(cgroups: Iterable[tuple[str, str]]) -> str | None:
    """The one path that names a container (`Workload.cgroup`, `uniobs.cgroup.path`).

    A relative cgroupsPath lands relative to the *launcher's* cgroup in each hierarchy (runc's
    rule), so when the launcher sat at different places in different v1 hierarchies, so does the
    container. The path most of the read controllers agree on wins; ties go to cpuacct, then
    memory (the hierarchies `cgroupfs.list_cgroups` walks). The figures are still read in each
    hierarchy at that hierarchy's own path (`Workload.cgroups`, see `ContainerDiscovery`).
    """
    by_controller = dict(cgroups)
    counts = collections.Counter(by_controller[c] for c in _READ_CONTROLLERS if c in by_controller)
    if not counts:
        return next(iter(sorted(by_controller.values())), None)
    best = max(counts.values())
    return next(by_controller[c] for c in _READ_CONTROLLERS if c in by_controller and counts[by_controller[c]] == best)


def expand_slice(name: str) -> str:
    """A systemd slice to its path: "kubepods-besteffort.slice" ->
    "/kubepods.slice/kubepods-besteffort.slice" (each dash opens a parent slice)."""
    if name in ("", "-.slice"):
        return "/"
    if not name.endswith(".slice") or "/" in name:
        raise ValueError(f"not a slice name: {name!r}")
    stem = name.removesuffix(".slice")
    parts = stem.split("-")
    if "" in parts:
        raise ValueError(f"not a slice name: {name!r}")
    return "".join("/" + "-".join(parts[: i + 1]) + ".slice" for i in range(len(parts)))


def cgroups_path_to_cgroup(spec: str) -> str | None:
    """An OCI `linux.cgroupsPath` as a cgroup path, when it names one by itself.

    Absolute paths are the path. systemd's "slice:prefix:name" form (runc/crun with the systemd
    driver) becomes "<slice path>/<prefix>-<name>.scope". Relative paths depend on the
    launcher's cgroup and give None (the runtime's `cgroup_paths` say where they landed).
    """
    parts = spec.split(":")
    if len(parts) == 3 and (parts[0] == "" or parts[0].endswith(".slice")) and "/" not in spec:
        slice_, prefix, name = parts
        try:
            parent = expand_slice(slice_ or "system.slice")
        except ValueError:
            return None
        unit = name if name.endswith(".slice") else (f"{prefix}-{name}.scope" if prefix else f"{name}.scope")
        return (parent.rstrip("/") or "") + "/" + unit
    if spec.startswith("/"):
        try:
            return cgroupfs.normalize_path(spec)
        except ValueError:
            return None
    return None


def parse_oci_config(data: bytes | str, limits: Limits) -> OciConfig:
    """A bundle's config.json (OCI runtime spec): annotations, hostname, cgroupsPath."""
    doc = _json(data)
    if not isinstance(doc, dict):
        raise ValueError("config.json is not an object")
    linux = doc.get("linux")
    cgroups_path = linux.get("cgroupsPath") if isinstance(linux, dict) else None
    return OciConfig(
        annotations=cap_labels(_items(doc.get("annotations")), limits, CONSUMED_ANNOTATIONS),
        hostname=_str(doc.get("hostname"), limits.max_name_chars),
        cgroups_path=cgroups_path_to_cgroup(cgroups_path) if isinstance(cgroups_path, str) else None,
    )


def parse_runc_state(data: bytes | str, limits: Limits, root: str = "") -> RuntimeState:
    """runc's state.json (libcontainer State)."""
    doc = _json(data)
    if not isinstance(doc, dict) or not isinstance(doc.get("id"), str):
        raise ValueError("state.json has no id")
    paths = doc.get("cgroup_paths")
    cgroups: list[tuple[str, str]] = []
    if isinstance(paths, dict):
        unified_only = set(paths) <= {""}
        for controller, value in paths.items():
            if isinstance(controller, str) and isinstance(value, str):
                rel = relative_cgroup(controller, value, unified_only)
                if rel is not None:
                    cgroups.append((controller, rel))
    config = _obj(doc.get("config"))
    labels = dict(_pairs(config.get("labels")))
    bundle = labels.pop("bundle", None)
    cg_path = _obj(config.get("cgroups")).get("path")
    return RuntimeState(
        source="runc",
        root=root,
        id=doc["id"][: limits.max_name_chars],
        pid=_int(doc.get("init_process_pid")),
        pid_start=_int(doc.get("init_process_start")),
        created=_str(doc.get("created"), 64),
        cgroups=tuple(sorted(cgroups)),
        cgroups_path=cgroups_path_to_cgroup(cg_path) if isinstance(cg_path, str) else None,
        bundle=bundle,
        annotations=cap_labels(labels.items(), limits, CONSUMED_ANNOTATIONS),
    )


def parse_crun_status(data: bytes | str, container_id: str, root: str = "") -> RuntimeState:
    """crun's status file (src/libcrun/status.c). `cgroup-path` is the path in the hierarchy."""
    doc = _json(data)
    if not isinstance(doc, dict):
        raise ValueError("status is not an object")
    cgroup = doc.get("cgroup-path")
    path: str | None = None
    if isinstance(cgroup, str) and cgroup:
        try:
            path = cgroupfs.normalize_path(cgroup)
        except ValueError:
            path = None
    bundle = doc.get("bundle")
    return RuntimeState(
        source="crun",
        root=root,
        id=container_id,
        pid=_int(doc.get("pid")),
        pid_start=_int(doc.get("process-start-time")),
        created=_str(doc.get("created"), 64),
        cgroups_path=path,
        bundle=bundle if isinstance(bundle, str) else None,
    )


def parse_docker_config(data: bytes | str, limits: Limits) -> ManagerMeta:
    """Docker's containers/<id>/config.v2.json: Name ("/name"), Config.Image, Config.Labels, State.Pid."""
    doc = _json(data)
    if not isinstance(doc, dict):
        raise ValueError("config.v2.json is not an object")
    config = _obj(doc.get("Config"))
    state = _obj(doc.get("State"))
    running = state.get("Running") is True
    return ManagerMeta(
        name=_str(doc.get("Name"), limits.max_name_chars + 1).removeprefix("/")[: limits.max_name_chars],
        image=_str(config.get("Image"), limits.max_name_chars),
        labels=cap_labels(_items(config.get("Labels")), limits),
        pid=_int(state.get("Pid")) if running else None,
    )


def parse_docker_inspect(data: bytes | str, limits: Limits) -> ManagerMeta:
    """`GET /containers/<id>/json` (Docker, and Podman's compatible API): the same fields."""
    return parse_docker_config(data, limits)


def parse_podman_containers(data: bytes | str, limits: Limits) -> dict[str, ManagerMeta]:
    """containers/storage's containers.json: id -> name (`names[0]`) and image (`metadata`, a
    JSON string, `image-name`). Shared by Podman, Buildah and CRI-O."""
    doc = _json(data)
    if not isinstance(doc, list):
        raise ValueError("containers.json is not a list")
    out: dict[str, ManagerMeta] = {}
    for entry in doc[: limits.max_containers]:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            continue
        names = entry.get("names")
        name = _str(names[0], limits.max_name_chars) if isinstance(names, list) and names else ""
        image = ""
        metadata = entry.get("metadata")
        if isinstance(metadata, str) and len(metadata) <= limits.max_file_bytes:
            try:
                meta = _json(metadata)
            except ValueError:
                meta = None
            if isinstance(meta, dict):
                image = _str(meta.get("image-name"), limits.max_name_chars)
        out[entry["id"]] = ManagerMeta(name=name, image=image)
    return out


def _pod_of(head: str) -> tuple[str | None, str | None]:
    """(pod UID, QoS class) when `head` is a Kubernetes pod's cgroup, in either driver's naming."""
    pod = _K8S_SYSTEMD_POD.fullmatch(head.rpartition("/")[2])
    if pod is not None:
        qos, uid = pod.groups()
        uid = uid.replace("_", "-")  # the kubelet's systemd driver writes a UUID's dashes as "_"
    else:
        pod = _K8S_CGROUPFS_POD.fullmatch(head)
        if pod is None:
            return None, None
        qos, uid = pod.groups()
    if not _UID.fullmatch(uid):
        return None, None
    return uid, qos or "guaranteed"


def _names_container(path: str) -> CgroupMatch | None:
    """The container the last component of `path` names, if it names one (its parent may name
    its pod): the runtimes' own names (table in the module docstring), `/docker/<id>`, and a bare
    id in a Kubernetes pod (the cgroupfs driver's `kubepods/<qos>/pod<uid>/<id>`)."""
    head, _, leaf = path.rpartition("/")
    if len(leaf) < 64:  # every name below holds a 64-hex id: most cgroups are passed over here
        return None
    for pattern, runtime in _LEAF_PATTERNS:
        m = pattern.fullmatch(leaf)
        if m is not None:
            return CgroupMatch(runtime, m.group(1), *_pod_of(head))
    if _HEX64.fullmatch(leaf):
        if head.rpartition("/")[2] == "docker":
            return CgroupMatch("docker", leaf)
        uid, qos = _pod_of(head)
        if uid is not None:
            return CgroupMatch("cri", leaf, uid, qos)
    return None


def _ancestors(path: str) -> Iterator[str]:
    """`path` itself, then each cgroup above it, nearest first; never the root ("/")."""
    path = path.rstrip("/")
    while path:
        yield path
        path = path.rpartition("/")[0]


def container_cgroup(path: str) -> tuple[str, CgroupMatch] | None:
    """The nearest cgroup at or above `path` whose name names a container, and that container.

    Runtimes nest cgroups below the one they name after the container: crun's `container`
    sub-cgroup under its systemd scope (`run.oci.systemd.subgroup`, the default on cgroup v2) and
    a delegated one below that (`run.oci.delegate-cgroup`), Docker-in-Docker's `init`, a systemd
    inside the container (`init.scope`, its own slices), podman's `--cgroups=split`. A container
    inside another (Docker in Docker, kind's nodes) is the nearest: the innermost.
    """
    for at in _ancestors(path):
        match = _names_container(at)
        if match is not None:
            return at, match
    return None


def match_cgroup(path: str) -> CgroupMatch | None:
    """Recognise a container from its cgroup path alone (see the module docstring's table): the
    nearest one at or above `path` (`container_cgroup`)."""
    found = container_cgroup(path)
    return found[1] if found is not None else None


def split_image(ref: str) -> tuple[str, str | None]:
    """An image reference to (name, tag): "registry:5000/team/app:1.2@sha256:..." gives
    ("registry:5000/team/app", "1.2"); a digest alone gives no tag."""
    ref = ref.partition("@")[0]
    colon = ref.rfind(":")
    if colon > ref.rfind("/"):
        return ref[:colon], ref[colon + 1 :] or None
    return ref, None


# --- reading ----------------------------------------------------------------------------------


class _TooLarge(Exception):
    pass


def _read_bounded(path: str, limit: int) -> bytes | None:
    """A whole file, None if it does not exist; _TooLarge past `limit` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ESRCH):
            return None
        raise
    try:
        chunks = []
        size = 0
        while chunk := os.read(fd, 1 << 20):
            size += len(chunk)
            if size > limit:
                raise _TooLarge(path)
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _listdir(path: str, limit: int) -> list[str]:
    try:
        with os.scandir(path) as it:
            names = []
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    names.append(entry.name)
                    if len(names) >= limit:
                        log.warning("more than %d entries in %s: the rest are not read", limit, path)
                        break
            return sorted(names)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class _Unavailable(Exception):
    """The daemon's socket is absent, or failed and is resting."""


class _SocketClient:
    """GET JSON from a daemon's unix socket, if it exists; after a failure, rests a while."""

    def __init__(self, path: str, timeout: float, max_bytes: int, retry_after: float = 60.0) -> None:
        self.path = path
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.retry_after = retry_after
        self._resting_until = 0.0

    def get(self, url: str) -> bytes | None:
        """The body of a 200 answer, None for a 404; _Unavailable otherwise."""
        if time.monotonic() < self._resting_until or not os.path.exists(self.path):
            raise _Unavailable(self.path)
        conn = _UnixHTTPConnection(self.path, self.timeout)
        try:
            conn.request("GET", url, headers={"Accept": "application/json"})
            resp = conn.getresponse()
            body = resp.read(self.max_bytes + 1)
            if resp.status == 404:
                return None
            if resp.status != 200 or len(body) > self.max_bytes:
                raise OSError(f"HTTP {resp.status}, {len(body)} bytes")
            return body
        except (OSError, http.client.HTTPException) as exc:
            self._resting_until = time.monotonic() + self.retry_after
            log.info("%s: %s (not asked again for %.0f s)", self.path, exc, self.retry_after)
            raise _Unavailable(self.path) from None
        finally:
            conn.close()


# --- discovery --------------------------------------------------------------------------------


class ContainerDiscovery:
    """Finds containers from state files and cgroup names; keep one for repeated discovery.

    `refresh()` rescans the state directories (files unchanged since the last scan are not
    parsed again); `identify(path)` is the `discovery.discover_cgroups` seam; `discover()`
    does both and returns the containers. With `scan=False` nothing is listed: `identify` looks
    up only the container a cgroup name points at (what the module-level `identify` does).
    """

    def __init__(
        self,
        layout: cgroupfs.CgroupLayout | None = None,
        run_dir: str = DEFAULT_RUN_DIR,
        var_lib: str = DEFAULT_VAR_LIB,
        *,
        proc_dir: str | None = DEFAULT_PROC,
        limits: Limits | None = None,
        use_sockets: bool = True,
        docker_socket: str | None = None,
        podman_socket: str | None = None,
        socket_timeout: float = 0.25,
        scan: bool = True,
        rescan_after: float = 2.0,
        watch: bool = False,
    ) -> None:
        self.layout = layout
        # watch=True: the cgroup tree is kept current with inotify between discover() calls
        # (cgroupfs.CgroupTree) rather than walked each time; close() drops its watches
        self.watch = watch
        self._tree: cgroupfs.CgroupTree | None = None
        self.run_dir = run_dir.rstrip("/") or "/"
        self.var_lib = var_lib.rstrip("/") or "/"
        self.proc_dir = proc_dir  # None: trust state files' pids without checking them
        self._proc = ProcFS(proc_dir) if proc_dir is not None else None
        self.limits = limits or Limits()
        self.limits.validate()
        self.scan = scan
        self.rescan_after = rescan_after  # seconds an index serves `identify` before a rescan
        self._sockets: dict[str, _SocketClient] = {}
        if use_sockets:
            self._sockets["docker"] = _SocketClient(
                docker_socket or f"{self.run_dir}/docker.sock", socket_timeout, self.limits.max_file_bytes
            )
            self._sockets["podman"] = _SocketClient(
                podman_socket or f"{self.run_dir}/podman/podman.sock", socket_timeout, self.limits.max_file_bytes
            )
        # path -> (stat signature, parsed value): a file is parsed again only when it changed
        self._files: dict[str, tuple[tuple[int, int, int], Any]] = {}
        self._seen_files: set[str] = set()
        self._asked: dict[tuple[str, str], ManagerMeta | None] = {}  # (daemon, id) -> answer
        self._states: dict[str, list[RuntimeState]] = {}
        self._by_cgroup: dict[str, str] = {}
        # What does not change while the state files do not: the paths identify() found no
        # container for (a name and the state files decide it), and the plain cgroups' Workloads
        self._no_container: set[str] = set()
        self._plain: dict[str, Workload] = {}
        self._scanned_at: float | None = None
        # The cgroups the last discover() walked and no container claimed (plain Kind.CGROUP
        # workloads), so a caller that also follows plain cgroups need not walk the tree again.
        self.unclaimed: list[Workload] = []
        self._warned: set[str] = set()

    # -- files

    def _rebase(self, path: str) -> str:
        """An absolute path from a state file, under this discovery's roots."""
        for host_root, root in (("/var/run", self.run_dir), ("/run", self.run_dir), ("/var/lib", self.var_lib)):
            if path == host_root or path.startswith(host_root + "/"):
                return root + path[len(host_root) :]
        return path

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    def _load(self, path: str, parse: Callable[[bytes], _T]) -> _T | None:
        """`parse(bytes)` of a file, cached while the file is unchanged; None if absent or bad."""
        self._seen_files.add(path)
        try:
            st = os.stat(path)
        except OSError:
            self._files.pop(path, None)
            return None
        signature = (st.st_ino, st.st_size, st.st_mtime_ns)
        cached = self._files.get(path)
        if cached is not None and cached[0] == signature:
            hit: _T | None = cached[1]  # stored by this method with the same parser for this path
            return hit
        value: _T | None = None
        try:
            data = _read_bounded(path, self.limits.max_file_bytes)
            if data is not None:
                value = parse(data)
        except _TooLarge:
            self._warn_once(path, "%s: larger than %d bytes, not read", path, self.limits.max_file_bytes)
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.debug("%s: %s", path, exc)
        self._files[path] = (signature, value)
        return value

    def _runc_state(self, root: str, cid: str) -> RuntimeState | None:
        return self._load(f"{root}/{cid}/state.json", lambda data: parse_runc_state(data, self.limits, root))

    def _crun_state(self, root: str, cid: str) -> RuntimeState | None:
        """crun's status, with the annotations of the config.json copy crun keeps next to it."""
        state = self._load(f"{root}/{cid}/status", lambda data: parse_crun_status(data, cid, root))
        if state is None:
            return None
        config = self._load(f"{root}/{cid}/config.json", lambda data: parse_oci_config(data, self.limits))
        if config is None:
            return state
        return dataclasses.replace(
            state, cgroups_path=state.cgroups_path or config.cgroups_path, annotations=config.annotations
        )

    def _task_state(self, root: str, cid: str) -> RuntimeState | None:
        """A containerd v2 task directory: the bundle itself (config.json) and init.pid."""
        directory = f"{root}/{cid}"
        config = self._load(f"{directory}/config.json", lambda data: parse_oci_config(data, self.limits))
        if config is None:
            return None
        pid = self._load(f"{directory}/init.pid", lambda data: int(data.strip() or b"0") or None)
        return RuntimeState(
            source="containerd-task",
            root=root,
            id=cid,
            pid=pid,
            cgroups_path=config.cgroups_path,
            bundle=directory,
            annotations=config.annotations,
        )

    # -- where the runtimes keep state

    def _runc_roots(self) -> list[str]:
        roots = [f"{self.run_dir}/runc", f"{self.run_dir}/docker/runtime-runc/moby"]
        base = f"{self.run_dir}/containerd/runc"
        roots += [f"{base}/{ns}" for ns in _listdir(base, self.limits.max_containers)]
        return roots

    def _task_roots(self) -> list[str]:
        base = f"{self.run_dir}/containerd/io.containerd.runtime.v2.task"
        roots = [f"{base}/{ns}" for ns in _listdir(base, self.limits.max_containers)]
        roots.append(f"{self.run_dir}/docker/containerd/daemon/io.containerd.runtime.v2.task/moby")
        return roots

    def refresh(self) -> None:
        """Rescan every state directory."""
        # forget files nobody read since the last scan (containers gone), then start counting again
        for path in [p for p in self._files if p not in self._seen_files]:
            del self._files[path]
        self._seen_files = set()
        states: dict[str, list[RuntimeState]] = {}
        limit = self.limits.max_containers

        def add(state: RuntimeState | None) -> None:
            if state is not None:
                states.setdefault(state.id, []).append(state)

        for root in self._runc_roots():
            for cid in _listdir(root, limit):
                add(self._runc_state(root, cid))
        crun = f"{self.run_dir}/crun"
        for cid in _listdir(crun, limit):
            add(self._crun_state(crun, cid))
        for root in self._task_roots():
            for cid in _listdir(root, limit):
                add(self._task_state(root, cid))
        by_cgroup: dict[str, str] = {}
        for cid, found in states.items():
            for state in found:
                for _, path in state.cgroups:
                    by_cgroup.setdefault(path, cid)
                if state.cgroups_path is not None:
                    by_cgroup.setdefault(state.cgroups_path, cid)
        if by_cgroup != self._by_cgroup:
            self._no_container.clear()
        self._states = states
        self._by_cgroup = by_cgroup
        self._scanned_at = time.monotonic()

    def _fresh(self) -> None:
        if self._scanned_at is None or time.monotonic() - self._scanned_at > self.rescan_after:
            self.refresh()

    def _states_for(self, cid: str) -> list[RuntimeState]:
        if self.scan:
            self._fresh()
            return self._states.get(cid, [])
        # targeted: only the places this id can be
        found: list[RuntimeState] = []
        if "/" in cid or cid in (".", ".."):
            return found
        for root in self._runc_roots():
            state = self._runc_state(root, cid)
            if state is not None:
                found.append(state)
        crun_state = self._crun_state(f"{self.run_dir}/crun", cid)
        if crun_state is not None:
            found.append(crun_state)
        for root in self._task_roots():
            task_state = self._task_state(root, cid)
            if task_state is not None:
                found.append(task_state)
        return found

    # -- managers' metadata

    def _docker_meta(self, cid: str) -> ManagerMeta | None:
        if not _HEX64.fullmatch(cid):
            return None
        meta = self._load(
            f"{self.var_lib}/docker/containers/{cid}/config.v2.json",
            lambda data: parse_docker_config(data, self.limits),
        )
        return meta if meta is not None else self._ask("docker", cid)

    def _podman_meta(self, cid: str) -> ManagerMeta | None:
        every = self._load(
            f"{self.var_lib}/containers/storage/overlay-containers/containers.json",
            lambda data: parse_podman_containers(data, self.limits),
        )
        stored = every.get(cid) if every else None
        asked = self._ask("podman", cid)  # labels live only in Podman's database
        if asked is None:
            return stored
        if stored is None:
            return asked
        return ManagerMeta(stored.name or asked.name, stored.image or asked.image, asked.labels, asked.pid)

    def _ask(self, daemon: str, cid: str) -> ManagerMeta | None:
        """The daemon's answer about one container, asked once per container."""
        client = self._sockets.get(daemon)
        if client is None or not _HEX64.fullmatch(cid):
            return None
        key = (daemon, cid)
        if key not in self._asked:
            try:
                body = client.get(f"/containers/{cid}/json")
            except _Unavailable:
                return None  # not cached: ask again when the daemon is back
            meta = None
            if body is not None:
                try:
                    meta = parse_docker_inspect(body, self.limits)
                except ValueError as exc:
                    log.debug("%s: %s", client.path, exc)
            if len(self._asked) >= self.limits.max_containers:
                self._asked.clear()
            self._asked[key] = meta
        return self._asked[key]

    # -- pids

    def _live_pid(self, pid: int | None, start: int | None) -> int | None:
        """The pid if it still is the container's process (same start time when known)."""
        if pid is None or self._proc is None:
            return pid
        try:
            st = self._proc.stat(pid, zombie_ok=True)  # a zombie init still holds its pid: the container's
        except (ProcError, OSError):
            return None
        if start is not None and st.starttime != start:
            return None  # the pid was reused
        return pid

    # -- putting it together

    def identify(self, path: str) -> Workload | None:
        """The container whose cgroup this is, or None (the `discover_cgroups` seam)."""
        try:
            path = cgroupfs.normalize_path(path)
        except ValueError:
            return None
        if self.scan:
            self._fresh()
            if path in self._no_container:
                return None
        # The nearest cgroup at or above `path` that a state file or its own name gives to a
        # container: runtimes and containers nest cgroups below the container's (see
        # `container_cgroup`), and those are the container's too.
        for at in _ancestors(path):
            cid = self._by_cgroup.get(at)
            match = _names_container(at)
            if cid is None and match is None and not self.scan:
                cid = self._containerd_id(at)
            if cid is not None or match is not None:
                break
        else:
            if self.scan:
                self._no_container.add(path)  # until the state files change (refresh)
            return None
        if cid is None:
            assert match is not None
            cid = match.id
        return self._describe(cid, at, match)

    def _containerd_id(self, path: str) -> str | None:
        """containerd's default `/<namespace>/<id>`, when that task exists (targeted mode)."""
        parts = path.strip("/").split("/")
        if len(parts) != 2:
            return None
        ns, cid = parts
        for state in self._states_for(cid):
            if state.root.endswith(f"/{ns}") and path in (state.cgroup, state.cgroups_path):
                return cid
        return None

    def _describe(self, cid: str, path: str | None, match: CgroupMatch | None) -> Workload | None:
        states = self._states_for(cid)
        if not states and match is None:
            return None
        annotations: dict[str, str] = {}
        pid: int | None = None
        cgroup: str | None = None
        oci_runtime = ""
        for state in states:  # runc/crun records come first, then containerd task directories
            for key, value in state.annotations.items():
                annotations.setdefault(key, value)
            if pid is None:
                pid = self._live_pid(state.pid, state.pid_start)
            if cgroup is None:
                cgroup = state.cgroup
            if state.source in ("runc", "crun") and not oci_runtime:
                oci_runtime = state.source
        cgroup, per_controller = self._controller_paths(states, cgroup if cgroup is not None else path, pid)
        if match is None and cgroup is not None:
            match = match_cgroup(cgroup)  # a state-known container in a kubepods cgroup
        if match is not None and match.id != cid:
            match = None  # a cgroup inside another container's: this container is what its state says
        if match is not None and match.runtime != "cri":
            runtime = match.runtime
        elif states:
            runtime = self._manager(states[0])
        else:
            runtime = "cri"  # a kubepods leaf whose runtime left no state we can see

        meta: ManagerMeta | None = None
        if runtime == "docker":
            meta = self._docker_meta(cid)
        elif runtime in ("podman", "cri-o"):
            meta = self._podman_meta(cid)
        if meta is not None and pid is None:
            pid = self._live_pid(meta.pid, None)
            if pid is not None:  # a container found by name: its init says where it is per hierarchy
                cgroup, per_controller = self._controller_paths(states, cgroup, pid)

        derived: dict[str, str] = {}
        name = meta.name if meta is not None else ""
        image = meta.image if meta is not None else ""
        if match is not None and match.pod_uid is not None:
            k8s = self._kubernetes(annotations, match.pod_uid)
            image = image or k8s.pop(_IMAGE, "")
            derived.update(k8s)
            derived[POD_UID] = match.pod_uid
            if match.qos_class:
                derived[QOS_CLASS] = match.qos_class
            name = k8s.get(CONTAINER_NAME) or name
        if image and not image.startswith("sha256:"):
            image_name, tag = split_image(image[: self.limits.max_name_chars])
            derived[IMAGE_NAME] = image_name
            if tag:
                derived[IMAGE_TAGS] = tag
        if oci_runtime and oci_runtime != runtime:
            derived[OCI_RUNTIME] = oci_runtime

        own = [*annotations.items(), *(meta.labels.items() if meta is not None else ())]
        labels = cap_labels(own, self.limits)  # each source was capped: together, cap again
        labels.update(derived)
        if not name:
            name = cid[:12] if _HEX64.fullmatch(cid) else cid
        return Workload(
            kind=Kind.CONTAINER,
            runtime=runtime,
            id=cid,
            name=name[: self.limits.max_name_chars],
            pid=pid,
            cgroup=cgroup,
            labels=MappingProxyType(labels),
            cgroups=MappingProxyType(per_controller),
        )

    def _read_controllers(self) -> list[str]:
        """The hierarchies figures are read from, by controller ("" the unified one)."""
        if self.layout is None:
            return list(_READ_CONTROLLERS)
        unified = self.layout.unified is not None
        return [c for c in _READ_CONTROLLERS if c in self.layout.v1 or (c == "" and unified)]

    def _controller_paths(
        self, states: list[RuntimeState], cgroup: str | None, pid: int | None
    ) -> tuple[str | None, dict[str, str]]:
        """The container's path in each read hierarchy where it is not `cgroup`, and `cgroup`
        itself (taken from the init's /proc/<pid>/cgroup when no state names one).

        runc's state names every hierarchy (`cgroup_paths`); crun's status and containerd's task
        directory name one path, and a container found by its cgroup name has none: for the
        hierarchies no state names, the init's /proc/<pid>/cgroup says where it is. An init in
        the container's cgroup or below it (systemd's init.scope in a container) leaves that
        hierarchy at `cgroup`.
        """
        wanted = self._read_controllers()
        paths: dict[str, str] = {}
        for state in states:
            for controller, path in state.cgroups:
                if controller in wanted:
                    paths.setdefault(controller, path)
        if pid is not None and self.proc_dir is not None and any(c not in paths for c in wanted):
            try:
                seen = cgroupfs.proc_cgroup_paths(pid, self.proc_dir)
            except OSError:
                seen = {}
            if cgroup is None:
                cgroup = canonical_cgroup((c, p) for c, p in seen.items() if c in wanted)
            inside = None if cgroup is None else cgroup.rstrip("/") + "/"
            for controller in wanted:
                at = seen.get(controller)
                if at is None or controller in paths or at == cgroup:
                    continue
                if inside is not None and at.startswith(inside):
                    continue
                paths[controller] = at
        return cgroup, {c: p for c, p in paths.items() if p != cgroup}

    def _manager(self, state: RuntimeState) -> str:
        """Which manager launched the container a state record belongs to."""
        manager = state.annotations.get("io.container.manager", "")
        if manager == "libpod":
            return "podman"
        if manager == "cri-o":
            return "cri-o"
        root = state.root
        docker = f"{self.run_dir}/docker/"
        if root.startswith(docker) or root.endswith("/moby"):
            return "docker"
        if root.startswith(f"{self.run_dir}/containerd/"):
            return "containerd"
        bundle = self._rebase(state.bundle) if state.bundle else ""
        if bundle.startswith(docker) or "/io.containerd.runtime.v2.task/moby/" in bundle:
            return "docker"
        if "/io.containerd.runtime.v2.task/" in bundle:
            return "containerd"
        if bundle.startswith(f"{self.var_lib}/containers/storage/"):
            return "podman"
        return state.source if state.source in ("runc", "crun") else "containerd"

    def _kubernetes(self, annotations: Mapping[str, str], pod_uid: str) -> dict[str, str]:
        """Pod and container names (and the image, under `_IMAGE`) from containerd-CRI or CRI-O
        annotations, unless they say they are about another pod than the cgroup's."""
        out: dict[str, str] = {}
        for uid_key, keys in (
            (
                "io.kubernetes.cri.sandbox-uid",
                (
                    (POD_NAME, "io.kubernetes.cri.sandbox-name"),
                    (NAMESPACE_NAME, "io.kubernetes.cri.sandbox-namespace"),
                    (CONTAINER_NAME, "io.kubernetes.cri.container-name"),
                    (_IMAGE, "io.kubernetes.cri.image-name"),
                ),
            ),
            (
                "io.kubernetes.pod.uid",
                (
                    (POD_NAME, "io.kubernetes.pod.name"),
                    (NAMESPACE_NAME, "io.kubernetes.pod.namespace"),
                    (CONTAINER_NAME, "io.kubernetes.container.name"),
                    (_IMAGE, "io.kubernetes.cri-o.ImageName"),
                ),
            ),
        ):
            uid = annotations.get(uid_key)
            if uid is not None and uid != pod_uid:
                continue  # names for another pod: not to be believed
            for key, annotation in keys:
                value = annotations.get(annotation)
                if value and key not in out:
                    out[key] = value
        return out

    def _cgroup_exists(self, workload: Workload) -> bool:
        """Whether the workload's cgroup exists in one of the primary hierarchies, each at the
        workload's own path there."""
        if self.layout is None:
            return True
        v1 = self.layout.v1
        dirs = [(v1[c], workload.cgroup_of(c)) for c in ("memory", "cpuacct", "cpu", "pids") if c in v1]
        if not dirs and self.layout.unified is not None:
            dirs = [(self.layout.unified, workload.cgroup_of(""))]
        return any(os.path.isdir(d if p == "/" else d + p) for d, p in dirs if p is not None)

    def close(self) -> None:
        """Drop the cgroup tree's inotify watches (watch=True); a later discover() sets them anew."""
        if self._tree is not None:
            self._tree.close()
            self._tree = None

    def lookup(self, cid: str) -> Workload | None:
        """One container by id, from the runtimes' state files (what `uniobs run`/`attach` need)."""
        return self._describe(cid, None, None)

    def discover(self, max_cgroups: int = cgroupfs.DEFAULT_MAX_CGROUPS) -> list[Workload]:
        """Every container: those the state files name (with a live cgroup or pid), then those
        recognised in the cgroup tree. One Workload per container, sorted by cgroup path."""
        self.refresh()
        found: dict[tuple[str, str, str], Workload] = {}
        for cid in sorted(self._states):
            workload = self._describe(cid, None, None)
            if workload is None:
                continue
            alive = self._cgroup_exists(workload) if workload.cgroup is not None else workload.pid is not None
            if alive:
                found.setdefault(workload.key, workload)
        unclaimed = []
        if self.layout is not None:
            if self.watch and (self._tree is None or self._tree.max_cgroups != max_cgroups):
                self.close()
                self._tree = cgroupfs.CgroupTree(self.layout, max_cgroups)
            workloads = discovery.discover_cgroups(
                self.layout, max_cgroups, identify=self.identify, tree=self._tree, plain=self._plain
            )
            self._no_container.intersection_update(self._plain)  # paths gone meanwhile
            for workload in workloads:
                if workload.kind is Kind.CONTAINER:
                    found.setdefault(workload.key, workload)
                else:
                    unclaimed.append(workload)
        self.unclaimed = unclaimed
        ids = {w.id for w in found.values()}
        for key in [k for k in self._asked if k[1] not in ids]:
            del self._asked[key]
        return sorted(found.values(), key=lambda w: (w.cgroup or "", w.id))


def discover_containers(
    layout: cgroupfs.CgroupLayout | None,
    run_dir: str = DEFAULT_RUN_DIR,
    var_lib: str = DEFAULT_VAR_LIB,
    *,
    proc_dir: str | None = DEFAULT_PROC,
    max_cgroups: int = cgroupfs.DEFAULT_MAX_CGROUPS,
    limits: Limits | None = None,
    use_sockets: bool = True,
    docker_socket: str | None = None,
    podman_socket: str | None = None,
) -> list[Workload]:
    """Every container on the host, once (see `ContainerDiscovery.discover`)."""
    return ContainerDiscovery(
        layout,
        run_dir,
        var_lib,
        proc_dir=proc_dir,
        limits=limits,
        use_sockets=use_sockets,
        docker_socket=docker_socket,
        podman_socket=podman_socket,
    ).discover(max_cgroups)


def identify(
    path: str,
    *,
    run_dir: str = DEFAULT_RUN_DIR,
    var_lib: str = DEFAULT_VAR_LIB,
    proc_dir: str | None = DEFAULT_PROC,
    limits: Limits | None = None,
    use_sockets: bool = True,
) -> Workload | None:
    """The container a cgroup path belongs to, from its name and that container's own files.

    Usable as `discovery.discover_cgroups(layout, identify=containers.identify)`. It lists no
    state directory, so a container with a cgroup path of its launcher's choosing (plain runc
    with any cgroupsPath) is only found by `ContainerDiscovery`, which also caches across calls.
    """
    return ContainerDiscovery(
        None, run_dir, var_lib, proc_dir=proc_dir, limits=limits, use_sockets=use_sockets, scan=False
    ).identify(path)


__all__ = [
    "DERIVED_KEYS",
    "CgroupMatch",
    "ContainerDiscovery",
    "Limits",
    "ManagerMeta",
    "OciConfig",
    "RuntimeState",
    "canonical_cgroup",
    "cap_labels",
    "cgroups_path_to_cgroup",
    "container_cgroup",
    "discover_containers",
    "expand_slice",
    "identify",
    "match_cgroup",
    "parse_crun_status",
    "parse_docker_config",
    "parse_docker_inspect",
    "parse_oci_config",
    "parse_podman_containers",
    "parse_runc_state",
    "relative_cgroup",
    "split_image",
]
