"""Exact natural gradient with the generalized Gauss–Newton matrix: ``natgrad_exact``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal

import torch
from optuna.distributions import FloatDistribution
from pydantic import Field
from torch import Tensor, nn
from torch.func import functional_call, jacrev

from benchmark.rules.base import ErrorCase, HParams, RuleInfo
from benchmark.rules.gauss_newton import output_hessian_factor
from benchmark.rules.support import task_model
from benchmark.types import Batch, LossFn

if TYPE_CHECKING:
    from benchmark.tasks.base import TaskInfo

MAX_PARAMS = 50_000
"""Largest model ``natgrad_exact`` takes: the Jacobian is (batch·outputs) × parameters."""


class NatGradExactHParams(HParams):
    lr: Annotated[float, Field(gt=0)] = 0.1
    damping: Annotated[float, Field(ge=0)] = 1e-3


def ggn_factor(model: nn.Module, batch: Batch, loss_fn: LossFn) -> tuple[Tensor, Tensor, Tensor, float]:
    """``(loss, g, A, passes)`` with ``g = ∇L`` and ``F = AᵀA`` the generalized Gauss–Newton matrix of
    the batch loss, and ``passes`` its cost in forward-equivalent passes (:func:`jacobian_passes`).

    ``J`` is the Jacobian of every output of the batch with respect to the parameters (``m × D``, ``m`` =
    batch · outputs) and ``Λ`` the Hessian of the loss with respect to those outputs, so
    ``F = JᵀΛJ`` and ``g = Jᵀ∇_out L``. ``Λ`` is PSD for squared error and softmax cross-entropy
    (for those losses F is the Fisher), and is factored as ``Λ = VVᵀ`` (eigenvalues clipped at 0;
    :func:`~benchmark.rules.gauss_newton.output_hessian_factor`), giving ``A = VᵀJ``.
    """
    inputs, targets = batch
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}

    def outputs(theta: dict[str, Tensor]) -> Tensor:
        out: Tensor = functional_call(model, theta, (inputs,))
        return out

    out = outputs(params).detach()
    shape = out.shape

    def loss_of(flat_out: Tensor) -> Tensor:
        return loss_fn(flat_out.reshape(shape), targets)

    flat_out = out.reshape(-1)
    jac = jacrev(lambda th: outputs(th).reshape(-1))(params)
    jacobian = torch.cat([jac[n].reshape(flat_out.numel(), -1) for n in names], dim=1)
    out_grad = torch.func.grad(loss_of)(flat_out)
    factor = output_hessian_factor(out, targets, loss_fn)
    passes = jacobian_passes(out[0].numel())
    return loss_of(flat_out).detach(), jacobian.T @ out_grad, _factor_rows(factor, jacobian), passes


def jacobian_passes(outputs_per_sample: int) -> float:
    """Forward-equivalent passes of a batch's output Jacobian: a forward, and one backward over the batch
    (two forwards' worth) per output of a sample, since sample ``n``'s outputs depend on its input only.

    That is the algorithm's cost; ``jacrev`` over every output of the batch spends more.
    """
    return 1.0 + 2.0 * outputs_per_sample


def _factor_rows(factor: Tensor, jacobian: Tensor) -> Tensor:
    """``A = VᵀJ`` block by block (``V`` from :func:`output_hessian_factor`), so that ``AᵀA = JᵀΛJ``.

    Columns of ``V`` that are 0 (Λ's null space) give zero rows, which are dropped.
    """
    blocks, per, _ = factor.shape
    rows = torch.einsum("nkr,nkd->nrd", factor, jacobian.reshape(blocks, per, -1))
    keep = factor.abs().sum(dim=1) > 0  # (blocks, R)
    return rows[keep]


def solve_damped(a: Tensor, g: Tensor, damping: float) -> Tensor:
    """``(AᵀA + damping·I)⁻¹ g``, by Cholesky in parameter space or by Woodbury in sample space.

    Woodbury: ``(AᵀA + δI)⁻¹ g = (g − Aᵀ(δI + AAᵀ)⁻¹ A g)/δ``, an ``r × r`` system (``r`` = rows of A).
    With ``δ = 0`` or a singular system, the least-squares (pseudo-inverse) solution is used instead.
    The solve runs in float64: with a small damping the system is ill-conditioned, and in float32
    CPU and CUDA solvers gave steps different enough to change the learning curve.
    """
    dtype = a.dtype
    return _solve_damped(a.double(), g.double(), damping).to(dtype)


def _solve_damped(a: Tensor, g: Tensor, damping: float) -> Tensor:
    rows, dim = a.shape
    if damping > 0 and rows < dim:
        small = a @ a.T
        small.diagonal().add_(damping)
        chol, info = torch.linalg.cholesky_ex(small)
        if int(info) == 0:
            return (g - a.T @ torch.cholesky_solve((a @ g)[:, None], chol)[:, 0]) / damping
    fisher = a.T @ a
    fisher.diagonal().add_(damping)
    chol, info = torch.linalg.cholesky_ex(fisher)
    if damping > 0 and int(info) == 0:
        return torch.cholesky_solve(g[:, None], chol)[:, 0]
    # Pseudo-inverse by eigen-decomposition (F is symmetric PSD); directions below round-off are dropped.
    evals, evecs = torch.linalg.eigh(fisher)
    keep = evals > evals.abs().max().clamp_min(1e-30) * len(evals) * torch.finfo(evals.dtype).eps
    coeffs = (evecs[:, keep].T @ g) / evals[keep]
    solution: Tensor = evecs[:, keep] @ coeffs
    return solution


class NatGradExact:
    """Exact (damped) natural-gradient descent with the generalized Gauss–Newton matrix.

    .. math::

        F_t = \\tfrac{\\partial f}{\\partial θ}^{\\!\\top} Λ\\, \\tfrac{\\partial f}{\\partial θ},\\qquad
        θ_{t+1} = θ_t - η\\,(F_t + δ I)^{-1} g_t,

    with ``f`` the network's outputs on the batch, ``Λ = ∂²L/∂f²`` and ``g = ∇L``. For squared error and
    softmax cross-entropy the GGN equals the Fisher information (Martens 2020). Solved by Cholesky for
    small models and by the sample-space (Woodbury) form when the batch has fewer outputs than the
    model has parameters.

    Args:
        model: the network (only parameters with ``requires_grad``).
        lr: η (default 0.1). 1.0 is a full Gauss–Newton step.
        damping: δ ≥ 0 (default 1e-3). With 0, a pseudo-inverse is used where F is singular.

    Differences from the paper: the curvature is recomputed exactly on every batch (no running
    average, no K-FAC approximation), and the loss scaling is the task's (a mean loss gives F/B).

    When not to use: models above ``MAX_PARAMS`` parameters (the rule is refused when the cell is
    planned); large batches × many outputs (the Jacobian is ``batch·outputs × D``); models with
    batch-dependent layers in training mode (BatchNorm: ``torch.func`` needs pure functions).

    Check: on linear regression with ½·mean squared error, F = XᵀX/N and δ = 0, the excess loss
    falls as ``(1 − η)^{2t}`` exactly; on ``saxe_modes`` the modes are learned exponentially.

    Reference: Amari 1998; Martens, "New insights and perspectives on the natural gradient method", 2020
    (https://arxiv.org/abs/1412.1193).
    """

    def __init__(self, model: nn.Module, lr: float = 0.1, damping: float = 1e-3) -> None:
        if not lr > 0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not damping >= 0:
            raise ValueError(f"Invalid damping value: {damping}")
        self.lr = lr
        self.damping = damping
        self.steps = 0

    def train_step(self, model: nn.Module, batch: Batch, loss_fn: LossFn) -> dict[str, float]:
        loss, g, a, passes = ggn_factor(model, batch, loss_fn)
        direction = solve_damped(a, g, self.damping)
        with torch.no_grad():
            offset = 0
            for p in model.parameters():
                if not p.requires_grad:
                    continue
                n = p.numel()
                p.add_(direction[offset : offset + n].reshape(p.shape), alpha=-self.lr)
                offset += n
        self.steps += 1
        return {
            "train/loss": float(loss),
            "rule/step_norm": self.lr * float(direction.norm()),
            "rule/forward_passes": passes,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.steps = int(state["steps"])


def build_natgrad_exact(model: nn.Module, hp: NatGradExactHParams) -> NatGradExact:
    return NatGradExact(model, lr=hp.lr, damping=hp.damping)


def refuse_large_models(task: TaskInfo, options: Any) -> str | None:
    """Refuse the task's model above ``MAX_PARAMS`` parameters, or with BatchNorm layers."""
    model = task_model(task, options)
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if count > MAX_PARAMS:
        return f"natgrad_exact needs at most {MAX_PARAMS} parameters; {task.name} has {count}"
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return "natgrad_exact differentiates the model as a pure function; BatchNorm layers are not"
    return None


NATGRAD_EXACT = RuleInfo(
    name="natgrad_exact",
    description="Exact damped natural gradient with the Gauss–Newton (Fisher) matrix; small models only.",
    hparams=NatGradExactHParams,
    build=build_natgrad_exact,
    search_space={
        "lr": FloatDistribution(1e-3, 1.0, log=True),
        "damping": FloatDistribution(1e-6, 1e-1, log=True),
    },
    reference="https://arxiv.org/abs/1412.1193",
    unsupported=refuse_large_models,
    error_cases=(
        ErrorCase({"lr": 0}, r"lr: expected greater than 0"),
        ErrorCase({"damping": -1.0}, r"damping: expected greater than or equal to 0"),
    ),
)


# ---------------------------------------------------------------------------------------------
# natgrad_diag: a diagonal Fisher kept as a running average.


class NatGradDiagHParams(HParams):
    lr: Annotated[float, Field(gt=0)] = 0.01
    damping: Annotated[float, Field(gt=0)] = 1e-3
    beta: Annotated[float, Field(ge=0, lt=1)] = 0.95
    fisher: Literal["empirical", "ggn"] = "empirical"


def empirical_fisher_diagonal(
    model: nn.Module, batch: Batch, loss_fn: LossFn
) -> tuple[Tensor, Tensor, Tensor]:
    """``(loss, g, diag F)``, ``F_ii = (1/B) Σ_n (∂ℓ_n/∂θ_i)²`` from per-sample gradients (``vmap``).

    ``ℓ_n`` is the task's loss on sample ``n`` alone (a batch of one); ``g`` is the batch loss's gradient.
    """
    inputs, targets = batch
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}

    def sample_loss(theta: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return loss_fn(functional_call(model, theta, (x[None],)), y[None])

    per_sample = torch.func.vmap(torch.func.grad(sample_loss), in_dims=(None, 0, 0))(params, inputs, targets)
    flat = torch.cat([per_sample[n].reshape(len(inputs), -1) for n in names], dim=1)
    trainable = [p for p in model.parameters() if p.requires_grad]
    with torch.enable_grad():
        loss = loss_fn(model(inputs), targets)
        grads = torch.autograd.grad(loss, trainable)
    g = torch.cat([gr.reshape(-1) for gr in grads])
    return loss.detach(), g, flat.pow(2).mean(dim=0)


class NatGradDiag:
    """Diagonal natural gradient: a running average of a diagonal Fisher as the metric.

    .. math::

        \\hat F_t = β \\hat F_{t-1} + (1-β)\\, \\operatorname{diag} F(θ_t),\\qquad
        θ_{t+1} = θ_t - η\\, g_t \\big/ \\big(\\hat F_t/(1-β^t) + δ\\big).

    ``diag F`` is the empirical Fisher ``(1/B) Σ_n g_n²`` from per-sample gradients (``fisher="empirical"``),
    or the exact diagonal of the batch's Gauss–Newton matrix ``JᵀΛJ`` (``fisher="ggn"``, the Fisher for
    squared error and softmax cross-entropy; costs what ``natgrad_exact`` costs, minus the solve).

    Args:
        model: the network.
        lr: η (default 0.01).
        damping: δ > 0 (default 1e-3).
        beta: β, the running average's decay (default 0.95; 0 uses each batch's own Fisher).
        fisher: ``"empirical"`` (default) or ``"ggn"``.

    Differences from the paper: no Fisher sampled from the model's own predictive distribution; the
    empirical Fisher is not the Fisher (Kunstner et al. 2019) and near a minimum it shrinks with the
    residuals, which makes steps grow: keep δ large enough.

    When not to use: tasks whose loss is a sum over the batch (the empirical Fisher here is per sample,
    so its scale is then B times too small against the batch gradient); models with BatchNorm
    (``torch.func`` needs per-sample purity).

    Reference: Amari 1998; Martens 2020 (https://arxiv.org/abs/1412.1193), §9 on diagonal approximations.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 0.01,
        damping: float = 1e-3,
        beta: float = 0.95,
        fisher: str = "empirical",
    ) -> None:
        if not lr > 0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not damping > 0:
            raise ValueError(f"Invalid damping value: {damping}")
        if not 0 <= beta < 1:
            raise ValueError(f"Invalid beta value: {beta}")
        if fisher not in ("empirical", "ggn"):
            raise ValueError(f"Invalid Fisher kind: {fisher}")
        self.lr, self.damping, self.beta, self.fisher = lr, damping, beta, fisher
        self.average: Tensor | None = None
        self.steps = 0

    def train_step(self, model: nn.Module, batch: Batch, loss_fn: LossFn) -> dict[str, float]:
        if self.fisher == "ggn":
            loss, g, a, passes = ggn_factor(model, batch, loss_fn)
            diagonal = a.pow(2).sum(dim=0)
        else:
            # per-sample gradients (a forward and a backward of the batch) and the batch's gradient
            loss, g, diagonal = empirical_fisher_diagonal(model, batch, loss_fn)
            passes = 6.0
        self.average = (
            diagonal * (1 - self.beta)
            if self.average is None
            else (self.average * self.beta + diagonal * (1 - self.beta))
        )
        self.steps += 1
        metric = self.average / (1 - self.beta**self.steps) + self.damping
        direction = g / metric
        with torch.no_grad():
            offset = 0
            for p in model.parameters():
                if not p.requires_grad:
                    continue
                n = p.numel()
                p.add_(direction[offset : offset + n].reshape(p.shape), alpha=-self.lr)
                offset += n
        return {
            "train/loss": float(loss),
            "rule/step_norm": self.lr * float(direction.norm()),
            "rule/forward_passes": passes,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "average": None if self.average is None else self.average.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.steps = int(state["steps"])
        self.average = None if state["average"] is None else state["average"].clone()


def build_natgrad_diag(model: nn.Module, hp: NatGradDiagHParams) -> NatGradDiag:
    return NatGradDiag(model, lr=hp.lr, damping=hp.damping, beta=hp.beta, fisher=hp.fisher)


def refuse_batchnorm(task: TaskInfo, options: Any) -> str | None:
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in task_model(task, options).modules()):
        return "natgrad_diag differentiates per sample with torch.func; BatchNorm layers are not per-sample"
    return None


NATGRAD_DIAG = RuleInfo(
    name="natgrad_diag",
    description="Diagonal natural gradient: running average of a diagonal (empirical or GGN) Fisher.",
    hparams=NatGradDiagHParams,
    build=build_natgrad_diag,
    search_space={
        "lr": FloatDistribution(1e-4, 1.0, log=True),
        "damping": FloatDistribution(1e-6, 1e-1, log=True),
    },
    reference="https://arxiv.org/abs/1412.1193",
    unsupported=refuse_batchnorm,
    error_cases=(
        ErrorCase({"damping": 0}, r"damping: expected greater than 0"),
        ErrorCase({"fisher": "kfac"}, r"fisher"),
    ),
)
