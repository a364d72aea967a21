"""AGD: the update against its formulas (written out here, independently), init, state, support checks."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmark import train
from benchmark.errors import SpecError
from benchmark.plan import expand
from benchmark.rules import RULES
from benchmark.rules.agd import AGD, init_orthogonal_
from benchmark.spec import Budget, RunSpec, Suite
from benchmark.tasks import TASKS
from tests.tasks.vision_fixtures import write_mnist

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def reference_step(
    weights: list[torch.Tensor], grads: list[torch.Tensor], gain: float
) -> tuple[list[torch.Tensor], float]:
    """AGD's update from the paper's formulas and the reference code's conv rule, slice by slice.

    Every matrix is one slice; a kernel (out, in, kh, kw) has kh·kw slices [:, :, i, j] and a scale
    sqrt(out/in)/sqrt(kh·kw). L counts weight tensors.
    """
    num_layers = len(weights)

    def slices(t: torch.Tensor) -> list[tuple[int, ...]]:
        if t.dim() == 2:
            return [()]
        return [(slice(None), slice(None), i, j) for i in range(t.shape[2]) for j in range(t.shape[3])]

    def scale(t: torch.Tensor) -> float:
        s = math.sqrt(t.shape[0] / t.shape[1])
        return s / math.sqrt(t.shape[2] * t.shape[3]) if t.dim() == 4 else s

    total = 0.0
    for g in grads:
        total += scale(g) * sum(math.sqrt(float((g[idx] ** 2).sum())) for idx in slices(g))
    big_g = total / num_layers
    eta = math.log((1 + math.sqrt(1 + 4 * big_g)) / 2)
    updated = []
    for w, g in zip(weights, grads, strict=True):
        new = w.clone()
        for idx in slices(g):
            norm = math.sqrt(float((g[idx] ** 2).sum()))
            if norm > 0:
                new[idx] = w[idx] - gain * eta / num_layers * scale(w) * g[idx] / norm
        updated.append(new)
    return updated, eta


def random_weights(seed: int, dtype: torch.dtype = F64) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(6, 4), (5, 6, 3, 3), (8, 5, 1, 1), (3, 8, 2, 3), (2, 3)]
    weights = [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]
    grads = [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]
    grads[1][:, :, 0, 2] = 0  # an all-zero slice stays put and adds nothing to G
    return weights, grads


@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
@pytest.mark.parametrize("gain", [1.0, 10.0])
def test_update_equals_the_formulas_on_linear_and_conv_weights(foreach: bool, gain: float) -> None:
    weights, grads = random_weights(0)
    expected, eta = reference_step(weights, grads, gain)
    params = [nn.Parameter(w.clone()) for w in weights]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    opt = AGD(params, gain=gain, foreach=foreach)
    opt.step()
    for p, e in zip(params, expected, strict=True):
        torch.testing.assert_close(p.detach(), e, rtol=1e-12, atol=1e-12)
    assert opt.diagnostics()["rule/step_size"] == pytest.approx(eta, rel=1e-12)


def test_each_slice_moves_by_gain_eta_over_l_times_its_scale() -> None:
    weights, grads = random_weights(1)
    params = [nn.Parameter(w.clone()) for w in weights]
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    opt = AGD(params, gain=2.0)
    opt.step()
    eta = opt.diagnostics()["rule/step_size"]
    conv = params[1].detach() - weights[1]
    slice_norms = torch.linalg.vector_norm(conv, dim=(0, 1))
    expected = 2.0 * eta / len(params) * math.sqrt(5 / 6) / 3
    torch.testing.assert_close(slice_norms[0, :2], torch.full((2,), expected, dtype=F64))
    assert float(slice_norms[0, 2]) == 0.0
    linear = torch.linalg.matrix_norm(params[0].detach() - weights[0])
    assert float(linear) == pytest.approx(2.0 * eta / len(params) * math.sqrt(6 / 4))


def test_foreach_equals_loop_in_float64_over_training_steps() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5, bias=False)
    ).to(F64)
    nets = [net, copy.deepcopy(net)]
    opts = [AGD(nets[0], foreach=False), AGD(nets[1], foreach=True)]
    for step in range(4):
        x = torch.randn(8, 3, 6, 6, dtype=F64, generator=torch.Generator().manual_seed(step))
        for model, opt in zip(nets, opts, strict=True):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
        for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)
        assert opts[0].diagnostics() == pytest.approx(opts[1].diagnostics(), rel=1e-13)


def test_zero_gradient_gives_zero_step_and_no_nan() -> None:
    params = [nn.Parameter(torch.randn(3, 2)), nn.Parameter(torch.randn(4, 3, 3, 3))]
    before = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.zeros_like(p)
    opt = AGD(params)
    assert math.isnan(opt.diagnostics()["rule/step_size"])  # no step yet
    opt.step()
    assert opt.diagnostics()["rule/step_size"] == 0.0
    for p, b in zip(params, before, strict=True):
        assert torch.equal(p.detach(), b)


def test_weight_without_grad_is_skipped_but_counts_in_l() -> None:
    weights, grads = random_weights(2)
    params = [nn.Parameter(w.clone()) for w in weights]
    for p, g in zip(params[1:], grads[1:], strict=True):
        p.grad = g.clone()
    AGD(params).step()
    assert torch.equal(params[0].detach(), weights[0])
    # L stays 5: compare with the formula where the first gradient is zero.
    expected, _ = reference_step(weights, [torch.zeros_like(grads[0]), *grads[1:]], 1.0)
    for p, e in zip(params[1:], expected[1:], strict=True):
        torch.testing.assert_close(p.detach(), e)


@pytest.mark.parametrize(
    ("shape", "scale"),
    [((64, 16), 2.0), ((16, 64), 0.5), ((32, 32), 1.0), ((32, 8, 3, 3), 2.0 / 3), ((8, 32, 1, 1), 0.5)],
)
def test_init_gives_every_slice_singular_values_equal_to_its_scale(
    shape: tuple[int, ...], scale: float
) -> None:
    w = torch.empty(shape, dtype=F64)
    init_orthogonal_([w], torch.Generator().manual_seed(0))
    mats = [w] if w.dim() == 2 else [w[:, :, i, j] for i in range(shape[2]) for j in range(shape[3])]
    for m in mats:
        sv = torch.linalg.svdvals(m)
        assert len(sv) == min(shape[:2])
        torch.testing.assert_close(sv, torch.full_like(sv, scale))
    if len(mats) > 1:  # independent draws at each spatial position
        assert not torch.allclose(mats[0], mats[1])


def test_init_is_set_by_the_generator() -> None:
    a, b = torch.empty(5, 7), torch.empty(5, 7)
    init_orthogonal_([a], torch.Generator().manual_seed(4))
    init_orthogonal_([b], torch.Generator().manual_seed(4))
    assert torch.equal(a, b)


def test_state_dict_round_trip_reproduces_the_next_step() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7, bias=False), nn.Tanh(), nn.Linear(7, 3, bias=False))
    x, y = torch.randn(16, 5), torch.randn(16, 3)

    def step(model: nn.Module, opt: AGD) -> None:
        opt.zero_grad()
        (model(x) - y).square().mean().backward()
        opt.step()

    opt = AGD(net, gain=3.0)
    step(net, opt)
    clone = copy.deepcopy(net)
    state = copy.deepcopy(opt.state_dict())
    assert state["param_groups"][0]["gain"] == 3.0
    restored = AGD(clone, gain=1.0)
    restored.load_state_dict(state)
    assert restored.param_groups[0]["gain"] == 3.0
    step(net, opt)
    step(clone, restored)
    for a, b in zip(net.parameters(), clone.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("gain", [0.0, -1.0, math.nan, math.inf])
def test_invalid_gain_is_refused(gain: float) -> None:
    with pytest.raises(ValueError, match="Invalid gain"):
        AGD([nn.Parameter(torch.ones(2, 2))], gain=gain)


def test_bias_is_refused_with_its_name() -> None:
    with pytest.raises(ValueError, match=r"1-D parameter '0\.bias' of shape \(4,\)"):
        AGD(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2, bias=False)))
    with pytest.raises(ValueError, match=r"3-D parameter 'params\[0\]'"):
        AGD([nn.Parameter(torch.ones(2, 2, 2))])


def test_one_parameter_group_only() -> None:
    groups = [{"params": [nn.Parameter(torch.ones(2, 2))]}, {"params": [nn.Parameter(torch.ones(2, 2))]}]
    with pytest.raises(ValueError, match="single parameter group"):
        AGD(groups)


# --- the registry entry ---------------------------------------------------------------------


def test_registry_entry_is_self_tuning_with_gain_only() -> None:
    info = RULES.get("agd")
    assert info.track == "self_tuning"
    assert dict(info.search_space) == {}
    assert info.defaults() == {"gain": 1.0}
    for case in info.error_cases:
        suite = Suite.model_validate(
            {
                "name": "agd-errors",
                "tasks": [{"name": "digits_mlp", "options": {"width": 8, "bias": False}}],
                "rules": [{"name": "agd", "hparams": dict(case.hparams)}],
                "seeds": [0],
                "budget": {"steps": 1},
            }
        )
        with pytest.raises(SpecError, match=case.match):
            expand(suite, "suite.yaml")


def test_prepare_rejects_biases_and_initialises_orthogonally() -> None:
    info = RULES.get("agd")
    hp = info.hparams()
    with pytest.raises(ValueError, match=r"'0\.bias'"):
        info.prepare(nn.Sequential(nn.Linear(3, 4)), torch.Generator(), hp)  # type: ignore[misc]
    model = info.prepare(nn.Sequential(nn.Linear(16, 4, bias=False)), torch.Generator(), hp)  # type: ignore[misc]
    torch.testing.assert_close(torch.linalg.svdvals(model[0].weight.detach()), torch.full((4,), 0.5))


def test_planner_drops_agd_on_models_with_biases_and_says_how_to_fix_it() -> None:
    suite = Suite.model_validate(
        {
            "name": "agd-check",
            "tasks": [
                {"name": "digits_mlp", "options": {"width": 8}},
                {"name": "digits_mlp", "options": {"width": 8, "bias": False}},
            ],
            "rules": [{"name": "agd"}],
            "seeds": [0],
            "budget": {"steps": 1},
        }
    )
    plan = expand(suite, "agd-check.yaml")
    assert len(plan.specs) == 1
    assert plan.specs[0].task_options["bias"] is False
    (dropped,) = plan.dropped
    assert "'0.bias'" in dropped.reason
    assert "`bias: false`" in dropped.reason


def test_agd_trains_a_bias_free_fcn_on_mnist_files_with_no_hyperparameter(tmp_path: Path) -> None:
    write_mnist(tmp_path, n_train=512, n_test=128)
    spec = RunSpec(
        suite="test",
        task="mnist_fcn",
        task_options=TASKS.get("mnist_fcn")
        .options.model_validate(
            {"data_dir": str(tmp_path), "bias": False, "depth": 3, "width": 64, "batch_size": 64}
        )
        .model_dump(mode="json"),
        rule="agd",
        hparams={},
        seed=0,
        budget=Budget(steps=48, eval_every=16),
    )
    result = train.run(spec, device=torch.device("cpu"))
    assert result.status == "ok"
    first, last = result.curve[0].metrics, result.curve[-1].metrics
    assert last["test/loss"] < 0.5 * first["test/loss"]
    assert last["train/loss"] < 0.5 * result.curve[1].metrics["train/loss"]
    assert last["test/accuracy"] > 0.8  # 10 classes: chance is 0.1
    step_sizes = [p.metrics["rule/step_size"] for p in result.curve[1:]]
    assert all(math.isfinite(s) and s > 0 for s in step_sizes)


@pytest.mark.parametrize("task", ["mnist1d_mlp", "digits_mlp"])
def test_scaled_relu_keeps_the_signal_through_a_deep_agd_initialised_mlp(task: str) -> None:
    # AGD's step size comes from gradient norms, so a signal that fades with depth starves it:
    # the paper's FCN uses sqrt(2)·ReLU, which the offline MLPs offer as `activation: scaled_relu`.
    info, rule = TASKS.get(task), RULES.get("agd")
    features = {"mnist1d_mlp": 40, "digits_mlp": 64}[task]
    x = torch.randn(4096, features, generator=torch.Generator().manual_seed(1))
    rms = {}
    for activation in ("relu", "scaled_relu"):
        options = info.options.model_validate(
            {"bias": False, "depth": 7, "width": 256, "activation": activation}
        )
        model = info.build_model(options, torch.Generator().manual_seed(0))
        model = rule.prepare(model, torch.Generator().manual_seed(0), rule.hparams())  # type: ignore[misc]
        with torch.no_grad():
            rms[activation] = float(model[:-1](x).pow(2).mean().sqrt() / x.pow(2).mean().sqrt())
    assert 0.5 < rms["scaled_relu"] < 2.0
    assert rms["relu"] < 0.2  # halves the second moment at each of the 7 ReLUs
