"""Advani & Saxe (2017): noisy linear teacher, linear student, full-batch GD, and the exact test-error curve.

Data (drawn per seed from the data stream): ``P = round(alpha·n)`` inputs ``x ~ N(0, I/n)``, a teacher
``w̄ ~ N(0, teacher_std²)``, labels ``y = w̄·x + ε`` with ``ε ~ N(0, σ_ε²)``, ``σ_ε² = teacher_std²/snr``.
Model: ``ŷ = w·x`` (no bias), ``w₀ ~ N(0, init_std²)``, float64. Loss: ``½ Σ_μ (y_μ − ŷ_μ)²`` (a sum).

The test error is exact, not sampled: ``E_g = ‖w − w̄‖²/n + σ_ε²``. References (Advani & Saxe 2017,
arXiv 1710.03667), for gradient descent at ``reference_lr = η``:

- **per run**, from the eigen-decomposition ``XᵀX = Q diag(λ) Qᵀ`` of this seed's data, with
  ``z = w − w̄`` and ``ε̃ = Qᵀ Xᵀ ε``:

  .. math::

      \\tilde z_i(t) = \\tfrac{\\tilde ε_i}{λ_i}
          + (1-ηλ_i)^t\\big(\\tilde z_i(0) - \\tfrac{\\tilde ε_i}{λ_i}\\big)
      \\quad(λ_i > 0;\\ \\tilde z_i\\ \\text{frozen when}\\ λ_i = 0),

  reported as ``theory/test_error``; ``theory/rel_error`` is the relative gap to the measured value
  and ``theory/max_rel_error`` its running maximum (check: ≤ 1e-6 for GD at ``reference_lr``).
- **the seed mean**, from the Marchenko–Pastur law with ``λ± = (1 ± √α)²``:

  .. math::

      E_g(t) = \\int ρ_{MP}(λ)\\Big[(σ_{w0}^2+σ_{\\bar w}^2)(1-ηλ)^{2t}
               + \\tfrac{σ_ε^2}{λ}\\big(1-(1-ηλ)^t\\big)^2\\Big]dλ + σ_ε^2,

  plus the frozen atom ``(1−α)(σ_w0² + σ_w̄²)`` when α < 1, reported as ``theory/test_error_mp``
  (check: the mean over seeds within 5%; the overtraining peak at α = 1).

The initial weights are read at the step-0 evaluation, which ``train.run`` always makes.
Target: ``test/error`` at most ``1.5 σ_ε²`` (as a ratio: ``test/excess_ratio = E_g/σ_ε² ≤ 1.5``).

When not to use: ``reference_lr ≥ 2/λ₊``, where GD diverges (λ₊ = (1+√α)² is the top of the spectrum
in the large-n limit; finite n spills a little past it); rules that need mini-batches (this is
full-batch by design).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from itertools import repeat
from typing import Annotated

import numpy as np
import torch
from pydantic import Field
from torch import nn

from benchmark.tasks.base import (
    Resources,
    Target,
    TaskData,
    TaskInfo,
    TaskOptions,
    model_member_bytes,
    seeded_build,
)
from benchmark.tasks.saxe import summed_squared_error
from benchmark.types import Batch, CurveOverlay, OptionSweepPlot

F64 = torch.float64
QUADRATURE_NODES = 4_000


class TeacherStudentOptions(TaskOptions):
    n: Annotated[int, Field(ge=2, description="input dimension N (= student parameters)")] = 200
    alpha: Annotated[float, Field(gt=0, description="samples per parameter, P/N")] = 2.0
    snr: Annotated[float, Field(gt=0, description="teacher_std² / noise variance")] = 5.0
    teacher_std: Annotated[float, Field(gt=0)] = 1.0
    init_std: Annotated[float, Field(ge=0)] = 0.0
    reference_lr: Annotated[float, Field(gt=0)] = 0.1

    @property
    def samples(self) -> int:
        return max(1, round(self.alpha * self.n))

    @property
    def noise_var(self) -> float:
        return self.teacher_std**2 / self.snr


def mp_test_error(
    steps: np.ndarray, alpha: float, lr: float, weight_var: float, noise_var: float
) -> np.ndarray:
    """The Marchenko–Pastur average of the discrete-time test error at each of ``steps``.

    ``weight_var = σ_w0² + σ_w̄²``. The substitution ``λ = m + h cos θ`` removes the square-root edges
    (and the 1/λ pole at α = 1). The integrand is then a smooth even function of θ, for which the
    midpoint rule converges geometrically (and needs no eigen-solve for its nodes, unlike Gauss–Legendre).
    """
    lo, hi = (1 - math.sqrt(alpha)) ** 2, (1 + math.sqrt(alpha)) ** 2
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    theta = (np.arange(QUADRATURE_NODES) + 0.5) * math.pi / QUADRATURE_NODES
    weights = np.full(QUADRATURE_NODES, math.pi / QUADRATURE_NODES)
    lam = mid + half * np.cos(theta)
    density = half**2 * np.sin(theta) ** 2 / (2 * math.pi * lam)  # ρ_MP(λ) dλ/dθ
    t = np.asarray(steps, dtype=np.float64)[:, None]
    decay = np.power(1 - lr * lam[None, :], t)
    integrand = weight_var * decay**2 + noise_var / lam[None, :] * (1 - decay) ** 2
    bulk = (integrand * (density * weights)[None, :]).sum(axis=1)
    atom = (1 - alpha) * weight_var if alpha < 1 else 0.0
    risk: np.ndarray = bulk + atom + noise_var
    return risk


def mp_limit(alpha: float, weight_var: float, noise_var: float) -> float:
    """``E_g(∞)``: ``σ_ε²α/(α−1)`` for α > 1; ``(1−α)(σ_w0²+σ_w̄²) + σ_ε²/(1−α)`` for α < 1; ∞ at α = 1."""
    if alpha > 1:
        return noise_var * alpha / (alpha - 1)
    if alpha < 1:
        return (1 - alpha) * weight_var + noise_var / (1 - alpha)
    return math.inf


def build_model(options: TeacherStudentOptions, generator: torch.Generator) -> nn.Module:
    model = nn.Linear(options.n, 1, bias=False).to(F64)
    with torch.no_grad():
        model.weight.normal_(0.0, 1.0, generator=generator).mul_(options.init_std)
    return model


class TeacherStudentData(TaskData):
    """One seed's data set (drawn when the batches are first asked for), and both references."""

    def __init__(self, options: TeacherStudentOptions, device: torch.device) -> None:
        self.options = options
        self.device = device
        self.eye = torch.eye(options.n, dtype=F64, device=device)
        self.max_rel_error = 0.0
        self.drawn = False

    def train_batches(self, generator: torch.Generator) -> Iterator[Batch]:
        # Not a generator function: the data set is drawn now, so the step-0 evaluation can see it.
        opts = self.options
        p, n = opts.samples, opts.n
        x = torch.randn(p, n, generator=generator, dtype=F64) / math.sqrt(n)
        teacher = torch.randn(n, generator=generator, dtype=F64) * opts.teacher_std
        noise = torch.randn(p, generator=generator, dtype=F64) * math.sqrt(opts.noise_var)
        y = x @ teacher + noise
        lam, q = torch.linalg.eigh(x.T @ x)
        self.lam, self.q = lam, q
        self.teacher = teacher
        self.noise_tilde = q.T @ (x.T @ noise)
        self.frozen = lam <= 1e-10 * float(lam.max())
        self.x, self.y = x.to(self.device), y[:, None].to(self.device)
        self.drawn = True
        return repeat((self.x, self.y))

    def per_run_theory(self, step: int) -> float:
        """The exact test error of GD at ``reference_lr`` after ``step`` steps, from this run's start."""
        eta = self.options.reference_lr
        safe = torch.where(self.frozen, torch.ones_like(self.lam), self.lam)
        fixed = torch.where(self.frozen, self.z0, self.noise_tilde / safe)
        decay = torch.where(self.frozen, torch.ones_like(self.lam), (1 - eta * self.lam) ** step)
        z = fixed + decay * (self.z0 - fixed)
        return float(z @ z) / self.options.n + self.options.noise_var

    @torch.no_grad()
    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        if not self.drawn:
            raise RuntimeError("teacher_student: call train_batches(generator) before evaluate")
        w = model(self.eye).reshape(-1).to(F64).cpu()  # the student's weights, whatever its parametrisation
        if step == 0:
            self.z0 = self.q.T @ (w - self.teacher)
        opts = self.options
        diff = w - self.teacher
        measured = float(diff @ diff) / opts.n + opts.noise_var
        theory = self.per_run_theory(step)
        rel = abs(measured - theory) / theory
        self.max_rel_error = max(self.max_rel_error, rel)
        weight_var = opts.init_std**2 + opts.teacher_std**2
        mp = float(
            mp_test_error(np.array([step]), opts.alpha, opts.reference_lr, weight_var, opts.noise_var)[0]
        )
        return {
            "train/loss": float(summed_squared_error(model(self.x), self.y)),
            "test/error": measured,
            "test/excess_ratio": measured / opts.noise_var,
            "theory/test_error": theory,
            "theory/test_error_mp": mp,
            "theory/rel_error": rel,
            "theory/max_rel_error": self.max_rel_error,
        }


