"""ImageNet (ILSVRC-2012) with torchvision's ResNet-50 (``imagenet_resnet50``).

Data: an ImageFolder tree at ``<data root>/imagenet/{train,val}/<class>/*.JPEG`` (the validation set
sorted into class folders), read by ``torchvision.datasets.ImageFolder``. It is never downloaded:
ImageNet needs an account at image-net.org. Training uses RandomResizedCrop(224) and horizontal
flip; evaluation Resize(256) and CenterCrop(224), as jxbz/agd and torchvision's references do.
Pipeline: DataLoader workers decode JPEGs, batches come in pinned memory and go to the GPU
asynchronously as channels_last; the model runs under bf16 autocast on CUDA.
Model: torchvision's ResNet-50; ``bias: false`` removes the fc bias and the BatchNorm affines.
Target: 0.655 top-1 on the validation set, AGD's result in the paper (arXiv 2304.05187: ResNet-50,
batch 1024, cross-entropy, 65.5 "after 350 epochs"; its SGD baseline peaks near 60).
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
    seeded_build,
)
from benchmark.tasks.vision_data import (
    TRAIN_EVAL_SIZE,
    DataMissingError,
    DeviceImageData,
    data_root,
    synthetic_arrays,
)
from benchmark.tasks.vision_models import imagenet_resnet50

if TYPE_CHECKING:
    import torchvision
from benchmark.types import Batch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FOLDER = "imagenet"


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
    """Evaluate on the first ``eval_batches`` validation batches only; None: all 50,000 images."""
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
    """ImageNet through DataLoader workers: pinned batches, copied asynchronously as channels_last."""

    def __init__(
        self,
        train: torchvision.datasets.ImageFolder,
        val: torchvision.datasets.ImageFolder,
        options: ImageNetOptions,
        device: torch.device,
    ) -> None:
        self.train = train
        self.val = val
        # train/loss: a fixed random subset of training images (ImageFolder sorts them by class),
        # seen through the evaluation transform; the copy shares the file list with ``train``.
        train_eval = copy.copy(train)
        train_eval.transform = val.transform
        size = min(TRAIN_EVAL_SIZE, len(val))  # as many as the validation set, at most 10,000
        subset = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:size]
        self.train_eval: Dataset[tuple[Tensor, int]] = Subset(train_eval, subset.tolist())
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
        """Validation loss, top-1 and top-5, and ``train/loss`` on a fixed subset of training images."""
        was_training = model.training
        model.eval()
        train_loss, _, _ = self._score(model, self.train_eval)
        loss, top1, top5 = self._score(model, self.val)
        model.train(was_training)
        return {"train/loss": train_loss, "test/loss": loss, "test/accuracy": top1, "test/top5": top5}


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
        "num_classes": 10,
        "num_workers": 0,
    },
    build_model=build_resnet50,
    load_data=load_data,
    loss=cross_entropy,
    metrics=("train/loss", "test/loss", "test/accuracy", "test/top5"),
    target=Target("test/accuracy", 0.655, "max"),
    eval_every=5000,
    resources=Resources(cpus=12, gpus=1),
    reference="https://arxiv.org/abs/2304.05187",
)
