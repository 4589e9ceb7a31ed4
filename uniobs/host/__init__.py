"""Linux host readers and the one cgroup writer. Each reader takes its root (`/proc`,
`/sys/fs/cgroup`) as a parameter, names no metric, and translates errors once.

- `procfs`: `/proc/<pid>/...` (stat, threads, cmdline, status, smaps_rollup, fd, net/dev), the
  one place "the process is gone" and "access denied" are decided.
- `cgroupfs`: cgroup v1/v2/hybrid layout, listing and reading (pure parsers + bounded reads).
- `cgroup_place`: create/remove a cgroup for `uniobs run --cgroup`, watch it for OOM kills.
- `cgexec`: `python -m uniobs.host.cgexec`: join cgroups, then exec.

`open_files_limit()` is the one place the collector's own descriptor limit is raised.
"""

from __future__ import annotations

import resource

_raised = False


def open_files_limit() -> int:
    """The soft RLIMIT_NOFILE, raised once to the hard limit (or 2**20 when that is unlimited):
    the readers that keep descriptors between scrapes (cgroup directories, /proc files) budget
    within it. Never lowered; unchanged where raising is refused."""
    global _raised
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if not _raised and (hard == resource.RLIM_INFINITY or hard > soft):
        _raised = True
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft
