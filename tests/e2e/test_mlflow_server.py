"""Tracking into a real ``mlflow server`` on 127.0.0.1, backed by a throwaway PostgreSQL cluster
(Debian's postgresql 15, run by the ``postgres`` user), as on a cluster; and what happens when that
server stops in the middle of a grid."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from benchmark import store
from benchmark.cli import main
from tests.conftest import tiny_suite, write_suite
from tests.servers import PG_BIN, Postgres, create_database, postgres_cluster, start_mlflow

pytestmark = [
    pytest.mark.usefixtures("ray_session"),
    pytest.mark.skipif(not (PG_BIN / "initdb").is_file(), reason="needs Debian's postgresql 15"),
]


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    with postgres_cluster() as cluster:
        yield cluster


def _children(uri: str, suite: str) -> list[Any]:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(suite)
    assert exp is not None, f"no MLflow experiment {suite!r}"
    return client.search_runs([exp.experiment_id], filter_string="tags.`synapsebench.kind` = 'run'")


def test_grid_tracks_one_child_run_per_cell_into_a_server_on_postgres(
    postgres: Postgres, tmp_path: Path
) -> None:
    suite = write_suite(tmp_path / "pg.yaml", **tiny_suite(name="pg", tasks=("digits_mlp",)))
    results = tmp_path / "results"
    server = start_mlflow(postgres.url, tmp_path / "artifacts")
    try:
        assert main(["run", str(suite), "--results", str(results), "--tracking-uri", server.uri]) == 0
        runs = store.read_runs(results, "pg").to_pylist()
        children = _children(server.uri, "pg")
    finally:
        server.stop()
    assert len(runs) == 4
    assert sorted(c.data.tags["synapsebench.run_id"] for c in children) == sorted(r["run_id"] for r in runs)
    assert {c.info.status for c in children} == {"FINISHED"}
    assert {c.data.tags["synapsebench.status"] for c in children} == {"ok"}
    assert len({c.data.tags["mlflow.parentRunId"] for c in children}) == 1


def test_server_stopped_mid_grid_parquet_complete_then_tracking_backfilled(
    postgres: Postgres, tmp_path: Path
) -> None:
    grid = tiny_suite(name="outage", tasks=("digits_mlp",), rules=({"name": "sgd"},), seeds=(0, 1, 2, 3))
    grid["budget"] = {"steps": 300, "eval_every": 100}
    grid["batch"] = "off"  # runs that land one by one, so the server can stop between them
    suite = write_suite(tmp_path / "outage.yaml", **grid)
    results = tmp_path / "results"
    server = start_mlflow(postgres.url, tmp_path / "artifacts")
    landed_at_stop: list[int] = []

    def stop_after_the_first_run() -> None:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            landed = len(list(store.runs_dir(results, "outage").glob("*.parquet")))
            if landed:
                server.stop()
                landed_at_stop.append(landed)
                return
            time.sleep(0.1)

    stopper = threading.Thread(target=stop_after_the_first_run)
    stopper.start()
    try:
        with pytest.warns(UserWarning, match="unreachable"):
            code = main(["run", str(suite), "--results", str(results), "--tracking-uri", server.uri])
    finally:
        stopper.join()
        server.stop()
    assert code == 0, "a tracking outage never fails the runs"
    assert landed_at_stop, "the server stopped during the grid"
    assert landed_at_stop[0] < 4, "the server stopped halfway through the grid"
    runs = store.read_runs(results, "outage").to_pylist()
    assert len(runs) == 4 == len({r["run_id"] for r in runs}), "Parquet is complete"
    assert {r["status"] for r in runs} == {"ok"}

    server = start_mlflow(postgres.url, tmp_path / "artifacts")  # the same store, back again
    try:
        assert main(["run", str(suite), "--results", str(results), "--tracking-uri", server.uri]) == 0
        children = _children(server.uri, "outage")
        client = MlflowClient(tracking_uri=server.uri)
        histories = [client.get_metric_history(c.info.run_id, "test/accuracy") for c in children]
    finally:
        server.stop()
    assert sorted(c.data.tags["synapsebench.run_id"] for c in children) == sorted(r["run_id"] for r in runs)
    assert {c.info.status for c in children} == {"FINISHED"}, "the missing runs were backfilled"
    assert all(len(history) == 4 for history in histories), "with their curves (steps 0, 100, 200, 300)"


def test_tune_keeps_its_studies_in_postgres_and_a_rerun_extends_them(
    postgres: Postgres, tmp_path: Path
) -> None:
    # A cluster's tune keeps its Optuna studies in PostgreSQL (--storage), as every node reaches it.
    storage = create_database(postgres, "optuna")
    suite = write_suite(
        tmp_path / "pgtune.yaml",
        name="pgtune",
        tasks=[{"name": "digits_mlp", "options": {"width": 16}}],
        rules=[{"name": "sgd", "hparams": {"momentum": 0.9}}],
        seeds=[0],
        budget={"steps": 20, "eval_every": 10},
    )
    args = ["tune", str(suite), "--studies", "1", "--results", str(tmp_path / "res"), "--storage", storage]
    assert main([*args, "--trials", "2"]) == 0
    (study,) = optuna.get_all_study_summaries(storage)
    first = optuna.load_study(study_name=study.study_name, storage=storage).get_trials()
    assert [t.state for t in first] == [TrialState.COMPLETE] * 2

    assert main([*args, "--trials", "3"]) == 0, "a larger K extends the same study"
    again = optuna.load_study(study_name=study.study_name, storage=storage).get_trials()
    assert [t.state for t in again] == [TrialState.COMPLETE] * 3
    assert [t.params for t in again[:2]] == [t.params for t in first], "the first trials are kept, not rerun"
    assert len(store.read_runs(tmp_path / "res", "pgtune-tune")) == 3
