"""Image data for the vision tasks: where it lives, how it is read, and the on-device pipeline.

The data root is the task option ``data_dir``, else the environment variable ``SYNAPSEBENCH_DATA``,
else ``~/.cache/synapsebench/data``. It is resolved when the data is loaded (on the worker), so a
suite's run ids do not depend on a machine's paths. Data sets are read through torchvision's
dataset classes and downloaded only when the task option ``download: true`` is set.

MNIST and CIFAR are small enough to live on the device as uint8 tensors: each training batch is
gathered, randomly cropped and flipped there, with no per-batch DataLoader or host copy.

Validation: :data:`VALIDATION_IMAGES` (5,000) of the official training images are held out once
by :func:`~benchmark.tasks.base.holdout` (a fixed seed, the same for every run) and never trained
on; the official test set is the test split. A training set under 50,000 images (synthetic data,
test fixtures) holds out a tenth of its images instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import torch
from pydantic import Field
from torch import Tensor, nn

from benchmark.tasks.base import TaskData, TaskOptions, holdout
from benchmark.types import Batch

if TYPE_CHECKING:
    import torchvision

DATA_ENV = "SYNAPSEBENCH_DATA"
DEFAULT_DATA_ROOT = Path("~/.cache/synapsebench/data")
SYNTHETIC_TRAIN = 512
SYNTHETIC_TEST = 32
TRAIN_EVAL_SIZE = 10_000
VALIDATION_IMAGES = 5000
"""Training images held out for validation (CIFAR: 5,000 of 50,000; MNIST: 5,000 of 60,000)."""

# Per-channel statistics of the training sets (the values used by jxbz/agd's data/*.py and by
# torchvision's reference scripts).
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


class DataMissingError(FileNotFoundError):
    """A data set is not under its folder, and the task may not download it."""


def data_root(data_dir: str | None) -> Path:
    """The data root: ``data_dir``, else ``$SYNAPSEBENCH_DATA``, else ``~/.cache/synapsebench/data``."""
    chosen = data_dir or os.environ.get(DATA_ENV) or str(DEFAULT_DATA_ROOT)
    return Path(chosen).expanduser()


class VisionOptions(TaskOptions):
    """Options shared by the MNIST and CIFAR tasks (data location, batch, bias-free variant)."""

    data_dir: str | None = None
    """Root folder of the data sets; None: ``$SYNAPSEBENCH_DATA``, else ``~/.cache/synapsebench/data``."""
    download: bool = False
    """Fetch the data set into the root when it is missing (needs internet)."""
    synthetic: bool = False
    """Random images of the right shape instead of the data set (CI, throughput); accuracy is chance."""
    batch_size: Annotated[int, Field(gt=0)] = 128
    eval_batch_size: Annotated[int, Field(gt=0)] = 1000
    bias: bool = True
    """False gives the bias-free variant AGD needs: no biases and BatchNorm(affine=False)."""


@dataclass(frozen=True, slots=True)
class ImageArrays:
    """A whole image data set as uint8 NCHW tensors and int64 labels, on the CPU."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int


def _fetch_hint(root: Path, dataset: str) -> str:
    return (
        f"set the task option `download: true` (in a suite: `options: {{download: true}}`), or run "
        f"`python -c \"import torchvision; torchvision.datasets.{dataset}('{root}', download=True)\"`; "
        f"point `data_dir` or ${DATA_ENV} at another root if the data is elsewhere"
    )


def _unverified(cls: type[torchvision.datasets.CIFAR10]) -> type[torchvision.datasets.CIFAR10]:
    """The CIFAR class with existence checks only: torchvision compares md5 sums of the files."""
    return type(
        f"Unverified{cls.__name__}",
        (cls,),
        {
            "train_list": [[name, None] for name, _ in cls.train_list],
            "test_list": [[name, None] for name, _ in cls.test_list],
            "meta": {**cls.meta, "md5": None},
        },
    )


