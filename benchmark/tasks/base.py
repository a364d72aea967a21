"""What a task is: its registry entry, its data protocol and the shared pieces of small tasks.

Held-out evaluation (the protocol of every task but the theory tasks): a task has train, validation
and test splits. The validation split is held out of the training data once, by :func:`holdout`
with a fixed seed, never by the run's seed, so that every rule and every seed is selected on the
same examples. At every evaluation such a task reports ``val/<metric>`` beside each
``test/<metric>``; its target and selection metric are ``val/`` metrics, and test metrics are only
reported, never used to choose. Theory tasks (``theory=True``) compare runs with a closed form
that a held-out split would change, and keep their own targets.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from benchmark.types import Batch, LossFn, TheoryPlot


class TaskOptions(BaseModel):
    """Base of every task's options model: frozen, and unknown names are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True, slots=True)
class Target:
    """A score to reach, for time-to-target scoring: ``metric`` reaches ``value`` going ``mode``."""

    metric: str
    value: float
    mode: Literal["max", "min"] = "max"

    def reached(self, value: float) -> bool:
        return value >= self.value if self.mode == "max" else value <= self.value


@dataclass(frozen=True, slots=True)
class Resources:
    """What one run of the task needs; ``gpus`` applies only where the cluster has GPUs."""

    cpus: float = 1.0
    gpus: float = 0.0
    ddp_workers: int = 0


VALIDATION_SEED = 0
"""Seed of every held-out validation split: fixed, so the split does not depend on the run's seed."""


def holdout(n: int, size: int, seed: int = VALIDATION_SEED) -> tuple[Tensor, Tensor]:
    """Split ``range(n)`` into training and validation indices, the same on every call.

    ``size`` indices are drawn without replacement by a generator seeded with ``seed`` (not the
    run's), so every run of every rule holds out the same examples. The training indices come in
    increasing order (the data stream shuffles them); the validation indices in the drawn order,
    so any prefix of them is a uniform sample (ImageNet's ``eval_batches`` reads a prefix).

    Raises:
        ValueError: ``size`` is not in ``[1, n)``, which would leave no validation or no training data.
    """
    if not 0 < size < n:
        raise ValueError(
            f"a validation split of {size} examples out of {n} leaves nothing to train or to validate on"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[size:].sort().values, order[:size]


class TaskData:
    """A task's data on the run's device: an endless stream of training batches and an evaluation."""

    def train_batches(self, generator: torch.Generator) -> Iterator[Batch]:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        raise NotImplementedError

    def finalize(self, model: nn.Module) -> dict[str, float]:
        """Metrics measured once, after training (e.g. accuracy after pruning). None by default."""
        return {}


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """A task's registry entry.

    Attributes:
        name: registry key, ``<data>_<model>``.
        description: one line for ``synapsebench list``.
        options: the frozen pydantic model of its options (defaults: the suite-scale setting).
        test_options: a tiny setting that runs in seconds on a CPU, for CI.
        build_model: ``build_model(options, generator) -> nn.Module`` (cheap: the planner may call it).
        load_data: ``load_data(options, device) -> TaskData``.
        loss: ``loss(output, target) -> scalar``.
        metrics: the evaluation metrics it reports.
        target: the score that counts as solved, and its source; a ``val/`` metric unless ``theory``.
        chance: the value of the target metric for a model that learned nothing: the expected
            accuracy of a uniformly random guess (1/C for C classes) for accuracy targets, or the
            task's stated no-learning value (e.g. a relative loss of 1 at initialisation); the
            cross-task score puts 0 there.
        eval_every: default steps between evaluations, when the suite's budget leaves it open.
        resources: what one run needs, or ``resources(options) -> Resources`` where an option
            changes it (a GPU for grokking's transformer, none for its quadratic net).
        reference: where the setting comes from.
        theory_plots: plots of the runs against the task's closed form, drawn on the leaderboard.
        theory: a theory task: its metrics are compared with a closed form that a held-out split
            would change, so it has no validation split and keeps its own target.
        selection: the metric that picks a rule's sweep point; None selects by ``target``. A ``val/``
            metric unless ``theory``; its ``value`` is a reference level only (selection ranks by
            the metric, going ``mode``).
        validation: one line on the validation split for ``synapsebench list`` (its size at the
            default options, and how it is held out); empty for theory tasks.
        batch_member_bytes: ``batch_member_bytes(options) -> bytes`` one member of a batched group
            needs (:mod:`benchmark.train_group`), so that a group fits the device's memory; a task
            that declares it can train runs that differ only in seed as one stacked model (its
            model is a plain module of parameters, its loss a function of one output); it returns
            None for options that cannot batch. None: each run alone.
    """

    name: str
    description: str
    options: type[TaskOptions]
    test_options: Mapping[str, Any]
    build_model: Callable[[Any, torch.Generator], nn.Module]
    load_data: Callable[[Any, torch.device], TaskData]
    loss: LossFn
    metrics: tuple[str, ...]
    target: Target
    chance: float
    eval_every: int
    resources: Resources | Callable[[Any], Resources] = Resources()
    reference: str = ""
    theory_plots: tuple[TheoryPlot, ...] = ()
    theory: bool = False
    selection: Target | None = None
    validation: str = ""
    batch_member_bytes: Callable[[Any], int | None] | None = None

    @property
    def selected_by(self) -> Target:
        """The metric that picks a rule's sweep point: ``selection``, else ``target``."""
        return self.target if self.selection is None else self.selection

    def defaults(self) -> dict[str, Any]:
        return self.options().model_dump(mode="json")

    def resources_for(self, options: Mapping[str, Any]) -> Resources:
        """What one run with these options (a RunSpec's ``task_options``) needs."""
        if isinstance(self.resources, Resources):
            return self.resources
        return self.resources(self.options.model_validate(options))


def stacked_member_bytes(parameters: int, activations: int) -> int:
    """What one member of a batched group takes, in float32: its parameters, their gradient, two
    optimizer states and the stack's copy (5 each), and a step's activations with their gradients."""
    return 4 * (5 * parameters + 2 * activations)


def model_member_bytes(
    build: Callable[[Any, torch.Generator], nn.Module], activations: Callable[[Any], int]
) -> Callable[[Any], int]:
    """A task's ``batch_member_bytes`` from its model, built once to count its parameters, and the
    number of activations a step keeps (``activations(options)``)."""

    def member_bytes(options: Any) -> int:
        model = build(options, torch.Generator().manual_seed(0))
        return stacked_member_bytes(sum(p.numel() for p in model.parameters()), activations(options))

    return member_bytes


def seeded_build(generator: torch.Generator, build: Callable[[], nn.Module]) -> nn.Module:
    """Run a module constructor (which draws from torch's global RNG) on a seed from ``generator``."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


class ScaledReLU(nn.Module):
    """``sqrt(2)·relu(x)``: keeps the second moment of a unit Gaussian input, as in jxbz/agd's FCN."""

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.relu(x) * math.sqrt(2)


Activation = Literal["relu", "scaled_relu"]
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "scaled_relu": ScaledReLU}


