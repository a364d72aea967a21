"""synapsebench: a distributed benchmark suite for learning rules (import package ``benchmark``).

A plugin declares its rules and tasks with ``benchmark.register_rule(RuleInfo(...))`` and
``benchmark.register_task(TaskInfo(...))`` (docs/plugins.md).
"""

from __future__ import annotations

from typing import Any

__all__ = ["__version__", "register_rule", "register_task"]


def __getattr__(name: str) -> Any:
    # Everything here is read on first use, so ``import benchmark`` (and ``synapsebench --help``)
    # loads nothing but this file: not importlib.metadata, not git, not torch.
    if name == "__version__":
        from benchmark.provenance import package_version

        return package_version()
    if name in ("register_rule", "register_task"):
        from benchmark import plugins

        return getattr(plugins, name)
    raise AttributeError(f"module 'benchmark' has no attribute {name!r}")
