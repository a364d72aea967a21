"""The training loop: reproducible, stops diverging runs, keeps init independent of the rule, and
keeps everything but the update off the training clock."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmark import train
from benchmark.hooks import artifact_hooks
from benchmark.plan import expand
from benchmark.rules import RULES
from benchmark.rules.base import LearningRule, OptimizerRule
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


def test_warmup_is_refused_for_a_rule_whose_update_is_not_an_optimizer_step() -> None:
    spec = _warmed(make_spec(rule="weight_perturbation", steps=4), 2)
    with pytest.raises(ValueError, match="rule 'weight_perturbation' cannot warm up"):
        train.run(spec)


# ---------------------------------------------------------------------------------------------
# Hooks: a rule built from a test optimizer, run by the real loop.


def _with_build(
    monkeypatch: pytest.MonkeyPatch,
    spec: RunSpec,
    build: Callable[[torch.nn.Module], LearningRule],
    **info: Any,
) -> None:
    """Make ``train.run`` build ``spec.rule`` with ``build`` (it looks the rule up by name only)."""
    rule = dataclasses.replace(RULES.get(spec.rule), build=lambda model, hparams: build(model), **info)
    monkeypatch.setattr(train, "RULES", {spec.rule: rule})


class CountingSGD(torch.optim.SGD):
    """SGD with a ``diagnostics()`` that records the number of steps taken when it is called."""

    def __init__(self, params: Iterable[torch.nn.Parameter]) -> None:
        super().__init__(params, lr=0.1)
        self.steps = 0
        self.calls: list[int] = []

    def step(self, closure: Any = None) -> Any:
        self.steps += 1
        return super().step(closure)

    def diagnostics(self) -> dict[str, float]:
        self.calls.append(self.steps)
        return {"rule/steps_seen": float(self.steps)}


def test_diagnostics_are_read_at_evaluations_never_during_training(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = make_spec(steps=25, eval_every=10)
    optimizers: list[CountingSGD] = []

    def build(model: torch.nn.Module) -> OptimizerRule:
        optimizers.append(CountingSGD(model.parameters()))
        return OptimizerRule(optimizers[-1])

    _with_build(monkeypatch, spec, build)
    result = train.run(spec)
    assert optimizers[0].calls == [0, 10, 20, 25]
    # Step 0's reading only starts the counts; each later evaluation reports the state it sees.
    assert [p.metrics.get("rule/steps_seen") for p in result.curve] == [None, 10.0, 20.0, 25.0]


def test_clocks_count_steps_examples_and_forward_passes() -> None:
    spec = make_spec(rule="sgd", steps=25, eval_every=10)
    batch = spec.task_options["batch_size"]
    for point in train.run(spec).curve:
        assert point.metrics["clock/steps"] == point.step
        assert point.metrics["clock/examples"] == point.step * batch
        assert point.metrics["clock/forward_passes"] == 3 * point.step  # forward + backward


class ReportsItsCost:
    """A rule whose step reports its own cost, as equilibrium and perturbation rules do."""

    def __init__(self, inner: OptimizerRule) -> None:
        self.inner = inner
        self.steps = 0

    def train_step(self, model: torch.nn.Module, batch: Any, loss_fn: Any) -> dict[str, float]:
        self.steps += 1
        return {**self.inner.train_step(model, batch, loss_fn), "rule/forward_passes": float(self.steps)}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Any) -> None:
        pass


def test_a_rule_declares_or_reports_its_forward_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = make_spec(rule="sgd", steps=4, eval_every=2)

    def sgd(model: torch.nn.Module) -> OptimizerRule:
        return OptimizerRule(torch.optim.SGD(model.parameters(), lr=0.1))

    _with_build(monkeypatch, spec, sgd, forward_passes=5.0)
    assert [p.metrics["clock/forward_passes"] for p in train.run(spec).curve] == [0.0, 10.0, 20.0]
    _with_build(monkeypatch, spec, lambda model: ReportsItsCost(sgd(model)))
    curve = train.run(spec).curve  # steps cost 1, 2, 3, 4 passes
    assert [p.metrics["clock/forward_passes"] for p in curve] == [0.0, 3.0, 10.0]
    assert not any("rule/forward_passes" in p.metrics for p in curve), "the clock takes it"


class AveragingSGD(torch.optim.SGD):
    """Schedule-free's interface: ``eval()`` puts the evaluation point in the parameters, ``train()``
    puts the training point back. Here the evaluation point is all zeros."""

    def __init__(self, params: Iterable[torch.nn.Parameter], events: list[str]) -> None:
        super().__init__(params, lr=0.1)
        self.events = events
        self.saved: list[torch.Tensor] = []

    def step(self, closure: Any = None) -> Any:
        params = [p for group in self.param_groups for p in group["params"]]
        self.events.append("step" if any(p.any() for p in params) else "step at zero")
        return super().step(closure)

    @torch.no_grad()
    def eval(self) -> None:
        self.events.append("eval")
        params = [p for group in self.param_groups for p in group["params"]]
        self.saved = [p.clone() for p in params]
        for p in params:
            p.zero_()

    @torch.no_grad()
    def train(self) -> None:
        self.events.append("train")
        params = [p for group in self.param_groups for p in group["params"]]
        for p, saved in zip(params, self.saved, strict=True):
            p.copy_(saved)


def test_an_optimizer_with_its_own_eval_mode_is_evaluated_in_it(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = make_spec(rule="sgd", steps=4, eval_every=2)
    events: list[str] = []
    _with_build(monkeypatch, spec, lambda model: OptimizerRule(AveragingSGD(model.parameters(), events)))
    result = train.run(spec)
    assert events == ["eval", "train", "step", "step"] * 2 + ["eval", "train"]
    # Every evaluation saw the zero model (uniform logits over 10 digits); no step did.
    assert all(p.metrics["test/loss"] == pytest.approx(math.log(10)) for p in result.curve)


def test_a_run_writes_no_files_unless_its_caller_passes_a_hook_that_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    spec = make_spec(steps=5, eval_every=5).model_copy(update={"artifacts": ("weight_histogram",)})
    train.run(spec)
    assert list(tmp_path.iterdir()) == []
    train.run(spec, hooks=artifact_hooks(spec, tmp_path / "artifacts"))
    assert (tmp_path / "artifacts" / "weight_histogram.png").read_bytes()[:4] == b"\x89PNG"
