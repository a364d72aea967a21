"""Run a grid of RunSpecs on Ray Tune: one trial per RunSpec, resources per task, retries, skip-done.

The worker trains with :func:`benchmark.train.run` and writes its own Parquet files, so results
survive a dead driver. The driver tracks every trial in MLflow through a Tune callback and prints
progress: runs done of total, failures and time left.
"""

from __future__ import annotations

import math
import shutil
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import ray
from ray import tune
from ray.tune.logger import JsonLoggerCallback

from benchmark import store, train
from benchmark.batching import BatchSetting, group_runs
from benchmark.hooks import artifact_hooks
from benchmark.plugins import load_for_run
from benchmark.result import RunResult
from benchmark.results_location import Location, as_text, local_folder, parse, resolved
from benchmark.spec import RunSpec
from benchmark.tracking import Tracker

STATUS_KEY = "run_status"
STEP_KEY = "step"


@dataclass
class GridOutcome:
    """What a grid invocation did."""

    total: int
    skipped: int
    completed: list[str] = field(default_factory=list)
    diverged: list[str] = field(default_factory=list)
    failed: list[tuple[RunSpec, str]] = field(default_factory=list)


def pending_specs(specs: Sequence[RunSpec], results: Location, rerun: bool) -> list[RunSpec]:
    """The specs still to run: all with ``rerun``, else those with no completed row in the store."""
    if rerun:
        return list(specs)
    done: set[str] = set()
    for suite in {s.suite for s in specs}:
        done |= store.done_ids(results, suite)
    return [s for s in specs if s.run_id not in done]


SAMPLED_KEY = "hp"
"""Config key of a search algorithm's sampled hyperparameters (``hp/lr`` arrives as ``{"hp": {"lr": …}}``)."""

OBJECTIVE_KEY = "objective"
"""The task's selection metric (its validation target), under one fixed name for search algorithms."""


def spec_from_config(config: dict[str, Any]) -> RunSpec:
    """The RunSpec of a trial: the planned spec, with any sampled hyperparameters put in."""
    spec = RunSpec.model_validate(config["spec"])
    sampled = config.get(SAMPLED_KEY) or {}
    if not sampled:
        return spec
    shown = tuple(sorted({*(spec.shown or ()), *sampled}))
    return spec.model_copy(update={"hparams": {**spec.hparams, **sampled}, "shown": shown})


def _objective(spec: RunSpec, metrics: dict[str, float] | Any) -> dict[str, float]:
    from benchmark.tasks import TASKS

    chosen_by = TASKS.get(spec.task).selected_by  # validation: nothing is chosen on a test metric
    value = metrics.get(chosen_by.metric)
    if value is None:
        return {}
    worst = -1e30 if chosen_by.mode == "max" else 1e30
    return {OBJECTIVE_KEY: float(value) if math.isfinite(value) else worst}


def _trainable(config: dict[str, Any]) -> None:
    spec = spec_from_config(config)
    load_for_run(spec)  # the suite's plugins register the run's rule or task in this process too
    results = parse(config["results"])

    def report(step: int, metrics: dict[str, float] | Any) -> None:
        tune.report({STEP_KEY: step, **metrics, **_objective(spec, metrics)})

    with local_folder(store.artifacts_dir(results, spec)) as artifacts:
        result = train.run(spec, report, hooks=artifact_hooks(spec, artifacts))
    store.write_run(results, spec, result, node_id())
    last = result.curve[-1].metrics if result.curve else {}
    extra = {k: v for k, v in result.final.items() if k not in last}
    final = {STEP_KEY: result.steps, STATUS_KEY: result.status, **extra}
    tune.report({**final, **_objective(spec, result.final)})


def node_id() -> str:
    """The Ray node this process runs on, as a run row records it (with ``socket.gethostname()``)."""
    return str(ray.get_runtime_context().get_node_id()) if ray.is_initialized() else ""


def failed_result(spec: RunSpec, error: str) -> RunResult:
    now = datetime.now(UTC)
    return RunResult(
        run_id=spec.run_id,
        status="failed",
        steps=0,
        final={},
        curve=(),
        train_time_s=0.0,
        wall_time_s=0.0,
        device="",
        started_at=now,
        finished_at=now,
        error=error,
    )


