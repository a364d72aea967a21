"""Files that appear whole or not at all: write a hidden temporary beside the final path, then rename it.

A rename within one folder is atomic, so a reader (the store, MLflow, a concurrent worker) never sees
half a file, and a crash or a kill leaves only a hidden temporary that no reader picks up.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def temporary_beside(final: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A hidden path in ``final``'s folder (made if needed) for the caller to write, then rename to
    ``final``; whatever is still there on the way out is removed.

    ``suffix`` matters to writers that pick a format from the name (matplotlib, numpy).
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.parent / f".{final.stem}.{uuid.uuid4().hex}{suffix}"
    try:
        yield partial
    finally:
        partial.unlink(missing_ok=True)
