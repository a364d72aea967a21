"""Dynamics tasks against their closed forms: Saxe's eq. 12, teacher-student curves, the 2/λ_max threshold."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from benchmark import train
from benchmark.errors import SpecError
from benchmark.plan import expand
from benchmark.spec import Suite
from benchmark.tasks.saxe import SaxeModesOptions, half_time, mode_strength
from benchmark.tasks.teacher_student import (
    TeacherStudentData,
    TeacherStudentOptions,
    mp_limit,
    mp_test_error,
)
from tests.helpers import make_spec

GD = {"momentum": 0.0}
EIGHT_MODES = {"strengths": [3.0, 2.0, 1.5, 1.0, 0.7, 0.5, 0.3, 0.2], "n": 8, "hidden": 8}


pytestmark = pytest.mark.usefixtures("one_thread")


# --- saxe_modes -------------------------------------------------------------------------------


def test_eq12_closed_form_solves_the_mode_ode() -> None:
    s, u0, tau = 2.0, 1e-3, 50.0
    t = np.linspace(0, 300, 3001)
    u = np.array([mode_strength(s, u0, x, tau) for x in t])
    du = np.gradient(u, t)
    np.testing.assert_allclose(tau * du[5:-5], (2 * u * (s - u))[5:-5], rtol=1e-3, atol=1e-6)
    assert mode_strength(s, u0, half_time(s, u0, tau), tau) == pytest.approx(s / 2)


def test_decoupled_gd_follows_eq12_within_lr_times_s_max() -> None:
    lr = 0.05
    spec = make_spec(
        task="saxe_modes",
        rule="sgd",
        steps=300,
        eval_every=2,
        hparams={"lr": lr, **GD},
        options={"strengths": [3.0, 1.0, 0.5], "n": 4, "hidden": 4, "reference_lr": lr},
    )
    result = train.run(spec)
    assert result.status == "ok"
    assert result.final["theory/max_rel_error"] <= lr * 3.0
    assert result.final["theory/t_half_rel_error"] < lr * 3.0
    assert result.final["train/relative_loss"] < 1e-3


@pytest.mark.slow
def test_decoupled_gd_eight_modes_stays_within_the_measured_gap() -> None:
    # Measured when the task was written: max_t |u − u_th|/s = 0.022 at λ = 0.01 (≈ 0.75·λ·s_max).
    spec = make_spec(
        task="saxe_modes",
        rule="sgd",
        steps=2500,
        eval_every=5,
        hparams={"lr": 0.01, **GD},
        options={**EIGHT_MODES, "reference_lr": 0.01},
    )
    result = train.run(spec)
    assert result.final["theory/max_rel_error"] <= 0.01 * 3.0
    assert result.final["theory/max_rel_error"] == pytest.approx(0.022, abs=0.003)


@pytest.mark.slow
def test_random_init_half_times_of_the_top_modes_within_15_percent() -> None:
    measured = []
    for seed in range(5):
        spec = make_spec(
            task="saxe_modes",
            rule="sgd",
            seed=seed,
            steps=2500,
            eval_every=5,
            hparams={"lr": 0.01, **GD},
            options={**EIGHT_MODES, "reference_lr": 0.01, "init": "random", "init_std": 1e-2},
        )
        result = train.run(spec)
        assert result.final["theory/t_half_rel_error"] < 0.15  # per run: the top 3 modes
        measured.append([result.final[f"modes/t_half_{k}"] for k in range(5)])
    theory = [result.final[f"theory/t_half_{k}"] for k in range(5)]
    mean = np.mean(measured, axis=0)
    assert np.all(np.abs(mean - theory) / theory < 0.15), (mean, theory)


def test_impossible_saxe_options_are_bad_input_with_file_and_field() -> None:
    with pytest.raises(ValidationError, match="3 modes need n >= 3"):
        SaxeModesOptions(strengths=[3.0, 2.0, 1.0], n=2)
    suite = Suite.model_validate(
        {
            "name": "bad",
            "tasks": [{"name": "saxe_modes", "options": {"strengths": [1.0, -2.0]}}],
            "rules": [{"name": "sgd"}],
            "seeds": [0],
            "budget": {"steps": 1},
        }
    )
    with pytest.raises(SpecError, match=r"suite.yaml: tasks\[0\].options.strengths\[1\]"):
        expand(suite, Path("suite.yaml"))


# --- teacher_student ------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_gd_matches_the_exact_per_run_curve(alpha: float) -> None:
    spec = make_spec(
        task="teacher_student",
        rule="sgd",
        steps=300,
        eval_every=10,
        hparams={"lr": 0.1, **GD},
        options={"n": 40, "alpha": alpha, "init_std": 0.3, "reference_lr": 0.1},
    )
    result = train.run(spec)
    assert result.status == "ok"
    assert result.final["theory/max_rel_error"] <= 1e-6


def _seed_mean(alpha: float, steps: np.ndarray, n: int = 400, seeds: int = 10) -> tuple[np.ndarray, float]:
    """The mean over seeds of the exact per-run GD curve (equal to GD to 1e-15, tested above), η = 0.5/λ₊."""
    lr = 0.5 / (1 + math.sqrt(alpha)) ** 2
    options = TeacherStudentOptions(n=n, alpha=alpha, snr=5.0, init_std=0.0, reference_lr=lr)
    curves = []
    for seed in range(seeds):
        data = TeacherStudentData(options, torch.device("cpu"))
        data.train_batches(torch.Generator().manual_seed(1000 + seed))
        data.z0 = data.q.T @ -data.teacher  # w₀ = 0
        curves.append([data.per_run_theory(int(t)) for t in steps])
    return np.mean(curves, axis=0), lr


def test_seed_mean_within_5_percent_of_the_marchenko_pastur_integral() -> None:
    steps = np.array([0, 10, 30, 100, 300, 1000, 2000, 3000])
    curves = {}
    for alpha in (0.5, 1.0, 2.0):
        mean, lr = _seed_mean(alpha, steps)
        theory = mp_test_error(steps, alpha, lr, 1.0, 0.2)
        assert np.max(np.abs(mean - theory) / theory) < 0.05, (alpha, mean, theory)
        curves[alpha] = theory
    # The overtraining peak: at α = 1 the curve dips, then rises above both neighbours.
    at_one = curves[1.0]
    assert at_one.min() < at_one[-1]
    assert at_one[-1] > curves[0.5][-1]
    assert at_one[-1] > curves[2.0][-1]


def test_marchenko_pastur_limits_and_the_frozen_offset() -> None:
    late = np.array([200_000])
    for alpha in (0.5, 2.0):
        for init_std in (0.0, 1.0):
            weight_var = 1.0 + init_std**2
            value = mp_test_error(late, alpha, 0.05, weight_var, 0.2)[0]
            assert value == pytest.approx(mp_limit(alpha, weight_var, 0.2), rel=1e-6)
    # Below α = 1 the frozen subspace keeps (1 − α)σ_w0² of the initial weights forever.
    assert mp_limit(0.5, 2.0, 0.2) - mp_limit(0.5, 1.0, 0.2) == pytest.approx(0.5)
    assert math.isinf(mp_limit(1.0, 1.0, 0.2))


# --- stability_threshold ------------------------------------------------------------------------


@pytest.mark.parametrize(("lr", "diverges"), [(0.19, False), (0.21, True)])
def test_gd_on_the_quadratic_diverges_exactly_above_two_over_lambda_max(lr: float, diverges: bool) -> None:
    spec = make_spec(
        task="stability_threshold",
        rule="sgd",
        steps=800,
        eval_every=20,
        hparams={"lr": lr, **GD},
        options={"dim": 20, "lambda_max": 10.0, "reference_lr": lr},
    )
    result = train.run(spec)
    assert result.curve[0].metrics["theory/diverges"] == float(diverges)
    assert result.status == ("diverged" if diverges else "ok")
    if not diverges:
        assert result.final["theory/max_rel_error"] < 1e-3


def test_trained_net_sharpness_stays_at_most_2_1_over_lr() -> None:
    # At lr = 1 the initial sharpness is above 2/lr (ratio 1.4); GD settles at the edge of stability.
    spec = make_spec(
        task="stability_threshold",
        rule="sgd",
        steps=1000,
        eval_every=500,
        hparams={"lr": 1.0, **GD},
        options={"model": "mlp", "reference_lr": 1.0},
    )
    result = train.run(spec)
    assert result.status == "ok"
    assert result.curve[0].metrics["theory/sharpness_ratio"] > 1.05
    assert result.final["theory/sharpness_ratio"] <= 1.05
