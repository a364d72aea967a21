"""Sign-preserving model preparation for Dale's-law rules: split biases and a log-normal initialisation.

A rule that never changes a parameter's sign (EG, sign-constrained SGD) needs every parameter to
*have* a fixed sign. Weights have one from their initialisation; a bias does not, since one bias
may need to be positive for some inputs and negative for others. :func:`split_biases` therefore
replaces each bias ``b`` by ``b₊ + b₋`` with ``b₊ ≥ 0`` and ``b₋ ≤ 0`` held apart by the rule.

:func:`lognormal_init_` draws weight magnitudes from a log-normal with random signs, the
distribution EG is claimed to produce, so a suite can ask whether the init or the rule matters.

Both follow ``optim_eg/init_tools.py`` of the authors' repository, github.com/linclab/EG_optimiser
(commit 9e720ae), for Cornford, Pogodin et al. (2024), "Brain-like learning with exponentiated
gradients", bioRxiv 10.1101/2024.10.25.620272; the code is ours. Everything draws from the
``generator`` passed in, so a prepared model is a pure function of the run's init seed.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from benchmark.rules.base import HParams

Nonlinearity = Literal["relu", "linear", "tanh", "sigmoid"]

# Norm layers have 1-D weights and no fan-in; the reference gives their split bias this scale.
NORM_BIAS_SCALE = 1e-4

_CHANNEL_FIRST = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.GroupNorm)
_CHANNEL_LAST = (nn.Linear, nn.Bilinear, nn.LayerNorm)


class SignSplitHParams(HParams):
    """The model-preparation options shared by the sign-preserving rules.

    Attributes:
        split_bias: replace each bias by a non-negative plus a non-positive part, so that every
            parameter has a fixed sign (default True).
        init: ``"default"`` keeps the task's initialisation; ``"lognormal"`` re-draws every Linear
            and Conv weight with :func:`lognormal_init_`.
        init_mean_std_ratio: mean/std of the log-normal magnitudes (default 1.5, the reference's).
        init_nonlinearity: the nonlinearity whose ``torch.nn.init.calculate_gain`` scales the
            log-normal init (default ``"relu"``, gain √2).
    """

    split_bias: bool = True
    init: Literal["default", "lognormal"] = "default"
    init_mean_std_ratio: Annotated[float, Field(gt=0)] = 1.5
    init_nonlinearity: Nonlinearity = "relu"


class SplitBias(nn.Module):
    """A layer whose bias is the sum of a non-negative and a non-positive parameter.

    The wrapped layer keeps its weight (under ``base_layer``) and loses its bias; ``forward`` adds
    ``bias_pos + bias_neg`` on the layer's channel dimension. State-dict keys are
    ``base_layer.weight``, ``bias_pos`` and ``bias_neg``, as in the reference.
    """

    def __init__(self, base_layer: nn.Module, generator: torch.Generator) -> None:
        super().__init__()
        bias = getattr(base_layer, "bias", None)
        if not isinstance(bias, Tensor):
            raise ValueError(f"SplitBias needs a layer with a bias, got {type(base_layer).__name__}")
        if isinstance(base_layer, _CHANNEL_FIRST):
            self.channel_dim = 1
        elif isinstance(base_layer, _CHANNEL_LAST):
            self.channel_dim = -1
        else:
            raise ValueError(
                f"split_bias does not know where the bias of a {type(base_layer).__name__} is added; "
                "supported: Linear, Bilinear, LayerNorm, Conv*, BatchNorm*, GroupNorm"
            )
        scale = _bias_scale(base_layer)
        shape, dtype, device = bias.shape, bias.dtype, bias.device
        # U(0, √2·b) + U(−√2·b, 0) has the variance of U(−b, b), torch's default bias init.
        pos = torch.rand(shape, generator=generator, dtype=dtype).mul_(math.sqrt(2) * scale)
        neg = torch.rand(shape, generator=generator, dtype=dtype).mul_(-math.sqrt(2) * scale)
        del base_layer.bias
        base_layer.register_parameter("bias", None)
        self.base_layer = base_layer
        self.bias_pos = nn.Parameter(pos.to(device))
        self.bias_neg = nn.Parameter(neg.to(device))

    def forward(self, *inputs: Tensor) -> Tensor:
        out: Tensor = self.base_layer(*inputs)
        bias = self.bias_pos + self.bias_neg
        if self.channel_dim == 1 and out.dim() > 2:
            bias = bias.view(-1, *([1] * (out.dim() - 2)))
        return out + bias


def _bias_scale(layer: nn.Module) -> float:
    weight = getattr(layer, "weight", None)
    if isinstance(weight, Tensor) and weight.dim() >= 2:
        return 1.0 / math.sqrt(weight[0].numel())  # 1/√fan_in, torch's default bias bound
    return NORM_BIAS_SCALE


def split_biases(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Replace, recursively and in place, every layer with a bias by a :class:`SplitBias` of it.

    Returns the model (a new top-level :class:`SplitBias` if ``model`` itself is such a layer).
    Parameters with "bias" in their name that are not a layer's ``bias`` (e.g. an RNN's
    ``bias_ih``) are refused, naming the parameter, rather than left with a free sign.

    Raises:
        ValueError: a bias the function cannot split.
    """
    if isinstance(model, SplitBias):
        return model
    if isinstance(getattr(model, "bias", None), Tensor):
        return SplitBias(model, generator)
    for name, child in list(model.named_children()):
        setattr(model, name, split_biases(child, generator))
    for name, _ in model.named_parameters(recurse=False):
        if "bias" in name:
            raise ValueError(f"split_bias cannot split parameter {name!r} of {type(model).__name__}")
    return model


def lognormal_(
    tensor: Tensor,
    generator: torch.Generator,
    gain: float = 1.0,
    mode: Literal["fan_in", "fan_out"] = "fan_out",
    mean_std_ratio: float = 1.5,
) -> Tensor:
    """Fill ``tensor`` with log-normal magnitudes times independent random signs, in place.

    With ``std = gain/√fan/√(1+r²)`` and ``r = mean_std_ratio``, the magnitudes have mean ``r·std``
    and standard deviation ``std``, so ``E[w²] = gain²/fan`` as for Kaiming init; the log-normal's
    shape ``σ = √ln(1 + 1/r²)`` does not depend on the fan (0.6064 for r = 1.5).

    Args:
        tensor: a weight with at least two dimensions (``out, in, *kernel``).
        generator: the source of randomness.
        gain: the nonlinearity's gain (``torch.nn.init.calculate_gain``).
        mode: ``"fan_out"`` (the reference's choice for whole networks) or ``"fan_in"``.
        mean_std_ratio: ``r`` above.
    """
    if tensor.dim() < 2:
        raise ValueError(f"lognormal_ needs a weight of 2 or more dimensions, got {tuple(tensor.shape)}")
    if mean_std_ratio <= 0:
        raise ValueError(f"Invalid mean_std_ratio: {mean_std_ratio}")
    receptive = math.prod(tensor.shape[2:])
    fan = tensor.shape[0] * receptive if mode == "fan_out" else tensor.shape[1] * receptive
    std = gain / math.sqrt(fan) / math.sqrt(1 + mean_std_ratio**2)
    mean = mean_std_ratio * std
    mu = math.log(mean**2 / math.sqrt(mean**2 + std**2))
    sigma = math.sqrt(math.log(1 + std**2 / mean**2))
    normal = torch.randn(tensor.shape, generator=generator, dtype=torch.float64)
    signs = torch.randint(0, 2, tensor.shape, generator=generator, dtype=torch.int8).mul_(2).sub_(1)
    with torch.no_grad():
        tensor.copy_(normal.mul_(sigma).add_(mu).exp_().mul_(signs))
    return tensor


def lognormal_init_(
    model: nn.Module, generator: torch.Generator, gain: float = 1.0, mean_std_ratio: float = 1.5
) -> nn.Module:
    """Re-draw every Linear and Conv weight of ``model`` with :func:`lognormal_` (fan-out); biases stay."""
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.modules.conv._ConvNd):
            lognormal_(module.weight, generator, gain=gain, mode="fan_out", mean_std_ratio=mean_std_ratio)
    return model