@lru_cache(maxsize=4)
def read_dataset(dataset: str, root: str, download: bool, verify_checksums: bool = True) -> ImageArrays:
    """Read MNIST, CIFAR10 or CIFAR100 through torchvision into tensors (cached per process).

    Raises:
        DataMissingError: the files are not under ``root`` and ``download`` is False.
    """
    import torchvision  # imported here: torchvision takes seconds, most tasks never need it

    classes = {
        "MNIST": torchvision.datasets.MNIST,
        "CIFAR10": torchvision.datasets.CIFAR10,
        "CIFAR100": torchvision.datasets.CIFAR100,
    }
    cls = classes[dataset]
    if dataset == "MNIST":
        folder = Path(root) / "MNIST" / "raw"
    else:
        folder = Path(root) / cls.base_folder
        if not verify_checksums:
            cls = _unverified(cls)
    try:
        train = cls(root, train=True, download=download)
        test = cls(root, train=False, download=False)
    except RuntimeError as exc:  # torchvision's "Dataset not found or corrupted"
        hint = _fetch_hint(Path(root), dataset)
        raise DataMissingError(
            f"{dataset} not found (or corrupted) in {folder}: {exc}. To fetch it, {hint}"
        ) from None

    def images(ds: torchvision.datasets.VisionDataset) -> Tensor:
        data = torch.as_tensor(ds.data)
        # MNIST keeps (N, H, W); CIFAR keeps (N, H, W, C). Both become (N, C, H, W).
        return data.unsqueeze(1).contiguous() if data.dim() == 3 else data.permute(0, 3, 1, 2).contiguous()

    def labels(ds: torchvision.datasets.VisionDataset) -> Tensor:
        return torch.as_tensor(ds.targets, dtype=torch.long)

    return ImageArrays(images(train), labels(train), images(test), labels(test), len(train.classes))


