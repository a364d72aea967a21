"""The baselines, bound from torch.optim (no re-implementation): ``sgd``, ``adam`` and ``adamw``."""

from __future__ import annotations

import torch
from optuna.distributions import CategoricalDistribution, FloatDistribution

from benchmark.rules.base import (
    BuildOptimizer,
    ErrorCase,
    HParams,
    NonNegativeFloat,
    PositiveFloat,
    RuleInfo,
    UnitFloat,
)


def bind(optimizer: type[torch.optim.Optimizer]) -> BuildOptimizer:
    """A rule's ``build`` from a torch.optim class whose keyword arguments are the hyperparameters;
    the rule's ``data_parallel`` is derived from the class."""
    return BuildOptimizer(optimizer)


class SGDHParams(HParams):
    lr: PositiveFloat = 0.05
    momentum: UnitFloat = 0.9
    dampening: UnitFloat = 0.0
    weight_decay: NonNegativeFloat = 0.0
    nesterov: bool = False


class AdamWHParams(HParams):
    lr: PositiveFloat = 1e-3
    betas: tuple[UnitFloat, UnitFloat] = (0.9, 0.999)
    eps: PositiveFloat = 1e-8
    weight_decay: NonNegativeFloat = 0.01


class AdamHParams(HParams):
    lr: PositiveFloat = 1e-3
    betas: tuple[UnitFloat, UnitFloat] = (0.9, 0.999)
    eps: PositiveFloat = 1e-8
    weight_decay: NonNegativeFloat = 0.0
    """L2 penalty added to the gradient before the moments (coupled), unlike ``adamw``'s decay."""


SGD = RuleInfo(
    name="sgd",
    description="Stochastic gradient descent with heavy-ball momentum (torch.optim.SGD).",
    hparams=SGDHParams,
    build=bind(torch.optim.SGD),
    search_space={
        "lr": FloatDistribution(1e-4, 1.0, log=True),
        "momentum": CategoricalDistribution([0.0, 0.9]),
        "weight_decay": FloatDistribution(1e-6, 1e-2, log=True),
    },
    reference="https://pytorch.org/docs/stable/generated/torch.optim.SGD.html",
    error_cases=(
        ErrorCase({"lr": -0.1}, r"lr: expected greater than 0"),
        ErrorCase({"momentum": 1.5}, r"momentum: expected less than 1"),
    ),
)

ADAMW = RuleInfo(
    name="adamw",
    description="Adam with decoupled weight decay (torch.optim.AdamW).",
    hparams=AdamWHParams,
    build=bind(torch.optim.AdamW),
    search_space={
        "lr": FloatDistribution(1e-5, 1e-1, log=True),
        "weight_decay": FloatDistribution(1e-6, 1e-1, log=True),
    },
    reference="https://arxiv.org/abs/1711.05101",
    error_cases=(
        ErrorCase({"lr": 0}, r"lr: expected greater than 0"),
        ErrorCase({"betas": [0.9]}, r"betas"),
    ),
)

ADAM = RuleInfo(
    name="adam",
    description="Adam with L2 regularisation coupled into the gradient (torch.optim.Adam).",
    hparams=AdamHParams,
    build=bind(torch.optim.Adam),
    search_space={
        "lr": FloatDistribution(1e-5, 1e-1, log=True),
        "weight_decay": FloatDistribution(1e-6, 1e-1, log=True),
    },
    reference="https://arxiv.org/abs/1412.6980",
    error_cases=(
        ErrorCase({"lr": 0}, r"lr: expected greater than 0"),
        ErrorCase({"weight_decay": -1.0}, r"weight_decay: expected greater than or equal to 0"),
    ),
)
