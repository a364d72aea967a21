"""Every rule with two kernels gives the same numbers from both (torch's test_foreach_matches_forloop).

A rule has two kernels when its optimizer takes torch.optim's ``foreach`` constructor flag. Each
rule is built through its registry entry (``prepare``, then ``build``) on a few float64 tensors; the
optimizer's class is then made twice, with ``foreach=False`` and ``foreach=True`` and otherwise the
rule's arguments, and both are stepped on the same random gradients.
"""

from __future__ import annotations

import inspect
from functools import partial
from typing import Any

import pytest
import torch
from torch import nn

from benchmark.rules import RULES, OptimizerRule
from tests.contract.left_out import EQUILIBRIUM_TRAINERS

SHAPES = ((6, 4), (3, 2, 3, 3), (1, 5), (40, 50))
"""2-D and 4-D: the shapes every rule with a kernel pair takes (AGD steps nothing else)."""

STEPS = 5

_MOMENTUM = (
    {"momentum": 0.0, "weight_decay": 1e-2},
    {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-2},
    {"momentum": 0.5, "dampening": 0.3},
)
SETTINGS: dict[str, tuple[dict[str, Any], ...]] = {
    "sgd": ({}, *_MOMENTUM),
    "eg_sgd": ({}, *_MOMENTUM),
    "sgd_signed": ({}, *_MOMENTUM),
    "adam": ({}, {"weight_decay": 0.1}),
    "adamw": ({}, {"lr": 0.01, "weight_decay": 0.1}),
    "eg_adamw": ({}, {"lr": 0.05, "weight_decay": 0.1}),
    "diffgrad": ({}, {"weight_decay": 0.1}),
    "agd": ({}, {"gain": 2.0}),
    "lion": ({}, {"lr": 0.01, "weight_decay": 0.1}),
    "ademamix": ({}, {"t_alpha_beta3": 3, "weight_decay": 0.1}),
    "schedule_free_adamw": ({}, {"warmup_steps": 2}),
}
"""Hyperparameters to check beyond the defaults (a rule not named here is checked at its defaults)."""

EXCLUDED: dict[str, str] = {
    **EQUILIBRIUM_TRAINERS,
    "kfac": "one kernel: KFAC takes no foreach flag",
    "natgrad_exact": "owns the training step (a solve with the Fisher); one kernel",
    "natgrad_diag": "owns the training step (per-sample Fisher diagonal); one kernel",
    "weight_perturbation": "owns the training step (zeroth-order); one kernel",
    "node_perturbation": "owns the training step (zeroth-order); one kernel",
    "muon": "one kernel: torch.optim.Muon refuses foreach",
    "shampoo": "one kernel: pytorch-optimizer's ScalableShampoo takes no foreach flag",
    "soap": "one kernel: pytorch-optimizer's SOAP takes no foreach flag",
    "prodigy": "one kernel: prodigyopt's Prodigy takes no foreach flag",
}

CASES = [
    (name, hparams) for name in RULES.names() if name not in EXCLUDED for hparams in SETTINGS.get(name, ({},))
]


class Tensors(nn.Module):
    def __init__(self, generator: torch.Generator) -> None:
        super().__init__()
        self.tensors = nn.ParameterList(
            nn.Parameter(torch.randn(shape, generator=generator, dtype=torch.float64)) for shape in SHAPES
        )
        with torch.no_grad():
            self.tensors[-1][0, :2] = 0.0  # a weight without a sign (EG keeps it at 0), under 1% of the layer


def _shown(hparams: dict[str, Any]) -> str:
    return ",".join(f"{key}={value}" for key, value in hparams.items()) or "defaults"


def _settings(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in group.items() if k not in ("params", "foreach")} for group in optimizer.param_groups
    ]


def _prefixed(prefix: str, message: str) -> str:
    return f"{prefix}: {message}"


def test_exclusions_name_registered_rules() -> None:
    # Every other rule is a case of test_foreach_matches_forloop, which fails for a rule it cannot check.
    assert set(EXCLUDED) <= set(RULES.names())
    assert set(SETTINGS) <= set(RULES.names()) - set(EXCLUDED)


@pytest.mark.parametrize(("name", "hparams"), CASES, ids=[f"{n}-{_shown(h)}" for n, h in CASES])
def test_foreach_matches_forloop(name: str, hparams: dict[str, Any]) -> None:
    rule = RULES.get(name)
    hp = rule.hparams.model_validate(hparams)
    model: nn.Module = Tensors(torch.Generator().manual_seed(0))
    if rule.prepare is not None:
        model = rule.prepare(model, torch.Generator().manual_seed(1), hp)
    learner = rule.build(model, hp)
    assert isinstance(learner, OptimizerRule), f"{name} has no optimizer step: add it to EXCLUDED with why"
    cls: Any = type(learner.optimizer)
    signature = inspect.signature(cls)
    assert "foreach" in signature.parameters, f"{cls.__name__} has one kernel: add {name} to EXCLUDED"
    kwargs = {
        key: value
        for key, value in learner.optimizer.defaults.items()
        if key in signature.parameters and key not in ("params", "foreach")
    }

    start = [p.detach().clone() for p in model.parameters()]
    loop = [p.clone().requires_grad_() for p in start]
    foreach = [p.clone().requires_grad_() for p in start]
    optimizers = (cls(loop, **kwargs, foreach=False), cls(foreach, **kwargs, foreach=True))
    for optimizer in optimizers:  # rebuilt at the rule's settings, not at the class's defaults
        assert _settings(optimizer) == _settings(learner.optimizer)
    gen = torch.Generator().manual_seed(2)
    for step in range(STEPS):
        for i, (a, b) in enumerate(zip(loop, foreach, strict=True)):
            a.grad = torch.randn(a.shape, generator=gen, dtype=torch.float64)
            if (step, i) == (2, 0):
                a.grad.zero_()  # a layer without signal for a step (AGD's zero-norm case)
            b.grad = a.grad.clone()
        for optimizer in optimizers:
            optimizer.step()
        where = partial(_prefixed, f"{name}, step {step}")
        torch.testing.assert_close(foreach, loop, rtol=0, atol=1e-12, msg=where)
    assert any(not torch.equal(a, s) for a, s in zip(loop, start, strict=True)), f"{name} did not move"
