"""A small regression task as a synapsebench plugin (docs/plugins.md).

Data: ``x ~ N(0, I_d)`` and ``y = x·w* + ε`` with ``w* ~ N(0, I_d / d)`` and ``ε ~ N(0, σ²)``,
drawn once from a fixed seed (``d = 20``, ``σ = 0.1``): 1,024 training pairs, of which 256 are held
out once as the validation split (the same for every run), and 256 test pairs.
Model: a linear layer ``d → 1``. Loss: mean squared error.
Target: validation loss ≤ 2σ² (twice the noise floor). Chance: the loss of predicting 0,
``E[y²] = |w*|² + σ² ≈ 1``, what a model that learned nothing scores.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor, nn

import benchmark
from benchmark.tasks import Resources, Target, TaskData, TaskInfo, TaskOptions
from benchmark.tasks.base import holdout, seeded_build
from benchmark.types import Batch

DIM = 20
NOISE = 0.1
DATA_SEED = 1234  # the data set is fixed; a run's seed sets its initialisation and batch order


class RegressionOptions(TaskOptions):
    batch_size: Annotated[int, Field(gt=0)] = 32
    train_size: Annotated[int, Field(gt=256)] = 1024


def _draw(n: int, generator: torch.Generator, w: Tensor) -> tuple[Tensor, Tensor]:
    x = torch.randn(n, DIM, generator=generator)
    return x, x @ w + NOISE * torch.randn(n, 1, generator=generator)


class RegressionData(TaskData):
    """The training pairs as an endless stream of batches; MSE on every split at each evaluation."""

    def __init__(self, options: RegressionOptions, device: torch.device) -> None:
        generator = torch.Generator().manual_seed(DATA_SEED)
        w = torch.randn(DIM, 1, generator=generator) / DIM**0.5
        x, y = _draw(options.train_size, generator, w)
        keep, held = holdout(len(x), 256)
        self.splits = {
            "train": (x[keep].to(device), y[keep].to(device)),
            "val": (x[held].to(device), y[held].to(device)),
            "test": tuple(t.to(device) for t in _draw(256, generator, w)),
        }
        self.batch_size = options.batch_size
        self.device = device

    def train_batches(self, generator: torch.Generator) -> Iterator[Batch]:
        x, y = self.splits["train"]
        while True:
            order = torch.randperm(len(x), generator=generator).to(self.device)
            for start in range(0, len(x) - self.batch_size + 1, self.batch_size):
                idx = order[start : start + self.batch_size]
                yield x[idx], y[idx]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        splits = self.splits.items()
        return {f"{split}/loss": float(nn.functional.mse_loss(model(x), y)) for split, (x, y) in splits}


def _build(options: RegressionOptions, generator: torch.Generator) -> nn.Module:
    return seeded_build(generator, lambda: nn.Linear(DIM, 1))


benchmark.register_task(
    TaskInfo(
        name="noisy_linear_regression",
        description="Linear regression on 20 Gaussian features with noise σ = 0.1 (a plugin's task).",
        options=RegressionOptions,
        test_options={"batch_size": 32},
        build_model=_build,
        load_data=RegressionData,
        loss=nn.functional.mse_loss,
        metrics=("train/loss", "val/loss", "test/loss"),
        target=Target("val/loss", 0.02, "min"),  # 2σ²: twice the noise floor
        chance=1.0,
        eval_every=50,
        resources=Resources(cpus=1),
        validation="256 of the 1,024 training pairs, held out once with a fixed seed",
    )
)
