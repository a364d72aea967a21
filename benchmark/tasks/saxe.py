"""Saxe, McClelland & Ganguli (2013): mode-by-mode learning in a two-layer linear net, with its exact curve.

Data: whitened inputs (the ``n`` basis vectors, so ``Σ¹¹ = Σ_μ x xᵀ = I``) and targets
``y = U diag(s) Vᵀ x``, with ``U`` and ``V`` random orthogonal matrices fixed by ``data_seed``.

Model: ``y = W³² W²¹ x``, no biases, ``hidden`` units. Loss: the paper's **summed** squared error
``½ Σ_μ ‖y_μ − ŷ_μ‖²`` (not a mean), one full batch per step.

Reference (the paper's eq. 12). With the decoupled, balanced init
``W³² = U D Rᵀ``, ``W²¹ = R D Vᵀ``, ``D = √u₀ I`` and ``R`` a random orthogonal matrix, gradient descent at
rate ``λ`` (time constant ``τ = 1/λ``, time counted in steps) moves mode ``k``'s strength
``u_k = u_kᵀ W³² W²¹ v_k`` as

.. math::

    u_k(t) = \\frac{s_k\\, e^{2 s_k t/τ}}{e^{2 s_k t/τ} - 1 + s_k/u_0},\\qquad
    t_{1/2} = \\frac{τ}{2 s_k} \\ln\\frac{s_k - u_0}{u_0}.

The task computes this curve from its options at each evaluation (``theory/u_k``) beside the measured
``modes/u_k``, with ``reference_lr`` the rate of the reference (the theory is of plain GD at that
rate, so other rules are measured by how far they depart from it):

- ``theory/rel_error``: ``max_k |u_k − u_k^th| / s_k`` at this evaluation; ``theory/max_rel_error`` its
  running maximum. Check (decoupled init, GD at ``reference_lr``): at most ``reference_lr · s_max``
  (measured in the note: about 0.75 of that).
- At the end, half-learning times ``modes/t_half_k`` (interpolated between evaluations, so keep
  ``eval_every`` small) against ``theory/t_half_k``, and ``theory/t_half_rel_error``, the largest
  relative gap over the ``top_modes`` strongest modes (default 3). For ``random`` init (entries
  ``N(0, init_std²)``) the reference uses the typical initial strength ``u₀ = init_std²·√hidden``; check:
  within 15% per run for the top 3 modes, and for the mean over seeds of the top 5 (a single run's 4th
  mode can be 30% late). Weak modes run late with random init (mode competition), so they do not count.

Target: ``train/relative_loss`` (the loss over its value at ``W = 0``, ``½Σs²``) at most 0.01.

When not to use: ``reference_lr · s_max`` much above 0.05, where discrete steps leave the
continuous-time curve (the deviation grows as about 0.75·λ·s_max).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from itertools import repeat
from typing import Annotated, Literal

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
from benchmark.types import Batch, CurveOverlay

DEFAULT_STRENGTHS = (3.0, 2.0, 1.5, 1.0, 0.7, 0.5, 0.3, 0.2)


def summed_squared_error(output: Tensor, target: Tensor) -> Tensor:
    """``½ Σ (output − target)²`` over the batch and the outputs: Saxe et al.'s loss (a sum, not a mean)."""
    return 0.5 * (output - target).pow(2).sum()


def random_orthogonal(n: int, generator: torch.Generator, dtype: torch.dtype = torch.float64) -> Tensor:
    """A Haar-random ``n × n`` orthogonal matrix (QR of a Gaussian, signs fixed by R's diagonal)."""
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    rotation: Tensor = (q * torch.sign(torch.diagonal(r))).to(dtype)
    return rotation


