"""Data-parallel runs on Ray Train: one RunSpec trained by ``budget.workers`` DDP processes.

Ray Train's ``TorchTrainer`` places the workers (each with the task's resources: a GPU each for
ImageNet, CPUs elsewhere) and starts their ``torch.distributed`` group, NCCL on GPUs and Gloo on
CPUs. Every worker runs the one training loop, :func:`benchmark.train.run`, which sees the group and
trains data-parallel. Rank 0 writes the run's Parquet file and artifacts, as a grid worker does, so
the driver tracks and scores a data-parallel run like any other.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from benchmark import store, train
from benchmark.execute.grid import node_id
from benchmark.hooks import artifact_hooks
from benchmark.plugins import load_for_run
from benchmark.results_location import Location, as_text, local_folder, parse
from benchmark.spec import RunSpec


def _worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    spec = RunSpec.model_validate(config["spec"])
    load_for_run(spec)
    results = parse(config["results"])
    lead = ray.train.get_context().get_world_rank() == 0
    with local_folder(store.artifacts_dir(results, spec)) as artifacts:
        hooks = artifact_hooks(spec, artifacts if lead else None)
        result = train.run(spec, device=ray.train.torch.get_device(), hooks=hooks)
    if lead:
        store.write_run(results, spec, result, node_id())


def run_ddp(spec: RunSpec, results: Location, resources: dict[str, float]) -> None:
    """Train ``spec`` on ``spec.budget.workers`` Ray Train workers; rank 0 stores the result.

    ``resources`` are one worker's (``cpu``, ``gpu``), as the grid gives a one-process run. Raises
    what the workers raised; Ray must already be connected.
    """
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    gpus = resources.get("gpu", 0.0)
    per_worker = {"CPU": resources.get("cpu", 1.0), **({"GPU": gpus} if gpus else {})}
    scratch = Path(tempfile.mkdtemp(prefix="sb_ddp_"))
    try:
        trainer = TorchTrainer(
            _worker,
            train_loop_config={"spec": spec.model_dump(mode="json"), "results": as_text(results)},
            scaling_config=ScalingConfig(
                num_workers=spec.budget.workers or 1, use_gpu=bool(gpus), resources_per_worker=per_worker
            ),
            run_config=RunConfig(
                name=f"{spec.run_id}-{uuid.uuid4().hex[:8]}",
                storage_path=str(scratch),
                failure_config=FailureConfig(max_failures=0),
            ),
        )
        trainer.fit()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
