"""Tuning: an equal Optuna budget per rule, written to a tuned-config file that suites reference."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pyarrow.parquet as pq
import pytest
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from benchmark import store
from benchmark.cli import main
from benchmark.execute.studies import CellStudy, make_sampler, open_storage
from benchmark.execute.tune import default_storage
from benchmark.plan import expand
from benchmark.rules import RULES
from benchmark.spec import load_suite
from tests.conftest import write_suite


def _suite(tmp_path: Path, name: str, steps: int, self_tuning: bool = True) -> Path:
    """sgd (momentum fixed: lr and weight decay are searched) and agd (self-tuning) on bias-free digits."""
    rules = [{"name": "sgd", "hparams": {"momentum": 0.9}}, {"name": "agd"}]
    return write_suite(
        tmp_path / f"{name}.yaml",
        name=name,
        tasks=[{"name": "digits_mlp", "options": {"width": 32, "bias": False}}],
        rules=rules if self_tuning else rules[:1],
        seeds=[0],
        budget={"steps": steps, "eval_every": 20},
    )


def _studies(journal: Path) -> dict[str, list[optuna.trial.FrozenTrial]]:
    storage = JournalStorage(JournalFileBackend(str(journal)))
    return {
        s.study_name: optuna.load_study(study_name=s.study_name, storage=storage).get_trials()
        for s in optuna.get_all_study_summaries(storage)
    }


def _steps_to_target(row: dict[str, Any]) -> float:
    reached = [p["step"] for p in row["curve"] if dict(p["metrics"]).get("val/accuracy", 0) >= 0.95]
    return float(min(reached)) if reached else math.inf


@pytest.mark.usefixtures("ray_session")
def test_tune_runs_s_studies_of_k_trials_scores_them_and_writes_the_median_studys_best(
    tmp_path: Path,
) -> None:
    suite = _suite(tmp_path, "tuneme", steps=120)
    results = tmp_path / "results"
    argv = ["tune", str(suite), "--studies", "2", "--trials", "3", "--results", str(results)]
    assert main(argv) == 0

    rows = store.read_runs(results, "tuneme-tune").to_pylist()
    sgd = [r for r in rows if r["rule"] == "sgd"]
    assert len(sgd) == 2 * 3, "S studies of K trials"
    assert {r["seed"] for r in sgd} == {0, 1}, "study s trains on the suite's first seed plus s"
    assert all(json.loads(r["hparams_json"])["momentum"] == 0.9 for r in sgd), "fixed values stay fixed"
    defaults = {**RULES.get("sgd").defaults(), "momentum": 0.9}
    for seed in (0, 1):
        assert sum(json.loads(r["hparams_json"]) == defaults for r in sgd if r["seed"] == seed) == 1, (
            "each study's trial 0 is the rule's defaults"
        )
    trials = _studies(results / "tuneme-tune" / "optuna.journal")
    assert len(trials) == 3, "two sgd studies, and agd's one untuned run"
    points = [
        {(t.params["lr"], t.params["weight_decay"]) for t in ts if t.user_attrs["slot"] > 0}
        for name, ts in sorted(trials.items())
        if "/sgd/qmc/" in name
    ]
    assert [len(p) for p in points] == [2, 2]
    assert not points[0] & points[1], "each study asks its own QMC points"

    (agd,) = [r for r in rows if r["rule"] == "agd"]
    assert agd["steps"] == 180, "self-tuning: untuned, at 1.5x the budget"
    assert not (tmp_path / "tuned" / "tuneme" / "agd.yaml").exists()

    # The score: per study the fewest steps to the target, then the median (the lower, for S = 2).
    per_study = {seed: min(_steps_to_target(r) for r in sgd if r["seed"] == seed) for seed in (0, 1)}
    defaults_only = {
        seed: _steps_to_target(
            next(r for r in sgd if r["seed"] == seed and json.loads(r["hparams_json"]) == defaults)
        )
        for seed in (0, 1)
    }
    scores = pq.read_table(results / "tuneme" / "tuning.parquet").to_pylist()
    got = {(s["rule"], s["k"]): s["steps_to_target"] for s in scores}
    assert got[("sgd", 3)] == min(per_study.values())
    assert got[("sgd", 1)] == min(defaults_only.values()), "k = 1 scores the defaults alone"
    assert got[("agd", 1)] == _steps_to_target(agd)
    assert "| digits_mlp | tuned | sgd |" in (results / "tuneme" / "tuning.md").read_text()

    tuned = yaml.safe_load((tmp_path / "tuned" / "tuneme" / "sgd.yaml").read_text())
    cell = tuned["tasks"]["digits_mlp"]
    median_seed = sorted(
        (0, 1),
        key=lambda s: (per_study[s], -max(dict(r["final"])["val/accuracy"] for r in sgd if r["seed"] == s)),
    )[0]
    best = max((r for r in sgd if r["seed"] == median_seed), key=lambda r: dict(r["final"])["val/accuracy"])
    assert cell["hparams"] == json.loads(best["hparams_json"]), "the median study's best trial"
    assert cell["value"] == pytest.approx(dict(best["final"])["val/accuracy"])
    assert cell["provenance"]["sampler"] == "qmc"
    assert cell["provenance"]["studies"] == 2
    assert cell["provenance"]["asha"] is False

    using = write_suite(
        tmp_path / "using.yaml",
        name="tuneme",
        tasks=[{"name": "digits_mlp", "options": {"width": 32, "bias": False}}],
        rules=[{"name": "sgd", "tuned": "tuned/tuneme/sgd.yaml"}],
        seeds=[0, 1],
        budget={"steps": 20},
    )
    specs = expand(load_suite(using), using).specs
    assert {s.hparams["lr"] for s in specs} == {cell["hparams"]["lr"]}
    assert main(["run", str(using), "--results", str(results)]) == 0
    board = (results / "tuneme" / "leaderboard.md").read_text()
    assert "## Tuning: steps to the validation target by trial budget" in board, "the board shows the curve"


def test_tune_prints_every_cell_it_leaves_out_with_its_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = write_suite(
        tmp_path / "skipme.yaml",
        name="skipme",
        tasks=[{"name": "digits_mlp"}],
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
    assert not results.exists(), "bad input writes nothing"


def _finished(journal: Path) -> int:
    if not journal.is_file():
        return 0
    return sum(t.state == TrialState.COMPLETE for ts in _studies(journal).values() for t in ts)


def _trial_set(journal: Path) -> dict[str, list[tuple[int, str]]]:
    """Per study, the (slot, hyperparameters) of the trials that spent budget, in slot order."""
    return {
        name: sorted(
            (t.user_attrs["slot"], json.dumps(t.user_attrs["hparams"], sort_keys=True))
            for t in trials
            if t.state == TrialState.COMPLETE
        )
        for name, trials in _studies(journal).items()
    }


def test_killed_tune_reruns_into_the_trial_set_of_an_unbroken_run(ray_session: Any, tmp_path: Path) -> None:
    suite = _suite(tmp_path, "resume", steps=200, self_tuning=False)
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    journal = killed / "resume-tune" / "optuna.journal"
    address = ray_session.address_info["address"]
    argv = ["tune", str(suite), "--studies", "2", "--trials", "3", "--address", address]
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmark", *argv, "--results", str(killed), "--out", str(killed / "tuned")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300  # generous: a busy machine starts the first trial slowly
    while _finished(journal) < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    states = [t.state for ts in _studies(journal).values() for t in ts]
    assert TrialState.COMPLETE in states, "the kill must land after a trial finished"
    assert TrialState.RUNNING in states, "and while others were running"

    assert main([*argv, "--results", str(killed), "--out", str(killed / "tuned")]) == 0
    assert main([*argv, "--results", str(whole), "--out", str(whole / "tuned")]) == 0
    resumed, unbroken = _trial_set(journal), _trial_set(whole / "resume-tune" / "optuna.journal")
    assert resumed == unbroken, "the rerun continues the same studies to the same trials"
    assert sorted(len(trials) for trials in unbroken.values()) == [3, 3]
    interrupted = [t for ts in _studies(journal).values() for t in ts if t.user_attrs.get("interrupted")]
    assert interrupted, "the trials the kill left running are marked, and asked again"
    assert all(t.state == TrialState.FAIL for t in interrupted)
    tuned = [yaml.safe_load((folder / "tuned" / "sgd.yaml").read_text()) for folder in (killed, whole)]
    assert [t["tasks"]["digits_mlp"]["hparams"] for t in tuned] == [
        tuned[1]["tasks"]["digits_mlp"]["hparams"]
    ] * 2


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        (["--sampler", "grid"], "--sampler"),
        (["--studies", "0"], "--studies"),
        (["--trials", "0"], "--trials"),
        (["--storage", "postgresql://u:p@127.0.0.1:1/x"], "--storage"),
    ],
)
def test_bad_tuning_input_exits_2_naming_the_flag_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], field: str
) -> None:
    suite = _suite(tmp_path, "bad", steps=20)
    results = tmp_path / "results"
    assert main(["tune", str(suite), "--results", str(results), *flags]) == 2
    err = capsys.readouterr().err
    assert f"{field}: expected" in err
    assert ":p@" not in err, "a password is never printed"
    assert not results.exists()
    assert not (tmp_path / "tuned").exists()


@pytest.mark.usefixtures("ray_session")
def test_asha_stops_trials_that_a_rerun_does_not_take_for_pending(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = _suite(tmp_path, "asha", steps=200, self_tuning=False)
    results = tmp_path / "results"
    argv = ["tune", str(suite), "--studies", "1", "--trials", "6", "--asha", "--results", str(results)]
    assert main(argv) == 0
    assert "ASHA early stopping on" in capsys.readouterr().err, "ASHA is logged"
    (trials,) = _studies(results / "asha-tune" / "optuna.journal").values()
    stopped = [t for t in trials if t.user_attrs["status"] == "stopped"]
    assert stopped, "ASHA stopped some trials"
    assert {t.state for t in stopped} == {TrialState.PRUNED}
    tuned = yaml.safe_load((tmp_path / "tuned" / "asha" / "sgd.yaml").read_text())
    assert tuned["tasks"]["digits_mlp"]["provenance"]["asha"] is True

    assert main(argv) == 0
    assert "6 trials, 0 trial(s) to run" in capsys.readouterr().err, "stopped trials are not pending"
    (again,) = _studies(results / "asha-tune" / "optuna.journal").values()
    assert len(again) == len(trials) == 6


def test_studies_default_to_a_journal_under_the_results_or_a_local_one_beside_a_results_uri() -> None:
    assert default_storage(Path("res"), "smoke") == str(Path("res/smoke-tune/optuna.journal"))
    assert default_storage("s3://bucket/res", "smoke") == str(Path(".synapsebench/smoke.journal"))
    assert default_storage(Path("s3://bucket/res"), "smoke") == str(Path(".synapsebench/smoke.journal"))


def test_a_journal_line_torn_by_a_kill_does_not_break_the_next_tune(tmp_path: Path) -> None:
    journal = tmp_path / "studies.journal"
    study = optuna.create_study(storage=open_storage(str(journal)), study_name="s")
    study.enqueue_trial({"x": 1.0})
    with journal.open("ab") as fh:  # fault injection: a kill in the middle of Optuna's append
        fh.write(b'{"op_code": 5, "worker_id": "w", "study_id": 0, "datetime_st')
    again = optuna.load_study(storage=open_storage(str(journal)), study_name="s")
    again.enqueue_trial({"x": 2.0})
    reread = optuna.load_study(storage=open_storage(str(journal)), study_name="s")
    assert [t.system_attrs["fixed_params"] for t in reread.get_trials()] == [{"x": 1.0}, {"x": 2.0}]


def test_resumed_study_asks_the_points_of_an_unbroken_one_after_any_kill(tmp_path: Path) -> None:
    """Kills between trials, between an ask and its parameters, and of asked-again trials: the slots end
    with the same points (Optuna's QMC counter runs ahead of the slots after a kill)."""
    space = dict(RULES.get("sgd").search_space)
    defaults = {k: v for k, v in RULES.get("sgd").defaults().items() if k in space}

    def study(name: str, storage: Any) -> CellStudy:
        return CellStudy(storage, name, make_sampler("qmc", 1), "maximize", space, defaults, trials=6)

    def finish(cell: CellStudy) -> list[tuple[int, str]]:
        while cell.left > 0:
            trial, _ = cell.ask()
            cell.tell(trial, TrialState.COMPLETE, 1.0, {})
        return sorted(
            (t.user_attrs["slot"], json.dumps(t.user_attrs["hparams"], sort_keys=True))
            for t in cell.study.get_trials()
            if t.state == TrialState.COMPLETE
        )

    unbroken = finish(study("whole", open_storage(str(tmp_path / "whole.journal"))))
    journal = str(tmp_path / "killed.journal")
    first = study("killed", open_storage(journal))
    trial, _ = first.ask()
    first.tell(trial, TrialState.COMPLETE, 1.0, {})
    first.ask(), first.ask()  # left running by the kill
    torn = first.study.ask()  # an ask the kill cut short: a point drawn, one parameter stored, no slot
    torn.suggest_float("lr", 1e-4, 1.0, log=True)
    second = study("killed", open_storage(journal))
    second.ask()  # an asked-again trial, killed again
    assert finish(study("killed", open_storage(journal))) == unbroken
