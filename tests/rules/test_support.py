"""task_model: the planner's checks build a task's model once per (task, options), not once per rule."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from benchmark.rules import RULES
from benchmark.rules.support import task_model
from benchmark.tasks import TASKS


def test_the_unsupported_checks_of_all_rules_build_the_model_once() -> None:
    base = TASKS.get("digits_mlp")
    built: list[int] = []

    def build(options: Any, generator: torch.Generator) -> nn.Module:
        built.append(1)
        return base.build_model(options, generator)

    task = dataclasses.replace(base, name="digits_mlp_counted", build_model=build)
    options = task.options.model_validate(task.test_options)
    reasons = {name: RULES.get(name).unsupported(task, options) for name in RULES.names()}
    assert len(built) == 1
    assert reasons["kfac"] is None  # an MLP: every layer is nn.Linear
    assert reasons["lcp_di"] is not None  # not an equilibrium model
    # Other options are another model.
    task_model(task, task.options.model_validate({**task.test_options, "width": 7}))
    assert len(built) == 2


def test_the_model_is_drawn_from_a_generator_seeded_0() -> None:
    task = TASKS.get("digits_mlp")
    options = task.options.model_validate(task.test_options)
    expected = task.build_model(options, torch.Generator().manual_seed(0))
    for mine, theirs in zip(task_model(task, options).parameters(), expected.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs)
