"""Writers of small vision data sets in their real on-disk layouts, for tests of the real loaders.

MNIST as uncompressed idx files, CIFAR-10/100 as python-pickle batches, ImageNet as an ImageFolder
tree of JPEGs. MNIST and CIFAR images are learnable: each class is a fixed random pattern plus noise.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image


def class_images(
    n: int, shape: tuple[int, ...], num_classes: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uint8 images of ``shape``: class ``k`` is a fixed bright pattern plus uniform noise."""
    rng = np.random.default_rng(seed)
    patterns = np.random.default_rng(1234).random((num_classes, *shape)) < 0.3
    labels = rng.integers(0, num_classes, n)
    noise = rng.integers(0, 80, (n, *shape))
    images = np.clip(patterns[labels] * 170 + noise, 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64)


def write_mnist(root: Path, n_train: int = 256, n_test: int = 128) -> dict[str, np.ndarray]:
    """Write ``root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (uncompressed idx)."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    out: dict[str, np.ndarray] = {}
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = class_images(n, (28, 28), 10, seed)
        # idx: big-endian magic (0x0803 = ubyte, 3 dims; 0x0801 = ubyte, 1 dim), then the sizes.
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 0x0803, n, 28, 28) + images.tobytes()
        )
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 0x0801, n) + labels.astype(np.uint8).tobytes()
        )
        out[f"{prefix}_x"], out[f"{prefix}_y"] = images, labels
    return out


def _pickle(path: Path, obj: object) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root: Path, per_batch: int = 20, n_test: int = 40) -> dict[str, np.ndarray]:
    """Write ``root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`` (pickled dicts)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train_x, train_y = [], []
    for i in range(1, 6):
        images, labels = class_images(per_batch, (3, 32, 32), 10, seed=i)
        # Rows are 3072 bytes: the red plane, then green, then blue (row-major 32×32 each).
        entry = {
            "batch_label": f"training batch {i} of 5",
            "labels": labels.tolist(),
            "data": images.reshape(per_batch, 3072),
            "filenames": [f"img_{i}_{j}.png" for j in range(per_batch)],
        }
        _pickle(folder / f"data_batch_{i}", entry)
        train_x.append(images)
        train_y.append(labels)
    test_x, test_y = class_images(n_test, (3, 32, 32), 10, seed=99)
    _pickle(
        folder / "test_batch",
        {
            "batch_label": "testing batch 1 of 1",
            "labels": test_y.tolist(),
            "data": test_x.reshape(n_test, 3072),
        },
    )
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _pickle(
        folder / "batches.meta", {"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072}
    )
    return {
        "train_x": np.concatenate(train_x),
        "train_y": np.concatenate(train_y),
        "test_x": test_x,
        "test_y": test_y,
    }


def write_cifar100(root: Path, n_train: int = 60, n_test: int = 30) -> dict[str, np.ndarray]:
    """Write ``root/cifar-100-python/{train,test,meta}`` (pickled dicts with fine and coarse labels)."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, np.ndarray] = {}
    for split, n, seed in (("train", n_train, 5), ("test", n_test, 6)):
        images, labels = class_images(n, (3, 32, 32), 100, seed)
        entry = {
            "filenames": [f"{split}_{j}.png" for j in range(n)],
            "batch_label": f"{split} batch",
            "fine_labels": labels.tolist(),
            "coarse_labels": (labels // 5).tolist(),
            "data": images.reshape(n, 3072),
        }
        _pickle(folder / split, entry)
        out[f"{split}_x"], out[f"{split}_y"] = images, labels
    _pickle(
        folder / "meta",
        {
            "fine_label_names": [f"class_{k}" for k in range(100)],
            "coarse_label_names": [f"super_{k}" for k in range(20)],
        },
    )
    return out


def write_image_folder(root: Path, classes: int = 3, per_class: int = 4, size: int = 40) -> Path:
    """Write ``root/imagenet/{train,val}/n0000000k/*.JPEG``; returns ``root/imagenet``."""
    folder = root / "imagenet"
    for split, seed in (("train", 0), ("val", 1)):
        images, _ = class_images(classes * per_class, (size, size, 3), classes, seed)
        for k in range(classes):
            class_dir = folder / split / f"n{k:08d}"
            class_dir.mkdir(parents=True, exist_ok=True)
            for j in range(per_class):
                Image.fromarray(images[k * per_class + j]).save(class_dir / f"img_{j}.JPEG", "JPEG")
    return folder
