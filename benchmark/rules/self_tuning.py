"""The self-tuning library baselines: Schedule-Free AdamW (``schedulefree``) and Prodigy (``prodigyopt``).

Both run untuned (``track="self_tuning"``, no search space): Schedule-Free AdamW at the
hyperparameters fixed by its AlgoPerf 2024 self-tuning submission, Prodigy at its authors'
``lr = 1`` with the step size it estimates. Each library is imported on first use.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any

from pydantic import Field
from torch import nn

from benchmark.rules.base import (
    ErrorCase,
    HParams,
    NonNegativeFloat,
    OptimizerRule,
    PositiveFloat,
    RuleInfo,
    UnitFloat,
)

# The AlgoPerf 2024 self-tuning submission's fixed values: schedulefree 1.4.1's
# schedulefree/algoperf/self_tuning/schedule_free_adamw/submission.py (HPARAMS), the
# github.com/facebookresearch/schedule_free repository's algoperf/ folder.
ALGOPERF_LR = 0.0025
ALGOPERF_BETAS = (0.9, 0.9955159689799007)
ALGOPERF_WEIGHT_DECAY = 0.08121616522670176
ALGOPERF_R = 0.75
ALGOPERF_WEIGHT_LR_POWER = 2.0
ALGOPERF_WARMUP_FRACTION = 0.02 * 0.75
"""Warm-up steps as a fraction of the run: ``int(0.02 · step_hint · 0.75)`` in the submission."""


class ScheduleFreeAdamWHParams(HParams):
    lr: PositiveFloat = ALGOPERF_LR
    betas: tuple[UnitFloat, UnitFloat] = ALGOPERF_BETAS
    eps: PositiveFloat = 1e-8
    weight_decay: NonNegativeFloat = ALGOPERF_WEIGHT_DECAY
    warmup_steps: Annotated[int, Field(ge=0)] = 0
    """Linear warm-up of the step size; AlgoPerf's is 1.5% of the run (``ALGOPERF_WARMUP_FRACTION``),
    which a rule's build does not know: a suite sets it per budget."""
    r: NonNegativeFloat = ALGOPERF_R
    weight_lr_power: NonNegativeFloat = ALGOPERF_WEIGHT_LR_POWER


@functools.cache
def training_adamw_schedule_free() -> Any:
    """``schedulefree.AdamWScheduleFree`` that starts in training mode.

    The library's optimizer starts in evaluation mode and refuses to step until ``train()``;
    the training loop's :class:`~benchmark.hooks.EvalMode` switches it around each evaluation.
    """
    from schedulefree import AdamWScheduleFree  # third-party; imported where used

    class TrainingAdamWScheduleFree(AdamWScheduleFree):  # type: ignore[misc]
        @functools.wraps(AdamWScheduleFree.__init__)  # type: ignore[misc]  # its signature, for inspect
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.train()

    return TrainingAdamWScheduleFree


def build_schedule_free_adamw(model: nn.Module, hp: ScheduleFreeAdamWHParams) -> OptimizerRule:
    """Schedule-Free AdamW: AdamW steps on ``z``, gradients at an interpolation ``y``, evaluation at
    the weighted average ``x`` (Defazio et al., 2024).

    .. math::

        y_t = (1-β_1) z_t + β_1 x_t,\\qquad g_t = ∇f(y_t),\\qquad v_t = β_2 v_{t-1} + (1-β_2) g_t^2,

        z_{t+1} = z_t - γ_t \\left(\\frac{g_t}{\\sqrt{v_t/(1-β_2^t)} + ε} + λ y_t\\right),\\qquad
        x_{t+1} = (1 - c_{t+1}) x_t + c_{t+1} z_{t+1},

    with ``γ_t = γ · min(1, t / warmup_steps)`` and ``c_{t+1} = w_t / Σ_{i≤t} w_i``,
    ``w_t = t^r · (max_{i≤t} γ_i)^{weight_lr_power}``. Training runs at ``y``; evaluation at ``x``.

    Args (AlgoPerf 2024 self-tuning submission): lr = γ = 0.0025, betas = (0.9, 0.99552),
    weight_decay = λ = 0.0812, r = 0.75, weight_lr_power = 2, eps = 1e-8, warmup_steps = 0 (the
    submission's is 1.5% of the run's steps; a suite sets it, as the build does not see the budget).
    The submission's label smoothing (0.2) and dropout (0.1) are the workload's, not the rule's.

    Differences from the paper: bias correction divides ``v`` inside the root (ε outside it) rather
    than scaling γ_t; the average's weights use ``max γ`` to the power 2 and ``t^r`` (the paper's
    §4 "polynomial weighting", r = 0.75 in AlgoPerf), not γ_t² alone.

    Reference: Defazio et al., "The Road Less Scheduled", NeurIPS 2024,
    https://arxiv.org/abs/2405.15682 (Algorithm 1); the library, github.com/facebookresearch/schedule_free.
    """
    optimizer = training_adamw_schedule_free()(
        model.parameters(),
        lr=hp.lr,
        betas=hp.betas,
        eps=hp.eps,
        weight_decay=hp.weight_decay,
        warmup_steps=hp.warmup_steps,
        r=hp.r,
        weight_lr_power=hp.weight_lr_power,
    )
    return OptimizerRule(optimizer)


