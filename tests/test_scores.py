"""Leaderboard statistics on synthetic store rows: coverage, selection on validation, cross-task scores."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from scipy import stats

from benchmark.leaderboard import write_leaderboard
from benchmark.leaderboard.intervals import SIGNIFICANCE_RULE, paired_p_value, t_interval, t_intervals
from benchmark.leaderboard.score import score_runs
from benchmark.leaderboard.suite_scores import TAUS, Dropped, integrated_scores, profile, score_suite
from benchmark.store import RUN_SCHEMA

PROTOCOL_2_COLUMNS = (
    "selection_metric",
    "selection_mode",
    "chance",
    "theory",
    "track",
    "rule_entry",
    "protocol",
)
"""Row columns that rows written before validation splits lack."""


def row(
    task: str = "digits_mlp",
    rule: str = "sgd",
    seed: int = 0,
    lr: float = 0.1,
    val: float = 0.5,
    test: float = 0.5,
    status: str = "ok",
    entry: int = 0,
    track: str = "tuned",
    theory: bool = False,
    chance: float = 0.1,
    reach_at: int | None = None,
    target: float = 0.9,
    hparams: dict[str, Any] | None = None,
    selection: tuple[str, str] = ("val/accuracy", "max"),
) -> dict[str, Any]:
    """One stored run row: ``val``/``test`` final accuracies; the target is met at step ``reach_at``."""
    hp = {"lr": lr, **(hparams or {})}
    shown = ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(hp.items()))
    curve = [
        {
            "step": s,
            "train_time_s": s / 100,
            "metrics": [("val/accuracy", got), ("clock/forward_passes", 3.0 * s)],
        }
        for s, got in (
            (0, chance),
            (50, target if reach_at == 50 else val),
            (100, target if reach_at else val),
        )
    ]
    now = datetime(2026, 1, 1, tzinfo=UTC)
    return {
        "run_id": f"{task}-{rule}-{entry}-{shown}-{seed}",
        "suite": "s",
        "task": task,
        "task_options_json": "{}",
        "rule": rule,
        "rule_display": f"{rule}[{shown}]",
        "hparams_json": json.dumps(hp),
        "seed": seed,
        "budget_steps": 100,
        "eval_every": 50,
        "target_metric": "val/accuracy",
        "target_value": target,
        "target_mode": "max",
        "status": status,
        "error": "worker died" if status == "failed" else None,
        "steps": 100,
        "final": []
        if status == "failed"
        else [("val/accuracy", val), ("test/accuracy", test), ("val/loss", 1 - val)],
        "curve": [] if status == "failed" else curve,
        "train_time_s": 1.0,
        "wall_time_s": 1.0,
        "started_at": now,
        "finished_at": now,
        "selection_metric": selection[0],
        "selection_mode": selection[1],
        "chance": chance,
        "theory": theory,
        "track": track,
        "rule_entry": entry,
    }


def table(rows: list[dict[str, Any]], without: tuple[str, ...] = ()) -> pa.Table:
    """Rows as the store reads them (less the columns in ``without``, as rows written before them)."""
    schema = pa.schema([field for field in RUN_SCHEMA if field.name not in without])
    return pa.Table.from_pylist(
        [{k: v for k, v in r.items() if k not in without} for r in rows], schema=schema
    )


# Per-task intervals ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 5, 10])
def test_the_95_percent_interval_covers_a_known_mean_at_least_93_percent_of_the_time(n: int) -> None:
    mean = 1.7
    low, high = t_intervals(np.random.default_rng(20).normal(mean, 2.0, size=(4000, n)))
    assert np.mean((low <= mean) & (mean <= high)) >= 0.93


def test_the_interval_is_students_t() -> None:
    values = np.array([0.96, 0.97, 0.90])
    half = stats.t.ppf(0.975, 2) * values.std(ddof=1) / math.sqrt(3)
    assert t_interval(values) == pytest.approx((values.mean() - half, values.mean() + half))
    assert all(math.isnan(v) for v in t_interval(np.array([0.5, math.nan])))
    assert t_interval(np.array([0.5, 0.5])) == (0.5, 0.5)


def test_the_paired_test_is_a_one_sided_paired_t_test() -> None:
    a = {0: 0.9, 1: 0.8, 2: 0.85, 3: 0.7}
    b = {0: 0.7, 1: 0.75, 2: 0.8, 5: 0.1}  # seed 5 is not shared
    p, n = paired_p_value(a, b, "max")
    expected = stats.ttest_rel([0.9, 0.8, 0.85], [0.7, 0.75, 0.8], alternative="greater").pvalue
    assert (p, n) == (pytest.approx(expected), 3)
    assert paired_p_value(b, a, "min")[0] == pytest.approx(expected)


# Selection on validation ----------------------------------------------------------------------------


def test_every_selection_follows_validation_where_test_disagrees() -> None:
    rng = np.random.default_rng(0)
    rows, lrs = [], [0.001, 0.01, 0.1, 1.0]
    for task in ("digits_mlp", "mnist1d_mlp"):
        for entry, (rule, momentum) in enumerate((("sgd", 0.0), ("sgd", 0.9), ("adamw", 0.0))):
            for lr in lrs:
                val_center, test_center = rng.uniform(0.3, 0.9, size=2)
                hp = {"momentum": momentum} if rule == "sgd" else {}
                for seed in range(3):
                    v, t = val_center + rng.normal(0, 0.01), test_center + rng.normal(0, 0.01)
                    rows.append(row(task, rule, seed, lr, v, t, entry=entry, hparams=hp))
    board = score_runs(table(rows))
    frame = pd.DataFrame(rows)
    frame["val"] = [dict(f)["val/accuracy"] for f in frame["final"]]
    frame["test"] = [dict(f)["test/accuracy"] for f in frame["final"]]
    means = frame.groupby(["task", "rule_entry", "rule_display"])[["val", "test"]].mean()
    disagree = 0
    for (task, entry), points in means.groupby(level=[0, 1]):
        chosen = board[(board["task"] == task) & (board["entry"] == str(entry)) & board["selected"]]
        assert len(chosen) == 1  # one per suite entry: sgd listed twice gets two
        assert chosen["rule_display"].iloc[0] == points["val"].idxmax()[2]
        assert chosen["val_mean"].iloc[0] == pytest.approx(points["val"].max())
        assert chosen["mean"].iloc[0] == pytest.approx(points.loc[points["val"].idxmax(), "test"])
        disagree += points["val"].idxmax() != points["test"].idxmax()
    assert disagree >= 2  # the rows do put validation and test at odds
    assert set(board.loc[board["selected"] & (board["rule"] == "sgd"), "entry_label"]) == {
        "sgd[momentum=0]",
        "sgd[momentum=0.9]",
    }


def test_a_failed_seed_makes_a_point_unselectable_nan_ranks_last_ties_go_to_the_smaller_lr() -> None:
    rows = [row(lr=1.0, seed=s, val=0.99, test=0.99) for s in range(2)]
    rows.append(row(lr=1.0, seed=2, status="failed"))  # the best point on validation, but a seed failed
    rows += [row(lr=0.5, seed=s, val=[0.7, math.nan, 0.7][s]) for s in range(3)]  # NaN mean
    rows += [row(lr=lr, seed=s, val=0.6, test=t) for lr, t in ((0.3, 0.2), (1e-5, 0.1)) for s in range(3)]
    board = score_runs(table(rows))
    assert board.loc[board["selected"], "rule_display"].tolist() == ["sgd[lr=1e-05]"]
    # Unselectable points follow, by validation: the failed-seed point, then the NaN mean last.
    assert board["rule_display"].tolist() == ["sgd[lr=1e-05]", "sgd[lr=1]", "sgd[lr=0.3]", "sgd[lr=0.5]"]
    assert board["rank"].tolist() == [1, 2, 3, 4]


def test_without_selection_columns_the_target_selects() -> None:
    rows = [row(lr=lr, seed=s, val=v, test=1 - v) for lr, v in ((0.1, 0.8), (0.2, 0.6)) for s in range(2)]
    board = score_runs(table(rows, without=PROTOCOL_2_COLUMNS))
    chosen = board[board["selected"]].iloc[0]
    assert (chosen["rule_display"], chosen["selection_metric"], chosen["metric"]) == (
        "sgd[lr=0.1]",
        "val/accuracy",
        "test/accuracy",
    )
    assert (chosen["track"], chosen["entry_label"], bool(chosen["theory"])) == ("tuned", "sgd", False)


def test_a_declared_selection_metric_chooses_and_the_best_is_tested_against_the_others() -> None:
    # Selected by validation loss (lower is better); the board reports test accuracy and the verdict.
    rows = [
        row("sparse_signal", "sgd", s, 0.1, 0.9 + 0.001 * s, 0.9, selection=("val/loss", "min"))
        for s in range(4)
    ]
    rows += [
        row("sparse_signal", "eg", s, 0.1, 0.5 + 0.01 * s, 0.5, entry=1, selection=("val/loss", "min"))
        for s in range(4)
    ]
    rows += [
        row(
            "sparse_signal",
            "adamw",
            s,
            0.1,
            0.89 + 0.02 * (s % 2),
            0.9,
            entry=2,
            selection=("val/loss", "min"),
        )
        for s in range(4)
    ]
    board = score_runs(table(rows)).set_index("rule")
    assert board.loc["sgd", "selection_metric"] == "val/loss"
    assert board.loc["sgd", "val_mean"] == pytest.approx(1 - 0.9015)
    assert board.loc["sgd", "vs_best"] == "best"
    assert board.loc["eg", "vs_best"].startswith("the best beats `eg` (p = ")
    assert board.loc["adamw", "vs_best"] == "not separated (4 seeds)"


# Cross-task scores ----------------------------------------------------------------------------------


def test_the_integrated_score_is_algoperfs_normalised_area() -> None:
    # A is fastest on one task and 2x slower on the other, B the reverse, C never reaches the target.
    times = np.array([[100.0, 200.0], [200.0, 100.0], [math.inf, math.inf]])
    assert integrated_scores(times) == pytest.approx([2.5 / 3, 2.5 / 3, 0.0])
    rho = profile(times)  # the plotted curve: ½ below τ = 2, 1 from 2 on, for A and B
    assert rho[0, TAUS < 2].tolist() == [0.5] * int((TAUS < 2).sum())
    assert rho[1, TAUS >= 2].min() == 1.0
    assert integrated_scores(np.array([[1.0, 1.0], [5.0, 5.0]])) == pytest.approx([1.0, 0.0])


def _suite_rows() -> list[dict[str, Any]]:
    """sgd reaches every target at step 50, adamw at 100; adamw's test is higher; agd (self-tuning)
    runs one task; eg is dropped from mnist1d_mlp; saxe_modes is a theory task."""
    rows = []
    for task in ("digits_mlp", "mnist1d_mlp", "cifar_cnn"):
        for s in range(3):
            rows.append(row(task, "sgd", s, val=0.8, test=0.5 + 0.01 * s, reach_at=50))
            rows.append(row(task, "adamw", s, entry=1, val=0.85, test=0.9 - 0.01 * s, reach_at=100))
            if task != "mnist1d_mlp":
                rows.append(row(task, "eg", s, entry=2, val=0.7, test=0.5 + 0.01 * s))
    rows += [
        row("digits_mlp", "agd", s, None, entry=3, track="self_tuning", test=0.7, reach_at=50)
        for s in range(3)
    ]
    rows += [row("saxe_modes", "sgd", s, theory=True, test=0.99, reach_at=50) for s in range(3)]
    return rows


def test_cross_task_scores_per_track() -> None:
    runs = table(_suite_rows())
    board = score_runs(runs)
    dropped = [
        Dropped("mnist1d_mlp", "eg", "no biases allowed"),
        Dropped("cifar_cnn", "agd", "no", "self_tuning"),
    ]
    scores = score_suite(runs, board, dropped, resamples=200)
    assert scores.theory_tasks == ["saxe_modes"]
    summary = scores.summary.set_index("entry_label")
    assert summary.loc["sgd", "track"] == "tuned"
    assert summary.loc["agd", "track"] == "self_tuning"
    # Profile: sgd fastest everywhere; adamw 2x slower (within τ for τ ≥ 2); eg never reaches.
    assert summary.loc["sgd", "integrated"] == pytest.approx(1.0)
    assert summary.loc["adamw", "integrated"] == pytest.approx(2 / 3)
    assert summary.loc["eg", "integrated"] == 0.0
    assert summary.loc["sgd", "n_tasks"] == 3
    # agd: alone in its track, fastest on digits_mlp, dropped from cifar_cnn.
    assert (summary.loc["agd", "n_tasks"], summary.loc["agd", "n_reached"]) == (2, 1)
    assert summary.loc["agd", "integrated"] == pytest.approx(0.5)
    # Normalised: chance 0.1, best = adamw's mean 0.89 on every task.
    sgd = (np.array([0.5, 0.51, 0.52]) - 0.1) / (0.89 - 0.1)
    assert summary.loc["sgd", "iqm"] == pytest.approx(stats.trim_mean(np.tile(sgd, 3), 0.25))
    assert summary.loc["sgd", "iqm_low"] <= summary.loc["sgd", "iqm"] <= summary.loc["sgd", "iqm_high"]
    cells = scores.cells.set_index(["entry_label", "task_display"])
    assert cells.loc[("eg", "mnist1d_mlp"), "why"] == "dropped: no biases allowed"
    assert cells.loc[("eg", "mnist1d_mlp"), "time_to_target"] == math.inf
    assert cells.loc[("eg", "mnist1d_mlp"), "score"] == 0.0
    assert cells.loc[("sgd", "digits_mlp"), "clock"] == "clock/forward_passes"
    assert cells.loc[("sgd", "digits_mlp"), "time_to_target"] == 150.0
    assert "saxe_modes" not in set(scores.cells["task_display"])


def test_probability_of_improvement_and_the_significance_rule() -> None:
    scores = score_suite(table(_suite_rows()), score_runs(table(_suite_rows())), resamples=200)
    pairs = scores.improvement.set_index(["x", "y"])
    assert pairs.loc[("adamw", "sgd"), "probability"] == 1.0  # every adamw run beats every sgd run
    assert pairs.loc[("adamw", "sgd"), "verdict"].startswith("`adamw` beats `sgd` (p = ")
    # eg matches sgd seed for seed where it ran, and scores 0 where it was not run.
    eg = pairs.loc[("eg", "sgd")]
    assert eg["probability"] == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    assert eg["low"] <= eg["probability"] <= eg["high"]
    assert eg["verdict"].startswith("`sgd` beats `eg` (p = ")  # eg scores 0 on the task it did not run


def test_the_board_shows_selected_points_the_rule_and_the_cross_task_section(tmp_path: Path) -> None:
    runs = table(_suite_rows())
    board = score_runs(runs)
    dropped = [Dropped("mnist1d_mlp", "eg", "no biases allowed")]
    write_leaderboard(
        tmp_path, "s", board, runs.num_rows, scores=score_suite(runs, board, dropped, resamples=100)
    )
    markdown = (tmp_path / "leaderboard.md").read_text()
    assert SIGNIFICANCE_RULE in markdown
    digits = markdown[markdown.index("## digits_mlp") : markdown.index("## mnist1d_mlp")]
    assert "Selected on `val/accuracy` (higher is better); reported on `test/accuracy`" in digits
    adamw = next(line for line in digits.splitlines() if line.startswith("| 1 | `adamw"))
    assert "| 0.85 | 0.89 | [" in adamw  # validation, then test
    assert "| 300 (3/3) |" in adamw  # forward passes to target: step 100 × 3
    theory = markdown[markdown.index("## saxe_modes") :]
    assert "left out of the cross-task scores" in theory
    suite = markdown[markdown.index("## Across tasks") :]
    assert "Theory tasks, shown above, are not scored here: `saxe_modes`." in suite
    assert "### Track: self_tuning" in suite
    assert "- `eg` on mnist1d_mlp: dropped: no biases allowed" in suite
    assert "| `adamw` | `sgd` | 1 [1, 1] | `adamw` beats `sgd` (p = " in suite
    assert (tmp_path / "plots" / "performance_profile.png").stat().st_size > 5000
    stored = pd.read_parquet(tmp_path / "leaderboard.parquet")
    assert {"selected", "val_mean", "val_ci_low", "mean", "ci_high"} <= set(stored.columns)
    assert len(stored) == len(board)


def test_rows_without_the_new_columns_are_scored_on_one_track_without_normalised_scores() -> None:
    old = PROTOCOL_2_COLUMNS
    rows = [
        row(task, rule, s, entry=e, reach_at=50)
        for task in ("a", "b")
        for e, rule in enumerate(("sgd", "eg"))
        for s in range(2)
    ]
    scores = score_suite(table(rows, without=old), score_runs(table(rows, without=old)), resamples=50)
    assert scores.summary["track"].tolist() == ["tuned", "tuned"]
    assert scores.summary["integrated"].tolist() == [1.0, 1.0]
    assert scores.unnormalised_tasks == ["a", "b"]  # no chance value stored
    assert scores.summary["iqm"].isna().all()
    assert scores.improvement.empty
