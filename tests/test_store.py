"""The Parquet store: round trip, atomic files, concurrent writers, skip-done."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from benchmark import store, train
from benchmark.spec import RunSpec
from tests.helpers import make_spec


@pytest.fixture(scope="module")
def trained() -> tuple[RunSpec, train.RunResult]:
    spec = make_spec(steps=20)
    return spec, train.run(spec)


def test_round_trip(tmp_path: Path, trained: tuple[RunSpec, train.RunResult]) -> None:
    spec, result = trained
    path = store.write_run(tmp_path, spec, result)
    assert path.name == f"{spec.run_id}.parquet"
    rows = store.read_runs(tmp_path, spec.suite).to_pylist()
    assert len(rows) == 1
    row = rows[0]
    assert row["run_id"] == spec.run_id
    assert (row["task"], row["rule"], row["seed"], row["status"]) == ("digits_mlp", "sgd", 0, "ok")
    assert dict(row["final"]) == result.final
    assert [p["step"] for p in row["curve"]] == [p.step for p in result.curve]
    assert row["torch_version"]
    assert row["hostname"]
    assert row["package_version"]
    assert row["target_metric"] == "val/accuracy"
    curves = store.read_curves(tmp_path, spec.suite).to_pylist()
    assert {(c["step"], c["key"]) for c in curves} >= {(0, "test/accuracy"), (20, "test/loss")}
    assert store.done_ids(tmp_path, spec.suite) == {spec.run_id}


def test_failed_runs_are_not_done(tmp_path: Path, trained: tuple[RunSpec, train.RunResult]) -> None:
    from benchmark.execute.grid import failed_result

    spec, _ = trained
    store.write_run(tmp_path, spec, failed_result(spec, "boom"))
    assert store.read_runs(tmp_path, spec.suite).column("status").to_pylist() == ["failed"]
    assert store.done_ids(tmp_path, spec.suite) == set()


def test_crash_while_writing_leaves_nothing_that_reads_as_data(
    tmp_path: Path, trained: tuple[RunSpec, train.RunResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, result = trained
    real_write = pq.write_table

    def write_half_then_die(table, where, **kwargs):  # type: ignore[no-untyped-def]
        real_write(table, where, **kwargs)
        where.write(b"garbage")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", write_half_then_die)
    with pytest.raises(OSError, match="disk full"):
        store.write_run(tmp_path, spec, result)
    monkeypatch.undo()
    assert list(tmp_path.rglob("*")) == [] or all(p.is_dir() for p in tmp_path.rglob("*"))
    assert store.read_runs(tmp_path, spec.suite).num_rows == 0


def test_a_killed_writers_temporary_file_is_ignored(
    tmp_path: Path, trained: tuple[RunSpec, train.RunResult]
) -> None:
    spec, result = trained
    store.write_run(tmp_path, spec, result)
    partial = store.runs_dir(tmp_path, spec.suite) / f".{'0' * 16}.abc.tmp"
    partial.write_bytes(b"PAR1 half a file")
    assert store.read_runs(tmp_path, spec.suite).num_rows == 1


def _append_many(results: str, seeds: list[int], barrier: mp.synchronize.Barrier) -> None:  # type: ignore[name-defined]
    spec = make_spec(steps=5, eval_every=5)
    result = train.run(spec)
    barrier.wait()
    for seed in seeds:
        s = spec.model_copy(update={"seed": seed})
        store.write_run(Path(results), s, result)


def test_two_concurrent_appenders_lose_nothing(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    # Overlapping seeds: both processes also write the same runs at the same time.
    procs = [
        ctx.Process(target=_append_many, args=(str(tmp_path), list(range(0, 30)), barrier)),
        ctx.Process(target=_append_many, args=(str(tmp_path), list(range(20, 50)), barrier)),
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    runs = store.read_runs(tmp_path, "test")
    assert runs.num_rows == 50
    assert sorted(runs.column("seed").to_pylist()) == list(range(50))
    assert not [p for p in tmp_path.rglob(".*.tmp")]
