"""Muon on the hidden layers' weight matrices, AdamW on everything else (``torch.optim.Muon``).

Muon orthogonalises each hidden weight's momentum; it is not meant for the input and output
layers, biases or other vectors (Jordan et al., 2024, "When not to use"), which AdamW steps
here at its own ``adamw_lr``. :func:`split_parameters` is the policy, :class:`MuonRule` steps
both optimizers as one rule, and a model without a hidden weight is refused at planning.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any

import torch
from optuna.distributions import FloatDistribution
from pydantic import BaseModel, Field
from torch import nn

from benchmark.rules.base import (
    ErrorCase,
    HParams,
    NonNegativeFloat,
    OptimizerRule,
    PositiveFloat,
    RuleInfo,
    UnitFloat,
)
from benchmark.rules.support import task_model
from benchmark.types import Batch, LossFn

if TYPE_CHECKING:
    from benchmark.tasks.base import TaskInfo


class MuonHParams(HParams):
    lr: PositiveFloat = 0.02
    momentum: UnitFloat = 0.95
    nesterov: bool = True
    ns_steps: Annotated[int, Field(ge=1, lt=100)] = 5
    weight_decay: NonNegativeFloat = 0.0
    adamw_lr: PositiveFloat = 1e-3
    """AdamW's rate for the first and last layers, biases and every other parameter."""
    adamw_weight_decay: NonNegativeFloat = 0.0


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """``(muon, adamw)``: the weights of the ``nn.Linear`` layers between the first and the last, in
    module order, and every other parameter (those layers' biases included)."""
    linear = [module for module in model.modules() if isinstance(module, nn.Linear)]
    hidden = {id(layer.weight) for layer in linear[1:-1]}
    muon = [p for p in model.parameters() if id(p) in hidden]
    adamw = [p for p in model.parameters() if id(p) not in hidden]
    return muon, adamw


class MuonRule(OptimizerRule):
    """One step of Muon (``optimizer``, hidden weights) and of AdamW (``adamw``, the rest) on one gradient."""

    def __init__(self, muon: torch.optim.Optimizer, adamw: torch.optim.Optimizer) -> None:
        super().__init__(muon)
        self.adamw = adamw
        self.adamw_lrs: list[float] = [group["lr"] for group in adamw.param_groups]

    def scale_lr(self, factor: float) -> None:
        super().scale_lr(factor)
        for group, base in zip(self.adamw.param_groups, self.adamw_lrs, strict=True):
            group["lr"] = base * factor

    def train_step(self, model: nn.Module, batch: Batch, loss_fn: LossFn) -> dict[str, float]:
        inputs, targets = batch
        self.optimizer.zero_grad(set_to_none=True)
        self.adamw.zero_grad(set_to_none=True)
        loss = loss_fn(model(inputs), targets)
        loss.backward()  # type: ignore[no-untyped-call]
        self.optimizer.step()
        self.adamw.step()
        return {"train/loss": float(loss.detach())}

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.optimizer.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state["muon"])
        self.adamw.load_state_dict(state["adamw"])


def build_muon(model: nn.Module, hp: MuonHParams) -> MuonRule:
    """Muon: momentum, orthogonalised by a Newton–Schulz iteration, on each hidden weight matrix.

    .. math::

        B_t = μ B_{t-1} + (1-μ) G_t,\\qquad
        \\tilde B_t = (1-μ) G_t + μ B_t \\text{ (nesterov)} \\text{ or } B_t,

        O_t = \\mathrm{NS}_5(\\tilde B_t),\\qquad
        W_t = (1 - ηλ) W_{t-1} - η \\sqrt{\\max(1, A/B)}\\; O_t,

    for an ``A × B`` weight (``A`` outputs, ``B`` inputs). ``NS_k`` scales ``X ← B̃/‖B̃‖_F`` and
    runs ``k`` quintic steps ``X ← aX + (bXX^⊤ + c(XX^⊤)^2)X`` with ``(a, b, c) = (3.4445,
    −4.7750, 2.0315)`` (on ``X^⊤`` if ``A > B``), which takes the singular values towards 1:
    ``O ≈ UV^⊤`` for ``B̃ = USV^⊤``. Every other parameter steps by AdamW (torch.optim) at
    ``adamw_lr``, betas (0.9, 0.999), eps 1e-8 and ``adamw_weight_decay``.

    Args: lr = η = 0.02, momentum = μ = 0.95, nesterov = True, ns_steps = 5 (Jordan et al.'s
    values; torch's class defaults are the same except lr 1e-3 and weight_decay 0.1),
    weight_decay = λ = 0 (decoupled), adamw_lr = 1e-3, adamw_weight_decay = 0. The rate
    adjustment is torch's default ``adjust_lr_fn=None`` ("original"): ``√max(1, A/B)``.

    Differences from the reference: none beyond Jordan et al.'s own code; torch runs the
    iteration in bfloat16, as that code does (its ``O`` agrees with a float64 iteration to about
    1%), and its momentum is an EMA (``1 − μ`` on ``G``), which the Frobenius normalisation
    makes the same direction as the post's ``B ← μB + G`` except for ``ε``.

    When not to use: on the first or last layer, embeddings or vectors (they go to AdamW here);
    a model with no hidden linear layer has nothing for Muon and is refused.

    Reference: Jordan et al., "Muon: An optimizer for hidden layers in neural networks", 2024,
    https://kellerjordan.github.io/posts/muon/ (the Newton–Schulz iteration and its
    coefficients); torch.optim.Muon (torch 2.14).
    """
    muon_params, adamw_params = split_parameters(model)
    if not muon_params:
        raise ValueError("muon: the model has no hidden nn.Linear weight (only a first and a last layer)")
    muon = torch.optim.Muon(
        muon_params,
        lr=hp.lr,
        momentum=hp.momentum,
        nesterov=hp.nesterov,
        ns_steps=hp.ns_steps,
        weight_decay=hp.weight_decay,
    )
    adamw = torch.optim.AdamW(adamw_params, lr=hp.adamw_lr, weight_decay=hp.adamw_weight_decay)
    return MuonRule(muon, adamw)


def needs_a_hidden_weight(task: TaskInfo, options: BaseModel) -> str | None:
    """The planner's check: Muon needs an ``nn.Linear`` between the first and the last."""
    muon_params, _ = split_parameters(task_model(task, options))
    if not muon_params:
        return "muon steps hidden nn.Linear weights, and this model has none between its first and last layer"
    return None


MUON = RuleInfo(
    name="muon",
    description="Muon on hidden weight matrices, AdamW on the rest (Jordan et al. 2024; torch.optim.Muon).",
    hparams=MuonHParams,
    build=build_muon,
    search_space={"lr": FloatDistribution(1e-4, 1.0, log=True)},
    reference="https://kellerjordan.github.io/posts/muon/",
    unsupported=needs_a_hidden_weight,
    error_cases=(
        ErrorCase({"lr": 0}, r"lr: expected greater than 0"),
        ErrorCase({"ns_steps": 0}, r"ns_steps: expected greater than or equal to 1"),
        ErrorCase({"adamw_lr": -1e-3}, r"adamw_lr: expected greater than 0"),
    ),
)
