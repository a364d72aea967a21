"""Where a result came from: package and torch versions, git commit, device and host."""

from __future__ import annotations

import platform
import subprocess
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


@lru_cache(maxsize=1)
def package_version() -> str:
    try:
        return version("synapsebench")
    except PackageNotFoundError:
        return "0+unknown"


@lru_cache(maxsize=1)
def git_commit() -> tuple[str, bool]:
    """(commit, dirty) of the source tree, or ("", False) outside a git checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=PACKAGE_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "benchmark"],
            cwd=PACKAGE_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "", False
    return commit, bool(status.strip())


def code_version() -> str:
    """``<package version>+g<commit>[.dirty]``: recorded beside each run, never hashed into its id."""
    commit, dirty = git_commit()
    if not commit:
        return package_version()
    return f"{package_version()}+g{commit[:12]}{'.dirty' if dirty else ''}"


def device_name(device: torch.device) -> str:
    import torch  # here, not at the top: reading `benchmark.__version__` must not load torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _cpu_model()


@lru_cache(maxsize=1)
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def pick_device() -> torch.device:
    """CUDA when present, the CPU otherwise."""
    import torch

    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
