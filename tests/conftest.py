"""Shared fixtures: one real local Ray per test session, a real MLflow SQLite store per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ.pop("RAY_ADDRESS", None)
os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

RAY_TEMP_DIR = "/tmp/ray_sbt"  # short: AF_UNIX socket paths cap at 107 bytes


@pytest.fixture(scope="session", autouse=True)
def _data_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Generated data sets go to a session folder, not the user's cache (set before Ray starts)."""
    os.environ["SYNAPSEBENCH_CACHE"] = str(tmp_path_factory.mktemp("data_cache"))


@pytest.fixture(scope="session")
def ray_session() -> Iterator[Any]:
    """A real local Ray instance shared by every test that asks for it."""
    import ray

    ctx = ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=256 * 1024**2,
        _temp_dir=RAY_TEMP_DIR,
        configure_logging=False,
    )
    yield ctx
    ray.shutdown()


@pytest.fixture(autouse=True)
def _mlflow_isolation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)


def write_suite(path: Path, **fields: Any) -> Path:
    """Write a suite file; tests build their grids with it."""
    path.write_text(yaml.safe_dump(fields, sort_keys=False))
    return path


def tiny_suite(
    name: str = "tiny",
    tasks: tuple[str, ...] = ("digits_mlp", "mnist1d_mlp"),
    rules: tuple[dict[str, Any], ...] = ({"name": "sgd", "hparams": {"lr": 0.05}}, {"name": "adamw"}),
    seeds: tuple[int, ...] = (0, 1),
    steps: int = 30,
) -> dict[str, Any]:
    """A suite dict on the tasks' tiny test options."""
    from benchmark.tasks import TASKS

    return {
        "name": name,
        "tasks": [{"name": t, "options": dict(TASKS.get(t).test_options)} for t in tasks],
        "rules": [dict(r) for r in rules],
        "seeds": list(seeds),
        "budget": {"steps": steps, "eval_every": 10},
    }


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for the test: tiny models and small LAPACK calls run fastest on one, and two
    threads on a busy 2-core machine stall on each other. Use with ``pytest.mark.usefixtures``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
