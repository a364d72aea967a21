"""The vision tasks: real torchvision loaders on fixture-written files, the on-device pipeline, models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from torch import nn

from benchmark import train
from benchmark.rules import RULES
from benchmark.spec import Budget, RunSpec
from benchmark.tasks import TASKS
from benchmark.tasks.imagenet import ImageFolderData
from benchmark.tasks.vision_data import (
    DATA_ENV,
    DataMissingError,
    DeviceImageData,
    crop_flip,
    data_root,
    read_dataset,
)
from benchmark.tasks.vision_models import cifar_resnet18, cifar_vgg16, fcn, imagenet_resnet50
from tests.tasks.vision_fixtures import write_cifar10, write_cifar100, write_image_folder, write_mnist

VISION_TASKS = (
    "mnist_fcn",
    "cifar10_fcn",
    "cifar10_vgg",
    "cifar10_resnet18",
    "cifar100_vgg",
    "cifar100_resnet18",
    "imagenet_resnet50",
)
CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


def load(task: str, **options: object) -> object:
    info = TASKS.get(task)
    return info.load_data(info.options.model_validate(options), CPU)


# --- data on disk, read through torchvision -------------------------------------------------


def test_mnist_idx_files_are_read_through_torchvision(tmp_path: Path) -> None:
    written = write_mnist(tmp_path)
    data = load("mnist_fcn", data_dir=str(tmp_path), batch_size=32)
    assert isinstance(data, DeviceImageData)
    assert data.train_x.shape == (256 - 25, 1, 28, 28)  # a tenth of a small set is held out
    assert data.train_x.dtype == torch.uint8
    read = torch.cat([data.train_x, data.splits["val"][0]])[:, 0]
    assert sorted(map(bytes, read.numpy())) == sorted(map(bytes, written["train_x"]))
    np.testing.assert_array_equal(data.splits["test"][1].numpy(), written["t10k_y"])
    x, y = next(data.train_batches(torch.Generator().manual_seed(0)))
    assert x.shape == (32, 1, 28, 28)
    assert x.dtype == torch.float32
    assert y.shape == (32,)
    # Normalised with MNIST's statistics: pixel 0 maps to -mean/std.
    assert float(x.min()) == pytest.approx(-0.1307 / 0.3081, abs=1e-5)
    metrics = data.evaluate(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), step=0)
    assert set(metrics) == {"train/loss", "val/loss", "val/accuracy", "test/loss", "test/accuracy"}


def test_cifar10_pickle_batches_are_read_in_channel_order(tmp_path: Path) -> None:
    written = write_cifar10(tmp_path)
    arrays = read_dataset("CIFAR10", str(tmp_path), False, False)
    np.testing.assert_array_equal(arrays.train_x.numpy(), written["train_x"])
    np.testing.assert_array_equal(arrays.train_y.numpy(), written["train_y"])
    np.testing.assert_array_equal(arrays.test_x.numpy(), written["test_x"])
    data = load("cifar10_fcn", data_dir=str(tmp_path), verify_checksums=False, augment=False, batch_size=50)
    np.testing.assert_array_equal(data.splits["test"][0].numpy(), written["test_x"])


def test_cifar10_md5_check_stays_on_by_default(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    with pytest.raises(DataMissingError, match="corrupted"):
        load("cifar10_vgg", data_dir=str(tmp_path))


def test_cifar100_reads_fine_labels(tmp_path: Path) -> None:
    written = write_cifar100(tmp_path)
    arrays = read_dataset("CIFAR100", str(tmp_path), False, False)
    assert arrays.num_classes == 100
    np.testing.assert_array_equal(arrays.train_y.numpy(), written["train_y"])
    np.testing.assert_array_equal(arrays.test_x.numpy(), written["test_x"])


@pytest.mark.parametrize(
    ("task", "folder", "fetch"),
    [
        ("mnist_fcn", "MNIST/raw", "torchvision.datasets.MNIST"),
        ("cifar10_resnet18", "cifar-10-batches-py", "torchvision.datasets.CIFAR10"),
        ("cifar100_vgg", "cifar-100-python", "torchvision.datasets.CIFAR100"),
    ],
)
def test_missing_data_names_the_folder_and_how_to_fetch_it(
    tmp_path: Path, task: str, folder: str, fetch: str
) -> None:
    with pytest.raises(DataMissingError) as err:
        load(task, data_dir=str(tmp_path))
    message = str(err.value)
    assert str(tmp_path / folder) in message
    assert "`download: true`" in message
    assert fetch in message


def test_missing_imagenet_says_it_cannot_be_downloaded(tmp_path: Path) -> None:
    with pytest.raises(DataMissingError, match=r"image-net\.org") as err:
        load("imagenet_resnet50", data_dir=str(tmp_path))
    assert str(tmp_path / "imagenet") in str(err.value)


def test_data_root_comes_from_option_then_environment_then_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "env"))
    assert data_root(str(tmp_path / "opt")) == tmp_path / "opt"
    assert data_root(None) == tmp_path / "env"
    monkeypatch.delenv(DATA_ENV)
    assert data_root(None) == Path("~/.cache/synapsebench/data").expanduser()


def test_environment_variable_finds_the_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_mnist(tmp_path, n_train=64, n_test=32)
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    data = load("mnist_fcn")
    assert len(data.train_x) + len(data.splits["val"][0]) == 64


# --- the on-device pipeline -----------------------------------------------------------------


def test_crop_flip_matches_torchvision_pad_crop_flip() -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 8, 8), generator=gen, dtype=torch.uint8)
    offsets = torch.tensor([[0, 0], [8, 8], [4, 4], [1, 7], [7, 1], [3, 0]])
    flips = torch.tensor([False, True, False, True, True, False])
    out = crop_flip(images, offsets, flips, padding=4)
    for b in range(6):
        expected = TF.crop(TF.pad(images[b], [4]), int(offsets[b, 0]), int(offsets[b, 1]), 8, 8)
        if flips[b]:
            expected = TF.hflip(expected)
        torch.testing.assert_close(out[b], expected, rtol=0, atol=0)


def test_training_batches_are_fixed_by_the_generator_and_keep_labels(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    data = load("cifar10_resnet18", data_dir=str(tmp_path), verify_checksums=False, batch_size=16)
    first = [next(data.train_batches(torch.Generator().manual_seed(3))) for _ in range(2)]
    torch.testing.assert_close(first[0][0], first[1][0])
    plain = load(
        "cifar10_resnet18", data_dir=str(tmp_path), verify_checksums=False, batch_size=16, augment=False
    )
    (xa, ya), (xp, yp) = first[0], next(plain.train_batches(torch.Generator().manual_seed(3)))
    assert torch.equal(ya, yp)  # augmentation draws after the permutation: same images, same labels
    assert not torch.equal(xa, xp)


def test_synthetic_data_needs_no_files() -> None:
    data = load("cifar100_vgg", synthetic=True, batch_size=8)
    x, y = next(data.train_batches(torch.Generator().manual_seed(0)))
    assert x.shape == (8, 3, 32, 32)
    assert int(y.max()) < 100


# --- ImageNet: ImageFolder + DataLoader -----------------------------------------------------


def test_imagenet_image_folder_through_dataloader(tmp_path: Path) -> None:
    write_image_folder(tmp_path, classes=3, per_class=4, size=40)
    options = {"data_dir": str(tmp_path), "num_classes": 3, "image_size": 32, "batch_size": 4}
    data = load("imagenet_resnet50", **options, eval_batch_size=5, num_workers=1)
    assert isinstance(data, ImageFolderData)
    batches = data.train_batches(torch.Generator().manual_seed(0))
    seen = [next(batches) for _ in range(4)]  # 11 trained-on images / 4 = 2 per epoch: crosses an epoch
    for x, y in seen:
        assert x.shape == (4, 3, 32, 32)
        assert x.dtype == torch.float32
        assert int(y.min()) >= 0
        assert int(y.max()) < 3
    model = TASKS.get("imagenet_resnet50").build_model(
        TASKS.get("imagenet_resnet50").options.model_validate({**options, "bias": False}), torch.Generator()
    )
    metrics = data.evaluate(model, step=0)
    assert set(metrics) == {
        "train/loss",
        *(f"{s}/{m}" for s in ("val", "test") for m in ("loss", "accuracy", "top5")),
    }
    assert metrics["test/top5"] == 1.0  # 3 classes: the true one is always in the top 5


def test_imagenet_class_count_must_match_the_tree(tmp_path: Path) -> None:
    write_image_folder(tmp_path, classes=2, per_class=1, size=16)
    with pytest.raises(ValueError, match="2 class folders but the task option num_classes is 1000"):
        load("imagenet_resnet50", data_dir=str(tmp_path))


# --- models and registry --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "num_weights"),
    [
        (lambda bias: fcn(784, 10, depth=4, width=32, bias=bias), 4),
        (lambda bias: cifar_vgg16(10, bias), 14),
        (lambda bias: cifar_resnet18(100, bias), 21),
        (lambda bias: imagenet_resnet50(1000, bias), 54),
    ],
    ids=["fcn", "vgg16", "resnet18", "resnet50"],
)
def test_bias_free_variants_hold_only_matrices_and_kernels(build: object, num_weights: int) -> None:
    with_bias = build(True)  # type: ignore[operator]
    assert any(p.dim() == 1 for p in with_bias.parameters())
    bias_free = build(False)  # type: ignore[operator]
    dims = [p.dim() for p in bias_free.parameters()]
    assert set(dims) <= {2, 4}
    assert len(dims) == num_weights
    assert not any(isinstance(m, nn.BatchNorm2d) and m.affine for m in bias_free.modules())


def test_cifar_networks_keep_32x32_resolution_to_the_head() -> None:
    x = torch.randn(2, 3, 32, 32)
    for net in (cifar_vgg16(10, False), cifar_resnet18(10, False)):
        assert net.eval()(x).shape == (2, 10)
    assert imagenet_resnet50(7, False).eval()(x).dtype == torch.float32  # autocast only on CUDA


@pytest.mark.parametrize("task", VISION_TASKS)
def test_registered_with_target_resources_and_bias_free_option(task: str) -> None:
    info = TASKS.get(task)
    info.options.model_validate(info.test_options)
    assert 0.5 < info.target.value < 1
    if task.startswith("imagenet"):
        assert info.resources.gpus == 1  # a whole GPU
    else:
        assert 0 < info.resources.gpus < 1  # a fraction: several small runs share one GPU
    agd = RULES.get("agd")
    assert "`bias: false`" in (agd.unsupported(info, info.options()) or "")
    assert agd.unsupported(info, info.options(bias=False)) is None


# Not imagenet_resnet50: train.run's end-of-run weight statistics take ~40 s on ResNet-50's weights.
@pytest.mark.parametrize("task", ["mnist_fcn", "cifar10_fcn"])
def test_every_evaluation_reports_the_declared_metrics(task: str) -> None:
    info = TASKS.get(task)
    options = info.options.model_validate(dict(info.test_options)).model_dump(mode="json")
    spec = RunSpec(
        suite="test",
        task=task,
        task_options=options,
        rule="sgd",
        hparams={},
        seed=0,
        budget=Budget(steps=2, eval_every=1),
    )
    result = train.run(spec, device=CPU)
    assert result.status == "ok"
    for point in result.curve:  # step 0 too, before any training loss exists
        assert set(info.metrics) <= set(point.metrics)


def test_synthetic_imagenet_evaluation_reports_the_declared_metrics() -> None:
    info = TASKS.get("imagenet_resnet50")
    options = info.options.model_validate(dict(info.test_options))
    data = info.load_data(options, CPU)
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, options.num_classes))
    assert set(info.metrics) <= set(data.evaluate(model, step=0))
