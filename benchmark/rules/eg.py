r"""Exponentiated-gradient rules and sign-constrained SGD: learning rules that keep every synapse's sign.

``EGSGD`` and ``EGAdamW`` take the gradient step in log-magnitude space: ``|w|`` is multiplied by
``exp(−lr · sign(w) · d)``, so a weight never changes sign (Dale's law) and its magnitudes become
log-normal-like. ``SGDSigned`` is the gradient-descent baseline under the same constraint: a step
that would cross zero leaves the weight at a tiny value of its old sign.

Each file follows torch.optim's shape: a class that validates and owns state, a public functional,
and two kernels with the same signature, ``_single_tensor_*`` (a loop) and ``_foreach_*``, tested
against each other in float64. The facts come from linclab/EG_optimiser (``optim_eg/sgd_eg.py``,
``adamw_eg.py``) as ``references/eg.md`` records them; the code is ours.

Reference: Cornford, Pogodin et al., "Brain-like learning with exponentiated gradients", bioRxiv
10.1101/2024.10.25.620272.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, overload

import torch
from optuna.distributions import CategoricalDistribution, FloatDistribution
from pydantic import model_validator
from torch import Tensor, nn

from benchmark.rules.base import (
    ErrorCase,
    NonNegativeFloat,
    OptimizerRule,
    PositiveFloat,
    RuleInfo,
    UnitFloat,
)
from benchmark.rules.eg_fused import fused_eg_adamw_, fused_eg_sgd_, mark_static
from benchmark.rules.sign_split import SignSplitHParams, check_nonzero, prepare_sign_split

__all__ = [
    "EG_ADAMW",
    "EG_SGD",
    "SGD_SIGNED",
    "EGAdamW",
    "EGAdamWHParams",
    "EGSGDHParams",
    "SGDSigned",
    "SGDSignedHParams",
    "eg_adamw",
    "eg_sgd",
    "sign_constrain_",
]

DEFAULT_FLOOR = 1e-18
"""Smallest magnitude a sign-preserving rule leaves a nonzero weight at (the reference's threshold)."""

PAPER = "https://www.biorxiv.org/content/10.1101/2024.10.25.620272v1"
Closure = Callable[[], float]
"""A step's closure, typed as ``torch.optim.Optimizer.step`` types it."""
TensorList = list[Tensor] | tuple[Tensor, ...]
"""What torch's ``_foreach_*`` ops take; the out-of-place ones return tuples."""

CPU_BLOCK = 1 << 17
"""Entries per block of the loop kernels on the CPU. A step is a chain of about a dozen elementwise
passes; over whole tensors each pass reads and writes main memory, while over blocks of 2¹⁷ entries
(512 KiB of float32 per tensor) the chain stays in cache. On 2 cores, the EG-AdamW step on
ResNet-18's tensors takes 1.22–1.26× AdamW(foreach) blocked and 1.8–1.9× whole
(``benchmarks/optimizer_step.py``); blocks of 2¹⁷ to 2¹⁹ time alike, 2¹⁴ is dominated by dispatch
and 2²⁰ leaves the cache."""


# ---------------------------------------------------------------------------------------------
# Shared pieces


class _SignDiagnostics:
    """``diagnostics()`` for the sign-preserving optimizers: sign flips and the share at the floor.

    The signs are compared with those seen at the previous call (or before the first step), so
    with :class:`~benchmark.rules.base.OptimizerRule`, which calls it after every step,
    ``rule/sign_flips`` counts the weights whose sign went from + to − or back in the last step.
    The snapshot is taken here, not in ``step``, so that timing ``step`` measures only the update.
    """

    param_groups: list[dict[str, Any]]
    _signs: list[Tensor] | None = None

    def _flat_groups(self) -> list[tuple[Tensor, float]]:
        """Each group's parameters as one flat vector per device and dtype, with the group's floor.

        One concatenation costs a copy but replaces a dozen small ops per parameter, which on a
        small model cost more than the update itself.
        """
        flats = []
        for group in self.param_groups:
            params = [p.detach().reshape(-1) for p in group["params"]]
            for indices in _group_by_device_and_dtype(params).values():
                parts = [params[i] for i in indices]
                flats.append((torch.cat(parts) if len(parts) > 1 else parts[0], float(group["floor"])))
        return flats

    def _remember_signs(self) -> None:
        self._signs = [flat.sign().to(torch.int8) for flat, _ in self._flat_groups()]

    @torch.no_grad()
    def diagnostics(self) -> dict[str, float]:
        """``rule/sign_flips`` (count since the previous call) and ``rule/at_floor`` (fraction)."""
        flats = self._flat_groups()
        current = [flat.sign().to(torch.int8) for flat, _ in flats]
        previous, self._signs = self._signs, current
        flips = 0
        if previous is not None and [p.shape for p in previous] == [c.shape for c in current]:
            flips = sum(int((a * b < 0).sum()) for a, b in zip(previous, current, strict=True))
        at_floor = sum(int(((flat.abs() <= floor) & (flat != 0)).sum()) for flat, floor in flats if floor > 0)
        total = sum(flat.numel() for flat, _ in flats)
        return {"rule/sign_flips": float(flips), "rule/at_floor": at_floor / max(total, 1)}


def _check_common(lr: float, weight_decay: float, floor: float) -> None:
    if not lr >= 0.0:
        raise ValueError(f"Invalid learning rate: {lr}")
    if not weight_decay >= 0.0:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    if not floor >= 0.0:
        raise ValueError(f"Invalid floor value: {floor}")


def _decay_message(lr: float, weight_decay: float) -> str:
    return f"Invalid lr * weight_decay: {lr * weight_decay} (must be < 1, or the decay flips signs)"


def _check_params(params: Sequence[Tensor], grads: Sequence[Tensor], rule: str) -> None:
    for p, g in zip(params, grads, strict=True):
        if g.is_sparse:
            raise RuntimeError(f"{rule} does not support sparse gradients")
        if p.is_complex():
            raise RuntimeError(f"{rule} needs real parameters: a complex number has no sign to keep")


def _check_kernel_choice(foreach: bool | None, fused: bool) -> None:
    if fused and foreach:
        raise RuntimeError("`foreach` and `fused` are two kernels: pick one")


def _default_foreach(params: Sequence[Tensor]) -> bool:
    """foreach when every tensor is a plain tensor on CUDA (torch's rule); the loop otherwise."""
    return bool(params) and all(type(p) in (Tensor, nn.Parameter) and p.device.type == "cuda" for p in params)


_Key = tuple[torch.device, torch.dtype]


def _group_by_device_and_dtype(tensors: Sequence[Tensor]) -> dict[_Key, list[int]]:
    groups: dict[_Key, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.device, t.dtype), []).append(i)
    return groups