class SaxeModesOptions(TaskOptions):
    n: Annotated[int, Field(ge=1, description="input and output dimension (= number of samples)")] = 8
    hidden: Annotated[int, Field(ge=1)] = 8
    strengths: Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=1)] = Field(
        default_factory=lambda: list(DEFAULT_STRENGTHS)
    )
    init: Literal["decoupled", "random"] = "decoupled"
    u0: Annotated[float, Field(gt=0)] = 1e-3
    init_std: Annotated[float, Field(gt=0)] = 1e-2
    reference_lr: Annotated[float, Field(gt=0)] = 0.01
    top_modes: Annotated[int, Field(ge=1)] = 3
    data_seed: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _consistent(self) -> SaxeModesOptions:
        k = len(self.strengths)
        if k > self.n:
            raise ValueError(f"strengths: {k} modes need n >= {k} dimensions, got n = {self.n}")
        if k > self.hidden:
            raise ValueError(f"strengths: {k} modes need hidden >= {k} units, got hidden = {self.hidden}")
        if self.init == "decoupled" and self.u0 >= min(self.strengths):
            raise ValueError(f"u0: must be below every strength (min {min(self.strengths)}), got {self.u0}")
        return self


def singular_vectors(options: SaxeModesOptions) -> tuple[Tensor, Tensor]:
    """``U`` and ``V`` of the target map, fixed by ``data_seed`` (the decoupled init needs them too)."""
    gen = torch.Generator().manual_seed(options.data_seed)
    return random_orthogonal(options.n, gen), random_orthogonal(options.n, gen)


def mode_strength(s: float, u0: float, t: float, tau: float) -> float:
    """Eq. 12: ``u(t) = s / (1 + (s/u₀ − 1) e^{−2st/τ})`` (this form does not overflow)."""
    return s / (1.0 + (s / u0 - 1.0) * math.exp(-2.0 * s * t / tau))


def half_time(s: float, u0: float, tau: float) -> float:
    """Steps for a mode to go from ``u₀`` to ``s/2``: ``(τ/2s) ln((s − u₀)/u₀)``."""
    return tau / (2.0 * s) * math.log((s - u0) / u0)


def effective_u0(options: SaxeModesOptions) -> float:
    """The initial strength the reference uses: ``u0``, or ``init_std²·√hidden`` for random init."""
    return options.u0 if options.init == "decoupled" else options.init_std**2 * math.sqrt(options.hidden)


def build_model(options: SaxeModesOptions, generator: torch.Generator) -> nn.Module:
    model = nn.Sequential(
        nn.Linear(options.n, options.hidden, bias=False), nn.Linear(options.hidden, options.n, bias=False)
    )
    with torch.no_grad():
        if options.init == "random":
            for layer in model:
                assert isinstance(layer, nn.Linear)
                layer.weight.normal_(0.0, options.init_std, generator=generator)
        else:
            k = len(options.strengths)
            u, v = singular_vectors(options)
            r = random_orthogonal(options.hidden, generator)[:, :k]  # hidden × k, orthonormal columns
            root = math.sqrt(options.u0)
            first, second = model[0], model[1]
            assert isinstance(first, nn.Linear)
            assert isinstance(second, nn.Linear)
            second.weight.copy_(root * u[:, :k] @ r.T)  # W³² = U D Rᵀ
            first.weight.copy_(root * r @ v[:, :k].T)  # W²¹ = R D Vᵀ
    return model


