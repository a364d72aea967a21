"""Tuning: an equal Optuna budget per rule, written to a tuned-config file that suites reference."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from benchmark import store
from benchmark.cli import main
from benchmark.plan import expand
from benchmark.spec import load_suite
from tests.conftest import tiny_suite, write_suite


@pytest.mark.usefixtures("ray_session")
def test_tune_writes_the_best_trial_and_a_suite_can_use_it(tmp_path: Path) -> None:
    suite_dict = tiny_suite(
        name="tuneme", tasks=("digits_mlp",), rules=({"name": "sgd", "hparams": {"momentum": 0.9}},), steps=20
    )
    suite = write_suite(tmp_path / "tuneme.yaml", **suite_dict)
    results = tmp_path / "results"
    assert main(["tune", str(suite), "--trials", "3", "--results", str(results)]) == 0

    trials = store.read_runs(results, "tuneme-tune").to_pylist()
    assert len(trials) == 3, "every rule gets exactly the trial budget"
    assert {t["seed"] for t in trials} == {0}
    assert all(yaml.safe_load(t["hparams_json"])["momentum"] == 0.9 for t in trials), (
        "fixed values stay fixed"
    )
    best = max(trials, key=lambda t: dict(t["final"])["val/accuracy"])

    tuned = yaml.safe_load((tmp_path / "tuned" / "tuneme" / "sgd.yaml").read_text())
    assert tuned["rule"] == "sgd"
    cell = tuned["tasks"]["digits_mlp"]
    assert cell["hparams"] == yaml.safe_load(best["hparams_json"])
    assert cell["value"] == pytest.approx(dict(best["final"])["val/accuracy"])
    assert cell["trials"] == 3

    suite_dict["rules"] = [{"name": "sgd", "tuned": "tuned/tuneme/sgd.yaml"}]
    using = write_suite(tmp_path / "using.yaml", **suite_dict)
    specs = expand(load_suite(using), using).specs
    assert {s.hparams["lr"] for s in specs} == {cell["hparams"]["lr"]}
    assert len(specs) == 2


def test_tune_prints_every_cell_it_leaves_out_with_its_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = write_suite(
        tmp_path / "skipme.yaml",
        name="skipme",
        tasks=[{"name": "digits_mlp"}, {"name": "sparse_signal"}],
        rules=[
            {"name": "agd"},
            {"name": "sgd", "hparams": {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0}},
        ],
        seeds=[0],
        budget={"steps": 10},
    )
    results = tmp_path / "results"
    assert main(["tune", str(suite), "--results", str(results)]) == 2, "nothing is left to tune"
    err = capsys.readouterr().err
    assert "skipping agd on digits_mlp: AGD supports only 2-D" in err, "the planner's drop, as `run` says"
    assert "skipping sgd on digits_mlp: the suite fixes every searchable hyperparameter" in err
    assert "skipping sgd on sparse_signal: the suite fixes every searchable hyperparameter" in err
    assert "skipping agd on sparse_signal: a self-tuning rule" in err
    assert not results.exists(), "bad input writes nothing"
