"""The factor of a loss's Hessian with respect to the network's outputs, shared by kfac and natgrad_exact.

The generalized Gauss–Newton matrix is ``F = JᵀΛJ`` with ``J`` the Jacobian of the outputs and
``Λ = ∂²L/∂out²`` (Schraudolph 2002; Martens 2020, §8). Both rules need ``Λ = VVᵀ``: natgrad_exact
to write ``F = (VᵀJ)ᵀ(VᵀJ)``, kfac to backpropagate the columns of ``V`` (Botev, Ritter & Barber
2017, KFLR). ``Λ`` is PSD for squared error and softmax cross-entropy (there ``F`` is the Fisher);
for other losses its negative eigenvalues are clipped at 0, the Gauss–Newton choice.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import hessian

from benchmark.types import LossFn

RELATIVE_CUTOFF = 1e-12
"""Eigenvalues at or below this fraction of the largest are Λ's null space (round-off), set to 0."""


def output_hessian_factor(out: Tensor, targets: Tensor, loss_fn: LossFn) -> Tensor:
    """``V`` of shape ``(blocks, per, R)`` with ``Λ = blockdiag(V_b V_bᵀ)``, ``Λ = ∂²L/∂out²``.

    A loss that is a sum or mean of per-sample terms has a block-diagonal ``Λ``, one ``K × K`` block
    per sample (``K`` = outputs per sample): then ``blocks`` is the batch, ``per = R = K``, and each
    block is factored by its own eigen-decomposition in one batched call. Any other loss gets the
    dense factorisation of the whole ``Λ``: ``blocks = 1``, ``per`` = all outputs, ``R`` = its rank.
    Columns of ``V`` below :data:`RELATIVE_CUTOFF` are 0 (per-sample blocks) or dropped (dense).
    A non-finite ``Λ`` (a diverged step) gives ``R = 0``: no curvature to learn from.
    """
    shape = out.shape
    flat = out.detach().reshape(-1)

    def loss_of(flat_out: Tensor) -> Tensor:
        return loss_fn(flat_out.reshape(shape), targets)

    full = hessian(loss_of)(flat)
    size = flat.numel()
    if not bool(torch.isfinite(full).all()):
        return flat.new_zeros(1, size, 0)
    full = 0.5 * (full + full.T)
    batch = shape[0] if len(shape) else 1
    per = size // batch if batch > 0 and size % batch == 0 else size
    if per < size:
        grid = full.reshape(batch, per, batch, per)
        blocks = torch.diagonal(grid, dim1=0, dim2=2).permute(2, 0, 1)  # (batch, per, per)
        # Mass between different samples, summed on its own: a difference of two float32 totals
        # is round-off sized and took block-diagonal Λs for dense at random steps.
        between = grid.abs().sum(dim=(1, 3)).fill_diagonal_(0.0)
        if float(between.sum()) <= 1e-12 * float(full.abs().sum()):
            evals, evecs = torch.linalg.eigh(blocks)
            kept = evals.where(evals > evals.abs().max().clamp_min(1e-30) * RELATIVE_CUTOFF, 0.0)
            per_sample: Tensor = evecs * kept.sqrt()[:, None, :]  # Λ_n = V_n V_nᵀ
            return per_sample
    evals, evecs = torch.linalg.eigh(full)
    keep = evals > evals.abs().max().clamp_min(1e-30) * RELATIVE_CUTOFF
    dense: Tensor = (evecs[:, keep] * evals[keep].sqrt())[None]
    return dense
