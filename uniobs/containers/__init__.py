"""Which container owns a cgroup, from the runtimes' own state files, without a daemon.

`discovery` holds the state-file parsers, the bounded reads and the discovery itself.
"""

from uniobs.containers.discovery import *  # noqa: F403 (the package's face is the module's __all__)
from uniobs.containers.discovery import __all__ as __all__
