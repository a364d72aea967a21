"""Automatic gradient descent (AGD): a first-order rule with no learning rate.

Bernstein, Mingard, Huang, Azizan & Yue, "Automatic Gradient Descent: Deep Learning without
Hyperparameters", arXiv 2304.05187 (2023); reference code github.com/jxbz/agd @ 1f8454d.

The file has torch.optim's three layers: the class :class:`AGD` (validation, bookkeeping), the
functional :func:`agd` and two kernels with one signature, ``_single_tensor_agd`` (a loop) and
``_foreach_agd``. The registry entry :data:`AGD_RULE` adds the pieces the benchmark needs: AGD owns
the initialisation (:func:`prepare_agd`) and rejects models it cannot train (:func:`agd_unsupported`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Annotated, Any, overload

import torch
from pydantic import BaseModel, Field
from torch import Tensor, nn
from torch.optim import Optimizer

from benchmark.rules.base import BatchForm, ErrorCase, HParams, OptimizerRule, RuleInfo
from benchmark.rules.support import task_model

if TYPE_CHECKING:
    from benchmark.tasks.base import TaskInfo

__all__ = [
    "AGD",
    "AGD_RULE",
    "AGDHParams",
    "agd",
    "agd_unsupported",
    "automatic_step_size",
    "init_orthogonal_",
    "prepare_agd",
    "weight_scale",
]

SUPPORTED_DIMS = (2, 4)
"""Linear weights (out, in) and conv kernels (out, in, kh, kw); nothing else has a scale in AGD."""


def weight_scale(shape: Sequence[int]) -> float:
    """AGD's per-layer scale ``s = sqrt(fan_out / fan_in)``, divided by ``sqrt(kh·kw)`` for a conv kernel.

    ``fan_out``/``fan_in`` are ``shape[0]``/``shape[1]``; the kernel area enters only through the
    division, as in the reference code (``singular_value`` in jxbz/agd ``agd.py``).
    """
    if len(shape) not in SUPPORTED_DIMS:
        raise ValueError(f"AGD scales only 2-D and 4-D weights, got shape {tuple(shape)}")
    scale = math.sqrt(shape[0] / shape[1])
    if len(shape) == 4:
        scale /= math.sqrt(shape[2] * shape[3])
    return scale


def _describe(name: str, p: Tensor) -> str:
    return f"the {p.dim()}-D parameter {name!r} of shape {tuple(p.shape)}"


def first_unsupported(named: Iterable[tuple[str, Tensor]]) -> str | None:
    """Describe the first parameter AGD cannot handle (a bias, a norm's affine, a 3-D kernel), or None."""
    for name, p in named:
        if p.dim() not in SUPPORTED_DIMS:
            return _describe(name, p)
    return None


def automatic_step_size(gradient_summary: Tensor) -> Tensor:
    """``η = log((1 + sqrt(1 + 4G)) / 2)`` (Algorithm 1 of the paper), kept on the device (no host sync)."""
    return torch.log((1 + torch.sqrt(1 + 4 * gradient_summary)) / 2)


def _accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    # Norms of half-precision gradients overflow or lose the step size's precision; float32 and
    # float64 stay as they are (float64 for the kernel-equality test).
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _slice_norms(grad: Tensor, members: int = 0) -> Tensor:
    """Frobenius norm of the whole matrix (0-d), or of each spatial slice ``grad[:, :, i, j]`` (kh, kw).

    ``members`` leading dimensions (1: a batched group's stack) are kept: one norm per member.
    """
    dtype = _accumulate_dtype(grad.dtype)
    norms: Tensor = (
        torch.linalg.vector_norm(grad, dtype=dtype)
        if grad.dim() == 2 and not members
        else torch.linalg.vector_norm(grad, dim=(members, members + 1), dtype=dtype)
    )
    return norms


@torch.no_grad()
def init_orthogonal_(weights: Iterable[Tensor], generator: torch.Generator | None = None) -> None:
    """AGD's initialisation, in place: semi-orthogonal with every singular value equal to ``s``.

    A matrix is drawn orthogonal and multiplied by :func:`weight_scale`. A conv kernel gets an
    independent orthogonal matrix at each spatial position ``[:, :, i, j]``, and the whole kernel is
    multiplied by its scale, which already carries the ``1/sqrt(kh·kw)``.
    """
    for w in weights:
        scale = weight_scale(w.shape)
        if w.dim() == 2:
            nn.init.orthogonal_(w, generator=generator)
        else:
            out_features, in_features, kh, kw = w.shape
            draw = torch.empty(out_features, in_features, dtype=w.dtype)
            for i in range(kh):
                for j in range(kw):
                    nn.init.orthogonal_(draw, generator=generator)
                    w[:, :, i, j].copy_(draw)
        w.mul_(scale)


class AGD(Optimizer):
    r"""Automatic gradient descent: architecture-aware, normalised per-layer steps with an automatic size.

    .. math::
       \begin{aligned}
       &\textbf{input}: \text{weights } W_1 \ldots W_L \text{ (orthogonal init, singular values } s_k),
           \ \text{gain } g \\
       &s_k = \sqrt{d_{\text{out},k} / d_{\text{in},k}}
           \quad (\text{conv: } \div \sqrt{k_h k_w}) \\
       &\textbf{for}\ t = 1 \ldots \\
       &\quad G \leftarrow \frac{1}{L} \sum_{k=1}^{L} s_k \sum_{\text{slices } j}
           \lVert \nabla_{W_{k,j}} \ell \rVert_F \\
       &\quad \eta \leftarrow \log \frac{1 + \sqrt{1 + 4G}}{2} \\
       &\quad W_{k,j} \leftarrow W_{k,j} - g \cdot \frac{\eta}{L} \cdot s_k \cdot
           \frac{\nabla_{W_{k,j}} \ell}{\lVert \nabla_{W_{k,j}} \ell \rVert_F} \\
       &\textbf{return}\ W
       \end{aligned}

    A matrix is one slice; a conv kernel ``(out, in, kh, kw)`` has ``kh·kw`` slices ``[:, :, i, j]``,
    each normalised on its own, and all of them enter ``G``. ``L`` is the number of weight tensors:
    a conv kernel counts once. Each step moves every slice by exactly ``g·η/L·s_k`` in Frobenius norm.
    The step size ``η`` (before ``gain`` and ``1/L``) is available from :meth:`diagnostics`.

    Args:
        params: the model (its parameters are taken in order) or an iterable of its weight tensors.
            Only 2-D and 4-D tensors are accepted; AGD has no rule for biases or norm affines.
        gain: multiplies the applied update only; it enters neither ``G``, ``η`` nor the
            initialisation (default: 1, the value of every result in the paper).
        foreach: use the ``torch._foreach_*`` kernel (default: None, which picks it when every weight
            is on CUDA).

    Differences from the paper:
        - Conv layers follow the reference code, not the text: per-slice normalisation, scale
          ``sqrt(out/in)/sqrt(kh·kw)`` (§Experiments writes ``sqrt(fan_in/fan_out)`` and omits the
          kernel area). Algorithm 1 covers matrices only.
        - The update normalises the Frobenius norm of each slice, as the code does; the theory
          bounds the operator norm, and the two agree only for gradients of stable rank 1.
        - A slice with an all-zero gradient stays put and adds 0 to ``G`` (the reference gets the
          same with ``nan_to_num``; the paper's listing gives NaN). Norms are clamped at the
          dtype's smallest normal number, so a subnormal gradient gives a shorter step, not inf.
        - Norms and ``η`` are accumulated in float32 for half-precision weights, and ``η`` stays a
          tensor (the reference calls ``math.sqrt`` on it and syncs the host every step).
        - A weight whose ``.grad`` is None is skipped but still counts in ``L`` (the reference
          crashes); ``step`` takes the usual optional closure and returns the loss, not ``η``.
        - Initialisation is :func:`init_orthogonal_`, called by the benchmark's ``prepare`` hook,
          never by the constructor (the reference's ``init_weights()`` is also a separate call).

    When not to use:
        - Models with biases, affine normalisation, embeddings or 3-D kernels (rejected here): the
          paper's networks are bias-free with ``BatchNorm(affine=False)``.
        - When a tuned schedule is affordable: the authors later found AGD slower and sometimes a
          little worse than tuned Adam or SGD (jxbz/modula FAQ), and the paper's own numbers are
          1-2 points below tuned Adam on CIFAR.
        - Without AGD's initialisation: the step-size derivation assumes the orthogonal,
          ``s_k``-scaled weights it starts from.
        - The theory covers full-batch FCNs with square loss; conv layers and minibatches are
          heuristic extensions (paper, Discussion).

    Reference:
        https://arxiv.org/abs/2304.05187, Algorithm 1 (update and step size) and Appendix B (code).
    """

    def __init__(
        self,
        params: nn.Module | Iterable[Tensor] | Iterable[dict[str, Any]],
        gain: float = 1.0,
        *,
        foreach: bool | None = None,
    ) -> None:
        if not (isinstance(gain, int | float) and math.isfinite(gain) and gain > 0):
            raise ValueError(f"Invalid gain: {gain}")
        if isinstance(params, nn.Module):
            named = list(params.named_parameters())
            self._names = {id(p): name for name, p in named}
            params = [p for _, p in named]
        else:
            self._names = {}
        self._step_size: Tensor | None = None
        super().__init__(params, {"gain": gain, "foreach": foreach})

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add the weights; AGD keeps one group, since ``G`` and ``L`` couple all layers."""
        if self.param_groups:
            raise ValueError("AGD takes a single parameter group: its step size couples all layers")
        super().add_param_group(param_group)
        weights = self.param_groups[0]["params"]
        if not weights:
            raise ValueError("AGD got no parameters")
        names = ((self._names.get(id(p), f"params[{i}]"), p) for i, p in enumerate(weights))
        bad = first_unsupported(names)
        if bad is not None:
            raise ValueError(
                f"AGD supports only 2-D (linear) and 4-D (conv) weights, got {bad}; "
                "use a bias-free model with BatchNorm(affine=False)"
            )

    @property
    def num_layers(self) -> int:
        """``L``: the number of weight tensors, with or without a gradient this step."""
        return sum(len(group["params"]) for group in self.param_groups)

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Perform one AGD step.

        Args:
            closure: re-evaluates the model and returns the loss (optional).

        Returns:
            The closure's loss, or None.
        """
        loss: float | None = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        group = self.param_groups[0]
        params: list[Tensor] = []
        grads: list[Tensor] = []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("AGD does not support sparse gradients")
            params.append(p)
            grads.append(p.grad)
        self._step_size = agd(
            params,
            grads,
            [weight_scale(p.shape) for p in params],
            gain=group["gain"],
            num_layers=self.num_layers,
            foreach=group["foreach"],
        )
        return loss

    def diagnostics(self) -> dict[str, float]:
        """``rule/step_size``: the last step's ``η`` (before ``gain`` and ``1/L``); NaN before any step."""
        eta = math.nan if self._step_size is None else float(self._step_size)
        return {"rule/step_size": eta}


def agd(
    params: list[Tensor],
    grads: list[Tensor],
    scales: list[float],
    *,
    gain: float,
    num_layers: int,
    foreach: bool | None = None,
) -> Tensor:
    """Functional AGD: update ``params`` in place and return ``η``.

    See :class:`AGD` for details. ``scales`` are :func:`weight_scale` of each weight, and
    ``num_layers`` is ``L`` (which may exceed ``len(params)`` when some weights have no gradient).
    """
    if len(params) != len(grads) or len(params) != len(scales):
        raise ValueError("params, grads and scales must have the same length")
    if foreach is None:
        foreach = bool(params) and all(p.is_cuda for p in params)
    kernel = _foreach_agd if foreach else _single_tensor_agd
    return kernel(params, grads, scales, gain=gain, num_layers=num_layers)


def _gradient_summary(norms: list[Tensor], scales: list[float], num_layers: int) -> Tensor:
    """``G = (1/L) Σ_k s_k Σ_j ‖∇W_kj‖``, on the first norm's device."""
    device = norms[0].device
    terms = [n.sum().to(device) * s for n, s in zip(norms, scales, strict=True)]
    return torch.stack(terms).sum() / num_layers


def _coefficients(
    norms: list[Tensor], scales: list[float], eta: Tensor, gain: float, num_layers: int
) -> list[Tensor]:
    """``gain·η/L·s_k / ‖∇W_kj‖`` per slice; a zero norm gets a finite factor times a zero gradient."""
    coeffs = []
    for n, s in zip(norms, scales, strict=True):
        tiny = torch.finfo(n.dtype).tiny
        coeffs.append(eta.to(n.device) * (gain * s / num_layers) / n.clamp_min(tiny))
    return coeffs


def _single_tensor_agd(
    params: list[Tensor], grads: list[Tensor], scales: list[float], *, gain: float, num_layers: int
) -> Tensor:
    if not params:
        return torch.zeros(())
    norms = [_slice_norms(g) for g in grads]
    eta = automatic_step_size(_gradient_summary(norms, scales, num_layers))
    for p, g, c in zip(params, grads, _coefficients(norms, scales, eta, gain, num_layers), strict=True):
        # c is 0-d for a matrix and (kh, kw) for a kernel, so it broadcasts over each slice.
        p.sub_(g * c)
    return eta


def _foreach_agd(
    params: list[Tensor], grads: list[Tensor], scales: list[float], *, gain: float, num_layers: int
) -> Tensor:
    if not params:
        return torch.zeros(())
    # Whole-matrix norms in one foreach call per dtype; conv kernels need per-slice norms, which
    # _foreach_norm cannot give, so they take the per-tensor path.
    norms: list[Tensor | None] = [None] * len(grads)
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i, g in enumerate(grads):
        if g.dim() == 2:
            by_dtype.setdefault(g.dtype, []).append(i)
        else:
            norms[i] = _slice_norms(g)
    for dtype, idx in by_dtype.items():
        found = torch._foreach_norm([grads[i] for i in idx], 2, dtype=_accumulate_dtype(dtype))
        for i, n in zip(idx, found, strict=True):
            norms[i] = n
    full = [n for n in norms if n is not None]
    eta = automatic_step_size(_gradient_summary(full, scales, num_layers))
    coeffs = _coefficients(full, scales, eta, gain, num_layers)
    matrices = [i for i, g in enumerate(grads) if g.dim() == 2]
    kernels = [i for i, g in enumerate(grads) if g.dim() == 4]
    if matrices:
        updates = torch._foreach_mul([grads[i] for i in matrices], [coeffs[i] for i in matrices])
        torch._foreach_sub_([params[i] for i in matrices], updates)
    if kernels:
        torch._foreach_sub_([params[i] for i in kernels], [grads[i] * coeffs[i] for i in kernels])
    return eta


def _stacked_agd(params: list[Tensor], grads: list[Tensor], scales: list[float], *, gain: float) -> Tensor:
    """:func:`_single_tensor_agd` over a batched group's stacked weights (leading dimension: the
    members): each member's ``G`` and ``η`` from its own gradients. Returns ``η`` per member."""
    norms = [_slice_norms(g, members=1) for g in grads]
    per_member = [n if n.dim() == 1 else n.flatten(1).sum(1) for n in norms]
    summary = torch.stack([n * s for n, s in zip(per_member, scales, strict=True)]).sum(0) / len(params)
    eta = automatic_step_size(summary)
    for p, g, n, s in zip(params, grads, norms, scales, strict=True):
        factor = eta.view(-1, *([1] * (n.dim() - 1))) * (gain * s / len(params))
        coeff = factor / n.clamp_min(torch.finfo(n.dtype).tiny)
        p.sub_(g * coeff.view(len(coeff), 1, 1, *coeff.shape[1:]))  # over each member's slices
    return eta


class StackedAGD:
    """AGD's :class:`~benchmark.rules.base.StackedStep`: every member's step at once, with its own
    ``η``, which :meth:`diagnostics` reports per member as the solo optimizer does."""

    def __init__(self, params: Sequence[Tensor], hparams: Sequence[AGDHParams]) -> None:
        self.scales = [weight_scale(p.shape[1:]) for p in params]
        self.gain = hparams[0].gain
        self.eta: Tensor | None = None

    @torch.no_grad()
    def step(self, params: Sequence[Tensor], grads: Sequence[Tensor]) -> None:
        self.eta = _stacked_agd(list(params), list(grads), self.scales, gain=self.gain)

    def keep(self, members: Tensor) -> None:
        if self.eta is not None:
            self.eta = self.eta.index_select(0, members.to(self.eta.device))

    def scale_lr(self, factor: float) -> None:
        raise ValueError("AGD has no lr to scale")

    def diagnostics(self) -> list[dict[str, float]]:
        """``rule/step_size`` of each member, in the stack's order; none before any step (each
        member's own optimizer then reports NaN, as alone)."""
        if self.eta is None:
            return []
        return [{"rule/step_size": float(eta)} for eta in self.eta]


# ---------------------------------------------------------------------------------------------
# The registry entry: hyperparameters, initialisation, support check.


class AGDHParams(HParams):
    gain: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1.0


def build_agd(model: nn.Module, hp: AGDHParams) -> OptimizerRule:
    return OptimizerRule(AGD(model, gain=hp.gain))


def prepare_agd(model: nn.Module, generator: torch.Generator, hp: AGDHParams) -> nn.Module:
    """Check that AGD can train ``model``, then draw its orthogonal initialisation from ``generator``."""
    del hp  # gain does not enter the initialisation
    bad = first_unsupported(model.named_parameters())
    if bad is not None:
        raise ValueError(f"AGD supports only 2-D (linear) and 4-D (conv) weights, got {bad}")
    init_orthogonal_(model.parameters(), generator)
    return model


def agd_unsupported(task: TaskInfo, options: BaseModel) -> str | None:
    """Why AGD cannot run ``task`` with ``options`` (a bias or other non-matrix weight), or None."""
    bad = first_unsupported(task_model(task, options).named_parameters())
    if bad is None:
        return None
    reason = f"AGD supports only 2-D (linear) and 4-D (conv) weights; {task.name} has {bad}"
    if getattr(options, "bias", None) is True:
        reason += "; set `bias: false` in the task's options for its bias-free variant"
    return reason


AGD_RULE = RuleInfo(
    name="agd",
    description="Automatic gradient descent: no learning rate, orthogonal init, bias-free models only.",
    hparams=AGDHParams,
    build=build_agd,
    search_space={},
    reference="https://arxiv.org/abs/2304.05187",
    track="self_tuning",
    prepare=prepare_agd,
    unsupported=agd_unsupported,
    batching=BatchForm(StackedAGD),
    error_cases=(
        ErrorCase({"gain": 0}, r"gain: expected greater than 0"),
        ErrorCase({"gain": -2.5}, r"gain: expected greater than 0"),
        ErrorCase({"lr": 0.1}, r"lr: expected a hyperparameter of 'agd': gain"),  # no learning rate
    ),
)
