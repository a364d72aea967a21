"""Tune rules with Optuna on Ray Tune, under an equal trial budget per rule, and write tuned configs.

Every (rule, task) cell of a suite gets the same number of trials. Each trial is an ordinary run: it
trains with :func:`benchmark.train.run` on the suite's first seed, lands in the store under the suite
``<name>-tune`` and is tracked in MLflow. The best hyperparameters per task are written to
``tuned/<suite>/<rule>.yaml`` beside the suite file, which a suite references with ``tuned:``.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml
from ray.tune.search.optuna import OptunaSearch

from benchmark import store
from benchmark.atomic import temporary_beside
from benchmark.execute.grid import OBJECTIVE_KEY, SAMPLED_KEY, GridOutcome, ResourceFn, run_trials
from benchmark.plan import DroppedCell, Plan
from benchmark.rules import RULES
from benchmark.spec import RunSpec
from benchmark.tasks import TASKS
from benchmark.tracking import Tracker

TUNE_SUFFIX = "-tune"


@dataclass(frozen=True, slots=True)
class TunedCell:
    """The outcome of tuning one rule on one task."""

    rule: str
    task: str
    hparams: dict[str, Any]
    metric: str
    value: float
    trials: int
    failed: int


@dataclass(frozen=True, slots=True)
class TuningBases:
    """What ``tune`` will search (one base spec per task and rule, with the keys to search) and the
    (task, rule) cells it leaves out, each with its reason."""

    bases: list[tuple[RunSpec, list[str]]]
    skipped: list[DroppedCell]


def tuning_bases(plan: Plan, rules: list[str] | None = None) -> TuningBases:
    """One base spec per (task, rule) to tune, on the suite's first seed, with the keys to search.

    Keys the suite fixes in a rule's ``hparams`` stay fixed; self-tuning rules are not tuned. Every
    cell left out is returned with its reason, so that ``tune`` can say so (as ``run`` does).
    """
    fixed: dict[str, set[str]] = {}
    for entry in plan.suite.rules:
        fixed.setdefault(entry.name, set()).update(entry.hparams)
    seed = plan.suite.seeds[0]
    bases: dict[tuple[str, str], tuple[RunSpec, list[str]]] = {}
    skipped: dict[tuple[str, str], str] = {}
    for spec in plan.specs:
        rule = RULES.get(spec.rule)
        cell = (spec.task, spec.rule)
        if spec.seed != seed or (rules and spec.rule not in rules) or cell in bases:
            continue
        keys = sorted(set(rule.search_space) - fixed.get(spec.rule, set()))
        if rule.track == "self_tuning":
            skipped[cell] = "a self-tuning rule: it is not tuned"
        elif not rule.search_space:
            skipped[cell] = "the rule declares no search space"
        elif not keys:
            searchable = ", ".join(sorted(rule.search_space))
            skipped[cell] = f"the suite fixes every searchable hyperparameter ({searchable})"
        else:
            tuned_suite = plan.suite.name + TUNE_SUFFIX
            bases[cell] = (spec.model_copy(update={"suite": tuned_suite}), keys)
    return TuningBases(
        list(bases.values()), [DroppedCell(task, rule, reason) for (task, rule), reason in skipped.items()]
    )


def tune_cell(
    base: RunSpec,
    keys: list[str],
    trials: int,
    results: Path,
    tracker: Tracker,
    resources: ResourceFn,
    stream: TextIO,
) -> TunedCell:
    """Search ``keys`` of ``base``'s rule with Optuna (TPE, seeded) for ``trials`` runs."""
    rule = RULES.get(base.rule)
    target = TASKS.get(base.task).selected_by  # a validation metric: tuning never reads test
    space = {f"{SAMPLED_KEY}/{k}": rule.search_space[k] for k in keys}
    search = OptunaSearch(space=space, metric=OBJECTIVE_KEY, mode=target.mode, seed=0)
    outcome = GridOutcome(total=trials, skipped=0)
    print(f"tuning {base.rule} on {base.task}: {', '.join(keys)}, {trials} trials", file=stream, flush=True)
    run_trials(
        {"spec": base.model_dump(mode="json"), "results": str(results)},
        trials,
        base,
        results,
        tracker,
        resources,
        outcome,
        stream,
        search_alg=search,
    )
    ran = set(outcome.completed) | set(outcome.diverged)
    best_value, best_hparams = math.nan, dict(base.hparams)
    for row in store.read_runs(results, base.suite).to_pylist():
        value = dict(row["final"] or {}).get(target.metric, math.nan)
        if row["run_id"] not in ran or not math.isfinite(value):
            continue
        better = value > best_value if target.mode == "max" else value < best_value
        if math.isnan(best_value) or better:
            best_value, best_hparams = value, json.loads(row["hparams_json"])
    return TunedCell(
        rule=base.rule,
        task=base.task,
        hparams=best_hparams,
        metric=target.metric,
        value=best_value,
        trials=trials,
        failed=len(outcome.failed),
    )


def write_tuned(folder: Path, suite: str, seed: int, cells: list[TunedCell]) -> list[Path]:
    """Write (or update, task by task) one tuned-config file per rule. Returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for rule in sorted({c.rule for c in cells}):
        path = folder / f"{rule}.yaml"
        doc: dict[str, Any] = {"rule": rule, "suite": suite, "seed": seed, "tasks": {}}
        if path.is_file():
            doc["tasks"] = (yaml.safe_load(path.read_text()) or {}).get("tasks", {})
        for cell in (c for c in cells if c.rule == rule and math.isfinite(c.value)):
            doc["tasks"][cell.task] = {
                "hparams": cell.hparams,
                "metric": cell.metric,
                "value": cell.value,
                "trials": cell.trials,
            }
        text = (
            f"# Written by `synapsebench tune`: the best {rule} hyperparameters per task of {suite!r},\n"
            f"# searched on seed {seed} with an equal trial budget per rule. Reference it from a suite with\n"
            f"#   - {{name: {rule}, tuned: {os.path.relpath(path, folder.parent.parent)}}}\n"
        ) + yaml.safe_dump(doc, sort_keys=False)
        with temporary_beside(path) as tmp:
            tmp.write_text(text)
            os.replace(tmp, path)
        written.append(path)
    return written


def tune_plan(
    plan: Plan,
    trials: int,
    results: Path,
    make_tracker: Callable[[str], Tracker],
    resources: ResourceFn,
    rules: list[str] | None = None,
    stream: TextIO | None = None,
) -> list[TunedCell]:
    """Tune every (task, rule) cell of ``plan`` with the same number of trials."""
    stream = stream or sys.stderr
    results = Path(results).resolve()
    bases = tuning_bases(plan, rules).bases
    tracker = make_tracker(plan.suite.name + TUNE_SUFFIX)
    return [tune_cell(base, keys, trials, results, tracker, resources, stream) for base, keys in bases]
