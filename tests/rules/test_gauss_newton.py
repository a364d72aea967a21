"""The factor of the loss's output Hessian shared by kfac and natgrad_exact (rules.gauss_newton)."""

from __future__ import annotations

import math

import torch
from torch import nn

from benchmark.rules.gauss_newton import output_hessian_factor

F64 = torch.float64


def _sum_of_squares_of_means(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (out - target).mean(dim=0).pow(2).sum()  # couples samples: Λ is not block-diagonal


def test_output_factor_reproduces_the_output_hessian_per_sample_or_whole() -> None:
    gen = torch.Generator().manual_seed(2)
    out = torch.randn(5, 3, generator=gen, dtype=F64)
    labels = torch.randint(0, 3, (5,), generator=gen)
    ce = nn.functional.cross_entropy
    hess = torch.func.hessian(lambda o: ce(o.reshape(5, 3), labels))(out.reshape(-1)).reshape(5, 3, 5, 3)
    factor = output_hessian_factor(out, labels, ce)
    assert factor.shape == (5, 3, 3)  # per-sample blocks: one column per output
    for n in range(5):
        torch.testing.assert_close(factor[n] @ factor[n].T, hess[n, :, n], rtol=1e-10, atol=1e-12)
    # A loss that couples the samples gets the factor of the whole Hessian.
    target = 0.5 * out
    coupled = torch.func.hessian(lambda o: _sum_of_squares_of_means(o.reshape(5, 3), target))(out.reshape(-1))
    dense = output_hessian_factor(out, target, _sum_of_squares_of_means)
    assert dense.shape[:2] == (1, 15)
    torch.testing.assert_close(dense[0] @ dense[0].T, coupled, rtol=1e-10, atol=1e-12)


def test_a_non_finite_hessian_gives_no_columns() -> None:
    out = torch.tensor([[math.inf, 0.0, 1.0]], dtype=F64)
    assert output_hessian_factor(out, torch.tensor([0]), nn.functional.cross_entropy).shape[-1] == 0
