"""The baselines, bound from torch.optim (no re-implementation): ``sgd``, ``adam`` and ``adamw``.

Their batched forms (:mod:`benchmark.rules.stacked`) run torch.optim's single-tensor update, written
here as two pure functions of float or per-member tensor hyperparameters.
"""

from __future__ import annotations

import torch
from optuna.distributions import CategoricalDistribution, FloatDistribution
from torch import Tensor

from benchmark.rules.base import (
    BuildOptimizer,
    ErrorCase,
    HParams,
    NonNegativeFloat,
    PositiveFloat,
    RuleInfo,
    UnitFloat,
)
from benchmark.rules.eg import Hyper, T, _momentum_, _plus, _plus_, _plus_product_, _zero
from benchmark.rules.stacked import adam_form, sgd_form


def bind(optimizer: type[torch.optim.Optimizer]) -> BuildOptimizer:
    """A rule's ``build`` from a torch.optim class whose keyword arguments are the hyperparameters;
    the rule's ``data_parallel`` is derived from the class."""
    return BuildOptimizer(optimizer)


def sgd_update(
    param: T, grad: T, buf: T | None, *, lr: Hyper, momentum: Hyper, dampening: Hyper,
    weight_decay: Hyper, nesterov: bool, inplace: bool = False,
) -> tuple[T, T | None]:  # fmt: skip
    """torch.optim.SGD's step (``_single_tensor_sgd``, same operations and rounding for number
    hyperparameters); ``buf`` is ``None`` without momentum, zeros with ``dampening=0`` on step 1."""
    if not inplace:
        param, buf = param.clone(), None if buf is None else buf.clone()
    d = grad if _zero(weight_decay) else _plus(grad, param, weight_decay)
    if buf is not None:
        d = _momentum_(buf, d, momentum, dampening, nesterov)
    return _plus_(param, d, -lr), buf


def adam_update(
    param: T, grad: T, exp_avg: T, exp_avg_sq: T, max_exp_avg_sq: T | None, *, lr: Hyper,
    beta1: float, beta2: float, eps: float, weight_decay: Hyper, decoupled: bool, step: float,
    inplace: bool = False,
) -> tuple[T, T, T, T | None]:  # fmt: skip
    """torch.optim.Adam's step ``step`` (from 1; ``_single_tensor_adam``, same operations and
    rounding for number hyperparameters); AdamW's with ``decoupled``."""
    if not inplace:
        param, exp_avg, exp_avg_sq = param.clone(), exp_avg.clone(), exp_avg_sq.clone()
        max_exp_avg_sq = None if max_exp_avg_sq is None else max_exp_avg_sq.clone()
    if not _zero(weight_decay):
        if decoupled:
            param.mul_(1 - lr * weight_decay)
        else:
            grad = _plus(grad, param, weight_decay)
    exp_avg.lerp_(grad, 1 - beta1)
    v = _plus_product_(exp_avg_sq.mul_(beta2), grad, grad, 1 - beta2)
    if max_exp_avg_sq is not None:  # AMSGrad
        v = max_exp_avg_sq.clamp_min_(v)
    step_size = lr / (1 - beta1**step)
    denom = (v.sqrt() / (1 - beta2**step) ** 0.5).add_(eps)
    if isinstance(step_size, Tensor) or not isinstance(param, Tensor):
        param.add_(exp_avg * -step_size / denom)
    else:  # torch.optim's one pass, and its rounding
        param.addcdiv_(exp_avg, denom, value=-step_size)
    return param, exp_avg, exp_avg_sq, max_exp_avg_sq


_SGD_NAMES = ("lr", "momentum", "dampening", "weight_decay", "nesterov")
_ADAM_NAMES = ("lr", "eps", "weight_decay")


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
    batching=sgd_form(sgd_update, _SGD_NAMES),
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
    batching=adam_form(adam_update, _ADAM_NAMES, decoupled=True),
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
    batching=adam_form(adam_update, _ADAM_NAMES, decoupled=False),
)