def _cpu_blocks(*tensors: Tensor) -> Iterator[tuple[Tensor, ...]]:
    """Matching flat blocks of :data:`CPU_BLOCK` entries of same-shaped contiguous CPU tensors, or the
    tensors whole (on other devices, when small, or when a layout is not contiguous).

    Views share storage, so in-place updates of a block update the tensor. Elementwise results are
    the same as over the whole tensor: each entry sees the same operations.
    """
    first = tensors[0]
    on_cpu = first.device.type == "cpu"
    if not on_cpu or first.numel() <= CPU_BLOCK or not all(t.is_contiguous() for t in tensors):
        yield tensors
        return
    flats = [t.view(-1) for t in tensors]
    for start in range(0, first.numel(), CPU_BLOCK):
        yield tuple(flat[start : start + CPU_BLOCK] for flat in flats)


def _offset(value: float, like: Tensor) -> Tensor:
    """A 0-dim tensor that broadcasts as the ``input`` of ``addcmul``/``addcdiv``."""
    return torch.tensor(value, dtype=like.dtype, device=like.device)


def _multiply_keeping_sign_(param: Tensor, exponent: Tensor, sign: Tensor, floor: float) -> None:
    """``θ ← θ·exp(x)``, then ``|θ| ≥ floor`` on every nonzero weight; ``exponent`` is overwritten.

    ``sign`` is the sign before the update: a weight that underflows to exactly 0 has lost its own.
    """
    param.mul_(exponent.exp_())
    if floor > 0:
        # s·θ = |θ| exactly for s = ±1; exact zeros (s = 0) stay zero: they have no sign to keep.
        param.mul_(sign).clamp_min_(floor).mul_(sign)


def _foreach_multiply_keeping_sign_(
    params: TensorList, exponents: TensorList, signs: TensorList, floor: float
) -> None:
    """:func:`_multiply_keeping_sign_` over lists of tensors."""
    torch._foreach_exp_(exponents)
    torch._foreach_mul_(params, exponents)
    if floor > 0:
        torch._foreach_mul_(params, signs)
        torch._foreach_clamp_min_(params, floor)
        torch._foreach_mul_(params, signs)


# ---------------------------------------------------------------------------------------------
# EG-SGD


