"""diffgrad: the pinned pytorch-optimizer release against the paper's update, written out here."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from benchmark.rules.diffgrad import DiffGradHParams, build_diffgrad

F64 = torch.float64


def paper_steps(theta: torch.Tensor, grads: list[torch.Tensor], lr: float, b1: float, b2: float, eps: float):
    """θ ← θ − α ξ m̂/(√v̂ + ε), ξ = sigmoid(|g_{t−1} − g_t|), g_0 = 0 (Dubey et al. 2019, eqs. 4-6)."""
    m = torch.zeros_like(theta)
    v = torch.zeros_like(theta)
    previous = torch.zeros_like(theta)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        xi = torch.sigmoid((previous - g).abs())
        theta = theta - lr * xi * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
        previous = g
    return theta


def _diffgrad(start: torch.Tensor, hp: DiffGradHParams, foreach: bool) -> tuple[nn.Linear, Any]:
    """A bias-free linear layer holding ``start``, and our diffgrad on it with the chosen kernel."""
    model = nn.Linear(len(start), 1, bias=False).to(F64)
    with torch.no_grad():
        model.weight.copy_(start[None, :])
    rule = build_diffgrad(model, hp)
    for group in rule.optimizer.param_groups:
        group["foreach"] = foreach
    rule.optimizer.foreach = foreach  # type: ignore[attr-defined]
    return model, rule


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_one_step_at_tiny_gradients_is_the_authors_update(foreach: bool, weight_decay: float) -> None:
    """The authors' code (github.com/shivram1987/diffGrad, ``diffGrad_v2.py``), first step, written out.

    ``g ← g + λθ`` (L2 on the gradient); ``m = (1−β₁)g``, ``v = (1−β₂)g²``, ``ξ = sigmoid(|0 − g|)``;
    ``θ ← θ − α √(1−β₂)/(1−β₁) · ξ m / (√v + ε)``. At ``|g| ≈ 1e-6``, ``v ≈ 1e-15``: a constant
    added to ``v`` inside the root (pytorch-optimizer's 1e-15) changes the step by tens of percent.
    """
    gen = torch.Generator().manual_seed(3)
    start = torch.randn(12, generator=gen, dtype=F64) * 1e-5
    grad = torch.randn(12, generator=gen, dtype=F64) * 1e-6
    lr, b1, b2, eps = 1e-3, 0.9, 0.999, 1e-8
    model, rule = _diffgrad(start, DiffGradHParams(lr=lr, eps=eps, weight_decay=weight_decay), foreach)
    model.weight.grad = grad[None, :].clone()
    rule.optimizer.step()
    g = grad + weight_decay * start
    m, v = (1 - b1) * g, (1 - b2) * g * g
    xi = 1 / (1 + torch.exp(-(torch.zeros_like(g) - g).abs()))
    expected = start - lr * math.sqrt(1 - b2) / (1 - b1) * xi * m / (v.sqrt() + eps)
    torch.testing.assert_close(model.weight.detach()[0] - start, expected - start, rtol=1e-12, atol=0.0)


@pytest.mark.parametrize("foreach", [False, True])
def test_steps_match_the_paper(foreach: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(12, generator=gen, dtype=F64)
    grads = [torch.randn(12, generator=gen, dtype=F64) for _ in range(3)]
    # ε placement differs by √(1−β₂ᵗ); make it negligible
    model, rule = _diffgrad(start, DiffGradHParams(lr=0.01, eps=1e-12), foreach)
    for g in grads:
        model.weight.grad = g[None, :].clone()
        rule.optimizer.step()
    expected = paper_steps(start, grads, 0.01, 0.9, 0.999, 1e-12)
    torch.testing.assert_close(model.weight.detach()[0], expected, rtol=1e-10, atol=1e-12)
    # Not Adam: the friction ξ < 1 makes the step differ from Adam's (the bug of earlier releases).
    adam = nn.Parameter(start.clone())
    opt = torch.optim.Adam([adam], lr=0.01, eps=1e-12)
    for g in grads:
        adam.grad = g.clone()
        opt.step()
    assert not torch.allclose(adam.detach(), expected)
