"""Equilibrium-model tasks for the least-control trainers: ``mnist1d_ff`` and ``mnist1d_rnn``.

Data: MNIST-1D generated offline (``benchmark.tasks.mnist1d``): 40 features, 10 classes, 4000/1000
train/test at the default 5000 samples, data seed 42; batch 64 as in the reference runs. Validation:
1,000 of the 4,000 training samples (as many as the test set), held out once with a fixed seed, the
same for every run; 3,000 remain for training.
Models (seijin-kobayashi/least-control ``implicit_model.py``, our code), states of pre-activations:

- ``ff``: the tanh MLP ``in-w-w-10`` written as an equilibrium model. The state is ``[v1 | v2]``,
  ``x̃ = [W1x + b1 | 0]``, ``f`` adds ``[0 | W2 tanh(v1) + b2]`` and ``g = D tanh(v2) + c``. ``f`` is
  block-lower-triangular, so two iterations from zero reach the fixed point exactly.
- ``rnn``: ``x̃ = W_in x + b_in``, ``f = x̃ + W tanh(v) + b``, ``g = D tanh(v) + c``; a true fixed point.

Both have PyTorch's default initialisation, as in the reference. ``mnist1d_rnn`` offers
``spectral_bound`` (off by default; the suite ``lcp-mnist1d-rnn`` uses 0.9): the recurrent weight is
kept at ``‖W‖₂ ≤ γ``, which makes ``f`` a contraction so the fixed point exists and is reached.
Target: 0.6 validation accuracy (the MNIST-1D paper's MLP reaches about 68% test accuracy).
Source: Meulemans, Zucchet et al., "The least-control principle for local learning at equilibrium",
arXiv 2207.01332 (models); Greydanus & Kolter, arXiv 2011.14439 (data).
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from benchmark.fixpoint import LayeredEquilibriumModel
from benchmark.tasks.base import (
    CLASSIFICATION_METRICS,
    Resources,
    Target,
    TaskInfo,
    TaskOptions,
    TensorClassification,
    cross_entropy,
    seeded_build,
)
from benchmark.tasks.mnist1d import NUM_CLASSES, NUM_FEATURES, VALIDATION, mnist1d_arrays

LCP_PAPER = "https://arxiv.org/abs/2207.01332"


def ff_model(in_features: int, width: int, num_classes: int) -> LayeredEquilibriumModel:
    """The reference's ``ff`` model: a 2-hidden-layer tanh MLP as an equilibrium model."""
    return LayeredEquilibriumModel(
        blocks=[(width,), (width,)],
        encoder=nn.Sequential(nn.Flatten(), nn.Linear(in_features, width)),
        links=[(0, 1, nn.Linear(width, width))],
        decoder=nn.Linear(width, num_classes),
        activation="tanh",
        feedforward_depth=2,
    )


def rnn_model(
    in_features: int, width: int, num_classes: int, spectral_bound: float | None = None
) -> LayeredEquilibriumModel:
    """The reference's ``rnn`` model: one fully recurrent tanh layer at its fixed point.

    ``spectral_bound`` γ (not in the reference) keeps ``‖W‖₂ ≤ γ`` from init on (trainers project
    after each step), so the fixed point exists, is unique and plain iteration reaches it.
    """
    return LayeredEquilibriumModel(
        blocks=[(width,)],
        encoder=nn.Sequential(nn.Flatten(), nn.Linear(in_features, width)),
        links=[(0, 0, nn.Linear(width, width))],
        decoder=nn.Linear(width, num_classes),
        activation="tanh",
        feedforward_depth=None,
        spectral_bound=spectral_bound,
    )


class MNIST1DEquilibriumOptions(TaskOptions):
    num_samples: Annotated[int, Field(ge=100)] = 5000
    width: Annotated[int, Field(gt=0)] = 256
    """Hidden units (the reference's ``rnn_hidden_units``)."""
    batch_size: Annotated[int, Field(gt=0)] = 64
    data_seed: int = 42


class MNIST1DRNNOptions(MNIST1DEquilibriumOptions):
    spectral_bound: Annotated[float, Field(gt=0, lt=1)] | None = None
    """Bound γ on the recurrent weight's spectral norm; None is the reference (unconstrained).

    With ``‖W‖₂ ≤ γ`` and tanh (1-Lipschitz), ``f`` is a γ-contraction: plain iteration reaches a
    relative error ε in about ``log ε / log γ`` steps whatever the training does. The init is
    rescaled onto the bound (PyTorch's default gives ``‖W‖₂ ≈ 1.13`` at width 256), and the LCP
    trainers project after every meta step (KP's feedback shrinks by the same factor). Other
    rules do not project. Unconstrained, the free fixed point on MNIST-1D stops converging after
    about 60 adam steps at lr 1e-3 (the iteration oscillates or wanders).
    """


def _load_mnist1d(options: MNIST1DEquilibriumOptions, device: torch.device) -> TensorClassification:
    x, y, x_test, y_test = mnist1d_arrays(options.num_samples, options.data_seed)
    return TensorClassification((x, y), (x_test, y_test), options.batch_size, device)


def build_mnist1d_ff(options: MNIST1DEquilibriumOptions, generator: torch.Generator) -> nn.Module:
    return seeded_build(generator, lambda: ff_model(NUM_FEATURES, options.width, NUM_CLASSES))


def build_mnist1d_rnn(options: MNIST1DRNNOptions, generator: torch.Generator) -> nn.Module:
    return seeded_build(
        generator, lambda: rnn_model(NUM_FEATURES, options.width, NUM_CLASSES, options.spectral_bound)
    )


_MNIST1D_TEST_OPTIONS = {"num_samples": 600, "width": 32}

MNIST1D_FF = TaskInfo(
    name="mnist1d_ff",
    description="Equilibrium tanh MLP (LCP 'ff') on MNIST-1D, generated offline.",
    options=MNIST1DEquilibriumOptions,
    test_options=_MNIST1D_TEST_OPTIONS,
    build_model=build_mnist1d_ff,
    load_data=_load_mnist1d,
    loss=cross_entropy,
    metrics=CLASSIFICATION_METRICS,
    target=Target("val/accuracy", 0.6, "max"),
    chance=1 / NUM_CLASSES,
    eval_every=100,
    resources=Resources(cpus=1, gpus=0.1),
    reference=LCP_PAPER,
    validation=VALIDATION,
)

MNIST1D_RNN = TaskInfo(
    name="mnist1d_rnn",
    description="Equilibrium tanh RNN (LCP 'rnn') on MNIST-1D, generated offline.",
    options=MNIST1DRNNOptions,
    test_options=_MNIST1D_TEST_OPTIONS,
    build_model=build_mnist1d_rnn,
    load_data=_load_mnist1d,
    loss=cross_entropy,
    metrics=CLASSIFICATION_METRICS,
    target=Target("val/accuracy", 0.6, "max"),
    chance=1 / NUM_CLASSES,
    eval_every=100,
    resources=Resources(cpus=1, gpus=0.1),
    reference=LCP_PAPER,
    validation=VALIDATION,
)

EQUILIBRIUM_TASKS = (MNIST1D_FF, MNIST1D_RNN)
