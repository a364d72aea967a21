"""Saxe, McClelland & Ganguli (2013) §3: learning time of deep linear nets against depth and initialisation.

Data: whitened inputs (the ``width`` basis vectors, ``Σ¹¹ = I``) and targets ``y = U diag(s) Vᵀ x`` with
``U`` (``outputs × outputs``) and ``V`` (the first ``outputs`` columns of a ``width × width`` matrix) random
orthogonal, fixed by ``data_seed``, and ``s`` geometric from ``s_max`` down to ``s_min`` over the
``outputs`` modes. Fewer outputs than inputs, as in the paper's experiment (MNIST, 784 inputs, 10
one-hot outputs, hidden layers of 1000; appendix C): 32 inputs and 8 outputs by default.

Model: ``y = W_D ⋯ W_1 x``, ``depth = D`` weight matrices, ``width × width`` but the last
(``outputs × width``), no biases (the paper's ``N_l = D + 1`` layers of units). Loss:
``½ Σ_μ ‖y_μ − ŷ_μ‖²`` (a sum).

Initialisations (option ``init``):

- ``orthogonal``: each ``W_i`` Haar-random orthogonal (``W_iᵀW_i = I``; the last layer has orthonormal
  rows), so every singular value of the product is 1, whatever the depth;
- ``gaussian``: entries ``N(0, 1/width)`` (the scaled Gaussian, ``g = 1``, fan-in ``width`` everywhere),
  whose product's singular values spread over orders of magnitude as depth grows;
- ``decoupled``: ``W_i = R_i R_{i-1}ᵀ`` with ``R_0 = V`` and the inner ``R_i`` random orthogonal,
  ``W_D = U [I 0] R_{D-1}ᵀ``: every layer is orthogonal *and* the product is ``U [I 0] Vᵀ``, the paper's
  decoupled condition with every mode's strength starting at ``u₀ = 1``.

Why fewer outputs than inputs. With a square end-to-end map (``outputs = width``) a random orthogonal
product ``P`` must rotate onto the target's polar factor ``U Vᵀ``; the straight descent direction
passes close to a singular map in the plane of the eigen-angle of ``U Vᵀ Pᵀ`` nearest π, and deep nets
leave near-singular maps slowly. Measured (width = outputs = 32, GD at ``2/(D s_max²)``, 12 seeds): the
time falls monotonically with that angle's distance from π (depth 12: 1,724 steps at 0.005 rad, 82 at
0.18 rad), and the median, with the rate tuned per depth over ``c = 0.5 … 3``, is 12 / 156 / 460 / 329
steps at depths 2 / 6 / 12 / 20 (single seeds from 46 to 3,410 at depth 20): bounded by a coin of the
initial draw, not flat. With 8 outputs of 32 the row spaces of ``P`` and of the target (8-dimensional in
32) meet only at 0, the path from one to the other avoids singular maps, and the time is flat in depth,
as the paper found for MNIST's 10 outputs of 784. For ``outputs = width`` the first layer's first row is
negated when needed so that ``det(W_D ⋯ W_1)`` has the sign of ``det(U Vᵀ)``: otherwise half of the seeds
must drive one mode through zero (Arora et al. 2018's deficiency margin). Negating a row keeps both
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
``decoupled`` init (already aligned, so a few steps only), and the depth-independent bar the paper says
random orthogonal init tracks and scaled Gaussian init misses, increasingly with depth.

Measured: ``depth/steps_to_threshold``, the first step at which ``train/relative_loss`` (the loss over
its value at ``W = 0``, ``½Σs²``) is at most ``threshold``, interpolated in log-loss between
evaluations (exact with ``eval_every = 1``), NaN until then; ``depth/reached`` is 1 once it is
reached; at the end, measured over theory is ``theory/steps_ratio`` for ``decoupled`` init and
``depth/steps_over_decoupled`` for the others (their time against the decoupled bar).

Measured (defaults: width 32, 8 outputs, ``s`` 2 … 0.5, threshold 0.01; GD at ``c/(D s_max²)``,
``c ∈ {1, 1.5, 2}``, 8 seeds, eval every step), median steps at depths 2 / 6 / 12 / 20:

- orthogonal: 17.5 / 26 / 28 / 30.5 at ``c = 1``, 9 / 13 / 14.5 / 16 at ``c = 2`` (the best ``c`` at
  every depth): flat from depth 6 on, within ±11% of 14.5, every seed within 11–21 steps there;
- gaussian: 8.5 / 39.5 / 112 / 292.5 at the best ``c`` per depth (2, 2, 1.5, 1): growing, 34 times the
  depth-2 time at depth 20; ``c = 2`` fails (diverges) for some seeds from depth 12 on.

Target: ``train/relative_loss`` at most 0.01 (the default ``threshold``).

When not to use: ``lr_scale`` above 2 from depth 6 on (GD at ``reference_lr`` then leaves the stable
range at the largest mode, whose curvature is ``≈ D s_max^{2−2/D} λ``; measured: orthogonal times jump
at ``c = 2.5``–3).
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

from benchmark.tasks.base import (
    Resources,
    Target,
    TaskData,
    TaskInfo,
    TaskOptions,
    model_member_bytes,
    seeded_build,
)
from benchmark.tasks.saxe import random_orthogonal, summed_squared_error
from benchmark.types import Batch, OptionSweepPlot

THEORY_STEP_CAP = 200_000  # the recursion stops here; beyond it the reference is reported as NaN


class SaxeDepthOptions(TaskOptions):
    depth: Annotated[int, Field(ge=2, description="D, weight matrices in the product (N_l = D + 1)")] = 6
    width: Annotated[int, Field(ge=1, description="input and hidden dimension (= samples)")] = 32
    outputs: Annotated[int, Field(ge=1, description="output dimension = target modes, at most width")] = 8
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
        if self.outputs > self.width:
            raise ValueError(f"outputs: must be at most width = {self.width}, got {self.outputs}")
        return self

    @property
    def reference_lr(self) -> float:
        """The paper's depth scaling of the rate, ``λ = lr_scale / (D s_max²)``."""
        return self.lr_scale / (self.depth * self.s_max**2)


