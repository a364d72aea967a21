"""The least-control paper's MNIST and CIFAR-10 equilibrium tasks: mnist_ff, mnist_rnn, cifar10_conv_ff/rnn.

Data: read by the vision tasks' loader (``benchmark.tasks.vision_data``: torchvision files under the
data root, held on the device), as the reference's ``utils/data_utils.py`` prepares it: MNIST as
``ToTensor`` only (pixels in [0, 1], no normalisation), CIFAR-10 normalised with the reference's
mean (0.4914, 0.4822, 0.4465) and std (0.2023, 0.1994, 0.201); no augmentation; batch 64.
Validation: 5,000 of the official training images (of MNIST's 60,000, of CIFAR-10's 50,000), held
out once with a fixed seed, the same for every run, as for ``mnist_fcn`` and the CIFAR tasks; the
official test set is test.
Models (seijin-kobayashi/least-control ``implicit_model.py``, our code):

- ``mnist_ff`` / ``mnist_rnn``: :func:`~benchmark.tasks.equilibrium.ff_model` and
  :func:`~benchmark.tasks.equilibrium.rnn_model` on the flattened 784 pixels, 256 hidden units.
- ``cifar10_conv_ff``: ReLU, state of five blocks. Encoder Conv(3→96, k5, p2) + MaxPool(3, s2) into a
  96×15×15 block; links Conv(96→128, k5, s2, p1) → 7×7, Conv(128→256, k5, s2, p1) → 3×3,
  Linear(2304→2048), Linear(2048→2048); readout Linear(2048→10). Five iterations reach the fixed point.
- ``cifar10_conv_rnn``: a DEQ ResNet block (:class:`DEQResNetModel`); only rbp and lcp_di train it in
  the paper.

Targets: validation accuracy 0.98 on MNIST and 0.7 on CIFAR-10, our choices (not the paper's
Table 1/2 numbers). Source: Meulemans, Zucchet et al. 2022, "The least-control principle for local
learning at equilibrium", arXiv 2207.01332.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn
from torch.nn import functional as F

from benchmark.fixpoint import EquilibriumModel, LayeredEquilibriumModel
from benchmark.tasks.base import (
    CLASSIFICATION_METRICS,
    Resources,
    Target,
    TaskInfo,
    cross_entropy,
    seeded_build,
)
from benchmark.tasks.equilibrium import LCP_PAPER, ff_model, rnn_model
from benchmark.tasks.vision_data import (
    DeviceImageData,
    VisionOptions,
    data_root,
    read_dataset,
    synthetic_arrays,
    validation_note,
)

NUM_CLASSES = 10
MNIST_SIZE = 28
CIFAR_SIZE = 32
# The reference feeds MNIST as ToTensor() only: a "normalisation" with mean 0 and std 1.
MNIST_RAW_MEAN, MNIST_RAW_STD = (0.0,), (1.0,)
# The reference's CIFAR-10 statistics (utils/data_utils.py), not torchvision's usual std.
LCP_CIFAR10_MEAN, LCP_CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.201)


class EquilibriumVisionOptions(VisionOptions):
    """Vision options at the reference's batch 64; ``width_divisor`` shrinks the model for CI only."""

    batch_size: Annotated[int, Field(gt=0)] = 64
    width: Annotated[int, Field(gt=0)] = 256
    """Hidden units of the MNIST models (``rnn_hidden_units``); the conv models ignore it."""
    width_divisor: Annotated[int, Field(ge=1)] = 1
    """Divide the conv models' channels and hidden units (1 = the paper's model)."""
    verify_checksums: bool = True
    """Compare the CIFAR files' md5 sums with torchvision's (off only for hand-made test data)."""

    @field_validator("bias")
    @classmethod
    def _with_bias(cls, value: bool) -> bool:
        if not value:
            raise ValueError(
                "the least-control models have biases (the reference's); bias=False is not offered"
            )
        return value


