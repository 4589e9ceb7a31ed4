"""Moved to `uniobs.runtimes.launch` (0.2); this alias keeps the old import path for one release."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("uniobs.runtimes.launch")
