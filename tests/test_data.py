"""The data pipeline: the official file formats, the split, normalisation and augmentation."""

import pickle

import torch

import data
from conftest import write_fake_cifar


def flipped(augmented: torch.Tensor) -> torch.Tensor:
    """Which images of columns rising left to right (see `rising`) come out mirrored."""
    half = augmented.shape[-1] // 2
    return augmented[..., :half].float().sum(dim=(1, 2, 3)) > augmented[..., half:].float().sum(dim=(1, 2, 3))


def rising(n: int, size: int) -> torch.Tensor:
    """N one-channel images whose column j holds j + 1: a crop keeps the left half darker, a flip does not."""
    return (torch.arange(size, dtype=torch.uint8) + 1).expand(n, 1, size, size).contiguous()


def test_cifar_augmentation_flips_half_the_images_and_mnist_none():
    """Bug: a flip probability other than 0.5 in random_crop (e.g. .lt(0.3) or .lt(0.6))."""
    n = 20_000
    rate = flipped(data.augment_cifar(rising(n, 32), torch.Generator().manual_seed(0))).float().mean().item()
    assert abs(rate - 0.5) < 0.02, rate  # 0.02 is 5.7 standard errors: 0.45 or 0.55 lie far outside
    assert not flipped(data.augment_mnist(rising(n, 28), torch.Generator().manual_seed(0))).any()


def test_augment_crops_and_flips_within_the_padded_image():
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    out = data.augment_cifar(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    flipped = 0
    for img, src in zip(out, padded):
        windows = [src[:, r : r + 32, c : c + 32] for r in range(5) for c in range(5)]
        plain = any(torch.equal(img, w) for w in windows)
        mirrored = any(torch.equal(img, w.flip(2)) for w in windows)
        assert plain or mirrored
        flipped += mirrored and not plain
    assert 10 < flipped < 54  # about half are flipped
    again = data.augment_cifar(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_normalize_standardises_per_channel():
    x = torch.randint(0, 256, (100, 3, 8, 8), dtype=torch.uint8)
    out = data.Normalize(x)(x, torch.contiguous_format)
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4, rtol=0)


def test_split_is_disjoint_and_deterministic():
    tr, val = data.split_indices(50_000, 5_000)
    assert len(tr) == 45_000 and len(val) == 5_000
    assert len(set(tr.tolist()) | set(val.tolist())) == 50_000
    tr2, val2 = data.split_indices(50_000, 5_000)
    assert torch.equal(val, val2) and torch.equal(tr, tr2)


def test_read_cifar_batch_gives_images_in_official_layout(tmp_path):
    root = write_fake_cifar(tmp_path / "d", per_batch=3)
    x, y = data.read_cifar_batch(root / "cifar-10-batches-py" / "data_batch_1")
    with open(root / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.uint8
    assert x[1, 2, 0, 5] == raw[b"data"][1][2 * 1024 + 5]  # blue plane, row 0, column 5
    assert y.tolist() == raw[b"labels"]
