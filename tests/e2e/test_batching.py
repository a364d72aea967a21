"""Batched groups through the CLI on a real local Ray, MLflow SQLite and Parquet: a suite run with
batching on and with ``--batch off`` gives every cell once in each results folder, with the same
run ids and each member equal to its solo run; bad ``batch`` values exit 2 naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from benchmark import store
from benchmark.cli import main
from benchmark.errors import ExitCode
from benchmark.plan import expand
from benchmark.spec import load_suite
from tests.conftest import tiny_suite, write_suite
from tests.helpers import run_and_kill_after_first_row

RULES = (
    {"name": "sgd", "hparams": {"momentum": 0.9}, "sweep": {"lr": [0.02, 0.05]}},
    {"name": "adamw"},
    {"name": "eg_sgd", "hparams": {"lr": 0.2, "momentum": 0.9}},
)


def _rows(results: Path, suite: str) -> dict[str, dict[str, Any]]:
    rows = store.read_runs(results, suite).to_pylist()
    assert len(rows) == len({r["run_id"] for r in rows}), "every cell once"
    return {r["run_id"]: r for r in rows}


def _metrics(row: dict[str, Any], index: int) -> dict[str, float]:
    return dict(row["curve"][index]["metrics"])


@pytest.mark.usefixtures("ray_session")
def test_batched_and_unbatched_runs_give_the_same_cells_and_numbers(tmp_path: Path) -> None:
    fields = tiny_suite(rules=RULES, steps=100)
    fields["budget"]["eval_every"] = 50
    suite = write_suite(tmp_path / "tiny.yaml", **fields, batch="auto")
    uri = f"sqlite:///{tmp_path}/track.db"
    batched, alone = tmp_path / "batched", tmp_path / "alone"
    assert main(["run", str(suite), "--results", str(batched), "--tracking-uri", uri]) == 0
    off = ["run", str(suite), "--results", str(alone), "--batch", "off", "--tracking-uri", f"{uri}.off"]
    assert main(off) == 0

    planned = {s.run_id for s in expand(load_suite(suite), suite).specs}
    grouped, solo = _rows(batched, "tiny"), _rows(alone, "tiny")
    assert set(grouped) == set(solo) == planned
    assert {r["batch_size"] for r in grouped.values()} == {2, 4}, "sgd's two rates share a group"
    assert {r["batch_size"] for r in solo.values()} == {1}
    for run_id, row in grouped.items():
        ref = solo[run_id]
        assert row["status"] == ref["status"] == "ok"
        assert _metrics(row, 0) == _metrics(ref, 0), "step 0: identical"
        assert row["curve"][1]["step"] == 50
        for key, value in _metrics(ref, 1).items():
            assert abs(_metrics(row, 1)[key] - value) <= 1e-4 * max(abs(value), 1e-12), key
        final, ref_final = dict(row["final"]), dict(ref["final"])
        for key in ("val/loss", "test/loss", "train/loss"):
            assert abs(final[key] - ref_final[key]) <= 1e-2 * abs(ref_final[key]), key
        for key in ("val/accuracy", "test/accuracy"):
            assert abs(final[key] - ref_final[key]) <= 0.01, key

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tiny")
    assert experiment is not None
    children = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`synapsebench.kind` = 'run'"
    )
    assert len(children) == len(planned), "one MLflow run per member"
    for child in children:
        assert child.info.status == "FINISHED"
        history = client.get_metric_history(child.info.run_id, "val/loss")
        assert [m.step for m in history] == [0, 50, 100]


def test_dry_run_says_which_runs_train_alone_and_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fields = tiny_suite(rules=({"name": "sgd"}, {"name": "weight_perturbation"}), seeds=(0, 1, 2))
    fields["tasks"].append({**fields["tasks"][0], "budget": {"steps": 20, "probe_every": 10}})
    fields["tasks"][-1]["options"] = {**fields["tasks"][-1]["options"], "width": 16}
    suite = write_suite(tmp_path / "tiny.yaml", **fields)
    assert main(["run", str(suite), "--results", str(tmp_path / "r"), "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "batching: 6 run(s) in 2 group(s) of 3" in err
    assert "run(s) alone: rule weight_perturbation has no batched form" in err
    assert "3 run(s) alone: budget.probe_every: the probe reads one model's step" in err
    assert main(["run", str(suite), "--results", str(tmp_path / "r"), "--dry-run", "--batch", "off"]) == 0
    assert "0 run(s) in 0 group(s)" in capsys.readouterr().err


def test_batch_is_not_part_of_a_run_id(tmp_path: Path) -> None:
    ids = {
        batch: [s.run_id for s in expand(load_suite(p), p).specs]
        for batch in ("auto", "off", 3)
        for p in [write_suite(tmp_path / f"{batch}.yaml", **tiny_suite(), batch=batch)]
    }
    unset = write_suite(tmp_path / "unset.yaml", **tiny_suite())
    assert ids["auto"] == ids["off"] == ids[3] == [s.run_id for s in expand(load_suite(unset), unset).specs]


@pytest.mark.parametrize("value", [0, -1, "sometimes", 2.5])
def test_a_bad_batch_in_the_suite_exits_2_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: Any
) -> None:
    suite = write_suite(tmp_path / "tiny.yaml", **tiny_suite(), batch=value)
    assert main(["run", str(suite), "--results", str(tmp_path / "r"), "--dry-run"]) == ExitCode.BAD_INPUT
    err = capsys.readouterr().err
    assert "tiny.yaml" in err
    assert "batch" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("value", ["0", "-2", "many", "2.5"])
def test_a_bad_batch_flag_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    suite = write_suite(tmp_path / "tiny.yaml", **tiny_suite())
    code = main(["run", str(suite), "--results", str(tmp_path / "r"), "--batch", value])
    assert code == ExitCode.BAD_INPUT
    assert "--batch" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_killed_batched_grid_resumes_with_every_cell_exactly_once(ray_session: Any, tmp_path: Path) -> None:
    # Two groups of two seeds: a short one on digits and a long one on MNIST-1D, so that rows land
    # group by group and the kill after the first row finds the second group still training.
    fields = tiny_suite(name="kill", rules=({"name": "sgd"},), seeds=(0, 1), steps=100)
    fields["tasks"][1]["budget"] = {"steps": 4000, "eval_every": 1000}
    suite = write_suite(tmp_path / "kill.yaml", **fields, batch=2)
    results = tmp_path / "results"
    uri = f"sqlite:///{tmp_path}/track.db"
    landed = run_and_kill_after_first_row(
        suite, results, uri, ray_session.address_info["address"], wait_s=300
    )
    assert 1 <= len(landed) < 4, "the kill must land halfway through the grid"

    assert main(["run", str(suite), "--results", str(results), "--tracking-uri", uri]) == 0
    rows = store.read_runs(results, "kill").to_pylist()
    assert len(rows) == 4 == len({r["run_id"] for r in rows})
    assert {r["status"] for r in rows} == {"ok"}
    assert {f"{r['run_id']}.parquet" for r in rows} >= landed
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("kill")
    assert experiment is not None
    children = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`synapsebench.kind` = 'run'"
    )
    assert sorted({c.data.tags["synapsebench.run_id"] for c in children}) == sorted(r["run_id"] for r in rows)
