"""The implied metric of any rule's step: reading an update as natural gradient descent (seed 003).

Shoji, Suzuki & Kozachkov (2024, arXiv:2409.16422) show that a step that improves a loss can be written
as ``Δθ = −P g`` with ``P`` symmetric positive definite (SPD). With ``u = −Δθ`` (their ``y``):

.. math::

    \\exists\\, P \\succ 0:\\ P g = u \\iff g\\cdot u > 0, \\qquad
    P = \\frac{u u^\\top}{u\\cdot g} + R,\\ R \\succeq 0,\\ R g = 0,

    \\kappa^* = \\min_P \\operatorname{cond}(P) = \\frac{1+\\sin\\psi}{1-\\sin\\psi},\\quad
    \\cos\\psi = \\hat u\\cdot\\hat g,

    \\hat g^\\top P \\hat g = \\frac{u\\cdot g}{\\lVert g\\rVert^2}\\ \\text{(every valid P: the gain)}.

For a discrete step the gradient at the start is not the whole story; the mean-value gradient
``ḡ = ∫₀¹ ∇L(θ₀ + sΔθ) ds`` satisfies ``ḡ·Δθ = L(θ₁) − L(θ₀)`` exactly, so an SPD metric mapping ``ḡ``
to the step exists iff the step lowered the loss. We integrate it with ``n`` new gradients (``nodes``,
2 by default), exact when the gradient along the segment is a polynomial of degree ``2n − 1`` (cubic
for ``n = 2``), in one of two ways:

- ``"legendre"`` (default): Gauss–Legendre with ``n`` interior points; L(θ₁) costs one more
  forward.
- ``"lobatto"``: Gauss–Lobatto with ``n + 1`` points, both ends included. The end at θ₀ reuses the
  gradient that the probe already holds, and the end at θ₁ gives the loss after the step from the
  same forward pass, so it is cheaper. With ``n = 2`` it is Simpson's rule, nodes 0, ½, 1; its
  error constant is larger (1/2880 against 1/4320, times the fourth derivative).

Everything here is O(parameters) in memory: dot products and norms of flat vectors, never a D×D
matrix (:func:`optimal_metric` builds one for tests on tiny D only).

Metrics (``metric/...``, a window summary at each evaluation and run totals at the end):
``cos_psi`` (median), ``kappa`` (median over steps a metric explains), ``no_metric_fraction``,
``gain`` (median of u·g/|g|²), ``loss_up_fraction``, ``kappa_mv`` and ``no_metric_mv_fraction``
(the same with the mean-value gradient), ``block_no_metric_fraction`` and ``block_kappa`` (one SPD
block per parameter tensor), ``diag_violation`` (fraction of coordinates no diagonal metric can
explain) and ``probes``.

Cost: ``nodes`` forward-backward passes (with ``"legendre"``, one more forward for L(θ₁)), plus one
more forward-backward for the gradient at θ₀ unless the rule's own step leaves it in ``.grad``
(``grad_from_rule``, as ``train.run`` does for :class:`~benchmark.rules.base.OptimizerRule`). The
O(D) reductions use multi-tensor kernels and one host sync (``benchmarks/implied_metric.py``
measures the total).

When not to use: on expensive models probe sparsely (``probe_every``), since each probe costs about
two to three training steps; rules that draw randomness inside the step are probed on the same
batch but their noise is part of the step being explained.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from benchmark.types import Batch, LossFn

# ---------------------------------------------------------------------------------------------
# The math, on flat vectors (or lists of per-tensor pieces).


def kappa_star(cos_psi: float) -> float:
    """Smallest condition number of an SPD ``P`` with ``P g = u``: ``(1 + sin ψ)/(1 − sin ψ)``.

    Infinite when ``cos ψ ≤ 0`` (no SPD metric exists). Computed as ``(1+s)²/cos²ψ`` to keep the
    precision near ψ = 90°, where ``1 − sin ψ`` cancels.
    """
    if not cos_psi > 0:
        return math.inf
    c = min(cos_psi, 1.0)
    s = math.sqrt(max(0.0, 1.0 - c * c))
    square = c * c
    return (1.0 + s) ** 2 / square if square > 0 else math.inf  # cos ψ so small that cos² underflows


@dataclass(frozen=True, slots=True)
class StepGeometry:
    """What one step says about its implied metric, against one gradient ``g`` (``u = −Δθ``)."""

    cos_psi: float
    exists: bool
    kappa: float
    gain: float
    ratio: float


def step_geometry(g: Tensor, u: Tensor) -> StepGeometry:
    """Angle, existence, κ*, gain ``u·g/|g|²`` and ratio ``|u|/|g|`` of one step (flat float64 vectors)."""
    return geometry_from_dots(float(g @ g), float(u @ u), float(u @ g))


def geometry_from_dots(gg: float, uu: float, ug: float) -> StepGeometry:
    """:func:`step_geometry` from the three dot products ``g·g``, ``u·u`` and ``u·g``."""
    if gg == 0.0 or uu == 0.0:
        # No gradient or no step: only the null step at a stationary point has a metric.
        exists = gg == 0.0 and uu == 0.0
        return StepGeometry(math.nan, exists, 1.0 if exists else math.inf, math.nan, math.nan)
    cos_psi = ug / math.sqrt(gg * uu)
    return StepGeometry(cos_psi, ug > 0, kappa_star(cos_psi), ug / gg, math.sqrt(uu / gg))


def block_kappa(gs: list[Tensor], us: list[Tensor]) -> float:
    """Condition number of the block-diagonal metric built from each block's optimal metric (vectors)."""
    return block_kappa_from_dots(
        [(float(g @ g), float(u @ u), float(u @ g)) for g, u in zip(gs, us, strict=True)]
    )


