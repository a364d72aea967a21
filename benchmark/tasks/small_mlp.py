"""An MLP on a small classification set held as tensors: the factory of ``digits_mlp`` and ``mnist1d_mlp``.

A data module gives its options (a subclass of :class:`MLPOptions`) and a function from options to
``(x, y, x_test, y_test)`` tensors; :func:`mlp_task` makes the registry entry: an MLP with ``width``
units in each of ``depth`` hidden layers, ReLU (or ``activation: scaled_relu``, sqrt(2)·ReLU as in
the AGD paper's FCN), cross-entropy, and :class:`~benchmark.tasks.base.TensorClassification`'s
splits (validation as large as the test set, held out of the training examples).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Annotated, Any

import torch
from pydantic import Field
from torch import Tensor, nn

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
    stacked_member_bytes,
)

Arrays = tuple[Tensor, Tensor, Tensor, Tensor]


class MLPOptions(TaskOptions):
    """The model and batch options every small MLP task shares."""

    width: Annotated[int, Field(gt=0)] = 100
    depth: Annotated[int, Field(ge=1)] = 2
    batch_size: Annotated[int, Field(gt=0)] = 100
    bias: bool = True
    activation: Activation = "relu"


def mlp_task(
    name: str,
    description: str,
    options: type[MLPOptions],
    arrays: Callable[[Any], Arrays],
    shape: tuple[int, int],
    accuracy: float,
    validation: str,
    test_options: Mapping[str, Any],
    eval_every: int,
    reference: str,
) -> TaskInfo:
    """The registry entry of an MLP on ``arrays(options)``, ``shape`` = (features, classes).

    Its target is ``val/accuracy`` ≥ ``accuracy``; chance is 1/classes.
    """
    features, classes = shape

    def build(o: MLPOptions, generator: torch.Generator) -> nn.Module:
        sizes = [features, *[o.width] * o.depth, classes]
        return seeded_build(generator, lambda: mlp(sizes, ACTIVATIONS[o.activation], bias=o.bias))

    def load_data(o: MLPOptions, device: torch.device) -> TensorClassification:
        x, y, x_test, y_test = arrays(o)
        return TensorClassification((x, y), (x_test, y_test), o.batch_size, device)

    def member_bytes(o: MLPOptions) -> int:
        sizes = [features, *[o.width] * o.depth, classes]
        parameters = sum((fan_in + 1) * fan_out for fan_in, fan_out in itertools.pairwise(sizes))
        return stacked_member_bytes(parameters, o.batch_size * sum(sizes))

    return TaskInfo(
        name=name,
        description=description,
        options=options,
        test_options=test_options,
        build_model=build,
        load_data=load_data,
        loss=cross_entropy,
        metrics=CLASSIFICATION_METRICS,
        target=Target("val/accuracy", accuracy, "max"),
        chance=1 / classes,
        eval_every=eval_every,
        resources=Resources(cpus=1, gpus=0.1),
        reference=reference,
        validation=validation,
        batch_member_bytes=member_bytes,
    )
