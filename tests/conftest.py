"""Shared fixtures: a tiny CIFAR-10 and a tiny MNIST, in their official file formats."""

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest


def write_fake_cifar(root: Path, per_batch: int = 40, test_size: int = 40, seed: int = 0) -> Path:
    """Write ROOT/cifar-10-batches-py with 5 train batches and a test batch; returns ROOT."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = test_size if name == "test_batch" else per_batch
        labels = rng.integers(0, 10, n)
        # Learnable signal: each class brightens its own row band of the red plane.
        data = rng.integers(0, 128, (n, 3072), dtype=np.uint8)
        for i, y in enumerate(labels):
            data[i, y * 96 : y * 96 + 96] += 120
        batch = {b"batch_label": name.encode(), b"labels": labels.tolist(), b"data": data,
                 b"filenames": [f"{i}.png".encode() for i in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"class{i}".encode() for i in range(10)]}, f, protocol=2)
    return root


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory) -> Path:
    return write_fake_cifar(tmp_path_factory.mktemp("data"))


def write_fake_mnist(root: Path, train_size: int = 120, test_size: int = 40, seed: int = 0) -> Path:
    """Write ROOT/MNIST/raw with the four gzipped IDX files (torchvision's layout); returns ROOT."""
    rng = np.random.default_rng(seed)
    folder = root / "MNIST" / "raw"
    folder.mkdir(parents=True)
    for prefix, n in (("train", train_size), ("t10k", test_size)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        # Learnable signal: each class brightens its own band of rows.
        images = rng.integers(0, 100, (n, 28, 28), dtype=np.uint8)
        for i, y in enumerate(labels):
            images[i, 2 * y + 4 : 2 * y + 7] += 150
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            header = np.array([0x0800 + array.ndim, *array.shape], dtype=">u4").tobytes()
            with gzip.open(folder / f"{prefix}-{kind}-ubyte.gz", "wb") as f:
                f.write(header + array.tobytes())
    return root


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory) -> Path:
    return write_fake_mnist(tmp_path_factory.mktemp("mnist"))
