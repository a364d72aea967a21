"""EG-SGD, EG-AdamW and sign-constrained SGD: the update formulas, kernels, signs, state and errors."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

from benchmark import train
from benchmark.rules import RULES
from benchmark.rules import eg as eg_module
from benchmark.rules.eg import EGSGD, EGAdamW, SGDSigned, eg_adamw_update, eg_sgd_update
from tests.helpers import make_spec

pytestmark = pytest.mark.usefixtures("one_thread")


SHAPES = [(7, 5), (11,), (3, 4, 2), (1,)]


def _tensors(seed: int, dtype: torch.dtype = torch.float64) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=dtype) for s in SHAPES]


def _params(seed: int = 0, dtype: torch.dtype = torch.float64) -> list[torch.nn.Parameter]:
    params = [torch.nn.Parameter(t) for t in _tensors(seed, dtype)]
    with torch.no_grad():
        params[0][0, 0] = 0.0  # an exact zero must stay zero
        params[1][0] = 1e-30  # far below the floor: lifted to it
    return params


def _run(make: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer], steps: int = 4) -> list[Tensor]:
    params = _params()
    opt = make(params)
    for step in range(steps):
        for p, g in zip(params, _tensors(100 + step), strict=True):
            p.grad = g.clone()
        opt.step()
    return [p.detach().clone() for p in params]


SGD_CONFIGS: list[dict[str, Any]] = [
    {"lr": 0.3},
    {"lr": 0.3, "weight_decay": 0.1},
    {"lr": 0.3, "momentum": 0.9},
    {"lr": 0.3, "momentum": 0.9, "dampening": 0.5, "weight_decay": 0.01},
    {"lr": 0.3, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
    {"lr": 0.3, "momentum": 0.5, "maximize": True},
    {"lr": 0.3, "floor": 0.0},
]
ADAMW_CONFIGS: list[dict[str, Any]] = [
    {"lr": 0.05},
    {"lr": 0.05, "weight_decay": 0.1, "betas": (0.8, 0.99)},
    {"lr": 0.05, "maximize": True, "eps": 1e-3},
    {"lr": 0.05, "floor": 0.0},
]


@pytest.mark.parametrize(
    ("optimizer", "kwargs"),
    [
        (EGSGD, {"lr": 0.3, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01, "maximize": True}),
        (SGDSigned, {"lr": 0.3, "momentum": 0.9, "weight_decay": 0.01}),
    ],
    ids=["eg_sgd", "sgd_signed"],
)
def test_the_compiled_kernel_matches_the_loop_in_float64(optimizer: type, kwargs: dict[str, Any]) -> None:
    loop = _run(lambda p: optimizer(p, foreach=False, **kwargs))
    fused = _run(lambda p: optimizer(p, fused=True, **kwargs))
    for a, b in zip(loop, fused, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=0)


@pytest.mark.parametrize("kwargs", SGD_CONFIGS, ids=str)
def test_eg_sgd_foreach_matches_the_loop_in_float64(kwargs: dict[str, Any]) -> None:
    loop = _run(lambda p: EGSGD(p, foreach=False, **kwargs))
    fast = _run(lambda p: EGSGD(p, foreach=True, **kwargs))
    for a, b in zip(loop, fast, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=0)


@pytest.mark.parametrize("kwargs", ADAMW_CONFIGS, ids=str)
def test_eg_adamw_foreach_matches_the_loop_in_float64(kwargs: dict[str, Any]) -> None:
    loop = _run(lambda p: EGAdamW(p, foreach=False, **kwargs))
    fast = _run(lambda p: EGAdamW(p, foreach=True, **kwargs))
    for a, b in zip(loop, fast, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=0)


@pytest.mark.parametrize(
    ("optimizer", "kwargs"),
    [(EGSGD, kwargs) for kwargs in SGD_CONFIGS] + [(EGAdamW, kwargs) for kwargs in ADAMW_CONFIGS],
    ids=lambda value: value.__name__ if isinstance(value, type) else str(value),
)
def test_the_loop_gives_the_same_numbers_in_cache_sized_blocks(
    optimizer: type, kwargs: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = _run(lambda p: optimizer(p, foreach=False, **kwargs))
    # Blocks of 8: (7, 5) and (11,) end in a ragged block, (3, 4, 2) splits evenly, (1,) stays whole.
    monkeypatch.setattr(eg_module, "CPU_BLOCK", 8)
    blocked = _run(lambda p: optimizer(p, foreach=False, **kwargs))
    for a, b in zip(whole, blocked, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# The formulas of issue 3, written out independently of the kernels (one tensor, plain ops).


def _eg_sgd_reference(kwargs: dict[str, Any], steps: int = 4) -> list[Tensor]:
    lr, mu = kwargs["lr"], kwargs.get("momentum", 0.0)
    tau, wd = kwargs.get("dampening", 0.0), kwargs.get("weight_decay", 0.0)
    nesterov, floor = kwargs.get("nesterov", False), kwargs.get("floor", 1e-18)
    ws = [p.detach().clone() for p in _params()]
    bufs: list[Tensor | None] = [None] * len(ws)
    for step in range(steps):
        for i, g in enumerate(_tensors(100 + step)):
            g = -g if kwargs.get("maximize", False) else g
            s = torch.sign(ws[i])
            d = g + wd * s
            if mu:
                bufs[i] = d.clone() if bufs[i] is None else mu * bufs[i] + (1 - tau) * d
                d = d + mu * bufs[i] if nesterov else bufs[i]
            w = ws[i] * torch.exp(-lr * s * d)
            ws[i] = s * torch.maximum(w.abs(), torch.tensor(floor, dtype=w.dtype)) if floor else w
    return ws


def _eg_adamw_reference(kwargs: dict[str, Any], steps: int = 4) -> list[Tensor]:
    lr, wd = kwargs["lr"], kwargs.get("weight_decay", 1e-2)
    (b1, b2), eps = kwargs.get("betas", (0.9, 0.999)), kwargs.get("eps", 1e-8)
    floor = kwargs.get("floor", 1e-18)
    ws = [p.detach().clone() for p in _params()]
    ms = [torch.zeros_like(w) for w in ws]
    vs = [torch.zeros_like(w) for w in ws]
    for t in range(1, steps + 1):
        for i, g in enumerate(_tensors(100 + t - 1)):
            g = -g if kwargs.get("maximize", False) else g
            w = ws[i] * (1 - lr * wd)
            ms[i] = b1 * ms[i] + (1 - b1) * g
            vs[i] = b2 * vs[i] + (1 - b2) * g * g
            bc1, bc2 = 1 - b1**t, 1 - b2**t
            s = torch.sign(w)
            w = w * torch.exp(-(lr / bc1) * s * ms[i] / (torch.sqrt(vs[i] / bc2) + eps))
            ws[i] = s * torch.maximum(w.abs(), torch.tensor(floor, dtype=w.dtype)) if floor else w
    return ws


@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
@pytest.mark.parametrize("kwargs", SGD_CONFIGS, ids=str)
def test_eg_sgd_equals_the_issue_formula(kwargs: dict[str, Any], foreach: bool) -> None:
    got = _run(lambda p: EGSGD(p, foreach=foreach, **kwargs))
    for a, b in zip(got, _eg_sgd_reference(kwargs), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
@pytest.mark.parametrize("kwargs", ADAMW_CONFIGS, ids=str)
def test_eg_adamw_equals_the_issue_formula(kwargs: dict[str, Any], foreach: bool) -> None:
    got = _run(lambda p: EGAdamW(p, foreach=foreach, **kwargs))
    for a, b in zip(got, _eg_adamw_reference(kwargs), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


def test_floor_keeps_weights_off_zero_and_exact_zeros_stay_zero() -> None:
    params = _params()
    opt = EGSGD(params, lr=1.0)
    for p in params:
        p.grad = torch.full_like(p, 1e3).mul_(p.sign())  # drives every |w| towards 0, hard
    opt.step()
    flat = torch.cat([p.detach().flatten() for p in params])
    assert float(params[0].detach()[0, 0]) == 0.0
    nonzero = flat[flat != 0]
    assert torch.all(nonzero.abs() == 1e-18)
    diag = opt.diagnostics()
    assert diag["rule/sign_flips"] == 0
    assert diag["rule/at_floor"] == pytest.approx(len(nonzero) / len(flat))


def test_without_floor_a_weight_can_underflow_as_in_the_reference() -> None:
    w = torch.nn.Parameter(torch.tensor([1e-30, 1.0], dtype=torch.float32))
    w.grad = torch.tensor([1e3, 0.0])
    EGSGD([w], lr=1.0, floor=0.0).step()
    assert w.detach().tolist() == [0.0, 1.0]


def test_sgd_signed_stops_a_crossing_step_at_a_tiny_value_of_the_old_sign() -> None:
    w = torch.nn.Parameter(torch.tensor([0.5, -0.5, 0.5, 0.0], dtype=torch.float64))
    w.grad = torch.tensor([1.0, -1.0, 0.1, 1.0], dtype=torch.float64)
    opt = SGDSigned([w], lr=1.0, floor=1e-18)
    opt.step()
    # Crossed: kept at ±floor. Not crossed: plain SGD. Exact zero: no sign, moves freely.
    assert w.detach().tolist() == [1e-18, -1e-18, 0.4, -1.0]
    assert opt.diagnostics()["rule/sign_flips"] == 0
    assert opt.diagnostics()["rule/at_floor"] == 0.5


def test_sgd_signed_equals_torch_sgd_when_no_sign_would_change() -> None:
    params, ref = _params(), _params()
    ours = SGDSigned(params, lr=1e-3, momentum=0.9, nesterov=True)
    theirs = torch.optim.SGD(ref, lr=1e-3, momentum=0.9, nesterov=True)
    for step in range(3):
        for p, q, g in zip(params, ref, _tensors(100 + step), strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
    # params[1][0] starts at 1e-30 and crosses zero; every other weight moves exactly as under SGD.
    torch.testing.assert_close(params[1].detach()[1:], ref[1].detach()[1:], rtol=0, atol=0)
    for i in (0, 2, 3):
        torch.testing.assert_close(params[i].detach(), ref[i].detach(), rtol=0, atol=0)
    assert float(params[1].detach()[0]) > 0 > float(ref[1].detach()[0])


def test_sign_flips_are_counted_since_the_previous_diagnostics_call() -> None:
    w = torch.nn.Parameter(torch.tensor([1.0, -1.0, 2.0]))
    opt = EGSGD([w], lr=0.1)
    w.grad = torch.zeros(3)
    opt.step()
    with torch.no_grad():
        w.mul_(torch.tensor([-1.0, -1.0, 1.0]))  # someone else flips two signs
    assert opt.diagnostics()["rule/sign_flips"] == 2
    assert opt.diagnostics()["rule/sign_flips"] == 0


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: EGSGD(p, lr=-1.0), r"Invalid lr: -1.0 \(expected > 0\)"),
        (lambda p: EGSGD(p, momentum=-0.1), "Invalid momentum: -0.1"),
        (lambda p: EGSGD(p, momentum=1.0), r"Invalid momentum: 1.0 \(expected 0 <= momentum < 1\)"),
        (lambda p: EGSGD(p, floor=-1.0), "Invalid floor"),
        (lambda p: EGSGD(p, nesterov=True), r"Invalid nesterov: True \(expected momentum > 0, dampening 0\)"),
        (lambda p: EGAdamW(p, betas=(1.0, 0.9)), "Invalid betas"),
        (lambda p: EGAdamW(p, lr=1.0, weight_decay=1.0), r"Invalid lr \* weight_decay"),
        (lambda p: EGAdamW(p, eps=-1.0), "Invalid eps"),
        (lambda p: SGDSigned(p, floor=-1.0), "Invalid floor"),
        (lambda p: SGDSigned(p, lr=-1.0), "Invalid lr"),
        (lambda p: SGDSigned(p, momentum=1.5), "Invalid momentum"),
    ],
)
def test_constructors_refuse_bad_arguments(make: Callable[[Any], Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make(_params())


def test_optimizers_refuse_sparse_and_complex_tensors() -> None:
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3).to_sparse()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        EGSGD([p]).step()
    with pytest.raises(ValueError, match="needs real parameters"):
        EGAdamW([torch.nn.Parameter(torch.ones(2, dtype=torch.complex64))])


@pytest.mark.parametrize(
    "make",
    [lambda p: EGSGD(p, lr=0.2, momentum=0.9), lambda p: EGAdamW(p, lr=0.05)],
    ids=["eg_sgd", "eg_adamw"],
)
def test_state_dict_round_trip_reproduces_the_next_step(make: Callable[[Any], torch.optim.Optimizer]) -> None:
    params = _params()
    opt = make(params)
    for step in range(3):
        for p, g in zip(params, _tensors(100 + step), strict=True):
            p.grad = g.clone()
        opt.step()
    saved_params = [p.detach().clone() for p in params]
    saved_state = copy.deepcopy(opt.state_dict())
    grads = _tensors(200)
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    opt.step()

    params2 = [torch.nn.Parameter(t.clone()) for t in saved_params]
    opt2 = make(params2)
    opt2.load_state_dict(saved_state)
    for p, g in zip(params2, grads, strict=True):
        p.grad = g.clone()
    opt2.step()
    for a, b in zip(params, params2, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("task", "rule", "hparams"),
    [
        ("sparse_signal", "eg_sgd", {"lr": 1.0}),
        ("pruning", "eg_sgd", {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}),
        ("pruning", "eg_adamw", {"lr": 0.01}),
        ("pruning", "sgd_signed", {"lr": 0.1, "momentum": 0.9}),
    ],
)
def test_no_sign_changes_over_a_full_training_run(task: str, rule: str, hparams: dict[str, Any]) -> None:
    result = train.run(
        make_spec(task=task, rule=rule, hparams=hparams, steps=80, eval_every=40), device=torch.device("cpu")
    )
    assert result.status == "ok"
    assert result.final["weights/sign_flips"] == 0.0
    assert all(p.metrics["rule/sign_flips"] == 0.0 for p in result.curve[1:])
    assert result.curve[-1].metrics["train/loss"] < result.curve[1].metrics["train/loss"]


def test_sgd_changes_signs_on_the_same_run() -> None:
    """The check above can fail: plain SGD does flip signs on the same task."""
    result = train.run(
        make_spec(task="pruning", rule="sgd", hparams={"lr": 0.1}, steps=80, eval_every=40),
        device=torch.device("cpu"),
    )
    assert result.final["weights/sign_flips"] > 0.0


@pytest.mark.parametrize("name", ["eg_sgd", "eg_adamw", "sgd_signed"])
def test_registered_with_defaults_a_prepare_and_error_cases(name: str) -> None:
    rule = RULES.get(name)
    assert rule.prepare is not None
    assert rule.error_cases
    assert rule.hparams().split_bias is True  # type: ignore[attr-defined]
    defaults = rule.defaults()
    assert defaults["floor"] == 1e-18
    assert defaults["init"] == "default"
    if name == "eg_adamw":
        assert (defaults["lr"], defaults["weight_decay"], defaults["eps"]) == (1e-3, 1e-2, 1e-8)
        assert tuple(defaults["betas"]) == (0.9, 0.999)
    else:
        assert (defaults["momentum"], defaults["dampening"], defaults["nesterov"]) == (0.0, 0.0, False)


def test_exp_of_the_step_is_the_only_change_in_magnitude() -> None:
    """One EG step multiplies |w| by exactly exp(−lr·sign(w)·g): a log-space gradient step."""
    w = torch.nn.Parameter(torch.tensor([0.3, -0.7], dtype=torch.float64))
    w.grad = torch.tensor([0.2, 0.5], dtype=torch.float64)
    EGSGD([w], lr=0.5).step()
    expected = [math.log(0.3) - 0.5 * 0.2, math.log(0.7) + 0.5 * 0.5]
    assert torch.log(w.detach().abs()).tolist() == pytest.approx(expected, rel=1e-14)


# Fidelity to the reference (linclab/EG_optimiser) and the one-place validation.


def test_eg_sgd_compiled_without_momentum_steps() -> None:
    """The compiled kernel once indexed a momentum buffer that exists only with momentum (IndexError)."""
    got = _run(lambda p: EGSGD(p, lr=0.3, fused=True), steps=2)
    for a, b in zip(got, _eg_sgd_reference({"lr": 0.3}, steps=2), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=0)


@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
def test_eg_adamw_keeps_an_exact_zero_at_zero_at_large_lr(foreach: bool) -> None:
    """The reference multiplies the exponent by sign(0) = 0; a zero weight once became 0·exp(800) = NaN."""
    w = torch.nn.Parameter(torch.tensor([0.0, 0.5], dtype=torch.float64))
    w.grad = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    EGAdamW([w], lr=800.0, weight_decay=0.0, foreach=foreach).step()
    assert w.detach().tolist() == [0.0, 1e-18]


def test_eg_adamw_amsgrad_step_equals_the_reference_formula() -> None:
    """One step from a state whose running maximum exceeds the new second moment (adamw_eg.py's amsgrad)."""
    gen = torch.Generator().manual_seed(5)
    w, g = (
        torch.randn(20, generator=gen, dtype=torch.float64),
        torch.randn(20, generator=gen, dtype=torch.float64),
    )
    m, v = (
        torch.randn(20, generator=gen, dtype=torch.float64),
        torch.rand(20, generator=gen, dtype=torch.float64),
    )
    v_max = v + torch.rand(20, generator=gen, dtype=torch.float64)
    lr, b1, b2, eps, wd, t = 0.05, 0.8, 0.99, 1e-8, 0.1, 3
    inputs = [x.clone() for x in (w, g, m, v, v_max)]
    new_w, new_m, new_v, new_max = eg_adamw_update(
        w, g, m, v, v_max, lr=lr, beta1=b1, beta2=b2, eps=eps, weight_decay=wd, step=t, floor=0.0
    )
    # The reference, written out: decay, moments, the running maximum, and the exponentiated step.
    ref_w = w * (1 - lr * wd)
    ref_m, ref_v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
    ref_max = torch.maximum(v_max, ref_v)
    denom = ref_max.sqrt() / (1 - b2**t) ** 0.5 + eps
    ref_w = ref_w * torch.exp(-lr / (1 - b1**t) * ref_w.sign() * ref_m / denom)
    for got, want in [(new_w, ref_w), (new_m, ref_m), (new_v, ref_v), (new_max, ref_max)]:
        torch.testing.assert_close(got, want, rtol=1e-13, atol=0)
    assert bool((ref_max > ref_v).any())  # the maximum, not v, is what divides
    for before, after in zip(inputs, (w, g, m, v, v_max), strict=True):
        assert torch.equal(before, after)  # the update is pure


@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
def test_eg_adamw_amsgrad_optimizer_equals_the_pure_update(foreach: bool) -> None:
    params = _params()
    opt = EGAdamW(params, lr=0.05, amsgrad=True, foreach=foreach)
    ws = [p.detach().clone() for p in params]
    ms, vs, maxes = ([torch.zeros_like(w) for w in ws] for _ in range(3))
    for step in range(1, 4):
        grads = [g * (4.0 - step) for g in _tensors(100 + step)]  # shrinking, so v falls below its max
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        opt.step()
        for i, g in enumerate(grads):
            ws[i], ms[i], vs[i], maxes[i] = eg_adamw_update(  # type: ignore[assignment]
                ws[i], g, ms[i], vs[i], maxes[i], lr=0.05, beta1=0.9, beta2=0.999, eps=1e-8,
                weight_decay=1e-2, step=step, floor=1e-18,
            )  # fmt: skip
    for p, w in zip(params, ws, strict=True):
        torch.testing.assert_close(p.detach(), w, rtol=1e-14, atol=0)


def test_the_update_takes_tensor_hyperparameters_that_broadcast() -> None:
    """Two runs stacked along a leading axis, each with its own lr and decay, equal two separate runs."""
    gen = torch.Generator().manual_seed(1)
    w, g, b = (torch.randn(2, 6, generator=gen, dtype=torch.float64) for _ in range(3))
    lr, wd = (
        torch.tensor([[0.1], [0.7]], dtype=torch.float64),
        torch.tensor([[0.0], [0.2]], dtype=torch.float64),
    )
    hyper: dict[str, Any] = {"momentum": 0.9, "dampening": 0.0, "nesterov": True, "floor": 1e-18}
    batched, buf = eg_sgd_update(w, g, b, lr=lr, weight_decay=wd, **hyper)
    for r in range(2):
        one, one_buf = eg_sgd_update(w[r], g[r], b[r], lr=float(lr[r]), weight_decay=float(wd[r]), **hyper)
        torch.testing.assert_close(batched[r], one, rtol=1e-15, atol=0)
        assert buf is not None
        assert one_buf is not None
        torch.testing.assert_close(buf[r], one_buf, rtol=1e-15, atol=0)


@pytest.mark.parametrize(
    ("rule", "hparams"),
    [
        ("eg_sgd", {"momentum": 1.0}),
        ("eg_sgd", {"momentum": -0.1}),
        ("eg_sgd", {"dampening": 1.5}),
        ("eg_sgd", {"nesterov": True, "momentum": 0.9, "dampening": 0.1}),
        ("sgd_signed", {"momentum": 1.0}),
        ("sgd_signed", {"lr": 0.0}),
        ("eg_adamw", {"lr": 2.0, "weight_decay": 0.5}),
        ("eg_adamw", {"betas": (0.9, 1.0)}),
        ("eg_adamw", {"eps": -1.0}),
    ],
)
def test_suite_files_and_constructors_refuse_the_same_values_with_the_same_message(
    rule: str, hparams: dict[str, Any]
) -> None:
    info = RULES.get(rule)
    with pytest.raises(ValueError, match="Invalid") as from_model:
        info.hparams(**hparams)
    optimizer = {"eg_sgd": EGSGD, "sgd_signed": SGDSigned, "eg_adamw": EGAdamW}[rule]
    with pytest.raises(ValueError, match="Invalid") as from_constructor:
        optimizer(_params(), **hparams)
    assert str(from_constructor.value) in str(from_model.value)
