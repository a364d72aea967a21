"""Tune rules with AlgoPerf's external-tuning protocol on Ray Tune, and write tuned configs and scores.

Every (rule, task) cell gets S independent Optuna studies of K trials (:mod:`benchmark.execute.studies`);
trial 0 of each study is the rule's defaults. All cells' trials share one Ray Tune fit, so the cells
run concurrently and a cluster stays busy. Each trial is an ordinary run: study ``s`` trains on the
suite's first seed plus ``s`` (studies differ in data order and initialisation, as AlgoPerf's do), lands
in the store under the suite ``<name>-tune`` and is tracked in MLflow. Selection and scores read only
the task's validation split (``docs/protocol.md``).

Out of the studies come, per cell: the score (the median over studies of the fewest steps to the
validation target, at K = 1, 3 and all K trials: the budget curve), written to ``tuning.parquet`` and
``tuning.md`` in the suite's results folder; and the tuned hyperparameters (the median study's best
trial by final validation metric), written to ``tuned/<suite>/<rule>.yaml`` beside the suite file.
Self-tuning rules are not tuned: they run once at their defaults, at 1.5× the budget (AlgoPerf's
self-tuning track), and get a score row of their own.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

import yaml
from optuna.trial import Trial, TrialState
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler
from ray.tune.search import Searcher

from benchmark.atomic import temporary_beside
from benchmark.execute import studies
from benchmark.execute.grid import (
    OBJECTIVE_KEY,
    SAMPLED_KEY,
    STATUS_KEY,
    STEP_KEY,
    GridOutcome,
    ResourceFn,
    run_trials,
    spec_from_config,
)
from benchmark.plan import DroppedCell, Plan
from benchmark.results_location import Location, as_text, local_folder, resolved
from benchmark.rules import RULES
from benchmark.spec import RunSpec, content_hash, display_name
from benchmark.tasks import TASKS
from benchmark.tasks.base import Target
from benchmark.tracking import Tracker

TUNE_SUFFIX = "-tune"

SELF_TUNING_BUDGET = 1.5
"""Self-tuning rules run untuned at this multiple of the suite's steps (AlgoPerf's self-tuning track)."""

BUDGET_CURVE = (1, 3)
"""Trial counts at which a cell's score is also reported, besides all K: 1 is the rule's defaults."""


_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")
"""A URI's scheme; ``s3://b/x`` may arrive as the ``Path`` ``s3:/b/x``, so one slash is enough."""


def default_storage(results: str | Path, suite: str) -> str:
    """The journal file of ``suite``'s studies: ``<results>/<suite>-tune/optuna.journal``, or, when the
    results are a URI (an object store, which cannot hold an appending journal),
    ``.synapsebench/<suite>.journal`` here."""
    if _URI.match(str(results)):
        return str(Path(".synapsebench") / f"{suite}.journal")
    return str(Path(results) / f"{suite}{TUNE_SUFFIX}" / "optuna.journal")


@dataclass(frozen=True, slots=True)
class TuneOptions:
    """How ``tune`` searches: S studies of K trials, the sampler, where studies live, ASHA on or off."""

    studies: int = 3
    trials: int = 5
    sampler: str = "qmc"
    storage: str = ""
    asha: bool = False


@dataclass(frozen=True, slots=True)
class TunedCell:
    """The outcome of tuning one rule on one task."""

    rule: str
    task: str
    task_display: str
    track: str
    hparams: dict[str, Any]
    metric: str
    value: float
    trials: int
    failed: int
    scores: dict[int, float] = field(default_factory=dict)
    """Median over studies of the fewest steps to the target within the first k trials, per k."""


@dataclass(frozen=True, slots=True)
class TuningBases:
    """What ``tune`` will search (one base spec per task and rule, with the keys to search), the
    self-tuning cells it runs untuned, and the (task, rule) cells it leaves out, each with its reason."""

    bases: list[tuple[RunSpec, list[str]]]
    skipped: list[DroppedCell]
    self_tuning: list[RunSpec] = field(default_factory=list)


