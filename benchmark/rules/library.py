"""Lion, AdEMAMix, Shampoo and SOAP, bound from ``pytorch-optimizer`` (kozistr, pinned 4.1.0).

Thin wrappers: each ``build`` passes the rule's hyperparameters and the settings that make the
library's update the paper's (named in each docstring), and nothing else. The library is imported
on first use, so that importing the rules does not import it. The one-step tests in
``tests/rules/test_library_baselines.py`` hold each update to its paper's formula.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Annotated

from optuna.distributions import FloatDistribution
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

if TYPE_CHECKING:
    from pytorch_optimizer import ScalableShampoo

PRECONDITION_EVERY = 10
"""Steps between preconditioner updates for ``shampoo`` and ``soap`` (issue 21)."""
BLOCK_SIZE = 256
"""The largest preconditioned dimension for ``shampoo`` (blocks) and ``soap`` (larger: identity)."""


class LionHParams(HParams):
    lr: PositiveFloat = 1e-4
    betas: tuple[UnitFloat, UnitFloat] = (0.9, 0.99)
    weight_decay: NonNegativeFloat = 0.0


def build_lion(model: nn.Module, hp: LionHParams) -> OptimizerRule:
    """Lion: the sign of an interpolated momentum (Chen et al., 2023).

    .. math::

        c_t = β_1 m_{t-1} + (1-β_1) g_t,\\qquad
        θ_t = θ_{t-1} - η\\,(\\operatorname{sign}(c_t) + λ θ_{t-1}),\\qquad
        m_t = β_2 m_{t-1} + (1-β_2) g_t.

    Args (the paper's defaults): lr = η = 1e-4 (the paper: 3-10× smaller than AdamW's),
    betas = (0.9, 0.99), weight_decay = λ = 0 (decoupled, scaled by η, as the paper).

    Reference: Chen et al., "Symbolic Discovery of Optimization Algorithms", NeurIPS 2023,
    https://arxiv.org/abs/2302.06675 (Algorithm 2).
    """
    from pytorch_optimizer import Lion  # third-party; imported where used

    return OptimizerRule(
        Lion(model.parameters(), lr=hp.lr, betas=hp.betas, weight_decay=hp.weight_decay, weight_decouple=True)
    )


class AdEMAMixHParams(HParams):
    lr: PositiveFloat = 1e-3
    betas: tuple[UnitFloat, UnitFloat, UnitFloat] = (0.9, 0.999, 0.9999)
    alpha: NonNegativeFloat = 5.0
    t_alpha_beta3: Annotated[int, Field(gt=0)] | None = None
    """Steps over which α and β₃ warm up (the paper: the run's length); ``None``: no warm-up."""
    eps: PositiveFloat = 1e-8
    weight_decay: NonNegativeFloat = 0.0


def build_ademamix(model: nn.Module, hp: AdEMAMixHParams) -> OptimizerRule:
    """AdEMAMix: Adam whose numerator adds a slow EMA of the gradient (Pagliardini et al., 2024).

    .. math::

        m_1 ← β_1 m_1 + (1-β_1) g,\\quad m_2 ← β_3(t) m_2 + (1-β_3(t)) g,\\quad
        ν ← β_2 ν + (1-β_2) g^2,

        θ ← θ - η\\left(\\frac{m_1/(1-β_1^t) + α(t)\\, m_2}{\\sqrt{ν/(1-β_2^t)} + ε} + λθ\\right),

    with ``α(t) = min(tα/T, α)`` and ``β₃(t) = min(exp(ln β₁ ln β₃ / ((1 - t/T) ln β₃ + (t/T) ln β₁)), β₃)``
    over ``T = t_alpha_beta3`` steps, or constant without it.

    Args (the paper's defaults): lr = 1e-3, betas = (β₁, β₂, β₃) = (0.9, 0.999, 0.9999), alpha = 5,
    t_alpha_beta3 = None (the paper sets T to the run's length, which a rule's build does not
    know: a suite sets it per budget), eps = 1e-8, weight_decay = λ = 0 (decoupled, as the paper;
    the library's default couples it).

    Reference: Pagliardini, Ablin & Grangier, "The AdEMAMix Optimizer: Better, Faster, Older",
    2024, https://arxiv.org/abs/2409.03137 (Algorithm 1, eqs. 3-4 for the schedulers).
    """
    from pytorch_optimizer import AdEMAMix  # third-party; imported where used

    optimizer = AdEMAMix(
        model.parameters(),
        lr=hp.lr,
        betas=hp.betas,
        alpha=hp.alpha,
        t_alpha_beta3=hp.t_alpha_beta3,
        eps=hp.eps,
        weight_decay=hp.weight_decay,
        weight_decouple=True,
    )
    return OptimizerRule(optimizer)


class ShampooHParams(HParams):
    lr: PositiveFloat = 1e-2
    momentum: UnitFloat = 0.9
    matrix_eps: PositiveFloat = 1e-6
    precondition_every: Annotated[int, Field(gt=0)] = PRECONDITION_EVERY


@functools.cache
def gupta_shampoo() -> type[ScalableShampoo]:
    """``ScalableShampoo`` that accepts β₂ = 1: statistics summed, as Gupta et al., not averaged.

    Built on first use, so that importing the rules does not import the library.
    """
    from pytorch_optimizer import ScalableShampoo  # third-party; imported where used

    class GuptaShampoo(ScalableShampoo):
        def validate_betas(
            self,
            betas: tuple[float, float] | tuple[float, float, float] | tuple[None, float],
            beta_range_type: str = "[)",
            beta3_range_type: str = "[]",
        ) -> None:
            if betas[0] is not None:
                self.validate_range(betas[0], "beta1", 0.0, 1.0, range_type=beta_range_type)
            self.validate_range(betas[1], "beta2", 0.0, 1.0, range_type="[]")  # 1: a sum

    return GuptaShampoo


def build_shampoo(model: nn.Module, hp: ShampooHParams) -> OptimizerRule:
    """Shampoo (Gupta, Koren & Singer, 2018): a Kronecker-factored AdaGrad, in blocks.

    For a weight matrix ``W`` (``m × n``) with gradient ``G``:

    .. math::

        L_t = εI_m + \\sum_{s≤t} G_s G_s^⊤,\\qquad R_t = εI_n + \\sum_{s≤t} G_s^⊤ G_s,

        M_t = μ M_{t-1} + L^{-1/4} G_t R^{-1/4},\\qquad W_t = W_{t-1} - η M_t.

    This is *not* Meta's Distributed Shampoo (Shi et al., 2023; the AlgoPerf 2024 external-tuning
    winner), which is not on PyPI. It is the library's ``ScalableShampoo`` (Anil et al., 2020)
    set to Gupta et al.'s update: summed statistics (β₂ = 1), exponent ``-1/(2k)`` for a
    ``k``-dimensional tensor (``-1/4`` for a matrix), no grafting, exact inverse roots by SVD, no
    merging of small dimensions, preconditioning from the first step.

    Args: lr = η = 1e-2, momentum = μ = 0.9 (heavy ball on the preconditioned gradient, the paper's
    experiments), matrix_eps = ε = 1e-6, precondition_every = 10 (steps between inverse roots).

    Differences from the paper: (1) each dimension is cut into blocks of at most 256, each block
    with its own ``L`` and ``R`` (Anil et al.'s blocking); (2) ``L^{-1/4}``, ``R^{-1/4}`` are
    recomputed every 10 steps, and before the first recomputation they are the identity, so the
    first 9 steps are momentum SGD; (3) a vector (a bias) has no preconditioner and steps by
    momentum SGD (the paper's full-matrix ``H^{-1/2}`` for order-1 tensors is left out).

    Reference: Gupta, Koren & Singer, "Shampoo: Preconditioned Stochastic Tensor Optimization",
    ICML 2018, https://arxiv.org/abs/1802.09568 (Algorithm 1; Algorithm 2 for tensors).
    """
    from pytorch_optimizer.optimizer.utils.graft import LayerWiseGrafting

    optimizer = gupta_shampoo()(
        model.parameters(),
        lr=hp.lr,
        betas=(hp.momentum, 1.0),
        moving_average_for_momentum=False,
        start_preconditioning_step=1,
        preconditioning_compute_steps=hp.precondition_every,
        block_size=BLOCK_SIZE,
        shape_interpretation=False,
        graft_type=LayerWiseGrafting.NONE,
        nesterov=False,
        matrix_eps=hp.matrix_eps,
        use_svd=True,
    )
    return OptimizerRule(optimizer)


class SOAPHParams(HParams):
    lr: PositiveFloat = 3e-3
    betas: tuple[UnitFloat, UnitFloat] = (0.95, 0.95)
    shampoo_beta: UnitFloat | None = None
    """The preconditioner statistics' EMA; ``None``: β₂."""
    eps: PositiveFloat = 1e-8
    weight_decay: NonNegativeFloat = 0.01
    precondition_every: Annotated[int, Field(gt=0)] = PRECONDITION_EVERY


def build_soap(model: nn.Module, hp: SOAPHParams) -> OptimizerRule:
    """SOAP: Adam in the eigenbasis of Shampoo's preconditioner (Vyas et al., 2024).

    For a weight matrix with gradient ``G``, statistics ``L ← β L + (1-β) GG^⊤`` and
    ``R ← β R + (1-β) G^⊤G`` (β = shampoo_beta), and their eigenvectors ``Q_L``, ``Q_R``:

    .. math::

        G' = Q_L^⊤ G Q_R,\\quad M ← β_1 M + (1-β_1) G,\\quad V ← β_2 V + (1-β_2) G'^{⊙2},

        W ← W - η \\frac{\\sqrt{1-β_2^t}}{1-β_1^t}\\, Q_L \\frac{Q_L^⊤ M Q_R}{\\sqrt{V} + ε} Q_R^⊤ - ηλW.

    Args (the authors' defaults): lr = 3e-3, betas = (0.95, 0.95), shampoo_beta = None (β₂),
    eps = 1e-8, weight_decay = λ = 0.01 (decoupled), precondition_every = 10 (steps between
    eigenbasis updates, by one power iteration and a QR as the authors' code).

    Differences from the paper: the first step only gathers ``L``, ``R`` and their eigenvectors
    and does not move the weights, and the bias correction counts from the second step, as the
    authors' code; a dimension larger than 256 is not rotated (identity), rather than blocked;
    vectors (biases) are Adam, unrotated.

    Reference: Vyas et al., "SOAP: Improving and Stabilizing Shampoo using Adam", 2024,
    https://arxiv.org/abs/2409.11321 (Algorithm 3; the authors' code, github.com/nikhilvyas/SOAP).
    """
    from pytorch_optimizer import SOAP  # third-party; imported where used

    optimizer = SOAP(
        model.parameters(),
        lr=hp.lr,
        betas=hp.betas,
        shampoo_beta=hp.shampoo_beta,
        eps=hp.eps,
        weight_decay=hp.weight_decay,
        precondition_frequency=hp.precondition_every,
        max_precondition_dim=BLOCK_SIZE,
    )
    return OptimizerRule(optimizer)


LION = RuleInfo(
    name="lion",
    description="Lion: sign of an interpolated momentum (Chen et al. 2023; pytorch-optimizer).",
    hparams=LionHParams,
    build=build_lion,
    search_space={"lr": FloatDistribution(1e-6, 1e-2, log=True)},
    reference="https://arxiv.org/abs/2302.06675",
    error_cases=(
        ErrorCase({"lr": 0}, r"lr: expected greater than 0"),
        ErrorCase({"betas": [0.9, 1.0]}, r"betas"),
    ),
)

ADEMAMIX = RuleInfo(
    name="ademamix",
    description="AdEMAMix: Adam plus a slow gradient EMA (Pagliardini et al. 2024; pytorch-optimizer).",
    hparams=AdEMAMixHParams,
    build=build_ademamix,
    search_space={"lr": FloatDistribution(1e-5, 1e-1, log=True)},
    reference="https://arxiv.org/abs/2409.03137",
    error_cases=(
        ErrorCase({"lr": -1e-3}, r"lr: expected greater than 0"),
        ErrorCase({"betas": [0.9, 0.999]}, r"betas"),
        ErrorCase({"t_alpha_beta3": 0}, r"t_alpha_beta3"),
    ),
)

SHAMPOO = RuleInfo(
    name="shampoo",
    description="Shampoo (Gupta et al. 2018), blocks of 256, roots every 10 steps (pytorch-optimizer).",
    hparams=ShampooHParams,
    build=build_shampoo,
    search_space={"lr": FloatDistribution(1e-4, 1.0, log=True)},
    reference="https://arxiv.org/abs/1802.09568",
    error_cases=(
        ErrorCase({"lr": 0}, r"lr: expected greater than 0"),
        ErrorCase({"precondition_every": 0}, r"precondition_every: expected greater than 0"),
    ),
)

SOAP_RULE = RuleInfo(
    name="soap",
    description="SOAP: Adam in Shampoo's eigenbasis, renewed every 10 steps (Vyas et al. 2024).",
    hparams=SOAPHParams,
    build=build_soap,
    search_space={"lr": FloatDistribution(1e-5, 1e-1, log=True)},
    reference="https://arxiv.org/abs/2409.11321",
    error_cases=(
        ErrorCase({"lr": 0}, r"lr: expected greater than 0"),
        ErrorCase({"shampoo_beta": 1.0}, r"shampoo_beta: expected less than 1"),
    ),
)
