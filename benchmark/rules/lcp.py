"""Least-control principle (LCP) trainers for equilibrium models: bp, rbp, lcp_di, lcp_kp, lcp_ebd.

Meulemans, Zucchet, Kobayashi, von Oswald & Sacramento, "The least-control principle for local
learning at equilibrium", NeurIPS 2022, https://arxiv.org/abs/2207.01332. The dynamics, defaults
and step order follow the authors' code (github.com/seijin-kobayashi/least-control @ e867d49,
``fixpoint_trainer.py`` and ``run_classification.py``); the code is ours.

Each trainer is a :class:`~benchmark.rules.base.LearningRule` that owns the whole step: it relaxes
the model to an equilibrium (free, or controlled toward the target), writes a weight update into
``.grad``, and an outer "meta" optimizer (Adam with coupled L2 or plain SGD, cosine-annealed per
step to ``eta_min_ratio·lr``) applies it, as the reference's ``run_classification.py`` does.

Notation: ``x̃`` the input injection, ``f(x̃, v)`` the implicit map, ``g(v)`` the readout,
``J = ∂f/∂v``, ``J_g = ∂g/∂v``, ``∇L = ∂L/∂ŷ`` (the loss is a batch mean, so ``∇L`` carries ``1/B``).

Cost clocks, reported by every step (``train.py`` keeps the last step's values, so the running
means and totals are what a leaderboard should read):

- ``rule/solver_iters``: inner iterations this step (relaxation, plus the adjoint solve for rbp);
- ``rule/forward_passes``: forward-equivalent passes this step, counting each evaluation of the
  implicit map ``f`` (or of the Kollen–Pollack feedback map) as 1 and each vector-Jacobian product
  through ``f`` as 2 (a backward costs about two forwards); the readout ``g`` is not counted;
- ``rule/nonconverged``: 1 if a solve this step stopped at ``max_iter`` above its threshold;
- ``rule/solver_iters_mean``, ``rule/forward_passes_mean``: running means over all steps so far;
- ``rule/nonconverged_total``: the count of non-converged steps so far (never silent).

``train/loss`` is the loss at the free equilibrium before the update (what the model predicts); for
lcp trainers that costs an extra free solve that is monitoring, not part of the rule, and is left
out of the cost clocks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal

import torch
from optuna.distributions import FloatDistribution
from pydantic import Field, model_validator
from torch import Tensor, nn

from benchmark.fixpoint import (
    EquilibriumModel,
    LayeredEquilibriumModel,
    Solution,
    State,
    activate,
    activate_prime,
    attach_implicit,
    solve,
)
from benchmark.rules.base import ErrorCase, HParams, RuleInfo
from benchmark.rules.support import task_model
from benchmark.types import Batch, LossFn

if TYPE_CHECKING:
    from benchmark.tasks.base import TaskInfo

__all__ = [
    "BP",
    "LCP_PAPER",
    "LCP_RULES",
    "RBP",
    "ControlHParams",
    "Grads",
    "LCPDynamicInversion",
    "LCPEnergyBased",
    "LCPKollenPollack",
    "MetaTrainer",
    "free_loss",
    "loss_gradient",
    "needs_layered",
    "output_control",
    "step_costs",
]

LCP_PAPER = "https://arxiv.org/abs/2207.01332"
Grads = dict[str, float]


# --------------------------------------------------------------------------------------------------
# Hyperparameters


class MetaHParams(HParams):
    """The outer optimizer and the solver, shared by every trainer.

    ``cosine_steps`` is the cosine schedule's ``T_max`` in steps (the reference's
    ``epochs × batches``); the rule does not see the run's budget, so a suite sets it to
    ``budget.steps``. 0 keeps the learning rate constant.
    """

    optimizer: Literal["adam", "sgd"] = "adam"
    lr: Annotated[float, Field(gt=0)] = 1e-3
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    grad_clip: Annotated[float, Field(gt=0)] | None = None
    cosine_steps: Annotated[int, Field(ge=0)] = 0
    eta_min_ratio: Annotated[float, Field(ge=0, le=1)] = 0.1
    threshold: Annotated[float, Field(gt=0)] = 1e-4
    max_iter: Annotated[int, Field(ge=1)] = 50


class BPHParams(MetaHParams):
    """bp: MNIST ff command (adam 1e-3, no clipping)."""


class RBPHParams(MetaHParams):
    """rbp: MNIST rnn command (adam 1e-3, clip 10, threshold 1e-4, 200 iterations)."""

    grad_clip: Annotated[float, Field(gt=0)] | None = 10.0
    max_iter: Annotated[int, Field(ge=1)] = 200


class ControlHParams(MetaHParams):
    """The controlled dynamics (MNIST ff commands: α 0.1, k_i 1, k_p 0, dt 1, 1e-6, 800 iterations)."""

    alpha: Annotated[float, Field(gt=0)] = 0.1
    k_i: Annotated[float, Field(ge=0)] = 1.0
    k_p: Annotated[float, Field(ge=0)] = 0.0
    dt: Annotated[float, Field(gt=0, le=1)] = 1.0
    threshold: Annotated[float, Field(gt=0)] = 1e-6
    max_iter: Annotated[int, Field(ge=1)] = 800

    @model_validator(mode="after")
    def _stable(self) -> ControlHParams:
        # u_i is multiplied by (1 − α·dt) per Euler step: beyond 2 the integral controller diverges.
        if self.alpha * self.dt >= 2:
            raise ValueError(
                f"alpha·dt must be below 2 for a stable integral controller, got {self.alpha * self.dt}"
            )
        return self


class DIHParams(ControlHParams):
    """lcp_di."""


class KPHParams(ControlHParams):
    """lcp_kp: as lcp_di, plus the feedback weight decay ``kp_wd`` (MNIST 1e-6)."""

    kp_wd: Annotated[float, Field(ge=0, lt=1)] = 1e-6


class EBDHParams(MetaHParams):
    """lcp_ebd: MNIST ff command (α 0.1, 800 inner Adam steps at 0.01, ff_init off)."""

    alpha: Annotated[float, Field(gt=0)] = 0.1
    max_iter: Annotated[int, Field(ge=1)] = 800
    ebd_optimizer: Literal["adam", "sgd"] = "adam"
    ebd_lr: Annotated[float, Field(gt=0)] = 0.01
    ff_init: bool = False


# --------------------------------------------------------------------------------------------------
# Shared machinery


def _equilibrium(model: nn.Module) -> EquilibriumModel:
    if not isinstance(model, EquilibriumModel):
        raise TypeError(
            f"LCP trainers need an EquilibriumModel (benchmark.fixpoint), got {type(model).__name__}"
        )
    return model


def _needs_equilibrium(task: TaskInfo, options: Any) -> str | None:
    model = task_model(task, options)
    if not isinstance(model, EquilibriumModel):
        return (
            f"task {task.name!r} builds a {type(model).__name__}, not an equilibrium model "
            "(benchmark.fixpoint.EquilibriumModel); use an equilibrium task such as mnist1d_ff"
        )
    return None


def _needs_feedforward(task: TaskInfo, options: Any) -> str | None:
    model = task_model(task, options)
    if not isinstance(model, EquilibriumModel) or model.feedforward_depth is None:
        return (
            f"bp unrolls a feedforward equilibrium model; task {task.name!r} is not one "
            "(use rbp for recurrent equilibrium models)"
        )
    return None


def needs_layered(rule: str, why: str) -> Callable[[TaskInfo, Any], str | None]:
    """``unsupported`` for a rule that needs a :class:`LayeredEquilibriumModel`; ``why`` says for what."""

    def unsupported(task: TaskInfo, options: Any) -> str | None:
        if isinstance(task_model(task, options), LayeredEquilibriumModel):
            return None
        return (
            f"{rule} {why}; task {task.name!r} has no layered equilibrium model "
            "(LayeredEquilibriumModel); use lcp_di"
        )

    return unsupported


class MetaTrainer:
    """Owns the meta-optimizer, the cosine schedule and the cost counters; subclasses fill ``.grad``.

    Step order as in the reference: relaxation (and any pre-step decay) → zero_grad → write the
    update into ``.grad`` → clip (model and auxiliary parameters separately) → step → schedule;
    then the model's own constraint projection (:meth:`EquilibriumModel.constrain`, a no-op unless
    the task sets one, e.g. ``mnist1d_rnn``'s ``spectral_bound``), which is not in the reference.
    """

    def __init__(self, model: nn.Module, hparams: MetaHParams, aux: list[Tensor] | None = None) -> None:
        self.model = _equilibrium(model)
        self.hparams = hparams
        self.model.configure_solver(hparams.threshold, hparams.max_iter)
        self.aux = aux or []
        self.model_params = [p for p in model.parameters() if p.requires_grad]
        groups: list[dict[str, Any]] = [{"params": self.model_params}]
        if self.aux:
            groups.append({"params": self.aux})
        if hparams.optimizer == "adam":
            # Coupled L2 (torch.optim.Adam's weight_decay), as the reference; not AdamW.
            self.optimizer: torch.optim.Optimizer = torch.optim.Adam(
                groups, lr=hparams.lr, weight_decay=hparams.weight_decay
            )
        else:
            self.optimizer = torch.optim.SGD(groups, lr=hparams.lr, weight_decay=hparams.weight_decay)
        self.steps = 0
        self.total_iters = 0.0
        self.total_passes = 0.0
        self.nonconverged_total = 0

    def _lr(self) -> float:
        hp = self.hparams
        if hp.cosine_steps == 0:
            return hp.lr
        eta_min = hp.eta_min_ratio * hp.lr
        progress = min(self.steps, hp.cosine_steps) / hp.cosine_steps
        return eta_min + (hp.lr - eta_min) * (1 + math.cos(math.pi * progress)) / 2

    def compute_update(self, model: EquilibriumModel, batch: Batch, loss_fn: LossFn) -> tuple[float, Grads]:
        """Write the update into ``.grad``; return the loss and the cost counts of this step."""
        raise NotImplementedError

    def before_step(self) -> None:
        """Hook run before the relaxation (Kollen–Pollack's weight decay)."""

    def after_projection(self, factors: list[float]) -> None:
        """Hook run after the model's constraint projection, with the factor applied to each link."""

    def train_step(self, model: nn.Module, batch: Batch, loss_fn: LossFn) -> dict[str, float]:
        eq = _equilibrium(model)
        lr = self._lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.before_step()
        self.optimizer.zero_grad(set_to_none=True)
        loss, costs = self.compute_update(eq, batch, loss_fn)
        if self.hparams.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model_params, self.hparams.grad_clip)
            if self.aux:
                torch.nn.utils.clip_grad_norm_(self.aux, self.hparams.grad_clip)
        self.optimizer.step()
        self.after_projection(eq.constrain())
        self.steps += 1
        self.total_iters += costs["rule/solver_iters"]
        self.total_passes += costs["rule/forward_passes"]
        self.nonconverged_total += int(costs["rule/nonconverged"])
        return {
            "train/loss": loss,
            **costs,
            "rule/solver_iters_mean": self.total_iters / self.steps,
            "rule/forward_passes_mean": self.total_passes / self.steps,
            "rule/nonconverged_total": float(self.nonconverged_total),
            "rule/lr": lr,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "steps": self.steps,
            "total_iters": self.total_iters,
            "total_passes": self.total_passes,
            "nonconverged_total": self.nonconverged_total,
            "aux": [t.detach().clone() for t in self.aux],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps = int(state["steps"])
        self.total_iters = float(state["total_iters"])
        self.total_passes = float(state["total_passes"])
        self.nonconverged_total = int(state["nonconverged_total"])
        with torch.no_grad():
            for tensor, saved in zip(self.aux, state["aux"], strict=True):
                tensor.copy_(saved)


def step_costs(iters: float, passes: float, converged: bool) -> Grads:
    return {
        "rule/solver_iters": float(iters),
        "rule/forward_passes": float(passes),
        "rule/nonconverged": 0.0 if converged else 1.0,
    }


def output_control(
    hp: ControlHParams, loss_fn: LossFn, y_hat: Tensor, target: Tensor, u_i: Tensor
) -> tuple[Tensor, Tensor]:
    """``(u, ∇L(ŷ))`` with the output control ``u = k_i u_i − k_p ∇L(ŷ)``."""
    grad = loss_gradient(loss_fn, y_hat, target)
    return hp.k_i * u_i - hp.k_p * grad, grad


def loss_gradient(loss_fn: LossFn, y_hat: Tensor, target: Tensor) -> Tensor:
    """``∇L(ŷ)`` through the task's own loss (a batch mean, so it includes ``1/B``)."""
    with torch.enable_grad():
        leaf = y_hat.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(leaf, target), leaf)
    return grad


