"""MNIST-1D with an MLP: a small, offline, hard-enough classification task.

Data: Greydanus & Kolter's MNIST-1D (2020), generated locally by the ``mnist1d`` package from its
built-in templates (never downloaded): 40 features, 10 classes, 80/20 train/test split, data seed 42.
Validation: 1,000 of the 4,000 training samples at the default 5,000 (as many as the test set),
held out once with a fixed seed, the same for every run (:func:`~benchmark.tasks.base.holdout`);
3,000 remain for training.
Model: :func:`~benchmark.tasks.small_mlp.mlp_task`'s MLP (default two hidden layers of 100).
Target: 0.6 validation accuracy (the paper's MLP reaches about 68% test accuracy; logistic
regression about 32%).
Source: Greydanus & Kolter, "Scaling down deep learning with MNIST-1D", arXiv 2011.14439.
"""

from __future__ import annotations

from functools import lru_cache
from importlib.metadata import version
from typing import Annotated

import numpy as np
import torch
from pydantic import Field

from benchmark.tasks.array_cache import cached_arrays
from benchmark.tasks.small_mlp import Arrays, MLPOptions, mlp_task

NUM_FEATURES = 40
NUM_CLASSES = 10
VALIDATION = "1,000 of the 4,000 training samples (as many as the test set), fixed: the same for every seed"


class MNIST1DOptions(MLPOptions):
    num_samples: Annotated[int, Field(ge=100)] = 5000
    data_seed: int = 42


def _generate(num_samples: int, data_seed: int) -> tuple[np.ndarray, ...]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = data_seed
    data = make_dataset(args)
    return tuple(np.asarray(data[k]) for k in ("x", "y", "x_test", "y_test"))


@lru_cache(maxsize=4)
def mnist1d_arrays(num_samples: int, data_seed: int) -> Arrays:
    """MNIST-1D generated locally (kept in the data cache and per process: workers run many cells)."""
    key = {"num_samples": num_samples, "seed": data_seed, "mnist1d": version("mnist1d")}
    x, y, x_test, y_test = cached_arrays("mnist1d", key, lambda: _generate(num_samples, data_seed))
    return (
        torch.as_tensor(x, dtype=torch.float32),
        torch.as_tensor(y, dtype=torch.long),
        torch.as_tensor(x_test, dtype=torch.float32),
        torch.as_tensor(y_test, dtype=torch.long),
    )


def _arrays(options: MNIST1DOptions) -> Arrays:
    return mnist1d_arrays(options.num_samples, options.data_seed)


MNIST1D_MLP = mlp_task(
    name="mnist1d_mlp",
    description="MLP on MNIST-1D (40 features, 10 classes), generated offline.",
    options=MNIST1DOptions,
    arrays=_arrays,
    shape=(NUM_FEATURES, NUM_CLASSES),
    accuracy=0.6,
    validation=VALIDATION,
    test_options={"num_samples": 600, "width": 32},
    eval_every=100,
    reference="https://arxiv.org/abs/2011.14439",
)
