"""The training loop: reproducible, stops diverging runs, and keeps init independent of the rule."""

from __future__ import annotations

import pytest

from benchmark import train
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
