"""Start-up: ``import benchmark`` and ``synapsebench --help`` load none of the heavy libraries.

A user who types ``synapsebench tune --help`` should not wait for torch, Ray or MLflow to import.
Each check runs in a fresh interpreter, since this test session has imported them already.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "ray", "mlflow", "optuna", "scipy", "pandas", "pyarrow", "matplotlib")
SUBCOMMANDS = ("run", "tune", "list", "leaderboard", "show")


def _loaded_after(code: str) -> list[str]:
    """The heavy top-level modules in ``sys.modules`` after ``code`` ran in a new interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    loaded: list[str] = json.loads(out.splitlines()[-1])
    return loaded


def test_import_benchmark_loads_no_heavy_library() -> None:
    assert _loaded_after("import benchmark; assert benchmark.__version__") == []


@pytest.mark.parametrize("argv", [[], *([name] for name in SUBCOMMANDS)], ids=lambda a: " ".join(a) or "top")
def test_help_loads_no_heavy_library(argv: list[str]) -> None:
    code = (
        "import contextlib, io\n"
        "from benchmark.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        f"    main({[*argv, '--help']!r})"
    )
    assert _loaded_after(code) == []


def test_python_m_benchmark_prints_help_and_exits_0() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmark", "show", "--help"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0
    assert done.stdout.startswith("usage: synapsebench show")
