"""Robustness to synaptic pruning: train an MLP on MNIST-1D, remove its smallest synapses, evaluate.

Data: MNIST-1D as in ``mnist1d_mlp`` (generated offline; 40 features, 10 classes, 80/20 split), with
its validation split: 1,000 of the 4,000 training samples, fixed, the same for every seed.
Model: an MLP with ReLU, ``width`` units in each of ``depth`` hidden layers.
Pruning: global unstructured magnitude pruning, as the paper's ``global_unstructured(L1Unstructured)``:
over all weight matrices together (parameters of two or more dimensions; biases and split biases
are kept), the given fraction of entries with the smallest |w| is set to 0.
Metrics: after training, the accuracy of the pruned model on each held-out split at each fraction
in ``fractions`` (``val/prune_acc_0.9``, ``test/prune_acc_0.9`` …, zero-shot, with the weights
restored afterwards; no ``@`` in the name, which MLflow refuses) and ``val/prune_auc`` and
``test/prune_auc``, the area under accuracy against pruned fraction divided by the range of
fractions, i.e. the mean accuracy over that range. Both AUCs are also reported at every evaluation,
so time-to-target applies.
With ``prune_at`` set, the paper's protocol: at the first evaluation at or after that step the
model is pruned to ``prune_fraction`` and the mask is held (pruned weights are zeroed before every
forward pass) while training goes on, so the final ``val/accuracy`` and ``test/accuracy`` are
accuracies after relearning.
Target: ``val/prune_auc`` ≥ 0.5 (chance 0.1, ten classes); sweep points are selected by it.
Source: Cornford, Pogodin et al., "Brain-like learning with exponentiated gradients", bioRxiv
10.1101/2024.10.25.620272, 2026 version, Fig 3 (Mod-Cog RNNs pruned to 90–99% and retrained for
1,000 steps; the paper picks the relearning setting by training-loss AUC).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Annotated

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from benchmark.tasks.base import (
    CLASSIFICATION_METRICS,
    Resources,
    Target,
    TaskData,
    TaskInfo,
    TaskOptions,
    TensorClassification,
    cross_entropy,
    mlp,
    model_member_bytes,
    seeded_build,
)
from benchmark.tasks.mnist1d import NUM_CLASSES, NUM_FEATURES, VALIDATION, mnist1d_arrays
from benchmark.types import Batch

Fraction = Annotated[float, Field(ge=0, lt=1)]


class PruningOptions(TaskOptions):
    """Options of ``pruning``.

    Attributes:
        num_samples, width, depth, batch_size, data_seed: as ``mnist1d_mlp``.
        fractions: the pruned fractions at which accuracy is measured (sorted, distinct, in [0, 1)).
        prune_at: prune during learning at this step and hold the mask (None: never).
        prune_fraction: the fraction pruned at ``prune_at`` (unused without it).
    """

    num_samples: Annotated[int, Field(ge=100)] = 5000
    width: Annotated[int, Field(gt=0)] = 100
    depth: Annotated[int, Field(ge=1)] = 2
    batch_size: Annotated[int, Field(gt=0)] = 100
    data_seed: int = 42
    fractions: Annotated[tuple[Fraction, ...], Field(min_length=2)] = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
    prune_at: Annotated[int, Field(ge=0)] | None = None
    prune_fraction: Fraction = 0.9

    @field_validator("fractions")
    @classmethod
    def _increasing(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(b <= a for a, b in itertools.pairwise(value)):
            raise ValueError("fractions in increasing order, each once")
        return value


def synapses(model: nn.Module) -> list[Tensor]:
    """The prunable weights: every parameter of two or more dimensions."""
    return [p for p in model.parameters() if p.dim() >= 2]


@torch.no_grad()
def magnitude_masks(weights: list[Tensor], fraction: float) -> list[Tensor]:
    """Keep-masks that remove the ``fraction`` of entries with the smallest |w|, over all weights at once.

    Exactly ``round(fraction·n)`` entries are removed; ties at the threshold are broken by position
    (a stable sort), so the masks are deterministic.
    """
    magnitudes = torch.cat([w.detach().abs().flatten() for w in weights])
    keep = torch.ones_like(magnitudes, dtype=torch.bool)
    removed = round(fraction * len(magnitudes))
    if removed:
        keep[torch.argsort(magnitudes, stable=True)[:removed]] = False
    parts = keep.split([w.numel() for w in weights])  # type: ignore[no-untyped-call]
    return [part.view_as(w) for part, w in zip(parts, weights, strict=True)]


def accuracy_key(split: str, fraction: float) -> str:
    """The metric name of a split's accuracy at one pruned fraction, e.g. ``test/prune_acc_0.95``."""
    return f"{split}/prune_acc_{fraction:g}"


