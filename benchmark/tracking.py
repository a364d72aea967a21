"""MLflow tracking: one parent run per suite invocation, one child run per RunSpec.

Runs are keyed by their content hash (tag ``synapsebench.run_id``): a run left RUNNING by a killed
invocation is deleted and started afresh on resume, so every cell has exactly one live MLflow run.

Metrics, params and tags go through MLflow's asynchronous logging (``synchronous=False``), which queues
them and writes what has gathered every ``MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS``; a run's evaluations
are handed to it together, at most once every :data:`HOLD_S` seconds and when the run ends. The calls
it does not cover (creating and ending runs, artifacts, searches) run in order on one worker thread, so
a slow or unreachable store never holds up the grid. Tracking never stops a benchmark: when the store
fails, a warning says so once, tracking stops, and the runs still complete and still reach Parquet.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmark.spec import RunSpec

RUN_ID_TAG = "synapsebench.run_id"
SUITE_TAG = "synapsebench.suite"
KIND_TAG = "synapsebench.kind"
CODE_TAG = "synapsebench.code_version"
STATUS_TAG = "synapsebench.status"

MLFLOW_DEFAULTS = {
    # Fail within seconds on an unreachable server instead of MLflow's minutes of retries.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    # Each SQLite write costs 13-23 ms of driver CPU. Gathering for 5 s, the async logger writes a
    # run's consecutive evaluations (a lone run, a replayed curve) in one batch; it writes interleaved
    # runs' evaluations one by one.
    "MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS": "5",
}
"""MLflow settings the tracker uses unless the environment sets them."""

HOLD_S = 5.0
"""A run's evaluations are held and handed to MLflow together at most once every HOLD_S seconds (and
when it ends): the async logger merges only consecutive batches of one run, so with several trials
reporting at once it would write each evaluation alone (13-23 ms of driver CPU per SQLite write)."""
MAX_METRICS_PER_BATCH = 1000
"""MLflow's limit of metrics in one log_batch call."""


class TrackingWarning(UserWarning):
    """The tracking store could not be reached; results still go to Parquet."""


@functools.cache
def _store_errors() -> tuple[type[Exception], ...]:
    """What a failing store raises through MLflow's client: its own errors, its HTTP layer's
    (requests), its SQL stores' (SQLAlchemy) and the file system's (artifacts, SQLite files)."""
    import requests
    import sqlalchemy.exc
    from mlflow.exceptions import MlflowException

    return (MlflowException, requests.RequestException, sqlalchemy.exc.SQLAlchemyError, OSError)


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
    for kind, origin in (("rule", spec.rule_origin), ("task", spec.task_origin)):
        if origin is not None:  # a plugin's: the code it came from and its hash (docs/plugins.md)
            params[f"{kind}.origin"] = str(origin)
    if spec.plugins:
        params["plugins"] = spec.plugins_json
    return params


