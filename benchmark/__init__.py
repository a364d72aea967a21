"""synapsebench: a distributed benchmark suite for learning rules (import package ``benchmark``)."""

from benchmark.provenance import package_version

__version__ = package_version()

__all__ = ["__version__"]
