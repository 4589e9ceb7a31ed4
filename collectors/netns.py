"""Network I/O of a container, per interface, from inside its network namespace.

Reads `/proc/<pid>/net/dev` of one member process: the workload's pid, else the first pid of
its cgroup (`cgroup.procs`). That file describes the network namespace of the process that is
read, so one read gives every interface of the container; no `setns`, no netlink, no daemon.
Available on every Linux with procfs; the namespace comparison needs `/proc/<pid>/ns/net`
(Linux 3.0+).

Choices worth knowing:
- A container in the host's network namespace (`--network host`) is skipped: its figures would
  be the host's. The host's namespace is that of `/proc/1/ns/net` (where that cannot be read,
  as in a container without CAP_SYS_PTRACE over pid 1, uniobs' own `/proc/self/ns/net`), compared
  by inode and device. The skip is said once per container (SourceUnavailable).
- Containers sharing one namespace (the containers of a Kubernetes pod, `--network
  container:X`) would all report the same counters and double-count in any sum: the first
  container seen in a namespace reports it and the others are skipped, said once each, until
  that container is forgotten or has not been scraped for three intervals.
- `lo` is excluded (traffic a container sends to itself). Interface names are the container's
  choice, so at most `max_interfaces` keep their own series, admitted busiest first and kept
  for the container's life; the rest add up into `network.interface.name=":other"` (a colon
  cannot appear in a Linux interface name, so no real interface collides with it).
- Applies to `Kind.CONTAINER` only: a VMM runs in the host's namespace unless placed elsewhere,
  and a guest's traffic is measured on its tap device by the VMM collectors.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass

from uniobs.host import cgroupfs
from uniobs.host.procfs import InterfaceStats, ProcessGone, ProcFS, parse_net_dev
from uniobs.model import Instrument, Kind, MetricSpec, Sample, Workload
from uniobs.plugin import Collector, CollectorConfig, SourceUnavailable, WorkloadGone

DIRECTION = "network.io.direction"
INTERFACE = "network.interface.name"
OTHER_INTERFACE = ":other"

__all__ = ["InterfaceStats", "NetnsCollector", "NetnsConfig", "parse_net_dev"]  # the parser lives in procfs


@dataclass(frozen=True)
class NetnsConfig(CollectorConfig):
    proc: str = "/proc"  # procfs mount
    root: str = cgroupfs.DEFAULT_ROOT  # cgroup hierarchies, to find a member process
    host_netns: str = "/proc/1/ns/net"  # the host's network namespace, compared by inode
    max_interfaces: int = 16  # interfaces with their own series, per container
    exclude: tuple[str, ...] = ("lo",)  # interfaces never reported

    def validate(self) -> None:
        super().validate()
        for key in ("proc", "root", "host_netns"):
            if not getattr(self, key).startswith("/"):
                raise ValueError(f"{key}: must be an absolute path (got {getattr(self, key)!r})")
        if self.max_interfaces < 1:
            raise ValueError("max_interfaces: must be >= 1")


class NetnsCollector(Collector):
    name = "netns"
    config_class = NetnsConfig
    config: NetnsConfig
    metrics = (
        MetricSpec(
            "container.network.io",
            Instrument.COUNTER,
            "By",
            "Bytes received and transmitted by the container, per interface of its network namespace "
            "(/proc/<pid>/net/dev); lo excluded, interfaces past max_interfaces add up into :other.",
            (DIRECTION, INTERFACE),
        ),
        MetricSpec(
            "uniobs.container.network.packets",
            Instrument.COUNTER,
            "{packet}",
            "Packets received and transmitted by the container, per interface (/proc/<pid>/net/dev).",
            (DIRECTION, INTERFACE),
        ),
        MetricSpec(
            "uniobs.container.network.errors",
            Instrument.COUNTER,
            "{error}",
            "Receive and transmit errors, per interface (/proc/<pid>/net/dev errs).",
            (DIRECTION, INTERFACE),
        ),
        MetricSpec(
            "uniobs.container.network.dropped",
            Instrument.COUNTER,
            "{packet}",
            "Packets dropped on receive and transmit, per interface (/proc/<pid>/net/dev drop).",
            (DIRECTION, INTERFACE),
        ),
    )

    def __init__(self, config: CollectorConfig | None = None) -> None:
        super().__init__(config)
        self._layout: cgroupfs.CgroupLayout | None = None
        self._host: tuple[int, int] | None = None
        # per workload: interfaces with their own series, in admission order
        self._interfaces: dict[tuple[str, str, str], list[str]] = {}
        # network namespace (dev, ino) -> the workload that reports it, and when it last did
        self._owners: dict[tuple[int, int], tuple[tuple[str, str, str], float]] = {}
        self._netns_of: dict[tuple[str, str, str], tuple[int, int]] = {}
        self._exclude = frozenset(self.config.exclude)
        self._proc = ProcFS(self.config.proc)

    def applies_to(self, workload: Workload) -> bool:
        return workload.kind is Kind.CONTAINER and (workload.pid is not None or workload.cgroup is not None)

    def _host_netns(self) -> tuple[int, int]:
        if self._host is None:
            try:
                st = os.stat(self.config.host_netns)
            except PermissionError:  # no ptrace access to pid 1: our own namespace is the host's
                st = os.stat(f"{self.config.proc}/self/ns/net")
            self._host = (st.st_dev, st.st_ino)
        return self._host

    def _cgroup_pids(self, workload: Workload) -> list[int]:
        """A few processes of the workload's cgroup (WorkloadGone if the cgroup is)."""
        if workload.cgroup is None:
            return []
        if self._layout is None:
            try:
                self._layout = cgroupfs.detect_layout(self.config.root)
            except OSError as exc:
                raise SourceUnavailable(f"no cgroup hierarchy under {self.config.root}: {exc}") from None
        return cgroupfs.cgroup_pids(self._layout, workload.cgroup, workload.cgroups)[:4]

    def _read(self, pid: int) -> tuple[tuple[int, int], list[InterfaceStats]] | None:
        """(namespace, interfaces) of one process, None if it is gone."""
        try:
            return self._proc.netns(pid), self._proc.net_dev(pid)
        except (ProcessGone, FileNotFoundError, ProcessLookupError):  # exited, or exiting (no namespace left)
            return None

    def _member(self, workload: Workload) -> tuple[tuple[int, int], list[InterfaceStats]]:
        """Read through the workload's pid, else through a process of its cgroup."""
        if workload.pid is not None:
            read = self._read(workload.pid)
            if read is not None:
                return read
            if workload.cgroup is None:
                raise WorkloadGone(f"pid {workload.pid} exited")
        for pid in self._cgroup_pids(workload):
            read = self._read(pid)
            if read is not None:
                return read
        raise SourceUnavailable("no process in the container to read its network namespace through")

    def collect(self, workload: Workload) -> Iterable[Sample]:
        host = self._host_netns()
        netns, interfaces = self._member(workload)
        if netns == host:
            raise SourceUnavailable("shares the host's network namespace: its figures would be the host's")
        now = time.monotonic()
        owner = self._owners.get(netns)
        # A reporter that stopped being scraped without being forgotten loses the namespace.
        stale_after = 3 * (self.config.interval or 10.0)  # the scheduler fills in an interval left unset
        if owner is None or owner[0] == workload.key or now - owner[1] > stale_after:
            self._owners[netns] = (workload.key, now)
        else:
            raise SourceUnavailable(f"shares the network namespace of {owner[0][1]} {owner[0][2]}, which reports it")
        self._netns_of[workload.key] = netns
        return self.samples(workload.key, interfaces)

    def samples(self, key: tuple[str, str, str], interfaces: list[InterfaceStats]) -> list[Sample]:
        interfaces = [i for i in interfaces if i.name not in self._exclude]
        admitted = self._interfaces.setdefault(key, [])
        if len(admitted) < self.config.max_interfaces:
            new = [i for i in interfaces if i.name not in admitted]
            new.sort(key=lambda i: i.rx_bytes + i.tx_bytes, reverse=True)  # stable: ties keep file order
            admitted.extend(i.name for i in new[: self.config.max_interfaces - len(admitted)])
        rows: dict[str, list[int]] = {}
        for i in interfaces:
            name = i.name if i.name in admitted else OTHER_INTERFACE
            row = rows.setdefault(name, [0] * 8)
            for n, value in enumerate(
                (
                    i.rx_bytes,
                    i.tx_bytes,
                    i.rx_packets,
                    i.tx_packets,
                    i.rx_errors,
                    i.tx_errors,
                    i.rx_dropped,
                    i.tx_dropped,
                )
            ):
                row[n] += value
        out: list[Sample] = []
        for name, row in rows.items():
            rx = ((DIRECTION, "receive"), (INTERFACE, name))
            tx = ((DIRECTION, "transmit"), (INTERFACE, name))
            out += [
                Sample("container.network.io", row[0], rx),
                Sample("container.network.io", row[1], tx),
                Sample("uniobs.container.network.packets", row[2], rx),
                Sample("uniobs.container.network.packets", row[3], tx),
                Sample("uniobs.container.network.errors", row[4], rx),
                Sample("uniobs.container.network.errors", row[5], tx),
                Sample("uniobs.container.network.dropped", row[6], rx),
                Sample("uniobs.container.network.dropped", row[7], tx),
            ]
        return out

    def forget(self, workload: Workload) -> None:
        self._interfaces.pop(workload.key, None)
        netns = self._netns_of.pop(workload.key, None)
        owner = self._owners.get(netns) if netns is not None else None
        if netns is not None and owner is not None and owner[0] == workload.key:
            del self._owners[netns]
