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
from benchmark.rules.eg import EGSGD, EGAdamW, SGDSigned, eg_adamw, eg_sgd
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
        (EGAdamW, {"lr": 0.05, "weight_decay": 0.1, "betas": (0.8, 0.99)}),
    ],
    ids=["eg_sgd", "eg_adamw"],
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


def test_sign_flips_diagnostic_counts_flips_of_the_last_step() -> None:
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
        (lambda p: EGSGD(p, lr=-1.0), "Invalid learning rate"),
        (lambda p: EGSGD(p, momentum=-0.1), "Invalid momentum value"),
        (lambda p: EGSGD(p, floor=-1.0), "Invalid floor value"),
        (lambda p: EGSGD(p, nesterov=True), "Nesterov momentum requires a momentum and zero dampening"),
        (lambda p: EGAdamW(p, betas=(1.0, 0.9)), "Invalid beta parameter at index 0"),
        (lambda p: EGAdamW(p, lr=1.0, weight_decay=1.0), r"Invalid lr \* weight_decay"),
        (lambda p: EGAdamW(p, eps=-1.0), "Invalid epsilon value"),
        (lambda p: SGDSigned(p, floor=-1.0), "Invalid floor value"),
        (lambda p: SGDSigned(p, lr=-1.0), "Invalid learning rate"),
    ],
)
def test_constructors_refuse_bad_arguments(make: Callable[[Any], Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make(_params())


def test_functionals_refuse_sparse_and_complex_tensors() -> None:
    p = torch.ones(3)
    with pytest.raises(RuntimeError, match="sparse"):
        eg_sgd(
            [p],
            [torch.ones(3).to_sparse()],
            [None],
            lr=0.1,
            momentum=0,
            dampening=0,
            weight_decay=0,
            nesterov=False,
            floor=0,
        )
    c = torch.ones(2, dtype=torch.complex64)
    with pytest.raises(RuntimeError, match="real parameters"):
        eg_adamw(
            [c],
            [c],
            [c],
            [c],
            [torch.tensor(0.0)],
            lr=0.1,
            beta1=0.9,
            beta2=0.99,
            eps=1e-8,
            weight_decay=0,
            floor=0,
        )


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