@torch.no_grad()
def free_loss(model: EquilibriumModel, x_enc: Tensor, target: Tensor, loss_fn: LossFn) -> float:
    return float(loss_fn(model.decode(model.solve_free(x_enc).state[0]), target))


def apply_control_update(
    model: EquilibriumModel, x: Tensor, v_star: Tensor, e_star: Tensor, u_star: Tensor
) -> Tensor:
    """The LCP weight update from a controlled equilibrium, written into ``.grad``.

    With ``v̂ = f(x̃, v*) + e*`` and ``ŷ' = g(v̂) + u*`` recorded, the gradient on ``v̂`` is replaced by
    ``−e*`` and on ``ŷ'`` by ``−u*``; equivalently we differentiate the surrogate
    ``−⟨e*, f(x̃, v*)⟩ − ⟨u*, g(v̂)⟩`` with ``v*``, ``v̂``, ``e*``, ``u*`` held fixed:

    .. math::
        Δθ_f ∝ −(∂f/∂θ)ᵀ e^*, \\qquad Δθ_g ∝ −(∂g/∂θ)ᵀ u^*

    (into the encoder through ``x̃``). For a link ``W`` from block ``i`` to ``j`` this is
    ``−Σ_batch e*_j φ(v*_i)ᵀ``: local in space and time. Returns ``v̂`` (detached).
    """
    with torch.enable_grad():
        x_enc = model.encode(x)
        v_hat = model.implicit(x_enc, v_star.detach()) + e_star
        y_prime = model.decode(v_hat.detach()) + u_star
        surrogate = -(e_star * v_hat).sum() - (u_star * y_prime).sum()
        surrogate.backward()  # type: ignore[no-untyped-call]
    return v_hat.detach()


