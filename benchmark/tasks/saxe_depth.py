"""Saxe, McClelland & Ganguli (2013) §3: learning time of deep linear nets against depth and initialisation.

Data: whitened inputs (the ``width`` basis vectors, ``Σ¹¹ = I``) and targets ``y = U diag(s) Vᵀ x`` with
``U``, ``V`` random orthogonal (fixed by ``data_seed``) and ``s`` geometric from ``s_max`` down to
``s_min`` over all ``width`` modes.

Model: ``y = W_D ⋯ W_1 x``, ``depth = D`` square ``width × width`` weight matrices, no biases (the paper's
``N_l = D + 1`` layers of units; depth 2 is ``saxe_modes``'s net). Loss: ``½ Σ_μ ‖y_μ − ŷ_μ‖²`` (a sum).

Initialisations (option ``init``):

- ``orthogonal``: each ``W_i`` Haar-random orthogonal (``W_iᵀW_i = I``), so the product is orthogonal and
  every singular value of the map is 1, whatever the depth;
- ``gaussian``: entries ``N(0, 1/width)`` (the scaled Gaussian, ``g = 1``), whose product's singular values
  spread over orders of magnitude as depth grows;
- ``decoupled``: each ``W_i = R_i R_{i-1}ᵀ`` with ``R_0 = V``, ``R_D = U`` and the inner ``R_i`` random
  orthogonal: every layer is orthogonal *and* the product is ``U Vᵀ``, the paper's decoupled condition
  with every mode's strength starting at ``u₀ = 1``.

For ``orthogonal`` and ``gaussian`` the first layer's first row is negated when needed so that
``det(W_D ⋯ W_1)`` has the sign of ``det(U Vᵀ)``: otherwise half of the seeds must drive one mode
through zero, a saddle that deep nets leave only very slowly (Arora et al. 2018's deficiency margin),
and the learning time would measure that coin flip instead of depth. Negating a row keeps both
distributions.

Reference. With decoupled init every mode stays decoupled and balanced under gradient descent, each
layer's mode scale ``a`` obeying, exactly in discrete time at rate ``λ``,

.. math::

    a \\leftarrow a + λ\\, a^{D-1}\\,(s - a^{D}),\\qquad u = a^{D},

the discrete form of the paper's eq. 15, ``τ u̇ = (N_l − 1) u^{2−2/(N_l−1)} (s − u)``. With the rate
scaled as ``λ = lr_scale / (D s_max²)`` (the paper's optimal rate is ``O(1/(N_l s²))``), the time to
a loss threshold stays bounded as depth grows (the paper's depth-independent learning time).
``theory/steps_to_threshold`` is that recursion's first step with ``train/relative_loss ≤ threshold``
and ``theory/loss`` its loss at each evaluation, both for GD at ``theory/reference_lr``: exact for
``decoupled`` init, and the depth-independent bar the paper says random orthogonal init tracks and
scaled Gaussian init misses, increasingly with depth.

Measured: ``depth/steps_to_threshold``, the first step at which ``train/relative_loss`` (the loss over
its value at ``W = 0``, ``½Σs²``) is at most ``threshold``, interpolated in log-loss between
evaluations (exact with ``eval_every = 1``), NaN until then; ``depth/reached`` is 1 once it is
reached; at the end, measured over theory is ``theory/steps_ratio`` for ``decoupled`` init and
``depth/steps_over_decoupled`` for the others (their time against the decoupled bar).

Measured (width 8, GD at ``reference_lr``, threshold 0.01): orthogonal init reaches the threshold at
every depth, median steps 56 / 143 / 228 at depths 6 / 12 / 20 over 4 seeds (bounded growth, not strictly
flat: a random orthogonal product is not aligned with the target, and the time is set by its eigen-angle
nearest π, where the path passes close to a singular map); scaled Gaussian init reaches it at depth 2
as fast, and not within 2000 steps from depth 6 on.

Target: ``train/relative_loss`` at most 0.01 (the default ``threshold``).

When not to use: ``lr_scale`` near 2 (GD at ``reference_lr`` then leaves the stable range at the
largest mode, whose curvature is ``≈ D s_max^{2−2/D} λ``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from itertools import repeat
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from benchmark.tasks.base import Resources, Target, TaskData, TaskInfo, TaskOptions, seeded_build
from benchmark.tasks.saxe import random_orthogonal, summed_squared_error
from benchmark.types import Batch, OptionSweepPlot

THEORY_STEP_CAP = 200_000  # the recursion stops here; beyond it the reference is reported as NaN


class SaxeDepthOptions(TaskOptions):
    depth: Annotated[int, Field(ge=2, description="D, weight matrices in the product (N_l = D + 1)")] = 6
    width: Annotated[int, Field(ge=1, description="input, hidden and output dimension (= samples)")] = 32
    init: Literal["orthogonal", "gaussian", "decoupled"] = "orthogonal"
    s_max: Annotated[float, Field(gt=0, description="largest singular value of the target map")] = 2.0
    s_min: Annotated[float, Field(gt=0, description="smallest singular value of the target map")] = 0.5
    threshold: Annotated[float, Field(gt=0, lt=1, description="relative loss that counts as learned")] = 0.01
    lr_scale: Annotated[float, Field(gt=0, description="c in reference_lr = c / (depth · s_max²)")] = 1.0
    data_seed: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _ordered(self) -> SaxeDepthOptions:
        if self.s_min > self.s_max:
            raise ValueError(f"s_min: must be at most s_max = {self.s_max}, got {self.s_min}")
        return self

    @property
    def reference_lr(self) -> float:
        """The paper's depth scaling of the rate, ``λ = lr_scale / (D s_max²)``."""
        return self.lr_scale / (self.depth * self.s_max**2)