def area_under_curve(fractions: tuple[float, ...], accuracies: list[float]) -> float:
    """Trapezoid area under accuracy against pruned fraction, over the width of the fraction range."""
    return float(np.trapezoid(accuracies, fractions) / (fractions[-1] - fractions[0]))


class PruningData(TaskData):
    """MNIST-1D batches and evaluations, plus accuracy under pruning."""

    def __init__(self, options: PruningOptions, device: torch.device) -> None:
        x, y, x_test, y_test = mnist1d_arrays(options.num_samples, options.data_seed)
        self.base = TensorClassification((x, y), (x_test, y_test), options.batch_size, device)
        self.options = options
        self.masks: list[Tensor] | None = None

    def train_batches(self, generator: torch.Generator) -> Iterator[Batch]:
        return self.base.train_batches(generator)

    @torch.no_grad()
    def accuracy(self, model: nn.Module, split: str) -> float:
        """Accuracy on the ``val`` or ``test`` split."""
        x, y = self.base.splits[split]
        was_training = model.training
        model.eval()
        logits = model(x)
        model.train(was_training)
        return float((logits.argmax(dim=1) == y).float().mean())

    @torch.no_grad()
    def pruning_curve(self, model: nn.Module) -> dict[str, float]:
        """Zero-shot accuracy of each held-out split at each pruned fraction, and each curve's AUC.

        The model is left intact.
        """
        weights = synapses(model)
        saved = [w.detach().clone() for w in weights]
        fractions = self.options.fractions
        accuracies: dict[str, list[float]] = {split: [] for split in self.base.splits}
        for fraction in fractions:
            for w, keep in zip(weights, magnitude_masks(weights, fraction), strict=True):
                w.mul_(keep)
            for split, values in accuracies.items():
                values.append(self.accuracy(model, split))
            for w, original in zip(weights, saved, strict=True):
                w.copy_(original)
        metrics: dict[str, float] = {}
        for split, values in accuracies.items():
            metrics.update({accuracy_key(split, f): a for f, a in zip(fractions, values, strict=True)})
            metrics[f"{split}/prune_auc"] = area_under_curve(fractions, values)
        return metrics

    def _prune_and_hold(self, model: nn.Module) -> None:
        weights = synapses(model)
        self.masks = magnitude_masks(weights, self.options.prune_fraction)
        held = {id(w): keep for w, keep in zip(weights, self.masks, strict=True)}
        with torch.no_grad():
            for w, keep in zip(weights, self.masks, strict=True):
                w.mul_(keep)

        def zero_pruned(module: nn.Module, inputs: object) -> None:
            # The rule may move a pruned weight (GD does; EG keeps exact zeros at zero): undo it.
            with torch.no_grad():
                for p in module.parameters(recurse=False):
                    if id(p) in held:
                        p.mul_(held[id(p)])

        for module in model.modules():
            if any(id(p) in held for p in module.parameters(recurse=False)):
                module.register_forward_pre_hook(zero_pruned)

    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        prune_at = self.options.prune_at
        if prune_at is not None and self.masks is None and step >= prune_at:
            self._prune_and_hold(model)
        metrics = self.base.evaluate(model, step)
        curve = self.pruning_curve(model)
        metrics.update({k: v for k, v in curve.items() if k.endswith("/prune_auc")})
        return metrics

    def finalize(self, model: nn.Module) -> dict[str, float]:
        return self.pruning_curve(model)


def build_mlp(options: PruningOptions, generator: torch.Generator) -> nn.Module:
    sizes = [NUM_FEATURES, *[options.width] * options.depth, NUM_CLASSES]
    return seeded_build(generator, lambda: mlp(sizes))


def load_data(options: PruningOptions, device: torch.device) -> PruningData:
    return PruningData(options, device)


_member_bytes = model_member_bytes(
    build_mlp, lambda o: o.batch_size * (NUM_FEATURES + o.width * o.depth + NUM_CLASSES)
)

PRUNING = TaskInfo(
    name="pruning",
    description="MNIST-1D MLP, then global magnitude pruning: accuracy against pruned fraction (EG paper).",
    options=PruningOptions,
    test_options={"num_samples": 600, "width": 32, "fractions": [0.5, 0.8, 0.95]},
    build_model=build_mlp,
    load_data=load_data,
    loss=cross_entropy,
    metrics=(*CLASSIFICATION_METRICS, "val/prune_auc", "test/prune_auc"),
    target=Target("val/prune_auc", 0.5, "max"),
    chance=1 / NUM_CLASSES,
    eval_every=100,
    resources=Resources(cpus=1),
    # Pruning during learning holds its mask by forward hooks on the run's own module, which a
    # batched step does not call: those runs train alone.
    batch_member_bytes=lambda o: None if o.prune_at is not None else _member_bytes(o),
    reference="https://www.biorxiv.org/content/10.1101/2024.10.25.620272v1",
    validation=VALIDATION,
)