class EGSGD(_SignDiagnostics, torch.optim.Optimizer):
    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1.0,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        floor: float = DEFAULT_FLOOR,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool = False,
    ) -> None:
        _check_common(lr, weight_decay, floor)
        _check_kernel_choice(foreach, fused)
        if not momentum >= 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if not 0.0 <= dampening <= 1.0:
            raise ValueError(f"Invalid dampening value: {dampening}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "floor": floor,
            "maximize": maximize,
            "foreach": foreach,
            "fused": fused,
        }
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("nesterov", False)
            group.setdefault("floor", DEFAULT_FLOOR)
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("fused", False)

    def _init_group(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], bufs: list[Tensor | None]
    ) -> None:
        for p in group["params"]:
            if p.grad is None:
                continue
            params.append(p)
            grads.append(p.grad)
            if group["momentum"] != 0:
                bufs.append(self.state[p].get("momentum_buffer"))

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Closure) -> float: ...

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> float | None:
        """Perform a single optimization step.

        Args:
            closure: a closure that re-evaluates the model and returns the loss (optional).
        """
        loss: float | None = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._signs is None:
            self._remember_signs()
        for group in self.param_groups:
            params: list[Tensor] = []
            grads: list[Tensor] = []
            bufs: list[Tensor | None] = []
            self._init_group(group, params, grads, bufs)
            eg_sgd(
                params,
                grads,
                bufs,
                lr=group["lr"],
                momentum=group["momentum"],
                dampening=group["dampening"],
                weight_decay=group["weight_decay"],
                nesterov=group["nesterov"],
                floor=group["floor"],
                maximize=group["maximize"],
                foreach=group["foreach"],
                fused=group["fused"],
            )
            if group["momentum"] != 0:
                for p, buf in zip(params, bufs, strict=True):
                    state = self.state[p]
                    if group["fused"] and buf is not None and state.get("momentum_buffer") is not buf:
                        mark_static(p, buf)
                    state["momentum_buffer"] = buf
        return loss


EGSGD.__doc__ = r"""Exponentiated gradient descent with momentum: a multiplicative, sign-preserving SGD.

    .. math::
       \begin{aligned}
            &\textbf{input}: \gamma \text{ (lr)},\ \theta_0 \text{ (params, no sign ever changes)},\
                \lambda \text{ (weight decay)},\ \mu \text{ (momentum)},\ \tau \text{ (dampening)},\
                \epsilon_f \text{ (floor)} \\
            &\textbf{for}\ t = 1 \ldots \\
            &\quad g_t \leftarrow \nabla_\theta f_t(\theta_{t-1})\ \ (-\nabla \text{ if maximize}) \\
            &\quad s \leftarrow \operatorname{sign}(\theta_{t-1}) \\
            &\quad d_t \leftarrow g_t + \lambda s
                \quad \text{(decay is an L1 penalty on } |\theta| \text{)} \\
            &\quad \textbf{if}\ \mu \neq 0:\ b_t \leftarrow d_t \text{ if } t = 1
                \text{ else } \mu b_{t-1} + (1-\tau) d_t;\quad
                d_t \leftarrow d_t + \mu b_t \text{ if nesterov else } b_t \\
            &\quad \theta_t \leftarrow \theta_{t-1} \odot \exp(-\gamma\, s \odot d_t) \\
            &\quad \theta_t \leftarrow s \odot \max(|\theta_t|, \epsilon_f) \\
            &\textbf{return}\ \theta_t
       \end{aligned}

    Equivalently ``|θ| ← |θ| · exp(−γ · s ⊙ d)``: the mirror-descent step of gradient descent on
    ``log |θ|``, and no weight ever changes sign.

    Args:
        params: iterable of parameters or dicts defining parameter groups.
        lr: learning rate γ; EG usually wants a larger one than GD (default: 1.0).
        momentum: momentum factor μ (default: 0).
        dampening: dampening τ for momentum (default: 0).
        weight_decay: λ; adds ``λ·sign(θ)`` to the gradient, which shrinks ``|θ|`` (default: 0).
        nesterov: Nesterov momentum; needs μ > 0 and τ = 0 (default: False).
        floor: smallest magnitude of a nonzero weight, so none underflows to 0; 0 disables it
            (default: 1e-18).
        maximize: maximize the objective instead of minimizing it (default: False).
        foreach: use the foreach kernel; ``None`` picks it when every parameter is on CUDA
            (default: None).
        fused: use the kernel compiled by ``torch.compile`` (:mod:`benchmark.rules.eg_fused`): one
            pass per tensor, compiled on the first step (default: False).

    Differences from the paper (linclab/EG_optimiser, ``SGD(update_alg="eg")``):
        - ``floor``: the reference has no minimum magnitude, so a weight can underflow to exactly 0
          and, since ``sign(0) = 0``, stay there forever. Here ``|θ|`` is clamped to ``floor``;
          with ``floor=0`` the update is the reference's.
        - Exact zeros (a pruned synapse, say) stay zero in both: they have no sign to keep.
        - A rule of its own rather than an ``update_alg`` switch inside SGD, with a foreach kernel.
        - No upper clamp either way: a large ``γ·d`` overflows ``exp`` and the run diverges.

    When not to use:
        - Parameters initialised at exactly zero (zero-init layers, some normalisation schemes):
          they never move. The registry's ``prepare`` refuses such a model.
        - Parameters whose sign must be learned (an ordinary bias): split them first
          (``split_bias``), or the sign they start with is the sign they keep.
        - Deep image models trained from scratch: in the 2026 paper's ImageNet run EG's top-1 was
          about 5 points below GD's.

    Reference:
        Cornford, Pogodin et al., "Brain-like learning with exponentiated gradients",
        bioRxiv 10.1101/2024.10.25.620272; code: github.com/linclab/EG_optimiser.

    Example:
        >>> opt = EGSGD(model.parameters(), lr=0.5, momentum=0.9)
        >>> opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()
    """


