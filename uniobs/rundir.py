"""Moved to `uniobs.lifecycle.rundir` (0.2); this alias keeps the old import path for one release."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("uniobs.lifecycle.rundir")
