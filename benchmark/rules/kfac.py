"""Kronecker-factored approximate curvature for linear layers: ``kfac``.

Our own implementation, not a library's. The libraries (``backpack-for-pytorch`` 1.7.1,
``curvlinops-for-pytorch`` 3.0.1 and ``nngeometry`` 0.4) install from the local index, but their
Kronecker factors need the loss to be a ``torch.nn`` loss module of a known likelihood
(``MSELoss``/``CrossEntropyLoss``/``BCEWithLogitsLoss``, or a "variant" name), and to be
``extend()``-ed (BackPACK). A rule here gets the task's loss as any callable ``loss(output, target)``.
So we factor the Hessian of that loss with respect to the outputs directly (the same Gauss–Newton
``Λ`` that ``natgrad_exact`` uses), which works for any loss with a PSD output Hessian, without a
new dependency.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, overload

import torch
from optuna.distributions import FloatDistribution
from pydantic import Field
from torch import Tensor, nn

from benchmark.rules.base import ErrorCase, HParams, RuleInfo
from benchmark.rules.gauss_newton import output_hessian_factor
from benchmark.rules.support import task_model
from benchmark.types import Batch, LossFn

if TYPE_CHECKING:
    from benchmark.tasks.base import TaskInfo


class KFACHParams(HParams):
    lr: Annotated[float, Field(gt=0)] = 0.1
    damping: Annotated[float, Field(ge=0)] = 1e-3
    beta: Annotated[float, Field(ge=0, lt=1)] = 0.95


def unsupported_layers(model: nn.Module) -> list[str]:
    """``"name (Type)"`` of every module with trainable parameters of its own that K-FAC cannot factor.

    K-FAC here covers ``nn.Linear`` only (its weight trainable; its bias, if any, trainable or not).
    """
    bad = []
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        if not isinstance(module, nn.Linear) or not module.weight.requires_grad:
            bad.append(f"{name or '<root>'} ({type(module).__name__})")
    return bad


def damped_inverse(matrix: Tensor, delta: float) -> Tensor:
    """``(M + δI)⁻¹`` of a symmetric PSD ``M`` by Cholesky; the pseudo-inverse where that fails (δ = 0).

    Non-finite factors (a diverged run) give NaN, so that the loss reports the divergence.
    """
    damped = matrix.clone()
    damped.diagonal().add_(delta)
    if not bool(torch.isfinite(damped).all()):
        return torch.full_like(damped, math.nan)  # a diverged run: let the loss say so, do not raise
    chol, info = torch.linalg.cholesky_ex(damped)
    if int(info) == 0:
        inverse: Tensor = torch.cholesky_inverse(chol)
        return inverse
    pseudo: Tensor = torch.linalg.pinv(damped, hermitian=True)
    return pseudo


class KFAC(torch.optim.Optimizer):
    """K-FAC: natural gradient with a Kronecker-factored Fisher per linear layer.

    For a linear layer ``z = W̃ ã`` (``ã = [a; 1]`` and ``W̃ = [W, b]`` when it has a bias) the
    Gauss–Newton (Fisher) block ``F = Σ_n ã_n ã_nᵀ ⊗ S_n`` is approximated by ``A ⊗ G`` with

    .. math::

        A = \\tfrac1M \\textstyle\\sum_m ã_m ã_m^\\top,\\qquad
        G = \\textstyle\\sum_m \\sum_r s_{m,r} s_{m,r}^\\top,\\qquad
        s_{m,r} = \\tfrac{\\partial f_n}{\\partial z_m}^{\\!\\top} V_{r,n},\\quad
        \\textstyle\\sum_r V_{r,n} V_{r,n}^\\top = Λ_n = \\tfrac{\\partial^2 L}{\\partial f_n^2},

    over the ``M`` rows the layer sees in the batch (one per sample for an MLP), with ``f_n`` the
    network's outputs for sample ``n``: ``G`` backpropagates the columns of a factor of the loss's
    output Hessian (:func:`output_hessian_factor`; exact, not sampled, as Botev et al.'s KFLR), row
    ``m`` belonging to sample ``n``. Both factors are running averages ``Ā_t = βĀ_{t−1} + (1−β)A_t``
    (same for ``G``), bias-corrected by ``1 − β^t``, and the update is

    .. math::

        ΔW̃ = -η\\,\\big(\\bar G + \\tfrac{\\sqrt λ}{π} I\\big)^{-1}\\,∇_{W̃}L\\,
              \\big(\\bar A + π\\sqrt λ\\, I\\big)^{-1},\\qquad
        π = \\sqrt{\\frac{\\operatorname{tr}\\bar A/\\dim \\bar A}{\\operatorname{tr}\\bar G/\\dim \\bar G}},

    Martens & Grosse's factored Tikhonov damping (§6.3): ``π`` splits ``√λ`` between the factors in
    proportion to their scales, so that ``λ`` acts like a damping of ``A ⊗ G``. With ``λ = 0`` a
    singular factor gets its pseudo-inverse.

    Exactness: for one linear layer and squared error, ``S_n`` is the same for every sample, so
    ``A ⊗ G = F`` exactly and K-FAC is the exact natural gradient: with ½·mean squared error, full
    batch and ``λ = 0`` the excess loss falls as ``(1 − η)^{2t}``.

    State (``self.state[layer.weight]``): ``step``, ``factor_a`` and ``factor_g`` (the running
    averages before bias correction).

    Args:
        model: the network; every module with trainable parameters must be ``nn.Linear``.
        lr: η (default 0.1).
        damping: λ ≥ 0 (default 1e-3).
        beta: β, the running averages' decay (default 0.95; 0 uses each batch's own factors).

    Raises:
        ValueError: bad hyperparameters, or a layer K-FAC cannot factor (named).

    Differences from the paper: ``G`` from the exact factor of the output Hessian (one batched
    backward of ``R = K`` columns) instead of one backward of targets sampled from the model; factors
    and their inverses are recomputed every step (no periodic inverses, no adaptive λ or momentum);
    a layer used several times in one forward pools its rows (K-FAC "expand", Eschenhagen et al. 2023).

    When not to use: models with convolutions, normalisation layers or other parameterized modules
    (refused when the cell is planned, naming the layers); wide layers (each step inverts
    ``(in+1)²`` and ``out²`` factors); many outputs per sample (the loss's output Hessian is
    ``(batch·K)²``); models whose samples interact in the forward (BatchNorm), which break the
    per-row factors.

    Reference: Martens & Grosse, "Optimizing neural networks with Kronecker-factored approximate
    curvature", ICML 2015 (https://arxiv.org/abs/1503.05671), §3 (factors), §6.3 (damping);
    Botev, Ritter & Barber 2017 (KFLR, https://arxiv.org/abs/1706.03662).

    Usage (as :class:`KFACRule` does): ``with opt.recording(): out = model(x)``, then
    ``opt.update_curvature(out, y, loss_fn)`` before ``loss.backward()``, then ``opt.step()``.
    """

    def __init__(self, model: nn.Module, lr: float = 0.1, damping: float = 1e-3, beta: float = 0.95) -> None:
        if not lr > 0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not damping >= 0:
            raise ValueError(f"Invalid damping value: {damping}")
        if not 0 <= beta < 1:
            raise ValueError(f"Invalid beta value: {beta}")
        bad = unsupported_layers(model)
        if bad:
            raise ValueError(f"kfac factors nn.Linear layers only; not: {', '.join(bad)}")
        self.layers = [m for m in model.modules() if isinstance(m, nn.Linear) and m.weight.requires_grad]
        groups = [
            {"params": [m.weight] + ([m.bias] if m.bias is not None and m.bias.requires_grad else [])}
            for m in self.layers
        ]
        super().__init__(groups, {"lr": lr, "damping": damping, "beta": beta})
        self._recording = False
        self._seen: dict[int, list[tuple[Tensor, Tensor]]] = {}
        self._last_step_norm = math.nan
        self._batched_backward = True
        self.curvature_columns = 0
        """Backward passes over the batch that the last :meth:`update_curvature` took (``R``)."""
        for index, layer in enumerate(self.layers):
            layer.register_forward_hook(self._hook(index))

    def _hook(self, index: int) -> Any:
        def record(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            if self._recording and torch.is_grad_enabled():
                self._seen.setdefault(index, []).append((inputs[0].detach(), output))

        return record

    @contextmanager
    def recording(self) -> Iterator[None]:
        """Record each linear layer's input and output during the forward passes inside."""
        self._seen = {}
        self._recording = True
        try:
            yield
        finally:
            self._recording = False

    @torch.no_grad()
    def update_curvature(self, out: Tensor, targets: Tensor, loss_fn: LossFn) -> None:
        """Fold this batch's ``A`` and ``G`` into the running averages; the forward's graph is kept."""
        # Λ's factor as R columns shaped like the output: K per-sample columns (one batched backward
        # serves every sample; K-FAC keeps each row's own terms), or the dense factor's columns.
        factor = output_hessian_factor(out, targets, loss_fn)
        self.curvature_columns = factor.shape[-1]
        if factor.shape[-1] == 0:  # Λ = 0 (or not finite): this batch adds nothing to G
            self._seen = {}
            return
        factor = factor.permute(2, 0, 1).reshape(-1, *out.shape)
        recorded = [(index, a, z) for index, calls in sorted(self._seen.items()) for a, z in calls]
        backs = self._backpropagate(out, [z for _, _, z in recorded], factor)
        inputs: dict[int, list[Tensor]] = {}
        outputs: dict[int, list[Tensor]] = {}
        for (index, a, z), back in zip(recorded, backs, strict=True):
            rows = a.reshape(-1, a.shape[-1])
            if self.layers[index].bias is not None and len(self.param_groups[index]["params"]) == 2:
                rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)
            inputs.setdefault(index, []).append(rows)
            grads = torch.zeros_like(z).expand(factor.shape[0], *z.shape) if back is None else back
            outputs.setdefault(index, []).append(grads.reshape(-1, z.shape[-1]))
        self._seen = {}
        for index, group in enumerate(self.param_groups):
            if index not in inputs:
                continue  # not used in this forward: its factors keep their running values
            rows = torch.cat(inputs[index])
            backs_l = torch.cat(outputs[index])
            state = self.state[group["params"][0]]
            beta = group["beta"]
            a_batch = rows.T @ rows / rows.shape[0]
            g_batch = backs_l.T @ backs_l
            if "step" not in state:
                state["step"] = 0
                state["factor_a"] = torch.zeros_like(a_batch)
                state["factor_g"] = torch.zeros_like(g_batch)
            state["step"] += 1
            state["factor_a"].mul_(beta).add_(a_batch, alpha=1 - beta)
            state["factor_g"].mul_(beta).add_(g_batch, alpha=1 - beta)

    def _backpropagate(self, out: Tensor, zs: list[Tensor], factor: Tensor) -> list[Tensor | None]:
        """``∂f/∂z_lᵀ V_r`` for every recorded layer output and column ``r``: shape ``(R, *z_l.shape)``.

        One vmapped backward over the columns where every op of the model has a batching rule, else
        one backward per column (remembered, so that the failed attempt is not repeated).
        """
        with torch.enable_grad():
            if self._batched_backward:
                try:
                    return list(
                        torch.autograd.grad(
                            out, zs, factor, retain_graph=True, allow_unused=True, is_grads_batched=True
                        )
                    )
                except RuntimeError as error:  # e.g. "Batching rule not implemented for aten::..."
                    if "atching rule" not in str(error):
                        raise
                    self._batched_backward = False
            columns = [
                torch.autograd.grad(out, zs, column, retain_graph=True, allow_unused=True)
                for column in factor
            ]
        return [None if parts[0] is None else torch.stack(parts) for parts in zip(*columns, strict=True)]

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Precondition each layer's gradient with its damped Kronecker factors and take the step."""
        loss: float | None = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        squared = 0.0
        for group in self.param_groups:
            params = group["params"]
            state = self.state[params[0]]
            if "step" not in state or params[0].grad is None:
                continue
            correction = 1 - group["beta"] ** state["step"]
            a = state["factor_a"] / correction
            g = state["factor_g"] / correction
            root = math.sqrt(group["damping"])
            trace_a, trace_g = float(a.diagonal().mean()), float(g.diagonal().mean())
            pi = math.sqrt(trace_a / trace_g) if trace_a > 0 and trace_g > 0 else 1.0
            if not 0 < pi < math.inf:  # factors whose scales under- or overflow relative to each other
                pi = 1.0
            weight = params[0]
            grad = weight.grad
            if len(params) == 2:
                bias_grad = torch.zeros_like(params[1]) if params[1].grad is None else params[1].grad
                grad = torch.cat([grad, bias_grad[:, None]], dim=1)
            direction = damped_inverse(g, root / pi) @ grad @ damped_inverse(a, root * pi)
            squared += float(direction.pow(2).sum())
            weight.add_(direction[:, : weight.shape[1]], alpha=-group["lr"])
            if len(params) == 2:
                params[1].add_(direction[:, -1], alpha=-group["lr"])
        self._last_step_norm = self.defaults["lr"] * math.sqrt(squared)
        return loss

    def diagnostics(self) -> dict[str, float]:
        return {"rule/step_norm": self._last_step_norm}


