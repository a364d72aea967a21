"""Results on an object store: ``--results s3://bucket/prefix`` against a real S3 server (moto) on
127.0.0.1, with explicit keys and no instance-metadata probe. ``gs://`` takes the same path through
``pyarrow.fs`` but has no loopback server to test against."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from benchmark import store, train
from benchmark.cli import main
from benchmark.results_location import RemoteFolder, parse
from benchmark.spec import RunSpec
from tests.conftest import tiny_suite, write_suite
from tests.helpers import make_spec
from tests.servers import S3_KEYS, s3_server, this_checkout

BUCKET = "synapsebench"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with pytest.MonkeyPatch.context() as env:
        for key, value in S3_KEYS.items():
            env.setenv(key, value)
        with s3_server(BUCKET) as url:
            env.setenv("AWS_ENDPOINT_URL", url)
            yield url


def _keys(endpoint: str, prefix: str = "") -> list[str]:
    fs = pafs.S3FileSystem(
        endpoint_override=endpoint,
        scheme="http",
        access_key=S3_KEYS["AWS_ACCESS_KEY_ID"],
        secret_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"],
        region=S3_KEYS["AWS_DEFAULT_REGION"],
    )
    selector = pafs.FileSelector(f"{BUCKET}/{prefix}".rstrip("/"), recursive=True, allow_not_found=True)
    return sorted(info.path.removeprefix(f"{BUCKET}/") for info in fs.get_file_info(selector) if info.is_file)


@pytest.fixture(scope="module")
def trained() -> tuple[RunSpec, train.RunResult]:
    spec = make_spec(steps=20, suite="uri")
    return spec, train.run(spec)


def test_store_round_trip_on_s3_matches_a_local_folder(
    endpoint: str, tmp_path: Path, trained: tuple[RunSpec, train.RunResult]
) -> None:
    spec, result = trained
    remote = parse(f"s3://{BUCKET}/roundtrip")
    assert isinstance(remote, RemoteFolder)
    store.write_run(remote, spec, result)
    store.write_run(tmp_path, spec, result)
    assert _keys(endpoint, "roundtrip") == [
        f"roundtrip/uri/curves/{spec.run_id}.parquet",
        f"roundtrip/uri/runs/{spec.run_id}.parquet",
    ], "one object per file, no temporaries left behind"
    there, here = store.read_runs(remote, "uri"), store.read_runs(tmp_path, "uri")
    assert there.drop_columns(["hostname"]).equals(here.drop_columns(["hostname"]))
    assert store.read_curves(remote, "uri").equals(store.read_curves(tmp_path, "uri"))
    assert store.done_ids(remote, "uri") == {spec.run_id}
    (found,) = store.find_runs(remote, spec.run_id[:8])
    assert store.read_run(found)["run_id"] == spec.run_id


def test_grid_into_s3_then_skip_done_leaderboard_and_publish(
    endpoint: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], ray_session: Any
) -> None:
    grid = tiny_suite(name="s3", tasks=("digits_mlp",), seeds=(0,))
    suite = write_suite(tmp_path / "s3.yaml", **grid, artifacts=["weight_histogram"])
    results = f"s3://{BUCKET}/res"
    tracking = f"sqlite:///{tmp_path}/track.db"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    # The CLI in its own process, with its own local Ray: its workers write to S3 themselves.
    cmd = [
        sys.executable, "-m", "benchmark", "run", str(suite), "--results", results,
        "--tracking-uri", tracking, "--num-cpus", "2",
    ]  # fmt: skip
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONPATH": this_checkout()}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not any(cwd.iterdir()), "nothing lands in a local folder named after the URI"

    rows = store.read_runs(parse(results), "s3").to_pylist()
    assert len(rows) == 2 == len({r["run_id"] for r in rows})
    assert {r["status"] for r in rows} == {"ok"}
    keys = _keys(endpoint, "res")
    for row in rows:
        assert f"res/s3/runs/{row['run_id']}.parquet" in keys
        assert f"res/s3/artifacts/{row['run_id']}/weight_histogram.png" in keys
    assert {"res/s3/leaderboard.md", "res/s3/leaderboard.parquet", "res/site/index.html"} <= set(keys)
    assert not [k for k in keys if Path(k).name.startswith(".")], "no temporaries"

    assert main(["run", str(suite), "--results", results, "--tracking-uri", tracking]) == 0
    assert "0 run(s) to do, 2 already done" in capsys.readouterr().err

    assert main(["leaderboard", "s3", "--results", results]) == 0
    assert "## digits_mlp" in capsys.readouterr().out
    site = tmp_path / "site"
    assert main(["publish", "s3", "--results", results, "--out", str(site)]) == 0
    assert "digits_mlp" in (site / "s3.html").read_text()

    assert main(["show", rows[0]["run_id"][:10], "--results", results]) == 0
    assert "weight_histogram.png" in capsys.readouterr().out


def test_tune_into_s3_writes_its_trials_and_budget_curve_there(endpoint: str, tmp_path: Path) -> None:
    suite = write_suite(
        tmp_path / "tn.yaml",
        name="tn",
        tasks=[{"name": "digits_mlp", "options": {"width": 16}}],
        rules=[{"name": "sgd", "hparams": {"momentum": 0.9}}],
        seeds=[0],
        budget={"steps": 20, "eval_every": 10},
    )
    results = f"s3://{BUCKET}/tune"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    cmd = [
        sys.executable, "-m", "benchmark", "tune", str(suite), "--studies", "1", "--trials", "2",
        "--results", results, "--tracking-uri", f"sqlite:///{tmp_path}/track.db", "--num-cpus", "2",
    ]  # fmt: skip
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONPATH": this_checkout()}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]

    location = parse(results)
    trials = store.read_runs(location, "tn-tune").to_pylist()
    assert [r["rule"] for r in trials] == ["sgd", "sgd"], "the trials' rows are on S3"
    keys = _keys(endpoint, "tune")
    assert {"tune/tn/tuning.parquet", "tune/tn/tuning.md"} <= set(keys), "the budget curve is on S3"
    assert not [k for k in keys if Path(k).name.startswith(".")], "no temporaries"
    curve = pq.read_table(pa.BufferReader((location / "tn" / "tuning.parquet").read_bytes())).to_pylist()
    assert {(r["rule"], r["k"]) for r in curve} == {("sgd", 1), ("sgd", 2)}
    assert (tmp_path / "tuned" / "tn" / "sgd.yaml").is_file(), "tuned configs stay beside the suite"
    assert [p.name for p in (cwd / ".synapsebench").iterdir()] == ["tn.journal"], "the journal stays local"


def test_unknown_scheme_is_bad_input_never_a_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = write_suite(tmp_path / "u.yaml", **tiny_suite(name="u", tasks=("digits_mlp",), seeds=(0,)))
    monkeypatch.chdir(tmp_path)
    for args in (
        ["run", str(suite), "--results", "nosuch://bucket/res"],
        ["leaderboard", "u", "--results", "nosuch://bucket/res"],
    ):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "--results" in err
        assert "nosuch://bucket/res" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u.yaml"], "nothing written"


def test_uri_results_need_a_tracking_server(
    endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    suite = write_suite(tmp_path / "t.yaml", **tiny_suite(name="t", tasks=("digits_mlp",), seeds=(0,)))
    assert main(["run", str(suite), "--results", f"s3://{BUCKET}/notrack"]) == 2
    assert "--tracking-uri" in capsys.readouterr().err
    assert _keys(endpoint, "notrack") == [], "nothing written"


def test_unreachable_store_is_bad_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key, value in S3_KEYS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    assert main(["leaderboard", "x", "--results", f"s3://{BUCKET}/res"]) == 2
    assert "--results" in capsys.readouterr().err


@contextmanager
def _credentials_enforced(endpoint: str) -> Iterator[None]:
    """Make the loopback server check signatures against its (empty) IAM, as a real store does."""

    def reset(count: str) -> str:
        request = urllib.request.Request(
            f"{endpoint}/moto-api/reset-auth", data=count.encode(), headers={"Content-Type": "text/plain"}
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            return str(json.load(answer)["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"])

    previous = reset("0")
    try:
        yield
    finally:
        reset(previous)


@pytest.mark.parametrize("keys", ["missing", "unknown to the store"])
def test_missing_or_refused_credentials_are_bad_input(
    keys: str,
    endpoint: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if keys == "missing":
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.delenv(key)
    # No fallback to a credentials file either.
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    suite = write_suite(tmp_path / "c.yaml", **tiny_suite(name="c", tasks=("digits_mlp",), seeds=(0,)))
    monkeypatch.chdir(tmp_path)
    results = f"s3://{BUCKET}/nocreds"
    with _credentials_enforced(endpoint):
        for args in (
            ["run", str(suite), "--results", results, "--tracking-uri", f"sqlite:///{tmp_path}/t.db"],
            ["leaderboard", "c", "--results", results],
        ):
            assert main(args) == 2
            err = capsys.readouterr().err
            assert "--results" in err
            assert "credentials" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"], "nothing written"
    assert _keys(endpoint, "nocreds") == [], "nothing written"
