"""Small builders shared by tests: planned RunSpecs on the tasks' tiny test options."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmark import store
from benchmark.rules import RULES
from benchmark.spec import Budget, RunSpec
from benchmark.tasks import TASKS


def task_options(task: str, **overrides: Any) -> dict[str, Any]:
    info = TASKS.get(task)
    return info.options.model_validate({**info.test_options, **overrides}).model_dump(mode="json")


def make_spec(
    task: str = "digits_mlp",
    rule: str = "sgd",
    seed: int = 0,
    steps: int = 20,
    eval_every: int = 10,
    suite: str = "test",
    hparams: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
) -> RunSpec:
    """A resolved RunSpec, as the planner would make it."""
    hp = RULES.get(rule).hparams.model_validate(hparams or {}).model_dump(mode="json")
    return RunSpec(
        suite=suite,
        task=task,
        task_options=task_options(task, **(options or {})),
        rule=rule,
        hparams=hp,
        seed=seed,
        budget=Budget(steps=steps, eval_every=eval_every),
    )


def run_and_kill_after_first_row(
    suite: Path, results: Path, uri: str, address: str, wait_s: float
) -> set[str]:
    """Start ``synapsebench run`` of ``suite`` in its own process group, kill it with SIGKILL as soon
    as a first row has landed (or after ``wait_s``), and return the file names of the rows that did."""
    cmd = [
        sys.executable, "-m", "benchmark", "run", str(suite), "--results", str(results),
        "--tracking-uri", uri, "--address", address,
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + wait_s
    folder = store.runs_dir(results, _suite_name(suite))
    while not _rows(folder) and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return _rows(folder)


def _suite_name(suite: Path) -> str:
    from benchmark.spec import load_suite

    return load_suite(suite).name


def _rows(folder: Path) -> set[str]:
    return {p.name for p in folder.glob("*.parquet") if not p.name.startswith((".", "_"))}
