"""Grokking on modular addition: Tian (2025)'s quadratic-activation net and the ``M log M`` data law.

Data: every pair ``(a, b)`` of residues mod ``M`` with label ``(a + b) mod M``, ``M²`` examples. A random
``train_fraction`` of them (drawn per seed from the data stream) is the training set, the rest the test
set. Inputs are the fixed embedding ``one-hot(a) ⊕ one-hot(b)`` (length ``2M``), as in Tian's code.

Model (Tian 2025, arXiv 2509.21519; ``yuandong-tian/understanding``, ``ssl/real-dataset/cogo/
modular_addition_simple2.py``, config ``dyn_madd.yaml``): one hidden layer with a squared activation,

.. math::

    f(a, b) = V\\,\\big(W\\,[e_a; e_b]\\big)^{\\odot 2},\\qquad W \\in ℝ^{K×2M},\\ V \\in ℝ^{M×K},

no biases, torch's default ``nn.Linear`` initialisation. Loss: cross-entropy (mean), full batch.
The paper's rule is Adam, lr 1e-3, L2 1e-4 (references/dynamics.md §4); ``adamw`` at lr 1e-3 is the
nearest registered rule.

Reference (the testable law of Li₂, Tian 2025): the training set needed to generalise scales as
``n_train ~ M log M``; in the code the critical training fraction is

.. math::

    f_c = 2.7482\\,\\frac{\\ln M}{M},

logged as ``theory/critical_fraction`` with ``theory/fraction_over_critical = train_fraction / f_c``.
Check (M = 23, K = 512, 3000 steps): test accuracy below 0.1 at ``f = f_c/2`` and above 0.95 at
``f = 2 f_c``. The transition around ``f_c`` is soft (calibration in references/dynamics.md §4:
test accuracy 0.00 / 0.01 / 0.35 / 0.82 / 1.00 at f = 0.2 / 0.3 / 0.4 / 0.5 / 0.7).

Grokking times (Power et al. 2022, arXiv 2201.02177, common usage): ``grok/train_step_99`` and
``grok/test_step_99`` are the first evaluated steps at which training and test accuracy reach 99%
(NaN until then, so keep ``eval_every`` small for resolution), and ``grok/delay`` their difference.
``grok/reached`` (at the end) is 1 if the test accuracy ever reached 99%, for the fraction of runs
that never do.

Target: ``test/accuracy`` at least 0.99.

Not done: Power et al.'s 2-layer transformer at p = 97 (a GPU setting); this task is the MLP only.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from itertools import repeat
from typing import Annotated

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from benchmark.tasks.base import (
    Resources,
    Target,
    TaskData,
    TaskInfo,
    TaskOptions,
    cross_entropy,
    seeded_build,
)
from benchmark.types import Batch, OptionSweepPlot

CRITICAL_MULTIPLIER = 2.7482  # Tian's code: critical_ratio_multiplier in config/dyn_madd.yaml
ACCURACY_MARK = 0.99


def critical_fraction(modulus: int) -> float:
    """Tian's critical training fraction ``f_c = 2.7482 ln M / M``."""
    return CRITICAL_MULTIPLIER * math.log(modulus) / modulus


class GrokkingOptions(TaskOptions):
    M: Annotated[int, Field(ge=2, description="the modulus; M² examples")] = 23
    train_fraction: Annotated[float, Field(gt=0, lt=1, description="share of the M² pairs to train on")] = 0.7
    hidden: Annotated[int, Field(ge=1, description="K, hidden units")] = 512

    @model_validator(mode="after")
    def _both_splits_nonempty(self) -> GrokkingOptions:
        n = self.train_examples
        if not 1 <= n <= self.M**2 - 1:
            raise ValueError(
                f"train_fraction: {self.train_fraction} of M² = {self.M**2} pairs leaves "
                f"{n} to train and {self.M**2 - n} to test; both must be at least 1"
            )
        return self

    @property
    def train_examples(self) -> int:
        return round(self.train_fraction * self.M**2)


