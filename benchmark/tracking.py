"""MLflow tracking: one parent run per suite invocation, one child run per RunSpec.

Runs are keyed by their content hash (tag ``synapsebench.run_id``): a run left RUNNING by a killed
invocation is deleted and started afresh on resume, so every cell has exactly one live MLflow run.
Tracking never stops a benchmark: if the store cannot be reached, a warning says so once and the
runs still complete and still reach Parquet.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import shutil
import sqlite3
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from benchmark.atomic import temporary_beside
from benchmark.cache import cache_dir
from benchmark.spec import RunSpec

RUN_ID_TAG = "synapsebench.run_id"
SUITE_TAG = "synapsebench.suite"
KIND_TAG = "synapsebench.kind"
CODE_TAG = "synapsebench.code_version"
STATUS_TAG = "synapsebench.status"

METRICS_FLUSH_S = 5.0
"""Least time, in seconds, between a run's metric batches to MLflow (the rest go when it ends): each SQLite
``log_batch`` costs ~20 ms of driver CPU, which a grid of short runs reporting every evaluation
would pay hundreds of times on the cores its workers need."""

MAX_BATCH = 1000  # MLflow's limit on entities per log_batch

T = TypeVar("T")


class TrackingWarning(UserWarning):
    """The tracking store could not be reached; results still go to Parquet."""


def default_tracking_uri(results: Path) -> str:
    """The embedded default: a SQLite file under the results folder."""
    return f"sqlite:///{Path(results).resolve() / 'mlflow.db'}"


def resolve_tracking_uri(explicit: str | None, results: Path) -> str:
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(results)


def sqlite_database(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI; None for other stores and in-memory SQLite."""
    prefix = "sqlite:///"
    path = uri[len(prefix) :].split("?", 1)[0] if uri.startswith(prefix) else ""
    return Path(path).resolve() if path not in ("", ":memory:") else None


def local_artifact_root(database: Path, experiment: str) -> str:
    """Where a SQLite store's experiment keeps its runs' artifacts: ``mlartifacts/<experiment>/`` beside
    the database file. MLflow's own default is ``./mlruns`` in whatever folder the command ran from."""
    return (database.parent / "mlartifacts" / experiment).as_uri()


def start_from_template(database: Path) -> None:
    """Make a new SQLite store as a copy of an empty one, made once per MLflow version in the cache.

    MLflow creates a store by running every one of its schema migrations: seconds of CPU for each new
    results folder, on the cores a grid's workers need. A copy takes milliseconds. An existing
    database is never touched, and if anything fails here MLflow creates the store itself.
    """
    if database.exists():
        return
    import mlflow

    template = cache_dir() / f"mlflow-{mlflow.__version__}.db"
    try:
        if not template.is_file():
            with temporary_beside(template, ".db") as partial:
                # The client creates its tables on first use; the finished file is then renamed in.
                mlflow.MlflowClient(tracking_uri=f"sqlite:///{partial}").search_experiments(max_results=1)
                os.replace(partial, template)
        with temporary_beside(database, ".db") as partial:
            shutil.copyfile(template, partial)
            if not _adopt_copy(partial, local_artifact_root(database, "Default")):
                template.unlink(missing_ok=True)  # damaged: the next new store makes it again
                return
            with contextlib.suppress(FileExistsError):  # another process made it meanwhile: keep theirs
                os.link(partial, database)
    except Exception:  # noqa: BLE001 - only a shortcut: MLflow creates the store as usual
        return


def _adopt_copy(copy: Path, default_artifacts: str) -> bool:
    """Whether the copy holds MLflow's schema; if so, its Default experiment (which MLflow made in the
    template with ``./mlruns`` of that process's folder) keeps artifacts beside the new store instead."""
    try:
        with contextlib.closing(sqlite3.connect(copy)) as db:
            if db.execute("SELECT version_num FROM alembic_version").fetchone() is None:
                return False
            with db:
                db.execute(
                    "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                    (default_artifacts,),
                )
            return True
    except sqlite3.Error:
        return False