class Progress:
    """One line per finished run: done of total, failures, elapsed and estimated time left."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total = total
        self.finished = 0
        self.failed = 0
        self.started = time.monotonic()
        self.stream = stream

    def update(self, label: str, status: str) -> None:
        self.finished += 1
        self.failed += status == "failed"
        elapsed = time.monotonic() - self.started
        left = elapsed / self.finished * (self.total - self.finished)
        print(
            f"[{self.finished}/{self.total}] {status:<8} {label}  "
            f"(failed {self.failed}, elapsed {_clock(elapsed)}, left ~{_clock(left)})",
            file=self.stream,
            flush=True,
        )


def _clock(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}"


@dataclass
class _Ledger:
    """Where a finished run is recorded: its MLflow run closed, the outcome, the progress line."""

    tracker: Tracker
    results: Location
    outcome: GridOutcome
    progress: Progress

    def completed(self, spec: RunSpec, status: str) -> None:
        # Artifacts in an object store stay there: MLflow logs files from this machine only.
        artifacts = store.artifacts_dir(self.results, spec) if spec.artifacts else None
        artifacts = artifacts if isinstance(artifacts, Path) else None
        self.tracker.end_run(spec.run_id, status, artifacts)
        (self.outcome.diverged if status == "diverged" else self.outcome.completed).append(spec.run_id)
        self.progress.update(_label(spec), status)

    def failed(self, spec: RunSpec, error: str) -> None:
        store.write_run(self.results, spec, failed_result(spec, error))
        self.tracker.end_run(spec.run_id, "failed")
        self.outcome.failed.append((spec, error))
        self.progress.update(_label(spec), "failed")


@contextmanager
def _suite_tracking(
    tracker: Tracker, first: RunSpec, total: int, outcome: GridOutcome, stream: TextIO
) -> Iterator[None]:
    """The invocation's parent MLflow run, closed with the failures counted, or all of them on a crash."""
    tracker.start_suite(first.suite, total, first.code_version)
    try:
        yield
    except Exception:
        tracker.end_suite(failed=total)
        traceback.print_exc(file=stream)
        raise
    tracker.end_suite(failed=len(outcome.failed))


class _GridCallback(tune.Callback):
    def __init__(self, ledger: _Ledger) -> None:
        self.ledger = ledger
        self.tracker = ledger.tracker
        self._started: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks into the experiment state; ours live only in this driver
        # (resume is by content hash, not Tune restore), so nothing of them needs saving.
        return {}

    @staticmethod
    def _spec(trial: Any) -> RunSpec:
        return spec_from_config(trial.config)

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        spec = self._spec(trial)
        if spec.run_id not in self._started:
            self._started.add(spec.run_id)
            self.tracker.start_run(spec)

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        metrics = {
            k: float(v)
            for k, v in result.items()
            if "/" in k and isinstance(v, int | float) and not isinstance(v, bool)
        }
        if metrics:
            self.tracker.log_metrics(self._spec(trial).run_id, int(result.get(STEP_KEY, 0)), metrics)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        # Without its final report (which carries the status), a trial was stopped by a scheduler (ASHA).
        self.ledger.completed(self._spec(trial), str((trial.last_result or {}).get(STATUS_KEY, "stopped")))

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.ledger.failed(self._spec(trial), _trial_error(trial))


def _label(spec: RunSpec) -> str:
    return f"{spec.task} {spec.rule_display} seed={spec.seed}"


def _trial_error(trial: Any) -> str:
    for attr in ("error_msg", "error_message"):
        msg = getattr(trial, attr, None)
        if msg:
            return str(msg).strip().splitlines()[-1][:2000]
    path = getattr(trial, "error_file", None)
    if path and Path(path).is_file():
        return Path(path).read_text().strip().splitlines()[-1][:2000]
    return "trial failed"


ResourceFn = Callable[[RunSpec], dict[str, float]]


def run_grid(
    specs: Sequence[RunSpec],
    results: Location,
    tracker: Tracker,
    resources: ResourceFn,
    *,
    rerun: bool = False,
    max_failures: int = 1,
    stream: TextIO | None = None,
    batch: BatchSetting = "off",
) -> GridOutcome:
    """Run every pending spec as a Ray Tune trial; Ray must already be connected.

    ``batch`` groups runs that differ only in seed into one trial each (:mod:`benchmark.batching`).
    """
    stream = stream or sys.stderr
    results = resolved(results)
    todo = pending_specs(specs, results, rerun)
    outcome = GridOutcome(total=len(specs), skipped=len(specs) - len(todo))
    print(
        f"{len(todo)} run(s) to do, {outcome.skipped} already done and skipped"
        + (" (use --rerun to run them again)" if outcome.skipped else ""),
        file=stream,
        flush=True,
    )
    _backfill_tracking(specs, todo, results, tracker)
    if not todo:
        tracker.flush()
        return outcome
    grouping = group_runs(todo, batch)
    if batch != "off":
        print("\n".join(grouping.summary()), file=stream, flush=True)
    one_process = [s for s in grouping.alone if s.budget.workers is None]
    data_parallel = [s for s in grouping.alone if s.budget.workers is not None]
    ledger = _Ledger(tracker, results, outcome, Progress(len(todo), stream))
    with _suite_tracking(tracker, todo[0], len(todo), outcome, stream):
        if one_process:
            param_space = {
                "spec": tune.grid_search([s.model_dump(mode="json") for s in one_process]),
                "results": as_text(results),
            }
            _fit(param_space, todo[0].suite, resources, ledger, max_failures=max_failures)
        if grouping.groups:
            from benchmark.execute.groups import fit_groups

            fit_groups(grouping.groups, resources, ledger, max_failures)
        for spec in data_parallel:
            _run_data_parallel(spec, resources, ledger)
    return outcome


