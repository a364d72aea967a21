"""Leaderboards from the store: selection, ranking, t intervals, divergence and failure counts."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from benchmark import store
from benchmark.cli import main
from benchmark.execute.grid import failed_result
from benchmark.leaderboard import score_runs
from benchmark.result import CurvePoint, RunResult
from tests.conftest import tiny_suite, write_suite
from tests.helpers import make_spec


def _result(
    spec_run_id: str,
    accuracy: float,
    status: str = "ok",
    reach_at: int | None = None,
    extra: dict[str, float] | None = None,
) -> RunResult:
    now = datetime.now(UTC)
    curve = [CurvePoint(0, 0.0, {"test/accuracy": 0.1})]
    if reach_at is not None:
        curve.append(CurvePoint(reach_at, reach_at / 100, {"test/accuracy": 0.99}))
    curve.append(CurvePoint(100, 1.0, {"test/accuracy": accuracy}))
    return RunResult(
        run_id=spec_run_id,
        status=status,  # type: ignore[arg-type]
        steps=100,
        final={"test/accuracy": accuracy, **(extra or {})},
        curve=tuple(curve),
        train_time_s=1.0,
        wall_time_s=1.5,
        device="cpu",
        started_at=now,
        finished_at=now,
        target=("test/accuracy", 0.95, "max"),
    )


@pytest.fixture
def results(tmp_path: Path) -> Path:
    # adamw: accurate, two of three seeds reach the target; sgd: worse, one seed diverged, one failed.
    for seed, acc in enumerate([0.96, 0.97, 0.90]):
        spec = make_spec(rule="adamw", seed=seed, suite="board")
        store.write_run(
            tmp_path, spec, _result(spec.run_id, acc, reach_at=40 + 10 * seed if acc > 0.95 else None)
        )
    for seed, (acc, status) in enumerate([(0.80, "ok"), (0.82, "ok"), (0.10, "diverged")]):
        spec = make_spec(rule="sgd", seed=seed, suite="board")
        store.write_run(tmp_path, spec, _result(spec.run_id, acc, status))
    spec = make_spec(rule="sgd", seed=7, suite="board")
    store.write_run(tmp_path, spec, failed_result(spec, "worker died"))
    return tmp_path


def test_rules_are_ranked_with_intervals_and_counts(results: Path) -> None:
    board = score_runs(store.read_runs(results, "board"))
    assert list(board["rule"]) == ["adamw", "sgd"]
    assert list(board["rank"]) == [1, 2]
    adamw, sgd = board.iloc[0], board.iloc[1]
    assert adamw["mean"] == pytest.approx((0.96 + 0.97 + 0.90) / 3)
    half = stats.t.ppf(0.975, 2) * np.std([0.96, 0.97, 0.90], ddof=1) / np.sqrt(3)
    assert (adamw["ci_low"], adamw["ci_high"]) == pytest.approx((adamw["mean"] - half, adamw["mean"] + half))
    # sgd's only point has a failed seed: it cannot be selected.
    assert (adamw["selected"], sgd["selected"]) == (True, False)
    assert (adamw["n_seeds"], adamw["n_diverged"], adamw["n_failed"]) == (3, 0, 0)
    assert adamw["reached_target"] == 2
    assert adamw["median_steps_to_target"] == 45
    assert (sgd["n_seeds"], sgd["n_diverged"], sgd["n_failed"]) == (3, 1, 1)
    assert sgd["mean"] == pytest.approx((0.80 + 0.82 + 0.10) / 3)


def test_leaderboard_is_reproducible(results: Path) -> None:
    runs = store.read_runs(results, "board")
    pd.testing.assert_frame_equal(score_runs(runs), score_runs(runs))


def test_cli_writes_markdown_and_parquet(results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["leaderboard", "board", "--results", str(results)]) == 0
    markdown = (results / "board" / "leaderboard.md").read_text()
    assert "## digits_mlp" in markdown
    assert markdown.index("`adamw") < markdown.index("`sgd")
    table = pd.read_parquet(results / "board" / "leaderboard.parquet")
    assert len(table) == 2
    assert "leaderboard.md" in capsys.readouterr().out
    assert "(plots/digits_mlp.png)" in markdown
    assert "**Selected on a test metric.**" in markdown  # these rows' target is test/accuracy
    assert (results / "board" / "plots" / "digits_mlp.png").stat().st_size > 1000


def test_task_variants_theory_view_and_implied_metric(tmp_path: Path) -> None:
    # Two widths of one task: two sections. Deviations from theory and probe totals: summarised.
    for width, error in ((8, 0.01), (16, 0.03)):
        for seed in range(3):
            spec = make_spec(rule="sgd", seed=seed, suite="dyn", options={"width": width})
            final = {
                "theory/max_rel_error": error * (1 + seed),
                "theory/sharpness_ratio": 1.0 - 0.1 * seed,
                "theory/u_0": 5.0,  # a reference value, not a deviation
                "metric/run_probes": 10.0,
                "metric/run_kappa": 1.0,
                "metric/run_no_metric_fraction": 0.0,
                "metric/run_cos_psi": 1.0,
            }
            store.write_run(tmp_path, spec, _result(spec.run_id, 0.9, extra=final))
    spec = make_spec(rule="adamw", seed=0, suite="dyn", options={"width": 8})
    final = {"metric/run_probes": 30.0, "metric/run_kappa": 40.0, "metric/run_no_metric_fraction": 0.1}
    store.write_run(tmp_path, spec, _result(spec.run_id, 0.9, extra=final))

    assert main(["leaderboard", "dyn", "--results", str(tmp_path)]) == 0
    board = pd.read_parquet(tmp_path / "dyn" / "leaderboard.parquet")
    assert list(dict.fromkeys(board["task_display"])) == ["digits_mlp[width=8]", "digits_mlp[width=16]"]
    theory = pd.read_parquet(tmp_path / "dyn" / "theory.parquet")
    sgd = theory["rule_display"].str.startswith("sgd")
    sgd8 = theory[(theory["task_display"] == "digits_mlp[width=8]") & sgd]
    assert set(sgd8["quantity"]) == {"theory/max_rel_error", "theory/sharpness_ratio"}
    error = sgd8[sgd8["quantity"] == "theory/max_rel_error"].iloc[0]
    assert (error["median"], error["worst"]) == pytest.approx((0.02, 0.03))
    ratio = sgd8[sgd8["quantity"] == "theory/sharpness_ratio"].iloc[0]
    assert (ratio["median"], ratio["worst"]) == pytest.approx((0.9, 0.8))
    implied = pd.read_parquet(tmp_path / "dyn" / "implied_metric.parquet")
    implied.index = implied["rule_display"].str.partition("[")[0]
    assert implied.loc["sgd", "median_kappa"] == 1.0
    assert implied.loc["adamw", "no_metric_fraction"] == pytest.approx(0.1)
    assert implied.loc["sgd", "probes"] == 60
    markdown = (tmp_path / "dyn" / "leaderboard.md").read_text()
    assert "## digits_mlp[width=16]" in markdown
    assert "(plots/digits_mlp-width=16.png)" in markdown
    assert (tmp_path / "dyn" / "plots" / "digits_mlp-width=16.png").exists()
    assert "## Theory: departure from the closed forms" in markdown
    assert "## Implied metric of each rule" in markdown


def test_show_prints_one_stored_run_and_refuses_an_ambiguous_id(
    results: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_id = store.read_runs(results, "board").column("run_id")[0].as_py()
    assert main(["show", run_id[:8], "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert f"run {run_id}" in out
    assert "test/accuracy" in out
    assert main(["show", "", "--results", str(results)]) == 2  # every run matches the empty prefix
    assert "one stored run" in capsys.readouterr().err


def test_a_suite_file_scopes_the_leaderboard_to_its_current_grid(results: Path) -> None:
    # The store also holds sgd runs; the suite file now lists adamw only, so sgd leaves the board.
    suite = write_suite(
        results / "board.yaml",
        **tiny_suite(
            name="board", tasks=("digits_mlp",), rules=({"name": "adamw"},), seeds=(0, 1, 2), steps=20
        ),
    )
    assert main(["leaderboard", str(suite), "--results", str(results)]) == 0
    board = pd.read_parquet(results / "board" / "leaderboard.parquet")
    assert list(board["rule"]) == ["adamw"]
    assert main(["leaderboard", "board", "--results", str(results)]) == 0  # by name: every stored run
    assert set(pd.read_parquet(results / "board" / "leaderboard.parquet")["rule"]) == {"adamw", "sgd"}
