"""CIFAR-10 and CIFAR-100 with the AGD paper's networks: an FCN, VGG-16 and ResNet-18.

Data: CIFAR-10/100 (50,000 train / 10,000 test, 32×32 RGB), read by ``torchvision.datasets.CIFAR10``
/ ``CIFAR100`` from ``<data root>/cifar-10-batches-py`` / ``cifar-100-python`` and held on the
device; random crop (padding 4) and horizontal flip on the device, per-channel normalisation (as
jxbz/agd's ``data/cifar*.py``). Validation: 5,000 of the 50,000 official training images, held out
once with a fixed seed, the same for every run; 45,000 are trained on; the official test set is test.
Models: :mod:`benchmark.tasks.vision_models`; ``bias: false`` gives the bias-free, affine-free
networks the paper trains with every rule.
Targets (validation accuracy, at the level of the papers' test accuracies): the AGD paper's own
numbers where it has one for the pair (Bernstein et al. 2023, "Automatic Gradient Descent", arXiv
2304.05187: FCN d16 w512 CIFAR-10 52.7, ResNet-18 CIFAR-10 91.2, VGG-16 CIFAR-100 67.4), else the
architecture's source (kuangliu/pytorch-cifar README: VGG-16 CIFAR-10 92.64;
weiaicunzai/pytorch-cifar100 README: ResNet-18 CIFAR-100 top-1 error 24.39, i.e. 75.6).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn

from benchmark.tasks.base import (
    CLASSIFICATION_METRICS,
    Resources,
    Target,
    TaskInfo,
    cross_entropy,
    seeded_build,
)
from benchmark.tasks.vision_data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    DeviceImageData,
    VisionOptions,
    data_root,
    read_dataset,
    synthetic_arrays,
    validation_note,
)
from benchmark.tasks.vision_models import cifar_resnet18, cifar_vgg16, fcn

IMAGE_SIZE = 32
CHANNELS = 3
STEPS_PER_EPOCH = 390  # 50,000 / 128, the paper's batch size (an evaluation per paper epoch)
AGD_PAPER = "https://arxiv.org/abs/2304.05187"

Dataset = Literal["CIFAR10", "CIFAR100"]
NUM_CLASSES: dict[Dataset, int] = {"CIFAR10": 10, "CIFAR100": 100}
STATS: dict[Dataset, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "CIFAR10": (CIFAR10_MEAN, CIFAR10_STD),
    "CIFAR100": (CIFAR100_MEAN, CIFAR100_STD),
}


class CIFAROptions(VisionOptions):
    augment: bool = True
    """Random crop (padding 4) and horizontal flip of each training batch."""
    verify_checksums: bool = True
    """Compare the files' md5 sums with torchvision's (off only for hand-made test data)."""


class CIFARFCNOptions(CIFAROptions):
    depth: Annotated[int, Field(ge=1)] = 16
    """Number of Linear layers (the paper's depth; Fig. 1 uses 16)."""
    width: Annotated[int, Field(gt=0)] = 512


def _loader(dataset: Dataset) -> Callable[[CIFAROptions, torch.device], DeviceImageData]:
    def load_data(options: CIFAROptions, device: torch.device) -> DeviceImageData:
        if options.synthetic:
            arrays = synthetic_arrays(CHANNELS, IMAGE_SIZE, NUM_CLASSES[dataset])
        else:
            root = str(data_root(options.data_dir))
            arrays = read_dataset(dataset, root, options.download, options.verify_checksums)
        mean, std = STATS[dataset]
        return DeviceImageData(
            arrays, mean, std, options.batch_size, options.eval_batch_size, device, augment=options.augment
        )

    return load_data


def _fcn_builder(dataset: Dataset) -> Callable[[CIFARFCNOptions, torch.Generator], nn.Module]:
    def build(options: CIFARFCNOptions, generator: torch.Generator) -> nn.Module:
        in_features = CHANNELS * IMAGE_SIZE * IMAGE_SIZE
        return seeded_build(
            generator,
            lambda: fcn(in_features, NUM_CLASSES[dataset], options.depth, options.width, options.bias),
        )

    return build


def _net_builder(
    dataset: Dataset, net: Callable[[int, bool], nn.Module]
) -> Callable[[CIFAROptions, torch.Generator], nn.Module]:
    def build(options: CIFAROptions, generator: torch.Generator) -> nn.Module:
        return seeded_build(generator, lambda: net(NUM_CLASSES[dataset], options.bias))

    return build


TEST_OPTIONS: Mapping[str, object] = {"synthetic": True, "batch_size": 8, "eval_batch_size": 128}


def _task(
    name: str,
    dataset: Dataset,
    model: str,
    options: type[CIFAROptions],
    build: Callable[..., nn.Module],
    target: float,
    source: str,
    gpus: float,
    test_options: Mapping[str, object] | None = None,
) -> TaskInfo:
    return TaskInfo(
        name=name,
        description=f"{model} on {dataset[:5]}-{dataset[5:]} (torchvision data, augmented on the device).",
        options=options,
        test_options=TEST_OPTIONS if test_options is None else test_options,
        build_model=build,
        load_data=_loader(dataset),
        loss=cross_entropy,
        metrics=CLASSIFICATION_METRICS,
        target=Target("val/accuracy", target, "max"),
        chance=1 / NUM_CLASSES[dataset],
        eval_every=STEPS_PER_EPOCH,
        resources=Resources(cpus=1, gpus=gpus),
        reference=source,
        validation=validation_note(50_000),
    )


CIFAR10_FCN = _task(
    "cifar10_fcn",
    "CIFAR10",
    "The AGD paper's FCN (depth 16, width 512)",
    CIFARFCNOptions,
    _fcn_builder("CIFAR10"),
    target=0.527,
    source=AGD_PAPER,
    gpus=0.2,
    test_options={**TEST_OPTIONS, "depth": 3, "width": 16},
)
CIFAR10_VGG = _task(
    "cifar10_vgg",
    "CIFAR10",
    "VGG-16 (BatchNorm, 512→C head)",
    CIFAROptions,
    _net_builder("CIFAR10", cifar_vgg16),
    target=0.9264,
    source="https://github.com/kuangliu/pytorch-cifar",
    gpus=0.5,
)
CIFAR10_RESNET18 = _task(
    "cifar10_resnet18",
    "CIFAR10",
    "ResNet-18 (CIFAR stem)",
    CIFAROptions,
    _net_builder("CIFAR10", cifar_resnet18),
    target=0.912,
    source=AGD_PAPER,
    gpus=0.5,
)
CIFAR100_VGG = _task(
    "cifar100_vgg",
    "CIFAR100",
    "VGG-16 (BatchNorm, 512→C head)",
    CIFAROptions,
    _net_builder("CIFAR100", cifar_vgg16),
    target=0.674,
    source=AGD_PAPER,
    gpus=0.5,
)
CIFAR100_RESNET18 = _task(
    "cifar100_resnet18",
    "CIFAR100",
    "ResNet-18 (CIFAR stem)",
    CIFAROptions,
    _net_builder("CIFAR100", cifar_resnet18),
    target=0.756,
    source="https://github.com/weiaicunzai/pytorch-cifar100",
    gpus=0.5,
)

CIFAR_TASKS = (CIFAR10_FCN, CIFAR10_VGG, CIFAR10_RESNET18, CIFAR100_VGG, CIFAR100_RESNET18)
