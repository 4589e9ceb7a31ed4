"""Who is reporting: the host's identity (shared by every resource) and uniobs' own workload."""

from __future__ import annotations

import logging
import os
import socket

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
