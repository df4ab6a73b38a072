"""Evaluate a saved run's model on the test set, training nothing and writing nothing.

    python evaluate.py checkpoints/hyper-40-1/best.pt                # the run's own test set
    python evaluate.py checkpoints/hyper-40-1/last.pt --data-dir DIR # DIR holds cifar-10-batches-py/
    python evaluate.py checkpoints/mnist-hyper/best.pt --split val   # the run's validation images

It rebuilds the model from the checkpoint's configuration (train.py or mnist.py, any
--arch), normalises with the run's own training split, and prints the error beside the
parameter count and the paper's row. ``best.pt`` holds the model of the best validation
epoch, so its test error is the one the run reported.
"""

from __future__ import annotations

from pathlib import Path

import torch

from checkpointing import load_checkpoint
from cli import ArgumentParser, HelpFormatter, UserError, positive_int, run_cli
from data import Normalize
from devices import pick_device
from engine import evaluate
from experiment import Experiment, all_experiments, check_complete, config_of


def experiment_of(config: dict, path: Path) -> Experiment:
    """The experiment (CIFAR-10 or MNIST) whose script wrote the checkpoint at PATH."""
    experiments = all_experiments()
    if config["experiment"] not in experiments:
        raise UserError(f"{path} is a {config['experiment']} run: no script here evaluates it")
    return experiments[config["experiment"]]


def evaluate_checkpoint(path: Path, data_dir: str | None, split: str, device: torch.device, batch_size: int) -> str:
    """The one-line result of the model saved at PATH on SPLIT ("test" or "val")."""
    ckpt = load_checkpoint(path)
    experiment = experiment_of(ckpt["config"], path)
    check_complete(experiment, ckpt["config"], path)
    config = config_of(experiment, ckpt["config"])
    model = experiment.build_model(config)
    model.load_state_dict(ckpt["model"])
    train_x, train_y, test_x, test_y = experiment.load_data(data_dir or config.data_dir, False)
    if len(train_x) <= int(ckpt["train_indices"].max()):
        raise UserError(f"{data_dir or config.data_dir} has {len(train_x)} training images; the run split more")
    normalize = Normalize(train_x[ckpt["train_indices"]])
    images, labels = (
        (test_x, test_y) if split == "test" else (train_x[ckpt["val_indices"]], train_y[ckpt["val_indices"]])
    )
    error = evaluate(
        model.to(device), images.to(device), labels.to(device), normalize, batch_size, torch.contiguous_format
    )
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    where = f"after epoch {ckpt['epoch']}" + (" (and part of the next)" if ckpt["partial"]["position"] else "")
    return (
        f"{config.run_name} {where}: {split} error {error:.2f}% on {len(images):,} images | {params:,} "
        f"parameters ({params / 1e6:.3f}M) | {experiment.paper_result(config)}"
    )


def main(argv: list[str] | None = None) -> int:
    """python evaluate.py: 0 on success, 1 with one line on stderr for a user error."""
    p = ArgumentParser(
        prog="evaluate.py",
        description="Evaluate a checkpoint written by train.py or mnist.py "
        "on the test set (or the run's validation images); writes nothing.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("checkpoint", type=Path, help="best.pt or last.pt of a run")
    p.add_argument("--data-dir", default=None, help="the dataset's folder (default: the run's own --data-dir)")
    p.add_argument(
        "--split", choices=["test", "val"], default="test", help="the test set, or the run's validation images"
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto", help="auto: cuda > mps > cpu")
    p.add_argument("--batch-size", type=positive_int, default=1000, help="images per batch")
    args = p.parse_args(argv)
    return run_cli(
        lambda: print(
            evaluate_checkpoint(args.checkpoint, args.data_dir, args.split, pick_device(args.device), args.batch_size)
        )
    )


if __name__ == "__main__":
    raise SystemExit(main())
