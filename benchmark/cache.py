"""Where synapsebench keeps files it can make again: generated data sets.

``$SYNAPSEBENCH_CACHE``, else ``$XDG_CACHE_HOME/synapsebench``, else ``~/.cache/synapsebench``. Everything
in it is named by what made it and is safe to delete.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "SYNAPSEBENCH_CACHE"


def cache_dir() -> Path:
    """The cache folder (not created here)."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "synapsebench"
