"""The implied-metric probe: closed forms on random vectors, the known metrics of Adam and EG, the wiring."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from benchmark import train
from benchmark.probe import (
    ImpliedMetricProbe,
    block_kappa,
    block_kappa_from_dots,
    diagonal_metric,
    diagonal_violation,
    kappa_star,
    optimal_metric,
    step_geometry,
)
from benchmark.rules.eg import EGSGD
from tests.helpers import make_spec

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def _pair(seed: int, dim: int, angle_deg: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A gradient g and a step u = −Δθ at a given angle, with different norms."""
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(dim, generator=gen, dtype=F64)
    other = torch.randn(dim, generator=gen, dtype=F64)
    other -= (other @ g) / (g @ g) * g
    angle = math.radians(angle_deg)
    u = 3.7 * (math.cos(angle) * g / g.norm() + math.sin(angle) * other / other.norm())
    return g, u


@pytest.mark.parametrize("angle", [0.0, 10.0, 45.0, 85.0, 89.0])
def test_optimal_metric_maps_g_to_the_step_with_the_smallest_condition(angle: float) -> None:
    for seed in range(3):
        g, u = _pair(seed, 6, angle)
        p = optimal_metric(g, u)
        torch.testing.assert_close(p, p.T)
        torch.testing.assert_close(p @ g, u, rtol=1e-10, atol=1e-10)
        evals = torch.linalg.eigvalsh(p)
        assert float(evals.min()) > 0
        geo = step_geometry(g, u)
        assert geo.exists
        assert float(evals.max() / evals.min()) == pytest.approx(geo.kappa, rel=1e-8)
        # The gain ĝᵀPĝ is the same for every valid metric: u·g/|g|².
        gh = g / g.norm()
        assert float(gh @ p @ gh) == pytest.approx(geo.gain, rel=1e-10)


def test_kappa_star_closed_form_and_other_valid_metrics_are_worse() -> None:
    # κ* = (1 + sin ψ)/(1 − sin ψ) = (sec ψ + tan ψ)²: 524.6 at ψ = 85° (the note's 461 is κ* at 84.67°).
    psi = math.radians(85)
    assert kappa_star(math.cos(psi)) == pytest.approx((1 / math.cos(psi) + math.tan(psi)) ** 2, rel=1e-12)
    assert kappa_star(math.cos(psi)) == pytest.approx(524.6, abs=0.1)
    g, u = _pair(0, 6, 85.0)
    gh = g / g.norm()
    eye = torch.eye(6, dtype=F64)
    rho = 1 / float(u @ g)
    simple = eye - torch.outer(gh, gh) + rho * torch.outer(u, u)
    bfgs = (eye - rho * torch.outer(u, g)) @ (eye - rho * torch.outer(g, u)) + rho * torch.outer(u, u)
    for p in (simple, bfgs):
        torch.testing.assert_close(p @ g, u)
        assert float(torch.linalg.cond(p)) > kappa_star(math.cos(psi))
    assert kappa_star(1.0) == 1.0
    assert math.isinf(kappa_star(0.0))
    assert math.isinf(kappa_star(-0.3))


def test_no_spd_metric_for_a_step_against_the_gradient() -> None:
    g, u = _pair(0, 5, 100.0)
    assert not step_geometry(g, u).exists
    with pytest.raises(ValueError, match="no SPD metric"):
        optimal_metric(g, u)


def test_block_kappa_is_the_condition_of_the_per_block_optimal_metrics() -> None:
    blocks = [_pair(1, 3, 30.0), _pair(2, 4, 60.0), _pair(3, 2, 5.0)]
    gs = [g * (i + 1) for i, (g, _) in enumerate(blocks)]  # different scales per block
    us = [u for _, u in blocks]
    full = torch.block_diag(*[optimal_metric(g, u) for g, u in zip(gs, us, strict=True)])
    evals = torch.linalg.eigvalsh(full)
    assert block_kappa(gs, us) == pytest.approx(float(evals.max() / evals.min()), rel=1e-8)
    assert math.isinf(block_kappa([gs[0], gs[1]], [us[0], -us[1]]))
    # A block whose step vanishes against a huge gradient (a run blowing up): unbounded, not an error.
    assert math.isinf(block_kappa_from_dots([(1e300, 1e-300, 1e-300), (1.0, 1.0, 1.0)]))


