"""ImageNet (ILSVRC-2012) with torchvision's ResNet-50 (``imagenet_resnet50``).

Data: an ImageFolder tree at ``<data root>/imagenet/{train,val}/<class>/*.JPEG`` (the validation set
sorted into class folders), read by ``torchvision.datasets.ImageFolder``. It is never downloaded:
ImageNet needs an account at image-net.org. Training uses RandomResizedCrop(224) and horizontal
flip; evaluation Resize(256) and CenterCrop(224), as jxbz/agd and torchvision's references do.
Splits: a fixed slice of :data:`VALIDATION_IMAGES` (10,000) of the 1,281,167 official training images
is the validation split, held out once with a fixed seed, the same for every run, seen through the
evaluation transform and never trained on; the official validation set (50,000) is the test split.
(AlgoPerf tests on ImageNet-v2 and validates on the official set; v2 cannot be shipped.)
Pipeline: DataLoader workers decode JPEGs, batches come in pinned memory and go to the GPU
asynchronously as channels_last; the model runs under bf16 autocast on CUDA.
Model: torchvision's ResNet-50; ``bias: false`` removes the fc bias and the BatchNorm affines.
Target: 0.655 validation top-1, AGD's result on the official validation set in the paper (Bernstein
et al. 2023, arXiv 2304.05187: ResNet-50, batch 1024, cross-entropy, 65.5 "after 350 epochs"; its SGD
baseline peaks near 60).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from benchmark.tasks.base import (
    Resources,
    Target,
    TaskData,
    TaskInfo,
    TaskOptions,
    cross_entropy,
    holdout,
    seeded_build,
)
from benchmark.tasks.vision_data import (
    TRAIN_EVAL_SIZE,
    DataMissingError,
    DeviceImageData,
    data_root,
    synthetic_arrays,
    validation_size,
)
from benchmark.tasks.vision_models import imagenet_resnet50

if TYPE_CHECKING:
    import torchvision
from benchmark.types import Batch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FOLDER = "imagenet"
VALIDATION_IMAGES = 10_000
"""Official training images held out as the validation split."""
METRICS = tuple(f"{split}/{m}" for split in ("val", "test") for m in ("loss", "accuracy", "top5"))


class ImageNetOptions(TaskOptions):
    data_dir: str | None = None
    """Root folder holding ``imagenet/{train,val}``; None: ``$SYNAPSEBENCH_DATA``, else the cache."""
    synthetic: bool = False
    """Random images of the right shape instead of ImageNet (CI, throughput); accuracy is chance."""
    batch_size: Annotated[int, Field(gt=0)] = 256
    eval_batch_size: Annotated[int, Field(gt=0)] = 256
    image_size: Annotated[int, Field(ge=32)] = 224
    num_classes: Annotated[int, Field(ge=2)] = 1000
    num_workers: Annotated[int, Field(ge=0)] = 10
    """DataLoader processes decoding JPEGs (the task asks Ray for two CPUs more)."""
    eval_batches: Annotated[int, Field(gt=0)] | None = None
    """Evaluate on the first ``eval_batches`` batches of each held-out split only; None: all of them."""
    bias: bool = True
    """False gives the bias-free variant AGD needs: no fc bias and BatchNorm(affine=False)."""


def build_resnet50(options: ImageNetOptions, generator: torch.Generator) -> nn.Module:
    return seeded_build(generator, lambda: imagenet_resnet50(options.num_classes, options.bias))


def read_image_folders(options: ImageNetOptions) -> tuple[torchvision.datasets.ImageFolder, ...]:
    """The train and val ImageFolders with their transforms.

    Raises:
        DataMissingError: ``train/`` or ``val/`` is missing under ``<root>/imagenet``.
        ValueError: the tree's number of classes differs from ``num_classes``.
    """
    folder = data_root(options.data_dir) / FOLDER
    missing = [split for split in ("train", "val") if not (folder / split).is_dir()]
    if missing:
        raise DataMissingError(
            f"ImageNet not found in {folder}: no {' or '.join(missing)}/ folder. It cannot be downloaded "
            "automatically: get ILSVRC-2012 from https://image-net.org, extract it as "
            f"{folder}/train/<wnid>/*.JPEG and {folder}/val/<wnid>/*.JPEG (sort val into class folders, "
            "e.g. with valprep.sh from pytorch/examples), or point the task option `data_dir` or "
            "$SYNAPSEBENCH_DATA at the folder that holds imagenet/"
        )
    import torchvision  # imported here: torchvision takes seconds, most tasks never need it
    from torchvision import transforms

    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(options.image_size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            normalize,
        ]
    )
    resize = round(options.image_size * 256 / 224)
    val_tf = transforms.Compose(
        [
            transforms.Resize(resize),
            transforms.CenterCrop(options.image_size),
            transforms.ToTensor(),
            normalize,
        ]
    )
    train = torchvision.datasets.ImageFolder(str(folder / "train"), transform=train_tf)
    val = torchvision.datasets.ImageFolder(str(folder / "val"), transform=val_tf)
    for split, ds in (("train", train), ("val", val)):
        if len(ds.classes) != options.num_classes:
            raise ValueError(
                f"{folder / split} has {len(ds.classes)} class folders but the task option "
                f"num_classes is {options.num_classes}"
            )
    return train, val


class ImageFolderData(TaskData):
    """ImageNet through DataLoader workers: pinned batches, copied asynchronously as channels_last.

    ``train`` is the official training folder, of which :func:`~benchmark.tasks.base.holdout` keeps
    :data:`VALIDATION_IMAGES` (fewer for a small tree: :func:`~benchmark.tasks.vision_data.validation_size`)
    as the validation split; ``test`` is the official validation folder.
    """

    def __init__(
        self,
        train: torchvision.datasets.ImageFolder,
        test: torchvision.datasets.ImageFolder,
        options: ImageNetOptions,
        device: torch.device,
    ) -> None:
        keep, held = holdout(len(train), validation_size(len(train), VALIDATION_IMAGES))
        self.train: Subset[tuple[Tensor, int]] = Subset(train, keep.tolist())
        # Held-out and train/loss images are seen through the evaluation transform; the copy shares
        # the file list with ``train``.
        plain = copy.copy(train)
        plain.transform = test.transform
        # train/loss: a fixed random subset of the trained-on images (ImageFolder sorts them by class).
        size = min(TRAIN_EVAL_SIZE, len(test), len(keep))  # as many as the test set, at most 10,000
        subset = keep[torch.randperm(len(keep), generator=torch.Generator().manual_seed(0))[:size]]
        self.train_eval: Dataset[tuple[Tensor, int]] = Subset(plain, subset.tolist())
        self.splits: dict[str, Dataset[tuple[Tensor, int]]] = {
            "val": Subset(plain, held.tolist()),
            "test": test,
        }
        self.options = options
        self.device = device
        self.cuda = device.type == "cuda"

    def _to_device(self, images: Tensor, labels: Tensor) -> Batch:
        images = images.to(self.device, non_blocking=True)
        if self.cuda:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels.to(self.device, non_blocking=True)

    def train_batches(self, generator: torch.Generator) -> Iterator[Batch]:
        workers = self.options.num_workers
        loader = DataLoader(
            self.train,
            batch_size=min(self.options.batch_size, len(self.train)),
            shuffle=True,
            generator=generator,  # epoch order and the workers' augmentation seeds
            num_workers=workers,
            pin_memory=self.cuda,
            drop_last=True,
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
        )
        while True:
            for images, labels in loader:
                yield self._to_device(images, labels)

    @torch.no_grad()
    def _score(self, model: nn.Module, dataset: Dataset[tuple[Tensor, int]]) -> tuple[float, float, float]:
        """Mean cross-entropy, top-1 and top-5 accuracy over ``dataset``, for at most ``eval_batches``."""
        loader = DataLoader(
            dataset,
            batch_size=self.options.eval_batch_size,
            shuffle=False,
            num_workers=self.options.num_workers,
            pin_memory=self.cuda,
        )
        loss_sum = torch.zeros((), device=self.device)
        top1 = torch.zeros((), device=self.device)
        top5 = torch.zeros((), device=self.device)
        seen = 0
        for i, (images, labels) in enumerate(loader):
            if self.options.eval_batches is not None and i >= self.options.eval_batches:
                break
            x, y = self._to_device(images, labels)
            logits = model(x).float()
            loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum")
            best = logits.topk(min(5, logits.shape[1]), dim=1).indices
            top1 += (best[:, 0] == y).sum()
            top5 += (best == y[:, None]).any(dim=1).sum()
            seen += len(y)
        return float(loss_sum) / seen, float(top1) / seen, float(top5) / seen

    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        """Loss, top-1 and top-5 of each held-out split, and ``train/loss`` on trained-on images."""
        was_training = model.training
        model.eval()
        train_loss, _, _ = self._score(model, self.train_eval)
        metrics = {"train/loss": train_loss}
        for split, dataset in self.splits.items():
            loss, top1, top5 = self._score(model, dataset)
            metrics |= {f"{split}/loss": loss, f"{split}/accuracy": top1, f"{split}/top5": top5}
        model.train(was_training)
        return metrics


def load_data(options: ImageNetOptions, device: torch.device) -> TaskData:
    if options.synthetic:
        # Decoded-looking tensors straight on the device: measures the model, not JPEG decoding.
        arrays = synthetic_arrays(3, options.image_size, options.num_classes)
        memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
        return DeviceImageData(
            arrays,
            IMAGENET_MEAN,
            IMAGENET_STD,
            options.batch_size,
            options.eval_batch_size,
            device,
            augment=False,
            memory_format=memory_format,
            top5=True,
            validation=validation_size(len(arrays.train_x), VALIDATION_IMAGES),
        )
    train, val = read_image_folders(options)
    return ImageFolderData(train, val, options, device)


IMAGENET_RESNET50 = TaskInfo(
    name="imagenet_resnet50",
    description="torchvision ResNet-50 on ImageNet (ImageFolder tree, DataLoader workers, bf16 on CUDA).",
    options=ImageNetOptions,
    test_options={
        "synthetic": True,
        "image_size": 32,
        "batch_size": 4,
        "eval_batch_size": 64,
        "num_workers": 0,
    },
    build_model=build_resnet50,
    load_data=load_data,
    loss=cross_entropy,
    metrics=("train/loss", *METRICS),
    target=Target("val/accuracy", 0.655, "max"),
    chance=1 / 1000,
    eval_every=5000,
    resources=Resources(cpus=12, gpus=1),
    reference="https://arxiv.org/abs/2304.05187",
    validation=(
        "10,000 of the 1,281,167 official training images, fixed: the same for every seed "
        "(the official validation set is the test split)"
    ),
)
