"""Grokking on modular addition: Tian (2025)'s quadratic-activation net and the ``M log M`` data law.

Data: every pair ``(a, b)`` of residues mod ``M`` with label ``(a + b) mod M``, ``M²`` examples. A random
``train_fraction`` of them (drawn per seed from the data stream) is the training set, the rest the test
set. Inputs are the fixed embedding ``one-hot(a) ⊕ one-hot(b)`` (length ``2M``), as in Tian's code.

Model (Tian 2025, arXiv 2509.21519; ``yuandong-tian/understanding``, ``ssl/real-dataset/cogo/
modular_addition_simple2.py``, config ``dyn_madd.yaml``): one hidden layer with a squared activation,

.. math::

    f(a, b) = V\\,\\big(W\\,[e_a; e_b]\\big)^{\\odot 2},\\qquad W \\in ℝ^{K×2M},\\ V \\in ℝ^{M×K},

no biases, torch's default ``nn.Linear`` initialisation. Loss: cross-entropy (mean), full batch.
The paper's rule is Adam, lr 1e-3, L2 1e-4 (Tian's code, ``dyn_madd.yaml``); ``adamw`` at lr 1e-3 is
the nearest registered rule.

Reference (the testable law of Li₂, Tian 2025): the training set needed to generalise scales as
``n_train ~ M log M``; in the code the critical training fraction is

.. math::

    f_c = 2.7482\\,\\frac{\\ln M}{M},

logged as ``theory/critical_fraction`` with ``theory/fraction_over_critical = train_fraction / f_c``.
Check (M = 23, K = 512, 3000 steps): test accuracy below 0.1 at ``f = f_c/2`` and above 0.95 at
``f = 2 f_c``. The transition around ``f_c`` is soft (our calibration, one seed:
test accuracy 0.00 / 0.01 / 0.35 / 0.82 / 1.00 at f = 0.2 / 0.3 / 0.4 / 0.5 / 0.7).

Grokking times (Power et al. 2022, arXiv 2201.02177, common usage): ``grok/train_step_99`` and
``grok/test_step_99`` are the first evaluated steps at which training and test accuracy reach 99%
(NaN until then, so keep ``eval_every`` small for resolution), and ``grok/delay`` their difference.
``grok/reached`` (at the end) is 1 if the test accuracy ever reached 99%, for the fraction of runs
that never do.

Target: ``test/accuracy`` at least 0.99.

Option ``model: transformer`` (for GPU machines): Power et al. (2022, arXiv 2201.02177)'s setting.
The same ``M²`` pairs and split (``M`` is their ``p``), as the token sequence
``a ∘ b =``, into a 2-layer decoder-only transformer, width 128, 4 heads, causal attention, learned
positions, read out at the last position (``benchmark/tasks/grokking_transformer.py``). Minibatches of
``min(512, ⌈n_train/2⌉)`` (``batch_size`` overrides), drawn epoch by epoch without replacement; the
quadratic net stays full batch. ``theory/*`` is Tian's law for his net, so it is not logged for the
transformer; the ``grok/*`` metrics are. GPU settings:

- Suite entries (``width``, ``heads``, ``layers`` at their defaults 128, 4, 2)::

      tasks:
        - name: grokking_modadd
          options: {model: transformer, M: 97}
          sweep: {train_fraction: [0.3, 0.5]}
      rules:
        - name: adamw
          hparams: {lr: 1.0e-3, betas: [0.9, 0.98], weight_decay: 1.0}
      budget: {steps: 100000, eval_every: 100, warmup_steps: 10}

  10⁵ steps as the re-implementations with wd 1 run; one seed at fraction 0.5 grokked by step 2200 (below).
- Expected (Power et al.): training accuracy reaches ~100% long before test accuracy leaves chance
  (1/97), which then rises to ≥ 99% (``grok/delay > 0``); smaller fractions need more steps, and weight
  decay more than halves the data needed. Not checked in CI (CPU only): the tests train tiny ``M``.
  Seen once (H100, torch 2.11, seed 0, fraction 0.5, the settings above, 3000 steps in 28 s): training
  accuracy 99% at step 500, test 99% at 2200 (``grok/delay`` 1700), with one loss spike at 2300
  (training accuracy 0.39 for one evaluation) before both settle at 1.00.
- Power et al. warm the learning rate up linearly over 10 steps: ``budget.warmup_steps: 10`` (above). The
  transformer asks Ray for half a GPU where the cluster has one (two runs share it), the quadratic net for a
  CPU core only; ``train.run`` picks CUDA when present. The GPU run quoted above had no warm-up (it
  predates ``warmup_steps``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from itertools import repeat
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, SerializerFunctionWrapHandler, model_serializer, model_validator
from torch import Tensor, nn

from benchmark.tasks.base import (
    Resources,
    Target,
    TaskData,
    TaskInfo,
    TaskOptions,
    cross_entropy,
    model_member_bytes,
    seeded_build,
)
from benchmark.tasks.grokking_transformer import ModularTransformer, equation_tokens
from benchmark.types import Batch, OptionSweepPlot

CRITICAL_MULTIPLIER = 2.7482  # Tian's code: critical_ratio_multiplier in config/dyn_madd.yaml
ACCURACY_MARK = 0.99
POWER_MAX_BATCH = 512  # Power et al.: batch = min(512, ⌈n_train / 2⌉)
QUADRATIC_FIELDS = ("hidden",)
TRANSFORMER_FIELDS = ("width", "heads", "layers", "batch_size")


def critical_fraction(modulus: int) -> float:
    """Tian's critical training fraction ``f_c = 2.7482 ln M / M``."""
    return CRITICAL_MULTIPLIER * math.log(modulus) / modulus


