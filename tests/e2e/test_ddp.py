"""Data-parallel runs (``budget.workers``): DDP through Ray Train, on CPUs with Gloo here."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from mlflow.tracking import MlflowClient

from benchmark import store, train
from benchmark.cli import main
from benchmark.spec import Budget
from tests.conftest import write_suite
from tests.helpers import make_spec

SUITE: dict[str, Any] = {
    "name": "ddp",
    "tasks": [{"name": "digits_mlp", "options": {"width": 16, "batch_size": 32}}],
    "rules": [{"name": "sgd", "hparams": {"lr": 0.1}}, {"name": "weight_perturbation"}],
    "seeds": [0],
    "budget": {"steps": 40, "eval_every": 20, "workers": 2},
}


def _spec(workers: int | None, task: str = "digits_mlp") -> Any:
    options = {"width": 16, "batch_size": 32} if task == "digits_mlp" else {}
    spec = make_spec(task=task, steps=30, eval_every=10, hparams={"lr": 0.1}, options=options)
    steps = 30 if task == "digits_mlp" else 3
    return spec.model_copy(update={"budget": Budget(steps=steps, eval_every=steps, workers=workers)})


def _rank(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        result = train.run(_spec(2), device=torch.device("cpu"))
        curve = [p.metrics.get("train/loss") for p in result.curve]
        # A model with BatchNorm: its running statistics come from each rank's own batches.
        with_bn = train.run(_spec(2, "cifar10_resnet18"), device=torch.device("cpu"))
        record = {"final": result.final, "curve": curve, "batchnorm": with_bn.final}
        Path(out, f"{rank}.json").write_text(json.dumps(record))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_workers_stay_in_sync_and_see_different_batches(tmp_path: Path) -> None:
    mp.spawn(_rank, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1)]
    # Same parameters and statistics on every rank: the same evaluation and (averaged) training loss.
    assert ranks[0] == ranks[1]
    alone = train.run(_spec(None), device=torch.device("cpu"))
    # Worker 0 draws the one-process run's batches; worker 1 its own, so the averaged step differs.
    assert ranks[0]["final"]["test/loss"] != pytest.approx(alone.final["test/loss"], rel=1e-6)
    assert ranks[0]["curve"][-1] < ranks[0]["curve"][0]
    # Examples seen count every rank's batches; steps and passes count one rank's.
    assert ranks[0]["final"]["clock/examples"] == 2 * alone.final["clock/examples"] == 2 * 30 * 32
    assert ranks[0]["final"]["clock/forward_passes"] == alone.final["clock/forward_passes"] == 3 * 30


@pytest.mark.usefixtures("ray_session")
def test_a_two_worker_run_goes_through_ray_train_to_parquet_and_mlflow(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = write_suite(tmp_path / "ddp.yaml", **SUITE)
    results = tmp_path / "results"
    uri = f"sqlite:///{tmp_path}/track.db"
    assert main(["run", str(suite), "--results", str(results), "--tracking-uri", uri]) == 0
    err = capsys.readouterr().err
    assert "skipping weight_perturbation on digits_mlp: budget.workers = 2" in err
    assert "[1/1] ok" in err

    (row,) = store.read_runs(results, "ddp").to_pylist()
    assert row["status"] == "ok"
    assert row["rule"] == "sgd"
    curve = [dict(p["metrics"]) for p in row["curve"]]
    losses = [m["train/loss"] for m in curve if "train/loss" in m]
    assert losses[-1] < losses[0]
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("ddp")
    assert exp is not None
    (run,) = client.search_runs([exp.experiment_id], filter_string="tags.`synapsebench.kind` = 'run'")
    assert run.info.status == "FINISHED"
    assert run.data.tags["synapsebench.run_id"] == row["run_id"]
    assert run.data.metrics["test/accuracy"] == pytest.approx(dict(row["final"])["test/accuracy"])

    # Done means done: a second invocation skips it.
    assert main(["run", str(suite), "--results", str(results), "--tracking-uri", uri]) == 0
    assert "0 run(s) to do, 1 already done" in capsys.readouterr().err


def test_tuning_refuses_workers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite = write_suite(tmp_path / "ddp.yaml", **SUITE)
    assert main(["tune", str(suite), "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "budget.workers" in err
    assert "ddp.yaml" in err


def test_the_probe_needs_one_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    budget = {**SUITE["budget"], "probe_every": 5}
    suite = write_suite(tmp_path / "ddp.yaml", **{**SUITE, "budget": budget})
    assert main(["run", str(suite), "--results", str(tmp_path / "r"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "budget" in err
    assert "probe_every needs one process" in err
