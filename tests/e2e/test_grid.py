"""The whole path on a real local Ray, a real MLflow SQLite store and real Parquet files."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from mlflow.tracking import MlflowClient

from benchmark import store
from benchmark.cli import main
from benchmark.execute.grid import run_grid
from benchmark.tracking import Tracker
from tests.conftest import tiny_suite, write_suite
from tests.helpers import make_spec, run_and_kill_after_first_row

pytestmark = pytest.mark.usefixtures("ray_session")


def _mlflow_runs(uri: str, suite: str, kind: str = "run") -> list[Any]:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(suite)
    assert exp is not None, f"no MLflow experiment {suite!r}"
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`synapsebench.kind` = '{kind}'")


def _run_files(results: Path, suite: str) -> dict[str, float]:
    return {p.name: p.stat().st_mtime_ns for p in store.runs_dir(results, suite).glob("*.parquet")}


def test_tiny_grid_end_to_end_then_resume_adds_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    suite = write_suite(tmp_path / "tiny.yaml", **tiny_suite(), artifacts=["weight_histogram"])
    results = tmp_path / "results"
    uri = f"sqlite:///{tmp_path}/track.db"
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    args = ["run", str(suite), "--results", str(results), "--tracking-uri", uri]

    assert main(args) == 0
    err = capsys.readouterr().err
    assert "[8/8]" in err, "progress shows runs done of total"
    assert "left ~" in err, "progress shows the time left"
    assert "Failed to fetch metrics" not in caplog.text, "Tune's end-of-fit analysis finds its results"

    runs = store.read_runs(results, "tiny").to_pylist()
    assert len(runs) == 8 == len({r["run_id"] for r in runs})
    assert {r["status"] for r in runs} == {"ok"}
    children = _mlflow_runs(uri, "tiny")
    assert len(children) == 8
    assert {c.data.tags["synapsebench.run_id"] for c in children} == {r["run_id"] for r in runs}
    (parent,) = _mlflow_runs(uri, "tiny", kind="suite")
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["synapsebench.code_version"]
        assert child.data.params["task"] in {"digits_mlp", "mnist1d_mlp"}
        assert "hparams.lr" in child.data.params
        history = MlflowClient(tracking_uri=uri).get_metric_history(child.info.run_id, "test/accuracy")
        assert [m.step for m in history] == [0, 10, 20, 30]
        artifacts = MlflowClient(tracking_uri=uri).list_artifacts(child.info.run_id)
        assert [a.path for a in artifacts] == ["weight_histogram.png"]
        assert artifacts[0].file_size > 5000
        kept = Path(urlparse(child.info.artifact_uri).path) / "weight_histogram.png"
        assert kept.is_relative_to(tmp_path / "mlartifacts" / "tiny"), "kept beside the database"
        assert kept.is_file()
    assert not any(elsewhere.iterdir()), "nothing lands in the folder the command ran from"
    board = (results / "tiny" / "leaderboard.md").read_text()
    assert "## digits_mlp" in board
    assert "## mnist1d_mlp" in board

    before = _run_files(results, "tiny")
    assert main(args) == 0
    assert "0 run(s) to do, 8 already done" in capsys.readouterr().err
    assert _run_files(results, "tiny") == before
    assert len(_mlflow_runs(uri, "tiny")) == 8


def test_diverging_run_does_not_crash_the_grid(tmp_path: Path) -> None:
    suite = tiny_suite(
        name="div",
        tasks=("digits_mlp",),
        rules=({"name": "sgd", "sweep": {"lr": [0.05, 1e10]}},),
        seeds=(0,),
        steps=60,
    )
    results = tmp_path / "results"
    assert main(["run", str(write_suite(tmp_path / "d.yaml", **suite)), "--results", str(results)]) == 0
    status = {r["rule_display"]: r["status"] for r in store.read_runs(results, "div").to_pylist()}
    assert status == {"sgd[lr=0.05]": "ok", "sgd[lr=1e+10]": "diverged"}
    assert "| 1 | `sgd[lr=0.05]`" in (results / "div" / "leaderboard.md").read_text()


def test_failing_run_is_retried_recorded_and_reported(tmp_path: Path) -> None:
    good = make_spec(suite="faulty", steps=10)
    # Fault injection: a task the workers do not know, so every attempt raises.
    bad = make_spec(suite="faulty", steps=10, seed=1).model_copy(update={"task": "no_such_task"})
    tracker = Tracker(f"sqlite:///{tmp_path}/track.db", "faulty")
    outcome = run_grid([good, bad], tmp_path, tracker, lambda spec: {"cpu": 1, "gpu": 0}, max_failures=1)
    assert outcome.completed == [good.run_id]
    assert [(spec.run_id, "no_such_task" in err) for spec, err in outcome.failed] == [(bad.run_id, True)]
    status = {r["run_id"]: r["status"] for r in store.read_runs(tmp_path, "faulty").to_pylist()}
    assert status == {good.run_id: "ok", bad.run_id: "failed"}
    assert store.done_ids(tmp_path, "faulty") == {good.run_id}, "a failed run is run again next time"
    mlflow_status = {
        r.data.tags["synapsebench.run_id"]: r.info.status for r in _mlflow_runs(tracker.uri, "faulty")
    }
    assert mlflow_status == {good.run_id: "FINISHED", bad.run_id: "FAILED"}


def test_unreachable_tracking_server_warns_and_runs_still_land(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = tiny_suite(name="offline", tasks=("digits_mlp",), rules=({"name": "adamw"},), seeds=(0,))
    results = tmp_path / "results"
    args = ["run", str(write_suite(tmp_path / "o.yaml", **suite)), "--results", str(results)]
    with pytest.warns(UserWarning, match="unreachable"):
        assert main([*args, "--tracking-uri", "http://127.0.0.1:9"]) == 0
    assert store.read_runs(results, "offline").column("status").to_pylist() == ["ok"]


def test_killed_run_resumes_with_every_cell_exactly_once(ray_session: Any, tmp_path: Path) -> None:
    suite = write_suite(
        tmp_path / "kill.yaml",
        **tiny_suite(name="kill", tasks=("digits_mlp",), seeds=(0, 1, 2), steps=800),
        batch="off",  # rows land run by run (tests/e2e/test_batching.py kills a batched grid)
    )
    results = tmp_path / "results"
    uri = f"sqlite:///{tmp_path}/track.db"
    address = ray_session.address_info["address"]
    landed = len(run_and_kill_after_first_row(suite, results, uri, address, wait_s=120))
    assert 1 <= landed < 6, "the kill must land halfway through the grid"

    assert main(["run", str(suite), "--results", str(results), "--tracking-uri", uri]) == 0
    runs = store.read_runs(results, "kill").to_pylist()
    assert len(runs) == 6 == len({r["run_id"] for r in runs})
    assert {r["status"] for r in runs} == {"ok"}
    children = _mlflow_runs(uri, "kill")
    assert sorted(c.data.tags["synapsebench.run_id"] for c in children) == sorted(r["run_id"] for r in runs)
    assert {c.info.status for c in children} == {"FINISHED"}
