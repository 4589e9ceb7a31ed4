"""Moved to `uniobs.runtimes.accel` (0.2); `python -m uniobs.accel` and the old import path keep working for
one release."""

import importlib
import sys

if __name__ == "__main__":
    from uniobs.runtimes.accel import main

    main()
else:
    sys.modules[__name__] = importlib.import_module("uniobs.runtimes.accel")