def block_kappa_from_dots(dots: list[tuple[float, float, float]]) -> float:
    """Condition number of the block-diagonal metric built from each block's optimal metric.

    Block ``l`` has the eigenvalues ``r_l/√κ_l … r_l√κ_l`` (``r_l = |u_l|/|g_l|``), so the whole has
    ``max_l r_l√κ_l / min_l (r_l/√κ_l)``. Infinite when some block has ``u_l·g_l ≤ 0`` (no block metric
    exists). Blocks with neither gradient nor step constrain nothing and are skipped.
    """
    top, bottom = 0.0, math.inf
    for gg, uu, ug in dots:
        geo = geometry_from_dots(gg, uu, ug)
        if not geo.exists:
            return math.inf
        if math.isnan(geo.ratio):
            continue
        root = math.sqrt(geo.kappa)
        top = max(top, geo.ratio * root)
        bottom = min(bottom, geo.ratio / root)
    if bottom == math.inf:
        return 1.0
    # A block whose step is negligible against its gradient (|u|/|g| underflows, e.g. on a run that
    # is blowing up) needs an unboundedly ill-conditioned metric.
    return top / bottom if bottom > 0 else math.inf


def diagonal_violation(g: Tensor, u: Tensor) -> float:
    """Fraction of coordinates no positive diagonal metric explains: not ``u_i g_i > 0`` (0 = 0 is fine)."""
    both_zero = (g == 0) & (u == 0)
    explained = (u * g > 0) | both_zero
    return float(1.0 - explained.double().mean())


def diagonal_metric(g: Tensor, u: Tensor) -> Tensor:
    """``P_ii = u_i / g_i``: the only diagonal metric, valid where every entry is positive."""
    return u / g


def optimal_metric(g: Tensor, u: Tensor) -> Tensor:
    """The minimum-condition SPD ``P`` with ``P g = u``, as an explicit D×D matrix (tests, tiny D only).

    ``P = r[I + (√κ*−1)e₁e₁ᵀ + (1/√κ*−1)e₂e₂ᵀ]`` with ``r = |u|/|g|``, ``e₁,₂ = (b ± d)/√2``,
    ``b = unit(ĝ+û)`` and ``d = unit(û−ĝ)``. No SPD matrix does better: one of condition ``κ`` turns
    no vector by more than ``arcsin((κ−1)/(κ+1))``, and ``P g = u`` turns ``g`` by ``ψ``.

    Raises:
        ValueError: ``g·u ≤ 0``: no SPD metric maps g to u.
    """
    g = g.double()
    u = u.double()
    if not float(g @ u) > 0:
        raise ValueError("no SPD metric exists: g·u ≤ 0")
    eye = torch.eye(len(g), dtype=torch.float64)
    r = float(u.norm() / g.norm())
    gh, uh = g / g.norm(), u / u.norm()
    d = uh - gh
    if float(d.norm()) < 1e-12:  # parallel: a multiple of the identity
        return r * eye
    b = (gh + uh) / (gh + uh).norm()
    d = d / d.norm()
    e1, e2 = (b + d) / math.sqrt(2), (b - d) / math.sqrt(2)
    root = math.sqrt(kappa_star(float(gh @ uh)))
    return r * (eye + (root - 1) * torch.outer(e1, e1) + (1 / root - 1) * torch.outer(e2, e2))


