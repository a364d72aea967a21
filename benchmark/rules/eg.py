r"""Exponentiated-gradient rules and sign-constrained SGD: learning rules that keep every synapse's sign.

:class:`EGSGD` and :class:`EGAdamW` multiply ``|θ|`` by ``exp(−γ·sign(θ)·d)``, so no weight changes
sign (Dale's law) and magnitudes become log-normal-like; :class:`SGDSigned` is the GD baseline under
the same constraint. Each rule's update is one pure function written as the math; the optimizers add
only state and apply it over cache-sized blocks of each tensor (the CPU default), over lists of
tensors by ``torch._foreach_*`` ops (:class:`TensorList`, the CUDA default), or compiled (``fused``).

Reference: Cornford, Pogodin et al. (2024), "Brain-like learning with exponentiated gradients",
bioRxiv 10.1101/2024.10.25.620272; the authors' optimisers are ``optim_eg/sgd_eg.py`` and
``optim_eg/adamw_eg.py`` of github.com/linclab/EG_optimiser.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar, overload

import torch
from optuna.distributions import CategoricalDistribution, FloatDistribution
from pydantic import model_validator
from torch import Tensor, nn

from benchmark.rules.base import BuildOptimizer, ErrorCase, RuleInfo
from benchmark.rules.sign_split import SignSplitHParams, check_nonzero, prepare_sign_split
from benchmark.rules.stacked import adam_form, sgd_form

DEFAULT_FLOOR = 1e-18
"""Smallest magnitude a sign-preserving rule leaves a nonzero weight at (the reference's threshold)."""
PAPER = "https://www.biorxiv.org/content/10.1101/2024.10.25.620272v1"
Hyper = float | Tensor
"""A hyperparameter: a number, or a tensor that broadcasts against the parameter (batched runs)."""
Update = Callable[..., Any]
Hypers = dict[str, Any]
Row = tuple[Tensor | None, ...]
"""One parameter's tensors as an update takes them: parameter, gradient, state (``None`` if unused)."""

CPU_BLOCK = 1 << 17
"""Entries per block of the loop on the CPU. An update is a chain of about a dozen elementwise passes;
over blocks of 2¹⁷ entries (512 KiB of float32) the chain stays in cache instead of reading and
writing main memory each pass (``benchmarks/optimizer_step.py --cpu-block 0`` shows the gain)."""


def _op(name: str) -> Callable[..., TensorList]:
    """A :class:`TensorList` method that runs ``torch._foreach_<name>`` (in place if it ends in ``_``)."""
    op = getattr(torch, f"_foreach_{name}")

    def method(self: TensorList, *args: Any, **kwargs: Any) -> TensorList:
        out = op(self.tensors, *(a.tensors if isinstance(a, TensorList) else a for a in args), **kwargs)
        return self if name.endswith("_") else TensorList(out)

    return method


class TensorList:
    """Tensors of one device and dtype whose methods run ``torch._foreach_*`` ops, so that an update
    written for one tensor runs over all of them in a few launches (as modula's ``Vector``)."""

    def __init__(self, tensors: Sequence[Tensor]) -> None:
        self.tensors = list(tensors)

    __add__ = add = _op("add")
    __mul__, sign, sqrt, exp_ = _op("mul"), _op("sign"), _op("sqrt"), _op("exp_")
    add_, mul_, div_, addcmul_ = _op("add_"), _op("mul_"), _op("div_"), _op("addcmul_")
    lerp_, clamp_min_, copy_ = _op("lerp_"), _op("clamp_min_"), _op("copy_")

    def clone(self) -> TensorList:
        return TensorList([t.clone() for t in self.tensors])

    def ne(self, other: float) -> TensorList:
        return TensorList([t.ne(other) for t in self.tensors])

    def where(self, condition: TensorList, other: TensorList) -> TensorList:
        triples = zip(self.tensors, condition.tensors, other.tensors, strict=True)
        return TensorList([a.where(c, b) for a, c, b in triples])


T = TypeVar("T", Tensor, TensorList)


# The updates: pure unless ``inplace`` (the kernels': results go into the tensors passed, no copies).


def _zero(value: Hyper) -> bool:  # the number 0: its term can be skipped
    return not isinstance(value, Tensor) and value == 0


def _plus(x: T, y: T, alpha: Hyper) -> T:
    """``x + α·y``, in one pass with torch.optim's rounding when α is a number."""
    return x + y * alpha if isinstance(alpha, Tensor) else x.add(y, alpha=alpha)


def _plus_(x: T, y: T, alpha: Hyper) -> T:
    """``x ← x + α·y``."""
    return x.add_(y * alpha) if isinstance(alpha, Tensor) else x.add_(y, alpha=alpha)


def _times(x: T, y: T, c: Hyper) -> T:
    """``c·x·y``, in one pass on a tensor when ``c`` is a number."""
    if isinstance(x, Tensor) and not isinstance(c, Tensor):
        return torch.addcmul(x.new_zeros(()), x, y, value=c)
    return (x * y).mul_(c)


def _plus_ratio(offset: Hyper, x: T, y: T, c: Hyper) -> T:
    """``offset + c·x/y``, in one pass on a tensor when ``c`` and ``offset`` are numbers."""
    if isinstance(x, Tensor) and not isinstance(c, Tensor) and not isinstance(offset, Tensor):
        return torch.addcdiv(x.new_tensor(offset), x, y, value=c)
    return (x * c).div_(y).add_(offset)


def _plus_product_(x: T, y: T, z: T, c: Hyper) -> T:
    """``x ← x + c·y·z``, in one pass when ``c`` is a number."""
    return x.add_(y * z * c) if isinstance(c, Tensor) else x.addcmul_(y, z, value=c)


def _momentum_(buf: T, d: T, momentum: Hyper, dampening: Hyper, nesterov: bool) -> T:
    """torch.optim.SGD's momentum, ``b ← μ·b + (1−τ)·d`` in place; returns ``b`` (``d + μ·b`` if Nesterov)."""
    _plus_(buf.mul_(momentum), d, 1 - dampening)
    return _plus(d, buf, momentum) if nesterov else buf


def _keep_sign_(param: T, sign: T, floor: Hyper) -> T:
    """``θ ← s·max(s·θ, floor)``: the old sign ``s``, magnitude at least ``floor``; zeros (s = 0) stay 0."""
    return param.mul_(sign).clamp_min_(floor).mul_(sign)


def eg_sgd_update(
    param: T, grad: T, buf: T | None, *, lr: Hyper, momentum: Hyper, dampening: Hyper,
    weight_decay: Hyper, nesterov: bool, floor: Hyper, inplace: bool = False,
) -> tuple[T, T | None]:  # fmt: skip
    """One EG-SGD step (the math is :class:`EGSGD`'s); returns the parameter and momentum buffer.

    ``buf`` is ``None`` without momentum; on the first step, zeros with ``dampening=0``.
    """
    if not inplace:
        param, buf = param.clone(), None if buf is None else buf.clone()
    s = param.sign()
    d = grad if _zero(weight_decay) else _plus(grad, s, weight_decay)  # an L1 penalty on |θ|
    if buf is not None:
        d = _momentum_(buf, d, momentum, dampening, nesterov)
    return _keep_sign_(param.mul_(_times(s, d, -lr).exp_()), s, floor), buf


def eg_adamw_update(
    param: T, grad: T, exp_avg: T, exp_avg_sq: T, max_exp_avg_sq: T | None, *, lr: Hyper,
    beta1: Hyper, beta2: Hyper, eps: Hyper, weight_decay: Hyper, step: Hyper, floor: Hyper,
    inplace: bool = False,
) -> tuple[T, T, T, T | None]:  # fmt: skip
    """Step ``step`` (from 1) of EG-AdamW (the math is :class:`EGAdamW`'s); returns the parameter,
    the two moments and, with AMSGrad, the running maximum of the second (else ``None``)."""
    if not inplace:
        param, exp_avg, exp_avg_sq = param.clone(), exp_avg.clone(), exp_avg_sq.clone()
        max_exp_avg_sq = None if max_exp_avg_sq is None else max_exp_avg_sq.clone()
    s = param.sign()
    m = exp_avg.lerp_(grad, 1 - beta1)
    v = _plus_product_(exp_avg_sq.mul_(beta2), grad, grad, 1 - beta2)
    if max_exp_avg_sq is not None:  # AMSGrad
        v = max_exp_avg_sq.clamp_min_(v)
    bc1, bc2 = 1 - beta1**step, 1 - beta2**step
    # The decoupled decay θ·(1 − γλ) keeps signs (γλ < 1) and joins the exponent as log(1 − γλ).
    shrink = -lr * weight_decay
    decay = torch.log1p(shrink) if isinstance(shrink, Tensor) else math.log1p(shrink)
    # (γ/b₁)·s·m/(√(v/b₂) + ε) = (γ√b₂/b₁)·m/((√v + ε√b₂)/s): the bias corrections stay scalars,
    # and a weight that is exactly 0 (s = 0) gets exponent m/∞ = 0 and stays 0, as in the reference.
    exponent = _plus_ratio(decay, m, v.sqrt().add_(eps * bc2**0.5).div_(s), -lr * bc2**0.5 / bc1)
    return _keep_sign_(param.mul_(exponent.exp_()), s, floor), exp_avg, exp_avg_sq, max_exp_avg_sq


def sgd_signed_update(
    param: T, grad: T, buf: T | None, *, lr: Hyper, momentum: Hyper, dampening: Hyper,
    weight_decay: Hyper, nesterov: bool, floor: Hyper, inplace: bool = False,
) -> tuple[T, T | None]:  # fmt: skip
    """One sign-constrained SGD step (the math is :class:`SGDSigned`'s); as :func:`eg_sgd_update`."""
    if not inplace:
        param, buf = param.clone(), None if buf is None else buf.clone()
    s = param.sign()
    d = grad if _zero(weight_decay) else _plus(grad, param, weight_decay)  # L2, as torch.optim.SGD
    if buf is not None:
        d = _momentum_(buf, d, momentum, dampening, nesterov)
    stepped = _plus_(param, d, -lr)
    kept = (stepped * s).clamp_min_(floor).mul_(s)  # s·max(s·θ, floor), as _keep_sign_
    return param.copy_(kept.where(s.ne(0), stepped)), buf


# Kernels: the update applied to every parameter, in place.


def _blocks(row: Row) -> Iterator[Row]:
    """Matching flat blocks of :data:`CPU_BLOCK` entries of a row's contiguous CPU tensors, or the
    row whole. Views share storage, and each entry sees the same operations as over whole tensors."""
    present = [t for t in row if t is not None]
    cpu = present[0].device.type == "cpu"
    if not cpu or present[0].numel() <= CPU_BLOCK or not all(t.is_contiguous() for t in present):
        yield row
    else:
        flats = [None if t is None else t.view(-1) for t in row]
        for start in range(0, present[0].numel(), CPU_BLOCK):
            yield tuple(None if f is None else f[start : start + CPU_BLOCK] for f in flats)


def _buckets(rows: Sequence[Row]) -> list[list[Row]]:
    """The rows grouped by their parameter's device and dtype."""
    buckets: dict[tuple[torch.device, torch.dtype], list[Row]] = {}
    for row in rows:
        buckets.setdefault((row[0].device, row[0].dtype), []).append(row)  # type: ignore[union-attr]
    return list(buckets.values())


def _loop(update: Update, rows: Sequence[Row], hyper: Hypers, blocks: bool = True) -> None:
    for row in rows:
        for block in _blocks(row) if blocks else [row]:
            update(*block, **hyper, inplace=True)


def _foreach(update: Update, rows: Sequence[Row], hyper: Hypers) -> None:
    for bucket in _buckets(rows):
        columns = [None if col[0] is None else TensorList(col) for col in zip(*bucket, strict=True)]
        update(*columns, **hyper, inplace=True)


@functools.cache
def _compiled(cuda_graphs: bool) -> Callable[..., None]:
    """The loop, compiled: Inductor fuses an update into one pass per tensor, as torch's
    ``AdamW(fused=True)`` does by hand. On CUDA the step is also a CUDA graph: without it the host
    spends longer launching kernels than the GPU runs them (H100, ResNet-18: 1.6 ms for 0.13)."""
    options: dict[str, Any] = {"combo_kernels": True, "triton.cudagraphs": cuda_graphs}
    compiled: Callable[..., None] = torch.compile(_loop, dynamic=False, options=options)
    return compiled


def _fused(update: Update, rows: Sequence[Row], hyper: Hypers) -> None:
    """The compiled loop; float hyperparameters reach it as 0-dim tensors, so a schedule that changes
    ``lr`` (or Adam's step) does not recompile. The first call compiles (once per model shape)."""
    for bucket in _buckets(rows):
        device = bucket[0][0].device  # type: ignore[union-attr]
        as_tensor = functools.partial(torch.tensor, dtype=torch.float64, device=device)
        tensors = {k: as_tensor(v) if isinstance(v, float) else v for k, v in hyper.items()}
        _compiled(device.type == "cuda")(update, bucket, tensors, blocks=False)


# Optimizers


def _need(ok: bool, name: str, value: Any, expected: str) -> None:
    if not ok:
        raise ValueError(f"Invalid {name}: {value} (expected {expected})")


def check_sgd_hparams(
    lr: float, momentum: float, dampening: float, weight_decay: float, nesterov: bool, floor: float
) -> None:
    """The one check of EG-SGD's and sign-constrained SGD's hyperparameters (constructor and suites)."""
    _need(lr > 0, "lr", lr, "> 0")
    _need(0 <= momentum < 1, "momentum", momentum, "0 <= momentum < 1")
    _need(0 <= dampening <= 1, "dampening", dampening, "0 <= dampening <= 1")
    _need(weight_decay >= 0, "weight_decay", weight_decay, ">= 0")
    _need(floor >= 0, "floor", floor, ">= 0")
    nesterov_ok = not nesterov or (momentum > 0 and dampening == 0)
    _need(nesterov_ok, "nesterov", nesterov, "momentum > 0, dampening 0")


def check_adamw_hparams(
    lr: float, betas: tuple[float, float], eps: float, weight_decay: float, floor: float, amsgrad: bool
) -> None:
    """The one check of EG-AdamW's hyperparameters (constructor and suites)."""
    _need(lr > 0, "lr", lr, "> 0")
    _need(len(betas) == 2 and all(0 <= b < 1 for b in betas), "betas", betas, "two values in [0, 1)")
    _need(eps >= 0, "eps", eps, ">= 0")
    _need(weight_decay >= 0, "weight_decay", weight_decay, ">= 0")
    _need(lr * weight_decay < 1, "lr * weight_decay", lr * weight_decay, "< 1, or the decay flips signs")
    _need(floor >= 0, "floor", floor, ">= 0")


class _SignPreserving(torch.optim.Optimizer):
    """What the three rules share: the step, the choice of kernel, and the sign diagnostics."""

    update: Callable[..., Any]

    def __init__(self, params: Iterable[Any], defaults: Hypers, foreach: bool | None, fused: bool) -> None:
        if fused and foreach:
            raise RuntimeError("`foreach` and `fused` are two kernels: pick one")
        super().__init__(params, {**defaults, "foreach": foreach, "fused": fused})
        if any(p.is_complex() for group in self.param_groups for p in group["params"]):
            raise ValueError(f"{type(self).__name__} needs real parameters: a complex one has no sign")
        self._signs = self._current_signs()

    _batches: Callable[[Hypers], list[tuple[list[Row], Hypers]]]
    """The group's rows, in batches that share the update's hyperparameters."""

    def _rows(self, group: Hypers) -> Iterator[tuple[Tensor, Tensor, Hypers]]:
        """(parameter, gradient, state) of each parameter with a gradient, state created empty."""
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            yield p, -p.grad if group["maximize"] else p.grad, self.state[p]

    def _state(self, group: Hypers, param: Tensor) -> Tensor:
        """A new zero state tensor (fixed in memory, with its parameter, for the CUDA graph)."""
        state = torch.zeros_like(param, memory_format=torch.preserve_format)
        if group["fused"] and param.is_cuda:  # the CUDA graph then updates them in place, no copies
            torch._dynamo.mark_static_address(param)
            torch._dynamo.mark_static_address(state)
        return state

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Perform a single optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss: float | None = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            foreach = group["foreach"]
            if foreach is None:  # torch's rule: foreach when every tensor is on CUDA
                foreach = all(p.is_cuda for p in group["params"])
            apply = _fused if group["fused"] else _foreach if foreach else _loop
            for rows, hyper in self._batches(group):
                if rows:
                    apply(type(self).update, rows, hyper)
        return loss

    def _current_signs(self) -> list[Tensor]:
        return [p.detach().sign().to(torch.int8) for group in self.param_groups for p in group["params"]]

    @torch.no_grad()
    def diagnostics(self) -> dict[str, float]:
        """``rule/sign_flips``: the weights whose sign went from + to − or back since the previous
        call (the previous evaluation; at the first, since the optimizer was built); and
        ``rule/at_floor``: the share of weights held at the floor. ``step`` does none of this work."""
        signs, previous = self._current_signs(), self._signs
        self._signs = signs
        flips = sum(int((a * b < 0).sum()) for a, b in zip(previous, signs, strict=False))
        params = [(p.detach(), group["floor"]) for group in self.param_groups for p in group["params"]]
        at_floor = sum(int(((p.abs() <= floor) & (p != 0)).sum()) for p, floor in params if floor > 0)
        total = sum(p.numel() for p, _ in params)
        return {"rule/sign_flips": float(flips), "rule/at_floor": at_floor / max(total, 1)}


class _SGDFamily(_SignPreserving):
    """EG-SGD and sign-constrained SGD: SGD's hyperparameters and state, two updates."""

    default_lr: float

    def __init__(
        self, params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float | None = None,
        momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False,
        floor: float = DEFAULT_FLOOR, *, maximize: bool = False, foreach: bool | None = None,
        fused: bool = False,
    ) -> None:  # fmt: skip
        lr = self.default_lr if lr is None else lr
        check_sgd_hparams(lr, momentum, dampening, weight_decay, nesterov, floor)
        hyper = {"lr": lr, "momentum": momentum, "dampening": dampening, "weight_decay": weight_decay}
        hyper |= {"nesterov": nesterov, "floor": floor}
        super().__init__(params, {**hyper, "maximize": maximize}, foreach, fused)

    def _batches(self, group: Hypers) -> list[tuple[list[Row], Hypers]]:
        started, new = list[Row](), list[Row]()  # new: zero buffers with dampening 0 start at d
        for p, grad, state in self._rows(group):
            if group["momentum"] != 0 and "momentum_buffer" not in state:
                state["momentum_buffer"] = self._state(group, p)
                new.append((p, grad, state["momentum_buffer"]))
            else:
                started.append((p, grad, state.get("momentum_buffer")))
        hyper = {k: group[k] for k in ("lr", "momentum", "dampening", "weight_decay", "nesterov", "floor")}
        return [(started, hyper), (new, {**hyper, "dampening": 0.0})]


class EGSGD(_SGDFamily):
    r"""Exponentiated gradient descent with momentum: a multiplicative, sign-preserving SGD.

    .. math::
       \begin{aligned}
            &\textbf{for}\ t = 1 \ldots:\quad g_t \leftarrow \nabla_\theta f_t(\theta_{t-1})
                \ \ (-\nabla \text{ if maximize}),\quad s \leftarrow \operatorname{sign}(\theta_{t-1}) \\
            &\quad d_t \leftarrow g_t + \lambda s \quad \text{(an L1 penalty on } |\theta| \text{)} \\
            &\quad \textbf{if}\ \mu \neq 0:\ b_t \leftarrow d_t \text{ if } t = 1
                \text{ else } \mu b_{t-1} + (1-\tau) d_t;\quad
                d_t \leftarrow d_t + \mu b_t \text{ if nesterov else } b_t \\
            &\quad \theta_t \leftarrow s \odot \max\big(|\theta_{t-1}| \odot \exp(-\gamma\, s \odot d_t),\
                \epsilon_f\big)
       \end{aligned}

    The paper's EG update, gradient descent on ``log |θ|``: no weight changes sign, a zero stays 0.

    Args:
        params: iterable of parameters or dicts defining parameter groups.
        lr: learning rate γ; EG usually wants a larger one than GD (default: 1.0).
        momentum: momentum factor μ in [0, 1) (default: 0).
        dampening: dampening τ for momentum (default: 0).
        weight_decay: λ; adds ``λ·sign(θ)`` to the gradient, which shrinks ``|θ|`` (default: 0).
        nesterov: Nesterov momentum; needs μ > 0 and τ = 0 (default: False).
        floor: ε_f, smallest magnitude of a nonzero weight; 0 disables it (default: 1e-18).
        maximize: maximize the objective instead of minimizing it (default: False).
        foreach: ``torch._foreach_*`` ops; ``None`` uses them when every parameter is on CUDA.
        fused: the update compiled by ``torch.compile``; the first step compiles (default: False).

    Differences from the paper (linclab/EG_optimiser ``SGD(update_alg="eg")``):
        - ``floor``: the reference has no minimum magnitude, so a weight can underflow to exactly 0
          and, since ``sign(0) = 0``, stay there forever; ``floor=0`` gives the reference's update.
        - No upper clamp either way: a large ``γ·d`` overflows ``exp`` and the run diverges.

    When not to use: zero-initialised parameters never move (``prepare`` refuses them), an unsplit
    bias keeps its initial sign; on ImageNet (the paper's 2026 version) EG's top-1 trails GD's by 5.

    Reference: Cornford, Pogodin et al. (2024), bioRxiv 10.1101/2024.10.25.620272; ``optim_eg/sgd_eg.py``.
    """

    update = staticmethod(eg_sgd_update)
    default_lr = 1.0


class SGDSigned(_SGDFamily):
    r"""SGD under Dale's law: a step that would cross zero leaves the weight at a tiny value of its old sign.

    .. math::
       \theta_t \leftarrow \text{SGD}(\theta_{t-1});\quad s = \operatorname{sign}(\theta_{t-1});\quad
       \theta_t \leftarrow s \odot \max(s \odot \theta_t, \epsilon_f) \text{ where } s \neq 0

    SGD is torch's (momentum, dampening, Nesterov and L2 decay as there, to the last bit).

    Args:
        params, momentum, dampening, weight_decay, nesterov, maximize, foreach, fused: as
            :class:`EGSGD`, except that ``weight_decay`` is torch's L2 decay.
        lr: learning rate (default: 0.1, the reference notebook's).
        floor: ε_f, where a weight is left when the step would cross zero (default: 1e-18).

    Differences from the paper (linclab/EG_optimiser ``SGD(update_alg="gd", freeze_gd_signs=True)``):
        - The reference resets only weights with ``s·θ < 0``; this also lifts same-signed weights
          below ``floor`` (or landing on 0) to it. As there, an exact 0 has no sign and moves freely.
        - Its ``update_alg="gd_sign"`` never updates the weights (no branch handles it); this class
          is what its notebook runs.

    When not to use: with ordinary biases, which freeze near zero once they try to change sign.

    Reference: Cornford, Pogodin et al. (2024), bioRxiv 10.1101/2024.10.25.620272; ``optim_eg/sgd_eg.py``.
    """

    update = staticmethod(sgd_signed_update)
    default_lr = 0.1


class EGAdamW(_SignPreserving):
    r"""AdamW, exponentiated: Adam's moments drive a sign-preserving multiplicative update.

    .. math::
       \begin{aligned}
            &\textbf{for}\ t = 1 \ldots:\quad g_t \leftarrow \nabla_\theta f_t(\theta_{t-1})
                \ \ (-\nabla \text{ if maximize}),\quad s \leftarrow \operatorname{sign}(\theta_{t-1}) \\
            &\quad m_t \leftarrow \beta_1 m_{t-1} + (1-\beta_1) g_t,\quad
                v_t \leftarrow \beta_2 v_{t-1} + (1-\beta_2) g_t^2,\quad
                \hat v_t \leftarrow \max(\hat v_{t-1}, v_t) \text{ if amsgrad else } v_t \\
            &\quad \theta_t \leftarrow s \odot \max\Big((1 - \gamma\lambda)\,|\theta_{t-1}| \odot
                \exp\!\Big(-\tfrac{\gamma}{1-\beta_1^t}\, s \odot
                \frac{m_t}{\sqrt{\hat v_t / (1-\beta_2^t)} + \epsilon}\Big),\ \epsilon_f\Big)
       \end{aligned}

    Args:
        params: iterable of parameters or dicts defining parameter groups.
        lr: learning rate γ (default: 1e-3).
        betas: (β₁, β₂), the running averages' coefficients (default: (0.9, 0.999)).
        eps: ε, added to the denominator (default: 1e-8).
        weight_decay: decoupled decay λ; ``γλ < 1`` keeps signs (default: 1e-2, the reference's).
        floor: ε_f, smallest magnitude of a nonzero weight; 0 disables it (default: 1e-18).
        amsgrad: divide by the running maximum of ``v`` (default: False).
        maximize, foreach: as :class:`EGSGD` (no ``fused``: compiled, it was no faster than the loop).

    Differences from the paper (linclab/EG_optimiser ``AdamWeg``, forked from torch 1.13 AdamW):
        - ``floor``: as in :class:`EGSGD`, the reference can underflow a weight to 0 for good.
        - No ``capturable`` path; ``step`` is a CPU tensor as in torch's Adam.

    When not to use: as for :class:`EGSGD`.

    Reference: Cornford, Pogodin et al. (2024), bioRxiv 10.1101/2024.10.25.620272; ``optim_eg/adamw_eg.py``.
    """

    update = staticmethod(eg_adamw_update)

    def __init__(
        self, params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
        floor: float = DEFAULT_FLOOR, amsgrad: bool = False, *, maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:  # fmt: skip
        check_adamw_hparams(lr, betas, eps, weight_decay, floor, amsgrad)
        hyper = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "floor": floor}
        super().__init__(params, {**hyper, "amsgrad": amsgrad, "maximize": maximize}, foreach, False)

    def _batches(self, group: Hypers) -> list[tuple[list[Row], Hypers]]:
        by_step: dict[float, list[Row]] = {}
        for p, grad, state in self._rows(group):
            if not state:
                state["step"] = torch.tensor(0.0)  # a CPU float, as torch's non-capturable Adam
                state["exp_avg"], state["exp_avg_sq"] = self._state(group, p), self._state(group, p)
            if group["amsgrad"] and "max_exp_avg_sq" not in state:
                state["max_exp_avg_sq"] = self._state(group, p)
            state["step"] += 1
            row = (p, grad, state["exp_avg"], state["exp_avg_sq"], state.get("max_exp_avg_sq"))
            by_step.setdefault(float(state["step"]), []).append(row)
        hyper = {k: group[k] for k in ("lr", "eps", "weight_decay", "floor")}
        hyper |= dict(zip(("beta1", "beta2"), group["betas"], strict=True))
        return [(rows, {**hyper, "step": step}) for step, rows in by_step.items()]


# Registry entries


class _SGDHParams(SignSplitHParams):
    lr: float = 0.1
    momentum: float = 0.0
    dampening: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False
    floor: float = DEFAULT_FLOOR

    @model_validator(mode="after")
    def _check(self) -> _SGDHParams:
        args = (self.lr, self.momentum, self.dampening, self.weight_decay, self.nesterov, self.floor)
        check_sgd_hparams(*args)
        return self


class EGSGDHParams(_SGDHParams):
    """EG-SGD's hyperparameters; the defaults are the reference's (lr: its notebook's EG value)."""

    lr: float = 1.0


class SGDSignedHParams(_SGDHParams):
    """Sign-constrained SGD's hyperparameters (lr: the reference notebook's value)."""


class EGAdamWHParams(SignSplitHParams):
    """EG-AdamW's hyperparameters; the defaults are the reference ``AdamWeg``'s."""

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 1e-2
    floor: float = DEFAULT_FLOOR
    amsgrad: bool = False

    @model_validator(mode="after")
    def _check(self) -> EGAdamWHParams:
        check_adamw_hparams(self.lr, self.betas, self.eps, self.weight_decay, self.floor, self.amsgrad)
        return self


def prepare_eg(model: nn.Module, generator: torch.Generator, hparams: SignSplitHParams) -> nn.Module:
    """Sign-split the model (see :mod:`benchmark.rules.sign_split`) and refuse zero-initialised layers."""
    model = prepare_sign_split(model, generator, hparams)
    check_nonzero(model)
    return model


def _builder(optimizer: type[torch.optim.Optimizer]) -> BuildOptimizer:
    # The sign-split settings are prepare_eg's, not the optimizer's.
    return BuildOptimizer(optimizer, exclude=frozenset(SignSplitHParams.model_fields))


_SGD_UPDATE_NAMES = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "floor")
_SGD_ERRORS = (
    ErrorCase({"lr": -0.1}, r"Invalid lr: -0.1 \(expected > 0\)"),
    ErrorCase({"momentum": 1.5}, r"Invalid momentum: 1.5 \(expected 0 <= momentum < 1\)"),
    ErrorCase({"floor": -1e-9}, r"Invalid floor"),
    ErrorCase({"nesterov": True}, r"Invalid nesterov: True \(expected momentum > 0, dampening 0\)"),
    ErrorCase({"init": "orthogonal"}, r"init: expected 'default' or 'lognormal'"),
)

