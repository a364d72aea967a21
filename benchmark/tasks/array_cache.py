"""A disk cache for generated data sets, so each worker process does not make them again.

Generating MNIST-1D takes seconds and loading scikit-learn's digits imports scikit-learn (about as
long); a grid pays that once per worker process and task. Arrays are kept as ``.npz`` files in the
cache folder (:mod:`benchmark.cache`), named by what made them: the generator's arguments and version.
A file is written under a temporary name and renamed into place, so concurrent workers and kills never
leave a half-written file that reads as data; a file that cannot be read is made again. A cache that
cannot be written only costs the time.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from collections.abc import Callable, Mapping

import numpy as np

from benchmark.atomic import temporary_beside
from benchmark.cache import cache_dir


def cached_arrays(
    name: str, key: Mapping[str, object], make: Callable[[], tuple[np.ndarray, ...]]
) -> tuple[np.ndarray, ...]:
    """The arrays ``make()`` returns for ``key``: read from the cache, else made and stored."""
    digest = hashlib.sha256(json.dumps(dict(key), sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / f"{name}-{digest}.npz"
    try:
        with np.load(path, allow_pickle=False) as stored:
            return tuple(stored[f"arr_{i}"] for i in range(len(stored.files)))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        pass  # absent or unreadable: make it again
    arrays = make()
    try:
        with temporary_beside(path, ".npz") as partial:
            np.savez(partial, *arrays)
            os.replace(partial, path)
    except OSError as exc:
        warnings.warn(
            f"data cache {path.parent} is not writable ({exc}); data is made again by every process",
            stacklevel=2,
        )
    return arrays
