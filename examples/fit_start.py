"""Start a hypernetwork from a trained CNN's weights (init="fit") or afresh, and fine-tune both.

A small CIFAR-10 CNN (six 3x3 convs of 32-128 channels, BatchNorm, one classifier) is
trained for a few minutes. Its five inner convs are then hypernetized twice: with
``init="fit"``, which sets every z and the hypernetwork from the trained kernels (one
SVD per stage), and with the default init, which draws them afresh. Both are fine-tuned
for the same steps with the same optimizer, and so is the stored CNN, for reference.

For each seed it records, in a JSON file, the test accuracy after pretraining, right
after hypernetizing and after fine-tuning, with each model's parameter count and the
fit's relative error; the figure shows accuracy against parameters. Run it from the
repository root (data.py and provenance.py are imported from there):

    python -m examples.fit_start --data-dir data
    python -m examples.fit_start --help
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import provenance
from data import Normalize, augment_cifar, load_cifar10
from hypernetwork_modules import hypernetize

LABELS = (  # (key, colour, legend) of each model the figure shows
    ("stored", "tab:gray", "the CNN, stored weights"),
    ("fit", "tab:blue", 'hypernetized, init="fit"'),
    ("random", "tab:orange", "hypernetized, fresh init"),
)


def make_cnn(num_classes: int = 10) -> nn.Sequential:
    """Six conv3x3-BN-ReLU layers (32, 32 | 64, 64 | 128, 128 channels, a max-pool after each
    pair), global average pooling and a linear classifier."""
    layers: list[nn.Module] = []
    widths = [3, 32, 32, 64, 64, 128, 128]
    for i, (c_in, c_out) in enumerate(zip(widths, widths[1:])):
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
        if i % 2 == 1:
            layers.append(nn.MaxPool2d(2))  # 32 -> 16 -> 8 -> 4
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], num_classes)]
    return nn.Sequential(*layers)


def train(model: nn.Module, data: dict, steps: int, lr: float, gen: torch.Generator, label: str) -> None:
    """STEPS Adam steps of batch 128 on augmented training images, with a cosine-decayed LR."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    x, y, normalise = data["x_train"], data["y_train"], data["normalise"]
    model.train()
    for _ in tqdm(range(steps), desc=label, leave=False):
        index = torch.randint(len(x), (128,), generator=gen)
        images = normalise(augment_cifar(x[index], gen), torch.contiguous_format)
        loss = F.cross_entropy(model(images), y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()


@torch.no_grad()
def accuracy(model: nn.Module, data: dict) -> float:
    """Test accuracy in eval mode (BatchNorm's running statistics)."""
    model.eval()
    x, y, normalise = data["x_test"], data["y_test"], data["normalise"]
    correct = sum(
        int((model(normalise(xb, torch.contiguous_format)).argmax(1) == yb).sum())
        for xb, yb in zip(x.split(500), y.split(500))
    )
    return correct / len(x)


def parameters(model: nn.Module) -> int:
    """Trainable parameters (a hypernetized model's z's and hypernetwork, not its generated weights)."""
    return sum(p.numel() for p in model.parameters())


def one_seed(seed: int, data: dict, args: argparse.Namespace) -> dict:
    """Pretrain, hypernetize both ways, fine-tune all three; the accuracies and counts of one seed."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    cnn = make_cnn()
    train(cnn, data, args.pretrain_steps, args.lr, gen, f"seed {seed}: pretrain")
    row: dict = {"seed": seed, "pretrained": accuracy(cnn, data)}
    models = {"fit": hypernetize(cnn, init="fit"), "random": hypernetize(cnn), "stored": cnn}
    row["fit_error"] = models["fit"].fit_errors
    for name, model in models.items():
        row[name] = {"parameters": parameters(model), "start": accuracy(model, data)}
        same_batches = torch.Generator().manual_seed(1000 + seed)
        train(model, data, args.finetune_steps, args.finetune_lr, same_batches, f"seed {seed}: {name}")
        row[name]["finetuned"] = accuracy(model, data)
    return row


def spread(values: list[float]) -> str:
    """Accuracies as 'mean +- sd %' (sd 0 for one value)."""
    t = torch.tensor(values, dtype=torch.float64) * 100
    return f"{t.mean():.2f} +- {t.std() if len(t) > 1 else 0.0:.2f}%"


def plot(rows: list[dict], path: Path) -> None:
    """Test accuracy against parameters: each seed's point at the start and after fine-tuning."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, when, title in zip(axes, ("start", "finetuned"), ("right after hypernetizing", "after fine-tuning")):
        for name, colour, label in LABELS:
            xs = [r[name]["parameters"] for r in rows]
            ax.scatter(xs, [100 * r[name][when] for r in rows], color=colour, label=f"{label}, {len(rows)} seeds")
        ax.set(xscale="log", xlabel="trainable parameters", title=title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("CIFAR-10 test accuracy (%)")
    axes[0].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="data", help="folder holding cifar-10-batches-py/")
    p.add_argument("--out", default="examples/out/fit_start", help="folder for results.json and fit_start.png")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--pretrain-steps", type=int, default=1500, help="Adam steps (batch 128) of the stored CNN")
    p.add_argument("--finetune-steps", type=int, default=300, help="Adam steps (batch 128) for each model after")
    p.add_argument("--lr", type=float, default=3e-3, help="pretraining peak learning rate")
    p.add_argument("--finetune-lr", type=float, default=1e-3, help="fine-tuning peak learning rate")
    p.add_argument("--test-limit", type=int, default=None, help="evaluate on the first N test images")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    x_train, y_train, x_test, y_test = load_cifar10(args.data_dir, download=False)
    data = {"x_train": x_train, "y_train": y_train, "x_test": x_test[: args.test_limit]}
    data.update(y_test=y_test[: args.test_limit], normalise=Normalize(x_train))
    rows = [one_seed(seed, data, args) for seed in args.seeds]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"args": vars(args), "provenance": provenance.collect(torch.device("cpu"), 1), "seeds": rows}
    (out / "results.json").write_text(json.dumps(record, indent=1) + "\n")
    plot(rows, out / "fit_start.png")
    print(
        f"test accuracy over seeds {args.seeds} (mean +- sd), pretrained CNN {spread([r['pretrained'] for r in rows])}"
    )
    for name in ("stored", "fit", "random"):
        start, done = (spread([r[name][when] for r in rows]) for when in ("start", "finetuned"))
        print(f"{name:7s} {rows[0][name]['parameters']:>8,} parameters: {start} at the start, {done} fine-tuned")
    print(f"wrote {out / 'results.json'} and {out / 'fit_start.png'}")
    return record


if __name__ == "__main__":
    main()