def test_adam_without_momentum_has_its_known_diagonal_metric() -> None:
    gen = torch.Generator().manual_seed(0)
    w = nn.Parameter(torch.randn(20, generator=gen, dtype=F64))
    lr, eps, beta2 = 0.01, 1e-8, 0.999
    opt = torch.optim.Adam([w], lr=lr, betas=(0.0, beta2), eps=eps)
    v = torch.zeros(20, dtype=F64)
    for step in range(1, 4):
        g = torch.randn(20, generator=gen, dtype=F64)
        before = w.detach().clone()
        w.grad = g.clone()
        opt.step()
        u = before - w.detach()
        v = beta2 * v + (1 - beta2) * g * g
        expected = lr / ((v / (1 - beta2**step)).sqrt() + eps)  # P = diag(η/(√v̂+ε))
        torch.testing.assert_close(diagonal_metric(g, u), expected, rtol=1e-9, atol=0)
        assert diagonal_violation(g, u) == 0.0


def test_eg_step_has_a_metric_proportional_to_the_weights() -> None:
    gen = torch.Generator().manual_seed(1)
    w0 = torch.rand(50, generator=gen, dtype=F64) + 0.1
    w = nn.Parameter(w0.clone())
    g = torch.randn(50, generator=gen, dtype=F64)
    lr = 1e-3
    opt = EGSGD([w], lr=lr)
    w.grad = g.clone()
    opt.step()
    u = w0 - w.detach()
    # w·e^{−ηg}: u_i = w_i(1 − e^{−ηg_i}) = ηw_i g_i(1 + O(ηg)), so P_ii = u_i/g_i ≈ η|w_i|.
    ratio = diagonal_metric(g, u) / (lr * w0.abs())
    torch.testing.assert_close(ratio, torch.ones_like(ratio), rtol=5e-3, atol=0)


