"""Brain-likeness metrics: sign flips since init, log-normal and normal KS fits, the histogram PNG."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from benchmark import train
from benchmark.metrics import (
    Clock,
    brain_metrics,
    parameter_snapshot,
    save_weight_histogram,
    sign_flip_fraction,
    weight_distribution_ks,
)
from tests.helpers import make_spec


def _linear(weight: torch.Tensor) -> nn.Module:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(weight)
    return layer


def test_sign_flips_count_opposite_signs_only() -> None:
    model = _linear(torch.tensor([[1.0, -2.0, 3.0, 0.0]]))
    start = parameter_snapshot(model)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[-1.0, -2.0, 0.0, 5.0]]))
    # 1 → −1 flips; 3 → 0 (pruned) and 0 → 5 (no sign at init) do not.
    assert sign_flip_fraction(start, model) == 0.25
    assert start["weight"][0, 0] == 1.0  # the snapshot is a copy


def test_sign_flips_skip_parameters_unknown_to_the_snapshot() -> None:
    model = _linear(torch.ones(2, 2))
    assert math.isnan(sign_flip_fraction({}, model))


def test_ks_prefers_the_right_family() -> None:
    gen = torch.Generator().manual_seed(0)
    signs = torch.sign(torch.randn(200, 200, generator=gen))
    lognormal = torch.randn(200, 200, generator=gen).mul_(0.6).exp_() * signs
    normal = torch.randn(200, 200, generator=gen)
    from_lognormal = weight_distribution_ks(_linear(lognormal))
    from_normal = weight_distribution_ks(_linear(normal))
    assert from_lognormal["weights/lognormal_ks"] < 0.01 < from_lognormal["weights/normal_ks"]
    assert from_normal["weights/normal_ks"] < 0.01 < from_normal["weights/lognormal_ks"]


def test_ks_statistics_are_scipys() -> None:
    # Our KS distance is written out for speed; it must be the statistic scipy's kstest reports
    # against the normal fitted to each layer (log|w| for the log-normal fit).
    from scipy import stats

    gen = torch.Generator().manual_seed(1)
    for shape in [(40, 100), (100, 100), (10, 2000)]:
        weight = torch.randn(*shape, generator=gen).pow(3)  # neither family: both distances large
        got = weight_distribution_ks(_linear(weight))
        values = weight.double().flatten().numpy()
        logs = np.log(np.abs(values))
        for key, sample in (("weights/normal_ks", values), ("weights/lognormal_ks", logs)):
            expected = stats.kstest((sample - sample.mean()) / sample.std(), "norm").statistic
            assert got[key] == pytest.approx(expected, rel=1e-12), (shape, key)


def test_ks_averages_layers_and_ignores_biases_zeros_and_tiny_layers() -> None:
    gen = torch.Generator().manual_seed(1)
    model = nn.Sequential(nn.Linear(100, 100), nn.Linear(100, 3), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(100, 100, generator=gen).exp())
        model[0].weight[:50] = 0.0  # pruned synapses: left out of the log-normal fit
        model[1].weight.copy_(torch.randn(3, 100, generator=gen).exp())
    both = weight_distribution_ks(model)["weights/lognormal_ks"]
    assert both < 0.05
    solo = weight_distribution_ks(model[1])["weights/lognormal_ks"]
    assert both == pytest.approx((weight_distribution_ks(model[0])["weights/lognormal_ks"] + solo) / 2)
    assert math.isnan(weight_distribution_ks(nn.Linear(2, 2))["weights/lognormal_ks"])  # 4 weights: too few


def test_brain_metrics_keys() -> None:
    model = nn.Sequential(nn.Linear(20, 20), nn.ReLU(), nn.Linear(20, 3))
    metrics = brain_metrics(parameter_snapshot(model), model)
    assert set(metrics) == {"weights/sign_flips", "weights/lognormal_ks", "weights/normal_ks"}
    assert metrics["weights/sign_flips"] == 0.0


def test_histogram_is_a_png(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 3))
    start = parameter_snapshot(model)
    with torch.no_grad():
        model[0].weight.mul_(torch.rand(20, 30) * 3)
    path = save_weight_histogram(model, tmp_path / "plots" / "w.png", initial=start, title="sgd[lr=0.1]")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 5_000


def test_every_run_ends_with_the_brain_metrics() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        spec = make_spec(task="digits_mlp", rule="sgd", steps=20, eval_every=10)
        result = train.run(spec, device=torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    assert {"weights/sign_flips", "weights/lognormal_ks", "weights/normal_ks"} <= set(result.final)
    assert 0.0 <= result.final["weights/sign_flips"] < 0.5


def test_clock_counts_running_time_and_leaves_paused_time_out() -> None:
    clock = Clock()
    assert clock.seconds == 0.0

    before = time.perf_counter()
    clock.start()
    time.sleep(0.02)
    clock.pause()
    first = clock.seconds
    assert 0.02 <= first <= time.perf_counter() - before

    time.sleep(0.02)  # an evaluation: paused time stays out
    assert clock.seconds == first

    before = time.perf_counter()
    clock.start()
    time.sleep(0.01)
    clock.start()  # already running: does not restart the interval
    time.sleep(0.01)
    assert first + 0.02 <= clock.seconds <= first + time.perf_counter() - before