def tuning_bases(plan: Plan, rules: list[str] | None = None) -> TuningBases:
    """One base spec per (task, rule) to tune, on the suite's first seed, with the keys to search.

    Keys the suite fixes in a rule's ``hparams`` stay fixed; self-tuning rules are not tuned but run at
    their defaults with :data:`SELF_TUNING_BUDGET` times the steps. Every cell left out is returned
    with its reason, so that ``tune`` can say so (as ``run`` does).
    """
    fixed: dict[str, set[str]] = {}
    for entry in plan.suite.rules:
        fixed.setdefault(entry.name, set()).update(entry.hparams)
    seed = plan.suite.seeds[0]
    tuned_suite = plan.suite.name + TUNE_SUFFIX
    bases: dict[tuple[str, str], tuple[RunSpec, list[str]]] = {}
    untuned: dict[tuple[str, str], RunSpec] = {}
    skipped: dict[tuple[str, str], str] = {}
    for spec in plan.specs:
        rule = RULES.get(spec.rule)
        cell = (spec.task, spec.rule)
        if spec.seed != seed or (rules and spec.rule not in rules) or cell in bases or cell in untuned:
            continue
        keys = sorted(set(rule.search_space) - fixed.get(spec.rule, set()))
        if rule.track == "self_tuning":
            steps = math.ceil(spec.budget.steps * SELF_TUNING_BUDGET)
            budget = spec.budget.model_copy(update={"steps": steps})
            untuned[cell] = spec.model_copy(update={"suite": tuned_suite, "budget": budget})
        elif not rule.search_space:
            skipped[cell] = "the rule declares no search space"
        elif not keys:
            searchable = ", ".join(sorted(rule.search_space))
            skipped[cell] = f"the suite fixes every searchable hyperparameter ({searchable})"
        else:
            bases[cell] = (spec.model_copy(update={"suite": tuned_suite}), keys)
    return TuningBases(
        list(bases.values()),
        [DroppedCell(task, rule, reason) for (task, rule), reason in skipped.items()],
        list(untuned.values()),
    )


@dataclass
class _CellStudies:
    """The S studies of one (rule, task) cell, and what scoring needs to know about the cell."""

    base: RunSpec
    target: Target
    selected_by: Target
    names: list[str]
    studies: list[studies.CellStudy]
    trials: int

    def spec(self, index: int) -> RunSpec:
        """Study ``index``'s runs train on their own seed: the cell's seed plus the study index."""
        return self.base.model_copy(update={"seed": self.base.seed + index})


def open_cell(
    storage: Any, base: RunSpec, keys: list[str], options: TuneOptions, self_tuning: bool = False
) -> _CellStudies:
    """Create or load the studies of one cell; a self-tuning cell has one study of one trial, its defaults."""
    rule = RULES.get(base.rule)
    task = TASKS.get(base.task)
    count, trials = (1, 1) if self_tuning else (options.studies, options.trials)
    defaults = {k: v for k, v in rule.defaults().items() if k in keys}
    direction: Literal["maximize", "minimize"] = "maximize" if task.selected_by.mode == "max" else "minimize"
    sampler = "untuned" if self_tuning else options.sampler
    task_full = display_name(base.task, base.task_options)  # every option: the name must not depend on others
    shared = {**base.identity(), "hparams": {k: v for k, v in base.hparams.items() if k not in keys}}
    setup = content_hash({**shared, "searched": keys})[:8]
    names = [studies.study_name(base.suite, task_full, base.rule, sampler, setup, s) for s in range(count)]
    opened = [
        studies.CellStudy(
            storage,
            name,
            studies.make_sampler(options.sampler, s),
            direction,
            {k: rule.search_space[k] for k in keys},
            defaults,
            trials,
        )
        for s, name in enumerate(names)
    ]
    return _CellStudies(base, task.target, task.selected_by, names, opened, trials)


@dataclass
class _Live:
    """A trial in flight: its study, its Optuna trial, and what its reports have shown so far."""

    cell: _CellStudies
    study: studies.CellStudy
    trial: Trial
    run_id: str
    steps_to_target: float | None = None
    objective: float | None = None