def prepare_sign_split(model: nn.Module, generator: torch.Generator, hparams: SignSplitHParams) -> nn.Module:
    """``RuleInfo.prepare`` of the sign-preserving rules: optional log-normal init, then split biases."""
    if hparams.init == "lognormal":
        gain = nn.init.calculate_gain(hparams.init_nonlinearity)
        lognormal_init_(model, generator, gain=gain, mean_std_ratio=hparams.init_mean_std_ratio)
    if hparams.split_bias:
        model = split_biases(model, generator)
    return model


def check_nonzero(model: nn.Module, max_zero_fraction: float = 0.01) -> None:
    """Refuse a model that an EG rule could never train: a parameter that is mostly exact zeros.

    Under EG an exact zero has no sign and stays zero forever. A few zeros drawn by chance are
    harmless (they act as absent synapses); a zero-initialised layer is a silent failure.

    Raises:
        ValueError: naming the first parameter with more than ``max_zero_fraction`` zeros.
    """
    for name, param in model.named_parameters():
        zeros = int((param == 0).sum())
        if param.numel() and zeros > max_zero_fraction * param.numel():
            raise ValueError(
                f"EG cannot train parameter {name!r}: {zeros} of {param.numel()} entries are exactly 0 "
                "and would stay 0; give it a nonzero init (e.g. init='lognormal')"
            )