def _run_data_parallel(spec: RunSpec, resources: ResourceFn, ledger: _Ledger) -> None:
    """One run on ``spec.budget.workers`` Ray Train workers, from the driver, tracked from its row.

    Tune trials cannot host it: a trial holds its resources while the workers ask for theirs.
    """
    from ray.train import TrainingFailedError

    from benchmark.execute.ddp import run_ddp

    ledger.tracker.start_run(spec)
    try:
        run_ddp(spec, ledger.results, resources(spec))
    except (TrainingFailedError, OSError) as exc:  # a worker's error: the run failed, the grid goes on
        message = str(exc).strip()
        ledger.failed(spec, message.splitlines()[-1][:2000] if message else type(exc).__name__)
        return
    close_from_row(ledger, spec, "the run ended without its row")


def close_from_row(ledger: _Ledger, spec: RunSpec, error: str) -> None:
    """Close a run trained outside Tune's per-run reports from its stored row: its curve goes to
    MLflow in one batch and it counts as completed; with no completed row it failed with ``error``."""
    path = store.runs_dir(ledger.results, spec.suite) / f"{spec.run_id}.parquet"
    row = store.read_run(path) if path.is_file() else None
    if row is None or row["status"] not in store.COMPLETED:
        ledger.failed(spec, error)
        return
    for point in row["curve"] or []:
        ledger.tracker.log_metrics(spec.run_id, int(point["step"]), dict(point["metrics"] or {}))
    ledger.completed(spec, str(row["status"]))


def run_trials(
    param_space: dict[str, Any],
    total: int,
    first: RunSpec,
    results: Location,
    tracker: Tracker,
    resources: ResourceFn,
    outcome: GridOutcome,
    stream: TextIO,
    *,
    search_alg: Any = None,
    scheduler: Any = None,
    max_failures: int = 1,
) -> Any:
    """One Ray Tune fit over RunSpec trials: tracked, stored by the workers, progress on ``stream``.

    ``param_space`` holds ``spec`` (a grid over planned specs, or one base spec when a search
    algorithm samples ``hp/...`` into it) and ``results``. Returns Tune's ResultGrid.
    """
    ledger = _Ledger(tracker, results, outcome, Progress(total, stream))
    with _suite_tracking(tracker, first, total, outcome, stream):
        return _fit(
            param_space,
            first.suite,
            resources,
            ledger,
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=total,
            max_failures=max_failures,
        )


def _fit(
    param_space: dict[str, Any],
    name: str,
    resources: ResourceFn,
    ledger: _Ledger,
    *,
    search_alg: Any = None,
    scheduler: Any = None,
    num_samples: int = 1,
    max_failures: int = 1,
    trainable: Callable[[dict[str, Any]], None] | None = None,
    callback: tune.Callback | None = None,
    first_spec: Callable[[dict[str, Any]], RunSpec] = spec_from_config,
) -> Any:
    """One Tune fit: trials tracked by the callback, stored by the workers; returns the ResultGrid.

    ``trainable``, ``callback`` and ``first_spec`` (whose resources a trial asks for) default to
    one RunSpec per trial; batched groups pass theirs (:mod:`benchmark.execute.groups`).
    """
    callback = callback or _GridCallback(ledger)
    scratch = Path(tempfile.mkdtemp(prefix="sb_tune_"))
    try:
        trainable = tune.with_resources(
            trainable or _trainable, lambda config: _bundle(resources(first_spec(config)))
        )
        tune_config = (
            tune.TuneConfig(reuse_actors=True)
            if search_alg is None
            else tune.TuneConfig(
                reuse_actors=True, search_alg=search_alg, scheduler=scheduler, num_samples=num_samples
            )
        )
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune_config,
            run_config=tune.RunConfig(
                name=f"{name}-{uuid.uuid4().hex[:8]}",
                storage_path=str(scratch),
                failure_config=tune.FailureConfig(max_failures=max_failures),
                callbacks=[callback, JsonLoggerCallback()],  # type: ignore[no-untyped-call]
                verbose=0,
            ),
        )
        return tuner.fit()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _bundle(need: dict[str, float]) -> tune.PlacementGroupFactory:
    """A trial's resources as the one-bundle placement group Tune makes of a resource dict."""
    return tune.PlacementGroupFactory([{"CPU": need["cpu"], "GPU": need["gpu"]}])


def _backfill_tracking(
    specs: Sequence[RunSpec], todo: Sequence[RunSpec], results: Location, tracker: Tracker
) -> None:
    """Runs done in the store but never closed in MLflow (the driver was killed, or the tracking
    server was down when they ended) get their run."""
    pending = {s.run_id for s in todo}
    done = [s for s in specs if s.run_id not in pending]
    if not done or not tracker.enabled:
        return
    rows = {
        r["run_id"]: r
        for suite in {s.suite for s in done}
        for r in store.read_runs(results, suite).to_pylist()
    }
    for spec in done:
        if spec.run_id in rows:
            tracker.backfill(spec, rows[spec.run_id])
