"""Validation splits: held out of the training data, fixed whatever the run's seed, of the documented size.

One test per kind of held-out data: tensors held on the device (digits, MNIST-1D and the tasks built
on it), images held on the device (MNIST, CIFAR and their equilibrium tasks, synthetic ImageNet) and
ImageNet's ImageFolder tree. ``sparse_signal`` draws its own validation set (its own test file).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from benchmark.tasks import TASKS
from benchmark.tasks.base import TensorClassification, holdout
from benchmark.tasks.imagenet import VALIDATION_IMAGES, ImageFolderData
from benchmark.tasks.vision_data import DeviceImageData, ImageArrays, validation_size
from tests.tasks.vision_fixtures import write_image_folder

CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("one_thread")


def test_holdout_splits_the_indices_the_same_way_on_every_call() -> None:
    keep, held = holdout(100, 20)
    assert len(held) == 20
    assert sorted([*keep.tolist(), *held.tolist()]) == list(range(100))
    again_keep, again_held = holdout(100, 20)
    assert torch.equal(keep, again_keep)
    assert torch.equal(held, again_held)
    torch.manual_seed(123)  # the global RNG (which a run seeds) does not move it
    assert torch.equal(holdout(100, 20)[1], held)
    assert held.tolist() != list(range(20)), "a random draw, not the first examples"


@pytest.mark.parametrize("size", [0, 100, 101])
def test_holdout_refuses_to_leave_nothing_to_train_or_validate_on(size: int) -> None:
    with pytest.raises(ValueError, match=f"{size} examples out of 100"):
        holdout(100, size)


def _rows(x: Tensor) -> set[bytes]:
    return {bytes(row) for row in x.flatten(1).numpy().astype("float32")}


def _one_epoch(data: TensorClassification | DeviceImageData, seed: int) -> Tensor:
    stream = data.train_batches(torch.Generator().manual_seed(seed))
    return torch.cat([next(stream)[0] for _ in range(len(data.train_x) // data.batch_size)])


@pytest.mark.parametrize(
    ("task", "options", "val", "train"),
    [
        ("digits_mlp", {}, 360, 1077),  # the docstring: 360 of the 1,437 training images
        ("mnist1d_mlp", {}, 1000, 3000),  # 1,000 of the 4,000 training samples
        ("pruning", {}, 1000, 3000),
        ("mnist1d_ff", {}, 1000, 3000),
        ("mnist1d_rnn", {"num_samples": 600}, 120, 360),  # as many as the test set
    ],
)
def test_tensor_tasks_hold_out_a_fixed_validation_set(
    task: str, options: dict[str, int], val: int, train: int
) -> None:
    info = TASKS.get(task)
    o = info.options.model_validate({**options, "batch_size": 40})
    data = info.load_data(o, CPU)
    base = getattr(data, "base", data)  # pruning wraps the tensor data
    assert isinstance(base, TensorClassification)
    val_x, test_x = base.splits["val"][0], base.splits["test"][0]
    assert (len(val_x), len(base.train_x)) == (val, train)
    assert len(test_x) == val
    held = _rows(val_x)
    assert not held & _rows(base.train_x)
    assert not held & _rows(test_x)
    for seed in (0, 1):  # whatever the run's seed, training never sees a validation example
        assert not held & _rows(_one_epoch(base, seed))
    reloaded = info.load_data(o, CPU)
    assert torch.equal(getattr(reloaded, "base", reloaded).splits["val"][0], val_x)
    metrics = data.evaluate(info.build_model(o, torch.Generator().manual_seed(0)), step=0)
    assert {"val/loss", "val/accuracy", "test/loss", "test/accuracy"} <= set(metrics)


def _indexed_images(n: int) -> ImageArrays:
    """``n`` 1×1×2 images whose two pixels spell their index (base 256), and labels ``index % 10``."""
    index = torch.arange(n)
    images = torch.stack([index // 256, index % 256], dim=1).to(torch.uint8).view(n, 1, 1, 2)
    test = images[:100].clone()
    test[:, 0, 0, 0] = 255  # indices from 255·256 = 65,280 on: beyond every training index
    return ImageArrays(images, index % 10, test, torch.zeros(100, dtype=torch.long), 10)


def _indices(images: Tensor) -> set[int]:
    pixels = images.reshape(len(images), 2).long()
    return set((pixels[:, 0] * 256 + pixels[:, 1]).tolist())


def _image_data(arrays: ImageArrays) -> DeviceImageData:
    return DeviceImageData(arrays, (0.0,), (1.0,), 500, 1000, CPU, augment=False)


def _pixels(batch: Tensor) -> Tensor:
    return (batch * 255).round().to(torch.uint8)  # undo normalise() with mean 0, std 1


@pytest.mark.parametrize(("num_train", "val"), [(50_000, 5000), (60_000, 5000), (512, 51)])
def test_image_tasks_hold_out_a_fixed_slice_of_the_official_training_set(num_train: int, val: int) -> None:
    """5,000 of CIFAR's 50,000 and MNIST's 60,000 (the docstrings); a tenth of a small set."""
    arrays = _indexed_images(num_train)
    data = _image_data(arrays)
    held = _indices(data.splits["val"][0])
    trained = _indices(data.train_x)
    assert (len(held), len(trained)) == (val, num_train - val)
    assert held | trained == set(range(num_train))
    assert not held & _indices(data.splits["test"][0])
    for seed in (0, 1):
        stream = data.train_batches(torch.Generator().manual_seed(seed))
        seen = set().union(*(_indices(_pixels(next(stream)[0])) for _ in range(len(trained) // 500)))
        assert not held & seen
    assert torch.equal(_image_data(arrays).splits["val"][0], data.splits["val"][0])
    metrics = data.evaluate(nn.Sequential(nn.Flatten(), nn.Linear(2, 10)), step=0)
    assert {"val/loss", "val/accuracy", "test/loss", "test/accuracy"} <= set(metrics)


@pytest.mark.parametrize(
    "task", ["mnist_fcn", "cifar10_fcn", "mnist_ff", "cifar10_conv_rnn", "imagenet_resnet50"]
)
def test_every_image_task_reports_validation_beside_test(task: str) -> None:
    info = TASKS.get(task)
    data = info.load_data(info.options.model_validate(info.test_options), CPU)
    assert isinstance(data, DeviceImageData)  # synthetic data: the same class as the real files
    assert len(data.splits["val"][0]) == validation_size(512)
    test_metrics = {m for m in info.metrics if m.startswith("test/")}
    assert {m.replace("test/", "val/") for m in test_metrics} <= set(info.metrics)


def test_imagenet_validation_is_a_fixed_slice_of_train_and_the_official_val_set_is_test(
    tmp_path: Path,
) -> None:
    assert validation_size(1_281_167, VALIDATION_IMAGES) == 10_000
    write_image_folder(tmp_path, classes=4, per_class=5, size=36)  # 20 training images: 2 held out
    info = TASKS.get("imagenet_resnet50")
    options = info.options.model_validate(
        {"data_dir": str(tmp_path), "num_classes": 4, "image_size": 32, "batch_size": 3, "num_workers": 0}
    )
    data = info.load_data(options, CPU)
    assert isinstance(data, ImageFolderData)
    held, trained = set(data.splits["val"].indices), set(data.train.indices)  # type: ignore[attr-defined]
    assert (len(held), len(trained)) == (2, 18)
    assert held | trained == set(range(20))
    assert data.splits["test"].root.endswith("val")  # type: ignore[attr-defined]
    reloaded = info.load_data(options, CPU)
    assert set(reloaded.splits["val"].indices) == held  # type: ignore[attr-defined]
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4))
    metrics = data.evaluate(model, step=0)
    assert set(info.metrics) <= set(metrics)
