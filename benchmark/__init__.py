"""synapsebench: a distributed benchmark suite for learning rules (import package ``benchmark``)."""

__all__ = ["__version__"]


def __getattr__(name: str) -> str:
    # ``__version__`` is read on first use, so ``import benchmark`` (and ``synapsebench --help``)
    # loads nothing but this file: not importlib.metadata, not git, not torch.
    if name == "__version__":
        from benchmark.provenance import package_version

        return package_version()
    raise AttributeError(f"module 'benchmark' has no attribute {name!r}")