# --------------------------------------------------------------------------------------------------
# Trainers


class BP(MetaTrainer):
    """Backpropagation through a feedforward equilibrium model unrolled from zero.

    .. math::
        v = f^{(D)}(x̃, 0), \\quad Δθ = −∇_θ L(g(v), y)

    where ``D`` is the model's ``feedforward_depth`` (2 for ff, 5 for conv-ff): exactly the MLP/CNN.

    Args:
        model: a feedforward :class:`~benchmark.fixpoint.EquilibriumModel`.
        hparams: :class:`BPHParams` (adam, lr 1e-3, cosine over ``cosine_steps``).

    Differences from the paper: the reference unrolls ``n_modules + 1`` times; the extra iteration
    changes nothing for a feedforward model, so we unroll ``D``.

    When not to use: on recurrent models (no finite unroll is exact); use :class:`RBP`.

    Reference: arXiv 2207.01332, Table 1 "BP" rows; ``fixpoint_trainer.py`` (bp).
    """

    def compute_update(self, model: EquilibriumModel, batch: Batch, loss_fn: LossFn) -> tuple[float, Grads]:
        x, y = batch
        depth = model.feedforward_depth
        if depth is None:
            raise TypeError("bp needs a feedforward equilibrium model (feedforward_depth set)")
        loss = loss_fn(model.decode(model.unroll(model.encode(x), depth)), y)
        loss.backward()  # type: ignore[no-untyped-call]
        return float(loss.detach()), step_costs(depth, 3 * depth, True)