def eg_sgd(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffer_list: list[Tensor | None],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    floor: float,
    maximize: bool = False,
    foreach: bool | None = None,
    fused: bool = False,
) -> None:
    """Functional API of EG-SGD. See :class:`EGSGD` for details.

    Updates ``params`` in place and fills the ``None`` entries of ``momentum_buffer_list``.
    """
    _check_params(params, grads, "EGSGD")
    _check_kernel_choice(foreach, fused)
    if foreach is None:
        foreach = _default_foreach(params)
    kernel = _fused_eg_sgd if fused else _foreach_eg_sgd if foreach else _single_tensor_eg_sgd
    kernel(
        params,
        grads,
        momentum_buffer_list,
        lr=lr,
        momentum=momentum,
        dampening=dampening,
        weight_decay=weight_decay,
        nesterov=nesterov,
        floor=floor,
        maximize=maximize,
    )


def _single_tensor_eg_sgd(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffer_list: list[Tensor | None],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    floor: float,
    maximize: bool,
) -> None:
    # Without momentum the decay term −lr·s·(λ·s) is −lr·λ on every nonzero weight.
    offset = -lr * weight_decay if momentum == 0 else 0.0
    for i, param in enumerate(params):
        whole_grad = grads[i] if not maximize else -grads[i]
        offset_t = _offset(offset, param)
        if momentum == 0:
            for p, grad in _cpu_blocks(param, whole_grad):
                sign = p.sign()
                _multiply_keeping_sign_(p, torch.addcmul(offset_t, grad, sign, value=-lr), sign, floor)
            continue
        whole_buf = momentum_buffer_list[i]
        first_step = whole_buf is None
        if whole_buf is None:  # the buffer starts as the gradient (decay included), as in torch
            whole_buf = momentum_buffer_list[i] = torch.empty_like(whole_grad)
        for p, grad, buf in _cpu_blocks(param, whole_grad, whole_buf):
            sign = p.sign()
            if weight_decay != 0:
                grad = grad.add(sign, alpha=weight_decay)
            if first_step:
                buf.copy_(grad)
            else:
                buf.mul_(momentum).add_(grad, alpha=1 - dampening)
            grad = grad.add(buf, alpha=momentum) if nesterov else buf
            _multiply_keeping_sign_(p, torch.addcmul(offset_t, grad, sign, value=-lr), sign, floor)  # −lr·s·d


def _foreach_eg_sgd(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffer_list: list[Tensor | None],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    floor: float,
    maximize: bool,
) -> None:
    for indices in _group_by_device_and_dtype(params).values():
        device_params = [params[i] for i in indices]
        device_grads: TensorList = [grads[i] for i in indices]
        if maximize:
            device_grads = torch._foreach_neg(device_grads)
        signs = torch._foreach_sign(device_params)
        offset = 0.0
        if momentum != 0:
            if weight_decay != 0:
                device_grads = torch._foreach_add(device_grads, signs, alpha=weight_decay)
            bufs = [momentum_buffer_list[i] for i in indices]
            if all(b is not None for b in bufs):
                present = [b for b in bufs if b is not None]
                torch._foreach_mul_(present, momentum)
                torch._foreach_add_(present, device_grads, alpha=1 - dampening)
            else:
                # First step (or a new parameter): the buffer starts as the gradient, as in torch.
                present = []
                for j, (i, buf) in enumerate(zip(indices, bufs, strict=True)):
                    if buf is None:
                        buf = device_grads[j].detach().clone()
                        momentum_buffer_list[i] = buf
                    else:
                        buf.mul_(momentum).add_(device_grads[j], alpha=1 - dampening)
                    present.append(buf)
            device_grads = torch._foreach_add(device_grads, present, alpha=momentum) if nesterov else present
        else:
            offset = -lr * weight_decay
        exponents = torch._foreach_mul(device_grads, signs)
        torch._foreach_mul_(exponents, -lr)
        if offset != 0:
            torch._foreach_add_(exponents, offset)
        _foreach_multiply_keeping_sign_(device_params, exponents, signs, floor)


def _fused_eg_sgd(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffer_list: list[Tensor | None],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    floor: float,
    maximize: bool,
) -> None:
    hyper = {"lr": lr, "momentum": momentum, "dampening": dampening, "weight_decay": weight_decay}
    if momentum != 0 and any(b is None for b in momentum_buffer_list):
        # The first step creates the buffers; it is one step, not worth a second compiled graph.
        _foreach_eg_sgd(
            params, grads, momentum_buffer_list, **hyper, nesterov=nesterov, floor=floor, maximize=maximize
        )
        return
    for indices in _group_by_device_and_dtype(params).values():
        device_grads: TensorList = [grads[i] for i in indices]
        if maximize:
            device_grads = torch._foreach_neg(device_grads)
        bufs = [b for b in (momentum_buffer_list[i] for i in indices) if b is not None]
        device_params = [params[i] for i in indices]
        fused_eg_sgd_(device_params, device_grads, bufs, **hyper, nesterov=nesterov, floor=floor)