class GrokkingOptions(TaskOptions):
    """The modulus, the split and the model.

    ``hidden`` belongs to ``model: quadratic``; ``width``, ``heads``, ``layers`` and ``batch_size`` to
    ``model: transformer`` (setting one for the other model is an error). The dump (and so the run id)
    holds only the chosen model's fields, and leaves ``model`` out at its default: quadratic runs keep
    the ids they had before the transformer option existed.
    """

    M: Annotated[int, Field(ge=2, description="the modulus; M² examples")] = 23
    train_fraction: Annotated[float, Field(gt=0, lt=1, description="share of the M² pairs to train on")] = 0.7
    model: Literal["quadratic", "transformer"] = "quadratic"
    hidden: Annotated[int, Field(ge=1, description="K, hidden units (quadratic)")] = 512
    width: Annotated[int, Field(ge=1, description="model width (transformer)")] = 128
    heads: Annotated[int, Field(ge=1, description="attention heads (transformer)")] = 4
    layers: Annotated[int, Field(ge=1, description="decoder blocks (transformer)")] = 2
    batch_size: Annotated[
        int | None, Field(ge=1, description="transformer minibatch; None: min(512, ⌈n_train/2⌉)")
    ] = None

    @model_validator(mode="after")
    def _both_splits_nonempty(self) -> GrokkingOptions:
        n = self.train_examples
        if not 1 <= n <= self.M**2 - 1:
            raise ValueError(
                f"train_fraction: {self.train_fraction} of M² = {self.M**2} pairs leaves "
                f"{n} to train and {self.M**2 - n} to test; both must be at least 1"
            )
        return self

    @model_validator(mode="after")
    def _fields_fit_the_model(self) -> GrokkingOptions:
        foreign = QUADRATIC_FIELDS if self.model == "transformer" else TRANSFORMER_FIELDS
        wrong = sorted(set(foreign) & self.model_fields_set)
        if wrong:
            other = "transformer" if self.model == "quadratic" else "quadratic"
            raise ValueError(f"no {', '.join(wrong)} with model {self.model!r} (options of model {other!r})")
        if self.model == "transformer":
            if self.width % self.heads:
                raise ValueError(f"width a multiple of heads (got width={self.width}, heads={self.heads})")
            if self.batch_size is not None and self.batch_size > self.train_examples:
                raise ValueError(
                    f"batch_size at most the {self.train_examples} training pairs (got {self.batch_size})"
                )
        return self

    @model_serializer(mode="wrap")
    def _chosen_model_fields_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        foreign = QUADRATIC_FIELDS if self.model == "transformer" else (*TRANSFORMER_FIELDS, "model")
        for key in foreign:
            data.pop(key, None)
        return data

    @property
    def train_examples(self) -> int:
        return round(self.train_fraction * self.M**2)

    @property
    def train_batch_size(self) -> int:
        """The transformer's minibatch: ``batch_size``, else Power et al.'s ``min(512, ⌈n_train/2⌉)``."""
        if self.batch_size is not None:
            return self.batch_size
        return min(POWER_MAX_BATCH, math.ceil(self.train_examples / 2))