class QuadraticNet(nn.Module):
    """``x ↦ V (W x)²``: Tian's one-hidden-layer net with the squared activation, no biases."""

    def __init__(self, inputs: int, hidden: int, outputs: int) -> None:
        super().__init__()
        self.W = nn.Linear(inputs, hidden, bias=False)
        self.V = nn.Linear(hidden, outputs, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.V(self.W(x).pow(2))


def build_model(options: GrokkingOptions, generator: torch.Generator) -> nn.Module:
    # nn.Linear's default init, as in Tian's code, drawn on a seed from the init stream.
    return seeded_build(generator, lambda: QuadraticNet(2 * options.M, options.hidden, options.M))


def all_pairs(modulus: int) -> tuple[Tensor, Tensor]:
    """Inputs ``one-hot(a) ⊕ one-hot(b)`` and labels ``(a + b) mod M`` for all ``M²`` pairs."""
    a, b = torch.meshgrid(torch.arange(modulus), torch.arange(modulus), indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    eye = torch.eye(modulus)
    return torch.cat([eye[a], eye[b]], dim=1), (a + b) % modulus


class GrokkingData(TaskData):
    """The split (drawn when the batches are first asked for), full-batch training and the 99% steps."""

    def __init__(self, options: GrokkingOptions, device: torch.device) -> None:
        self.options = options
        self.device = device
        self.drawn = False
        self.first_99: dict[str, float] = {"train": math.nan, "test": math.nan}

    def train_batches(self, generator: torch.Generator) -> Iterator[Batch]:
        # Not a generator function: the split is drawn now, so the step-0 evaluation can see it.
        x, y = all_pairs(self.options.M)
        order = torch.randperm(len(y), generator=generator)
        train, test = order[: self.options.train_examples], order[self.options.train_examples :]
        self.train_x, self.train_y = x[train].to(self.device), y[train].to(self.device)
        self.test_x, self.test_y = x[test].to(self.device), y[test].to(self.device)
        self.drawn = True
        return repeat((self.train_x, self.train_y))  # full batch, as in Tian's code

    @torch.no_grad()
    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        if not self.drawn:
            raise RuntimeError("grokking_modadd: call train_batches(generator) before evaluate")
        was_training = model.training
        model.eval()
        metrics: dict[str, float] = {}
        for split, x, y in (("train", self.train_x, self.train_y), ("test", self.test_x, self.test_y)):
            logits = model(x)
            accuracy = float((logits.argmax(dim=1) == y).float().mean())
            metrics[f"{split}/loss"] = float(nn.functional.cross_entropy(logits, y))
            metrics[f"{split}/accuracy"] = accuracy
            if math.isnan(self.first_99[split]) and accuracy >= ACCURACY_MARK:
                self.first_99[split] = float(step)
        model.train(was_training)
        f_c = critical_fraction(self.options.M)
        return metrics | {
            "grok/train_step_99": self.first_99["train"],
            "grok/test_step_99": self.first_99["test"],
            "grok/delay": self.first_99["test"] - self.first_99["train"],
            "theory/critical_fraction": f_c,
            "theory/fraction_over_critical": self.options.train_fraction / f_c,
        }

    def finalize(self, model: nn.Module) -> dict[str, float]:
        return {"grok/reached": float(not math.isnan(self.first_99["test"]))}


def load_data(options: GrokkingOptions, device: torch.device) -> GrokkingData:
    return GrokkingData(options, device)


GROKKING_MODADD = TaskInfo(
    name="grokking_modadd",
    description="Modular addition with Tian's quadratic MLP; grokking delay and the 2.7482 ln M/M law.",
    options=GrokkingOptions,
    test_options={"M": 5, "hidden": 16, "train_fraction": 0.6},
    build_model=build_model,
    load_data=load_data,
    loss=cross_entropy,
    metrics=(
        "train/loss",
        "train/accuracy",
        "test/loss",
        "test/accuracy",
        "grok/train_step_99",
        "grok/test_step_99",
        "grok/delay",
        "theory/critical_fraction",
        "theory/fraction_over_critical",
    ),
    target=Target("test/accuracy", ACCURACY_MARK, "max"),
    eval_every=50,
    resources=Resources(cpus=1, gpus=0),
    reference="https://arxiv.org/abs/2509.21519",
    theory_plots=(
        OptionSweepPlot("test accuracy against the training fraction", "train_fraction", "test/accuracy"),
        OptionSweepPlot(
            "grokking delay against the training fraction",
            "train_fraction",
            "grok/delay",
            missing_at_budget=True,
        ),
    ),
)
