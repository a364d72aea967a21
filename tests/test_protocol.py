"""Run identity carries the evaluation protocol; rows of an older protocol are never reused or scored."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from benchmark import store, train
from benchmark.cli import main
from benchmark.result import RunResult
from benchmark.spec import PROTOCOL, RunSpec
from tests.helpers import make_spec


@pytest.fixture(scope="module")
def trained() -> tuple[RunSpec, RunResult]:
    spec = make_spec(steps=10, eval_every=5, suite="proto")
    return spec, train.run(spec)


def _write_as_protocol_1(results: Path, spec: RunSpec, result: RunResult) -> None:
    """A row as synapsebench wrote it before the protocol existed: no protocol column, old hash."""
    old = spec.model_copy(update={"protocol": 1})
    path = store.write_run(results, old, result)
    table = pq.read_table(path)
    pq.write_table(table.drop_columns(["protocol"]), path)


def test_the_protocol_is_part_of_the_run_id() -> None:
    spec = make_spec()
    assert spec.protocol == PROTOCOL
    assert spec.model_copy(update={"protocol": 1}).run_id != spec.run_id
    # What a suite entry does not change is not hashed.
    assert spec.model_copy(update={"entry": 3, "track": "self_tuning"}).run_id == spec.run_id


def test_rows_record_protocol_entry_and_track(tmp_path: Path, trained: tuple[RunSpec, RunResult]) -> None:
    spec, result = trained
    store.write_run(tmp_path, spec.model_copy(update={"entry": 1}), result)
    row = store.read_runs(tmp_path, spec.suite).to_pylist()[0]
    assert (row["protocol"], row["rule_entry"], row["track"]) == (PROTOCOL, 1, "tuned")
    assert row["selection_metric"] == result.selection[0] or row["selection_metric"] == result.target[0]


def test_old_protocol_rows_are_neither_done_nor_read(
    tmp_path: Path, trained: tuple[RunSpec, RunResult]
) -> None:
    spec, result = trained
    _write_as_protocol_1(tmp_path, spec, result)
    assert store.done_ids(tmp_path, spec.suite) == set()
    assert store.read_runs(tmp_path, spec.suite).num_rows == 0
    assert store.read_runs(tmp_path, spec.suite, protocol=None).column("protocol").to_pylist() == [None]
    assert store.stale_runs(tmp_path, spec.suite) == 1


def test_leaderboard_refuses_a_folder_of_old_rows(
    tmp_path: Path, trained: tuple[RunSpec, RunResult], capsys: pytest.CaptureFixture[str]
) -> None:
    spec, result = trained
    _write_as_protocol_1(tmp_path, spec, result)
    assert main(["leaderboard", spec.suite, "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "older evaluation protocol" in err
    assert "--rerun" in err
    assert "--results" in err
    assert not (tmp_path / spec.suite / "leaderboard.md").exists()
