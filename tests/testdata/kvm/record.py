"""Re-records the KVM debugfs tree in this folder from a real VM on this host (root; see SOURCE.md).

    python3 tests/testdata/kvm/record.py

Boots examples/minikernel under `qemu-system-x86_64 -accel kvm -smp 2`, mounts debugfs in a
private mount namespace (`unshare -m`; the host's mounts are not touched) and copies
`/sys/kernel/debug/kvm/<pid>-<fd>/` (every file is one integer and a newline, as the kernel's
debugfs prints it). Under kernel lockdown only the read-only (0444, "instant") stat files can be
read; the others fail with EPERM. Their values are filled from QMP `query-stats`, read right
after, which reads the same counters through KVM's binary stats interface: a VM-directory file is
the VM stat, or the sum of that vCPU stat over the vCPUs, as the kernel computes it.
`modes.json` keeps each file's mode (git keeps only the executable bit) and whether the value
was read from debugfs or filled from QMP.
"""

from __future__ import annotations

import json
import os
import shutil
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
SCENARIO = HERE / "pvm-qemu-2vcpu"

# x86's mmu_rmaps_stat is a table, not a stat (kvm_mmu_rmaps_stat_show in arch/x86/kvm/debugfs.c).
# Lockdown denies it and QMP has no equivalent, so this is its layout with zero counts: a reader
# must skip it like any file that is not one integer.
_BUCKETS = ["0", "1"] + [f"{1 << (i - 1)}-{(1 << i) - 1}" for i in range(2, 11)]
RMAPS_TABLE = (
    "Rmap_Count:\t"
    + "\t".join(_BUCKETS)
    + "\t\n"
    + "".join(f"Level={level}:\t" + "0\t" * len(_BUCKETS) + "\n" for level in ("4K", "2M", "1G"))
)


def dump(debugfs: str, pid: int, out: str) -> None:
    """Runs inside the private mount namespace: copy the VM's directory, value by value."""
    kvm = Path(debugfs)
    (vmdir,) = [p for p in kvm.iterdir() if p.name.startswith(f"{pid}-")]
    result: dict[str, Any] = {"dir": vmdir.name, "files": {}}
    for path in sorted(vmdir.rglob("*")):
        if path.is_dir():
            continue
        rel = str(path.relative_to(vmdir))
        mode = path.stat().st_mode & 0o777
        try:
            value: str | None = path.read_text()
        except PermissionError:
            value = None
        result["files"][rel] = {"mode": oct(mode), "value": value}
    Path(out).write_text(json.dumps(result))


def qmp(sock: str, *commands: tuple[str, dict[str, Any] | None]) -> list[Any]:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(sock)
    f = s.makefile("rb")
    f.readline()
    out = []
    for command, args in (("qmp_capabilities", None), *commands):
        msg: dict[str, Any] = {"execute": command, **({"arguments": args} if args else {})}
        s.sendall(json.dumps(msg).encode() + b"\n")
        while "event" in (reply := json.loads(f.readline())):
            pass
        out.append(reply["return"])
    s.close()
    return out[1:]


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--dump":
        subprocess.run(["mount", "-t", "debugfs", "none", "/sys/kernel/debug"], check=True)
        dump("/sys/kernel/debug/kvm", int(sys.argv[2]), sys.argv[3])
        return
    with tempfile.TemporaryDirectory() as tmp:
        sock = os.path.join(tmp, "qmp.sock")
        proc = subprocess.Popen(
            ["qemu-system-x86_64", "-machine", "microvm", "-accel", "kvm", "-smp", "2", "-m", "64", "-nodefaults",
             "-nographic", "-no-reboot", "-serial", "null", "-qmp", f"unix:{sock},server=on,wait=off",
             "-kernel", str(KERNEL), "-append", "mode=hang"],
            stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            time.sleep(1.0)
            raw = os.path.join(tmp, "dump.json")
            subprocess.run(["unshare", "-m", sys.executable, __file__, "--dump", str(proc.pid), raw], check=True)
            vm_stats, vcpu_stats = qmp(sock, ("query-stats", {"target": "vm"}), ("query-stats", {"target": "vcpu"}))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
        dumped = json.loads(Path(raw).read_text())
    values: dict[str, int] = {}
    for result in vm_stats:
        for stat in result["stats"]:
            values[stat["name"]] = int(stat["value"]) if not isinstance(stat["value"], list) else stat["value"][0]
    for result in vcpu_stats:
        for stat in result["stats"]:
            v = stat["value"]
            values[stat["name"]] = values.get(stat["name"], 0) + (v[0] if isinstance(v, list) else int(v))
    shutil.rmtree(SCENARIO, ignore_errors=True)
    vmdir = SCENARIO / "sys" / "kernel" / "debug" / "kvm" / dumped["dir"]
    modes: dict[str, Any] = {"pid": proc.pid, "dir": dumped["dir"], "files": {}}
    for rel, info in dumped["files"].items():
        path = vmdir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if info["value"] is not None:
            text, source = info["value"], "debugfs"
        elif rel == "mmu_rmaps_stat":
            text, source = RMAPS_TABLE, "synthesised (format of arch/x86/kvm/debugfs.c)"
        else:
            text, source = f"{values[rel]}\n", "query-stats"
        path.write_text(text)
        modes["files"][rel] = {"mode": info["mode"], "source": source}
    (SCENARIO / "modes.json").write_text(json.dumps(modes, indent=1, sort_keys=True) + "\n")
    print("recorded", vmdir, file=sys.stderr)


if __name__ == "__main__":
    main()