def mlp(sizes: list[int], activation: type[nn.Module] = nn.ReLU, bias: bool = True) -> nn.Sequential:
    """A plain multi-layer perceptron ``sizes[0] -> ... -> sizes[-1]``."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(fan_in, fan_out, bias=bias))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class TensorClassification(TaskData):
    """A small classification data set held on the device as tensors; no DataLoader.

    The validation split is as large as the test set and held out of the training examples by
    :func:`holdout` (fixed, the same for every run). Batches are drawn from the remaining training
    examples epoch by epoch without replacement, in an order set by the data stream.
    """

    def __init__(
        self,
        train: tuple[Tensor, Tensor],
        test: tuple[Tensor, Tensor],
        batch_size: int,
        device: torch.device,
    ) -> None:
        x, y = train
        keep, held = holdout(len(x), len(test[0]))
        self.train_x, self.train_y = x[keep].to(device), y[keep].to(device)
        self.splits = {
            "val": (x[held].to(device), y[held].to(device)),
            "test": (test[0].to(device), test[1].to(device)),
        }
        self.batch_size = min(batch_size, len(self.train_x))
        self.device = device

    def train_batches(self, generator: torch.Generator) -> Iterator[Batch]:
        for idx in self.train_indices(generator):
            yield self.train_x[idx], self.train_y[idx]

    def train_indices(self, generator: torch.Generator) -> Iterator[Tensor]:
        """The training examples of each batch ``train_batches`` draws, as indices (a batched group
        gathers all its members' batches with one index)."""
        n = len(self.train_x)
        while True:
            order = torch.randperm(n, generator=generator).to(self.device)
            for start in range(0, n - self.batch_size + 1, self.batch_size):
                yield order[start : start + self.batch_size]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        """``train/loss`` on the training split; loss and accuracy on the validation and test splits."""
        was_training = model.training
        model.eval()
        metrics = {"train/loss": float(nn.functional.cross_entropy(model(self.train_x), self.train_y))}
        for split, (x, y) in self.splits.items():
            logits = model(x)
            metrics[f"{split}/loss"] = float(nn.functional.cross_entropy(logits, y))
            metrics[f"{split}/accuracy"] = float((logits.argmax(dim=1) == y).float().mean())
        model.train(was_training)
        return metrics


CLASSIFICATION_METRICS = ("train/loss", "val/loss", "val/accuracy", "test/loss", "test/accuracy")


def cross_entropy(output: Tensor, target: Tensor) -> Tensor:
    return nn.functional.cross_entropy(output, target)
