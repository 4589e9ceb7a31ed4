"""Moved to `uniobs.host.cgexec` (0.2); `python -m uniobs.cgexec` and the old import path keep working for
one release."""

import importlib
import sys

if __name__ == "__main__":
    from uniobs.host.cgexec import main

    main(sys.argv[1:])
else:
    sys.modules[__name__] = importlib.import_module("uniobs.host.cgexec")
