"""Every rule whose step is a torch optimizer minimises a convex quadratic and Rosenbrock's function.

One table (optax's ``test_optimizers``, timm's ``test_optim``): per rule and problem, the
hyperparameters, the number of steps and the loss it must end below. The parameter is a plain
vector in float64 behind a one-parameter ``nn.Module``, prepared and built through the rule's own
``prepare``/``build`` and stepped by :meth:`OptimizerRule.train_step`. Both problems start and end
in the positive orthant, so sign-preserving rules (EG, sign-constrained SGD) can reach the minimum.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from benchmark.rules import RULES, OptimizerRule
from tests.contract.left_out import EQUILIBRIUM_TRAINERS

Objective = Callable[[Tensor], Tensor]

CENTRE = (1.0, 2.0, 0.5, 1.5)
CURVATURE = (1.0, 3.0, 10.0, 0.3)  # condition number 33


def quadratic(x: Tensor) -> Tensor:
    """``½ Σ dᵢ (xᵢ − cᵢ)²``: minimum 0 at ``c``."""
    centre, curvature = x.new_tensor(CENTRE), x.new_tensor(CURVATURE)
    return 0.5 * (curvature * (x - centre) ** 2).sum()


def rosenbrock(x: Tensor) -> Tensor:
    """``(1 − x)² + 100 (y − x²)²``: minimum 0 at (1, 1), at the end of a curved, narrow valley."""
    return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2


PROBLEMS: dict[str, tuple[Objective, tuple[float, ...]]] = {
    "quadratic": (quadratic, (2.0, 0.5, 1.0, 3.0)),  # loss 5.5 at the start
    "rosenbrock": (rosenbrock, (0.5, 0.5)),  # loss 6.5 at the start
}


@dataclass(frozen=True, slots=True)
class Case:
    """``hparams`` (over the rule's defaults) must bring the loss below ``below`` within ``steps``."""

    steps: int
    below: float
    hparams: dict[str, Any] = field(default_factory=dict)


# The thresholds leave at least a factor 10 to the loss measured at these settings. Decoupled decay
# moves the minimum away from the problem's, so the Adam-type rules minimise Rosenbrock without it.
TABLE: dict[str, dict[str, Case]] = {
    "sgd": {
        "quadratic": Case(200, 1e-6, {"lr": 0.01}),
        "rosenbrock": Case(400, 1e-4, {"lr": 0.003}),
    },
    "adam": {
        "quadratic": Case(200, 1e-4, {"lr": 0.1}),
        "rosenbrock": Case(600, 1e-3, {"lr": 0.1}),
    },
    "adamw": {
        "quadratic": Case(200, 1e-3, {"lr": 0.1}),
        "rosenbrock": Case(600, 1e-3, {"lr": 0.1, "weight_decay": 0.0}),
    },
    "diffgrad": {
        "quadratic": Case(200, 1e-4, {"lr": 0.1}),
        "rosenbrock": Case(600, 1e-3, {"lr": 0.2}),
    },
    "eg_sgd": {
        "quadratic": Case(200, 1e-6, {"lr": 0.01, "momentum": 0.9}),
        "rosenbrock": Case(400, 1e-4, {"lr": 0.003, "momentum": 0.9}),
    },
    "eg_adamw": {
        "quadratic": Case(200, 1e-3, {"lr": 0.1}),
        "rosenbrock": Case(600, 1e-3, {"lr": 0.1, "weight_decay": 0.0}),
    },
    "sgd_signed": {
        "quadratic": Case(200, 1e-6, {"lr": 0.01, "momentum": 0.9}),
        "rosenbrock": Case(400, 1e-4, {"lr": 0.003, "momentum": 0.9}),
    },
    "lion": {  # a sign step of size lr: it ends oscillating at about lr
        "quadratic": Case(800, 1e-3, {"lr": 0.003}),
        "rosenbrock": Case(600, 2e-2, {"lr": 0.003}),
    },
    "ademamix": {
        "quadratic": Case(200, 1e-3, {"lr": 0.1}),
        "rosenbrock": Case(600, 1e-2, {"lr": 0.1}),
    },
    "shampoo": {  # a vector has no preconditioner: this is its momentum step (docstring)
        "quadratic": Case(200, 1e-4, {"lr": 0.1, "momentum": 0.0}),
        "rosenbrock": Case(400, 1e-4, {"lr": 0.003}),
    },
    "soap": {
        "quadratic": Case(200, 1e-2, {"lr": 0.1, "weight_decay": 0.0}),
        "rosenbrock": Case(600, 1e-2, {"lr": 0.1, "weight_decay": 0.0}),
    },
    "prodigy": {
        "quadratic": Case(200, 1e-6, {}),
        "rosenbrock": Case(600, 1e-5, {}),
    },
    "schedule_free_adamw": {  # the loss at the training point y
        "quadratic": Case(200, 1e-4, {"lr": 0.1, "weight_decay": 0.0}),
        "rosenbrock": Case(600, 1e-4, {"lr": 0.1, "weight_decay": 0.0}),
    },
}

EXCLUDED: dict[str, str] = {
    **EQUILIBRIUM_TRAINERS,
    "agd": "bias-free networks only: steps 2-D and 4-D weights, normalised per layer; a vector has none",
    "kfac": "linear layers only: its curvature factors are nn.Linear inputs and output gradients",
    "natgrad_exact": "owns the training step: its metric is the Fisher of a network's outputs under the loss",
    "natgrad_diag": "owns the training step: its metric is a Fisher diagonal from per-sample gradients",
    "weight_perturbation": "owns the training step: a zeroth-order estimate, not a torch optimizer",
    "node_perturbation": "owns the training step and perturbs nn.Linear outputs; not a torch optimizer",
    "muon": "hidden nn.Linear weights only: a vector goes to its AdamW, which adamw's cases cover",
}

CASES = [(rule, problem) for rule, cases in TABLE.items() for problem in cases]


class Point(nn.Module):
    """A model whose output is its only parameter: the rule minimises ``objective(x)`` over ``x``."""

    def __init__(self, start: tuple[float, ...]) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.tensor(start, dtype=torch.float64))

    def forward(self, inputs: Tensor) -> Tensor:
        return self.x


def test_every_rule_is_in_the_table_or_excluded_with_a_reason() -> None:
    assert not set(TABLE) & set(EXCLUDED)
    assert set(TABLE) | set(EXCLUDED) == set(RULES.names()), "add the rule to TABLE, or to EXCLUDED with why"
    assert all(reason for reason in EXCLUDED.values())


@pytest.mark.parametrize(("name", "problem"), CASES, ids=[f"{r}-{p}" for r, p in CASES])
def test_minimises(name: str, problem: str) -> None:
    rule, case = RULES.get(name), TABLE[name][problem]
    objective, start = PROBLEMS[problem]
    hparams = rule.hparams.model_validate(case.hparams)
    model: nn.Module = Point(start)
    if rule.prepare is not None:
        model = rule.prepare(model, torch.Generator().manual_seed(0), hparams)
    learner = rule.build(model, hparams)
    assert isinstance(learner, OptimizerRule), f"{name}'s build gives no optimizer step; move it to EXCLUDED"

    batch = (torch.empty(0), torch.empty(0))
    for _ in range(case.steps):
        learner.train_step(model, batch, lambda output, _: objective(output))
    with torch.no_grad():
        loss = float(objective(model(batch[0])))
    initial = float(objective(torch.tensor(start, dtype=torch.float64)))
    assert loss < case.below, (
        f"{name} on {problem}: loss {initial:.3g} -> {loss:.3g} after {case.steps} steps"
    )
