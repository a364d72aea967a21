"""The least-control trainers (benchmark.rules.lcp): exactness limits, solver, training, state.

Tiny float64 networks check the math; the mnist1d_ff task at its test options checks that every
trainer trains through the real loop (benchmark.train.run).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from benchmark import train
from benchmark.fixpoint import EquilibriumModel, LayeredEquilibriumModel, solve
from benchmark.rules import RULES
from benchmark.rules.lcp import (
    RBP,
    BPHParams,
    DIHParams,
    KPHParams,
    LCPDynamicInversion,
    LCPKollenPollack,
    RBPHParams,
)
from benchmark.tasks import TASKS
from benchmark.tasks.equilibrium import ff_model, rnn_model
from tests.helpers import make_spec

LCP_NAMES = [n for n in ("bp", "rbp", "lcp_di", "lcp_kp", "lcp_ebd", "lcp_lf") if n in RULES.names()]
# The reference's solver settings (1e-6, 800 iterations; 800 inner Adam steps for lcp_ebd) cost
# seconds per step on a CPU: the quick tests relax less precisely, the slow ones use the defaults.
_LOOSE = {"threshold": 1e-4, "max_iter": 100}
FAST_HPARAMS: dict[str, dict[str, Any]] = {
    "lcp_di": _LOOSE,
    "lcp_kp": _LOOSE,
    "lcp_lf": {"threshold": 1e-4, "max_iter": 60},
    "lcp_ebd": {"max_iter": 20},
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(kind: str, contraction: float = 0.5, seed: int = 0) -> LayeredEquilibriumModel:
    """A float64 equilibrium net with 5 inputs, width 8, 3 classes; recurrent weights rescaled."""
    torch.manual_seed(seed)
    model = (rnn_model if kind == "rnn" else ff_model)(5, 8, 3).double()
    with torch.no_grad():
        for link in model.links:
            assert isinstance(link, nn.Linear)
            link.weight.mul_(contraction / torch.linalg.matrix_norm(link.weight, ord=2))
    return model


def _batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(6, 5, generator=gen, dtype=torch.float64), torch.randint(0, 3, (6,), generator=gen)


def _grads(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters()])  # type: ignore[union-attr]


def _unrolled_gradient(model: EquilibriumModel, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Autograd's gradient of the loss at the equilibrium: backprop through 300 iterations from zero.

    With ``‖W‖₂ = 0.5`` and ``|tanh'| ≤ 1`` the unrolled state and its derivative match the fixed
    point's to ``0.5³⁰⁰``, so this is an independent reference for the implicit gradient.
    """
    x, y = batch
    model.zero_grad(set_to_none=True)
    v = model.unroll(model.encode(x), 300)
    nn.functional.cross_entropy(model.decode(v), y).backward()
    out = _grads(model).clone()
    model.zero_grad(set_to_none=True)
    return out


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def test_solver_reaches_its_threshold_on_a_contractive_network() -> None:
    model = _tiny("rnn", contraction=0.5)
    x_enc = model.encode(_batch()[0])
    model.configure_solver(1e-10, 200)
    solution = model.solve_free(x_enc)
    assert solution.converged
    assert solution.error < 1e-10
    assert solution.iterations < 200
    v = solution.state[0]
    residual = (model.implicit(x_enc, v) - v).norm(dim=1) / v.norm(dim=1)
    assert float(residual.max().detach()) < 1e-9


def test_solver_reports_nonconvergence() -> None:
    model = _tiny("rnn", contraction=0.9)
    x_enc = model.encode(_batch()[0])
    solution = solve(lambda s: (model.implicit(x_enc, s[0]),), (torch.zeros_like(x_enc),), 1e-12, 3)
    assert not solution.converged
    assert solution.iterations == 3
    # ... and a trainer counts it in its step metrics instead of going on silently.
    learner = RBP(model, RBPHParams(max_iter=3, threshold=1e-12))
    metrics = learner.train_step(model, _batch(), nn.functional.cross_entropy)
    assert metrics["rule/nonconverged"] == 1.0
    assert metrics["rule/nonconverged_total"] == 1.0


def test_rbp_gradient_equals_autograd_at_the_equilibrium() -> None:
    model = _tiny("rnn")
    batch = _batch()
    expected = _unrolled_gradient(model, batch)
    learner = RBP(model, RBPHParams(threshold=1e-14, max_iter=500, grad_clip=None))
    _, costs = learner.compute_update(model, batch, nn.functional.cross_entropy)
    assert costs["rule/nonconverged"] == 0.0
    torch.testing.assert_close(_grads(model), expected, rtol=1e-8, atol=1e-11)


