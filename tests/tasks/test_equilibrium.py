"""Equilibrium models and tasks (benchmark.fixpoint, benchmark.tasks.equilibrium[_vision])."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from benchmark.fixpoint import EquilibriumModel, LayeredEquilibriumModel, activate_prime
from benchmark.rules import RULES
from benchmark.tasks.base import TaskInfo
from benchmark.tasks.equilibrium import MNIST1D_FF, MNIST1D_RNN, ff_model, rnn_model
from benchmark.tasks.equilibrium_vision import (
    CIFAR10_CONV_FF,
    CIFAR10_CONV_RNN,
    MNIST_FF,
    MNIST_RNN,
    conv_ff_model,
    conv_rnn_model,
)
from tests.tasks.vision_fixtures import write_cifar10, write_mnist

LOOSE = {"threshold": 1e-4, "max_iter": 60}


pytestmark = pytest.mark.usefixtures("one_thread")


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_mnist_models_have_the_reference_sizes() -> None:
    # 784·256 + 256 + 256·256 + 256 + 256·10 + 10, the same for both (the authors' implicit_model.py).
    assert _count(ff_model(784, 256, 10)) == 269_322
    assert _count(rnn_model(784, 256, 10)) == 269_322
    assert ff_model(784, 256, 10).state_size == 512


def test_conv_ff_has_the_reference_state_and_size() -> None:
    model = conv_ff_model()
    assert model.state_size == 34_272
    assert 10.0e6 < _count(model) < 10.1e6


def test_feedforward_model_reaches_its_fixed_point_in_depth_iterations() -> None:
    torch.manual_seed(0)
    model = ff_model(7, 16, 3).double()
    x_enc = model.encode(torch.randn(5, 7, dtype=torch.float64))
    model.configure_solver(1e-12, 50)
    solution = model.solve_free(x_enc)
    assert solution.converged
    assert solution.iterations == 3  # two to get there, one to see nothing moves
    torch.testing.assert_close(solution.state[0], model.unroll(x_enc, 2).detach(), rtol=0, atol=0)


@pytest.mark.parametrize("make", [lambda: ff_model(7, 16, 3), lambda: rnn_model(7, 16, 3)], ids=["ff", "rnn"])
def test_feedback_with_the_forward_weights_is_the_transposed_jacobian(make: Any) -> None:
    """``φ'(v) ⊙ feedback(e, u; W, D) = Jᵀe + J_gᵀu``: what lets lcp_kp stand in learnt weights for Wᵀ."""
    torch.manual_seed(0)
    model = make().double()
    _check_feedback(model, torch.randn(4, 7, dtype=torch.float64))


def test_conv_feedback_is_the_transposed_jacobian() -> None:
    torch.manual_seed(0)
    model = conv_ff_model(divisor=16).double()
    _check_feedback(model, torch.randn(2, 3, 32, 32, dtype=torch.float64))