class RBP(MetaTrainer):
    """Recurrent backpropagation: the exact gradient at the free equilibrium, by implicit differentiation.

    .. math::
        v^* = f(x̃, v^*), \\quad w = J^ᵀ w + J_g^ᵀ ∇L, \\quad
        Δθ = −\\big[(∂f/∂θ)^ᵀ w + (∂g/∂θ)^ᵀ ∇L\\big]

    Both ``v*`` and ``w`` come from the same plain-iteration solver (threshold, ``max_iter``); the
    adjoint iteration starts from ``J_gᵀ∇L`` (a Neumann series).

    Args:
        model: an :class:`~benchmark.fixpoint.EquilibriumModel`.
        hparams: :class:`RBPHParams` (adam 1e-3, clip 10, threshold 1e-4, 200 iterations).

    Differences from the paper: none known.

    When not to use: on non-contractive models the adjoint Neumann series diverges (watch
    ``rule/nonconverged``).

    Reference: arXiv 2207.01332, Table 1/2 "RBP" rows; Almeida 1987, Pineda 1987.
    """

    def compute_update(self, model: EquilibriumModel, batch: Batch, loss_fn: LossFn) -> tuple[float, Grads]:
        x, y = batch
        x_enc = model.encode(x)
        free = model.solve_free(x_enc.detach())
        v_hat, adjoint = attach_implicit(
            model, x_enc, free.state[0], self.hparams.threshold, self.hparams.max_iter
        )
        loss = loss_fn(model.decode(v_hat), y)
        loss.backward()  # type: ignore[no-untyped-call]
        iters = free.iterations + adjoint.iterations
        # forward: one f per iteration + the re-attached f and its backward (1 + 2); adjoint: one VJP each.
        passes = free.iterations + 3 + 2 * adjoint.iterations
        costs = step_costs(iters, passes, free.converged and adjoint.converged)
        costs["rule/adjoint_iters"] = float(adjoint.iterations)
        return float(loss.detach()), costs