def conv_ff_model(divisor: int = 1) -> LayeredEquilibriumModel:
    """The reference's ``conv-ff`` (about 10.07 M parameters at ``divisor`` 1)."""
    c0, c1, c2, hidden = 96 // divisor, 128 // divisor, 256 // divisor, 2048 // divisor
    return LayeredEquilibriumModel(
        blocks=[(c0, 15, 15), (c1, 7, 7), (c2, 3, 3), (hidden,), (hidden,)],
        encoder=nn.Sequential(nn.Conv2d(3, c0, 5, padding=2), nn.MaxPool2d(3, stride=2)),
        links=[
            (0, 1, nn.Conv2d(c0, c1, 5, stride=2, padding=1)),
            (1, 2, nn.Conv2d(c1, c2, 5, stride=2, padding=1)),
            (2, 3, nn.Linear(c2 * 9, hidden)),
            (3, 4, nn.Linear(hidden, hidden)),
        ],
        decoder=nn.Linear(hidden, NUM_CLASSES),
        activation="relu",
        feedforward_depth=5,
    )


class DEQResNetModel(EquilibriumModel):
    """The reference's ``conv-rnn``: a DEQ-style residual block at its fixed point.

    .. math::
        x̃ = \\mathrm{BN}(\\mathrm{conv}_{3→c}(x)), \\quad
        y = n_1(\\mathrm{relu}(\\mathrm{conv}_1 z)), \\quad
        f(x̃, z) = n_3\\big(\\mathrm{relu}(z + n_2(x̃ + \\mathrm{conv}_2\\, y))\\big)

    with ``conv1: c→h``, ``conv2: h→c`` (k3, p1, no bias, init N(0, 0.01)), GroupNorm(8) ``n_i``, and
    ``g = Linear(AvgPool8(BN(z)))``.

    Differences from the reference: the reference calls its block as ``f(encoding, state)``, so that
    ``conv1`` acts on the encoding and the state enters only through ``n_2``; we follow the DEQ
    convention it was written for, ``f(z = state, x = encoding)``, so the state passes through both
    convolutions.
    """

    def __init__(self, channels: int = 48, hidden: int = 64, size: int = CIFAR_SIZE) -> None:
        super().__init__(channels * size * size)
        self.shape = (channels, size, size)
        self.encoder = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.BatchNorm2d(channels))
        self.conv1 = nn.Conv2d(channels, hidden, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(hidden, channels, 3, padding=1, bias=False)
        for conv in (self.conv1, self.conv2):
            nn.init.normal_(conv.weight, 0.0, 0.01)
        self.norm1 = nn.GroupNorm(8, hidden)
        self.norm2 = nn.GroupNorm(8, channels)
        self.norm3 = nn.GroupNorm(8, channels)
        self.readout_norm = nn.BatchNorm2d(channels)
        self.readout = nn.Linear(channels * (size // 8) ** 2, NUM_CLASSES)

    def encode(self, x: Tensor) -> Tensor:
        x_enc: Tensor = self.encoder(x).flatten(1)
        return x_enc

    def implicit(self, x_enc: Tensor, v: Tensor) -> Tensor:
        z = v.view(len(v), *self.shape)
        x = x_enc.view(len(x_enc), *self.shape)
        y = self.norm1(F.relu(self.conv1(z)))
        f: Tensor = self.norm3(F.relu(z + self.norm2(x + self.conv2(y)))).flatten(1)
        return f

    def decode(self, v: Tensor) -> Tensor:
        z = self.readout_norm(v.view(len(v), *self.shape))
        logits: Tensor = self.readout(F.avg_pool2d(z, 8).flatten(1))
        return logits


def conv_rnn_model(divisor: int = 1) -> DEQResNetModel:
    """The reference's ``conv-rnn`` (48 channels, 64 hidden); GroupNorm(8) keeps widths multiples of 8."""
    return DEQResNetModel(channels=8 * max(1, 6 // divisor), hidden=8 * max(1, 8 // divisor))


def _mnist_loader(options: EquilibriumVisionOptions, device: torch.device) -> DeviceImageData:
    if options.synthetic:
        arrays = synthetic_arrays(1, MNIST_SIZE, NUM_CLASSES)
    else:
        arrays = read_dataset("MNIST", str(data_root(options.data_dir)), options.download)
    return DeviceImageData(
        arrays,
        MNIST_RAW_MEAN,
        MNIST_RAW_STD,
        options.batch_size,
        options.eval_batch_size,
        device,
        augment=False,
    )


def _cifar_loader(options: EquilibriumVisionOptions, device: torch.device) -> DeviceImageData:
    if options.synthetic:
        arrays = synthetic_arrays(3, CIFAR_SIZE, NUM_CLASSES)
    else:
        root = str(data_root(options.data_dir))
        arrays = read_dataset("CIFAR10", root, options.download, options.verify_checksums)
    return DeviceImageData(
        arrays,
        LCP_CIFAR10_MEAN,
        LCP_CIFAR10_STD,
        options.batch_size,
        options.eval_batch_size,
        device,
        augment=False,
    )


def _builder(
    make: Callable[[EquilibriumVisionOptions], nn.Module],
) -> Callable[[EquilibriumVisionOptions, torch.Generator], nn.Module]:
    def build(options: EquilibriumVisionOptions, generator: torch.Generator) -> nn.Module:
        return seeded_build(generator, lambda: make(options))

    return build


_TEST = {"synthetic": True, "batch_size": 16, "eval_batch_size": 256}


def _task(
    name: str,
    description: str,
    make: Callable[[EquilibriumVisionOptions], nn.Module],
    loader: Callable[[EquilibriumVisionOptions, torch.device], DeviceImageData],
    test_options: dict[str, object],
    target: float,
    num_train: int,
) -> TaskInfo:
    return TaskInfo(
        name=name,
        description=description,
        options=EquilibriumVisionOptions,
        test_options=test_options,
        build_model=_builder(make),
        load_data=loader,
        loss=cross_entropy,
        metrics=CLASSIFICATION_METRICS,
        target=Target("val/accuracy", target, "max"),
        chance=1 / NUM_CLASSES,
        eval_every=500,
        resources=Resources(cpus=1, gpus=0.25),
        reference=LCP_PAPER,
        validation=validation_note(num_train),
    )


MNIST_FF = _task(
    "mnist_ff",
    "LCP paper's equilibrium tanh MLP (784-256-256-10) on MNIST.",
    lambda o: ff_model(MNIST_SIZE * MNIST_SIZE, o.width, NUM_CLASSES),
    _mnist_loader,
    {**_TEST, "width": 32},
    0.98,
    num_train=60_000,
)
MNIST_RNN = _task(
    "mnist_rnn",
    "LCP paper's equilibrium tanh RNN (784 → 256 recurrent → 10) on MNIST.",
    lambda o: rnn_model(MNIST_SIZE * MNIST_SIZE, o.width, NUM_CLASSES),
    _mnist_loader,
    {**_TEST, "width": 32},
    0.98,
    num_train=60_000,
)
CIFAR10_CONV_FF = _task(
    "cifar10_conv_ff",
    "LCP paper's equilibrium CNN (conv-ff, ReLU, ~10 M parameters) on CIFAR-10.",
    lambda o: conv_ff_model(o.width_divisor),
    _cifar_loader,
    {**_TEST, "width_divisor": 8},
    0.7,
    num_train=50_000,
)
CIFAR10_CONV_RNN = _task(
    "cifar10_conv_rnn",
    "LCP paper's DEQ ResNet block (conv-rnn) at its fixed point on CIFAR-10.",
    lambda o: conv_rnn_model(o.width_divisor),
    _cifar_loader,
    {**_TEST, "width_divisor": 4},
    0.7,
    num_train=50_000,
)

EQUILIBRIUM_VISION_TASKS = (MNIST_FF, MNIST_RNN, CIFAR10_CONV_FF, CIFAR10_CONV_RNN)