def strengths(options: SaxeDepthOptions) -> np.ndarray:
    """The target's singular values, geometric from ``s_max`` to ``s_min`` over ``outputs`` modes."""
    return np.geomspace(options.s_max, options.s_min, options.outputs)


def singular_vectors(options: SaxeDepthOptions) -> tuple[Tensor, Tensor]:
    """``U`` (``outputs × outputs``) and ``V`` (``width × width``) of the target map (float64), fixed by
    ``data_seed``; the map uses ``V``'s first ``outputs`` columns."""
    gen = torch.Generator().manual_seed(options.data_seed)
    return random_orthogonal(options.outputs, gen), random_orthogonal(options.width, gen)


def target_map(options: SaxeDepthOptions) -> Tensor:
    """``U diag(s) V[:, :outputs]ᵀ``, ``outputs × width`` (float64)."""
    u, v = singular_vectors(options)
    return u @ torch.diag(torch.from_numpy(strengths(options))) @ v[:, : options.outputs].T


def initial_layers(options: SaxeDepthOptions, generator: torch.Generator) -> list[Tensor]:
    """The ``D`` initial weight matrices ``W_1 … W_D`` (float64), first-applied first.

    All are ``width × width`` but the last, ``outputs × width``.
    """
    n, k, depth = options.width, options.outputs, options.depth
    u, v = singular_vectors(options)
    if options.init == "decoupled":
        frames = [v, *(random_orthogonal(n, generator) for _ in range(depth - 1))]
        inner = [frames[i + 1] @ frames[i].T for i in range(depth - 1)]  # W_i = R_i R_{i-1}ᵀ
        return [*inner, u @ frames[-1][:, :k].T]  # W_D = U [I 0] R_{D-1}ᵀ: the product is U [I 0] Vᵀ
    if options.init == "orthogonal":
        # Orthonormal columns for square layers, orthonormal rows for the last one (W Wᵀ = I).
        layers = [random_orthogonal(n, generator) for _ in range(depth)]
        layers[-1] = layers[-1][:k].contiguous()
    else:
        std = 1.0 / math.sqrt(n)  # fan-in n for every layer
        shapes = [(n, n)] * (depth - 1) + [(k, n)]
        layers = [torch.randn(*shape, generator=generator, dtype=torch.float64) * std for shape in shapes]
    if k == n:
        product = torch.linalg.multi_dot(layers[::-1])
        if torch.linalg.det(product) * torch.linalg.det(u) * torch.linalg.det(v) < 0:
            layers[0][0].neg_()  # same sign as det(U Vᵀ): no mode has to cross zero
    return layers


def build_model(options: SaxeDepthOptions, generator: torch.Generator) -> nn.Module:
    n, k = options.width, options.outputs
    fan_out = [n] * (options.depth - 1) + [k]
    model = nn.Sequential(*(nn.Linear(n, m, bias=False) for m in fan_out))
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
        s = strengths(options)
        self.x = torch.eye(options.width, device=device)
        # Row μ is y_μ = target_map · e_μ.
        self.y = target_map(options).float().T.contiguous().to(device)
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
    test_options={"depth": 3, "width": 4, "outputs": 2},
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
    chance=1.0,  # the loss at W = 0
    theory=True,
    eval_every=10,
    resources=Resources(cpus=1, gpus=0),
    batch_member_bytes=model_member_bytes(build, lambda o: o.width * o.width * o.depth),
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
