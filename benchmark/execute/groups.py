"""Batched groups of runs on Ray Tune: one trial per group, with one run's resources of its task.

The trial trains its members with :func:`benchmark.train_group.run_group` and writes each member's
row as the member ends, so a kill loses only the members still training, which a rerun trains
again. It reports to Ray Tune once per evaluation, the members' mean. The driver opens each
member's MLflow run when the trial starts and, when it ends, logs each member's curve from its row
(in one batch per member) and closes it; a crashed trial records every member it did not finish
as failed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from ray import tune

from benchmark import store
from benchmark.execute.grid import (
    STATUS_KEY,
    STEP_KEY,
    ResourceFn,
    _fit,
    _Ledger,
    _objective,
    _trial_error,
    close_from_row,
    node_id,
)
from benchmark.hooks import artifact_hooks
from benchmark.plugins import load_for_run
from benchmark.result import RunResult
from benchmark.results_location import local_folder, parse
from benchmark.spec import RunSpec
from benchmark.train_group import run_group

GROUP_KEY = "group"
"""Config key of a group trial's members (their RunSpecs as JSON)."""


def members_of(config: dict[str, Any]) -> list[RunSpec]:
    return [RunSpec.model_validate(spec) for spec in config[GROUP_KEY]]


def _group_trainable(config: dict[str, Any]) -> None:
    results = parse(config["results"])
    members = members_of(config)
    load_for_run(members[0])  # a group shares its suite, so its plugins
    done = store.done_ids(results, members[0].suite)  # a retried trial trains only the unfinished
    todo = [m for m in members if m.run_id not in done]
    if not todo:
        return

    def report(step: int, metrics: dict[str, float] | Any) -> None:
        tune.report({STEP_KEY: step, **metrics, **_objective(todo[0], metrics)})

    def write(spec: RunSpec, result: RunResult) -> None:
        store.write_run(results, spec, result, node_id())

    with contextlib.ExitStack() as stack:
        folders = [stack.enter_context(local_folder(store.artifacts_dir(results, s))) for s in todo]
        hooks = [artifact_hooks(s, folder) for s, folder in zip(todo, folders, strict=True)]
        ended = run_group(todo, report, hooks=hooks, on_end=write)
    tune.report({STEP_KEY: max(r.steps for r in ended), STATUS_KEY: "ok", "batch_size": len(todo)})


class _GroupCallback(tune.Callback):
    """Tracks a group trial's members in MLflow and records how each ended."""

    def __init__(self, ledger: _Ledger) -> None:
        self.ledger = ledger
        self._started: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        return {}  # as the grid's callback: it lives in this driver only

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        for spec in members_of(trial.config):
            if spec.run_id not in self._started:
                self._started.add(spec.run_id)
                self.ledger.tracker.start_run(spec)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        for spec in members_of(trial.config):
            close_from_row(self.ledger, spec, "the group ended without this member's row")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        for spec in members_of(trial.config):
            close_from_row(self.ledger, spec, _trial_error(trial))


def fit_groups(
    groups: Sequence[Sequence[RunSpec]], resources: ResourceFn, ledger: _Ledger, max_failures: int
) -> None:
    """One Tune fit over the groups: one trial each, with the resources of one run of its task."""
    param_space = {
        GROUP_KEY: tune.grid_search([[s.model_dump(mode="json") for s in group] for group in groups]),
        "results": str(ledger.results),
    }
    _fit(
        param_space,
        groups[0][0].suite,
        resources,
        ledger,
        max_failures=max_failures,
        trainable=_group_trainable,
        callback=_GroupCallback(ledger),
        first_spec=lambda config: members_of(config)[0],
    )
