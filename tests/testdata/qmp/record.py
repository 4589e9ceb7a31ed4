"""Re-records the QMP transcripts in this folder from the local QEMU (run as root from the repo root).

    python3 tests/testdata/qmp/record.py

Boots examples/minikernel under `qemu-system-x86_64 -machine microvm` (TCG, and KVM when
/dev/kvm works), sends only read-only queries over a plain socket, and writes each reply exactly
as it arrived (one JSON object per file, the line's trailing CRLF removed). Events are written as
a JSON array of the event messages, in arrival order. See SOURCE.md.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
KERNEL = ROOT / "examples" / "minikernel" / "build" / "minikernel.elf"

QUERIES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("query-status", "query-status", None),
    ("query-cpus-fast", "query-cpus-fast", None),
    ("query-memory-size-summary", "query-memory-size-summary", None),
    ("query-balloon", "query-balloon", None),
    ("query-blockstats", "query-blockstats", None),
    ("query-stats-vm", "query-stats", {"target": "vm"}),
    ("query-stats-vcpu", "query-stats", {"target": "vcpu"}),
    ("query-stats-schemas", "query-stats-schemas", None),
    ("query-version", "query-version", None),
    ("query-name", "query-name", None),
    ("query-kvm", "query-kvm", None),
    ("query-uuid", "query-uuid", None),
    ("unknown-command", "query-no-such-thing", None),
]


class Raw:
    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(path)
        self.file = self.sock.makefile("rb")
        self.events: list[Any] = []

    def read(self) -> Any:
        line = self.file.readline()
        if not line:
            raise EOFError
        return json.loads(line)

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        msg: dict[str, Any] = {"execute": command, "id": "rec"}
        if arguments is not None:
            msg["arguments"] = arguments
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            reply = self.read()
            if "event" in reply:
                self.events.append(reply)
            else:
                return reply


def boot(
    tmp: str, accel: str, append: str, extra: list[str], no_reboot: bool = True
) -> tuple[subprocess.Popen[bytes], Raw]:
    sock = os.path.join(tmp, f"{accel}.sock")
    cmd = [
        "qemu-system-x86_64", "-machine", "microvm", "-accel", accel, "-smp", "2", "-m", "64",
        "-nodefaults", "-nographic", "-serial", f"file:{tmp}/{accel}.serial",
        "-qmp", f"unix:{sock},server=on,wait=off", "-kernel", str(KERNEL), "-append", append, *extra,
    ]  # fmt: skip
    if no_reboot:
        cmd.append("-no-reboot")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(500):
        if os.path.exists(sock):
            break
        time.sleep(0.01)
    raw = Raw(sock)
    write("greeting.json", raw.read())
    raw.execute("qmp_capabilities")
    return proc, raw


def write(name: str, obj: Any) -> None:
    (HERE / name).write_text(json.dumps(obj, indent=1) + "\n")
    print("wrote", name, file=sys.stderr)


def drain(raw: Raw) -> list[Any]:
    try:
        while True:
            raw.events.append(raw.read())
    except (EOFError, OSError):
        pass
    return raw.events


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        disk = os.path.join(tmp, "d0.img")
        with open(disk, "wb") as f:
            f.truncate(1 << 20)
        devices = [
            "-drive", f"file={disk},if=none,format=raw,id=d0", "-device", "virtio-blk-device,drive=d0",
            "-device", "virtio-balloon-device",
        ]  # fmt: skip
        for accel in ("tcg", "kvm"):
            for variant, extra in (("", []), ("-devices", devices)):
                proc, raw = boot(tmp, accel, "mode=hang", extra)
                time.sleep(0.5)
                for name, command, arguments in QUERIES:
                    if variant and command not in ("query-balloon", "query-blockstats"):
                        continue
                    write(f"{accel}{variant}-{name}.json", raw.execute(command, arguments))
                proc.send_signal(signal.SIGTERM)
                events = drain(raw)
                proc.wait(10)
                if not variant:
                    write(f"{accel}-events-sigterm.json", events)
        # A guest that triple-faults: with -no-reboot QEMU shuts down (SHUTDOWN guest-reset);
        # without, it resets (RESET) and the guest faults again, in a loop.
        proc, raw = boot(tmp, "tcg", "mode=ok run_ms=300", [])  # no isa-debug-exit: the exit faults
        write("tcg-events-guest-triplefault-no-reboot.json", drain(raw))
        proc.wait(10)
        proc, raw = boot(tmp, "tcg", "mode=triplefault", [], no_reboot=False)
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        write("tcg-events-guest-reset-loop.json", drain(raw)[:5])
        proc.wait(10)


if __name__ == "__main__":
    main()
