"""The libraries a dynamically linked binary needs, as `ldd` lists them: shared by the three
image builders (nanos/, unikernel/, container/ build.py), which each pack them into their image."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def shared_libraries(binary: Path) -> list[tuple[str, Path]]:
    """(path inside the image, host file) for every library ldd lists, and the dynamic loader."""
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    libs: list[tuple[str, Path]] = []
    for line in out.splitlines():
        line = line.strip()
        if "=>" in line:  # libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)
            path = line.split("=>", 1)[1].strip().split(" ", 1)[0]
            if not path.startswith("/"):
                raise SystemExit(f"build.py: ldd could not resolve: {line}")
        elif line.startswith("/"):  # /lib64/ld-linux-x86-64.so.2 (0x...)
            path = line.split(" ", 1)[0]
        else:  # linux-vdso.so.1: provided by the kernel (Nanos provides one too)
            continue
        # The path the binary asks for (PT_INTERP names the loader), the bytes from wherever the
        # symlinks end (Debian 12 has a merged /usr: /lib -> usr/lib on the host).
        libs.append((path, Path(os.path.realpath(path))))
    return libs
