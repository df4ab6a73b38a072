"""Shared fixtures: a tiny CIFAR-10 in the official python-pickle format."""

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