def _check_feedback(model: LayeredEquilibriumModel, x: torch.Tensor) -> None:
    x_enc = model.encode(x).detach()
    v = torch.randn_like(x_enc).requires_grad_(True)
    f_v, g_v = model.implicit_and_decode(x_enc, v)
    e, u = torch.randn_like(f_v), torch.randn_like(g_v)
    (expected,) = torch.autograd.grad([f_v, g_v], v, [e, u])
    with torch.no_grad():
        back = model.feedback(e, u, model.link_weights(), model.decoder.weight)
        got = activate_prime(v, model.activation) * back
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("task", [MNIST1D_FF, MNIST1D_RNN], ids=lambda t: t.name)
def test_mnist1d_tasks_build_equilibrium_models_and_evaluate(task: TaskInfo) -> None:
    options = task.options.model_validate(task.test_options)
    model = task.build_model(options, torch.Generator().manual_seed(3))
    again = task.build_model(options, torch.Generator().manual_seed(3))
    assert isinstance(model, EquilibriumModel)
    for a, b in zip(model.parameters(), again.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    metrics = task.load_data(options, torch.device("cpu")).evaluate(model, 0)
    assert set(metrics) >= {"train/loss", "test/loss", "test/accuracy"}


def _train(
    task: TaskInfo, rule: str, options: dict[str, Any], hparams: dict[str, Any], steps: int
) -> list[float]:
    """Train ``steps`` steps through the rule's own ``train_step``; return the step losses."""
    opts = task.options.model_validate({**task.test_options, **options})
    info = RULES.get(rule)
    assert info.unsupported(task, opts) is None
    torch.manual_seed(0)
    model = task.build_model(opts, torch.Generator().manual_seed(0))
    learner = info.build(model, info.hparams.model_validate(hparams))
    data = task.load_data(opts, torch.device("cpu"))
    batches = data.train_batches(torch.Generator().manual_seed(0))
    losses = [learner.train_step(model, next(batches), task.loss)["train/loss"] for _ in range(steps)]
    metrics = data.evaluate(model, steps)
    assert 0.0 <= metrics["test/accuracy"] <= 1.0
    return losses


@pytest.mark.parametrize("task", [MNIST_FF, MNIST_RNN], ids=lambda t: t.name)
def test_mnist_equilibrium_tasks_read_real_mnist_files_and_train(task: TaskInfo, tmp_path: Path) -> None:
    write_mnist(tmp_path)
    options = {"data_dir": str(tmp_path), "synthetic": False, "batch_size": 32}
    data = task.load_data(task.options.model_validate({**task.test_options, **options}), torch.device("cpu"))
    x, _ = next(data.train_batches(torch.Generator().manual_seed(0)))
    assert float(x.min()) >= 0.0
    assert float(x.max()) <= 1.0  # ToTensor only, as the reference
    rule = "bp" if task is MNIST_FF else "rbp"
    losses = _train(task, rule, options, {"lr": 3e-3}, steps=16)
    assert sum(losses[-4:]) < sum(losses[:4])
    di = _train(task, "lcp_di", options, {"lr": 3e-3, **LOOSE}, steps=16)
    assert sum(di[-4:]) < sum(di[:4])


def test_cifar10_conv_ff_reads_cifar_files_and_runs_every_ff_trainer(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    options = {"data_dir": str(tmp_path), "synthetic": False, "verify_checksums": False, "batch_size": 8}
    for rule, hparams in (("bp", {}), ("lcp_di", LOOSE), ("lcp_kp", LOOSE)):
        losses = _train(CIFAR10_CONV_FF, rule, options, hparams, steps=2)
        assert all(torch.isfinite(torch.tensor(losses)))


def test_cifar10_conv_rnn_runs_rbp_and_lcp_di_and_refuses_the_rest() -> None:
    task = CIFAR10_CONV_RNN
    options = task.options.model_validate(task.test_options)
    assert isinstance(conv_rnn_model(), EquilibriumModel)
    assert RULES.get("lcp_kp").unsupported(task, options) is not None
    assert RULES.get("bp").unsupported(task, options) is not None
    for rule, hparams in (("rbp", {"max_iter": 30}), ("lcp_di", {"alpha": 1.0, "k_i": 0.3, **LOOSE})):
        losses = _train(task, rule, {}, hparams, steps=1)
        assert all(torch.isfinite(torch.tensor(losses)))


def test_bias_free_variant_is_refused() -> None:
    with pytest.raises(ValueError, match="bias=False is not offered"):
        MNIST_FF.options.model_validate({"bias": False})


def _train_rnn(
    rule: str, bound: float | None, steps: int
) -> tuple[LayeredEquilibriumModel, dict[str, float]]:
    """Train the tiny ``mnist1d_rnn`` at a large lr (1e-2) that pushes ``W`` to grow fast."""
    task = MNIST1D_RNN
    opts = task.options.model_validate({**task.test_options, "spectral_bound": bound})
    info = RULES.get(rule)
    torch.manual_seed(0)
    model = task.build_model(opts, torch.Generator().manual_seed(0))
    assert isinstance(model, LayeredEquilibriumModel)
    learner = info.build(model, info.hparams.model_validate({"lr": 1e-2, "threshold": 1e-4, "max_iter": 100}))
    batches = task.load_data(opts, torch.device("cpu")).train_batches(torch.Generator().manual_seed(0))
    metrics: dict[str, float] = {}
    for _ in range(steps):
        metrics = learner.train_step(model, next(batches), task.loss)
    return model, metrics


def _free_residual(model: LayeredEquilibriumModel) -> tuple[bool, float]:
    """Solve the free fixed point on a fresh batch; return convergence and max ``‖v − f(v)‖/‖v‖``."""
    x = torch.randn(64, 40, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        x_enc = model.encode(x)
        solution = model.solve_free(x_enc)
        v = solution.state[0]
        residual = (v - model.implicit(x_enc, v)).norm(dim=1) / v.norm(dim=1)
    return solution.converged, float(residual.max())


def test_spectral_bound_holds_from_init_and_is_off_by_default() -> None:
    for bound in (0.5, 0.9):
        model = rnn_model(40, 64, 10, spectral_bound=bound)
        assert float(torch.linalg.matrix_norm(model.links[0].weight.detach(), ord=2)) <= bound + 1e-6
    options = MNIST1D_RNN.options.model_validate({})
    assert options.spectral_bound is None  # the reference's unconstrained rnn
    with pytest.raises(ValueError, match="less than 1"):
        MNIST1D_RNN.options.model_validate({"spectral_bound": 1.0})


@pytest.mark.parametrize("rule", ["rbp", "lcp_di", "lcp_kp"])
def test_bounded_rnn_free_phase_still_converges_after_training(rule: str) -> None:
    """With ``‖W‖₂ ≤ 0.9`` the free fixed point is reached on every step and after training."""
    model, metrics = _train_rnn(rule, 0.9, steps=30)
    assert metrics["rule/nonconverged_total"] == 0
    assert float(torch.linalg.matrix_norm(model.links[0].weight.detach(), ord=2)) <= 0.9 + 1e-5
    converged, residual = _free_residual(model)
    assert converged
    assert residual < 1e-3  # the solver stops at relative change 1e-4; residual ≤ that/(1 − 0.9)


def test_unbounded_rnn_stops_converging_under_the_same_training() -> None:
    """Why the bound exists: the same 30 lcp_di steps without it hit the solver cap."""
    _, metrics = _train_rnn("lcp_di", None, steps=30)
    assert metrics["rule/nonconverged_total"] > 0


def test_kp_feedback_shrinks_with_the_projection() -> None:
    """The projection scales ``W`` and lcp_kp's ``B`` by the same factor, so ``W − B`` only shrinks."""
    model = rnn_model(7, 16, 3, spectral_bound=0.5)
    learner = RULES.get("lcp_kp").build(model, RULES.get("lcp_kp").hparams.model_validate({}))
    with torch.no_grad():
        model.links[0].weight.mul_(4.0)  # as if a step had left the ball
    before = learner.feedback_weights[0].detach().clone()
    factors = model.constrain()
    learner.after_projection(factors)
    assert factors[0] == pytest.approx(0.25, rel=1e-5)
    torch.testing.assert_close(learner.feedback_weights[0].detach(), before * factors[0])