def validation_size(num_train: int, size: int = VALIDATION_IMAGES) -> int:
    """Images to hold out of ``num_train``: ``size``, or a tenth of a set too small to spare it."""
    return min(size, num_train // 10)


def validation_note(num_train: int) -> str:
    """The validation split in one line, for ``synapsebench list``."""
    return (
        f"{VALIDATION_IMAGES:,} of the {num_train:,} official training images, fixed: the same for every seed"
    )


def synthetic_arrays(channels: int, size: int, num_classes: int) -> ImageArrays:
    """Random uint8 images and labels of a data set's shape, the same every time (seed 0)."""
    gen = torch.Generator().manual_seed(0)

    def draw(n: int) -> tuple[Tensor, Tensor]:
        x = torch.randint(0, 256, (n, channels, size, size), generator=gen, dtype=torch.uint8)
        return x, torch.randint(0, num_classes, (n,), generator=gen)

    (train_x, train_y), (test_x, test_y) = draw(SYNTHETIC_TRAIN), draw(SYNTHETIC_TEST)
    return ImageArrays(train_x, train_y, test_x, test_y, num_classes)


def crop_flip(images: Tensor, offsets: Tensor, flips: Tensor, padding: int) -> Tensor:
    """Random crop with zero padding and horizontal flip of a batch, in one gather on its device.

    Args:
        images: (B, C, H, W), any dtype.
        offsets: (B, 2) int64 row and column offsets in ``[0, 2·padding]`` into the padded image.
        flips: (B,) bool, which images to mirror left-right.
        padding: pixels of zeros added on each side before cropping back to H × W.

    Returns:
        (B, C, H, W): image ``b`` is ``padded[b, :, r:r+H, c:c+W]``, mirrored where ``flips[b]``,
        which is what torchvision's ``RandomCrop(H, padding)`` then ``RandomHorizontalFlip`` give.
    """
    b, _, h, w = images.shape
    padded = nn.functional.pad(images, (padding,) * 4)
    rows = offsets[:, :1] + torch.arange(h, device=images.device)  # (B, H)
    cols = torch.arange(w, device=images.device).expand(b, w)
    cols = offsets[:, 1:] + torch.where(flips[:, None], w - 1 - cols, cols)  # (B, W)
    batch = torch.arange(b, device=images.device)[:, None, None]
    # Advanced indices around a slice put their dims first: the result is (B, H, W, C).
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


class DeviceImageData(TaskData):
    """An image classification data set held on the device as uint8; batches are built there.

    ``validation`` training images (:func:`validation_size`) are held out by
    :func:`~benchmark.tasks.base.holdout` as the validation split; the rest are trained on. Each
    epoch is a permutation drawn from the data stream's generator. Augmentation (random crop with
    ``padding`` and horizontal flip) draws its offsets from the same generator, so a seed fixes the
    whole input sequence. Evaluation runs over the validation and test sets, and over a fixed subset
    of at most 10,000 training images for ``train/loss``, in chunks of ``eval_batch_size``.
    """

    def __init__(
        self,
        arrays: ImageArrays,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        batch_size: int,
        eval_batch_size: int,
        device: torch.device,
        augment: bool,
        padding: int = 4,
        memory_format: torch.memory_format = torch.contiguous_format,
        top5: bool = False,
        validation: int | None = None,
    ) -> None:
        n = len(arrays.train_x)
        keep, held = holdout(n, validation_size(n) if validation is None else validation)
        self.train_x = arrays.train_x[keep].to(device)
        self.train_y = arrays.train_y[keep].to(device)
        self.splits = {
            "val": (arrays.train_x[held].to(device), arrays.train_y[held].to(device)),
            "test": (arrays.test_x.to(device), arrays.test_y.to(device)),
        }
        self.batch_size = min(batch_size, len(self.train_x))
        self.eval_batch_size = eval_batch_size
        self.augment = augment
        self.padding = padding
        self.device = device
        self.memory_format = memory_format
        self.top5 = top5
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        # train/loss is measured on a fixed random subset no larger than the test set (and at most
        # 10,000 images), so it costs at most one test pass; all 45,000 CIFAR training images
        # would make it 4.5×.
        size = min(TRAIN_EVAL_SIZE, len(arrays.test_x), len(self.train_x))
        subset = torch.randperm(len(self.train_x), generator=torch.Generator().manual_seed(0))
        self.train_eval_idx = subset[:size].to(device)

    def normalize(self, images: Tensor) -> Tensor:
        return ((images.float() / 255 - self.mean) / self.std).contiguous(memory_format=self.memory_format)

    def train_batches(self, generator: torch.Generator) -> Iterator[Batch]:
        n = len(self.train_x)
        while True:
            order = torch.randperm(n, generator=generator).to(self.device)
            for start in range(0, n - self.batch_size + 1, self.batch_size):
                idx = order[start : start + self.batch_size]
                images = self.train_x[idx]
                if self.augment:
                    size = (len(idx), 2)
                    offsets = torch.randint(0, 2 * self.padding + 1, size, generator=generator)
                    flips = torch.rand(len(idx), generator=generator) < 0.5
                    images = crop_flip(images, offsets.to(self.device), flips.to(self.device), self.padding)
                yield self.normalize(images), self.train_y[idx]

    @torch.no_grad()
    def _score(self, model: nn.Module, images: Tensor, labels: Tensor) -> tuple[float, float, float]:
        """Mean cross-entropy, top-1 and top-5 accuracy of ``model`` in chunks of ``eval_batch_size``."""
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        correct5 = torch.zeros((), device=self.device)
        for start in range(0, len(images), self.eval_batch_size):
            x = self.normalize(images[start : start + self.eval_batch_size])
            y = labels[start : start + self.eval_batch_size]
            logits = model(x).float()
            loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(dim=1) == y).sum()
            if self.top5:
                best = logits.topk(min(5, logits.shape[1]), dim=1).indices
                correct5 += (best == y[:, None]).any(dim=1).sum()
        n = len(images)
        return float(loss_sum) / n, float(correct) / n, float(correct5) / n

    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        """Validation and test loss and accuracy, and ``train/loss`` on un-augmented training images."""
        was_training = model.training
        model.eval()
        train_loss, _, _ = self._score(
            model, self.train_x[self.train_eval_idx], self.train_y[self.train_eval_idx]
        )
        metrics = {"train/loss": train_loss}
        for split, (images, labels) in self.splits.items():
            loss, accuracy, top5 = self._score(model, images, labels)
            metrics |= {f"{split}/loss": loss, f"{split}/accuracy": accuracy}
            if self.top5:
                metrics[f"{split}/top5"] = top5
        model.train(was_training)
        return metrics