class SaxeModesData(TaskData):
    """The whole data set as one batch, and the eq. 12 reference at each evaluation."""

    def __init__(self, options: SaxeModesOptions, device: torch.device) -> None:
        self.options = options
        k = len(options.strengths)
        u, v = singular_vectors(options)
        self.u, self.v = u[:, :k].float().to(device), v[:, :k].float().to(device)
        self.s = options.strengths
        target_map = self.u @ torch.diag(torch.tensor(self.s, device=device)) @ self.v.T
        self.x = torch.eye(options.n, device=device)
        self.y = target_map.T.contiguous()  # row μ is y_μ = target_map · e_μ
        self.tau = 1.0 / options.reference_lr
        self.u0 = effective_u0(options)
        self.max_rel_error = 0.0
        self.last: tuple[int, list[float]] | None = None
        self.crossings: dict[int, float] = {}

    def train_batches(self, generator: torch.Generator) -> Iterator[Batch]:
        return repeat((self.x, self.y))  # full-batch gradient descent, as in the paper

    @torch.no_grad()
    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        # The network's map read from its outputs on the basis (works for any parametrisation).
        product = model(self.x).T.float()
        strengths = torch.diagonal(self.u.T @ product @ self.v).tolist()
        loss = float(summed_squared_error(model(self.x), self.y))
        metrics = {"train/loss": loss, "train/relative_loss": loss / (0.5 * sum(s * s for s in self.s))}
        rel = 0.0
        for k, (s, measured) in enumerate(zip(self.s, strengths, strict=True)):
            theory = mode_strength(s, self.u0, step, self.tau)
            metrics[f"modes/u_{k}"] = measured
            metrics[f"theory/u_{k}"] = theory
            rel = max(rel, abs(measured - theory) / s)
        self.max_rel_error = max(self.max_rel_error, rel)
        metrics["theory/rel_error"] = rel
        metrics["theory/max_rel_error"] = self.max_rel_error
        self._record_crossings(step, strengths)
        return metrics

    def _record_crossings(self, step: int, strengths: list[float]) -> None:
        """Half-learning times by linear interpolation between consecutive evaluations."""
        if self.last is not None:
            before_step, before = self.last
            for k, s in enumerate(self.s):
                half = s / 2
                if k not in self.crossings and before[k] < half <= strengths[k]:
                    frac = (half - before[k]) / (strengths[k] - before[k])
                    self.crossings[k] = before_step + frac * (step - before_step)
        elif any(u >= s / 2 for u, s in zip(strengths, self.s, strict=True)):
            self.crossings.update({k: 0.0 for k, s in enumerate(self.s) if strengths[k] >= s / 2})
        self.last = (step, strengths)

    def finalize(self, model: nn.Module) -> dict[str, float]:
        out: dict[str, float] = {}
        worst = 0.0
        for k, s in enumerate(self.s):
            theory = half_time(s, self.u0, self.tau)
            out[f"theory/t_half_{k}"] = theory
            measured = self.crossings.get(k, math.inf)
            if math.isfinite(measured):
                out[f"modes/t_half_{k}"] = measured
            if k < self.options.top_modes:
                worst = max(worst, abs(measured - theory) / theory)
        out["theory/t_half_rel_error"] = worst
        return out


def load_data(options: SaxeModesOptions, device: torch.device) -> SaxeModesData:
    return SaxeModesData(options, device)


def build(options: SaxeModesOptions, generator: torch.Generator) -> nn.Module:
    # The decoupled init draws R from the init stream; seeded_build keeps the global RNG untouched.
    return seeded_build(generator, lambda: build_model(options, generator))


SAXE_MODES = TaskInfo(
    name="saxe_modes",
    description="Two-layer linear net on whitened data; mode strengths against Saxe et al.'s eq. 12.",
    options=SaxeModesOptions,
    test_options={"strengths": [3.0, 1.0], "n": 4, "hidden": 4, "reference_lr": 0.05},
    build_model=build,
    load_data=load_data,
    loss=summed_squared_error,
    metrics=("train/loss", "train/relative_loss", "theory/rel_error", "theory/max_rel_error"),
    target=Target("train/relative_loss", 0.01, "min"),
    chance=1.0,  # the loss at W = 0
    theory=True,
    eval_every=10,
    resources=Resources(cpus=1, gpus=0),
    batch_member_bytes=model_member_bytes(build, lambda o: o.n * (o.n + o.hidden)),
    reference="https://arxiv.org/abs/1312.6120",
    theory_plots=(CurveOverlay("mode strengths over eq. 12", measured="modes/u_{k}", theory="theory/u_{k}"),),
)
