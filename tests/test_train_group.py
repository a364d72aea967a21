"""Runs trained as one batched group: each member is its solo run (issue 22's equalities), a member
that diverges ends alone, and each member's result is handed over as it ends."""

from __future__ import annotations

import math

import pytest
import torch

from benchmark import train
from benchmark.result import RunResult
from benchmark.rules import RULES
from benchmark.spec import RunSpec
from benchmark.train_group import run_group
from tests.helpers import make_spec

pytestmark = pytest.mark.usefixtures("one_thread")

RULE_SETTINGS = {
    "sgd": {"lr": 0.05, "momentum": 0.9},
    "adamw": {"lr": 0.003},
    "eg_sgd": {"lr": 0.2, "momentum": 0.9},
    "diffgrad": {"lr": 0.003},
}


def _relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), 1e-12)


def _assert_member_is_solo(member: RunResult, solo: RunResult) -> None:
    assert member.run_id == solo.run_id
    assert member.status == solo.status
    assert member.steps == solo.steps
    assert member.curve[0].metrics == solo.curve[0].metrics, "step 0: the same initialisation"
    first = member.curve[1]
    assert first.step == solo.curve[1].step <= 100
    for key, value in solo.curve[1].metrics.items():
        assert _relative(value, first.metrics[key]) <= 1e-4, (key, value, first.metrics[key])
    for key, value in solo.final.items():
        if key.endswith("/loss"):
            assert _relative(value, member.final[key]) <= 1e-2, key
        elif key.endswith("/accuracy"):
            assert abs(value - member.final[key]) <= 0.01, key


@pytest.mark.parametrize("task", ["mnist1d_mlp", "digits_mlp"])
@pytest.mark.parametrize("rule", sorted(RULE_SETTINGS))
def test_each_member_is_its_solo_run(task: str, rule: str) -> None:
    specs = [
        make_spec(task, rule, seed, steps=200, eval_every=100, hparams=RULE_SETTINGS[rule])
        for seed in range(2)
    ]
    for member, spec in zip(run_group(specs), specs, strict=True):
        _assert_member_is_solo(member, train.run(spec))


def test_members_may_differ_in_learning_rate_and_momentum() -> None:
    settings = [{"lr": 0.02, "momentum": 0.9}, {"lr": 0.1, "momentum": 0.0}, {"lr": 0.05, "momentum": 0.5}]
    specs = [make_spec("mnist1d_mlp", "sgd", 0, steps=200, eval_every=100, hparams=hp) for hp in settings]
    for member, spec in zip(run_group(specs), specs, strict=True):
        _assert_member_is_solo(member, train.run(spec))


def test_a_diverging_member_ends_alone_and_the_others_go_on() -> None:
    settings = [{"lr": 0.05, "momentum": 0.9}, {"lr": 1e10, "momentum": 0.9}, {"lr": 0.02, "momentum": 0.9}]
    specs = [make_spec("digits_mlp", "sgd", 1, steps=200, eval_every=50, hparams=hp) for hp in settings]
    ended: list[tuple[RunSpec, RunResult]] = []
    results = run_group(specs, on_end=lambda spec, result: ended.append((spec, result)))
    assert [r.status for r in results] == ["ok", "diverged", "ok"]
    assert ended[0][0] == specs[1], "the diverged member's result is handed over when it ends"
    assert [s.run_id for s, _ in ended[1:]] == [specs[0].run_id, specs[2].run_id]
    diverged = results[1]
    assert diverged.steps < 200
    assert diverged.curve[-1].step == diverged.steps
    assert diverged.steps == train.run(specs[1]).steps
    for member, spec in zip(results[::2], specs[::2], strict=True):
        _assert_member_is_solo(member, train.run(spec))
        assert math.isfinite(member.final["val/loss"])


def test_the_group_shares_its_time_among_its_members() -> None:
    specs = [make_spec("digits_mlp", "sgd", seed, steps=30, eval_every=10) for seed in range(4)]
    results = run_group(specs)
    assert len({r.train_time_s for r in results}) == 1
    assert all(r.wall_time_s >= r.train_time_s > 0 for r in results)


