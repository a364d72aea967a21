"""scikit-learn's bundled 8×8 digits with an MLP: the smallest real image task, fully offline.

Data: 1797 images of 64 pixels scaled to [0, 1], 10 classes, a stratified 80/20 train/test split
(seed 0). Validation: 360 of the 1,437 training images (as many as the test set), held out once
with a fixed seed, the same for every run (:func:`~benchmark.tasks.base.holdout`); 1,077 remain for
training.
Model: :func:`~benchmark.tasks.small_mlp.mlp_task`'s MLP (default one hidden layer of 128).
Target: 0.95 validation accuracy (an MLP reaches about 97-98% on this split).
Source: the UCI optical recognition of handwritten digits data set (Alpaydin & Kaynak, 1998), as
shipped by scikit-learn.
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

NUM_FEATURES = 64
NUM_CLASSES = 10


class DigitsOptions(MLPOptions):
    width: Annotated[int, Field(gt=0)] = 128
    depth: Annotated[int, Field(ge=1)] = 1
    batch_size: Annotated[int, Field(gt=0)] = 64
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2


def _split(test_fraction: float) -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x / 16.0, y, test_size=test_fraction, random_state=0, stratify=y
    )
    return x_train, y_train, x_test, y_test


@lru_cache(maxsize=2)
def digits_arrays(test_fraction: float) -> Arrays:
    """The stratified split, kept in the data cache (loading it imports scikit-learn: seconds)."""
    key = {"test_fraction": test_fraction, "scikit-learn": version("scikit-learn")}
    x_train, y_train, x_test, y_test = cached_arrays("digits", key, lambda: _split(test_fraction))
    return (
        torch.as_tensor(x_train, dtype=torch.float32),
        torch.as_tensor(y_train, dtype=torch.long),
        torch.as_tensor(x_test, dtype=torch.float32),
        torch.as_tensor(y_test, dtype=torch.long),
    )


def _arrays(options: DigitsOptions) -> Arrays:
    return digits_arrays(options.test_fraction)


DIGITS_MLP = mlp_task(
    name="digits_mlp",
    description="MLP on scikit-learn's bundled 8x8 digits (1797 images, 10 classes).",
    options=DigitsOptions,
    arrays=_arrays,
    shape=(NUM_FEATURES, NUM_CLASSES),
    accuracy=0.95,
    validation="360 of the 1,437 training images (as many as the test set), fixed: the same for every seed",
    test_options={"width": 32},
    eval_every=50,
    reference="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
)
