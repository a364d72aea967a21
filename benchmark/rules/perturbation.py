"""Zeroth-order rules that own the step: antithetic weight perturbation and node perturbation.

Both estimate the gradient from two loss evaluations under opposite random perturbations
(García Fernández, Ahmad & van Gerven 2025, https://arxiv.org/abs/2510.18812; Werfel, Xie & Seung,
"Learning curves for stochastic gradient descent in linear feedforward networks", Neural Computation 2005):

.. math::

    \\hat g = \\frac{L(θ+ξ) - L(θ-ξ)}{2σ^2}\\,ξ,\\qquad ξ \\sim N(0, σ^2 I_d).

For a quadratic loss the central difference is exactly ``gᵀξ``, so ``E ĝ = g`` and
``E‖ĝ‖² = (d + 2)‖g‖²``: the estimate is unbiased and its noise grows with the number ``d`` of perturbed
coordinates, which is why node perturbation (``d`` = batch × units) beats weight perturbation
(``d`` = parameters) on wide layers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any

import torch
from optuna.distributions import FloatDistribution
from pydantic import Field
from torch import Tensor, nn

from benchmark.rules.base import ErrorCase, HParams, RuleInfo
from benchmark.rules.support import task_model
from benchmark.types import Batch, LossFn

if TYPE_CHECKING:
    from benchmark.tasks.base import TaskInfo


class PerturbationHParams(HParams):
    lr: Annotated[float, Field(gt=0)] = 0.01
    sigma: Annotated[float, Field(gt=0)] = 1e-3


class NodePerturbationHParams(PerturbationHParams):
    # The perturbed dimension is batch × units (2688 on digits_mlp at batch 64), and 0.01 blew up there.
    lr: Annotated[float, Field(gt=0)] = 1e-3


def _rule_generator() -> torch.Generator:
    # train.run seeds the global RNG from the run's rule stream before build, so this draw is the
    # rule's own seed; afterwards the rule's noise comes only from its generator (saved in state_dict).
    return torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))))


def _noise_like(t: Tensor, sigma: float, generator: torch.Generator) -> Tensor:
    return (torch.randn(t.shape, generator=generator, dtype=t.dtype) * sigma).to(t.device)


def weight_perturbation_estimate(
    model: nn.Module, batch: Batch, loss_fn: LossFn, sigma: float, generator: torch.Generator
) -> tuple[float, list[Tensor]]:
    """``(loss, ĝ)``: the clean loss and the antithetic weight-perturbation estimate, per parameter."""
    params = [p for p in model.parameters() if p.requires_grad]
    inputs, targets = batch
    noise = [_noise_like(p, sigma, generator) for p in params]
    with torch.no_grad():
        loss = float(loss_fn(model(inputs), targets))
        for p, xi in zip(params, noise, strict=True):
            p.add_(xi)
        plus = float(loss_fn(model(inputs), targets))
        for p, xi in zip(params, noise, strict=True):
            p.sub_(2 * xi)
        minus = float(loss_fn(model(inputs), targets))
        for p, xi in zip(params, noise, strict=True):
            p.add_(xi)
    scale = (plus - minus) / (2 * sigma**2)
    return loss, [scale * xi for xi in noise]


def _linear_layers(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def node_perturbation_estimate(
    model: nn.Module, batch: Batch, loss_fn: LossFn, sigma: float, generator: torch.Generator
) -> tuple[float, dict[nn.Linear, tuple[Tensor, Tensor]], dict[nn.Linear, Tensor]]:
    """``(loss, {layer: (ĝ_W, ĝ_b)}, {layer: ĝ_h})``: node perturbation of every ``nn.Linear`` output.

    Every layer's output ``h = Wx + b`` gets ``±ξ`` (``ξ ~ N(0, σ²)``, one per sample and unit) in two
    forward passes; ``ĝ_h = (L₊ − L₋) ξ / (2σ²)``, ``ĝ_W = ĝ_hᵀ x`` with ``x`` the layer's input on the
    clean pass, and ``ĝ_b = Σ_batch ĝ_h``.
    """
    layers = _linear_layers(model)
    inputs, targets = batch
    clean_inputs: dict[nn.Linear, Tensor] = {}
    noise: dict[nn.Linear, Tensor] = {}
    sign = {"value": 0.0}

    def hook(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> Tensor:
        assert isinstance(module, nn.Linear)
        if sign["value"] == 0.0:
            clean_inputs[module] = args[0].detach()
            if module not in noise:
                noise[module] = _noise_like(output, sigma, generator)
            return output
        return output + sign["value"] * noise[module]

    handles = [layer.register_forward_hook(hook) for layer in layers]
    try:
        with torch.no_grad():
            loss = float(loss_fn(model(inputs), targets))
            sign["value"] = 1.0
            plus = float(loss_fn(model(inputs), targets))
            sign["value"] = -1.0
            minus = float(loss_fn(model(inputs), targets))
    finally:
        for handle in handles:
            handle.remove()
    scale = (plus - minus) / (2 * sigma**2)
    node_grads = {layer: scale * noise[layer] for layer in layers}
    grads: dict[nn.Linear, tuple[Tensor, Tensor]] = {}
    for layer in layers:
        gh = node_grads[layer].reshape(-1, layer.out_features)
        x = clean_inputs[layer].reshape(-1, layer.in_features)
        grads[layer] = (gh.T @ x, gh.sum(dim=0))
    return loss, grads, node_grads


class WeightPerturbation:
    """Antithetic weight perturbation: a zeroth-order estimate of the gradient, then a plain step.

    .. math::

        ξ \\sim N(0, σ^2 I_D),\\quad
        θ \\leftarrow θ - η\\,\\frac{L(θ+ξ) - L(θ-ξ)}{2σ^2}\\,ξ.

    Args:
        model: the network; every parameter with ``requires_grad`` is perturbed.
        lr: η (default 0.01).
        sigma: σ, the noise scale (default 1e-3; small enough that the central difference is
            nearly exact, large enough for float32 loss differences).

    Differences from the paper: Gaussian rather than ±σ (Bernoulli) noise; one antithetic pair per step.

    When not to use: anything with many parameters: the estimate's second moment is
    ``(D + 2)‖g‖²``, so at the best rate it is about ``D + 2`` times slower than gradient descent
    (Werfel, Xie & Seung 2005); float16 models (the loss difference drowns in round-off).

    Reference: Werfel, Xie & Seung 2005 (https://doi.org/10.1162/089976605774320539); García Fernández,
    Ahmad & van Gerven 2025 (https://arxiv.org/abs/2510.18812).
    """

    def __init__(self, model: nn.Module, lr: float = 0.01, sigma: float = 1e-3) -> None:
        if not lr > 0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not sigma > 0:
            raise ValueError(f"Invalid noise scale: {sigma}")
        self.lr, self.sigma = lr, sigma
        self.generator = _rule_generator()

    def train_step(self, model: nn.Module, batch: Batch, loss_fn: LossFn) -> dict[str, float]:
        loss, grads = weight_perturbation_estimate(model, batch, loss_fn, self.sigma, self.generator)
        with torch.no_grad():
            params = [p for p in model.parameters() if p.requires_grad]
            for p, g in zip(params, grads, strict=True):
                p.add_(g, alpha=-self.lr)
        norm = float(torch.sqrt(sum((g * g).sum() for g in grads)))  # type: ignore[arg-type]
        return {"train/loss": loss, "rule/estimate_norm": norm}

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.generator.set_state(state["generator"])


class NodePerturbation(WeightPerturbation):
    """Antithetic node perturbation: noise on linear layers' pre-activations, local outer-product updates.

    .. math::

        ξ_l \\sim N(0, σ^2),\\quad \\hat g_{h_l} = \\frac{L(ξ) - L(-ξ)}{2σ^2}\\,ξ_l,\\quad
        W_l \\leftarrow W_l - η\\,\\hat g_{h_l}^\\top x_l,\\quad
        b_l \\leftarrow b_l - η \\textstyle\\sum_{batch}\\hat g_{h_l}.

    Args:
        model: a network whose trainable parameters all belong to ``nn.Linear`` layers.
        lr: η (default 1e-3).
        sigma: σ (default 1e-3).

    Differences from the paper: all layers are perturbed at once (one antithetic pair per step), and
    the layer inputs ``x_l`` come from the clean pass.

    When not to use: models with parameters outside ``nn.Linear`` (convolutions, norms, embeddings):
    the rule is refused for them when the cell is planned; large batches × wide layers (the perturbed
    dimension is batch × units, and the noise grows with it).

    Reference: Werfel, Xie & Seung 2005 (https://doi.org/10.1162/089976605774320539).
    """

    def train_step(self, model: nn.Module, batch: Batch, loss_fn: LossFn) -> dict[str, float]:
        loss, grads, _ = node_perturbation_estimate(model, batch, loss_fn, self.sigma, self.generator)
        sq = 0.0
        with torch.no_grad():
            for layer, (gw, gb) in grads.items():
                if layer.weight.requires_grad:
                    layer.weight.add_(gw, alpha=-self.lr)
                    sq += float((gw * gw).sum())
                if layer.bias is not None and layer.bias.requires_grad:
                    layer.bias.add_(gb, alpha=-self.lr)
                    sq += float((gb * gb).sum())
        return {"train/loss": loss, "rule/estimate_norm": sq**0.5}


def build_weight_perturbation(model: nn.Module, hp: PerturbationHParams) -> WeightPerturbation:
    return WeightPerturbation(model, lr=hp.lr, sigma=hp.sigma)


def build_node_perturbation(model: nn.Module, hp: NodePerturbationHParams) -> NodePerturbation:
    return NodePerturbation(model, lr=hp.lr, sigma=hp.sigma)


def linear_layers_only(task: TaskInfo, options: Any) -> str | None:
    """Node perturbation updates ``nn.Linear`` weights and biases only; refuse other trainable parameters."""
    model = task_model(task, options)
    owned = {id(p) for layer in _linear_layers(model) for p in layer.parameters()}
    others = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in owned]
    if others:
        return f"node_perturbation updates nn.Linear layers only; {task.name} also trains {others[0]}"
    return None


_SEARCH = {"lr": FloatDistribution(1e-5, 1e-1, log=True), "sigma": FloatDistribution(1e-4, 1e-1, log=True)}
_ERRORS = (
    ErrorCase({"lr": -1.0}, r"lr: expected greater than 0"),
    ErrorCase({"sigma": 0}, r"sigma: expected greater than 0"),
)

WEIGHT_PERTURBATION = RuleInfo(
    name="weight_perturbation",
    description="Antithetic weight perturbation (zeroth order): two loss evaluations per step, no backprop.",
    hparams=PerturbationHParams,
    forward_passes=3.0,  # three forwards (clean, +ξ, −ξ) and no backward
    build=build_weight_perturbation,
    search_space=_SEARCH,
    reference="https://doi.org/10.1162/089976605774320539",
    error_cases=_ERRORS,
)

NODE_PERTURBATION = RuleInfo(
    name="node_perturbation",
    description="Antithetic node perturbation of linear layers' outputs; local outer-product updates.",
    hparams=NodePerturbationHParams,
    forward_passes=3.0,  # three forwards (clean, +ξ, −ξ) and no backward
    build=build_node_perturbation,
    search_space=_SEARCH,
    reference="https://doi.org/10.1162/089976605774320539",
    unsupported=linear_layers_only,
    error_cases=_ERRORS,
)