# ---------------------------------------------------------------------------------------------
# EG-AdamW


class EGAdamW(_SignDiagnostics, torch.optim.Optimizer):
    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        floor: float = DEFAULT_FLOOR,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool = False,
    ) -> None:
        _check_common(lr, weight_decay, floor)
        _check_kernel_choice(foreach, fused)
        if not eps >= 0.0:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if lr * weight_decay >= 1.0:
            raise ValueError(_decay_message(lr, weight_decay))
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "floor": floor,
            "maximize": maximize,
            "foreach": foreach,
            "fused": fused,
        }
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("floor", DEFAULT_FLOOR)
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("fused", False)

    def _init_group(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        exp_avgs: list[Tensor],
        exp_avg_sqs: list[Tensor],
        steps: list[Tensor],
    ) -> None:
        for p in group["params"]:
            if p.grad is None:
                continue
            params.append(p)
            grads.append(p.grad)
            state = self.state[p]
            if not state:
                # A CPU float step, as torch's non-capturable Adam keeps it.
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if group["fused"]:
                    mark_static(p, state["exp_avg"], state["exp_avg_sq"])
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Closure) -> float: ...

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> float | None:
        """Perform a single optimization step.

        Args:
            closure: a closure that re-evaluates the model and returns the loss (optional).
        """
        loss: float | None = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._signs is None:
            self._remember_signs()
        for group in self.param_groups:
            params: list[Tensor] = []
            grads: list[Tensor] = []
            exp_avgs: list[Tensor] = []
            exp_avg_sqs: list[Tensor] = []
            steps: list[Tensor] = []
            self._init_group(group, params, grads, exp_avgs, exp_avg_sqs, steps)
            beta1, beta2 = group["betas"]
            eg_adamw(
                params,
                grads,
                exp_avgs,
                exp_avg_sqs,
                steps,
                lr=group["lr"],
                beta1=beta1,
                beta2=beta2,
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                floor=group["floor"],
                maximize=group["maximize"],
                foreach=group["foreach"],
                fused=group["fused"],
            )
        return loss


EGAdamW.__doc__ = r"""AdamW, exponentiated: Adam moments drive a sign-preserving multiplicative update.

    .. math::
       \begin{aligned}
            &\textbf{input}: \gamma \text{ (lr)},\ \beta_1, \beta_2 \text{ (betas)},\
                \theta_0 \text{ (params)},\ \lambda \text{ (weight decay)},\ \epsilon,\
                \epsilon_f \text{ (floor)};\ m_0, v_0 \leftarrow 0 \\
            &\textbf{for}\ t = 1 \ldots \\
            &\quad g_t \leftarrow \nabla_\theta f_t(\theta_{t-1})\ \ (-\nabla \text{ if maximize}) \\
            &\quad \theta_{t-1} \leftarrow \theta_{t-1} (1 - \gamma\lambda)
                \quad \text{(decoupled, multiplicative: signs kept)} \\
            &\quad m_t \leftarrow \beta_1 m_{t-1} + (1-\beta_1) g_t,\quad
                v_t \leftarrow \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
            &\quad b_1 \leftarrow 1-\beta_1^t,\quad b_2 \leftarrow 1-\beta_2^t,\quad
                s \leftarrow \operatorname{sign}(\theta_{t-1}) \\
            &\quad \theta_t \leftarrow \theta_{t-1} \odot
                \exp\!\Big(-\tfrac{\gamma}{b_1}\, s \odot \frac{m_t}{\sqrt{v_t / b_2} + \epsilon}\Big) \\
            &\quad \theta_t \leftarrow s \odot \max(|\theta_t|, \epsilon_f) \\
            &\textbf{return}\ \theta_t
       \end{aligned}

    Args:
        params: iterable of parameters or dicts defining parameter groups.
        lr: learning rate γ (default: 1e-3).
        betas: coefficients of the running averages of the gradient and its square
            (default: (0.9, 0.999)).
        eps: term added to the denominator (default: 1e-8).
        weight_decay: decoupled decay λ; needs ``lr·λ < 1`` so that it keeps signs (default: 1e-2,
            the reference's).
        floor: smallest magnitude of a nonzero weight; 0 disables it (default: 1e-18).
        maximize: maximize the objective instead of minimizing it (default: False).
        foreach: use the foreach kernel; ``None`` picks it when every parameter is on CUDA
            (default: None).
        fused: use the kernel compiled by ``torch.compile`` (:mod:`benchmark.rules.eg_fused`): one
            pass per tensor, compiled on the first step (default: False).

    Differences from the paper (linclab/EG_optimiser ``AdamWeg``, forked from torch 1.13 AdamW):
        - ``floor``: as in :class:`EGSGD`, the reference can underflow a weight to 0 for good.
        - No ``amsgrad`` and no ``capturable`` path; ``step`` is a CPU tensor as in torch's Adam.
        - ``m/(√(v/b₂)+ε)`` is computed as ``√b₂·m/(√v + ε√b₂)`` and the decay factor as
          ``exp(log(1 − γλ))`` inside the step's exponent: equal up to rounding, two passes cheaper.

    When not to use:
        - As for :class:`EGSGD`: exact-zero parameters never move, and unsplit biases keep the
          sign they start with.
        - With ``lr·weight_decay ≥ 1``: the decay factor would flip or zero every weight (refused).

    Reference:
        Cornford, Pogodin et al., bioRxiv 10.1101/2024.10.25.620272; ``optim_eg/adamw_eg.py``.
    """


