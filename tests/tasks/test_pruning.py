"""pruning: global magnitude masks, the accuracy-vs-fraction curve and its AUC, pruning during learning."""

from __future__ import annotations

import re

import pytest
import torch
from pydantic import ValidationError

from benchmark import train
from benchmark.tasks import TASKS
from benchmark.tasks.pruning import (
    PruningData,
    PruningOptions,
    accuracy_key,
    area_under_curve,
    build_mlp,
    magnitude_masks,
    synapses,
)
from tests.helpers import make_spec

pytestmark = pytest.mark.usefixtures("one_thread")


def test_masks_remove_the_smallest_magnitudes_over_all_layers_at_once() -> None:
    a = torch.tensor([[0.1, -5.0], [0.3, 2.0]])
    b = torch.tensor([[-0.2, 4.0, 0.05]])
    keep_a, keep_b = magnitude_masks([a, b], 0.6)  # 0.6 · 7 entries: the 4 smallest go
    removed = (~keep_a).sum() + (~keep_b).sum()
    assert int(removed) == round(0.6 * 7)
    kept = torch.cat([a[keep_a], b[keep_b]]).abs().sort().values
    assert kept.tolist() == [2.0, 4.0, 5.0]
    all_keep = magnitude_masks([a, b], 0.0)
    assert all(bool(k.all()) for k in all_keep)


def test_masks_break_ties_deterministically() -> None:
    w = torch.ones(10)
    first, second = magnitude_masks([w], 0.5)[0], magnitude_masks([w], 0.5)[0]
    assert torch.equal(first, second)
    assert int((~first).sum()) == 5


def test_area_under_curve_is_the_mean_accuracy_over_the_range() -> None:
    assert area_under_curve((0.5, 0.9), [0.8, 0.8]) == pytest.approx(0.8)
    assert area_under_curve((0.0, 0.5, 1.0 - 1e-9), [1.0, 0.5, 0.0]) == pytest.approx(0.5)
    assert area_under_curve((0.5, 0.6, 0.9), [0.9, 0.3, 0.3]) == pytest.approx((0.06 + 0.09) / 0.4)


def test_fractions_must_increase_and_stay_below_one() -> None:
    with pytest.raises(ValidationError, match="increasing order"):
        PruningOptions(fractions=(0.9, 0.5))
    with pytest.raises(ValidationError, match="less than 1"):
        PruningOptions(fractions=(0.5, 1.0))


def _setup() -> tuple[PruningOptions, PruningData, torch.nn.Module]:
    o = PruningOptions.model_validate(TASKS.get("pruning").test_options)
    return o, PruningData(o, torch.device("cpu")), build_mlp(o, torch.Generator().manual_seed(0))


def test_pruning_curve_is_sane_and_leaves_the_model_intact() -> None:
    o, data, model = _setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    curve = data.pruning_curve(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    for split in ("val", "test"):
        accs = [curve[accuracy_key(split, f)] for f in o.fractions]
        assert all(0.0 <= a <= 1.0 for a in accs)
        assert min(accs) <= curve[f"{split}/prune_auc"] <= max(accs)
        assert curve[f"{split}/prune_auc"] == pytest.approx(area_under_curve(o.fractions, accs))
    # Pruning nothing is the plain accuracy of each split.
    whole = PruningData(PruningOptions(num_samples=600, width=32, fractions=(0.0, 0.5)), torch.device("cpu"))
    metrics = data.evaluate(model, step=0)
    for split in ("val", "test"):
        assert whole.pruning_curve(model)[f"{split}/prune_acc_0"] == pytest.approx(
            metrics[f"{split}/accuracy"]
        )


def test_prunes_only_weight_matrices() -> None:
    _, _, model = _setup()
    assert [p.dim() for p in synapses(model)] == [2, 2, 2]


def test_metric_names_are_ones_mlflow_accepts() -> None:
    assert re.fullmatch(r"[\w\-. :/]+", accuracy_key("val", 0.975))


def test_a_run_reports_the_curve_and_auc_at_the_end() -> None:
    info = TASKS.get("pruning")
    result = train.run(
        make_spec(task="pruning", rule="sgd", hparams={"lr": 0.1}, steps=60, eval_every=30),
        device=torch.device("cpu"),
    )
    assert result.status == "ok"
    assert all({"val/prune_auc", "test/prune_auc"} <= set(p.metrics) for p in result.curve)
    for split in ("val", "test"):
        for f in PruningOptions.model_validate(info.test_options).fractions:
            assert 0.0 <= result.final[accuracy_key(split, f)] <= 1.0
        assert result.final[f"{split}/prune_auc"] <= result.final[f"{split}/accuracy"] + 0.05


def test_pruning_during_learning_holds_the_mask() -> None:
    options = {"prune_at": 20, "prune_fraction": 0.8}
    spec = make_spec(
        task="pruning",
        rule="sgd",
        hparams={"lr": 0.1, "momentum": 0.9},
        options=options,
        steps=60,
        eval_every=20,
    )
    task = TASKS.get("pruning")
    o = task.options.model_validate(spec.task_options)
    data = task.load_data(o, torch.device("cpu"))
    model = task.build_model(o, torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    batches = data.train_batches(torch.Generator().manual_seed(0))
    for step in range(60):
        if step % 20 == 0:
            data.evaluate(model, step)
        x, y = next(batches)
        opt.zero_grad()
        task.loss(model(x), y).backward()
        opt.step()
    data.evaluate(model, 60)  # the forward pass zeroes what the last step moved
    weights = synapses(model)
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros == round(0.8 * sum(w.numel() for w in weights))
    assert data.masks is not None
    assert all(torch.all(w[~m] == 0) for w, m in zip(weights, data.masks, strict=True))