def spec_params(spec: RunSpec) -> dict[str, str]:
    params = {
        "task": spec.task,
        "rule": spec.rule,
        "seed": str(spec.seed),
        "budget.steps": str(spec.budget.steps),
        "budget.eval_every": str(spec.eval_every),
    }
    params.update({f"task.{k}": json.dumps(v) for k, v in spec.task_options.items()})
    params.update({f"hparams.{k}": json.dumps(v) for k, v in spec.hparams.items()})
    return params


class Tracker:
    """MLflow adapter used by the driver; every method is a no-op once tracking is disabled."""

    def __init__(self, uri: str, experiment: str) -> None:
        self.uri = uri
        self.experiment = experiment
        self.enabled = True
        self.parent_id: str | None = None
        self._children: dict[str, str] = {}
        self._client: Any = None
        self._experiment_id: str | None = None
        # MLflow calls run on one background thread, so a slow store never holds up the grid's
        # event loop (and with it the workers, whose reports wait for the driver).
        self._queue: queue.Queue[Callable[[], Any]] = queue.Queue()
        self._thread: threading.Thread | None = None
        # Evaluations not yet sent, per run: (step, metrics, time in ms); guarded by _lock.
        self._pending: dict[str, list[tuple[int, dict[str, float], int]]] = {}
        self._last_flush: dict[str, float] = {}
        self._lock = threading.Lock()
        if uri.startswith(("http://", "https://")) and not _reachable(uri):
            self._disable(f"MLflow tracking server {uri} is unreachable")
            return
        # Importing MLflow and creating its tables takes seconds: they run on the tracking thread,
        # beside Ray's start-up, and every later call queues behind them.
        self._submit(self._connect)

    def _connect(self) -> None:
        # Fail fast on an unreachable server instead of MLflow's long retry loop.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        from mlflow.tracking import MlflowClient

        database = sqlite_database(self.uri)
        if database is not None:
            start_from_template(database)
        self._client = MlflowClient(tracking_uri=self.uri)
        exp = self._client.get_experiment_by_name(self.experiment)
        if exp is not None:
            self._experiment_id = exp.experiment_id
            return
        # A server (or any other store) decides where artifacts go.
        artifacts = None if database is None else local_artifact_root(database, self.experiment)
        self._experiment_id = self._client.create_experiment(self.experiment, artifact_location=artifacts)

    def _disable(self, why: str) -> None:
        if self.enabled:
            warnings.warn(
                f"{why}; runs continue and results still land in Parquet, but are not tracked",
                TrackingWarning,
                stacklevel=3,
            )
        self.enabled = False

    def _submit(self, fn: Callable[[], Any]) -> None:
        if not self.enabled:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="mlflow-tracking", daemon=True)
            self._thread.start()
        self._queue.put(fn)

    def _work(self) -> None:
        while True:
            fn = self._queue.get()
            try:
                self._guard(fn)
            finally:
                self._queue.task_done()

    def flush(self) -> None:
        """Wait until every submitted call has reached the store."""
        if self._thread is not None:
            self._queue.join()

    def _guard(self, fn: Callable[[], T]) -> T | None:
        if not self.enabled:
            return None
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - any tracking failure must not stop the benchmark
            self._disable(f"MLflow tracking at {self.uri} failed ({type(exc).__name__}: {exc})")
            return None

    def start_suite(self, suite: str, total: int, code_version: str) -> None:
        def start() -> None:
            run = self._client.create_run(
                self._experiment_id,
                run_name=f"{suite} @ {time.strftime('%Y-%m-%d %H:%M:%S')}",
                tags={KIND_TAG: "suite", SUITE_TAG: suite, CODE_TAG: code_version},
            )
            self.parent_id = run.info.run_id
            self._client.log_param(self.parent_id, "runs_pending", total)

        self._submit(start)

    def start_run(self, spec: RunSpec) -> None:
        def start() -> None:
            self._close_stale(spec.run_id)
            tags = {
                RUN_ID_TAG: spec.run_id,
                SUITE_TAG: spec.suite,
                CODE_TAG: spec.code_version,
                KIND_TAG: "run",
            }
            if self.parent_id is not None:
                tags["mlflow.parentRunId"] = self.parent_id
            run = self._client.create_run(
                self._experiment_id,
                run_name=f"{spec.task}/{spec.rule_display}/seed={spec.seed}",
                tags=tags,
            )
            self._children[spec.run_id] = run.info.run_id
            from mlflow.entities import Param

            params = [Param(k, v[:6000]) for k, v in spec_params(spec).items()]
            self._client.log_batch(run.info.run_id, params=params)

        self._submit(start)

    def _close_stale(self, run_id: str) -> None:
        """Delete earlier MLflow runs of this cell that never finished (a killed invocation)."""
        stale = self._client.search_runs(
            [self._experiment_id], filter_string=f"tags.`{RUN_ID_TAG}` = '{run_id}'"
        )
        for run in stale:
            if run.info.status != "FINISHED" or run.data.tags.get(STATUS_TAG) == "failed":
                self._client.delete_run(run.info.run_id)
            elif run.data.tags.get(STATUS_TAG) in ("ok", "diverged"):
                # --rerun: the new result replaces the old one in the store, and here too.
                self._client.delete_run(run.info.run_id)

    def backfill(self, spec: RunSpec, row: Mapping[str, Any]) -> None:
        """Make sure a run already in the store has one finished MLflow run.

        A driver killed after a worker wrote its Parquet file never closed the MLflow run; that
        run is replaced by one rebuilt from the store, so MLflow and Parquet agree.
        """

        def fill() -> None:
            found = self._client.search_runs(
                [self._experiment_id], filter_string=f"tags.`{RUN_ID_TAG}` = '{spec.run_id}'"
            )
            if any(
                r.info.status == "FINISHED" and r.data.tags.get(STATUS_TAG) == row["status"] for r in found
            ):
                return
            self.start_run(spec)
            for point in row["curve"] or []:
                self.log_metrics(spec.run_id, int(point["step"]), dict(point["metrics"] or {}))
            self.end_run(spec.run_id, str(row["status"]))

        self._submit(fill)

    def log_metrics(self, run_id: str, step: int, metrics: Mapping[str, float]) -> None:
        """Record one evaluation.

        A run's first evaluation is sent at once; later ones wait for the first evaluation that comes
        ``METRICS_FLUSH_S`` or more after the run's last batch, and go in one batch with it. Whatever
        is left is sent when the run ends.
        """
        if not self.enabled:
            return
        now = time.monotonic()
        with self._lock:
            self._pending.setdefault(run_id, []).append((step, dict(metrics), int(time.time() * 1000)))
            due = now - self._last_flush.get(run_id, -math.inf) >= METRICS_FLUSH_S
            if due:
                self._last_flush[run_id] = now
        if due:
            self._submit(lambda: self._send_metrics(run_id))

    def _send_metrics(self, run_id: str) -> None:
        with self._lock:
            points = self._pending.pop(run_id, [])
        child = self._children.get(run_id)
        if child is None or not points:
            return
        from mlflow.entities import Metric

        batch = [Metric(k, float(v), ms, step) for step, metrics, ms in points for k, v in metrics.items()]
        for start in range(0, len(batch), MAX_BATCH):
            self._client.log_batch(child, metrics=batch[start : start + MAX_BATCH])

    def end_run(self, run_id: str, status: str, artifacts: Path | None = None) -> None:
        """Close the run's MLflow run; the files in ``artifacts`` (if any) become its artifacts."""

        def end() -> None:
            self._send_metrics(run_id)
            with self._lock:
                self._last_flush.pop(run_id, None)
            child = self._children.pop(run_id, None)
            if child is None:
                return
            if artifacts is not None and artifacts.is_dir():
                for path in sorted(artifacts.iterdir()):
                    if path.is_file() and not path.name.startswith("."):
                        self._client.log_artifact(child, str(path))
            self._client.set_tag(child, STATUS_TAG, status)
            self._client.set_terminated(child, "FAILED" if status == "failed" else "FINISHED")

        self._submit(end)

    def end_suite(self, failed: int) -> None:
        """Close what is still open, then wait until everything has reached the store."""

        def end() -> None:
            for run_id in list(self._children):
                self.end_run(run_id, "failed")
            if self.parent_id is None:
                return
            self._client.log_param(self.parent_id, "runs_failed", failed)
            self._client.set_terminated(self.parent_id, "FAILED" if failed else "FINISHED")

        self._submit(end)
        self.flush()


def _reachable(uri: str, timeout: float = 3.0) -> bool:
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:
            return bool(resp.status < 500)
    except (urllib.error.URLError, OSError, ValueError):
        return False