class QuadraticNet(nn.Module):
    """``x ↦ V (W x)²``: Tian's one-hidden-layer net with the squared activation, no biases."""

    def __init__(self, inputs: int, hidden: int, outputs: int) -> None:
        super().__init__()
        self.W = nn.Linear(inputs, hidden, bias=False)
        self.V = nn.Linear(hidden, outputs, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.V(self.W(x).pow(2))
        return out


def build_model(options: GrokkingOptions, generator: torch.Generator) -> nn.Module:
    # torch's default inits (Tian's code uses nn.Linear's), drawn on a seed from the init stream.
    if options.model == "transformer":
        return seeded_build(
            generator, lambda: ModularTransformer(options.M, options.width, options.heads, options.layers)
        )
    return seeded_build(generator, lambda: QuadraticNet(2 * options.M, options.hidden, options.M))


def all_pairs(modulus: int, model: str = "quadratic") -> tuple[Tensor, Tensor]:
    """Inputs and labels ``(a + b) mod M`` for all ``M²`` pairs, ``a``-major.

    Inputs: ``one-hot(a) ⊕ one-hot(b)`` for the quadratic net, the tokens ``a ∘ b =`` for the transformer.
    """
    a, b = torch.meshgrid(torch.arange(modulus), torch.arange(modulus), indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    if model == "transformer":
        return equation_tokens(a, b, modulus), (a + b) % modulus
    eye = torch.eye(modulus)
    return torch.cat([eye[a], eye[b]], dim=1), (a + b) % modulus


def minibatches(x: Tensor, y: Tensor, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
    """Endless minibatches, epoch by epoch without replacement; the last partial batch is dropped."""
    n = len(y)
    while True:
        order = torch.randperm(n, generator=generator).to(x.device)
        for start in range(0, n - batch_size + 1, batch_size):
            idx = order[start : start + batch_size]
            yield x[idx], y[idx]


class GrokkingData(TaskData):
    """The split (drawn when the batches are first asked for), the training batches and the 99% steps."""

    def __init__(self, options: GrokkingOptions, device: torch.device) -> None:
        self.options = options
        self.device = device
        self.drawn = False
        self.first_99: dict[str, float] = {"train": math.nan, "test": math.nan}

    def train_batches(self, generator: torch.Generator) -> Iterator[Batch]:
        # Not a generator function: the split is drawn now, so the step-0 evaluation can see it.
        x, y = all_pairs(self.options.M, self.options.model)
        order = torch.randperm(len(y), generator=generator)  # the same split for either model
        train, test = order[: self.options.train_examples], order[self.options.train_examples :]
        self.train_x, self.train_y = x[train].to(self.device), y[train].to(self.device)
        self.test_x, self.test_y = x[test].to(self.device), y[test].to(self.device)
        self.drawn = True
        if self.options.model == "transformer":
            return minibatches(self.train_x, self.train_y, self.options.train_batch_size, generator)
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
        metrics |= {
            "grok/train_step_99": self.first_99["train"],
            "grok/test_step_99": self.first_99["test"],
            "grok/delay": self.first_99["test"] - self.first_99["train"],
        }
        if self.options.model == "transformer":
            return metrics  # f_c is Tian's law for his quadratic net; Power et al. have no such closed form
        f_c = critical_fraction(self.options.M)
        return metrics | {
            "theory/critical_fraction": f_c,
            "theory/fraction_over_critical": self.options.train_fraction / f_c,
        }

    def finalize(self, model: nn.Module) -> dict[str, float]:
        return {"grok/reached": float(not math.isnan(self.first_99["test"]))}


def resources(options: GrokkingOptions) -> Resources:
    """Tian's quadratic net trains on a CPU core; the transformer asks for half a GPU where there is one."""
    return Resources(cpus=1, gpus=0.5 if options.model == "transformer" else 0.0)


def load_data(options: GrokkingOptions, device: torch.device) -> GrokkingData:
    return GrokkingData(options, device)


_quadratic_bytes = model_member_bytes(build_model, lambda o: o.M * o.M * (3 * o.M + o.hidden))

GROKKING_MODADD = TaskInfo(
    name="grokking_modadd",
    description=(
        "Modular addition with Tian's quadratic MLP (the 2.7482 ln M/M law) or Power et al.'s transformer;"
        " grokking delay."
    ),
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
    chance=1 / GrokkingOptions().M,  # a uniform guess among M residues, at the default M
    theory=True,
    eval_every=50,
    resources=resources,
    # The quadratic network batches; the transformer (GPU-sized, minibatched) trains alone.
    batch_member_bytes=lambda o: _quadratic_bytes(o) if o.model == "quadratic" else None,
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