class Tracker:
    """MLflow adapter used by the driver: every method returns at once, and is a no-op once tracking
    is disabled. MLflow calls run in submission order on one worker thread."""

    def __init__(self, uri: str, experiment: str) -> None:
        self.uri = uri
        self.experiment = experiment
        self.enabled = True
        self.parent_id: str | None = None
        # Touched only on the worker thread: MLflow run of each RunSpec, and its async batches not
        # yet confirmed written.
        self._children: dict[str, str] = {}
        self._unconfirmed: dict[str, list[Any]] = {}
        self._held: dict[str, list[Any]] = {}  # metrics not yet handed to MLflow, per MLflow run
        self._sent_at: dict[str, float] = {}
        self._client: Any = None
        self._experiment_id: str | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-tracking")
        self._bug: BaseException | None = None
        self._worker_thread: threading.Thread | None = None
        # Importing MLflow and creating its tables takes seconds: they run on the worker, beside
        # Ray's start-up, and every later call queues behind them.
        self._submit(self._connect)

    def _connect(self) -> None:
        for name, value in MLFLOW_DEFAULTS.items():
            os.environ.setdefault(name, value)
        from mlflow.tracking import MlflowClient

        self._client = MlflowClient(tracking_uri=self.uri)
        exp = self._client.get_experiment_by_name(self.experiment)
        if exp is not None:
            self._experiment_id = exp.experiment_id
            return
        # A server (or any other store) decides where artifacts go.
        database = sqlite_database(self.uri)
        artifacts = None if database is None else local_artifact_root(database, self.experiment)
        self._experiment_id = self._client.create_experiment(self.experiment, artifact_location=artifacts)

    def _submit(self, fn: Callable[[], None]) -> None:
        if not self.enabled:
            return
        if threading.current_thread() is self._worker_thread:
            # A queued call making another (a backfill starts, fills and ends a run): run it now,
            # in order, or it would queue behind a flush that then returns before it ran.
            fn()
            return
        self._worker.submit(self._guard, fn).add_done_callback(self._keep_bug)

    def _guard(self, fn: Callable[[], None]) -> None:
        self._worker_thread = threading.current_thread()
        if not self.enabled:
            return
        try:
            fn()
        except _store_errors() as exc:  # the store failed: the benchmark goes on without it
            if self.enabled:
                warnings.warn(
                    f"MLflow tracking at {self.uri} is unreachable or failed ({type(exc).__name__}: "
                    f"{exc}); runs continue and results still land in Parquet, but are not tracked",
                    TrackingWarning,
                    stacklevel=2,
                )
            self.enabled = False

    def _keep_bug(self, done: Future[None]) -> None:
        """Any other error is a bug in this module: kept, and raised by :meth:`flush`."""
        if self._bug is None:
            self._bug = done.exception()

    def flush(self) -> None:
        """Wait until every call made so far has reached the store (or tracking was disabled)."""
        self._worker.submit(self._guard, self._confirm).result()
        if self._bug is not None:
            raise self._bug

    def _confirm(self, mlflow_run: str | None = None) -> None:
        """Wait for the async batches of an MLflow run (of every run if None); a failed one raises."""
        for key in [mlflow_run] if mlflow_run is not None else list(self._unconfirmed):
            for operations in self._unconfirmed.pop(key, []):
                operations.wait()

    def _log_async(self, mlflow_run: str, **batch: Any) -> None:
        """Hand metrics, params or tags of an MLflow run to MLflow's async logging."""
        operations = self._client.log_batch(mlflow_run, synchronous=False, **batch)
        self._unconfirmed.setdefault(mlflow_run, []).append(operations)

    def start_suite(self, suite: str, total: int, code_version: str) -> None:
        def start() -> None:
            from mlflow.entities import Param

            run = self._client.create_run(
                self._experiment_id,
                run_name=f"{suite} @ {time.strftime('%Y-%m-%d %H:%M:%S')}",
                tags={KIND_TAG: "suite", SUITE_TAG: suite, CODE_TAG: code_version},
            )
            self.parent_id = run.info.run_id
            self._log_async(self.parent_id, params=[Param("runs_pending", str(total))])

        self._submit(start)

    def start_run(self, spec: RunSpec) -> None:
        def start() -> None:
            from mlflow.entities import Param

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
            self._log_async(
                run.info.run_id, params=[Param(k, v[:6000]) for k, v in spec_params(spec).items()]
            )

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
        """Record one evaluation, through MLflow's async logging."""
        ms = int(time.time() * 1000)
        values = {k: float(v) for k, v in metrics.items()}

        def send() -> None:
            from mlflow.entities import Metric

            child = self._children.get(run_id)
            if child is None or not values:
                return
            self._held.setdefault(child, []).extend(Metric(k, v, ms, step) for k, v in values.items())
            if time.monotonic() - self._sent_at.get(child, 0.0) >= HOLD_S:
                self._release(child)

        self._submit(send)

    def _release(self, mlflow_run: str) -> None:
        """Hand the run's held metrics to MLflow's async logging, as one batch."""
        held = self._held.pop(mlflow_run, [])
        self._sent_at[mlflow_run] = time.monotonic()
        for start in range(0, len(held), MAX_METRICS_PER_BATCH):
            self._log_async(mlflow_run, metrics=held[start : start + MAX_METRICS_PER_BATCH])

    def end_run(self, run_id: str, status: str, artifacts: Path | None = None) -> None:
        """Close the run's MLflow run; the files in ``artifacts`` (if any) become its artifacts."""

        def end() -> None:
            from mlflow.entities import RunTag

            child = self._children.get(run_id)
            if child is None:
                return
            self._release(child)
            if artifacts is not None and artifacts.is_dir():
                for path in sorted(artifacts.iterdir()):
                    if path.is_file() and not path.name.startswith("."):
                        self._client.log_artifact(child, str(path))
            self._log_async(child, tags=[RunTag(STATUS_TAG, status)])
            # Ending a run first writes everything MLflow's async logging holds, for every run.
            self._client.set_terminated(child, "FAILED" if status == "failed" else "FINISHED")
            del self._children[run_id]
            self._sent_at.pop(child, None)
            self._confirm(child)

        self._submit(end)

    def end_suite(self, failed: int) -> None:
        """Close what is still open, then wait until everything has reached the store."""

        def end() -> None:
            from mlflow.entities import Param

            for run_id in list(self._children):
                self.end_run(run_id, "failed")
            if self.parent_id is None:
                return
            parent = self.parent_id
            self._log_async(parent, params=[Param("runs_failed", str(failed))])
            self._client.set_terminated(parent, "FAILED" if failed else "FINISHED")
            self._confirm(parent)

        self._submit(end)
        self.flush()
