"""Shared fixtures: a tiny CIFAR-10 and a tiny MNIST, in their official file formats."""

import contextlib
import json
from pathlib import Path

import pytest
import torch

import compare
import provenance
import train

from data import write_synthetic_cifar as write_fake_cifar
from data import write_synthetic_mnist as write_fake_mnist
from experiment import parse_args


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory) -> Path:
    return write_fake_cifar(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory) -> Path:
    return write_fake_mnist(tmp_path_factory.mktemp("mnist"))


def error_line(code: int, capsys) -> str:
    """The single stderr line of a failed in-process command (its exit code must be 1)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("error: "), (code, err)
    return err[0]


def write_archived_run(folder: Path, best: dict, epoch: int, step: int, metrics: list[dict] = (), **flags) -> None:
    """A CIFAR-10 run as `compare.py --archive` writes it: train.py's default flags with FLAGS
    changed, named after FOLDER, trained for EPOCH epochs (STEP steps) with result BEST."""
    config = {**vars(parse_args(train.CIFAR10, [])[0]), "experiment": "cifar10", "run_name": folder.name, **flags}
    summary = {"format": compare.ARCHIVE_FORMAT, "config": {k: v for k, v in config.items() if k not in compare.MACHINE_KEYS},
               "best": best, "epoch": epoch, "step": step, "elapsed_seconds": 60.0, "device": "cpu",
               "num_parameters": 1, "provenance": [{"from_step": 0, **provenance.unknown()}]}
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps(summary))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))


@contextlib.contextmanager
def as_rank(rank: int, world: int, store: Path, monkeypatch):
    """This process plays rank RANK of a torchrun job of WORLD processes: the environment
    says so, and its collectives run in a real one-process gloo group (STORE: a fresh file)."""
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("LOCAL_RANK", "0")
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    try:
        yield
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def only_run(checkpoints: Path) -> Path:
    """The one run folder in CHECKPOINTS (a run's default name spells out its settings)."""
    (run,) = [p for p in checkpoints.iterdir() if p.is_dir()]
    return run


def run_folder(experiment, argv: list[str]) -> Path:
    """Where a run of ARGV keeps its files: --checkpoint-dir / its name (before it exists)."""
    args = parse_args(experiment, argv)[0]
    return Path(args.checkpoint_dir) / args.run_name
