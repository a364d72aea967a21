"""Sign-preserving model preparation: split biases and the log-normal initialisation."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats
from torch import nn

from benchmark import train
from benchmark.rules import RULES
from benchmark.rules.eg import EGSGD
from benchmark.rules.sign_split import (
    NORM_BIAS_SCALE,
    SignSplitHParams,
    SplitBias,
    check_nonzero,
    lognormal_,
    prepare_sign_split,
    split_biases,
)
from tests.helpers import make_spec

pytestmark = pytest.mark.usefixtures("one_thread")


def _net() -> nn.Module:
    torch.manual_seed(0)
    conv = [nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten()]
    return nn.Sequential(*conv, nn.Linear(128, 10), nn.LayerNorm(10))


def test_split_biases_wraps_every_bias_with_fixed_signs_and_keeps_the_function_shape() -> None:
    model = split_biases(_net(), torch.Generator().manual_seed(0))
    names = dict(model.named_parameters())
    assert set(names) == {
        "0.base_layer.weight", "0.bias_pos", "0.bias_neg",
        "1.base_layer.weight", "1.bias_pos", "1.bias_neg",
        "4.base_layer.weight", "4.bias_pos", "4.bias_neg",
        "5.base_layer.weight", "5.bias_pos", "5.bias_neg",
    }  # fmt: skip
    assert not any(name.endswith(".bias") for name in model.state_dict())
    for name, p in names.items():
        if name.endswith("bias_pos"):
            assert torch.all(p >= 0)
        if name.endswith("bias_neg"):
            assert torch.all(p <= 0)
    out = model(torch.randn(2, 3, 6, 6))
    assert out.shape == (2, 10)
    # The summed bias is what the layer adds: a conv's per channel, a linear's per unit.
    conv = model[0]
    assert isinstance(conv, SplitBias)
    x = torch.randn(1, 3, 6, 6)
    bias = (conv.bias_pos + conv.bias_neg).view(-1, 1, 1)
    expected = nn.functional.conv2d(x, conv.base_layer.weight) + bias
    torch.testing.assert_close(conv(x), expected)


def test_split_bias_init_has_the_variance_of_torchs_default_bias() -> None:
    layer = split_biases(nn.Linear(25, 20_000), torch.Generator().manual_seed(1))
    assert isinstance(layer, SplitBias)
    b = 1 / math.sqrt(25)
    assert float(layer.bias_pos.detach().max()) <= math.sqrt(2) * b
    assert float(layer.bias_neg.detach().min()) >= -math.sqrt(2) * b
    total = (layer.bias_pos + layer.bias_neg).detach()
    assert float(total.var()) == pytest.approx(b**2 / 3, rel=0.05)  # Var U(−b, b)
    norm = split_biases(nn.LayerNorm(4), torch.Generator().manual_seed(1))
    assert float(norm.bias_pos.detach().max()) <= math.sqrt(2) * NORM_BIAS_SCALE  # type: ignore[operator]


def test_split_biases_is_a_pure_function_of_the_generator() -> None:
    a = split_biases(_net(), torch.Generator().manual_seed(3)).state_dict()
    b = split_biases(_net(), torch.Generator().manual_seed(3)).state_dict()
    c = split_biases(_net(), torch.Generator().manual_seed(4)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["0.bias_pos"], c["0.bias_pos"])


def test_split_biases_refuses_biases_it_cannot_place() -> None:
    with pytest.raises(ValueError, match="bias_ih"):
        split_biases(nn.Sequential(nn.RNNCell(3, 4)), torch.Generator())
    with pytest.raises(ValueError, match="needs a layer with a bias"):
        SplitBias(nn.Embedding(3, 2), torch.Generator())

    class Shift(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bias = nn.Parameter(torch.zeros(3))

    with pytest.raises(ValueError, match="does not know where the bias of a Shift is added"):
        split_biases(nn.Sequential(Shift()), torch.Generator())


def test_split_biases_keep_their_signs_under_eg() -> None:
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    model = split_biases(net, torch.Generator().manual_seed(0))
    opt = EGSGD(model.parameters(), lr=0.5, momentum=0.9)
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    start = {k: v.sign().clone() for k, v in model.state_dict().items()}
    for _ in range(100):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    for key, value in model.state_dict().items():
        assert torch.equal(value.sign(), start[key]), key


def test_lognormal_init_matches_the_reference_moments() -> None:
    gen = torch.Generator().manual_seed(0)
    w = lognormal_(torch.empty(300, 400), gen, gain=math.sqrt(2), mode="fan_out", mean_std_ratio=1.5)
    magnitudes = w.abs().double()
    assert float(magnitudes.mean() / magnitudes.std()) == pytest.approx(1.5, rel=0.02)
    assert float((w.double() ** 2).mean()) == pytest.approx(2 / 300, rel=0.02)  # E[w²] = gain²/fan_out
    assert float((w > 0).double().mean()) == pytest.approx(0.5, abs=0.01)
    logs = magnitudes.log()
    assert float(logs.std()) == pytest.approx(math.sqrt(math.log(1 + 1 / 1.5**2)), rel=0.02)  # σ = 0.6064
    z = ((logs - logs.mean()) / logs.std()).flatten().numpy()
    assert stats.kstest(z, "norm").statistic < 0.01
    fan_in = lognormal_(torch.empty(300, 400), gen, gain=1.0, mode="fan_in")
    assert float((fan_in.double() ** 2).mean()) == pytest.approx(1 / 400, rel=0.02)


def test_lognormal_refuses_vectors_and_bad_ratios() -> None:
    with pytest.raises(ValueError, match="2 or more dimensions"):
        lognormal_(torch.empty(5), torch.Generator())
    with pytest.raises(ValueError, match="mean_std_ratio"):
        lognormal_(torch.empty(5, 5), torch.Generator(), mean_std_ratio=0)


def test_prepare_applies_the_options_deterministically() -> None:
    hp = SignSplitHParams(init="lognormal", split_bias=True)
    a = prepare_sign_split(_net(), torch.Generator().manual_seed(0), hp).state_dict()
    b = prepare_sign_split(_net(), torch.Generator().manual_seed(0), hp).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    weight = a["4.base_layer.weight"]
    assert float((weight.double() ** 2).mean()) == pytest.approx(2 / 10, rel=0.1)  # fan_out 10, ReLU gain
    plain = prepare_sign_split(_net(), torch.Generator(), SignSplitHParams(split_bias=False))
    assert torch.equal(plain.state_dict()["4.weight"], _net().state_dict()["4.weight"])


def test_eg_prepare_refuses_a_zero_initialised_layer() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    nn.init.zeros_(model[1].weight)
    with pytest.raises(ValueError, match=r"'1.weight'.*exactly 0"):
        check_nonzero(model)
    with pytest.raises(ValueError, match="exactly 0"):
        RULES.get("eg_sgd").prepare(model, torch.Generator(), RULES.get("eg_sgd").hparams())  # type: ignore[misc]


def test_a_suite_can_compare_inits() -> None:
    """The same run with init=lognormal starts from other weights and still keeps every sign."""
    hparams = {"lr": 0.1, "momentum": 0.9}
    base = make_spec(task="pruning", rule="eg_sgd", hparams=hparams, steps=30, eval_every=30)
    lognormal = {**hparams, "init": "lognormal"}
    logn = make_spec(task="pruning", rule="eg_sgd", hparams=lognormal, steps=30, eval_every=30)
    assert base.run_id != logn.run_id
    a = train.run(base, device=torch.device("cpu"))
    b = train.run(logn, device=torch.device("cpu"))
    assert a.status == b.status == "ok"
    assert b.final["weights/sign_flips"] == 0.0
    assert b.curve[0].metrics["test/loss"] != a.curve[0].metrics["test/loss"]