def load_data(options: TeacherStudentOptions, device: torch.device) -> TeacherStudentData:
    return TeacherStudentData(options, device)


def build(options: TeacherStudentOptions, generator: torch.Generator) -> nn.Module:
    return seeded_build(generator, lambda: build_model(options, generator))


TEACHER_STUDENT = TaskInfo(
    name="teacher_student",
    description="Noisy linear teacher, linear student, full-batch GD; test error against its exact curve.",
    options=TeacherStudentOptions,
    test_options={"n": 40, "alpha": 2.0, "init_std": 0.1},
    build_model=build,
    load_data=load_data,
    loss=summed_squared_error,
    metrics=(
        "train/loss",
        "test/error",
        "test/excess_ratio",
        "theory/test_error",
        "theory/test_error_mp",
        "theory/rel_error",
        "theory/max_rel_error",
    ),
    target=Target("test/excess_ratio", 1.5, "min"),
    # w = 0: E_g = teacher_std² + σ_ε², i.e. 1 + snr in units of σ_ε² (6 at the default snr 5).
    chance=1 + TeacherStudentOptions().snr,
    theory=True,
    eval_every=50,
    resources=Resources(cpus=1, gpus=0),
    batch_member_bytes=model_member_bytes(build, lambda o: o.samples * (o.n + 1)),
    reference="https://arxiv.org/abs/1710.03667",
    theory_plots=(
        CurveOverlay(
            "test error over its exact curve and the Marchenko–Pastur seed mean",
            measured="test/error",
            theory="theory/test_error",
            references=(("theory/test_error_mp", "Marchenko–Pastur"),),
            log_y=True,
        ),
        OptionSweepPlot("final test error against α = P/N", option="alpha", metric="test/error"),
    ),
)
