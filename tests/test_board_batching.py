"""The board compares time only between runs batched alike, and marks entries batched otherwise."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pandas as pd

from benchmark import store
from benchmark.cli import main
from tests.helpers import make_spec
from tests.test_leaderboard import _result


def test_entries_batched_unlike_the_others_are_marked(tmp_path: Path) -> None:
    for rule, batch_size in (("adamw", 3), ("sgd", 1), ("adam", 1)):
        for seed in range(3):
            spec = make_spec(rule=rule, seed=seed, suite="board")
            result = dataclasses.replace(_result(spec.run_id, 0.9 + seed / 100), batch_size=batch_size)
            store.write_run(tmp_path, spec, result)
    assert main(["leaderboard", "board", "--results", str(tmp_path)]) == 0

    table = pd.read_parquet(tmp_path / "board" / "leaderboard.parquet").set_index("rule")
    assert table.loc["adamw", "batch_size"] == "3"
    assert table.loc["sgd", "batch_size"] == table.loc["adam", "batch_size"] == "1"
    markdown = (tmp_path / "board" / "leaderboard.md").read_text()
    ranked = [line for line in markdown.splitlines() if re.match(r"\| \d+ \| `", line)]
    rows = {line.split("`")[1].split("[")[0]: line for line in ranked}
    assert "†" in rows["adamw"].split("|")[-3]
    assert "†" not in rows["sgd"]
    assert "†" not in rows["adam"]
    assert "† Batched differently from the others" in markdown


def test_rows_stored_before_batching_count_as_alone(tmp_path: Path) -> None:
    spec = make_spec(rule="sgd", suite="board")
    store.write_run(tmp_path, spec, _result(spec.run_id, 0.9))
    row = store.read_runs(tmp_path, "board").drop_columns(["batch_size"])
    from benchmark.leaderboard import score_runs

    assert score_runs(row)["batch_size"].tolist() == ["1"]