GAUSS_LEGENDRE_NODES_MAX = 3
Quadrature = Literal["lobatto", "legendre"]


@functools.cache
def gauss_legendre_on_unit(n: int) -> tuple[list[float], list[float]]:
    """Nodes and weights of ``n``-point Gauss–Legendre quadrature on [0, 1] (exact to degree 2n−1)."""
    x, w = np.polynomial.legendre.leggauss(n)
    return [float((xi + 1) / 2) for xi in x], [float(wi / 2) for wi in w]


@functools.cache
def gauss_lobatto_on_unit(n: int) -> tuple[list[float], list[float]]:
    """Nodes and weights of ``n``-point Gauss–Lobatto quadrature on [0, 1], ends included (degree 2n−3).

    The interior nodes are the roots of ``P'_{n−1}`` (on [−1, 1]) and every weight is
    ``2/(n(n−1)P_{n−1}(x)²)``; ``n = 2`` is the trapezoid rule and ``n = 3`` Simpson's.
    """
    if n < 2:
        raise ValueError(f"Gauss–Lobatto needs at least 2 points, got {n}")
    legendre = np.polynomial.legendre.Legendre.basis(n - 1)
    x = np.concatenate([[-1.0], np.sort(legendre.deriv().roots().real), [1.0]])
    w = 2.0 / (n * (n - 1) * legendre(x) ** 2)
    return [float((xi + 1) / 2) for xi in x], [float(wi / 2) for wi in w]


# ---------------------------------------------------------------------------------------------
# The probe: wraps one training step with O(D) memory.


def _dot_table(
    grads: Sequence[Tensor], means: Sequence[Tensor], steps: Sequence[Tensor]
) -> list[list[float]]:
    """Per tensor ``[g·g, u·u, u·g, ḡ·ḡ, u·ḡ, diagonal violations]`` with ``u = −step``, in one host sync.

    The dots are taken in each tensor's own dtype (torch sums blockwise) and stacked on the device,
    so that a GPU run waits once, not once per tensor and quantity. A coordinate is a diagonal
    violation unless ``u_i g_i > 0`` or both are 0, i.e. unless ``sign(step_i) = −sign(g_i)``: two
    sign passes and a count, and, unlike the product ``step_i·g_i``, it cannot underflow to 0.
    """
    rows = []
    for g, m, s in zip(grads, means, steps, strict=True):
        gv, mv, sv = g.reshape(-1), m.reshape(-1), s.reshape(-1)
        mismatch = torch.count_nonzero(torch.sign(sv).add_(torch.sign(gv)))
        dots = torch.stack([gv @ gv, sv @ sv, -(sv @ gv), mv @ mv, -(sv @ mv)]).double()
        rows.append(torch.cat([dots, mismatch.double()[None]]))  # float64 counts stay exact to 2⁵³
    return torch.stack(rows).tolist() if rows else []


RESOLUTION = 100.0
"""A probed step is read only if ``‖Δθ‖ ≥ RESOLUTION·ε·‖θ‖`` (ε: the parameters' machine epsilon)."""


def _resolved(steps: list[Tensor] | tuple[Tensor, ...], theta0: list[Tensor]) -> bool:
    """Whether the step taken is large enough against the parameters' rounding to be read.

    The step actually taken is ``fl(θ₀ + Δθ) − θ₀``; rounding moves each coordinate by up to
    ``ε|θᵢ|/2``, so by ``ε‖θ‖/2`` in all. Below ``RESOLUTION·ε·‖θ‖`` that error could move cos ψ by
    more than 0.5%: a converged run whose steps drown in float32 rounding would otherwise read as a
    rule that follows no metric.
    """
    if not steps:
        return False
    eps = max(torch.finfo(t.dtype).eps for t in theta0)
    step_norm = torch.stack(torch._foreach_norm(steps)).double().norm()
    theta_norm = torch.stack(torch._foreach_norm(theta0)).double().norm()
    norms: list[float] = torch.stack([step_norm, theta_norm]).tolist()  # one host sync
    return norms[0] >= RESOLUTION * eps * norms[1]


@dataclass(slots=True)
class _Record:
    cos_psi: float
    exists: bool
    kappa: float
    gain: float
    loss_up: bool
    exists_mv: bool
    kappa_mv: float
    block_exists: bool
    block_kappa: float
    diag_violation: float


