"""Re-records the /proc trees in this folder from real processes on this host (see each SOURCE).

    .venv/bin/python tests/testdata/proc/record.py

- `threaded_comm/`: a Python child that renamed itself `a) b (c` (a comm with spaces and both
  parentheses, through /proc/self/comm), started two threads, touched 8 MiB and blocks: nothing
  in it moves while it is copied.
- `zombie/`: a child that has exited and that its parent has not reaped (state Z).

Copied per process: `stat`, `statm`, `status`, `cmdline`, `comm`, `smaps_rollup` (where it can be read),
`task/<tid>/stat` for every thread, and `fd/` as one empty file per descriptor (only the names
are read). `proc/stat` (for `btime`) is the host's. `psutil.json` is what psutil said about the
live process right after the copy, and `ps.txt` what procps' `ps` said: the tests compare
uniobs' readers with both. The process's `stat` is read again after psutil and `ps`, and the
recording is refused if it changed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent

THREADED = """
import sys, threading
with open("/proc/self/comm", "w") as f:
    f.write("a) b (c")
block = bytearray(8 << 20)
block[::4096] = b"x" * len(block[::4096])
stop = threading.Event()
for _ in range(2):
    threading.Thread(target=stop.wait, daemon=True).start()
print("ready", flush=True)
stop.wait()
"""

PS_FIELDS = "pid,ppid,stat,nlwp,rss,vsz,min_flt,maj_flt,cputimes,comm"


def copy_process(pid: int, dest: Path) -> None:
    src = Path(f"/proc/{pid}")
    out = dest / "proc" / str(pid)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name in ("stat", "statm", "status", "cmdline", "comm", "smaps_rollup"):
        try:
            (out / name).write_bytes((src / name).read_bytes())
        except OSError as exc:  # a zombie's smaps_rollup: ESRCH
            print(f"{pid}/{name}: not recorded ({exc.strerror})")
    for tid in sorted(os.listdir(src / "task"), key=int):
        (out / "task" / tid).mkdir(parents=True)
        (out / "task" / tid / "stat").write_bytes((src / "task" / tid / "stat").read_bytes())
    (out / "fd").mkdir()
    for fd in os.listdir(src / "fd"):
        (out / "fd" / fd).touch()
    if not any((out / "fd").iterdir()):
        (out / "fd" / ".keep").touch()  # git keeps no empty folder; only numbered entries count
    (dest / "proc" / "stat").write_bytes(Path("/proc/stat").read_bytes())


def psutil_view(pid: int) -> dict[str, Any]:
    p = psutil.Process(pid)

    def attempt(read: Any) -> Any:
        try:
            return read()
        except psutil.Error as exc:  # a zombie refuses some
            return type(exc).__name__

    return {
        "psutil": psutil.__version__,
        "name": attempt(p.name),
        "status": attempt(p.status),
        "ppid": attempt(p.ppid),
        "create_time": attempt(p.create_time),
        "num_threads": attempt(p.num_threads),
        "threads": attempt(lambda: sorted(t.id for t in p.threads())),
        "cpu_times": attempt(lambda: {"user": p.cpu_times().user, "system": p.cpu_times().system}),
        "memory_info": attempt(lambda: {"rss": p.memory_info().rss, "vms": p.memory_info().vms}),
        "memory_full_info": attempt(lambda: {k: getattr(p.memory_full_info(), k) for k in ("pss", "uss", "swap")}),
        "num_ctx_switches": attempt(lambda: list(p.num_ctx_switches())),
        "num_fds": attempt(p.num_fds),
        "cmdline": attempt(p.cmdline),
    }


def record(pid: int, dest: Path) -> None:
    before = Path(f"/proc/{pid}/stat").read_bytes()
    copy_process(pid, dest)
    view = psutil_view(pid)
    ps = subprocess.run(["ps", "-o", PS_FIELDS, "-p", str(pid)], capture_output=True, text=True, check=True).stdout
    if Path(f"/proc/{pid}/stat").read_bytes() != before:
        sys.exit(f"pid {pid} moved while it was recorded: run again")
    (dest / "psutil.json").write_text(json.dumps(view, indent=2) + "\n")
    (dest / "ps.txt").write_text(f"$ ps -o {PS_FIELDS} -p {pid}\n{ps}")
    (dest / "pid").write_text(f"{pid}\n")
    print(f"{dest.name}: pid {pid}")


def main() -> None:
    for old in HERE.glob("*/proc"):
        shutil.rmtree(old)
    child = subprocess.Popen([sys.executable, "-c", THREADED], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        time.sleep(0.2)
        record(child.pid, HERE / "threaded_comm")
    finally:
        child.kill()
        child.wait()

    pid = os.fork()
    if pid == 0:
        os._exit(3)
    while psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        time.sleep(0.01)
    try:
        record(pid, HERE / "zombie")
    finally:
        os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
