"""Linear stability of gradient descent: the 2/λ_max threshold on a quadratic, and sharpness of a trained net.

Two models (option ``model``):

- ``quadratic``: ``L(θ) = ½ Σ_i h_i θ_i²``, ``h`` geometric from 1 to ``lambda_max`` over ``dim``
  coordinates, ``θ₀ ~ N(0, 1)``. The model outputs ``√h ⊙ θ`` and the loss is ``½‖output‖²`` against zero
  targets, so the Hessian is ``diag(h)`` exactly. GD at rate η gives
  ``L(t) = ½ Σ_i h_i θ_{0,i}² (1 − ηh_i)^{2t}``, reported as ``theory/loss``: it diverges exactly when
  ``η > 2/λ_max`` (``theory/diverges``), and a rule's run then ends with status ``diverged``.
  ``theory/rel_error`` is the relative gap of the measured loss to that curve (GD at ``reference_lr``
  matches it to float32 round-off).
- ``mlp``: a ``dim → width → 1`` tanh net on a fixed regression set (``samples`` Gaussian inputs, a
  random tanh teacher, ``data_seed``), ½·mean squared error, full batch. At each evaluation the top
  Hessian eigenvalue (``theory/sharpness``) is measured by power iteration on Hessian-vector products.
  Linear stability of GD (Wu & Su 2023, arXiv 2305.17490) keeps it at most ``2/η`` at a
  minimum GD can stay at; check: ``theory/sharpness_ratio = sharpness · η/2 ≤ 1.05`` at the end
  (the issue's ``2.1/lr``).

Both use ``reference_lr`` as η: the theory is of GD at that rate, so other rules read as departures.
Target: ``train/loss`` at most 1e-3 of its initial scale (``train/relative_loss ≤ 1e-3``).

When not to use: SGD's threshold involves the trace of the Hessian (Wu & Su), not λ_max; this task is
full batch, so it checks GD's condition only.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from itertools import repeat
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from benchmark.tasks.base import (
    Resources,
    Target,
    TaskData,
    TaskInfo,
    TaskOptions,
    seeded_build,
    stacked_member_bytes,
)
from benchmark.tasks.saxe import summed_squared_error
from benchmark.types import Batch

POWER_ITERATIONS = 30


class StabilityOptions(TaskOptions):
    model: Literal["quadratic", "mlp"] = "quadratic"
    dim: Annotated[int, Field(ge=1)] = 20
    lambda_max: Annotated[float, Field(gt=1, description="top Hessian eigenvalue of the quadratic")] = 10.0
    width: Annotated[int, Field(ge=1)] = 32
    samples: Annotated[int, Field(ge=1)] = 64
    reference_lr: Annotated[float, Field(gt=0)] = 0.1
    data_seed: Annotated[int, Field(ge=0)] = 0


class Quadratic(nn.Module):
    """``θ ↦ √h ⊙ θ`` for a batch of one (dummy) input: ½‖output‖² has Hessian ``diag(h)``."""

    root_h: Tensor  # a buffer, registered in __init__

    def __init__(self, curvatures: Tensor, theta: Tensor) -> None:
        super().__init__()
        self.register_buffer("root_h", curvatures.sqrt())
        self.theta = nn.Parameter(theta)

    def forward(self, x: Tensor) -> Tensor:
        return (self.root_h * self.theta).expand(x.shape[0], -1)


def curvatures(options: StabilityOptions) -> Tensor:
    """``h_i`` geometric from 1 to ``lambda_max`` (one coordinate at each end)."""
    if options.dim == 1:
        return torch.tensor([options.lambda_max])
    return torch.logspace(0.0, math.log10(options.lambda_max), options.dim)


def half_mse(output: Tensor, target: Tensor) -> Tensor:
    """``½ · mean (output − target)²``."""
    return 0.5 * (output - target).pow(2).mean()


def build_model(options: StabilityOptions, generator: torch.Generator) -> nn.Module:
    if options.model == "quadratic":
        return Quadratic(curvatures(options), torch.randn(options.dim, generator=generator))
    net = nn.Sequential(nn.Linear(options.dim, options.width), nn.Tanh(), nn.Linear(options.width, 1))
    return net


def top_hessian_eigenvalue(
    model: nn.Module, loss_fn: object, batch: Batch, iterations: int = POWER_ITERATIONS
) -> float:
    """λ_max of the loss Hessian by power iteration on Hessian-vector products (double backward)."""
    params = [p for p in model.parameters() if p.requires_grad]
    inputs, targets = batch
    with torch.enable_grad():
        loss = loss_fn(model(inputs), targets)  # type: ignore[operator]
        grads = torch.autograd.grad(loss, params, create_graph=True)
        gen = torch.Generator().manual_seed(0)  # a fixed start: evaluation draws no run randomness
        v = [torch.randn(p.shape, generator=gen).to(p) for p in params]
        eigenvalue = 0.0
        for _ in range(iterations):
            norm = torch.sqrt(sum((x * x).sum() for x in v))  # type: ignore[arg-type]
            v = [x / norm for x in v]
            hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
            eigenvalue = float(sum((a * b).sum() for a, b in zip(v, hv, strict=True)))
            v = [h.detach() for h in hv]
    return eigenvalue


class StabilityData(TaskData):
    def __init__(self, options: StabilityOptions, device: torch.device) -> None:
        self.options = options
        if options.model == "quadratic":
            self.x = torch.zeros(1, 1, device=device)
            self.y = torch.zeros(1, options.dim, device=device)
            self.h = curvatures(options).to(device)
            self.loss_fn = summed_squared_error
        else:
            gen = torch.Generator().manual_seed(options.data_seed)
            x = torch.randn(options.samples, options.dim, generator=gen)
            teacher_in = torch.randn(options.dim, options.width, generator=gen) / math.sqrt(options.dim)
            teacher_out = torch.randn(options.width, 1, generator=gen) / math.sqrt(options.width)
            self.x, self.y = x.to(device), (torch.tanh(x @ teacher_in) @ teacher_out).to(device)
            self.loss_fn = half_mse
        self.max_rel_error = 0.0
        self.scale = math.nan

    def train_batches(self, generator: torch.Generator) -> Iterator[Batch]:
        return repeat((self.x, self.y))

    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        eta = self.options.reference_lr
        with torch.no_grad():
            output = model(self.x)
            loss = float(self.loss_fn(output, self.y))
        if step == 0:
            self.scale = loss if loss > 0 else 1.0
            self.out0 = output[0].detach().clone()
        metrics = {"train/loss": loss, "train/relative_loss": loss / self.scale}
        if self.options.model == "quadratic":
            lam_max = float(self.h.max())
            factor = (1 - eta * self.h.double()) ** (2 * step)
            theory = float(0.5 * (self.out0.double() ** 2 * factor).sum())
            # Below float32's reach of the initial loss the measured value is round-off, not dynamics.
            comparable = math.isfinite(theory) and theory > 1e-10 * self.scale
            rel = abs(loss - theory) / theory if comparable else math.nan
            if math.isfinite(rel):
                self.max_rel_error = max(self.max_rel_error, rel)
            metrics |= {
                "theory/loss": theory,
                "theory/rel_error": rel if math.isfinite(rel) else self.max_rel_error,
                "theory/max_rel_error": self.max_rel_error,
                "theory/diverges": float(eta > 2 / lam_max),
                "theory/sharpness": lam_max,
            }
        else:
            lam_max = top_hessian_eigenvalue(model, self.loss_fn, (self.x, self.y))
            metrics["theory/sharpness"] = lam_max
        metrics["theory/sharpness_ratio"] = lam_max * eta / 2
        return metrics


def load_data(options: StabilityOptions, device: torch.device) -> StabilityData:
    return StabilityData(options, device)


def build(options: StabilityOptions, generator: torch.Generator) -> nn.Module:
    return seeded_build(generator, lambda: build_model(options, generator))


def stability_loss(output: Tensor, target: Tensor) -> Tensor:
    """½‖·‖² summed for the quadratic (a batch of one, so Hessian = diag(h)); ½·mean for the net.

    The task has one loss function for both models, told apart by the target's width: the
    quadratic's targets have ``dim`` columns, the net's one.
    """
    if target.shape[-1] == 1:
        return half_mse(output, target)
    return summed_squared_error(output, target)


STABILITY_THRESHOLD = TaskInfo(
    name="stability_threshold",
    description="GD diverges iff lr > 2/λ_max on a quadratic; a trained net's sharpness against 2/lr.",
    options=StabilityOptions,
    test_options={"dim": 5},
    build_model=build,
    load_data=load_data,
    loss=stability_loss,
    metrics=("train/loss", "train/relative_loss", "theory/sharpness", "theory/sharpness_ratio"),
    target=Target("train/relative_loss", 1e-3, "min"),
    chance=1.0,  # the loss at initialisation
    theory=True,
    eval_every=20,
    resources=Resources(cpus=1, gpus=0),
    # The quadratic batches; the net's evaluation (a Hessian power iteration) stays with runs alone.
    batch_member_bytes=lambda o: stacked_member_bytes(o.dim, o.dim) if o.model == "quadratic" else None,
    reference="https://arxiv.org/abs/2305.17490",
)