@dataclass(slots=True)
class ImpliedMetricProbe:
    """Measures the implied metric of a rule's step on the step's own batch.

    Usage, around one training step: ``probe.before(batch)``, the rule's step, ``probe.after(batch)``.
    The model is restored exactly to the post-step parameters and buffers, and the probe draws no
    random numbers from the global generators (it forks them), so probing never changes a run.

    Args:
        model: the model the rule trains.
        loss_fn: the task's loss.
        nodes: new gradients (backward passes) for the mean-value gradient (default 2; 1 to 3).
        quadrature: ``"legendre"`` (default: ``nodes`` interior points, and one more forward for
            L(θ₁)) or ``"lobatto"`` (the two ends plus ``nodes − 1`` interior points, and L(θ₁)
            from the end's forward); the same degree of exactness, ``2·nodes − 1`` in the gradient.
        grad_from_rule: read ``g`` at θ₀ from the parameters' ``.grad`` after the step instead of
            computing it in :meth:`before` (saves one forward-backward). Only for rules whose step
            leaves ``∇L(θ₀)`` of the batch in ``.grad`` untouched, such as :class:`OptimizerRule`
            around a ``torch.optim`` optimizer that does not modify gradients in place.
    """

    model: nn.Module
    loss_fn: LossFn
    nodes: int = 2
    grad_from_rule: bool = False
    quadrature: Quadrature = "legendre"
    _theta0: list[Tensor] = field(default_factory=list)
    _grad0: list[Tensor] = field(default_factory=list)
    _loss0: float = math.nan
    _window: list[_Record] = field(default_factory=list)
    _all: list[_Record] = field(default_factory=list)
    _unresolved: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.nodes <= GAUSS_LEGENDRE_NODES_MAX:
            raise ValueError(f"Invalid number of quadrature nodes: {self.nodes}")
        if self.quadrature not in ("lobatto", "legendre"):
            raise ValueError(f"Invalid quadrature: {self.quadrature}")

    def _params(self) -> list[Tensor]:  # not list[Parameter]: torch._foreach_* wants list[Tensor]
        return [p for p in self.model.parameters() if p.requires_grad]

    def _loss_and_grad(self, batch: Batch, params: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        inputs, targets = batch
        loss = self.loss_fn(self.model(inputs), targets)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return loss.detach(), [
            torch.zeros_like(p) if gr is None else gr.detach() for p, gr in zip(params, grads, strict=True)
        ]

    def _fork(self, params: list[Tensor]) -> AbstractContextManager[object]:
        # Forward passes with dropout draw random numbers; the run's own stream must not move.
        devices = [p.device for p in params if p.device.type == "cuda"][:1]
        return torch.random.fork_rng(devices=devices)

    def before(self, batch: Batch) -> None:
        """Save θ₀ and, unless ``grad_from_rule``, the gradient at θ₀ on ``batch`` (one forward-backward)."""
        params = self._params()
        self._theta0 = [p.detach().clone() for p in params]
        if self.grad_from_rule:
            return
        buffers = [b.detach().clone() for b in self.model.buffers()]
        with self._fork(params):
            loss0, self._grad0 = self._loss_and_grad(batch, params)
        self._loss0 = float(loss0)
        for b, saved in zip(self.model.buffers(), buffers, strict=True):
            b.copy_(saved)  # a BatchNorm forward must not move the running statistics

    def after(self, batch: Batch, loss0: float | None = None) -> dict[str, float]:
        """Measure the step just taken; returns this probe's own ``metric/...`` values.

        ``loss0`` is the loss at θ₀ on ``batch`` as the rule reported it; needed with ``grad_from_rule``.
        Cost: ``nodes`` forward-backward passes (plus a forward at θ₁ with ``"legendre"``); the rest
        is a few O(D) passes with multi-tensor (``torch._foreach_*``) kernels and a single host sync.
        """
        params = self._params()
        buffers = list(self.model.buffers())
        if self.grad_from_rule:
            if loss0 is None:
                raise ValueError("grad_from_rule needs the step's loss at θ₀ (loss0)")
            self._loss0 = loss0
            # No copy: the probe only reads it, and the rule's next step replaces .grad.
            self._grad0 = [torch.zeros_like(p) if p.grad is None else p.grad.detach() for p in params]
        with torch.no_grad():
            theta1 = [p.detach().clone() for p in params]
            steps = torch._foreach_sub(theta1, self._theta0)
            if not _resolved(steps, self._theta0):
                self._unresolved += 1
                self._theta0, self._grad0 = [], []
                return {"metric/unresolved": 1.0}
            saved_buffers = [b.detach().clone() for b in buffers]
        mean_grad: list[Tensor] | tuple[Tensor, ...] = []

        def accumulate(grads: list[Tensor], weight: float, fresh: bool) -> None:
            nonlocal mean_grad
            if mean_grad:
                torch._foreach_add_(mean_grad, grads, alpha=weight)
            elif fresh:  # a backward's own gradients: scale them in place
                torch._foreach_mul_(grads, weight)
                mean_grad = grads
            else:
                mean_grad = torch._foreach_mul(grads, weight)

        with self._fork(params):
            if self.quadrature == "lobatto":
                xs, ws = gauss_lobatto_on_unit(self.nodes + 1)
                loss1, grads = self._loss_and_grad(batch, params)  # the model is at θ₁ (s = 1)
                accumulate(grads, ws[-1], fresh=True)
                accumulate(self._grad0, ws[0], fresh=False)  # s = 0: the gradient already held
                xs, ws = xs[1:-1], ws[1:-1]
            else:
                xs, ws = gauss_legendre_on_unit(self.nodes)
                with torch.no_grad():
                    inputs, targets = batch
                    loss1 = self.loss_fn(self.model(inputs), targets)  # read after the sync below
            for x, w in zip(xs, ws, strict=True):
                with torch.no_grad():
                    torch._foreach_copy_(params, self._theta0)
                    torch._foreach_add_(params, steps, alpha=x)
                accumulate(self._loss_and_grad(batch, params)[1], w, fresh=True)
        with torch.no_grad():
            torch._foreach_copy_(params, theta1)
            for b, saved in zip(buffers, saved_buffers, strict=True):
                b.copy_(saved)

        table = _dot_table(self._grad0, mean_grad, steps)
        totals = [sum(row[i] for row in table) for i in range(6)]
        geo = geometry_from_dots(*totals[:3])
        mv = geometry_from_dots(totals[3], totals[1], totals[4])
        bk = block_kappa_from_dots([(row[0], row[1], row[2]) for row in table])
        total = sum(s.numel() for s in steps)
        violations = totals[5]
        record = _Record(
            cos_psi=geo.cos_psi,
            exists=geo.exists,
            kappa=geo.kappa,
            gain=geo.gain,
            loss_up=float(loss1) > self._loss0,
            exists_mv=mv.exists,
            kappa_mv=mv.kappa,
            block_exists=math.isfinite(bk),
            block_kappa=bk,
            diag_violation=violations / max(total, 1),
        )
        self._window.append(record)
        self._all.append(record)
        self._theta0, self._grad0 = [], []
        return _summary([record])

    def window(self) -> dict[str, float]:
        """Summary of the probes since the last call (empty when none): for each evaluation."""
        out = _summary(self._window)
        self._window = []
        return out

    def totals(self) -> dict[str, float]:
        """Summary of every probe of the run, under ``metric/run_...``: for the end-of-run row.

        ``metric/run_unresolved`` counts the probed steps too small for the parameters' precision
        (left out of everything else).
        """
        out = {k.replace("metric/", "metric/run_", 1): v for k, v in _summary(self._all).items()}
        return {**out, "metric/run_unresolved": float(self._unresolved)}


def _median(values: list[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else None


def _summary(records: list[_Record]) -> dict[str, float]:
    if not records:
        return {}
    n = len(records)
    out = {
        "metric/probes": float(n),
        "metric/no_metric_fraction": sum(not r.exists for r in records) / n,
        "metric/no_metric_mv_fraction": sum(not r.exists_mv for r in records) / n,
        "metric/loss_up_fraction": sum(r.loss_up for r in records) / n,
        "metric/block_no_metric_fraction": sum(not r.block_exists for r in records) / n,
        "metric/diag_violation": statistics.fmean(r.diag_violation for r in records),
    }
    # Medians skip steps that no metric explains (κ* = ∞) so that the values stay finite; the
    # fractions above say how many were skipped.
    for key, values in (
        ("cos_psi", [r.cos_psi for r in records]),
        ("gain", [r.gain for r in records]),
        ("kappa", [r.kappa for r in records]),
        ("kappa_mv", [r.kappa_mv for r in records]),
        ("block_kappa", [r.block_kappa for r in records]),
    ):
        median = _median(values)
        if median is not None:
            out[f"metric/{key}"] = median
    return out