class ProdigyHParams(HParams):
    betas: tuple[UnitFloat, UnitFloat] = (0.9, 0.999)
    weight_decay: NonNegativeFloat = 0.0
    d0: PositiveFloat = 1e-6
    d_coef: PositiveFloat = 1.0
    eps: PositiveFloat = 1e-8


def build_prodigy(model: nn.Module, hp: ProdigyHParams) -> OptimizerRule:
    """Prodigy (Adam form): Adam at a step size ``d`` estimated from the distance travelled.

    .. math::

        m_{k+1} = β_1 m_k + (1-β_1) d_k g_k,\\qquad v_{k+1} = β_2 v_k + (1-β_2) d_k^2 g_k^2,

        r_{k+1} = \\sqrt{β_2}\\, r_k + (1-\\sqrt{β_2})\\, d_k^2 ⟨g_k, x_0 - x_k⟩,\\qquad
        s_{k+1} = \\sqrt{β_2}\\, s_k + (1-\\sqrt{β_2})\\, d_k^2 g_k,

        d_{k+1} = \\max\\left(d_k, \\frac{r_{k+1}}{\\lVert s_{k+1} \\rVert_1}\\right),\\qquad
        x_{k+1} = x_k - d_k \\frac{m_{k+1}}{\\sqrt{v_{k+1}} + d_k ε}.

    Args (the authors' defaults): no learning rate (the library's ``lr`` multiplier stays at 1, as
    the authors prescribe), betas = (0.9, 0.999), β₃ = √β₂, weight_decay = 0 (decoupled),
    d0 = 1e-6, d_coef = 1, eps = 1e-8; no bias correction, no safeguard warm-up.

    Differences from the paper: the denominator's ``d ε`` uses the step's new ``d_{k+1}`` (the
    authors' code); ``d`` is updated in the same step, and the update uses the old ``d_k``.

    Reference: Mishchenko & Defazio, "Prodigy: An Expeditiously Adaptive Parameter-Free
    Learner", ICML 2024, https://arxiv.org/abs/2306.06101 (Algorithm 4, the Adam version);
    the authors' code, github.com/konstmish/prodigy.
    """
    from prodigyopt import Prodigy  # third-party; imported where used

    optimizer = Prodigy(
        model.parameters(),
        lr=1.0,
        betas=hp.betas,
        weight_decay=hp.weight_decay,
        decouple=True,
        d0=hp.d0,
        d_coef=hp.d_coef,
        eps=hp.eps,
    )
    return OptimizerRule(optimizer)


SCHEDULE_FREE_ADAMW = RuleInfo(
    name="schedule_free_adamw",
    track="self_tuning",
    description="Schedule-Free AdamW at AlgoPerf 2024's self-tuning values (Defazio et al. 2024).",
    hparams=ScheduleFreeAdamWHParams,
    build=build_schedule_free_adamw,
    reference="https://arxiv.org/abs/2405.15682",
    error_cases=(
        ErrorCase({"lr": 0}, r"lr: expected greater than 0"),
        ErrorCase({"warmup_steps": -1}, r"warmup_steps: expected greater than or equal to 0"),
    ),
)

PRODIGY = RuleInfo(
    name="prodigy",
    track="self_tuning",
    description="Prodigy: Adam at an estimated step size, no lr (Mishchenko & Defazio 2023; prodigyopt).",
    hparams=ProdigyHParams,
    build=build_prodigy,
    reference="https://arxiv.org/abs/2306.06101",
    error_cases=(
        ErrorCase({"d0": 0}, r"d0: expected greater than 0"),
        ErrorCase({"lr": 1.0}, r"hparams.lr: expected a hyperparameter of .prodigy."),
    ),
)
