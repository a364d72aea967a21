"""sparse_signal: the r-of-k teacher, its noise, the paper's init and a run at test size."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from benchmark import train
from benchmark.seeding import derive_seeds
from benchmark.tasks import TASKS
from benchmark.tasks.sparse_signal import (
    SparseSignalData,
    SparseSignalOptions,
    build_neuron,
    draw_examples,
    evaluation_sets,
)
from tests.helpers import make_spec

pytestmark = pytest.mark.usefixtures("one_thread")


def test_defaults_are_the_papers_middle_setting() -> None:
    o = SparseSignalOptions()
    assert (o.d, o.k, o.r, o.noise, o.num_train, o.num_val, o.num_test, o.batch_size) == (
        2000, 100, 50, 0.1, 10_000, 1000, 1000, 500
    )  # fmt: skip


def test_sweep_points_are_chosen_by_the_lowest_validation_loss_as_in_the_paper() -> None:
    for name in ("sparse_signal", "sparse_signal_d200", "sparse_signal_d20000"):
        chooser = TASKS.get(name).selected_by
        assert (chooser.metric, chooser.mode) == ("val/loss", "min")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"d": 10, "k": 20}, "k <= d"),
        ({"k": 10, "threshold": 11}, "threshold <= k"),
        ({"batch_size": 20_000}, "batch_size <= num_train"),
        ({"noise": 1.5}, "less than or equal to 1"),
        ({"d": 0}, "greater than or equal to 1"),
    ],
)
def test_inconsistent_options_are_refused(options: dict[str, int], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SparseSignalOptions.model_validate(options)


def test_clean_labels_follow_the_teacher_and_ignore_the_other_inputs() -> None:
    x, y = draw_examples(4000, 103, 10, 5, 0.0, torch.Generator().manual_seed(0))
    assert x.dtype == torch.uint8
    assert x.shape == (4000, 103)
    assert set(x.unique().tolist()) == {0, 1}
    assert float(x.double().mean()) == pytest.approx(0.5, abs=0.01)
    assert torch.equal(y, (x[:, :10].sum(1) >= 5).float())
    irrelevant = x[:, 10:].sum(1).double()
    assert abs(float(torch.corrcoef(torch.stack([irrelevant, y.double()]))[0, 1])) < 0.05


def test_training_noise_shifts_the_count_by_one_with_the_given_rate() -> None:
    gen_clean, gen_noisy = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    x, clean = draw_examples(20_000, 20, 20, 10, 0.0, gen_clean)
    x2, noisy = draw_examples(20_000, 20, 20, 10, 0.3, gen_noisy)
    assert torch.equal(x, x2)
    count = x[:, :20].sum(1)
    changed = clean != noisy
    # Only examples at the boundary (count r or r−1) can change, and about noise/2 of them do.
    assert torch.all((count[changed] == 10) | (count[changed] == 9))
    at_boundary = (count == 10) | (count == 9)
    assert float(changed[at_boundary].double().mean()) == pytest.approx(0.15, abs=0.02)


def test_the_paper_init_gives_a_zero_mean_logit() -> None:
    o = SparseSignalOptions(d=500, k=40)
    model = build_neuron(o, torch.Generator())
    w = model.synapses.weight
    assert torch.all(w == o.r / (0.5 * o.d))
    x, _ = evaluation_sets(SparseSignalOptions(d=500, k=40, num_val=2000))[:2]
    assert float(model(x.float()).detach().mean()) == pytest.approx(0.0, abs=0.2)
    jittered_options = SparseSignalOptions(d=500, k=40, init_jitter=0.1)
    jittered = build_neuron(jittered_options, torch.Generator().manual_seed(0))
    assert torch.all((jittered.synapses.weight / w - 1).abs() <= 0.1)
    assert torch.all(jittered.synapses.weight > 0)


def test_the_training_set_comes_from_the_data_stream_and_evaluation_sets_are_fixed() -> None:
    o = SparseSignalOptions.model_validate(TASKS.get("sparse_signal").test_options)
    data = SparseSignalData(o, torch.device("cpu"))

    def first_inputs(seed: int) -> list[torch.Tensor]:
        stream = data.train_batches(torch.Generator().manual_seed(seed))
        return [next(stream)[0].clone() for _ in range(12)]  # the stream reuses its input tensor

    a, b = first_inputs(0), first_inputs(0)
    c = next(data.train_batches(torch.Generator().manual_seed(1)))[0]
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert not torch.equal(a[0], c)
    assert a[0].shape == (o.batch_size, o.d)
    # An epoch visits every example once: 10 batches of 100 cover the 1,000 training examples.
    epoch = torch.cat(a[:10])
    assert len(torch.unique(epoch, dim=0)) == o.num_train
    again = SparseSignalData(o, torch.device("cpu"))
    assert torch.equal(again.splits["test"][0], data.splits["test"][0])


def _rows(x: torch.Tensor) -> set[bytes]:
    return {bytes(row) for row in x.to(torch.uint8).numpy()}


def test_validation_set_is_fixed_of_its_size_and_apart_from_training_and_test() -> None:
    o = SparseSignalOptions.model_validate(TASKS.get("sparse_signal").test_options)
    data = SparseSignalData(o, torch.device("cpu"))
    val = _rows(data.splits["val"][0])
    assert len(data.splits["val"][0]) == o.num_val
    assert len(val) == o.num_val  # distinct examples
    assert not val & _rows(data.splits["test"][0])
    for seed in (0, 1):  # every run's training set: other seeds draw other examples
        stream = data.train_batches(derive_seeds(seed).generator("data"))
        seen = set().union(*(_rows(next(stream)[0]) for _ in range(o.num_train // o.batch_size)))
        assert len(seen) == o.num_train
        assert not val & seen
    other_runs = SparseSignalData(o, torch.device("cpu"))
    assert torch.equal(other_runs.splits["val"][0], data.splits["val"][0])


def test_evaluation_reports_the_declared_metrics() -> None:
    info = TASKS.get("sparse_signal")
    o = SparseSignalOptions.model_validate(info.test_options)
    metrics = SparseSignalData(o, torch.device("cpu")).evaluate(build_neuron(o, torch.Generator()), 0)
    assert set(info.metrics) == set(metrics)
    assert 0.3 < metrics["test/accuracy"] < 0.7  # the initial neuron guesses


@pytest.mark.parametrize(("rule", "lr"), [("sgd", 0.05), ("eg_sgd", 1.0)])
def test_one_run_at_test_options_learns(rule: str, lr: float) -> None:
    hparams = {"lr": lr, "momentum": 0.0}
    spec = make_spec(task="sparse_signal", rule=rule, hparams=hparams, steps=100, eval_every=50)
    result = train.run(spec, device=torch.device("cpu"))
    assert result.status == "ok"
    assert all({"val/loss", "val/accuracy"} <= set(p.metrics) for p in result.curve)
    assert result.final["test/accuracy"] > 0.75
    assert result.final["test/accuracy"] > result.curve[0].metrics["test/accuracy"]
    assert result.final["val/accuracy"] > 0.75