class StudySearcher(Searcher):
    """Ray Tune's source of trials: the next trial of the next study with budget left, round robin.

    We ask and tell Optuna ourselves rather than through Ray's ``OptunaSearch``, which drives one study
    and keeps its state in Tune's experiment checkpoint: here many studies share one fit (so cells run
    concurrently), and their state is the Optuna storage alone, so resuming a killed ``tune`` is only
    loading the studies (:class:`benchmark.execute.studies.CellStudy`), never restoring Tune.
    """

    def __init__(self, cells: list[_CellStudies]) -> None:
        super().__init__()
        self._queue = [(c, s, i) for c in cells for i, s in enumerate(c.studies)]
        self._turn = 0
        self._live: dict[str, _Live] = {}

    @property
    def total(self) -> int:
        return sum(study.left for _, study, _ in self._queue)

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        self._queue = [entry for entry in self._queue if entry[1].left > 0]
        if not self._queue:
            return Searcher.FINISHED  # type: ignore[return-value]  # Tune's "no more trials" marker
        cell, study, index = self._queue[self._turn % len(self._queue)]
        self._turn += 1
        trial, hparams = study.ask()
        config = {"spec": cell.spec(index).model_dump(mode="json"), SAMPLED_KEY: hparams}
        self._live[trial_id] = _Live(cell, study, trial, spec_from_config(config).run_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        live = self._live.get(trial_id)
        if live is None:
            return
        value = result.get(live.cell.target.metric)
        reached = isinstance(value, int | float) and math.isfinite(value) and live.cell.target.reached(value)
        if live.steps_to_target is None and reached:
            live.steps_to_target = float(result[STEP_KEY])
        objective = result.get(OBJECTIVE_KEY)
        if isinstance(objective, int | float):
            live.objective = float(objective)  # ±1e30 for a diverged run: see grid._objective

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        live = self._live.get(trial_id)
        if live is None:
            return
        if result:
            self.on_trial_result(trial_id, result)
        del self._live[trial_id]
        if error:
            state, status = TrialState.FAIL, "failed"
        elif result and STATUS_KEY in result:
            state, status = TrialState.COMPLETE, str(result[STATUS_KEY])
        else:  # the trainable never made its final report: ASHA stopped it
            state, status = TrialState.PRUNED, "stopped"
        attrs = {
            studies.STATUS: status,
            studies.STEPS_TO_TARGET: live.steps_to_target,
            studies.RUN_ID: live.run_id,
        }
        live.study.tell(live.trial, state, live.objective, attrs)

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: the studies' state is in the Optuna storage (see the class docstring)."""
        del checkpoint_path


ASHA_REDUCTION = 3
"""ASHA keeps the top third of a cell's trials at each rung (Li et al. 2020, "A System for Massively
Parallel Hyperparameter Tuning", Algorithm 2, with η = 3)."""


class CellASHA(FIFOScheduler):
    """ASHA early stopping, one instance per (rule, task) cell: a trial is compared only with the trials
    of its own cell, on the cell's selection metric and direction (one Tune fit holds every cell, and
    Tune takes one scheduler). Rungs are in steps, from the task's first evaluation to its budget. A
    trial that reaches its budget is never stopped, so that it writes its row and makes its last report."""

    def __init__(self, cells: list[_CellStudies]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._cells = {
            _cell_key(c.base): AsyncHyperBandScheduler(
                time_attr=STEP_KEY,
                metric=OBJECTIVE_KEY,
                mode=c.selected_by.mode,
                max_t=c.base.budget.steps,
                grace_period=min(c.base.eval_every, c.base.budget.steps),
                reduction_factor=ASHA_REDUCTION,
                stop_last_trials=False,
            )
            for c in cells
        }

    def _of(self, trial: Any) -> AsyncHyperBandScheduler:
        return self._cells[_cell_key(spec_from_config(trial.config))]

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self._of(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        decision: str = self._of(trial).on_trial_result(tune_controller, trial, result)
        return decision

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        self._of(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._of(trial).on_trial_remove(tune_controller, trial)


def _cell_key(spec: RunSpec) -> tuple[str, str, str]:
    return (spec.task, json.dumps(spec.task_options, sort_keys=True), spec.rule)


def tune_plan(
    plan: Plan,
    options: TuneOptions,
    results: Location,
    make_tracker: Callable[[str], Tracker],
    resources: ResourceFn,
    rules: list[str] | None = None,
    stream: TextIO | None = None,
) -> list[TunedCell]:
    """Run every (task, rule) cell's studies in one Ray Tune fit, then score them; Ray must be connected.

    ``options.storage`` must be set (see :func:`default_storage`).
    """
    stream = stream or sys.stderr
    results = resolved(results)
    chosen = tuning_bases(plan, rules)
    storage = studies.open_storage(options.storage)
    cells = [open_cell(storage, base, keys, options) for base, keys in chosen.bases]
    cells += [open_cell(storage, spec, [], options, self_tuning=True) for spec in chosen.self_tuning]
    searcher = StudySearcher(cells)
    total = searcher.total
    for cell in cells:
        left = sum(s.left for s in cell.studies)
        count = len(cell.studies)
        shape = (
            f"{count} stud{'y' if count == 1 else 'ies'} of {cell.trials} trials"
            if cell.trials > 1
            else "untuned"
        )
        print(
            f"tuning {cell.base.rule} on {cell.base.task}: {shape}, {left} trial(s) to run"
            + (
                f" at {cell.base.budget.steps} steps (self-tuning track)"
                if cell.base.track == "self_tuning"
                else ""
            ),
            file=stream,
            flush=True,
        )
    print(
        f"{options.sampler} sampler, studies in {studies.where_shown(options.storage)}"
        + (
            f", ASHA early stopping on (per cell, η = {ASHA_REDUCTION}, rungs from the first evaluation)"
            if options.asha
            else ""
        ),
        file=stream,
        flush=True,
    )
    outcome = GridOutcome(total=total, skipped=0)
    if total:
        tracker = make_tracker(plan.suite.name + TUNE_SUFFIX)
        run_trials(
            {"results": as_text(results)},
            total,
            cells[0].base,
            results,
            tracker,
            resources,
            outcome,
            stream,
            search_alg=searcher,
            scheduler=CellASHA(cells) if options.asha else None,
        )
    shown = _task_displays([cell.base for cell in cells])
    return [_tuned_cell(storage, cell, shown[cell.base.run_id]) for cell in cells]


def _task_displays(specs: list[RunSpec]) -> dict[str, str]:
    """Each spec's task name with the options that vary among ``specs`` of that task (as the board shows)."""
    shown = {}
    for spec in specs:
        same_task = [s.task_options for s in specs if s.task == spec.task]
        varying = {k: v for k, v in spec.task_options.items() if any(o.get(k) != v for o in same_task)}
        shown[spec.run_id] = display_name(spec.task, varying)
    return shown


def _tuned_cell(storage: Any, cell: _CellStudies, task_display: str) -> TunedCell:
    """Score a cell from its studies, and pick its tuned hyperparameters from the median study."""
    outcomes = [studies.study_outcomes(storage, name, cell.trials) for name in cell.names]
    mode = cell.selected_by.mode
    median = studies.median_study(outcomes, mode)
    best = studies.best_trial(outcomes[median], mode)
    spent = min((len(o) for o in outcomes), default=0)
    scores = {k: studies.rule_score(outcomes, k) for k in (*BUDGET_CURVE, cell.trials) if k <= spent}
    return TunedCell(
        rule=cell.base.rule,
        task=cell.base.task,
        task_display=task_display,
        track=cell.base.track,
        hparams={**cell.base.hparams, **(best.params if best else {})},
        metric=cell.selected_by.metric,
        value=best.objective if best else math.nan,
        trials=cell.trials,
        failed=sum(o.status == "failed" for study in outcomes for o in study),
        scores=scores,
    )


def write_tuned(
    folder: Path, suite: str, seed: int, cells: list[TunedCell], options: TuneOptions
) -> list[Path]:
    """Write (or update, task by task) one tuned-config file per tuned rule. Returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    tuned = [c for c in cells if c.track == "tuned"]
    for rule in sorted({c.rule for c in tuned}):
        path = folder / f"{rule}.yaml"
        doc: dict[str, Any] = {"rule": rule, "suite": suite, "seed": seed, "tasks": {}}
        if path.is_file():
            doc["tasks"] = (yaml.safe_load(path.read_text()) or {}).get("tasks", {})
        for cell in (c for c in tuned if c.rule == rule and math.isfinite(c.value)):
            doc["tasks"][cell.task] = {
                "hparams": cell.hparams,
                "metric": cell.metric,
                "value": cell.value,
                "trials": cell.trials,
                "provenance": {
                    "protocol": "external tuning (AlgoPerf): the median study's best trial",
                    "sampler": options.sampler,
                    "studies": options.studies,
                    "trials_per_study": options.trials,
                    "storage": studies.where_shown(options.storage),
                    "asha": options.asha,
                    "steps_to_target": _finite_or_none(cell.scores.get(cell.trials, math.inf)),
                },
            }
        text = (
            f"# Written by `synapsebench tune`: the tuned {rule} hyperparameters per task of {suite!r}:\n"
            f"# of {options.studies} studies of {options.trials} trials each, the median study's best trial\n"
            f"# by final validation metric. Reference it from a suite with\n"
            f"#   - {{name: {rule}, tuned: {os.path.relpath(path, folder.parent.parent)}}}\n"
        ) + yaml.safe_dump(doc, sort_keys=False)
        with temporary_beside(path) as tmp:
            tmp.write_text(text)
            os.replace(tmp, path)
        written.append(path)
    return written


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


SCORES_FILE = "tuning"
"""``tuning.parquet`` and ``tuning.md`` in the suite's results folder: the budget curve per cell."""


def write_scores(folder: Location, cells: list[TunedCell], options: TuneOptions) -> tuple[Location, Location]:
    """The budget curve: each cell's score (median steps to the target over its studies) at K = 1,
    3 and all K trials, as Parquet (one row per cell and k) and as a Markdown table, in ``folder``
    (local, or a URI's: each file is put whole). Cells tuned before and not now are kept."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = f"{SCORES_FILE}.parquet", f"{SCORES_FILE}.md"
    before = folder / names[0]
    now = {(c.task_display, c.rule) for c in cells}
    rows = [
        r
        for r in (pq.read_table(pa.BufferReader(before.read_bytes())).to_pylist() if before.is_file() else [])
        if (r["task"], r["rule"]) not in now
    ]
    for cell in cells:
        for k, score in sorted(cell.scores.items()):
            rows.append(
                {
                    "task": cell.task_display,
                    "rule": cell.rule,
                    "track": cell.track,
                    "k": k,
                    "trials_per_study": cell.trials,
                    "studies": 1 if cell.track == "self_tuning" else options.studies,
                    "sampler": "untuned" if cell.track == "self_tuning" else options.sampler,
                    "asha": options.asha,
                    "steps_to_target": score,
                }
            )
    rows.sort(key=lambda r: (r["task"], r["track"], r["rule"], r["k"]))
    with local_folder(folder) as local:
        local.mkdir(parents=True, exist_ok=True)
        parquet, markdown = (local / name for name in names)
        with temporary_beside(parquet) as tmp:
            pq.write_table(pa.Table.from_pylist(rows), tmp)
            os.replace(tmp, parquet)
        with temporary_beside(markdown) as tmp:
            tmp.write_text(render_scores(rows))
            os.replace(tmp, markdown)
    return folder / names[0], folder / names[1]


def render_scores(rows: list[dict[str, Any]]) -> str:
    """The budget curve as Markdown: one row per cell, the score at each k (∞: the target not reached)."""
    ks = sorted({int(r["k"]) for r in rows})
    cells: dict[tuple[str, str, str], dict[int, float]] = {}
    for r in rows:
        cells.setdefault((r["task"], r["track"], r["rule"]), {})[int(r["k"])] = float(r["steps_to_target"])
    lines = [
        "## Tuning: steps to the validation target by trial budget",
        "",
        "Median over studies of each study's fewest steps to the task's validation target within its first",
        "k trials (AlgoPerf's external-tuning score); k = 1 is the rule's defaults; ∞: never reached.",
        "Self-tuning rules are not tuned: one run at their defaults, at 1.5× the steps.",
        "",
        "| task | track | rule | " + " | ".join(f"k = {k}" for k in ks) + " |",
        "|---|---|---|" + "---:|" * len(ks),
    ]
    for (task, track, rule), scores in cells.items():
        shown = [("∞" if math.isinf(scores[k]) else f"{scores[k]:g}") if k in scores else "" for k in ks]
        lines.append(f"| {task} | {track} | {rule} | " + " | ".join(shown) + " |")
    return "\n".join(lines) + "\n"