class _Quadratic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.tensor([0.1, 0.1, 1.0], dtype=F64))
        self.register_buffer("h", torch.tensor([1.0, 4.0, 10.0], dtype=F64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.h.sqrt() * self.theta)[None, :]


def _half_sum(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 0.5 * (out - target).pow(2).sum()


@pytest.mark.parametrize(("lr", "raises"), [(0.05, False), (0.25, True)])
def test_a_step_that_raises_the_loss_has_no_metric(lr: float, raises: bool) -> None:
    model = _Quadratic()
    batch = (torch.zeros(1, 1, dtype=F64), torch.zeros(1, 3, dtype=F64))
    probe = ImpliedMetricProbe(model, _half_sum)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    probe.before(batch)
    opt.zero_grad()
    _half_sum(model(batch[0]), batch[1]).backward()
    opt.step()
    after = model.theta.detach().clone()
    metrics = probe.after(batch)
    torch.testing.assert_close(model.theta.detach(), after, rtol=0, atol=0)  # the probe restores θ₁
    # A plain gradient step always has a metric against g (P = lr·I) ...
    assert metrics["metric/no_metric_fraction"] == 0.0
    assert metrics["metric/kappa"] == pytest.approx(1.0)
    # ... but against the mean-value gradient only if it lowered the loss (lr > 2/λ_max = 0.2 overshoots).
    assert metrics["metric/loss_up_fraction"] == float(raises)
    assert metrics["metric/no_metric_mv_fraction"] == float(raises)


def test_probing_reports_metrics_and_leaves_the_run_unchanged() -> None:
    spec = make_spec(task="saxe_modes", rule="adamw", steps=40, eval_every=10, hparams={"lr": 0.01})
    probed = spec.model_copy(update={"budget": spec.budget.model_copy(update={"probe_every": 5})})
    plain, seen = train.run(spec), train.run(probed)
    assert [p.metrics["train/loss"] for p in plain.curve] == [p.metrics["train/loss"] for p in seen.curve]
    for point in seen.curve[1:]:
        assert point.metrics["metric/probes"] == 2.0
        assert 0 < point.metrics["metric/cos_psi"] <= 1
        assert point.metrics["metric/kappa"] >= 1
    assert seen.final["metric/run_probes"] == 8.0
    assert not any(k.startswith("metric/") for k in plain.final)


def test_reading_g_from_the_rule_gives_the_same_metrics_as_the_probes_own_backward() -> None:
    from benchmark.rules.base import OptimizerRule

    results = []
    for from_rule in (False, True):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).to(F64)
        batch = (torch.randn(16, 5, dtype=F64), torch.randint(0, 3, (16,)))
        rule = OptimizerRule(torch.optim.Adam(model.parameters(), lr=0.05))
        probe = ImpliedMetricProbe(model, nn.functional.cross_entropy, grad_from_rule=from_rule)
        for _ in range(3):
            probe.before(batch)
            loss0 = rule.train_step(model, batch, nn.functional.cross_entropy)["train/loss"]
            probe.after(batch, loss0)
        results.append(probe.totals())
    assert results[0].keys() == results[1].keys()
    for key, value in results[0].items():
        assert results[1][key] == pytest.approx(value, rel=1e-9), key


@pytest.mark.parametrize("n", [1, 2, 3])
def test_both_quadratures_integrate_polynomials_of_degree_2n_minus_1_with_n_new_gradients(n: int) -> None:
    from benchmark.probe import gauss_legendre_on_unit, gauss_lobatto_on_unit

    rules = [gauss_legendre_on_unit(n), gauss_lobatto_on_unit(n + 1)]  # n new points each (s = 0 is held)
    for degree in range(2 * n):
        for xs, ws in rules:
            assert sum(w * x**degree for x, w in zip(xs, ws, strict=True)) == pytest.approx(1 / (degree + 1))
    xs, ws = rules[1]
    assert (xs[0], xs[-1]) == (0.0, 1.0)
    if n == 2:  # Simpson's rule
        assert ws == pytest.approx([1 / 6, 4 / 6, 1 / 6])


class _Quartic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.tensor([1.0, -0.5, 0.3, 2.0], dtype=F64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.theta[None, :] + 0 * x


def _quartic_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (0.5 * (out - target).pow(2) + 0.25 * out.pow(4)).sum()


@pytest.mark.parametrize("lr", [0.05, 0.4])
def test_lobatto_and_legendre_agree_where_both_are_exact(lr: float) -> None:
    # Along a step the quartic loss is a quartic in s, so its gradient is cubic: both 2-node rules
    # give the exact mean-value gradient, and so the same metrics (lr = 0.4 overshoots: loss goes up).
    batch = (torch.zeros(1, 1, dtype=F64), torch.ones(1, 4, dtype=F64))
    totals = []
    for quadrature in ("lobatto", "legendre"):
        model = _Quartic()
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        probe = ImpliedMetricProbe(model, _quartic_loss, quadrature=quadrature)
        for _ in range(3):
            probe.before(batch)
            opt.zero_grad()
            _quartic_loss(model(batch[0]), batch[1]).backward()
            opt.step()
            probe.after(batch)
        totals.append(probe.totals())
    assert totals[0].keys() == totals[1].keys()
    for key, value in totals[0].items():
        assert totals[1][key] == pytest.approx(value, rel=1e-10), key
    assert totals[0]["metric/run_no_metric_mv_fraction"] == totals[0]["metric/run_loss_up_fraction"]


def test_probe_matches_the_flat_vector_formulas_on_a_relu_net_with_dead_units() -> None:
    from benchmark.rules.base import OptimizerRule

    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)).to(F64)
    with torch.no_grad():
        model[0].bias[:6] = -50.0  # dead units: coordinates with neither gradient nor step
    batch = (torch.randn(32, 4, dtype=F64), torch.randint(0, 3, (32,)))
    rule = OptimizerRule(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    probe = ImpliedMetricProbe(model, nn.functional.cross_entropy, grad_from_rule=True)
    for _ in range(3):
        rule.train_step(model, batch, nn.functional.cross_entropy)  # momentum: u is not ∝ g
    theta0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    probe.before(batch)
    loss0 = rule.train_step(model, batch, nn.functional.cross_entropy)["train/loss"]
    g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    u = theta0 - torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    metrics = probe.after(batch, loss0)
    geo = step_geometry(g, u)
    assert metrics["metric/cos_psi"] == pytest.approx(geo.cos_psi, rel=1e-12)
    assert metrics["metric/gain"] == pytest.approx(geo.gain, rel=1e-12)
    assert metrics["metric/diag_violation"] == pytest.approx(diagonal_violation(g, u), abs=1e-15)
    assert 0 < metrics["metric/diag_violation"] < 1
    sizes = [p.numel() for p in model.parameters()]
    assert metrics.get("metric/block_kappa", math.inf) == pytest.approx(
        block_kappa(list(g.split(sizes)), list(u.split(sizes))), rel=1e-10
    )


def test_an_unknown_quadrature_is_refused() -> None:
    with pytest.raises(ValueError, match="quadrature"):
        ImpliedMetricProbe(nn.Linear(2, 2), nn.functional.mse_loss, quadrature="simpson")  # type: ignore[arg-type]


@pytest.mark.parametrize(("lr", "resolved"), [(1e-2, True), (1e-9, False)])
def test_a_step_lost_in_float32_rounding_is_counted_not_read(lr: float, resolved: bool) -> None:
    # At lr 1e-9 the float32 step is mostly rounding: reading it would report a rule with no metric.
    model = _Quadratic().float()
    model.theta.data += 100.0
    batch = (torch.zeros(1, 1), torch.zeros(1, 3))
    probe = ImpliedMetricProbe(model, _half_sum)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    probe.before(batch)
    opt.zero_grad()
    _half_sum(model(batch[0]), batch[1]).backward()
    opt.step()
    probe.after(batch)
    totals = probe.totals()
    assert totals["metric/run_unresolved"] == float(not resolved)
    if resolved:
        assert totals["metric/run_kappa"] == pytest.approx(1.0, rel=1e-3)
    else:
        assert "metric/run_kappa" not in totals
