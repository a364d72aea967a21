"""The library baselines against their papers' updates, written out here in plain torch.

Each test takes one or two steps of the registered rule (its ``build``, the pinned library) on a
small fixed tensor and compares with the paper's formula. Where the library departs from the
paper, the test says how, and the rule's docstring says so too.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from benchmark.rules import RULES
from benchmark.rules.library import (
    AdEMAMixHParams,
    LionHParams,
    ShampooHParams,
    SOAPHParams,
    build_ademamix,
    build_lion,
    build_shampoo,
    build_soap,
)
from benchmark.rules.muon import MuonHParams, build_muon, split_parameters
from benchmark.rules.self_tuning import (
    ProdigyHParams,
    ScheduleFreeAdamWHParams,
    build_prodigy,
    build_schedule_free_adamw,
)
from benchmark.tasks import TASKS

F64 = torch.float64


class Weight(nn.Module):
    """One weight tensor, the whole model: the rule steps it on gradients the test sets."""

    def __init__(self, start: Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(start.clone())


def _draws(*shape: int, n: int, seed: int = 0) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=gen, dtype=F64) for _ in range(n)]


def _step(model: Weight, optimizer: torch.optim.Optimizer, grad: Tensor) -> Tensor:
    model.weight.grad = grad.clone()
    optimizer.step()
    return model.weight.detach().clone()


def _inverse_root(matrix: Tensor, power: int) -> Tensor:
    """``matrix^{-1/power}`` of a symmetric positive definite matrix, by its eigendecomposition."""
    values, vectors = torch.linalg.eigh(matrix)
    return vectors @ torch.diag(values ** (-1.0 / power)) @ vectors.T


def test_lion_two_steps_are_chen_et_al_algorithm_2() -> None:
    """Chen et al. (2023), Alg. 2: ``c = β₁m + (1−β₁)g``; ``θ ← θ − η(sign c + λθ)``; ``m ← β₂m + (1−β₂)g``.

    Two steps: the first has ``m = 0`` (``c = (1−β₁)g``), the second the momentum of the first.
    """
    start, *grads = _draws(5, 3, n=3)
    lr, (b1, b2), wd = 0.01, (0.9, 0.99), 0.1
    model = Weight(start)
    rule = build_lion(model, LionHParams(lr=lr, betas=(b1, b2), weight_decay=wd))
    theta, m = start.clone(), torch.zeros_like(start)
    for g in grads:
        c = b1 * m + (1 - b1) * g
        theta = theta - lr * (torch.sign(c) + wd * theta)
        m = b2 * m + (1 - b2) * g
        torch.testing.assert_close(_step(model, rule.optimizer, g), theta, rtol=0, atol=1e-15)


@pytest.mark.parametrize("warmup", [None, 4])
def test_ademamix_two_steps_are_pagliardini_et_al_algorithm_1(warmup: int | None) -> None:
    """Pagliardini et al. (2024), Alg. 1, with the schedulers of eqs. 3-4 when ``T`` is set.

    ``m₁ ← β₁m₁ + (1−β₁)g``, ``m₂ ← β₃(t)m₂ + (1−β₃(t))g``, ``ν ← β₂ν + (1−β₂)g²``,
    ``θ ← θ − η((m₁/(1−β₁ᵗ) + α(t)m₂)/(√(ν/(1−β₂ᵗ)) + ε) + λθ)``.
    """
    start, *grads = _draws(4, 6, n=3, seed=1)
    lr, (b1, b2, b3), alpha, eps, wd = 0.01, (0.9, 0.999, 0.9999), 5.0, 1e-8, 0.1
    model = Weight(start)
    hp = AdEMAMixHParams(
        lr=lr, betas=(b1, b2, b3), alpha=alpha, t_alpha_beta3=warmup, eps=eps, weight_decay=wd
    )
    rule = build_ademamix(model, hp)
    theta, m1, m2, nu = start.clone(), *(torch.zeros_like(start) for _ in range(3))
    for t, g in enumerate(grads, start=1):
        if warmup is None:
            alpha_t, beta3_t = alpha, b3
        else:  # eq. 3 (α: linear) and eq. 4 (β₃: linear in the half-life 1/ln β)
            alpha_t = min(t * alpha / warmup, alpha)
            ln1, ln3 = math.log(b1), math.log(b3)
            beta3_t = min(math.exp(ln1 * ln3 / ((1 - t / warmup) * ln3 + (t / warmup) * ln1)), b3)
        m1 = b1 * m1 + (1 - b1) * g
        m2 = beta3_t * m2 + (1 - beta3_t) * g
        nu = b2 * nu + (1 - b2) * g * g
        update = (m1 / (1 - b1**t) + alpha_t * m2) / ((nu / (1 - b2**t)).sqrt() + eps)
        theta = theta - lr * (update + wd * theta)
        torch.testing.assert_close(_step(model, rule.optimizer, g), theta, rtol=1e-12, atol=1e-15)


def test_shampoo_two_steps_are_gupta_et_al_algorithm_1() -> None:
    """Gupta et al. (2018), Alg. 1 with heavy-ball momentum on the preconditioned gradient.

    ``L ← L + GGᵀ``, ``R ← R + GᵀG`` from ``L₀ = εI``, ``R₀ = εI``; ``P = L^{-1/4} G R^{-1/4}``;
    ``M ← μM + P``; ``W ← W − ηM``. The library's ε is ``matrix_eps`` on the initial statistics
    and its exponent ``-1/(2k)`` for a ``k``-dimensional tensor. Preconditioners recomputed every
    step here (``precondition_every=1``); the rule's 10 is the next test's subject.
    """
    start, *grads = _draws(4, 3, n=2, seed=2)
    lr, mu, eps = 0.1, 0.9, 1e-6
    model = Weight(start)
    rule = build_shampoo(model, ShampooHParams(lr=lr, momentum=mu, matrix_eps=eps, precondition_every=1))
    w, m = start.clone(), torch.zeros_like(start)
    left, right = eps * torch.eye(4, dtype=F64), eps * torch.eye(3, dtype=F64)
    for g in grads:
        left, right = left + g @ g.T, right + g.T @ g
        m = mu * m + _inverse_root(left, 4) @ g @ _inverse_root(right, 4)
        w = w - lr * m
        torch.testing.assert_close(_step(model, rule.optimizer, g), w, rtol=1e-9, atol=1e-12)


def test_shampoo_preconditions_blocks_of_256_and_starts_at_step_10() -> None:
    """A 300-row weight is two blocks of rows (256 and 44), each with its own ``L`` and ``R``.

    The library computes the inverse roots at steps 10, 20, …; before step 10 they are the
    identity, so steps 1-9 are momentum SGD (a difference from the paper, in the docstring).
    """
    grads = _draws(300, 5, n=10, seed=3)
    lr, eps = 0.01, 1e-6
    model = Weight(torch.zeros(300, 5, dtype=F64))
    rule = build_shampoo(model, ShampooHParams(lr=lr, momentum=0.0, matrix_eps=eps))
    w = torch.zeros(300, 5, dtype=F64)
    for g in grads[:9]:
        w = w - lr * g
        torch.testing.assert_close(_step(model, rule.optimizer, g), w, rtol=1e-12, atol=1e-15)
    update = torch.empty_like(w)
    for rows in (slice(0, 256), slice(256, 300)):
        blocks = [g[rows] for g in grads]
        left = eps * torch.eye(len(blocks[0]), dtype=F64) + sum(b @ b.T for b in blocks)
        right = eps * torch.eye(5, dtype=F64) + sum(b.T @ b for b in blocks)
        update[rows] = _inverse_root(left, 4) @ grads[-1][rows] @ _inverse_root(right, 4)
    torch.testing.assert_close(_step(model, rule.optimizer, grads[-1]), w - lr * update, rtol=1e-7, atol=1e-9)


def test_shampoo_whose_numbers_blow_up_diverges_instead_of_failing() -> None:
    # The library's SVD raises on statistics out of range; the run must end "diverged", as any
    # other rule's does when its loss blows up, not "failed" with a linear-algebra error.
    rule = RULES.get("shampoo")
    for scale in (math.inf, 1e12):  # a non-finite gradient; statistics beyond float32's range
        model = nn.Linear(3, 2)
        learner = rule.build(model, rule.hparams(precondition_every=1))
        batch = (torch.full((4, 3), scale), torch.zeros(4, 2))
        metrics = learner.train_step(model, batch, nn.functional.mse_loss)
        assert not math.isfinite(metrics["train/loss"]), scale


def test_soap_first_two_steps_are_vyas_et_al_algorithm_3() -> None:
    """Vyas et al. (2024), Alg. 3, as the authors' code runs it.

    Step 1 only gathers ``L = (1−β)GGᵀ``, ``R = (1−β)GᵀG`` and their eigenvectors ``Q_L``,
    ``Q_R``, and leaves the weights (the authors' code; the paper's algorithm steps at once).
    Step 2 is Adam in the rotated basis with the bias correction of one step:
    ``W ← (W − η √(1−β₂)/(1−β₁) · Q_L (Q_Lᵀ M Q_R / (√V + ε)) Q_Rᵀ)(1 − ηλ)``,
    ``M = (1−β₁)G``, ``V = (1−β₂)(Q_Lᵀ G Q_R)²``.
    """
    start, g1, g2 = _draws(4, 4, n=3, seed=4)
    lr, (b1, b2), eps, wd = 0.003, (0.95, 0.95), 1e-8, 0.01
    model = Weight(start)
    rule = build_soap(model, SOAPHParams(lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd))
    torch.testing.assert_close(_step(model, rule.optimizer, g1), start, rtol=0, atol=0)
    q_left = torch.linalg.eigh((1 - b2) * g1 @ g1.T).eigenvectors  # shampoo_beta = β₂
    q_right = torch.linalg.eigh((1 - b2) * g1.T @ g1).eigenvectors
    m = (1 - b1) * g2
    v = (1 - b2) * (q_left.T @ g2 @ q_right) ** 2
    rotated = q_left @ ((q_left.T @ m @ q_right) / (v.sqrt() + eps)) @ q_right.T
    expected = (start - lr * math.sqrt(1 - b2) / (1 - b1) * rotated) * (1 - lr * wd)
    torch.testing.assert_close(_step(model, rule.optimizer, g2), expected, rtol=1e-9, atol=1e-12)


def test_prodigy_steps_are_mishchenko_defazio_algorithm_4() -> None:
    """Mishchenko & Defazio (2023), Alg. 4 (Prodigy, Adam version), ``γ = 1``, β₃ = √β₂.

    ``m ← β₁m + (1−β₁)d g``, ``v ← β₂v + (1−β₂)d²g²``, ``r ← √β₂ r + (1−√β₂)d²⟨g, x₀ − x⟩``,
    ``s ← √β₂ s + (1−√β₂)d²g``, ``d ← max(d, r/‖s‖₁)``, ``x ← x − d_old m/(√v + d ε)``. The
    library's ``d ε`` takes the new ``d``; ε is tiny here so that this placement does not show.
    Step 1 leaves ``d = d₀`` (``x = x₀``); the later steps are where ``d`` grows.
    """
    start, mean, *noise = _draws(6, 2, n=6, seed=5)
    grads = [mean + 0.1 * n for n in noise]  # a steady descent direction, along which d grows
    b1, b2, d0, eps = 0.9, 0.999, 1e-6, 1e-30
    model = Weight(start)
    rule = build_prodigy(model, ProdigyHParams(betas=(b1, b2), d0=d0, eps=eps))
    b3 = math.sqrt(b2)
    x, d = start.clone(), d0
    m, v, s, r = torch.zeros_like(x), torch.zeros_like(x), torch.zeros_like(x), 0.0
    for g in grads:
        m = b1 * m + (1 - b1) * d * g
        v = b2 * v + (1 - b2) * d**2 * g * g
        r = b3 * r + (1 - b3) * d**2 * float((g * (start - x)).sum())
        s = b3 * s + (1 - b3) * d**2 * g
        d_next = max(d, r / float(s.abs().sum()))
        x = x - d * m / (v.sqrt() + d * eps)
        torch.testing.assert_close(_step(model, rule.optimizer, g), x, rtol=1e-10, atol=1e-15)
        d = d_next
    assert d > 2 * d0, "the estimate did not grow: the test would not tell Prodigy from Adam at d₀"
    assert rule.optimizer.param_groups[0]["d"] == pytest.approx(d, rel=1e-10)


def test_schedule_free_adamw_two_steps_are_defazio_et_al_algorithm_1() -> None:
    """Defazio et al. (2024), Alg. 1: gradients at ``y``, AdamW steps on ``z``, the average ``x``.

    ``y = (1−β₁)z + β₁x``; ``v ← β₂v + (1−β₂)g²``; ``z ← z − γ_t(g/(√(v/(1−β₂ᵗ)) + ε) + λy)``;
    ``x ← (1−c)x + cz``. The library's ``c_t = w_t/Σw``, ``w_t = t^r (max γ)²`` (the paper's §4
    weighting; the paper's Alg. 1 has ``γ_t²``), and its bias correction divides ``v`` under the
    root. The parameters hold ``y`` in training mode and ``x`` after ``eval()``.
    """
    start, *grads = _draws(3, 5, n=2, seed=6)
    lr, (b1, b2), eps, wd, warmup, r = 0.01, (0.9, 0.995), 1e-8, 0.05, 2, 0.75
    model = Weight(start)
    hp = ScheduleFreeAdamWHParams(lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, warmup_steps=warmup, r=r)
    optimizer = build_schedule_free_adamw(model, hp).optimizer
    x, z, v = start.clone(), start.clone(), torch.zeros_like(start)
    weights, lr_max = 0.0, 0.0
    for t, g in enumerate(grads, start=1):
        y = (1 - b1) * z + b1 * x
        gamma = lr * min(1.0, t / warmup)
        v = b2 * v + (1 - b2) * g * g
        z = z - gamma * (g / ((v / (1 - b2**t)).sqrt() + eps) + wd * y)
        lr_max = max(lr_max, gamma)
        weight = t**r * lr_max**2
        weights += weight
        c = weight / weights
        x = (1 - c) * x + c * z
        trained = _step(model, optimizer, g)
        torch.testing.assert_close(trained, (1 - b1) * z + b1 * x, rtol=1e-12, atol=1e-15)
    optimizer.eval()
    torch.testing.assert_close(model.weight.detach(), x, rtol=1e-12, atol=1e-15)
    optimizer.train()
    torch.testing.assert_close(model.weight.detach(), trained, rtol=1e-12, atol=1e-15)


def _newton_schulz(update: Tensor, steps: int = 5) -> Tensor:
    """Jordan et al. (2024): ``X ← aX + (bXXᵀ + c(XXᵀ)²)X`` from ``X = B/‖B‖_F``, on the wide side."""
    a, b, c = 3.4445, -4.7750, 2.0315
    tall = update.shape[0] > update.shape[1]
    x = update.T if tall else update
    x = x / x.norm()
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 7), nn.Tanh(), nn.Linear(7, 3)).to(F64)


def test_muon_splits_hidden_weights_from_first_last_and_vectors() -> None:
    model = _mlp()
    muon, adamw = split_parameters(model)
    assert [p.shape for p in muon] == [torch.Size([7, 6])]
    assert len(adamw) == 5  # first and last weights, three biases
    assert {id(p) for p in muon} | {id(p) for p in adamw} == {id(p) for p in model.parameters()}


def test_muon_one_step_is_newton_schulz_momentum_and_the_rest_is_adamw() -> None:
    """One step: the hidden ``7 × 6`` weight by Muon, the rest by AdamW's first step.

    Muon: ``B = (1−μ)G``; Nesterov ``B̃ = (1−μ)G + μB``; ``W ← (1 − ηλ)W − η √max(1, 7/6) NS₅(B̃)``
    (torch's default rate adjustment). torch iterates in bfloat16 (as Jordan et al.'s code), so
    the comparison with this float64 iteration allows 3% of the largest entry (a Gaussian
    gradient; an ill-conditioned one amplifies bfloat16's error in its small singular
    directions). AdamW's first step:
    ``θ ← θ(1 − η_a λ_a) − η_a g/(|g| + ε)``.
    """
    model = _mlp()
    hp = MuonHParams(lr=0.02, momentum=0.95, weight_decay=0.1, adamw_lr=0.003, adamw_weight_decay=0.01)
    rule = build_muon(model, hp)
    before = [p.detach().clone() for p in model.parameters()]
    gen = torch.Generator().manual_seed(7)
    grads = [torch.randn(p.shape, generator=gen, dtype=F64) for p in model.parameters()]
    for p, g in zip(model.parameters(), grads, strict=True):
        p.grad = g.clone()
    rule.optimizer.step()  # what train_step does after its backward
    rule.adamw.step()

    after = [p.detach() for p in model.parameters()]
    mu = hp.momentum
    g = grads[2]
    orthogonal = _newton_schulz((1 - mu) * g + mu * (1 - mu) * g)
    step = hp.lr * math.sqrt(7 / 6) * orthogonal
    expected = (1 - hp.lr * hp.weight_decay) * before[2] - step
    torch.testing.assert_close(after[2], expected, rtol=0, atol=0.03 * float(step.abs().max()))
    singular = torch.linalg.svdvals(orthogonal)
    assert float(singular.min()) > 0.5, "not orthogonalised"
    assert float(singular.max()) < 1.5, "not orthogonalised"
    for i in (0, 1, 3, 4, 5):
        adam = hp.adamw_lr * grads[i] / (grads[i].abs() + 1e-8)
        expected = before[i] * (1 - hp.adamw_lr * hp.adamw_weight_decay) - adam
        torch.testing.assert_close(after[i], expected, rtol=1e-10, atol=1e-13)


def test_muon_refuses_a_model_without_a_hidden_weight() -> None:
    """``sparse_signal``'s single layer has nothing for Muon: the planner drops the cell, saying why."""
    task = TASKS.get("sparse_signal")
    reason = RULES.get("muon").unsupported(task, task.options())
    assert reason is not None
    assert "hidden" in reason
    digits = TASKS.get("digits_mlp")
    assert RULES.get("muon").unsupported(digits, digits.options(depth=2)) is None
