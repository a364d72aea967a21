"""The training loop: reproducible, stops diverging runs, and keeps init independent of the rule."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmark import train
from benchmark.plan import expand
from benchmark.rules import RULES
from benchmark.rules.base import OptimizerRule
from benchmark.spec import RunSpec, load_suite
from tests.conftest import tiny_suite, write_suite
from tests.helpers import make_spec


@pytest.mark.parametrize("task", ["digits_mlp", "mnist1d_mlp"])
def test_same_spec_same_numbers_on_cpu(task: str) -> None:
    spec = make_spec(task=task, rule="adamw", steps=40)
    first, second = train.run(spec), train.run(spec)
    assert first.status == second.status == "ok"
    assert first.final == second.final
    assert [p.metrics for p in first.curve] == [p.metrics for p in second.curve]


def test_different_seeds_differ() -> None:
    a = train.run(make_spec(seed=0, steps=20)).final["test/loss"]
    b = train.run(make_spec(seed=1, steps=20)).final["test/loss"]
    assert a != b


def test_changing_the_rule_keeps_initialisation() -> None:
    sgd = train.run(make_spec(rule="sgd", steps=10))
    adamw = train.run(make_spec(rule="adamw", steps=10))
    assert sgd.curve[0].step == adamw.curve[0].step == 0
    assert sgd.curve[0].metrics == adamw.curve[0].metrics


def test_huge_learning_rate_is_recorded_as_diverged() -> None:
    result = train.run(make_spec(rule="sgd", hparams={"lr": 1e10, "momentum": 0.9}, steps=200, eval_every=50))
    assert result.status == "diverged"
    assert 0 < result.steps < 200
    assert result.curve[-1].step == result.steps, "the run is evaluated at the step it diverged"


def test_result_carries_curve_final_metrics_and_timing() -> None:
    result = train.run(make_spec(steps=25, eval_every=10))
    assert result.status == "ok"
    assert result.steps == 25
    assert [p.step for p in result.curve] == [0, 10, 20, 25]
    assert set(result.final) >= {"train/loss", "test/loss", "test/accuracy"}
    assert result.wall_time_s >= result.train_time_s > 0
    assert result.device


def _warmed(spec: RunSpec, warmup_steps: int) -> RunSpec:
    budget = spec.budget.model_copy(update={"warmup_steps": warmup_steps})
    return spec.model_copy(update={"budget": budget})


def test_warmup_first_step_runs_at_lr_over_its_length() -> None:
    def sgd(lr: float) -> RunSpec:
        return make_spec(rule="sgd", hparams={"lr": lr, "momentum": 0.0}, steps=6, eval_every=1)

    # Step t runs at lr · t/4 for t ≤ 4: its first step is a run at lr/4's first step, bit for bit.
    warmed, quarter = train.run(_warmed(sgd(0.2), 4)).curve, train.run(sgd(0.05)).curve
    assert warmed[1].metrics == quarter[1].metrics
    assert warmed[2].metrics != quarter[2].metrics
    # A warm-up of one step is the full rate from the start.
    one, none = train.run(_warmed(sgd(0.2), 1)).curve, train.run(sgd(0.2)).curve
    assert [p.metrics for p in one] == [p.metrics for p in none]


def test_warmup_leaves_the_optimizer_at_its_configured_rate() -> None:
    model = torch.nn.Linear(3, 2)
    learner = RULES.get("adamw").build(model, RULES.get("adamw").hparams(lr=0.01))
    assert isinstance(learner, OptimizerRule)
    rates = []
    for factor in (0.25, 0.5, 0.75, 1.0):
        learner.scale_lr(factor)
        rates.append(learner.optimizer.param_groups[0]["lr"])
    assert rates == pytest.approx([0.0025, 0.005, 0.0075, 0.01])


def test_warmup_drops_rules_with_no_optimizer_lr(tmp_path: Path) -> None:
    rules = ({"name": "sgd"}, {"name": "agd"}, {"name": "weight_perturbation"})
    suite = tiny_suite(tasks=("digits_mlp",), rules=rules)
    suite["tasks"][0]["options"]["bias"] = False
    suite["budget"]["warmup_steps"] = 5
    path = write_suite(tmp_path / "s.yaml", **suite)
    plan = expand(load_suite(path), path)
    assert {s.rule for s in plan.specs} == {"sgd"}
    reasons = {cell.rule: cell.reason for cell in plan.dropped}
    assert set(reasons) == {"agd", "weight_perturbation"}
    assert all("budget.warmup_steps = 5" in reason for reason in reasons.values())