EG_SGD = RuleInfo(
    name="eg_sgd",
    description="Exponentiated-gradient SGD: multiplicative, sign-preserving updates (Dale's law).",
    hparams=EGSGDHParams,
    build=_builder(EGSGD),
    search_space={
        "lr": FloatDistribution(1e-2, 10.0, log=True),
        "momentum": CategoricalDistribution([0.0, 0.9]),
        "weight_decay": FloatDistribution(1e-8, 1e-3, log=True),
    },
    reference=PAPER,
    prepare=prepare_eg,
    error_cases=_SGD_ERRORS,
    batching=sgd_form(eg_sgd_update, _SGD_UPDATE_NAMES),
)

EG_ADAMW = RuleInfo(
    name="eg_adamw",
    description="Exponentiated-gradient AdamW: Adam's moments in a sign-preserving multiplicative step.",
    hparams=EGAdamWHParams,
    build=_builder(EGAdamW),
    search_space={
        "lr": FloatDistribution(1e-4, 0.3, log=True),
        "weight_decay": FloatDistribution(1e-6, 1e-1, log=True),
    },
    reference=PAPER,
    prepare=prepare_eg,
    error_cases=(
        ErrorCase({"lr": 0}, r"Invalid lr: 0"),
        ErrorCase({"betas": [0.9]}, r"betas"),
        ErrorCase({"lr": 10.0, "weight_decay": 0.5}, r"Invalid lr \* weight_decay: 5.0"),
        ErrorCase({"split_bias": "maybe"}, r"split_bias: expected a valid boolean"),
    ),
    batching=adam_form(eg_adamw_update, ("lr", "eps", "weight_decay", "floor")),
)

SGD_SIGNED = RuleInfo(
    name="sgd_signed",
    description="Sign-constrained SGD (Dale's-law baseline): a step that would cross zero stops near it.",
    hparams=SGDSignedHParams,
    build=_builder(SGDSigned),
    search_space={
        "lr": FloatDistribution(1e-4, 1.0, log=True),
        "momentum": CategoricalDistribution([0.0, 0.9]),
        "weight_decay": FloatDistribution(1e-6, 1e-2, log=True),
    },
    reference=PAPER,
    prepare=prepare_sign_split,
    error_cases=_SGD_ERRORS,
    batching=sgd_form(sgd_signed_update, _SGD_UPDATE_NAMES),
)
