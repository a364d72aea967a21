"""diffGrad (Dubey et al. 2019) as its authors' code updates, on ``pytorch-optimizer``'s ``DiffGrad``.

The library (kozistr, pinned ``>=4.1``: earlier releases left the friction ξ out of the default
path) adds a constant 1e-15 to the second moment inside the square root, which the authors' code
does not, and applies weight decay decoupled; the authors add it to the gradient. A thin subclass
removes the constant, and the rule asks for coupled decay. The constant matters where ``v`` is
near it: at ``|g| ≈ 1e-6`` (``v ≈ 1e-15``) it changed a first step by 70% (eps 1e-8).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated

import torch
from optuna.distributions import FloatDistribution
from pydantic import Field
from torch import Tensor, nn

from benchmark.rules.base import ErrorCase, HParams, OptimizerRule, RuleInfo, UnitFloat
from benchmark.rules.stacked import optimizer_form

if TYPE_CHECKING:
    from pytorch_optimizer import DiffGrad


class DiffGradHParams(HParams):
    lr: Annotated[float, Field(gt=0)] = 1e-3
    betas: tuple[UnitFloat, UnitFloat] = (0.9, 0.999)
    eps: Annotated[float, Field(gt=0)] = 1e-8
    weight_decay: Annotated[float, Field(ge=0)] = 0.0


@functools.cache
def authors_diffgrad() -> type[DiffGrad]:
    """``pytorch_optimizer.DiffGrad`` with the denominator ``√v + ε`` of the authors' code.

    Built on first use, so that importing the rules does not import the library.
    """
    from pytorch_optimizer import DiffGrad  # third-party; imported where used

    class AuthorsDiffGrad(DiffGrad):
        @staticmethod
        def apply_ams_bound(
            ams_bound: bool,
            exp_avg_sq: Tensor,
            max_exp_avg_sq: Tensor | None,
            eps: float,
            exp_avg_sq_eps: float = 0.0,
        ) -> Tensor:
            return DiffGrad.apply_ams_bound(ams_bound, exp_avg_sq, max_exp_avg_sq, eps, exp_avg_sq_eps)

        @staticmethod
        def apply_ams_bound_foreach(
            ams_bound: bool,
            exp_avg_sqs: list[Tensor],
            max_exp_avg_sqs: list[Tensor],
            eps: float,
            exp_avg_sq_eps: float = 0.0,
        ) -> Sequence[Tensor]:
            return DiffGrad.apply_ams_bound_foreach(
                ams_bound, exp_avg_sqs, max_exp_avg_sqs, eps, exp_avg_sq_eps
            )

    return AuthorsDiffGrad


def build_diffgrad(model: nn.Module, hp: DiffGradHParams) -> OptimizerRule:
    """diffGrad: Adam whose first moment is damped where the gradient changes little.

    .. math::

        ξ_t = \\operatorname{sigmoid}(|g_{t-1} - g_t|),\\qquad
        θ_t = θ_{t-1} - α\\,ξ_t \\odot \\hat m_t / (\\sqrt{\\hat v_t} + ε),

    with Adam's bias-corrected moments ``m̂, v̂`` and ``g_0 = 0``.

    Args (defaults from the paper): lr = α = 1e-3, betas = (0.9, 0.999), eps = 1e-8, weight_decay = 0
    (an L2 term ``λθ`` added to the gradient before the moments, as the authors' code).

    Differences from the paper: ε is added to ``√v`` before the bias correction of the step size, as
    in the authors' code (the torch.optim Adam convention), which scales it by ``√(1 − β₂ᵗ)``.

    When not to use: as a stand-in for Adam in comparisons sensitive to early steps (ξ ≥ ½ halves
    the first steps).

    Reference: Dubey et al., "diffGrad: An Optimization Method for Convolutional Neural Networks",
    IEEE TNNLS 2019, https://arxiv.org/abs/1909.11015 (eqs. 4-6); the authors' code,
    github.com/shivram1987/diffGrad (``diffGrad_v2.py``).
    """
    return OptimizerRule(diffgrad_optimizer(list(model.parameters()), hp))


def diffgrad_optimizer(params: list[Tensor], hp: DiffGradHParams) -> torch.optim.Optimizer:
    """The rule's optimizer over ``params``: a model's, or a batched group's stacked ones (its
    update is elementwise, so a stack steps as each member alone)."""
    return authors_diffgrad()(
        params, lr=hp.lr, betas=hp.betas, eps=hp.eps, weight_decay=hp.weight_decay, weight_decouple=False
    )


DIFFGRAD = RuleInfo(
    name="diffgrad",
    description="diffGrad: Adam with a friction ξ = sigmoid(|Δg|) on the first moment (the authors' update).",
    hparams=DiffGradHParams,
    build=build_diffgrad,
    search_space={"lr": FloatDistribution(1e-5, 1e-1, log=True)},
    reference="https://arxiv.org/abs/1909.11015",
    batching=optimizer_form(diffgrad_optimizer),
    error_cases=(
        ErrorCase({"lr": 0}, r"lr: expected greater than 0"),
        ErrorCase({"betas": [0.9, 1.0]}, r"betas"),
    ),
)
