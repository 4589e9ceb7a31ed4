"""Linux host readers and the one cgroup writer. Each reader takes its root (`/proc`,
`/sys/fs/cgroup`) as a parameter, names no metric, and translates errors once.

- `procfs`: `/proc/<pid>/...` (stat, threads, cmdline, status, smaps_rollup, fd, net/dev), the
  one place "the process is gone" and "access denied" are decided.
- `cgroupfs`: cgroup v1/v2/hybrid layout, listing and reading (pure parsers + bounded reads).
- `cgroup_place`: create/remove a cgroup for `uniobs run --cgroup`, watch it for OOM kills.
- `cgexec`: `python -m uniobs.host.cgexec`: join cgroups, then exec.
"""
