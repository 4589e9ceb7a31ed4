"""Finding workloads on the host.

So far: every cgroup, as a `Kind.CGROUP` workload (`discover_cgroups`). Telling which of them
are containers, and of which runtime, is the job of runtime-specific identifiers (runc/crun
state directories, Podman/Docker/containerd metadata) still to be written: they plug in
through the `identify` parameter, which may claim a cgroup path as a richer Workload (a
`Kind.CONTAINER` with its id, name and labels). Anything unclaimed stays a plain cgroup.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from uniobs.host import cgroupfs
from uniobs.model import Kind, Workload
from uniobs.plugin import WorkloadGone

log = logging.getLogger("uniobs.discovery")

# Given a cgroup path, the Workload a runtime claims it for, or None.
Identify = Callable[[str], Workload | None]


def discover_cgroups(
    layout: cgroupfs.CgroupLayout,
    max_cgroups: int = cgroupfs.DEFAULT_MAX_CGROUPS,
    identify: Identify | None = None,
    tree: cgroupfs.CgroupTree | None = None,
    plain: dict[str, Workload] | None = None,
) -> list[Workload]:
    """Every cgroup worth its own resource, as a workload.

    Skipped:
    - the root cgroup: it is the host, not a workload, and its figures are the host's;
    - intermediate cgroups with no process of their own (`system.slice`, `user.slice`,
      `docker`, `kubepods`...): their figures only add up their children's, so they would
      double-count in any sum over workloads and multiply series for nothing. An
      intermediate cgroup that does hold processes (v1 allows it) is kept.
    Leaves are kept even when empty: a container that is created but not started, or
    stopped but not removed, is still a workload, and a leaf costs one read per scrape.

    `identify` (see the module docstring) runs first for each kept path. `tree` (kept across
    calls, for `layout`) lists the paths from what changed since the last call instead of walking
    every hierarchy (see `cgroupfs.CgroupTree`); its own `max_cgroups` applies then. `plain`
    (kept across calls) holds the plain cgroups' Workloads, made once per path: updated here to
    the paths of this call.
    """
    paths = tree.list() if tree is not None else cgroupfs.list_cgroups(layout, max_cgroups=max_cgroups)
    parents = {p.rsplit("/", 1)[0] or "/" for p in paths}  # the paths that have children
    workloads: list[Workload] = []
    made: dict[str, Workload] = {}
    for path in paths:
        if path == "/":
            continue
        if path in parents:
            try:
                if not cgroupfs.cgroup_pids(layout, path):
                    continue
            except WorkloadGone:
                continue
        claimed = identify(path) if identify is not None else None
        if claimed is not None:
            workloads.append(claimed)
            continue
        workload = plain.get(path) if plain is not None else None
        if workload is None:
            workload = Workload(kind=Kind.CGROUP, runtime="cgroup", id=path, name=path.rsplit("/", 1)[-1], cgroup=path)
        made[path] = workload
        workloads.append(workload)
    if plain is not None:
        plain.clear()
        plain.update(made)
    log.debug("discovered %d cgroups of %d under %s", len(workloads), len(paths), layout.root)
    return workloads
