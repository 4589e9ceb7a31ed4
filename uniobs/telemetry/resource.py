"""Who is reporting: the host's identity (shared by every resource) and uniobs' own workload."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from typing import Any

from uniobs.model import Kind, Workload

log = logging.getLogger("uniobs.telemetry")


# --- host identity and resources ------------------------------------------------------------


def host_attributes() -> dict[str, str]:
    """host.name and host.id (the machine-id, as the semantic conventions say for Linux)."""
    attrs = {"host.name": socket.gethostname(), "host.arch": os.uname().machine, "os.type": "linux"}
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            with open(path, encoding="ascii") as f:
                machine_id = f.read().strip()
        except OSError:
            continue
        if machine_id:
            attrs["host.id"] = machine_id
            break
    return attrs


SELF = Workload(kind=Kind.PROCESS, runtime="uniobs", id="uniobs", name="uniobs", pid=os.getpid())


def instance_id(workload: Workload, attributes: Mapping[str, Any]) -> str:
    """The workload's `service.instance.id`: unique among the resources of one service.name, as
    the semantic conventions require, and what Prometheus' `instance` label is made of.

    A function instance (unikernel, container), a plain cgroup and a process are told apart by their
    `Workload.id` (the faas.instance / container.id, the cgroup path, `<executable>-<pid>`), which is
    unique per kind and runtime and never shared across them. uniobs itself keeps a
    `service.instance.id` given in `attributes` (OTEL_RESOURCE_ATTRIBUTES), else is
    `<host.name>:<pid>`: two uniobs processes on one host (an agent and a `uniobs run`) stay apart.
    """
    if workload.key == SELF.key:
        given = attributes.get("service.instance.id")
        return str(given) if given else f"{attributes.get('host.name') or socket.gethostname()}:{workload.pid}"
    return workload.id
