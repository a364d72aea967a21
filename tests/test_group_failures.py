"""A crashed group trial: every member it did not finish is recorded failed (so a rerun trains it
again), while a member that ended before the crash keeps its row."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

from benchmark import store, train
from benchmark.execute.grid import GridOutcome, Progress, _Ledger
from benchmark.execute.groups import GROUP_KEY, _GroupCallback
from benchmark.tracking import Tracker
from tests.helpers import make_spec


def test_a_crashed_group_records_its_unfinished_members_failed(tmp_path: Path) -> None:
    specs = [make_spec("digits_mlp", "sgd", seed, steps=10, suite="crash") for seed in range(3)]
    finished = specs[0]
    store.write_run(tmp_path, finished, train.run(finished))  # it ended (diverged or not) before the crash
    tracker = Tracker(f"sqlite:///{tmp_path}/track.db", "crash")
    outcome = GridOutcome(total=3, skipped=0)
    ledger = _Ledger(tracker, tmp_path, outcome, Progress(3, io.StringIO()))
    callback = _GroupCallback(ledger)
    # The fault: Tune reports the group's trial as errored.
    trial = SimpleNamespace(
        config={GROUP_KEY: [s.model_dump(mode="json") for s in specs], "results": str(tmp_path)},
        error_msg="RuntimeError: the worker died",
    )
    callback.on_trial_start(0, [], trial)
    callback.on_trial_error(0, [], trial)
    tracker.flush()

    assert outcome.completed == [finished.run_id]
    assert [s.run_id for s, _ in outcome.failed] == [s.run_id for s in specs[1:]]
    rows = {r["run_id"]: r for r in store.read_runs(tmp_path, "crash").to_pylist()}
    assert rows[finished.run_id]["status"] == "ok"
    assert {rows[s.run_id]["status"] for s in specs[1:]} == {"failed"}
    assert store.done_ids(tmp_path, "crash") == {finished.run_id}, "a rerun trains the failed members"