class _ControlledTrainer(MetaTrainer):
    """Relaxes ``(v, ŷ, u_i, e)`` from zero under integral(+proportional) control, then updates."""

    hparams: ControlHParams

    def feedback_step(
        self, model: EquilibriumModel, x_enc: Tensor, v: Tensor, e: Tensor, u: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Return ``(f(x̃, v), g(v), ė)``; ``ė`` is the hidden control's drift."""
        raise NotImplementedError

    passes_per_iter = 3

    def relax(
        self, model: EquilibriumModel, x_enc: Tensor, y: Tensor, loss_fn: LossFn
    ) -> tuple[Solution, Tensor]:
        """The controlled equilibrium; returns the solution ``(v, ŷ, u_i, e)`` and ``u*``."""
        hp = self.hparams

        def step(state: State) -> State:
            v, y_hat, u_i, e = state
            u, grad = output_control(hp, loss_fn, y_hat, y, u_i)
            f_v, g_v, e_dot = self.feedback_step(model, x_enc, v, e, u)
            with torch.no_grad():
                return (
                    v + hp.dt * (f_v - v + e),
                    y_hat + hp.dt * (g_v - y_hat + u),
                    u_i + hp.dt * (-grad - hp.alpha * u_i),
                    e + hp.dt * e_dot,
                )

        batch, classes = len(x_enc), self._classes(model, x_enc)
        zeros = x_enc.new_zeros
        init = (zeros(x_enc.shape), zeros(batch, classes), zeros(batch, classes), zeros(x_enc.shape))
        solution = solve(step, init, hp.threshold * hp.dt, hp.max_iter)
        u_star, _ = output_control(hp, loss_fn, solution.state[1], y, solution.state[2])
        return solution, u_star

    @staticmethod
    def _classes(model: EquilibriumModel, x_enc: Tensor) -> int:
        with torch.no_grad():
            return int(model.decode(x_enc[:1]).shape[1])

    def compute_update(self, model: EquilibriumModel, batch: Batch, loss_fn: LossFn) -> tuple[float, Grads]:
        x, y = batch
        with torch.no_grad():
            x_enc = model.encode(x)
        loss = free_loss(model, x_enc, y, loss_fn)
        solution, u_star = self.relax(model, x_enc, y, loss_fn)
        v_star, _, _, e_star = solution.state
        self.update(model, x, v_star, e_star, u_star)
        passes = self.passes_per_iter * solution.iterations + 3
        return loss, step_costs(solution.iterations, passes, solution.converged)

    def update(
        self, model: EquilibriumModel, x: Tensor, v_star: Tensor, e_star: Tensor, u_star: Tensor
    ) -> None:
        apply_control_update(model, x, v_star, e_star, u_star)


class LCPDynamicInversion(_ControlledTrainer):
    """LCP with dynamic inversion: a controller drives the network to a loss-minimising equilibrium.

    Euler steps of size ``dt`` from ``v = ŷ = u_i = e = 0`` (all time constants 1):

    .. math::
        u &= k_i u_i − k_p ∇L(ŷ) \\\\
        ė &= (J − I)^ᵀ e + J_g^ᵀ u \\\\
        \\dot v &= f(x̃, v) − v + e \\\\
        \\dot ŷ &= g(v) − ŷ + u \\\\
        \\dot u_i &= −∇L(ŷ) − α u_i

    until the relative change is under ``threshold·dt``. At equilibrium (``k_p = 0``)
    ``u* = −(k_i/α)∇L``, ``e* = (I − Jᵀ)⁻¹J_gᵀu*`` (the inversion) and the update is
    ``Δθ_f ∝ −(∂f/∂θ)ᵀe*``, ``Δθ_g ∝ −(∂g/∂θ)ᵀu*`` (see :func:`apply_control_update`). As
    ``β = k_i/α → 0`` the update divided by ``β`` tends to the rbp gradient; at finite β it is the
    gradient of the least-control objective.

    Args:
        model: an :class:`~benchmark.fixpoint.EquilibriumModel`.
        hparams: :class:`DIHParams`: alpha 0.1, k_i 1, k_p 0, dt 1, threshold 1e-6, max_iter 800,
            adam 1e-3 (the MNIST commands).

    Differences from the paper: ``Jᵀe`` and ``J_gᵀu`` are autograd VJPs (as the reference); the
    Euler step updates all four states from the same old state; time constants are fixed at 1.

    When not to use: when ``α·dt ≥ 2`` (refused: the integral controller diverges); at strong
    control the update is deliberately not the gradient.

    Reference: arXiv 2207.01332, "LCP-DI" rows of Tables 1 and 2.
    """

    def feedback_step(
        self, model: EquilibriumModel, x_enc: Tensor, v: Tensor, e: Tensor, u: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        with torch.enable_grad():
            leaf = v.detach().requires_grad_(True)
            f_v, g_v = model.implicit_and_decode(x_enc, leaf)
            (vjp,) = torch.autograd.grad([f_v, g_v], leaf, [e, u])
        return f_v.detach(), g_v.detach(), vjp - e


class LCPKollenPollack(_ControlledTrainer):
    """LCP dynamic inversion with learnt feedback weights (Kolen–Pollack): no weight transport.

    The hidden control uses feedback weights ``B`` (one per link, in the link's layout, applied
    transposed) and ``D_fb`` (the readout's layout) in place of ``Jᵀ`` and ``J_gᵀ``:

    .. math::
        ė = −e + φ'(v) ⊙ (B e + D_{fb} u)

    the other dynamics as :class:`LCPDynamicInversion`. The forward update is DI's; the feedback
    gradient at ``B e* + D_fb u*`` is set to ``−φ(v̂)``, ``v̂ = f(x̃, v*) + e*`` (the authors' code),
    so at an exact equilibrium (``v̂ = v*``) ``grad_B = grad_W`` and ``grad_{D_fb} = grad_D``.
    Each step starts by multiplying links, readout and feedback (not the encoder) by
    ``1 − kp_wd``, so with no other decay ``W − B`` shrinks geometrically.

    Args:
        model: a :class:`~benchmark.fixpoint.LayeredEquilibriumModel`.
        hparams: :class:`KPHParams` (lcp_di's, plus kp_wd 1e-6).

    Differences from the paper: ``B`` starts uniform and scaled to unit Frobenius norm per link
    (the reference copies ``f`` with fresh default init, then normalises); ``D_fb`` starts
    ``N(0, 1/(C·H))`` in variance (``C`` classes, ``H`` readout units), as the reference's.
    ``B`` and ``D_fb`` are the rule's state, not the model's.

    When not to use: on models without linear links (the conv-rnn DEQ block); use lcp_di.

    Reference: arXiv 2207.01332, "LCP-DI (KP)" rows; Kolen & Pollack 1994.
    """

    hparams: KPHParams
    passes_per_iter = 2

    def __init__(self, model: nn.Module, hparams: KPHParams) -> None:
        if not isinstance(model, LayeredEquilibriumModel):
            raise TypeError(f"lcp_kp needs a LayeredEquilibriumModel, got {type(model).__name__}")
        feedback = []
        for weight in model.link_weights():
            b = torch.empty_like(weight.detach()).uniform_(-1, 1)
            feedback.append(b / b.norm())
        readout = model.decoder.weight.detach()
        d_fb = torch.randn_like(readout) * math.sqrt(1 / readout.numel())  # N(0, 1/(C·H))
        self.feedback_weights = [t.requires_grad_(True) for t in feedback]
        self.readout_feedback = d_fb.requires_grad_(True)
        super().__init__(model, hparams, aux=[*self.feedback_weights, self.readout_feedback])
        self.layered = model

    def before_step(self) -> None:
        decay = 1 - self.hparams.kp_wd
        with torch.no_grad():
            for module in (*self.layered.links, self.layered.decoder):
                for p in module.parameters():
                    p.mul_(decay)
            for t in self.aux:
                t.mul_(decay)

    def after_projection(self, factors: list[float]) -> None:
        # A spectral projection that shrinks W by c shrinks its feedback B by the same c, like
        # kp_wd: then W − B still only shrinks, and B stays as bounded as W.
        with torch.no_grad():
            for weight, factor in zip(self.feedback_weights, factors, strict=True):
                if factor < 1.0:
                    weight.mul_(factor)

    def feedback_step(
        self, model: EquilibriumModel, x_enc: Tensor, v: Tensor, e: Tensor, u: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        layered = self.layered
        with torch.no_grad():
            f_v, g_v = layered.implicit_and_decode(x_enc, v)
            back = layered.feedback(e, u, self.feedback_weights, self.readout_feedback)
            return f_v, g_v, -e + activate_prime(v, layered.activation) * back

    def update(
        self, model: EquilibriumModel, x: Tensor, v_star: Tensor, e_star: Tensor, u_star: Tensor
    ) -> None:
        v_hat = apply_control_update(model, x, v_star, e_star, u_star)
        layered = self.layered
        with torch.enable_grad():
            back = layered.feedback(e_star, u_star, self.feedback_weights, self.readout_feedback)
            target = activate(v_hat, layered.activation)
            (-(target * back).sum()).backward()  # type: ignore[no-untyped-call]


class LCPEnergyBased(MetaTrainer):
    """LCP by direct energy minimisation: find the controlled equilibrium with an inner optimizer.

    .. math::
        E(v, ŷ) = ½‖v − f(x̃, v)‖² + ½‖ŷ − g(v)‖² + \\tfrac{1}{α} L(ŷ)

    (squares summed over the batch, ``L`` the batch mean) is minimised over ``(v, ŷ)`` by a fresh
    Adam (or SGD) at ``ebd_lr`` for exactly ``max_iter`` steps, from zero or, with ``ff_init``,
    from the free equilibrium and ``ŷ = g(v)``. Then ``e* = v* − f(x̃, v*)``, ``u* = ŷ* − g(v*)``
    and the update is lcp_di's. Its stationary points are lcp_di's equilibria with ``k_i = 1``.

    Args:
        model: an :class:`~benchmark.fixpoint.EquilibriumModel`.
        hparams: :class:`EBDHParams` (alpha 0.1, 800 inner adam steps at 0.01, ff_init off).

    Differences from the paper: none known; the threshold is unused here (as in the reference) and
    ``rule/nonconverged`` stays 0 because the inner optimisation has no stopping test.

    When not to use: when compute matters; ``max_iter`` full forward+backward passes per step.

    Reference: arXiv 2207.01332, "LCP-EBD" rows of Table 1.
    """

    hparams: EBDHParams

    def compute_update(self, model: EquilibriumModel, batch: Batch, loss_fn: LossFn) -> tuple[float, Grads]:
        hp = self.hparams
        x, y = batch
        with torch.no_grad():
            x_enc = model.encode(x)
        free_iters = 0
        if hp.ff_init:
            free = model.solve_free(x_enc)
            free_iters = free.iterations
            v0 = free.state[0]
            with torch.no_grad():
                y0 = model.decode(v0)
            loss = float(loss_fn(y0, y))
        else:
            loss = free_loss(model, x_enc, y, loss_fn)
            v0 = torch.zeros_like(x_enc)
            with torch.no_grad():
                y0 = torch.zeros_like(model.decode(v0))
        v = v0.clone().requires_grad_(True)
        y_hat = y0.clone().requires_grad_(True)
        inner: torch.optim.Optimizer = (
            torch.optim.Adam([v, y_hat], lr=hp.ebd_lr)
            if hp.ebd_optimizer == "adam"
            else torch.optim.SGD([v, y_hat], lr=hp.ebd_lr)
        )
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            p.requires_grad_(False)  # the inner loop must not build graphs through the weights
        try:
            for _ in range(hp.max_iter):
                inner.zero_grad(set_to_none=True)
                with torch.enable_grad():
                    energy = (
                        0.5 * (v - model.implicit(x_enc, v)).pow(2).sum()
                        + 0.5 * (y_hat - model.decode(v)).pow(2).sum()
                        + loss_fn(y_hat, y) / hp.alpha
                    )
                    energy.backward()  # type: ignore[no-untyped-call]
                inner.step()
        finally:
            for p in params:
                p.requires_grad_(True)
        with torch.no_grad():
            v_star, y_star = v.detach(), y_hat.detach()
            e_star = v_star - model.implicit(x_enc, v_star)
            u_star = y_star - model.decode(v_star)
        apply_control_update(model, x, v_star, e_star, u_star)
        passes = free_iters + 3 * hp.max_iter + 1 + 3
        return loss, step_costs(free_iters + hp.max_iter, passes, True)


# --------------------------------------------------------------------------------------------------
# Registry entries


def _lr_space() -> dict[str, FloatDistribution]:
    return {"lr": FloatDistribution(1e-4, 1e-2, log=True)}


def _control_space() -> dict[str, FloatDistribution]:
    return {
        **_lr_space(),
        "k_i": FloatDistribution(0.1, 10.0, log=True),
        "alpha": FloatDistribution(0.05, 1.0, log=True),
    }


def _builder(cls: type[MetaTrainer]) -> Callable[[nn.Module, Any], MetaTrainer]:
    def build(model: nn.Module, hparams: Any) -> MetaTrainer:
        return cls(model, hparams)

    return build


_COMMON_ERRORS = (
    ErrorCase({"lr": 0}, r"lr: expected greater than 0"),
    ErrorCase({"learning_rate": 0.1}, r"learning_rate: expected a hyperparameter of"),
)
_CONTROL_ERRORS = (*_COMMON_ERRORS, ErrorCase({"alpha": 0}, r"alpha: expected greater than 0"))

BP_RULE = RuleInfo(
    name="bp",
    description="Backprop through a feedforward equilibrium model (LCP baseline), adam + cosine.",
    hparams=BPHParams,
    build=_builder(BP),
    search_space=_lr_space(),
    reference=LCP_PAPER,
    unsupported=_needs_feedforward,
    error_cases=_COMMON_ERRORS,
)
RBP_RULE = RuleInfo(
    name="rbp",
    description="Recurrent backprop: implicit gradient at the free equilibrium (LCP baseline).",
    hparams=RBPHParams,
    build=_builder(RBP),
    search_space=_lr_space(),
    reference=LCP_PAPER,
    unsupported=_needs_equilibrium,
    error_cases=_COMMON_ERRORS,
)
LCP_DI_RULE = RuleInfo(
    name="lcp_di",
    description="Least-control principle, dynamic inversion: local updates from a controlled equilibrium.",
    hparams=DIHParams,
    build=_builder(LCPDynamicInversion),
    search_space=_control_space(),
    reference=LCP_PAPER,
    unsupported=_needs_equilibrium,
    error_cases=_CONTROL_ERRORS,
    test_hparams={"threshold": 1e-4, "max_iter": 100},
)
LCP_KP_RULE = RuleInfo(
    name="lcp_kp",
    description="Least-control principle, dynamic inversion with Kolen-Pollack feedback weights.",
    hparams=KPHParams,
    build=_builder(LCPKollenPollack),
    search_space=_control_space(),
    reference=LCP_PAPER,
    unsupported=needs_layered("lcp_kp", "learns feedback weights for linear links between state blocks"),
    error_cases=_CONTROL_ERRORS,
    test_hparams={"threshold": 1e-4, "max_iter": 100},
)
LCP_EBD_RULE = RuleInfo(
    name="lcp_ebd",
    description="Least-control principle, energy-based: inner optimizer finds the controlled equilibrium.",
    hparams=EBDHParams,
    build=_builder(LCPEnergyBased),
    search_space={**_lr_space(), "ebd_lr": FloatDistribution(1e-3, 1e-1, log=True)},
    reference=LCP_PAPER,
    unsupported=_needs_equilibrium,
    error_cases=_CONTROL_ERRORS,
    test_hparams={"max_iter": 20},
)

LCP_RULES = (BP_RULE, RBP_RULE, LCP_DI_RULE, LCP_KP_RULE, LCP_EBD_RULE)
