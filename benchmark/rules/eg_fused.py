"""Fused kernels of the EG rules: the foreach math compiled by ``torch.compile`` into few kernels.

The foreach kernels in :mod:`benchmark.rules.eg` make about a dozen passes over the parameters per
step (sign, the denominator, copysign, the exponent, exp, the product, the floor), each a launch and
a read and write of every tensor. Inductor fuses the per-tensor chain into one pass that reads the
parameter, gradient and moments once and writes them once, as torch's ``AdamW(fused=True)`` does by
hand. The math is the same as the loop kernel's; results agree to rounding (compiled ``exp`` and
division may differ in the last bit), which the tests check in float64.

Everything that changes from step to step (the step size, bias corrections, the decay offset) is
passed as a tensor, so a schedule that changes ``lr`` does not recompile; hyperparameters that stay
fixed for a run (betas, momentum, the floor) are compiled in as constants. The first call compiles
(seconds to a minute, once per model shape): worth it for long runs, not for a few steps.

On CUDA the step is also captured as a CUDA graph, replayed with one launch: without it the host
spends longer launching the fused kernels than the GPU spends running them (H100, ResNet-18: 1.6 ms
on the host for 0.13 ms of GPU work). The parameters and the optimizer's state are marked as fixed
addresses when the state is created (:func:`mark_static`), so the graph updates them in place.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["fused_eg_adamw_", "fused_eg_sgd_", "mark_static"]


COMPILE_OPTIONS: dict[str, Any] = {"combo_kernels": True}
"""Inductor options. Combo kernels update many tensors per launch: on an H100 with ResNet-18's 62
tensors, 9 launches in place of 63 (0.13 ms of GPU time per step against 0.39 for AdamW(foreach))."""


@functools.cache
def _compiled(kernel: Callable[..., None], cuda_graphs: bool) -> Callable[..., None]:
    # dynamic=False: a model's tensor shapes are fixed, and static shapes fuse best.
    options = {**COMPILE_OPTIONS, "triton.cudagraphs": cuda_graphs}
    compiled: Callable[..., None] = torch.compile(kernel, dynamic=False, options=options)
    return compiled


def mark_static(*tensors: Tensor) -> None:
    """Declare CUDA tensors that keep their storage for the run (parameters, optimizer state), so a
    captured step updates them in place instead of copying them in and out of the graph."""
    for tensor in tensors:
        if tensor.is_cuda:
            torch._dynamo.mark_static_address(tensor)


def _keep_sign(param: Tensor, exponent: Tensor, floor: float) -> Tensor:
    """``θ·exp(x)`` with ``|θ| ≥ floor`` on every nonzero weight (exact zeros stay zero)."""
    new = param * exponent.exp()
    if floor > 0:
        sign = param.sign()
        new = sign * (new * sign).clamp_min(floor)
    return new


def _eg_adamw_kernel(
    params: list[Tensor],
    grads: Sequence[Tensor],  # a tuple when the caller negated them (maximize)
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    coefficients: Tensor,
    beta1: float,
    beta2: float,
    floor: float,
) -> None:
    moments = zip(params, grads, exp_avgs, exp_avg_sqs, strict=True)
    for i, (param, grad, exp_avg, exp_avg_sq) in enumerate(moments):
        step_size, eps, offset = coefficients[i]
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        signed_denom = (exp_avg_sq.sqrt() + eps).copysign(param)
        param.copy_(_keep_sign(param, offset - step_size * exp_avg / signed_denom, floor))


def fused_eg_adamw_(
    params: list[Tensor],
    grads: Sequence[Tensor],  # a tuple when the caller negated them (maximize)
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    scalars: Callable[[float], tuple[float, float]],
    offset: float,
    beta1: float,
    beta2: float,
    floor: float,
) -> None:
    """One EG-AdamW step over tensors of one device and dtype; ``scalars(step)`` gives (step size, eps')."""
    torch._foreach_add_(state_steps, 1)
    rows = [(*scalars(float(s.item())), offset) for s in state_steps]
    coefficients = torch.tensor(rows, dtype=params[0].dtype).to(params[0].device, non_blocking=True)
    kernel = _compiled(_eg_adamw_kernel, params[0].is_cuda)
    kernel(params, grads, exp_avgs, exp_avg_sqs, coefficients, beta1, beta2, floor)


def _eg_sgd_kernel(
    params: list[Tensor],
    grads: Sequence[Tensor],  # a tuple when the caller negated them (maximize)
    bufs: list[Tensor],
    coefficients: Tensor,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    floor: float,
) -> None:
    lr, offset = coefficients[0], coefficients[1]
    for i, (param, grad) in enumerate(zip(params, grads, strict=True)):
        sign = param.sign()
        if momentum != 0:
            if weight_decay != 0:
                grad = grad + weight_decay * sign
            buf = bufs[i]
            buf.mul_(momentum).add_(grad, alpha=1 - dampening)
            grad = grad + momentum * buf if nesterov else buf
        param.copy_(_keep_sign(param, offset - lr * grad * sign, floor))


def fused_eg_sgd_(
    params: list[Tensor],
    grads: Sequence[Tensor],  # a tuple when the caller negated them (maximize)
    bufs: list[Tensor],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    floor: float,
) -> None:
    """One EG-SGD step over tensors of one device and dtype; with momentum, every buffer exists."""
    # Without momentum the decay term −lr·s·(λ·s) is −lr·λ on every nonzero weight.
    offset = -lr * weight_decay if momentum == 0 else 0.0
    coefficients = torch.tensor([lr, offset], dtype=params[0].dtype).to(params[0].device, non_blocking=True)
    kernel: Any = _compiled(_eg_sgd_kernel, params[0].is_cuda)
    kernel(params, grads, bufs, coefficients, momentum, dampening, weight_decay, nesterov, floor)