def strengths(options: SaxeDepthOptions) -> np.ndarray:
    """The target's singular values, geometric from ``s_max`` to ``s_min`` over ``width`` modes."""
    return np.geomspace(options.s_max, options.s_min, options.width)


def singular_vectors(options: SaxeDepthOptions) -> tuple[Tensor, Tensor]:
    """``U`` and ``V`` of the target map (float64), fixed by ``data_seed``."""
    gen = torch.Generator().manual_seed(options.data_seed)
    return random_orthogonal(options.width, gen), random_orthogonal(options.width, gen)


def initial_layers(options: SaxeDepthOptions, generator: torch.Generator) -> list[Tensor]:
    """The ``D`` initial weight matrices ``W_1 … W_D`` (float64), first-applied first."""
    n, depth = options.width, options.depth
    u, v = singular_vectors(options)
    if options.init == "decoupled":
        frames = [v, *(random_orthogonal(n, generator) for _ in range(depth - 1)), u]
        return [frames[i + 1] @ frames[i].T for i in range(depth)]  # W_i = R_i R_{i-1}ᵀ
    if options.init == "orthogonal":
        layers = [random_orthogonal(n, generator) for _ in range(depth)]
    else:
        std = 1.0 / math.sqrt(n)
        layers = [torch.randn(n, n, generator=generator, dtype=torch.float64) * std for _ in range(depth)]
    product = torch.linalg.multi_dot(layers[::-1])
    if torch.linalg.det(product) * torch.linalg.det(u) * torch.linalg.det(v) < 0:
        layers[0][0].neg_()  # same sign as det(U Vᵀ): no mode has to cross zero
    return layers


def build_model(options: SaxeDepthOptions, generator: torch.Generator) -> nn.Module:
    n = options.width
    model = nn.Sequential(*(nn.Linear(n, n, bias=False) for _ in range(options.depth)))
    with torch.no_grad():
        for layer, weight in zip(model, initial_layers(options, generator), strict=True):
            assert isinstance(layer, nn.Linear)
            layer.weight.copy_(weight)
    return model


def decoupled_losses(options: SaxeDepthOptions, steps: int) -> np.ndarray:
    """Loss ``½ Σ_k (s_k − a_k^D)²`` of GD at ``reference_lr`` from decoupled init, for steps ``0 … steps``.

    Each mode's layer scale follows ``a ← a + λ a^{D−1}(s − a^D)`` from ``a = 1`` (exact: decoupled,
    balanced modes stay so under gradient descent).
    """
    s, depth, lr = strengths(options), options.depth, options.reference_lr
    a = np.ones_like(s)
    out = np.empty(steps + 1)
    for t in range(steps + 1):
        out[t] = 0.5 * float(np.sum((s - a**depth) ** 2))
        a = a + lr * a ** (depth - 1) * (s - a**depth)
    return out


