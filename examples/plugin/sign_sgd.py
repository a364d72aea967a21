"""signSGD as a synapsebench plugin: a rule written outside the package (docs/plugins.md).

signSGD (Bernstein et al., 2018, "signSGD: Compressed Optimisation for Non-Convex Problems",
Algorithm 1) steps every weight by the learning rate against the sign of its gradient:

.. math::

    θ_{t+1} = θ_t - η \\operatorname{sign}(g_t)

A suite names this file in ``plugins: [sign_sgd.py]``; importing it registers the rule
``sign_sgd``, and the file is importable under its stem, so an ``optimizer:`` entry may name the
class too (``optimizer: "sign_sgd:SignSGD"``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import torch
from optuna.distributions import FloatDistribution
from pydantic import Field
from torch import Tensor
from torch.optim.optimizer import ParamsT

import benchmark
from benchmark.rules import BuildOptimizer, HParams, RuleInfo


@torch.no_grad()
def sign_sgd_update(param: Tensor, grad: Tensor, *, lr: float) -> None:
    """Algorithm 1 of Bernstein et al. (2018), in place: ``param -= lr * sign(grad)``."""
    param.add_(torch.sign(grad), alpha=-lr)


class SignSGD(torch.optim.Optimizer):
    """signSGD: a step of ``lr`` against the sign of each gradient entry; no state.

    Args:
        params: the parameters to train.
        lr: the step size η (default: 0.01).
    """

    def __init__(self, params: ParamsT, lr: float = 0.01) -> None:
        if not lr > 0:
            raise ValueError(f"Invalid learning rate: {lr}")
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    sign_sgd_update(param, param.grad, lr=group["lr"])
        return loss


class SignSGDHParams(HParams):
    lr: Annotated[float, Field(gt=0)] = 0.01


benchmark.register_rule(
    RuleInfo(
        name="sign_sgd",
        description="signSGD: steps of lr against the gradient's sign (Bernstein et al., 2018).",
        hparams=SignSGDHParams,
        build=BuildOptimizer(SignSGD),  # its step needs no closure: data_parallel is derived
        search_space={"lr": FloatDistribution(1e-4, 1e-1, log=True)},
        reference="https://arxiv.org/abs/1802.04434",
        forward_passes=3.0,  # one forward and one backward per step
    )
)
