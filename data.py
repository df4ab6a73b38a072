"""The two datasets, from files on disk to augmented, normalised batches.

    CIFAR-10 pickles / MNIST IDX files -> uint8 tensors (N, C, H, W)   `load_cifar10`, `load_mnist`
      -> fixed train/validation split                                   `split_indices`
      -> whole dataset on the training device, batches gathered by index
      -> random crop (+ flip) of the whole batch in one gather          `augment_cifar`, `augment_mnist`
      -> float, standardised with the training split's statistics      `Normalize`

Readers accept the official formats only: the CIFAR-10 pickles are read by an
unpickler that builds numpy arrays and nothing else (a crafted file cannot run code).
`write_synthetic_cifar` and `write_synthetic_mnist` write small learnable datasets in
the same formats, for the tests and the benchmark.
"""

from __future__ import annotations

import codecs
import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cli import UserError, first_line
from devices import to_device

SPLIT_SEED = 0  # the validation images are drawn once with this seed, for every run
CIFAR_PAD = 2  # the paper pads 32x32 images to 36x36 before the random 32x32 crop
MNIST_PAD = 1  # 28x28 images are zero-padded to 30x30 before the random 28x28 crop
NOTEBOOK_STRETCH = 2  # the author's notebook inserts 2 rows and 2 columns (28x28 -> 30x30) before its crop
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
Splits = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # train images, labels, test images, labels


# ----------------------------------------------------------------------------- CIFAR-10


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR-10 batch dicts and nothing else: no code can run.

    Only the globals a pickled numpy array needs resolve, to objects fixed here (not
    imported by name): numpy's array rebuilder under its numpy 1 and numpy 2 module
    names, ndarray, dtype, and the pure function Python 3 uses to write bytes in
    protocol-2 pickles.
    """

    def find_class(self, module: str, name: str):
        rebuild = np.ndarray.__reduce__(np.zeros(0))[0]
        allowed = {
            ("numpy.core.multiarray", "_reconstruct"): rebuild,
            ("numpy._core.multiarray", "_reconstruct"): rebuild,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("_codecs", "encode"): codecs.encode,
        }
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return allowed[(module, name)]


def read_cifar_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One CIFAR-10 pickle -> (images uint8 (N, 3, 32, 32), labels int64 (N,))."""
    try:
        with open(path, "rb") as f:
            batch = _NumpyOnlyUnpickler(f, encoding="bytes").load()
        data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"], dtype=np.int64)
    except FileNotFoundError:
        raise UserError(f"{path} is missing") from None
    except Exception as e:  # truncated, garbage, foreign or malicious pickle
        raise UserError(f"{path} is not a CIFAR-10 batch file ({type(e).__name__}: {e})") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise UserError(f"{path} is not a CIFAR-10 batch file (data {data.dtype} {data.shape}, {len(labels)} labels)")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise UserError(f"{path} has labels outside 0..9")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels)


