"""diffGrad (Dubey et al. 2019), bound from ``pytorch-optimizer`` (kozistr), with a pinned release.

references/dynamics.md §5: in ``pytorch-optimizer`` snapshots from 2023-04-25 up to early 2026 the default
(``rectify=False``) path updated with the plain first moment, so the friction ξ was never applied and the
rule was Adam. Release 4.1.0 applies ``ξ·m`` in both its per-parameter and foreach paths; the dependency
is pinned to ``>=4.1`` and ``tests/rules/test_diffgrad.py`` checks one step against the paper's formula.
"""

from __future__ import annotations

from typing import Annotated

from optuna.distributions import FloatDistribution
from pydantic import Field
from torch import nn

from benchmark.rules.base import ErrorCase, HParams, OptimizerRule, RuleInfo, UnitFloat


class DiffGradHParams(HParams):
    lr: Annotated[float, Field(gt=0)] = 1e-3
    betas: tuple[UnitFloat, UnitFloat] = (0.9, 0.999)
    eps: Annotated[float, Field(gt=0)] = 1e-8
    weight_decay: Annotated[float, Field(ge=0)] = 0.0


def build_diffgrad(model: nn.Module, hp: DiffGradHParams) -> OptimizerRule:
    """diffGrad: Adam whose first moment is damped where the gradient changes little.

    .. math::

        ξ_t = \\operatorname{sigmoid}(|g_{t-1} - g_t|),\\qquad
        θ_t = θ_{t-1} - α\\,ξ_t \\odot \\hat m_t / (\\sqrt{\\hat v_t} + ε),

    with Adam's bias-corrected moments ``m̂, v̂`` and ``g_0 = 0``.

    Args (defaults from the paper): lr = α = 1e-3, betas = (0.9, 0.999), eps = 1e-8, weight_decay = 0
    (decoupled, as the library applies it).

    Differences from the paper: ε is added to ``√v`` before the bias correction of the step size (the
    torch.optim Adam convention), which scales it by ``√(1 − β₂ᵗ)``.

    When not to use: where the rule's per-step ``.grad`` must stay untouched by ``maximize`` (off here);
    as a stand-in for Adam in comparisons sensitive to early steps (ξ ≥ ½ halves the first steps).

    Reference: Dubey et al., "diffGrad: An Optimization Method for Convolutional Neural Networks",
    https://arxiv.org/abs/1909.11015 (eqs. 4-6).
    """
    from pytorch_optimizer import DiffGrad  # third-party; imported where used

    return OptimizerRule(
        DiffGrad(model.parameters(), lr=hp.lr, betas=hp.betas, eps=hp.eps, weight_decay=hp.weight_decay)
    )


DIFFGRAD = RuleInfo(
    name="diffgrad",
    data_parallel=True,
    description="diffGrad: Adam with a friction ξ = sigmoid(|Δg|) on the first moment (pytorch-optimizer).",
    hparams=DiffGradHParams,
    build=build_diffgrad,
    search_space={"lr": FloatDistribution(1e-5, 1e-1, log=True)},
    reference="https://arxiv.org/abs/1909.11015",
    error_cases=(
        ErrorCase({"lr": 0}, r"lr: expected greater than 0"),
        ErrorCase({"betas": [0.9, 1.0]}, r"betas"),
    ),
)
