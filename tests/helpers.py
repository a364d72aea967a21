"""Small builders shared by tests: planned RunSpecs on the tasks' tiny test options."""

from __future__ import annotations

from typing import Any

from benchmark.rules import RULES
from benchmark.spec import Budget, RunSpec
from benchmark.tasks import TASKS


def task_options(task: str, **overrides: Any) -> dict[str, Any]:
    info = TASKS.get(task)
    return info.options.model_validate({**info.test_options, **overrides}).model_dump(mode="json")


def make_spec(
    task: str = "digits_mlp",
    rule: str = "sgd",
    seed: int = 0,
    steps: int = 20,
    eval_every: int = 10,
    suite: str = "test",
    hparams: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
) -> RunSpec:
    """A resolved RunSpec, as the planner would make it."""
    hp = RULES.get(rule).hparams.model_validate(hparams or {}).model_dump(mode="json")
    return RunSpec(
        suite=suite,
        task=task,
        task_options=task_options(task, **(options or {})),
        rule=rule,
        hparams=hp,
        seed=seed,
        budget=Budget(steps=steps, eval_every=eval_every),
    )