def decoupled_steps_to_threshold(options: SaxeDepthOptions, cap: int = THEORY_STEP_CAP) -> float:
    """First step at which the decoupled-init recursion's relative loss is at most ``threshold``."""
    s, depth, lr = strengths(options), options.depth, options.reference_lr
    bar = options.threshold * 0.5 * float(np.sum(s**2))
    a = np.ones_like(s)
    for t in range(cap + 1):
        if 0.5 * float(np.sum((s - a**depth) ** 2)) <= bar:
            return float(t)
        a = a + lr * a ** (depth - 1) * (s - a**depth)
    return math.nan


class SaxeDepthData(TaskData):
    """The whole data set as one batch; measured and reference times to the loss threshold."""

    def __init__(self, options: SaxeDepthOptions, device: torch.device) -> None:
        self.options = options
        u, v = singular_vectors(options)
        s = strengths(options)
        target_map = (u @ torch.diag(torch.from_numpy(s)) @ v.T).float()
        self.x = torch.eye(options.width, device=device)
        self.y = target_map.T.contiguous().to(device)  # row μ is y_μ = target_map · e_μ
        self.scale = 0.5 * float(np.sum(s**2))  # the loss at W = 0
        self.theory_steps = decoupled_steps_to_threshold(options)
        self.theory_curve = decoupled_losses(options, 0)
        self.last: tuple[int, float] | None = None
        self.crossed = math.nan

    def train_batches(self, generator: torch.Generator) -> Iterator[Batch]:
        return repeat((self.x, self.y))  # full-batch gradient descent, as in the paper

    def theory_loss(self, step: int) -> float:
        if step >= len(self.theory_curve):
            self.theory_curve = decoupled_losses(self.options, max(step, 2 * len(self.theory_curve)))
        return float(self.theory_curve[step])

    @torch.no_grad()
    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        loss = float(summed_squared_error(model(self.x), self.y))
        relative = loss / self.scale
        self._record_crossing(step, relative)
        return {
            "train/loss": loss,
            "train/relative_loss": relative,
            "depth/steps_to_threshold": self.crossed,
            "depth/reached": float(not math.isnan(self.crossed)),
            "theory/loss": self.theory_loss(step),
            "theory/steps_to_threshold": self.theory_steps,
            "theory/reference_lr": self.options.reference_lr,
        }

    def _record_crossing(self, step: int, relative: float) -> None:
        """The threshold crossing, interpolated in log-loss (losses fall about exponentially near it)."""
        bar = self.options.threshold
        if math.isnan(self.crossed) and relative <= bar:
            if self.last is None or step - self.last[0] == 1:
                self.crossed = float(step)
            else:
                before_step, before = self.last
                frac = math.log(before / bar) / math.log(before / max(relative, 1e-300))
                # The first step at or after the interpolated crossing, as with eval_every = 1.
                self.crossed = float(math.ceil(before_step + frac * (step - before_step)))
        self.last = (step, relative)

    def finalize(self, model: nn.Module) -> dict[str, float]:
        ratio = self.crossed / self.theory_steps if self.theory_steps > 0 else math.nan
        # Only decoupled init follows the recursion; for the others the ratio says how far they are
        # from that depth-independent bar, which is a measurement, not a departure from their theory.
        key = "theory/steps_ratio" if self.options.init == "decoupled" else "depth/steps_over_decoupled"
        return {key: ratio}


def load_data(options: SaxeDepthOptions, device: torch.device) -> SaxeDepthData:
    return SaxeDepthData(options, device)


def build(options: SaxeDepthOptions, generator: torch.Generator) -> nn.Module:
    # nn.Linear's constructor draws from the global RNG; seeded_build keeps it untouched.
    return seeded_build(generator, lambda: build_model(options, generator))


SAXE_DEPTH = TaskInfo(
    name="saxe_depth",
    description="Deep linear nets, steps to a loss threshold against depth, orthogonal vs Gaussian init.",
    options=SaxeDepthOptions,
    test_options={"depth": 3, "width": 4},
    build_model=build,
    load_data=load_data,
    loss=summed_squared_error,
    metrics=(
        "train/loss",
        "train/relative_loss",
        "depth/steps_to_threshold",
        "depth/reached",
        "theory/loss",
        "theory/steps_to_threshold",
    ),
    target=Target("train/relative_loss", 0.01, "min"),
    eval_every=10,
    resources=Resources(cpus=1, gpus=0),
    reference="https://arxiv.org/abs/1312.6120",
    theory_plots=(
        OptionSweepPlot(
            "steps to the loss threshold against depth",
            "depth",
            "depth/steps_to_threshold",
            log_y=True,
            missing_at_budget=True,
            by_rule_name=True,
        ),
    ),
)