def test_equilibrium_model_forward_with_grad_is_the_rbp_gradient() -> None:
    """A plain optimizer on a recurrent equilibrium model gets the implicit gradient too."""
    model = _tiny("rnn")
    batch = _batch()
    expected = _unrolled_gradient(model, batch)
    model.configure_solver(1e-14, 500)
    nn.functional.cross_entropy(model(batch[0]), batch[1]).backward()
    torch.testing.assert_close(_grads(model), expected, rtol=1e-8, atol=1e-11)


def _reference_rbp_gradient(
    model: EquilibriumModel, batch: tuple[torch.Tensor, torch.Tensor], threshold: float, max_iter: int
) -> torch.Tensor:
    """rbp as seijin-kobayashi/least-control's ``RBP.forward_train`` computes it, step by step.

    Free solve to ``v*``; ``v̂ = f(x̃, v*)`` re-attached; the adjoint ``w = J(v̂)ᵀw + a`` solved from
    ``a`` with the Jacobian taken at ``v̂``, not at ``v*``.
    """
    x, y = batch
    model.zero_grad(set_to_none=True)
    x_enc = model.encode(x)
    with torch.no_grad():
        start = (torch.zeros_like(x_enc),)
        v_star = solve(lambda s: (model.implicit(x_enc, s[0]),), start, threshold, max_iter).state[0]
    v_hat = model.implicit(x_enc, v_star)
    v0 = v_hat.detach().requires_grad_(True)
    f0 = model.implicit(x_enc, v0)

    def hook(grad: torch.Tensor) -> torch.Tensor:
        def adjoint(s: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            return (torch.autograd.grad(f0, v0, s[0], retain_graph=True)[0] + grad,)

        return solve(adjoint, (grad,), threshold, max_iter).state[0]

    v_hat.register_hook(hook)
    nn.functional.cross_entropy(model.decode(v_hat), y).backward()
    out = _grads(model).clone()
    model.zero_grad(set_to_none=True)
    return out


def test_rbp_takes_the_adjoint_jacobian_at_f_of_the_solved_state_as_the_reference() -> None:
    """Off the exact fixed point J(v*) and J(f(x̃, v*)) differ; the reference takes the latter."""
    model = _tiny("rnn", contraction=0.9)
    batch = _batch()
    expected = _reference_rbp_gradient(model, batch, threshold=1e-2, max_iter=200)
    learner = RBP(model, RBPHParams(threshold=1e-2, max_iter=200, grad_clip=None))
    learner.compute_update(model, batch, nn.functional.cross_entropy)
    torch.testing.assert_close(_grads(model), expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", ["rnn", "ff"])
def test_lcp_di_update_points_along_the_gradient_under_weak_control(kind: str) -> None:
    """Weak control (β = k_i/α → 0) with exact inversion: update/β → the rbp gradient.

    Bound: cosine similarity above 0.9999 and relative error below 1e-2 at β = 1e-3 (the error is
    O(β); a numpy re-implementation of the authors' equations gave 1.07e-3 at this β).
    """
    model = _tiny(kind)
    batch = _batch()
    gradient = _unrolled_gradient(model, batch)
    beta = 1e-3
    hp = DIHParams(alpha=1.0, k_i=beta, threshold=1e-13, max_iter=3000)
    learner = LCPDynamicInversion(model, hp)
    _, costs = learner.compute_update(model, batch, nn.functional.cross_entropy)
    assert costs["rule/nonconverged"] == 0.0
    update = _grads(model) / beta
    assert _cosine(update, gradient) > 0.9999
    assert float((update - gradient).norm() / gradient.norm()) < 1e-2


def test_lcp_di_only_the_ratio_k_i_over_alpha_matters() -> None:
    model = _tiny("rnn")
    batch = _batch()
    updates = []
    for alpha, k_i in ((0.1, 1.0), (1.0, 10.0)):
        learner = LCPDynamicInversion(model, DIHParams(alpha=alpha, k_i=k_i, threshold=1e-12, max_iter=5000))
        model.zero_grad(set_to_none=True)
        learner.compute_update(model, batch, nn.functional.cross_entropy)
        updates.append(_grads(model).clone())
    torch.testing.assert_close(updates[0], updates[1], rtol=1e-6, atol=1e-10)


def test_lcp_di_at_the_reference_setting_is_still_a_descent_direction() -> None:
    """At β = 10 (α 0.1, k_i 1) the update is the least-control gradient, not the loss gradient.

    It should still correlate with it; the stated bound (cosine > 0.8) is loose on purpose. α = 1,
    k_i = 10 gives the same update as the reference's α = 0.1, k_i = 1 (only β matters, tested
    above) and relaxes in fewer iterations.
    """
    model = _tiny("ff")
    batch = _batch()
    gradient = _unrolled_gradient(model, batch)
    learner = LCPDynamicInversion(model, DIHParams(alpha=1.0, k_i=10.0, threshold=1e-13, max_iter=5000))
    learner.compute_update(model, batch, nn.functional.cross_entropy)
    assert _cosine(_grads(model), gradient) > 0.8


@pytest.mark.skipif("lcp_kp" not in LCP_NAMES, reason="lcp_kp not registered")
def test_lcp_kp_with_exact_transposes_equals_lcp_di() -> None:
    """With B = W, D_fb = D and no decay the feedback dynamics are DI's, and so is the update."""
    model = _tiny("ff")
    batch = _batch()
    hp = dict(alpha=1.0, k_i=10.0, threshold=1e-13, max_iter=5000)
    di = LCPDynamicInversion(model, DIHParams(**hp))
    di.compute_update(model, batch, nn.functional.cross_entropy)
    expected = _grads(model).clone()
    model.zero_grad(set_to_none=True)
    kp = LCPKollenPollack(model, KPHParams(kp_wd=0.0, **hp))
    with torch.no_grad():
        for b, w in zip(kp.feedback_weights, model.link_weights(), strict=True):
            b.copy_(w)
        kp.readout_feedback.copy_(model.decoder.weight)
    kp.compute_update(model, batch, nn.functional.cross_entropy)
    torch.testing.assert_close(_grads(model), expected, rtol=1e-7, atol=1e-12)
    # Kolen–Pollack: the feedback weights get the forward weights' gradient, in the same layout.
    for b, w in zip(kp.feedback_weights, model.link_weights(), strict=True):
        torch.testing.assert_close(b.grad, w.grad)
    torch.testing.assert_close(kp.readout_feedback.grad, model.decoder.weight.grad)


@pytest.mark.skipif("lcp_kp" not in LCP_NAMES, reason="lcp_kp not registered")
def test_lcp_kp_feedback_target_is_phi_of_v_hat_as_the_reference() -> None:
    """The feedback weights learn toward ``−φ(v̂)``, ``v̂ = f(x̃, v*) + e*`` (the reference's hook).

    For the ff link ``W: block 0 → block 1`` the feedback term is ``e_1 B`` into block 0, so
    ``grad_B = −Σ_batch e*_1 φ(v̂_0)ᵀ`` and ``grad_{D_fb} = −Σ_batch u* φ(v̂_1)ᵀ``. A loose threshold
    keeps ``v*`` off the fixed point, where the two targets differ.
    """
    model = _tiny("ff")
    x, y = _batch()
    kp = LCPKollenPollack(model, KPHParams(alpha=1.0, k_i=10.0, threshold=1e-2, max_iter=50, kp_wd=0.0))
    x_enc = model.encode(x).detach()
    solution, u_star = kp.relax(model, x_enc, y, nn.functional.cross_entropy)
    v_star, _, _, e_star = solution.state
    with torch.no_grad():
        v_hat = model.implicit(x_enc, v_star) + e_star
    h0, h1 = (torch.tanh(part) for part in model.split(v_hat))
    e1 = model.split(e_star)[1]
    kp.compute_update(model, (x, y), nn.functional.cross_entropy)
    (b,) = kp.feedback_weights
    torch.testing.assert_close(b.grad, -e1.T @ h0, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(kp.readout_feedback.grad, -u_star.T @ h1, rtol=1e-10, atol=1e-14)


@pytest.mark.skipif("lcp_kp" not in LCP_NAMES, reason="lcp_kp not registered")
def test_lcp_kp_readout_feedback_starts_with_variance_one_over_classes_times_width() -> None:
    """``D_fb ~ N(0, 1/(C·H))`` as the reference's ``randn/√(C·H)``; with C = 2 classes, not 1/(10·H)."""
    torch.manual_seed(0)
    model = ff_model(5, 500, 2)
    kp = LCPKollenPollack(model, KPHParams())
    d_fb = kp.readout_feedback.detach()
    assert d_fb.shape == (2, 500)
    # 1000 draws: the sample variance is within ±15% of the true one with overwhelming probability.
    assert float(d_fb.var()) * 2 * 500 == pytest.approx(1.0, rel=0.15)


def test_lcp_rules_refuse_non_equilibrium_tasks() -> None:
    task = TASKS.get("digits_mlp")
    options = task.options.model_validate(task.test_options)
    for name in LCP_NAMES:
        reason = RULES.get(name).unsupported(task, options)
        assert reason is not None
        assert "equilibrium" in reason


def test_bp_refuses_recurrent_models() -> None:
    task = TASKS.get("mnist1d_rnn")
    options = task.options.model_validate(task.test_options)
    assert "rbp" in (RULES.get("bp").unsupported(task, options) or "")
    assert RULES.get("rbp").unsupported(task, options) is None


def test_unstable_controller_is_refused() -> None:
    with pytest.raises(ValueError, match="alpha·dt must be below 2"):
        DIHParams(alpha=2.5, dt=1.0)


def _trains(name: str, hparams: dict[str, Any] | None, steps: int) -> None:
    result = train.run(
        make_spec(task="mnist1d_ff", rule=name, steps=steps, eval_every=steps, hparams=hparams)
    )
    assert result.status == "ok"
    first, last = result.curve[0].metrics, result.curve[-1].metrics
    assert last["train/loss"] < first["train/loss"]
    assert last["rule/solver_iters_mean"] >= 1
    assert last["rule/forward_passes_mean"] >= last["rule/solver_iters_mean"]
    assert "rule/nonconverged_total" in last


@pytest.mark.parametrize("name", LCP_NAMES, ids=LCP_NAMES)
def test_every_trainer_trains_mnist1d_ff_and_its_loss_falls(name: str) -> None:
    _trains(name, FAST_HPARAMS.get(name), steps=20)


@pytest.mark.slow
@pytest.mark.parametrize("name", LCP_NAMES, ids=LCP_NAMES)
def test_every_trainer_trains_mnist1d_ff_with_the_reference_defaults(name: str) -> None:
    _trains(name, None, steps=30)


@pytest.mark.parametrize("name", LCP_NAMES, ids=LCP_NAMES)
def test_state_dict_round_trip_reproduces_the_next_step(name: str) -> None:
    task = TASKS.get("mnist1d_ff")
    rule = RULES.get(name)
    options = task.options.model_validate(task.test_options)
    hparams = rule.hparams.model_validate(FAST_HPARAMS.get(name, {}))

    def build() -> tuple[nn.Module, Any]:
        torch.manual_seed(0)
        model = task.build_model(options, torch.Generator().manual_seed(0))
        return model, rule.build(model, hparams)

    data = task.load_data(options, torch.device("cpu"))
    batches = data.train_batches(torch.Generator().manual_seed(0))
    model, learner = build()
    learner.train_step(model, next(batches), task.loss)
    saved_model = copy.deepcopy(model.state_dict())
    saved_rule = copy.deepcopy(learner.state_dict())
    batch = next(batches)
    expected_metrics = learner.train_step(model, batch, task.loss)
    expected = copy.deepcopy(model.state_dict())

    torch.manual_seed(123)  # a different fresh initialisation of any rule-owned weights
    model2, learner2 = build()
    model2.load_state_dict(saved_model)
    learner2.load_state_dict(saved_rule)
    metrics = learner2.train_step(model2, batch, task.loss)
    for key, value in model2.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=f"{name}: {key} differs")
    assert metrics == expected_metrics


def test_cosine_schedule_ends_at_eta_min() -> None:
    model = _tiny("ff").float()
    learner = RULES.get("bp").build(model, BPHParams(cosine_steps=4, lr=1e-2))
    x, y = _batch()
    lrs = [
        learner.train_step(model, (x.float(), y), nn.functional.cross_entropy)["rule/lr"] for _ in range(6)
    ]
    assert lrs[0] == pytest.approx(1e-2)
    assert lrs[4] == pytest.approx(1e-3)
    assert lrs[5] == pytest.approx(1e-3)


@pytest.mark.skipif("lcp_lf" not in LCP_NAMES, reason="lcp_lf not registered")
def test_lcp_lf_learns_q_outside_the_meta_optimizer() -> None:
    from benchmark.rules.lcp_lf import LCPLinearFeedback, LFHParams

    model = _tiny("ff").float()
    learner = LCPLinearFeedback(model, LFHParams(threshold=1e-4, max_iter=30, tau_Q=10.0))
    q = learner.q.clone()
    x, y = _batch()
    metrics = learner.train_step(model, (x.float(), y), nn.functional.cross_entropy)
    assert not torch.equal(learner.q, q)
    assert all(p is not learner.q for group in learner.optimizer.param_groups for p in group["params"])
    # The noisy phase for Q runs max_iter steps on top of the relaxation, and the clock says so.
    assert metrics["rule/solver_iters"] >= 30