def eg_adamw(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    floor: float,
    maximize: bool = False,
    foreach: bool | None = None,
    fused: bool = False,
) -> None:
    """Functional API of EG-AdamW. See :class:`EGAdamW` for details.

    Updates ``params``, the moments and the step counters in place.
    """
    _check_params(params, grads, "EGAdamW")
    _check_kernel_choice(foreach, fused)
    if lr * weight_decay >= 1.0:
        raise ValueError(_decay_message(lr, weight_decay))
    if foreach is None:
        foreach = _default_foreach(params)
    kernel = _fused_eg_adamw if fused else _foreach_eg_adamw if foreach else _single_tensor_eg_adamw
    kernel(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        state_steps,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        weight_decay=weight_decay,
        floor=floor,
        maximize=maximize,
    )


def _adam_scalars(step: float, lr: float, beta1: float, beta2: float, eps: float) -> tuple[float, float]:
    """(step size, eps) such that ``step_size·m/(√v + eps')`` equals ``(lr/b₁)·m/(√(v/b₂)+eps)``."""
    bc1 = 1 - beta1**step
    bc2_sqrt = math.sqrt(1 - beta2**step)
    return lr * bc2_sqrt / bc1, eps * bc2_sqrt


def _single_tensor_eg_adamw(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    floor: float,
    maximize: bool,
) -> None:
    # The decay factor 1 − lr·λ > 0 joins the exponent as log(1 − lr·λ): one pass fewer.
    offset = math.log1p(-lr * weight_decay)
    for i, param in enumerate(params):
        grad = grads[i] if not maximize else -grads[i]
        step_t = state_steps[i]
        step_t += 1
        step_size, eps_t = _adam_scalars(float(step_t.item()), lr, beta1, beta2, eps)
        offset_t = _offset(offset, param)
        for p, g, exp_avg, exp_avg_sq in _cpu_blocks(param, grad, exp_avgs[i], exp_avg_sqs[i]):
            exp_avg.lerp_(g, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            sign = p.sign() if floor > 0 else p  # the sign is needed only by the floor
            # s·m/d = m/(s·d) for s = ±1; copysign keeps d > 0 where θ = 0 (no 0/0 for a zero weight).
            signed_denom = exp_avg_sq.sqrt().add_(eps_t).copysign_(p)
            exponent = torch.addcdiv(offset_t, exp_avg, signed_denom, value=-step_size)
            _multiply_keeping_sign_(p, exponent, sign, floor)


def _foreach_eg_adamw(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    floor: float,
    maximize: bool,
) -> None:
    offset = math.log1p(-lr * weight_decay)
    for indices in _group_by_device_and_dtype(params).values():
        device_params = [params[i] for i in indices]
        device_grads: TensorList = [grads[i] for i in indices]
        device_exp_avgs = [exp_avgs[i] for i in indices]
        device_exp_avg_sqs = [exp_avg_sqs[i] for i in indices]
        device_steps = [state_steps[i] for i in indices]
        if maximize:
            device_grads = torch._foreach_neg(device_grads)
        torch._foreach_add_(device_steps, 1)
        torch._foreach_lerp_(device_exp_avgs, device_grads, 1 - beta1)
        torch._foreach_mul_(device_exp_avg_sqs, beta2)
        torch._foreach_addcmul_(device_exp_avg_sqs, device_grads, device_grads, 1 - beta2)
        scalars = [_adam_scalars(float(s.item()), lr, beta1, beta2, eps) for s in device_steps]
        denoms = torch._foreach_sqrt(device_exp_avg_sqs)
        torch._foreach_add_(denoms, [e for _, e in scalars])
        exponents = torch._foreach_div(device_exp_avgs, denoms)
        # s·(m/d) with s = sign(θ): torch has no foreach copysign, and a copysign launch per
        # tensor cost more on CUDA than this whole product. A zero weight gets exponent 0 and stays 0.
        signs = torch._foreach_sign(device_params)
        torch._foreach_mul_(exponents, signs)
        torch._foreach_mul_(exponents, [-s for s, _ in scalars])
        if offset != 0:
            torch._foreach_add_(exponents, offset)
        _foreach_multiply_keeping_sign_(device_params, exponents, signs, floor)


def _fused_eg_adamw(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    floor: float,
    maximize: bool,
) -> None:
    offset = math.log1p(-lr * weight_decay)
    scalars = functools.partial(_adam_scalars, lr=lr, beta1=beta1, beta2=beta2, eps=eps)
    for indices in _group_by_device_and_dtype(params).values():
        device_grads: TensorList = [grads[i] for i in indices]
        if maximize:
            device_grads = torch._foreach_neg(device_grads)
        fused_eg_adamw_(
            [params[i] for i in indices],
            device_grads,
            [exp_avgs[i] for i in indices],
            [exp_avg_sqs[i] for i in indices],
            [state_steps[i] for i in indices],
            scalars=scalars,
            offset=offset,
            beta1=beta1,
            beta2=beta2,
            floor=floor,
        )


# ---------------------------------------------------------------------------------------------
# Sign-constrained SGD


class SGDSigned(_SignDiagnostics, torch.optim.SGD):
    r"""SGD under Dale's law: a step that would cross zero leaves the weight at a tiny value of its old sign.

    The step is torch's :class:`torch.optim.SGD` (momentum, dampening, Nesterov and L2 decay as
    there); afterwards :func:`sign_constrain_` puts back every weight whose sign the step flipped.

    .. math::
       \theta_t \leftarrow \text{SGD}(\theta_{t-1});\quad s = \operatorname{sign}(\theta_{t-1});\quad
       \theta_t \leftarrow s \odot \max(s \odot \theta_t, \epsilon_f) \text{ where } s \neq 0

    Args:
        params: iterable of parameters or dicts defining parameter groups.
        lr: learning rate (default: 0.1, the reference notebook's).
        momentum, dampening, weight_decay, nesterov: as :class:`torch.optim.SGD` (defaults 0, 0, 0,
            False).
        floor: the magnitude a weight is left at when the step would cross zero (default: 1e-18).
        maximize, foreach: as :class:`torch.optim.SGD`.

    Differences from the paper (linclab/EG_optimiser ``SGD(update_alg="gd", freeze_gd_signs=True)``):
        - The reference resets only weights with ``s·θ < 0``; this also lifts same-signed weights
          below ``floor`` (and a step landing exactly on 0) to ``floor``.
        - As there, a weight that is exactly 0 before the step has no sign and moves freely.
        - The reference's ``update_alg="gd_sign"`` never updates the weights (a bug, see the note);
          this class is what its notebook actually runs.

    When not to use:
        - As a fast rule: the sign check costs extra passes over the weights every step.
        - With ordinary biases: they would be frozen near zero once they try to change sign; split
          them (``split_bias``).

    Reference:
        Cornford, Pogodin et al., bioRxiv 10.1101/2024.10.25.620272; ``optim_eg/sgd_eg.py``.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.1,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        floor: float = DEFAULT_FLOOR,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        if not floor >= 0.0:
            raise ValueError(f"Invalid floor value: {floor}")
        super().__init__(
            params,
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            maximize=maximize,
            foreach=foreach,
        )
        self.defaults["floor"] = floor
        for group in self.param_groups:
            group.setdefault("floor", floor)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)  # type: ignore[no-untyped-call]
        for group in self.param_groups:
            group.setdefault("floor", DEFAULT_FLOOR)

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Closure) -> float: ...

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> float | None:
        """Perform a single optimization step, then undo every sign change.

        Args:
            closure: a closure that re-evaluates the model and returns the loss (optional).
        """
        if self._signs is None:
            self._remember_signs()
        signs = [[p.sign() for p in group["params"]] for group in self.param_groups]
        loss: float | None = super().step(closure)
        for group, group_signs in zip(self.param_groups, signs, strict=True):
            sign_constrain_(group["params"], group_signs, group["floor"])
        return loss


@torch.no_grad()
def sign_constrain_(params: Sequence[Tensor], signs: Sequence[Tensor], floor: float) -> None:
    """Where ``signs`` is ±1, bring each weight back to that sign with magnitude at least ``floor``.

    Entries whose old sign is 0 are left as they are.
    """
    for param, sign in zip(params, signs, strict=True):
        constrained = torch.mul(param, sign).clamp_min_(floor).mul_(sign)
        param.copy_(torch.where(sign == 0, param, constrained))


# ---------------------------------------------------------------------------------------------
# Registry entries


class _MomentumHParams(SignSplitHParams):
    momentum: UnitFloat = 0.0
    dampening: UnitFloat = 0.0
    weight_decay: NonNegativeFloat = 0.0
    nesterov: bool = False
    floor: NonNegativeFloat = DEFAULT_FLOOR

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> _MomentumHParams:
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("nesterov needs momentum > 0 and dampening 0")
        return self


class EGSGDHParams(_MomentumHParams):
    """EG-SGD's hyperparameters; the defaults are the reference's (lr: its notebook's EG value)."""

    lr: PositiveFloat = 1.0


class SGDSignedHParams(_MomentumHParams):
    """Sign-constrained SGD's hyperparameters (lr: the reference notebook's value)."""

    lr: PositiveFloat = 0.1


class EGAdamWHParams(SignSplitHParams):
    """EG-AdamW's hyperparameters; the defaults are the reference ``AdamWeg``'s."""

    lr: PositiveFloat = 1e-3
    betas: tuple[UnitFloat, UnitFloat] = (0.9, 0.999)
    eps: PositiveFloat = 1e-8
    weight_decay: NonNegativeFloat = 1e-2
    floor: NonNegativeFloat = DEFAULT_FLOOR

    @model_validator(mode="after")
    def _decay_keeps_signs(self) -> EGAdamWHParams:
        if self.lr * self.weight_decay >= 1:
            raise ValueError("lr * weight_decay below 1 (the decay factor 1 - lr*wd must stay positive)")
        return self


def prepare_eg(model: nn.Module, generator: torch.Generator, hparams: SignSplitHParams) -> nn.Module:
    """Sign-split the model (see :mod:`benchmark.rules.sign_split`) and refuse zero-initialised layers."""
    model = prepare_sign_split(model, generator, hparams)
    check_nonzero(model)
    return model


def build_eg_sgd(model: nn.Module, hp: EGSGDHParams) -> OptimizerRule:
    return OptimizerRule(
        EGSGD(
            model.parameters(),
            lr=hp.lr,
            momentum=hp.momentum,
            dampening=hp.dampening,
            weight_decay=hp.weight_decay,
            nesterov=hp.nesterov,
            floor=hp.floor,
        )
    )


def build_eg_adamw(model: nn.Module, hp: EGAdamWHParams) -> OptimizerRule:
    return OptimizerRule(
        EGAdamW(
            model.parameters(),
            lr=hp.lr,
            betas=hp.betas,
            eps=hp.eps,
            weight_decay=hp.weight_decay,
            floor=hp.floor,
        )
    )


def build_sgd_signed(model: nn.Module, hp: SGDSignedHParams) -> OptimizerRule:
    return OptimizerRule(
        SGDSigned(
            model.parameters(),
            lr=hp.lr,
            momentum=hp.momentum,
            dampening=hp.dampening,
            weight_decay=hp.weight_decay,
            nesterov=hp.nesterov,
            floor=hp.floor,
        )
    )


_MOMENTUM_ERRORS = (
    ErrorCase({"lr": -0.1}, r"lr: expected greater than 0"),
    ErrorCase({"momentum": 1.5}, r"momentum: expected less than 1"),
    ErrorCase({"floor": -1e-9}, r"floor: expected greater than or equal to 0"),
    ErrorCase({"nesterov": True}, r"nesterov needs momentum > 0 and dampening 0"),
    ErrorCase({"init": "orthogonal"}, r"init: expected 'default' or 'lognormal'"),
)

EG_SGD = RuleInfo(
    name="eg_sgd",
    data_parallel=True,
    description="Exponentiated-gradient SGD: multiplicative, sign-preserving updates (Dale's law).",
    hparams=EGSGDHParams,
    build=build_eg_sgd,
    search_space={
        "lr": FloatDistribution(1e-2, 10.0, log=True),
        "momentum": CategoricalDistribution([0.0, 0.9]),
        "weight_decay": FloatDistribution(1e-8, 1e-3, log=True),
    },
    reference=PAPER,
    prepare=prepare_eg,
    error_cases=_MOMENTUM_ERRORS,
)

EG_ADAMW = RuleInfo(
    name="eg_adamw",
    data_parallel=True,
    description="Exponentiated-gradient AdamW: Adam's moments in a sign-preserving multiplicative step.",
    hparams=EGAdamWHParams,
    build=build_eg_adamw,
    search_space={
        "lr": FloatDistribution(1e-4, 0.3, log=True),
        "weight_decay": FloatDistribution(1e-6, 1e-1, log=True),
    },
    reference=PAPER,
    prepare=prepare_eg,
    error_cases=(
        ErrorCase({"lr": 0}, r"lr: expected greater than 0"),
        ErrorCase({"betas": [0.9]}, r"betas"),
        ErrorCase({"lr": 10.0, "weight_decay": 0.5}, r"lr \* weight_decay below 1"),
        ErrorCase({"split_bias": "maybe"}, r"split_bias: expected a valid boolean"),
    ),
)

SGD_SIGNED = RuleInfo(
    name="sgd_signed",
    data_parallel=True,
    description="Sign-constrained SGD (Dale's-law baseline): a step that would cross zero stops near it.",
    hparams=SGDSignedHParams,
    build=build_sgd_signed,
    search_space={
        "lr": FloatDistribution(1e-4, 1.0, log=True),
        "momentum": CategoricalDistribution([0.0, 0.9]),
        "weight_decay": FloatDistribution(1e-6, 1e-2, log=True),
    },
    reference=PAPER,
    prepare=prepare_sign_split,
    error_cases=_MOMENTUM_ERRORS,
)