def load_cifar10(data_dir: str | os.PathLike, download: bool = True) -> Splits:
    """CIFAR-10 from DATA_DIR/cifar-10-batches-py, downloading it there if missing and allowed.

    Returns:
        train images uint8 (50000, 3, 32, 32), train labels int64, test images, test labels.
    """
    folder = Path(data_dir) / "cifar-10-batches-py"
    if not folder.is_dir() and not download:
        raise UserError(f"no CIFAR-10 at {folder}: put cifar-10-batches-py/ under --data-dir (now {data_dir})")
    if not folder.is_dir():
        try:
            import torchvision

            torchvision.datasets.CIFAR10(str(data_dir), train=True, download=True)
        except Exception as e:
            raise UserError(
                f"no CIFAR-10 at {folder} and the download failed ({type(e).__name__}); "
                f"put cifar-10-batches-py/ under --data-dir (now {data_dir})"
            ) from None
    train = [read_cifar_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    test_x, test_y = read_cifar_batch(folder / "test_batch")
    return torch.cat([x for x, _ in train]), torch.cat([y for _, y in train]), test_x, test_y


# ----------------------------------------------------------------------------- MNIST


def read_idx(path: Path, dims: int) -> np.ndarray:
    """One IDX file (gzipped or not) of unsigned bytes with DIMS dimensions, as an array."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
        header = np.frombuffer(raw[: 4 + 4 * dims], dtype=">u4")
        expected = 0x0800 + dims  # two zero bytes, type 0x08 (unsigned byte), dims
        if len(header) != 1 + dims or header[0] != expected:
            raise ValueError(f"magic {header[0] if len(header) else None} != {expected}")
        shape = tuple(int(n) for n in header[1:])
        data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims)
        if data.size != int(np.prod(shape)):
            raise ValueError(f"{data.size} bytes of data for shape {shape}")
    except (OSError, EOFError, ValueError) as e:  # missing, truncated, not gzip, not IDX
        raise UserError(f"{path} is not an MNIST IDX file ({first_line(e)})") from None
    return data.reshape(shape)


def find_idx_file(folder: Path, name: str) -> Path:
    """FOLDER/NAME.gz, else FOLDER/NAME (torchvision keeps both)."""
    gz = folder / f"{name}.gz"
    return gz if gz.is_file() else folder / name


def download_mnist(data_dir: str | os.PathLike, folder: Path) -> None:
    """Let torchvision download MNIST into DATA_DIR/MNIST/raw."""
    try:
        import torchvision

        torchvision.datasets.MNIST(str(data_dir), train=True, download=True)
        torchvision.datasets.MNIST(str(data_dir), train=False, download=True)
    except Exception as e:
        raise UserError(
            f"no MNIST at {folder} and the download failed ({type(e).__name__}); "
            f"put the four idx .gz files there (--data-dir is {data_dir})"
        ) from None


def load_mnist(data_dir: str | os.PathLike, download: bool = True) -> Splits:
    """MNIST from DATA_DIR/MNIST/raw (torchvision's layout), downloading it there if missing and allowed.

    Returns:
        train images uint8 (60000, 1, 28, 28), train labels int64, test images, test labels.
    """
    folder = Path(data_dir) / "MNIST" / "raw"
    missing = [n for pair in MNIST_FILES.values() for n in pair if not find_idx_file(folder, n).is_file()]
    if missing and download:
        download_mnist(data_dir, folder)
    elif missing:
        raise UserError(f"no MNIST at {folder}: {missing[0]}.gz is missing (--data-dir is {data_dir})")
    out = []
    for images_name, labels_name in MNIST_FILES.values():
        images, labels = (
            read_idx(find_idx_file(folder, images_name), 3),
            read_idx(find_idx_file(folder, labels_name), 1),
        )
        if images.shape[1:] != (28, 28) or len(images) != len(labels) or labels.max(initial=0) > 9:
            raise UserError(f"{folder} holds mismatched MNIST files ({images.shape} images, {len(labels)} labels)")
        out += [torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))]
    return out[0], out[1], out[2], out[3]


# ----------------------------------------------------------------------------- split, augmentation, normalisation


def split_indices(n: int, val_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint (train, validation) indices of n images, the same for every run."""
    if not 0 < val_size < n:
        raise UserError(f"--val-size must be in [1, {n - 1}] for {n} training images, got {val_size}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


def random_crop(x: torch.Tensor, gen: torch.Generator, pad: int, flip: bool) -> torch.Tensor:
    """Random crop of the image zero-padded by PAD on each side, back to its own size, and
    (if FLIP) a random horizontal flip: the whole batch in one gather.

    Args:
        x: uint8 images (B, C, H, W) on any device.
        gen: generator for the crop offsets and flips, best on x's device (no copy).
    """
    b, _, h, w = x.shape
    offsets = to_device(torch.randint(0, 2 * pad + 1, (2, b), generator=gen, device=gen.device), x.device)
    flips = (
        to_device(torch.rand(b, generator=gen, device=gen.device).lt(0.5), x.device)
        if flip
        else torch.zeros(b, dtype=torch.bool, device=x.device)
    )
    padded = F.pad(x, (pad, pad, pad, pad))  # (B, C, H+2P, W+2P)
    rows = offsets[0, :, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = offsets[1, :, None] + torch.arange(w, device=x.device)  # (B, W)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # (B, C, H, W)


def augment_cifar(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The paper's CIFAR augmentation: pad 32x32 to 36x36, random 32x32 crop, random flip."""
    return random_crop(x, gen, CIFAR_PAD, flip=True)


def augment_mnist(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The paper's MNIST augmentation: pad 28x28 to 30x30, random 28x28 crop (no flips)."""
    return random_crop(x, gen, MNIST_PAD, flip=False)


def insert_between(n: int, size: int, inserts: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """N random linear maps from SIZE rows to SIZE + INSERTS rows: INSERTS times, a new row
    that is the mean of two neighbours is inserted at a random inner position (1 .. size-2
    of the rows so far), as the author's MNIST notebook stretches its images.

    Returns:
        (N, SIZE + INSERTS, SIZE) float32 matrices on DEVICE: stretched = M @ rows.
    """
    m = torch.eye(size, device=device).expand(n, size, size)
    for k in range(inserts):
        rows = size + k  # rows so far; the new one goes in at r, between rows r-1 and r
        r = to_device(torch.randint(1, rows - 1, (n, 1), generator=gen, device=gen.device), device)
        j = torch.arange(rows + 1, device=device)  # the rows after the insertion
        a, b = j - (j >= r).long(), j - (j > r).long()  # (N, rows+1): each row's two sources (equal but at r)
        m = 0.5 * (m.gather(1, a[..., None].expand(-1, -1, size)) + m.gather(1, b[..., None].expand(-1, -1, size)))
    return m


def stretch_mnist(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The author's MNIST notebook augmentation (hardmaru/supercell): each image gets two
    interpolated rows and two interpolated columns at random places (28x28 -> 30x30), then
    a random 28x28 crop. Rows and columns are stretched by one matrix product each.

    Args:
        x: uint8 images (B, 1, H, W) on any device.
        gen: generator for the insertion places and crop offsets, best on x's device.

    Returns:
        float32 images (B, 1, H, W) on the 0-255 scale (interpolated values are not rounded).
    """
    b, _, h, w = x.shape
    rows = insert_between(b, h, NOTEBOOK_STRETCH, gen, x.device)  # (B, H+2, H)
    cols = insert_between(b, w, NOTEBOOK_STRETCH, gen, x.device)  # (B, W+2, W)
    offsets = to_device(torch.randint(0, NOTEBOOK_STRETCH + 1, (2, b), generator=gen, device=gen.device), x.device)
    rows = rows.gather(
        1, (offsets[0, :, None] + torch.arange(h, device=x.device))[..., None].expand(-1, -1, h)
    )  # (B, H, H)
    cols = cols.gather(
        1, (offsets[1, :, None] + torch.arange(w, device=x.device))[..., None].expand(-1, -1, w)
    )  # (B, W, W)
    out = rows @ x[:, 0].float() @ cols.transpose(1, 2)  # (B, H, W)
    # (B, 1, H, W) with random_crop's strides (channel stride 1): the strides unsqueeze(1)
    # gives sent this net's convs down a slower CPU path.
    return out.unsqueeze(-1).permute(0, 3, 1, 2)


class Normalize:
    """uint8 images -> float, per-channel standardised with the training split's statistics.

    The statistics are summed in float64 on the CPU (MPS has no float64); the images
    themselves are only ever float32 on their device.
    """

    def __init__(self, images: torch.Tensor):
        total = torch.zeros(2, images.shape[1], dtype=torch.float64)
        for chunk in images.split(5000):  # bounded memory: never the whole set in float
            c = chunk.cpu().double().div_(255)
            total += torch.stack([c.sum(dim=(0, 2, 3)), c.pow(2).sum(dim=(0, 2, 3))])
        count = images.numel() / images.shape[1]
        mean, mean_sq = total / count
        self.mean = mean.float().view(1, -1, 1, 1).to(images.device)
        self.std = (mean_sq - mean**2).sqrt().float().view(1, -1, 1, 1).to(images.device)

    def __call__(self, x: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
        x = x.float().div_(255).sub_(self.mean.to(x.device)).div_(self.std.to(x.device))
        return x.contiguous(memory_format=memory_format)


# ----------------------------------------------------------------------------- synthetic data in the official formats


def write_synthetic_cifar(root: Path, per_batch: int = 40, test_size: int = 40, seed: int = 0) -> Path:
    """Write ROOT/cifar-10-batches-py with 5 train batches and a test batch; returns ROOT.

    Learnable: each class brightens its own row band of the red plane.
    """
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = test_size if name == "test_batch" else per_batch
        labels = rng.integers(0, 10, n)
        data = rng.integers(0, 128, (n, 3072), dtype=np.uint8)
        for i, y in enumerate(labels):
            data[i, y * 96 : y * 96 + 96] += 120
        batch = {
            b"batch_label": name.encode(),
            b"labels": labels.tolist(),
            b"data": data,
            b"filenames": [f"{i}.png".encode() for i in range(n)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"class{i}".encode() for i in range(10)]}, f, protocol=2)
    return root


def write_synthetic_mnist(root: Path, train_size: int = 120, test_size: int = 40, seed: int = 0) -> Path:
    """Write ROOT/MNIST/raw with the four gzipped IDX files (torchvision's layout); returns ROOT.

    Learnable: each class brightens its own band of rows.
    """
    rng = np.random.default_rng(seed)
    folder = root / "MNIST" / "raw"
    folder.mkdir(parents=True)
    for prefix, n in (("train", train_size), ("t10k", test_size)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 100, (n, 28, 28), dtype=np.uint8)
        for i, y in enumerate(labels):
            images[i, 2 * y + 4 : 2 * y + 7] += 150
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            header = np.array([0x0800 + array.ndim, *array.shape], dtype=">u4").tobytes()
            with gzip.open(folder / f"{prefix}-{kind}-ubyte.gz", "wb") as f:
                f.write(header + array.tobytes())
    return root
