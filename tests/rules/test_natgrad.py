"""natgrad_exact: the (1 − lr)^{2t} law on linear regression, exponential mode learning, solvers, refusal."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmark import train
from benchmark.rules.natgrad import MAX_PARAMS, NATGRAD_EXACT, NatGradExact, solve_damped
from benchmark.tasks import TASKS
from tests.helpers import make_spec

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def _half_mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 0.5 * (out - target).pow(2).mean()


@pytest.mark.parametrize("lr", [0.1, 0.5])
def test_excess_loss_falls_as_one_minus_lr_to_the_2t_on_linear_regression(lr: float) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=gen, dtype=F64) * torch.tensor([3.0, 1.0, 0.3, 2.0, 0.1, 1.0], dtype=F64)
    y = x @ torch.randn(6, 2, generator=gen, dtype=F64) + 0.1 * torch.randn(50, 2, generator=gen, dtype=F64)
    model = nn.Linear(6, 2, bias=False).to(F64)
    best = torch.linalg.lstsq(x, y).solution
    floor = float(_half_mse(x @ best, y))
    rule = NatGradExact(model, lr=lr, damping=0.0)  # F = XᵀX/N ⊗ I, solved exactly
    excess = [float(_half_mse(model(x).detach(), y)) - floor]
    for _ in range(8):
        rule.train_step(model, (x, y), _half_mse)
        excess.append(float(_half_mse(model(x).detach(), y)) - floor)
    for t, value in enumerate(excess):
        assert value == pytest.approx(excess[0] * (1 - lr) ** (2 * t), rel=1e-8)


def test_woodbury_and_cholesky_agree() -> None:
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(10, 40, generator=gen, dtype=F64)  # fewer rows than parameters: sample space
    g = torch.randn(40, generator=gen, dtype=F64)
    dense = torch.linalg.solve(a.T @ a + 0.01 * torch.eye(40, dtype=F64), g)
    torch.testing.assert_close(solve_damped(a, g, 0.01), dense, rtol=1e-9, atol=1e-9)
    tall = torch.randn(60, 40, generator=gen, dtype=F64)  # more rows: parameter space (Cholesky)
    dense = torch.linalg.solve(tall.T @ tall + 0.01 * torch.eye(40, dtype=F64), g)
    torch.testing.assert_close(solve_damped(tall, g, 0.01), dense, rtol=1e-9, atol=1e-9)


def test_saxe_modes_are_learned_exponentially_not_sigmoidally() -> None:
    # GD learns mode k in time ∝ 1/s_k (half-times 34, 74, 110 steps here); the natural gradient learns
    # every mode at the same exponential rate, half-way at about ln 2 / lr ≈ 35 steps.
    options = {"strengths": [3.0, 1.0, 0.5], "n": 4, "hidden": 4, "reference_lr": 0.02, "u0": 0.05}
    spec = make_spec(
        task="saxe_modes",
        rule="natgrad_exact",
        steps=120,
        eval_every=2,
        hparams={"lr": 0.02, "damping": 1e-6},
        options=options,
    )
    result = train.run(spec)
    halves = [result.final[f"modes/t_half_{k}"] for k in range(3)]
    assert max(halves) / min(halves) < 1.3, halves
    for half in halves:
        assert half == pytest.approx(0.693 / 0.02, rel=0.2)


def test_a_model_too_big_is_refused_with_its_parameter_count_and_the_limit() -> None:
    task = TASKS.get("digits_mlp")
    big = task.options.model_validate({"width": 1000})
    reason = NATGRAD_EXACT.unsupported(task, big)
    assert reason is not None
    assert str(MAX_PARAMS) in reason
    assert "75010" in reason
    assert NATGRAD_EXACT.unsupported(task, task.options.model_validate({"width": 32})) is None


def test_natgrad_diag_with_the_ggn_matches_natgrad_exact_when_the_input_covariance_is_diagonal() -> None:
    from benchmark.rules.natgrad import NatGradDiag

    gen = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(40, 5, generator=gen, dtype=F64))
    x = q * torch.tensor([4.0, 2.0, 1.0, 0.5, 0.2], dtype=F64) * 40**0.5  # XᵀX/N diagonal
    y = torch.randn(40, 2, generator=gen, dtype=F64)
    models = [nn.Linear(5, 2, bias=False).to(F64) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    exact = NatGradExact(models[0], lr=0.3, damping=1e-3)
    diag = NatGradDiag(models[1], lr=0.3, damping=1e-3, beta=0.0, fisher="ggn")
    for _ in range(4):
        exact.train_step(models[0], (x, y), _half_mse)
        diag.train_step(models[1], (x, y), _half_mse)
    torch.testing.assert_close(models[1].weight, models[0].weight, rtol=1e-10, atol=1e-12)


def test_natgrad_diag_empirical_fisher_is_the_mean_of_squared_per_sample_gradients() -> None:
    from benchmark.rules.natgrad import empirical_fisher_diagonal

    gen = torch.Generator().manual_seed(4)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(F64)
    x, y = torch.randn(6, 3, generator=gen, dtype=F64), torch.randn(6, 2, generator=gen, dtype=F64)
    _, g, fisher = empirical_fisher_diagonal(model, (x, y), _half_mse)
    rows = []
    for n in range(6):
        grads = torch.autograd.grad(_half_mse(model(x[n : n + 1]), y[n : n + 1]), list(model.parameters()))
        rows.append(torch.cat([gr.reshape(-1) for gr in grads]))
    per_sample = torch.stack(rows)
    torch.testing.assert_close(fisher, per_sample.pow(2).mean(0))
    torch.testing.assert_close(g, per_sample.mean(0))  # a mean loss: the batch gradient is their mean


@pytest.mark.parametrize(
    ("rule", "hparams", "per_step"),
    [
        ("natgrad_exact", {}, 1 + 2 * 10),  # a forward, and a backward per output of a sample (10 classes)
        ("natgrad_diag", {"fisher": "ggn"}, 1 + 2 * 10),
        ("natgrad_diag", {}, 6),  # per-sample gradients, then the batch's gradient
    ],
)
def test_the_forward_pass_clock_counts_the_curvature_passes(
    rule: str, hparams: dict[str, str], per_step: int
) -> None:
    spec = make_spec(
        task="digits_mlp", rule=rule, steps=4, eval_every=2, hparams=hparams, options={"width": 16}
    )
    assert [p.metrics["clock/forward_passes"] for p in train.run(spec).curve] == [
        0,
        2 * per_step,
        4 * per_step,
    ]
