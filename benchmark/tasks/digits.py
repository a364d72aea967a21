"""scikit-learn's bundled 8×8 digits with an MLP: the smallest real image task, fully offline.

Data: 1797 images of 64 pixels scaled to [0, 1], 10 classes, a stratified 80/20 split (seed 0).
Model: an MLP, ``width`` units in each of ``depth`` hidden layers, with ReLU (or ``activation:
scaled_relu``, sqrt(2)·ReLU as in the AGD paper's FCN).
Target: 0.95 test accuracy (an MLP reaches about 97-98% on this split).
Source: the UCI optical recognition of handwritten digits data set, as shipped by scikit-learn.
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

NUM_FEATURES = 64
NUM_CLASSES = 10


class DigitsOptions(TaskOptions):
    width: Annotated[int, Field(gt=0)] = 128
    depth: Annotated[int, Field(ge=1)] = 1
    batch_size: Annotated[int, Field(gt=0)] = 64
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    bias: bool = True
    activation: Activation = "relu"


def _split(test_fraction: float) -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x / 16.0, y, test_size=test_fraction, random_state=0, stratify=y
    )
    return x_train, y_train, x_test, y_test


@lru_cache(maxsize=2)
def digits_arrays(test_fraction: float) -> tuple[torch.Tensor, ...]:
    """The stratified split, kept in the data cache (loading it imports scikit-learn: seconds)."""
    key = {"test_fraction": test_fraction, "scikit-learn": version("scikit-learn")}
    x_train, y_train, x_test, y_test = cached_arrays("digits", key, lambda: _split(test_fraction))
    return (
        torch.as_tensor(x_train, dtype=torch.float32),
        torch.as_tensor(y_train, dtype=torch.long),
        torch.as_tensor(x_test, dtype=torch.float32),
        torch.as_tensor(y_test, dtype=torch.long),
    )


def build_mlp(options: DigitsOptions, generator: torch.Generator) -> torch.nn.Module:
    sizes = [NUM_FEATURES, *[options.width] * options.depth, NUM_CLASSES]
    return seeded_build(generator, lambda: mlp(sizes, ACTIVATIONS[options.activation], bias=options.bias))


def load_data(options: DigitsOptions, device: torch.device) -> TensorClassification:
    x, y, x_test, y_test = digits_arrays(options.test_fraction)
    return TensorClassification((x, y), (x_test, y_test), options.batch_size, device)


DIGITS_MLP = TaskInfo(
    name="digits_mlp",
    description="MLP on scikit-learn's bundled 8x8 digits (1797 images, 10 classes).",
    options=DigitsOptions,
    test_options={"width": 32},
    build_model=build_mlp,
    load_data=load_data,
    loss=cross_entropy,
    metrics=CLASSIFICATION_METRICS,
    target=Target("test/accuracy", 0.95, "max"),
    eval_every=50,
    resources=Resources(cpus=1, gpus=0.1),
    reference="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
)
