"""uniobs: host-side observability for serverless functions shrink-wrapped as unikernels or containers.

The plugins live in the checkout's top-level `collectors/` and `exporters/` folders and import as
`uniobs.collectors.*` / `uniobs.exporters.*`: an install maps them (pyproject `package-dir`); in a
checkout without an install, the finder below does the same, so `python -c "import
uniobs.collectors.process"` works from the source tree too.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path

__version__ = "0.1.0"

_PLUGIN_DIRS = {"uniobs.collectors": "collectors", "uniobs.exporters": "exporters"}


class _CheckoutPlugins(importlib.abc.MetaPathFinder):
    """Finds uniobs.collectors / uniobs.exporters in the checkout beside this package (last resort)."""

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        folder = _PLUGIN_DIRS.get(fullname)
        if folder is None:
            return None
        where = Path(__file__).resolve().parent.parent / folder
        if not (where / "__init__.py").is_file():
            return None
        return importlib.util.spec_from_file_location(
            fullname, where / "__init__.py", submodule_search_locations=[str(where)]
        )


if not any(isinstance(f, _CheckoutPlugins) for f in sys.meta_path):
    sys.meta_path.append(_CheckoutPlugins())  # after the installed finders: an install wins