def test_the_group_reports_the_mean_once_per_evaluation() -> None:
    specs = [make_spec("digits_mlp", "adamw", seed, steps=30, eval_every=10) for seed in range(3)]
    reported: list[tuple[int, dict[str, float]]] = []
    results = run_group(specs, report=lambda step, metrics: reported.append((step, dict(metrics))))
    assert [step for step, _ in reported] == [0, 10, 20, 30]
    mean = sum(r.final["val/loss"] for r in results) / 3
    assert reported[-1][1]["val/loss"] == pytest.approx(mean)


@pytest.mark.parametrize(
    "task",
    [
        "sparse_signal",
        "pruning",
        "saxe_modes",
        "saxe_depth",
        "teacher_student",
        "digits_mlp",
        "stability_threshold",
        "grokking_modadd",
    ],
)
def test_every_task_that_batches_gives_its_solo_runs(task: str) -> None:
    specs = [make_spec(task, "sgd", seed, steps=20, eval_every=10, hparams={"lr": 0.01}) for seed in range(2)]
    for member, spec in zip(run_group(specs), specs, strict=True):
        solo = train.run(spec)
        assert member.curve[0].metrics == pytest.approx(solo.curve[0].metrics, rel=0, abs=0, nan_ok=True)
        for key, value in solo.curve[1].metrics.items():
            got = member.curve[1].metrics[key]
            assert got == pytest.approx(value, rel=1e-4, abs=1e-12, nan_ok=True), key
        assert member.final.keys() == solo.final.keys()


def test_members_warm_up_as_alone() -> None:
    def warmed(lr: float, seed: int) -> RunSpec:
        spec = make_spec(
            "digits_mlp", "sgd", seed, steps=20, eval_every=10, hparams={"lr": lr, "momentum": 0.9}
        )
        return spec.model_copy(update={"budget": spec.budget.model_copy(update={"warmup_steps": 8})})

    specs = [warmed(0.05, 0), warmed(0.05, 1), warmed(0.1, 0)]
    for member, spec in zip(run_group(specs), specs, strict=True):
        solo = train.run(spec)
        assert member.curve[0].metrics == solo.curve[0].metrics
        assert member.curve[1].metrics == pytest.approx(solo.curve[1].metrics, rel=1e-4)


def test_a_library_optimizer_steps_the_members_left_after_one_leaves_as_alone() -> None:
    # diffgrad's batched form is its library optimizer over the stack; when a member ends, the
    # others keep their own state (moments, previous gradient) and step as they would alone.
    rule = RULES.get("diffgrad")
    assert rule.batching is not None
    hp = rule.hparams(lr=0.01)
    draws = torch.Generator().manual_seed(0)
    start = torch.randn(3, 4, 5, generator=draws)
    grads = [torch.randn(3, 4, 5, generator=draws) for _ in range(4)]
    stacked = start.clone()
    update = rule.batching.build([stacked], [hp, hp, hp])
    alone = [torch.nn.Parameter(start[i].clone()) for i in range(3)]
    learners = [rule.build(torch.nn.ParameterList([p]), hp) for p in alone]
    for t, grad in enumerate(grads):
        if t == 2:  # member 1 ends: the stack keeps 0 and 2
            stacked = stacked.index_select(0, torch.tensor([0, 2]))
            update.keep(torch.tensor([0, 2]))
        live = [0, 1, 2] if t < 2 else [0, 2]
        update.step([stacked], [grad[live]])
        for i in live:
            alone[i].grad = grad[i].clone()
            learners[i].optimizer.step()  # type: ignore[attr-defined]
        torch.testing.assert_close(stacked, torch.stack([alone[i].detach() for i in live]))


def test_agd_members_take_their_own_step_sizes_as_alone() -> None:
    # AGD's η comes from each member's own gradient norms; the group reports it per member.
    specs = [
        make_spec("digits_mlp", "agd", seed, steps=200, eval_every=100, options={"bias": False})
        for seed in range(3)
    ]
    for member, spec in zip(run_group(specs), specs, strict=True):
        solo = train.run(spec)
        _assert_member_is_solo(member, solo)
        assert math.isfinite(member.curve[1].metrics["rule/step_size"])
