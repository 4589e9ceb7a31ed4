"""Moved to `uniobs.guest.lineproto` (0.2); this alias keeps the old import path for one release."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("uniobs.guest.lineproto")
