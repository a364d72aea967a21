"""MNIST with the AGD paper's fully connected network (``mnist_fcn``).

Data: MNIST (60,000 train / 10,000 test, 28×28 grey), read by ``torchvision.datasets.MNIST`` from
``<data root>/MNIST/raw`` and held on the device; normalisation only, no augmentation (as jxbz/agd's
``data/mnist.py``). Validation: 5,000 of the 60,000 official training images, held out once with a
fixed seed, the same for every run; 55,000 are trained on; the official test set is test.
Model: ``depth`` bias-free-able Linear layers of ``width`` units with ``sqrt(2)·ReLU`` (the paper's FCN).
Target: 0.98 validation accuracy. The AGD paper reports no MNIST number (its repository ships a loader
only); 98% is the level an MLP of this size reaches with a tuned optimizer.
Source: Bernstein et al. 2023, "Automatic Gradient Descent", arXiv 2304.05187 (architecture);
LeCun et al. 1998, http://yann.lecun.com/exdb/mnist/ (data).
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field

from benchmark.tasks.base import (
    CLASSIFICATION_METRICS,
    Resources,
    Target,
    TaskInfo,
    cross_entropy,
    seeded_build,
)
from benchmark.tasks.vision_data import (
    MNIST_MEAN,
    MNIST_STD,
    DeviceImageData,
    VisionOptions,
    data_root,
    read_dataset,
    synthetic_arrays,
    validation_note,
)
from benchmark.tasks.vision_models import fcn

NUM_CLASSES = 10
IMAGE_SIZE = 28


class MNISTFCNOptions(VisionOptions):
    depth: Annotated[int, Field(ge=1)] = 3
    """Number of Linear layers (the paper's depth), hidden ones ``width`` wide."""
    width: Annotated[int, Field(gt=0)] = 256


def build_fcn(options: MNISTFCNOptions, generator: torch.Generator) -> torch.nn.Module:
    return seeded_build(
        generator,
        lambda: fcn(IMAGE_SIZE * IMAGE_SIZE, NUM_CLASSES, options.depth, options.width, options.bias),
    )


def load_data(options: MNISTFCNOptions, device: torch.device) -> DeviceImageData:
    if options.synthetic:
        arrays = synthetic_arrays(1, IMAGE_SIZE, NUM_CLASSES)
    else:
        arrays = read_dataset("MNIST", str(data_root(options.data_dir)), options.download)
    return DeviceImageData(
        arrays, MNIST_MEAN, MNIST_STD, options.batch_size, options.eval_batch_size, device, augment=False
    )


MNIST_FCN = TaskInfo(
    name="mnist_fcn",
    description="The AGD paper's fully connected network on MNIST (torchvision data, on the device).",
    options=MNISTFCNOptions,
    test_options={"synthetic": True, "depth": 2, "width": 16, "batch_size": 16},
    build_model=build_fcn,
    load_data=load_data,
    loss=cross_entropy,
    metrics=CLASSIFICATION_METRICS,
    target=Target("val/accuracy", 0.98, "max"),
    chance=1 / NUM_CLASSES,
    eval_every=500,
    resources=Resources(cpus=1, gpus=0.1),
    reference="https://arxiv.org/abs/2304.05187",
    validation=validation_note(60_000),
)
