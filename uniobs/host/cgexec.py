"""`python -m uniobs.host.cgexec PROCS_FILE... -- COMMAND...`: join cgroups, then exec COMMAND.

Used by `uniobs run --cgroup` so the VMM is in its cgroup from its first instruction (moving it
after the spawn would miss its start-up). No shell is involved.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> None:
    if "--" not in argv:
        sys.exit("usage: python -m uniobs.host.cgexec PROCS_FILE... -- COMMAND...")
    split = argv.index("--")
    procs, command = argv[:split], argv[split + 1 :]
    for path in procs:
        with open(path, "w") as f:
            f.write("0")  # "0" moves the writing process itself
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
