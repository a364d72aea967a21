"""MLflow tracking: a run's evaluations show up while it runs, and all of them are there when it ends."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from benchmark.cache import CACHE_ENV
from benchmark.tracking import RUN_ID_TAG, Tracker
from tests.helpers import make_spec


def _history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("tracked")
    (run,) = client.search_runs([exp.experiment_id], filter_string=f"tags.`{RUN_ID_TAG}` = '{run_id}'")
    return [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]


def test_every_evaluation_reaches_mlflow_and_the_first_while_the_run_is_live(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/track.db"
    spec = make_spec(steps=6000)
    tracker = Tracker(uri, "tracked")
    tracker.start_suite("tracked", 1, "test")
    tracker.start_run(spec)
    points = [(step, 1.0 / (1 + step)) for step in range(0, 6000, 10)]  # 1,200 metrics: more than one batch
    for step, loss in points:
        tracker.log_metrics(spec.run_id, step, {"train/loss": loss, "test/loss": 2 * loss})
    tracker.flush()
    live = _history(uri, spec.run_id, "train/loss")
    assert live[:1] == points[:1], "a live run shows its first evaluation"

    tracker.end_run(spec.run_id, "ok")
    tracker.end_suite(failed=0)
    assert _history(uri, spec.run_id, "train/loss") == points
    assert _history(uri, spec.run_id, "test/loss") == [(s, 2 * v) for s, v in points]


def test_new_stores_start_empty_from_the_cache_and_a_damaged_cache_costs_only_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))

    def track(folder: str, spec_seed: int) -> str:
        uri = f"sqlite:///{tmp_path / folder}/mlflow.db"
        tracker = Tracker(uri, "tracked")
        tracker.start_suite("tracked", 1, "test")
        spec = make_spec(seed=spec_seed)
        tracker.start_run(spec)
        tracker.log_metrics(spec.run_id, 0, {"train/loss": 1.0})
        tracker.end_run(spec.run_id, "ok")
        tracker.end_suite(failed=0)
        assert tracker.enabled
        return uri

    def run_ids(uri: str) -> set[str]:
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name("tracked")
        return {r.data.tags.get(RUN_ID_TAG) for r in client.search_runs([exp.experiment_id])} - {None}

    first = track("a", 0)
    (template,) = (tmp_path / "cache").glob("mlflow-*.db")
    second = track("b", 1)
    assert run_ids(second) == {make_spec(seed=1).run_id}, "a new store holds none of another's runs"
    default = MlflowClient(tracking_uri=second).get_experiment("0")
    assert default.artifact_location == (tmp_path / "b" / "mlartifacts" / "Default").as_uri()
    assert track("a", 2) == first
    assert run_ids(first) == {make_spec(seed=0).run_id, make_spec(seed=2).run_id}, "an existing store is kept"

    template.write_bytes(b"not a database")
    third = track("c", 3)
    assert run_ids(third) == {make_spec(seed=3).run_id}
