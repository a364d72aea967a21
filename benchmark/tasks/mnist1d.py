"""MNIST-1D with an MLP: a small, offline, hard-enough classification task.

Data: Greydanus & Kolter's MNIST-1D, generated locally by the ``mnist1d`` package from its built-in
templates (never downloaded): 40 features, 10 classes, 80/20 train/test split, data seed 42.
Model: an MLP, ``width`` units in each of ``depth`` hidden layers, with ReLU (or ``activation:
scaled_relu``, sqrt(2)·ReLU as in the AGD paper's FCN).
Target: 0.6 test accuracy (the paper's MLP reaches about 68%; logistic regression about 32%).
Source: https://arxiv.org/abs/2011.14439, github.com/greydanus/mnist1d.
"""

from __future__ import annotations

from functools import lru_cache
from importlib.metadata import version
from typing import Annotated

import numpy as np
import torch
from pydantic import Field

from benchmark.tasks.array_cache import cached_arrays
from benchmark.tasks.base import (
    ACTIVATIONS,
    CLASSIFICATION_METRICS,
    Activation,
    Resources,
    Target,
    TaskInfo,
    TaskOptions,
    TensorClassification,
    cross_entropy,
    mlp,
    seeded_build,
)

NUM_FEATURES = 40
NUM_CLASSES = 10


class MNIST1DOptions(TaskOptions):
    num_samples: Annotated[int, Field(ge=100)] = 5000
    width: Annotated[int, Field(gt=0)] = 100
    depth: Annotated[int, Field(ge=1)] = 2
    batch_size: Annotated[int, Field(gt=0)] = 100
    bias: bool = True
    activation: Activation = "relu"
    data_seed: int = 42


def _generate(num_samples: int, data_seed: int) -> tuple[np.ndarray, ...]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = data_seed
    data = make_dataset(args)
    return tuple(np.asarray(data[k]) for k in ("x", "y", "x_test", "y_test"))


@lru_cache(maxsize=4)
def mnist1d_arrays(num_samples: int, data_seed: int) -> tuple[torch.Tensor, ...]:
    """MNIST-1D generated locally (kept in the data cache and per process: workers run many cells)."""
    key = {"num_samples": num_samples, "seed": data_seed, "mnist1d": version("mnist1d")}
    x, y, x_test, y_test = cached_arrays("mnist1d", key, lambda: _generate(num_samples, data_seed))
    return (
        torch.as_tensor(x, dtype=torch.float32),
        torch.as_tensor(y, dtype=torch.long),
        torch.as_tensor(x_test, dtype=torch.float32),
        torch.as_tensor(y_test, dtype=torch.long),
    )


def build_mlp(options: MNIST1DOptions, generator: torch.Generator) -> torch.nn.Module:
    sizes = [NUM_FEATURES, *[options.width] * options.depth, NUM_CLASSES]
    return seeded_build(generator, lambda: mlp(sizes, ACTIVATIONS[options.activation], bias=options.bias))


def load_data(options: MNIST1DOptions, device: torch.device) -> TensorClassification:
    x, y, x_test, y_test = mnist1d_arrays(options.num_samples, options.data_seed)
    return TensorClassification((x, y), (x_test, y_test), options.batch_size, device)


MNIST1D_MLP = TaskInfo(
    name="mnist1d_mlp",
    description="MLP on MNIST-1D (40 features, 10 classes), generated offline.",
    options=MNIST1DOptions,
    test_options={"num_samples": 600, "width": 32},
    build_model=build_mlp,
    load_data=load_data,
    loss=cross_entropy,
    metrics=CLASSIFICATION_METRICS,
    target=Target("test/accuracy", 0.6, "max"),
    eval_every=100,
    resources=Resources(cpus=1, gpus=0.1),
    reference="https://arxiv.org/abs/2011.14439",
)
