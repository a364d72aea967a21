"""MLflow tracking: a run's evaluations show up while it runs, all of them are there when it ends, and a
store that is down or fails never holds up or stops the benchmark."""

from __future__ import annotations

import socket
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from benchmark.tracking import RUN_ID_TAG, Tracker, TrackingWarning
from tests.helpers import make_spec


def _history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("tracked")
    (run,) = client.search_runs([exp.experiment_id], filter_string=f"tags.`{RUN_ID_TAG}` = '{run_id}'")
    return [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]


def test_every_evaluation_reaches_mlflow_and_the_first_while_the_run_is_live(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/track.db"
    spec = make_spec(steps=6000)
    tracker = Tracker(uri, "tracked")
    tracker.start_suite("tracked", 1, "test")
    tracker.start_run(spec)
    points = [(step, 1.0 / (1 + step)) for step in range(0, 6000, 10)]  # 1,200 metrics: more than one batch
    for step, loss in points:
        tracker.log_metrics(spec.run_id, step, {"train/loss": loss, "test/loss": 2 * loss})
    tracker.flush()
    live = _history(uri, spec.run_id, "train/loss")
    assert live[:1] == points[:1], "a live run shows its first evaluation"

    tracker.end_run(spec.run_id, "ok")
    tracker.end_suite(failed=0)
    assert _history(uri, spec.run_id, "train/loss") == points
    assert _history(uri, spec.run_id, "test/loss") == [(s, 2 * v) for s, v in points]


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A tracking URI whose server accepts connections and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


def closed_port_uri() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there any more: connections are refused


def _track_one_run(tracker: Tracker, evaluations: int) -> None:
    """The tracker's calls for one suite of one run, up to the run's end."""
    spec = make_spec(steps=10 * evaluations)
    tracker.start_suite("tracked", 1, "test")
    tracker.start_run(spec)
    for step in range(0, 10 * evaluations, 10):
        tracker.log_metrics(spec.run_id, step, {"train/loss": 1.0})
    tracker.end_run(spec.run_id, "ok")


@pytest.mark.parametrize("server", ["refused", "silent"])
def test_a_down_server_never_holds_up_the_driver_and_warns_once(
    server: str, silent_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    uri = closed_port_uri() if server == "refused" else silent_server
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        tracker = Tracker(uri, "tracked")
        _track_one_run(tracker, evaluations=200)
        assert time.perf_counter() - start < 2.0, "every call returns at once"
        start = time.perf_counter()
        tracker.end_suite(failed=0)
        assert time.perf_counter() - start < 20, "waiting for the store ends with MLflow's HTTP timeout"
    assert not tracker.enabled
    (warning,) = [w for w in caught if issubclass(w.category, TrackingWarning)]
    assert "unreachable" in str(warning.message)


def test_a_store_that_fails_midway_stops_tracking_with_a_warning_not_an_error(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/track.db"
    tracker = Tracker(uri, "tracked")
    tracker.flush()
    (tmp_path / "track.db").unlink()
    (tmp_path / "track.db").mkdir()  # the database file is gone: every query now fails
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _track_one_run(tracker, evaluations=3)
        tracker.end_suite(failed=0)
    assert not tracker.enabled
    (warning,) = [w for w in caught if issubclass(w.category, TrackingWarning)]
    assert uri in str(warning.message)