class KFACRule:
    """The training step around :class:`KFAC`: forward with recording, curvature, backward, step."""

    def __init__(self, optimizer: KFAC) -> None:
        self.optimizer = optimizer

    def train_step(self, model: nn.Module, batch: Batch, loss_fn: LossFn) -> dict[str, float]:
        inputs, targets = batch
        self.optimizer.zero_grad(set_to_none=True)
        with self.optimizer.recording():
            out = model(inputs)
        loss = loss_fn(out, targets)
        self.optimizer.update_curvature(out, targets, loss_fn)
        loss.backward()  # type: ignore[no-untyped-call]
        self.optimizer.step()
        # A forward and a backward, and one backward to the layer outputs (no weight gradients: about
        # one forward) per column of the output Hessian's factor. Diagnostics are read at evaluations.
        passes = 3.0 + self.optimizer.curvature_columns
        return {"train/loss": float(loss.detach()), "rule/forward_passes": passes}

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(dict(state))


def build_kfac(model: nn.Module, hp: KFACHParams) -> KFACRule:
    return KFACRule(KFAC(model, lr=hp.lr, damping=hp.damping, beta=hp.beta))


def refuse_non_linear_layers(task: TaskInfo, options: Any) -> str | None:
    """Name the layers of the task's model that K-FAC cannot factor."""
    bad = unsupported_layers(task_model(task, options))
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        return f"kfac factors nn.Linear layers only; {task.name} has {', '.join(bad[:3])}{more}"
    return None


KFAC_RULE = RuleInfo(
    name="kfac",
    description="K-FAC: natural gradient with a Kronecker-factored Gauss–Newton (Fisher) per linear layer.",
    hparams=KFACHParams,
    build=build_kfac,
    search_space={
        "lr": FloatDistribution(1e-3, 1.0, log=True),
        "damping": FloatDistribution(1e-6, 1.0, log=True),
    },
    reference="https://arxiv.org/abs/1503.05671",
    unsupported=refuse_non_linear_layers,
    error_cases=(
        ErrorCase({"lr": 0}, r"lr: expected greater than 0"),
        ErrorCase({"damping": -1.0}, r"damping: expected greater than or equal to 0"),
        ErrorCase({"beta": 1.0}, r"beta: expected less than 1"),
    ),
)
