"""kfac: exact natural gradient on one linear layer ((1 − lr)^{2t}), the factors, training an MLP, refusal."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmark import train
from benchmark.rules.kfac import KFAC, KFAC_RULE, KFACRule
from benchmark.rules.natgrad import NatGradExact, ggn_factor
from benchmark.tasks import TASKS
from tests.helpers import make_spec

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def _half_mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 0.5 * (out - target).pow(2).mean()


def _regression(bias: bool) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The natgrad test's linear regression (badly scaled inputs), plus the least-squares floor."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=gen, dtype=F64) * torch.tensor([3.0, 1.0, 0.3, 2.0, 0.1, 1.0], dtype=F64)
    y = x @ torch.randn(6, 2, generator=gen, dtype=F64) + 0.1 * torch.randn(50, 2, generator=gen, dtype=F64)
    design = torch.cat([x, torch.ones(50, 1, dtype=F64)], dim=1) if bias else x
    if bias:
        y = y + torch.tensor([1.5, -0.7], dtype=F64)  # an intercept for the bias to learn
    best = torch.linalg.lstsq(design, y).solution
    return x, y, float(_half_mse(design @ best, y))


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("lr", [0.1, 0.5])
def test_excess_loss_falls_as_one_minus_lr_to_the_2t_on_linear_regression(lr: float, bias: bool) -> None:
    # One linear layer, ½·mean squared error, full batch: every sample has the same output factor,
    # so A ⊗ G is the Fisher itself, and the running averages of constant factors stay exact.
    x, y, floor = _regression(bias)
    model = nn.Linear(6, 2, bias=bias).to(F64)
    rule = KFACRule(KFAC(model, lr=lr, damping=0.0, beta=0.95))
    excess = [float(_half_mse(model(x).detach(), y)) - floor]
    for _ in range(8):
        rule.train_step(model, (x, y), _half_mse)
        excess.append(float(_half_mse(model(x).detach(), y)) - floor)
    for t, value in enumerate(excess):
        assert value == pytest.approx(excess[0] * (1 - lr) ** (2 * t), rel=1e-8)


def test_on_one_linear_layer_the_factors_are_the_gauss_newton_matrix_and_steps_match_natgrad_exact() -> None:
    x, y, _ = _regression(bias=False)
    models = [nn.Linear(6, 2, bias=False).to(F64) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    kfac = KFAC(models[0], lr=0.3, damping=0.0, beta=0.0)
    rule = KFACRule(kfac)
    _, _, rows, _ = ggn_factor(models[0], (x, y), _half_mse)
    rule.train_step(models[0], (x, y), _half_mse)
    state = kfac.state[models[0].weight]
    # vec of a row-major W: F = G ⊗ A.
    torch.testing.assert_close(torch.kron(state["factor_g"], state["factor_a"]), rows.T @ rows)
    exact = NatGradExact(models[1], lr=0.3, damping=0.0)
    exact.train_step(models[1], (x, y), _half_mse)
    for _ in range(3):
        rule.train_step(models[0], (x, y), _half_mse)
        exact.train_step(models[1], (x, y), _half_mse)
    torch.testing.assert_close(models[0].weight, models[1].weight, rtol=1e-10, atol=1e-12)


def test_one_backward_per_column_gives_the_factors_of_the_batched_backward() -> None:
    # The per-column loop is the fallback for models whose ops have no vmap batching rule.
    gen = torch.Generator().manual_seed(5)
    x, labels = torch.randn(12, 4, generator=gen, dtype=F64), torch.randint(0, 3, (12,), generator=gen)
    models = [nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(F64) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    optimizers = [KFAC(m, beta=0.0) for m in models]
    optimizers[1]._batched_backward = False
    for model, opt in zip(models, optimizers, strict=True):
        KFACRule(opt).train_step(model, (x, labels), nn.functional.cross_entropy)
    for layer0, layer1 in zip(optimizers[0].layers, optimizers[1].layers, strict=True):
        s0, s1 = optimizers[0].state[layer0.weight], optimizers[1].state[layer1.weight]
        side = layer0.in_features + 1  # the bias column
        assert s0["factor_a"].shape == (side, side)
        for key in ("factor_a", "factor_g"):
            torch.testing.assert_close(s0[key], s1[key], rtol=1e-12, atol=1e-14)


def test_trains_a_small_mlp() -> None:
    spec = make_spec(task="digits_mlp", rule="kfac", steps=100, eval_every=50, options={"width": 32})
    result = train.run(spec)
    assert result.status == "ok"
    first, last = result.curve[0].metrics["train/loss"], result.curve[-1].metrics["train/loss"]
    assert last < 0.3 * first, (first, last)
    assert result.final["test/accuracy"] > 0.85


def test_models_with_other_parameterized_layers_are_refused_naming_the_layer() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"1 \(LayerNorm\)"):
        KFAC(model)
    frozen = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    frozen[1].requires_grad_(False)  # a layer that does not train constrains nothing
    KFAC(frozen)
    task = TASKS.get("cifar10_conv_ff")
    reason = KFAC_RULE.unsupported(task, task.options.model_validate(task.test_options))
    assert reason is not None
    assert "encoder.0 (Conv2d)" in reason
    digits = TASKS.get("digits_mlp")
    assert KFAC_RULE.unsupported(digits, digits.options.model_validate(digits.test_options)) is None


def test_a_deep_run_that_blows_up_is_recorded_as_diverged_not_raised() -> None:
    # Depth 20 at lr 0.1: the factors' scales drift apart until one underflows; the run must end
    # as `diverged`, as any other divergence does, not stop the grid with an exception.
    spec = make_spec(
        task="saxe_depth", rule="kfac", steps=50, options={"depth": 20, "width": 32}, hparams={"lr": 0.1}
    )
    result = train.run(spec, device=torch.device("cpu"))
    assert result.status == "diverged"


def test_the_forward_pass_clock_counts_the_curvature_backward_passes() -> None:
    # A forward and a backward, plus one backward to the layer outputs per column of the output
    # Hessian's per-sample factor: 10 columns for softmax cross-entropy over 10 classes, every step.
    spec = make_spec(task="digits_mlp", rule="kfac", steps=4, eval_every=1, options={"width": 16})
    passes = [p.metrics["clock/forward_passes"] for p in train.run(spec).curve]
    assert passes == [0, 13, 26, 39, 52]
