"""An MLP that generates every weight and bias of a CIFAR-10 CNN, trained end to end.

The target is a small CNN (554,922 parameters: three conv + BatchNorm stages and two
linear layers). None of them is trained directly: `TargetHyperNetwork` generates all
of them, on every step, from learned chunk embeddings and one shared generator MLP.

Two ways to generate ~0.55M numbers, and what they cost (counts are computed, the
first model is never built):
  (a) no compression: one MLP z -> 256 -> all 554,922 values at once. Its last
      layer alone is 256 x 554,922, so the hypernetwork is ~257x LARGER than the CNN.
  (b) chunked: 542 embeddings of size 64 -> generator 64 -> 128 (tanh) -> 1024, one
      call for all chunks: 175,104 parameters, 0.32x the CNN. This one is trained.

Data: `--data-dir` holds `cifar-10-batches-py/` (the official python version:
data_batch_1..5 and test_batch, pickled dicts with b'data' (N, 3072) uint8 and
b'labels'), read by the repository's loader (data.py), whose restricted unpickler can
only build numpy arrays, never call arbitrary code. It runs as a module from the
repository root, where data.py is importable:

    python -m examples.cnn_generator_cifar --data-dir data
    python -m examples.cnn_generator_cifar --help
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from data import Normalize  # the repository's reader: run from the repository root
from data import load_cifar10 as read_cifar10
from target_hypernetwork import TargetHyperNetwork


def load_cifar10(data_dir: str | Path, train_limit: int | None = None, test_limit: int | None = None):
    """CIFAR-10 through data.py's safe loader, cut to the first LIMIT images.

    Returns:
        x_train (N, 3, 32, 32) uint8, y_train (N,), x_test (M, 3, 32, 32) uint8, y_test (M,).
    """
    x_train, y_train, x_test, y_test = read_cifar10(data_dir, download=False)
    return x_train[:train_limit], y_train[:train_limit], x_test[:test_limit], y_test[:test_limit]


def make_cnn(num_classes: int = 10) -> nn.Sequential:
    """The target: 3 x (conv3x3 -> BN -> ReLU -> maxpool) on 32x32, then 2048 -> 224 -> classes."""
    layers: list[nn.Module] = []
    for c_in, c_out in [(3, 32), (32, 64), (64, 128)]:
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]
    # (N, 128, 4, 4) after three poolings
    layers += [nn.Flatten(), nn.Linear(128 * 4 * 4, 224), nn.ReLU(), nn.Linear(224, num_classes)]
    return nn.Sequential(*layers)


def flat_mlp_num_parameters(num_outputs: int, z_dim: int = 64, hidden: int = 256) -> int:
    """Parameters of the no-compression hypernetwork: a learned z and an MLP z -> hidden -> all outputs."""
    return z_dim + (z_dim * hidden + hidden) + (hidden * num_outputs + num_outputs)


@torch.no_grad()
def evaluate(
    hnet: TargetHyperNetwork, x: torch.Tensor, y: torch.Tensor, normalise: Normalize, batch_size: int = 500
) -> float:
    """Test accuracy with the currently generated weights (BatchNorm in eval mode)."""
    hnet.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        logits, _ = hnet(normalise(x[i : i + batch_size], torch.contiguous_format))
        correct += (logits.argmax(1) == y[i : i + batch_size]).sum().item()
    hnet.train()
    return correct / len(x)


def plot_curves(path: Path, losses: list[float], evals: list[tuple[int, float]], test_size: int, title: str) -> None:
    """Training loss (raw and smoothed) and test accuracy against step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    window = max(1, len(losses) // 20)
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(range(1, len(losses) + 1), losses, alpha=0.3, label="per step")
    ax1.plot(range(window, len(losses) + 1), smooth, label=f"mean of {window}")
    ax1.set(xlabel="step", ylabel="training cross-entropy", title="training loss")
    ax1.legend()
    ax2.plot([s for s, _ in evals], [100 * a for _, a in evals], marker="o")
    ax2.set(xlabel="step", ylabel="accuracy (%)", title=f"test accuracy ({test_size} images)")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="data", help="folder holding cifar-10-batches-py/")
    p.add_argument("--out", default="examples/out/cnn_generator_cifar.png", help="training-curve PNG")
    p.add_argument("--steps", type=int, default=200, help="training steps")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--train-limit", type=int, default=None, help="use only the first N training images")
    p.add_argument("--test-limit", type=int, default=2000, help="evaluate on the first N test images")
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--chunk-size", type=int, default=1024, help="generator outputs per chunk embedding")
    p.add_argument("--z-dim", type=int, default=64)
    p.add_argument("--generator-hidden", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (0: torch's default); on a busy 2-core CPU one thread was 4x faster than two",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Count both configurations, train the chunked one, plot its curves."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cnn = make_cnn()
    hnet = TargetHyperNetwork(cnn, chunk_size=args.chunk_size, z_dim=args.z_dim, hidden_sizes=(args.generator_hidden,))
    n_cnn, n_hyper = hnet.num_target_parameters, hnet.num_hyper_parameters
    n_flat = flat_mlp_num_parameters(n_cnn)
    chunked = f"{hnet.num_chunks} x {args.chunk_size}"
    print(f"CNN (target):                          {n_cnn:>12,} parameters")
    ratio = f"{n_flat / n_cnn:.1f}x the CNN (counted, not built)"
    print(f"(a) no compression, z -> 256 -> all:   {n_flat:>12,} parameters = {ratio}")
    print(f"(b) chunked, {chunked:<12} (trained): {n_hyper:>12,} parameters = {n_hyper / n_cnn:.2f}x the CNN")
    print(hnet.summary())

    x_train, y_train, x_test, y_test = load_cifar10(args.data_dir, args.train_limit, args.test_limit)
    normalise = Normalize(x_train)  # per-channel statistics of the training images
    print(f"data: {len(x_train)} training and {len(x_test)} test images")

    opt = torch.optim.Adam(hnet.parameters(), lr=args.lr)
    losses, evals = [], [(0, evaluate(hnet, x_test, y_test, normalise))]
    print(f"step     0  test acc {100 * evals[-1][1]:.1f}%")
    start = time.time()
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, len(x_train), (min(args.batch_size, len(x_train)),))
        images = normalise(x_train[idx], torch.contiguous_format)
        images = torch.where(torch.rand(len(idx), 1, 1, 1) < 0.5, images, images.flip(3))  # random horizontal flip
        logits, _ = hnet(images)
        loss = F.cross_entropy(logits, y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % args.eval_every == 0 or step == args.steps:
            evals.append((step, evaluate(hnet, x_test, y_test, normalise)))
            recent = sum(losses[-args.eval_every :]) / len(losses[-args.eval_every :])
            elapsed = time.time() - start
            print(f"step {step:5d}  train loss {recent:.3f}  test acc {100 * evals[-1][1]:.1f}%  ({elapsed:.0f}s)")

    out = Path(args.out)
    title = f"hypernetwork ({n_hyper:,} params) generating a CNN ({n_cnn:,} params)"
    plot_curves(out, losses, evals, len(x_test), title)
    print(f"wrote {out}")
    return {
        "cnn_params": n_cnn,
        "flat_params": n_flat,
        "hyper_params": n_hyper,
        "losses": losses,
        "test_acc": evals[-1][1],
    }


if __name__ == "__main__":
    main()
