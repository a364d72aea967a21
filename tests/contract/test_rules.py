"""Every registered rule, checked the same way: a new rule is tested without a new test."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmark import train
from benchmark.errors import SpecError
from benchmark.plan import expand
from benchmark.rules import RULES, OptimizerRule, RuleInfo
from benchmark.seeding import derive_seeds
from benchmark.spec import RunSpec, Suite
from benchmark.tasks import TASKS
from tests.helpers import make_spec, task_options

RULE_NAMES = RULES.names()


def _supported_spec(rule: RuleInfo, **kwargs: Any) -> RunSpec:
    """A tiny spec the rule can run: digits_mlp (bias-free if the rule refuses biases), else the
    small equilibrium task (LCP trainers), else the first task that the rule supports.

    Tiny on purpose: second-order rules (natgrad_exact) cost a solve per step.
    """
    tiny = {"width": 16, "batch_size": 16}
    candidates = [("digits_mlp", tiny), ("digits_mlp", {**tiny, "bias": False}), ("mnist1d_ff", {})]
    candidates += [(name, {}) for name in TASKS.names() if name not in ("digits_mlp", "mnist1d_ff")]
    for name, options in candidates:
        task = TASKS.get(name)
        validated = task.options.model_validate({**task.test_options, **options})
        if rule.unsupported(task, validated) is None:
            hparams = {**rule.test_hparams, **kwargs.pop("hparams", {})}
            return make_spec(task=name, rule=rule.name, options=options, hparams=hparams, **kwargs)
    pytest.fail(f"{rule.name} supports no registered task")


@pytest.mark.parametrize("name", RULE_NAMES, ids=RULE_NAMES)
def test_builds_at_its_test_setting_and_loss_falls(name: str) -> None:
    rule = RULES.get(name)
    result = train.run(_supported_spec(rule, steps=60, eval_every=60))
    assert result.status == "ok"
    first, last = result.curve[0].metrics["train/loss"], result.curve[-1].metrics["train/loss"]
    assert last < first, f"{name} with its defaults did not lower the training loss ({first} -> {last})"


def _build(spec: RunSpec) -> tuple[torch.nn.Module, Any, Any]:
    task, rule = TASKS.get(spec.task), RULES.get(spec.rule)
    options = task.options.model_validate(spec.task_options)
    hparams = rule.hparams.model_validate(spec.hparams)
    seeds = derive_seeds(spec.seed)
    gen = seeds.generator("init")
    model = task.build_model(options, gen)
    if rule.prepare is not None:
        model = rule.prepare(model, gen, hparams)
    data = task.load_data(options, torch.device("cpu"))
    return model, rule.build(model, hparams), data


@pytest.mark.parametrize("name", RULE_NAMES, ids=RULE_NAMES)
def test_state_dict_round_trip_reproduces_the_next_step(name: str) -> None:
    spec = _supported_spec(RULES.get(name))
    task = TASKS.get(spec.task)
    model, learner, data = _build(spec)
    batches = data.train_batches(torch.Generator().manual_seed(0))
    for _ in range(3):
        learner.train_step(model, next(batches), task.loss)
    saved_model = {k: v.clone() for k, v in model.state_dict().items()}
    saved_rule = copy.deepcopy(learner.state_dict())  # optimizers hand out live buffers
    batch = next(batches)
    learner.train_step(model, batch, task.loss)
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    model2, learner2, _ = _build(spec)
    model2.load_state_dict(saved_model)
    learner2.load_state_dict(saved_rule)
    learner2.train_step(model2, batch, task.loss)
    for key, value in model2.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=f"{name}: {key} differs")


def _suite(
    rule: str, hparams: dict[str, Any], task: str = "digits_mlp", options: dict[str, Any] | None = None
) -> Suite:
    return Suite.model_validate(
        {
            "name": "contract",
            "tasks": [{"name": task, "options": task_options(task) if options is None else options}],
            "rules": [{"name": rule, "hparams": hparams}],
            "seeds": [0],
            "budget": {"steps": 1},
        }
    )


CASES = [(name, case) for name in RULE_NAMES for case in RULES.get(name).error_cases]


@pytest.mark.parametrize(("name", "case"), CASES, ids=[f"{n}:{c.match}" for n, c in CASES])
def test_error_cases_are_refused_with_their_message(name: str, case: Any) -> None:
    with pytest.raises(SpecError) as info:
        expand(_suite(name, dict(case.hparams)), Path("suite.yaml"))
    assert re.search(case.match, str(info.value)), str(info.value)
    assert "suite.yaml: rules[0]" in str(info.value)


@pytest.mark.parametrize("name", RULE_NAMES, ids=RULE_NAMES)
def test_unknown_hyperparameter_is_refused(name: str) -> None:
    with pytest.raises(
        SpecError, match=rf"rules\[0\].hparams.not_a_hparam: expected a hyperparameter of '{name}'"
    ):
        expand(_suite(name, {"not_a_hparam": 1}), Path("suite.yaml"))


@pytest.mark.parametrize("name", RULE_NAMES, ids=RULE_NAMES)
def test_search_space_stays_inside_the_hyperparameters(name: str) -> None:
    rule = RULES.get(name)
    assert set(rule.search_space) <= set(rule.hparams.model_fields)
    if rule.track == "self_tuning":
        return
    assert rule.search_space, f"{name} is tuned but declares no search space"
    for key, dist in rule.search_space.items():
        values = getattr(dist, "choices", None) or (dist.low, dist.high)  # type: ignore[attr-defined]
        for value in values:
            rule.hparams.model_validate({key: value})


@pytest.mark.parametrize("name", RULE_NAMES, ids=RULE_NAMES)
def test_list_shows_the_hyperparameters_a_run_gets_when_the_suite_names_none(name: str) -> None:
    rule = RULES.get(name)
    assert rule.description
    assert rule.reference
    task = _supported_spec(rule)
    implicit = expand(_suite(name, {}, task.task, task.task_options), Path("suite.yaml")).specs
    assert [spec.hparams for spec in implicit] == [rule.defaults()]
    # ... and a suite that writes out what `list` shows plans the very same run.
    explicit = expand(_suite(name, rule.defaults(), task.task, task.task_options), Path("suite.yaml")).specs
    assert [spec.run_id for spec in explicit] == [spec.run_id for spec in implicit]


@pytest.mark.parametrize("name", [n for n in RULE_NAMES if RULES.get(n).data_parallel])
def test_data_parallel_rules_step_a_torch_optimizer(name: str) -> None:
    # DDP averages gradients only; a rule that may run on several workers must update from them alone.
    _, learner, _ = _build(_supported_spec(RULES.get(name)))
    assert isinstance(learner, OptimizerRule)
    assert isinstance(learner.optimizer, torch.optim.Optimizer)


@pytest.mark.parametrize("name", [n for n in RULE_NAMES if RULES.get(n).warms_up])
def test_rules_that_warm_up_have_an_optimizer_lr(name: str) -> None:
    # budget.warmup_steps scales each parameter group's lr; the planner keeps only these rules.
    _, learner, _ = _build(_supported_spec(RULES.get(name)))
    assert isinstance(learner, OptimizerRule)
    assert all(isinstance(group.get("lr"), float) for group in learner.optimizer.param_groups)
