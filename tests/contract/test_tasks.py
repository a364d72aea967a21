"""Every registered task, checked the same way at its tiny test options."""

from __future__ import annotations

import pytest
import torch

from benchmark import train
from benchmark.tasks import TASKS
from tests.helpers import make_spec

TASK_NAMES = TASKS.names()


def _options(name: str):  # type: ignore[no-untyped-def]
    info = TASKS.get(name)
    return info, info.options.model_validate(dict(info.test_options))


@pytest.mark.parametrize("name", TASK_NAMES, ids=TASK_NAMES)
def test_runs_offline_on_the_cpu_and_reports_its_metrics(name: str) -> None:
    info, _ = _options(name)
    result = train.run(make_spec(task=name, rule="sgd", steps=2, eval_every=1), device=torch.device("cpu"))
    assert result.status == "ok"
    assert [p.step for p in result.curve] == [0, 1, 2]
    for point in result.curve:
        assert set(info.metrics) <= set(point.metrics), f"{name} misses declared metrics"
    assert info.target.metric in info.metrics


@pytest.mark.parametrize("name", TASK_NAMES, ids=TASK_NAMES)
def test_same_seed_same_initialisation_and_first_batch(name: str) -> None:
    info, options = _options(name)

    def init(seed: int) -> dict[str, torch.Tensor]:
        return info.build_model(options, torch.Generator().manual_seed(seed)).state_dict()

    a, b, c = init(0), init(0), init(1)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())

    data = info.load_data(options, torch.device("cpu"))
    first = [next(data.train_batches(torch.Generator().manual_seed(5))) for _ in range(2)]
    assert torch.equal(first[0][0], first[1][0])
    assert torch.equal(first[0][1], first[1][1])


@pytest.mark.parametrize("name", TASK_NAMES, ids=TASK_NAMES)
def test_declares_what_the_planner_and_leaderboard_need(name: str) -> None:
    info, _ = _options(name)
    assert info.description
    assert info.reference
    assert info.eval_every > 0
    assert info.target.mode in ("max", "min")
    assert info.resources_for(info.test_options).cpus > 0
    assert info.selected_by.metric in info.metrics
    assert not info.target.reached(info.chance), f"{name}: a model at chance would count as solved"


HELD_OUT = [name for name in TASK_NAMES if not TASKS.get(name).theory]


@pytest.mark.parametrize("name", HELD_OUT, ids=HELD_OUT)
def test_held_out_tasks_choose_on_validation_and_report_test_beside_it(name: str) -> None:
    info = TASKS.get(name)
    assert info.target.metric.startswith("val/")
    assert info.selected_by.metric.startswith("val/"), "nothing chooses by a test metric"
    assert info.validation, "synapsebench list shows the validation split"
    for metric in info.metrics:
        if metric.startswith("test/"):
            assert "val/" + metric.removeprefix("test/") in info.metrics, f"{metric} has no val/ twin"


@pytest.mark.parametrize("name", HELD_OUT, ids=HELD_OUT)
def test_an_untrained_model_scores_about_chance(name: str) -> None:
    """``chance`` is what a model that learned nothing scores (the cross-task score's zero)."""
    info, options = _options(name)
    model = info.build_model(options, torch.Generator().manual_seed(0))
    scored = info.load_data(options, torch.device("cpu")).evaluate(model, step=0)[info.target.metric]
    assert scored == pytest.approx(info.chance, abs=0.2)
