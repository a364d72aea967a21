"""diffgrad: the pinned pytorch-optimizer release against the paper's update, written out here."""

from __future__ import annotations

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


@pytest.mark.parametrize("foreach", [False, True])
def test_steps_match_the_paper(foreach: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(12, generator=gen, dtype=F64)
    grads = [torch.randn(12, generator=gen, dtype=F64) for _ in range(3)]
    model = nn.Linear(12, 1, bias=False).to(F64)
    with torch.no_grad():
        model.weight.copy_(start[None, :])
    hp = DiffGradHParams(lr=0.01, eps=1e-12)  # ε placement differs by √(1−β₂ᵗ); make it negligible
    rule = build_diffgrad(model, hp)
    for group in rule.optimizer.param_groups:
        group["foreach"] = foreach
    rule.optimizer.foreach = foreach  # type: ignore[attr-defined]
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
