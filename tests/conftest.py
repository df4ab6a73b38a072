"""Shared fixtures and helpers: tiny CIFAR-10 and MNIST in their official file formats,
and the ways tests start, pause and signal training processes.

Only torch and pytest are imported here; the training stack is imported inside the
helpers that need it, so that a model test loads no more than it uses.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
WORKERS = REPO / "tests" / "workers"  # the scripts tests start with python or torchrun
HANG = 900  # seconds after which a subprocess counts as hung: a guard, never an expected duration


def pytest_configure(config) -> None:
    """Every process a test starts gets SIGINT and SIGTERM at their defaults. A suite started
    as a background job (`pytest &`) inherits SIGINT ignored, and would pass that on."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory) -> Path:
    from data import write_synthetic_cifar

    return write_synthetic_cifar(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory) -> Path:
    from data import write_synthetic_mnist

    return write_synthetic_mnist(tmp_path_factory.mktemp("mnist"))


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory) -> Path:
    """A CIFAR-10 of 50 training and 10 test images, for runs of a few small steps."""
    return write_fake_cifar(tmp_path_factory.mktemp("tiny"), per_batch=10, test_size=10)


def write_fake_cifar(*args, **kwargs) -> Path:
    """`data.write_synthetic_cifar`: a small CIFAR-10 in the official format."""
    from data import write_synthetic_cifar

    return write_synthetic_cifar(*args, **kwargs)


def write_fake_mnist(*args, **kwargs) -> Path:
    """`data.write_synthetic_mnist`: a small MNIST in the official IDX format."""
    from data import write_synthetic_mnist

    return write_synthetic_mnist(*args, **kwargs)


def error_line(code: int, capsys) -> str:
    """The single stderr line of a failed in-process command (its exit code must be 1)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("error: "), (code, err)
    return err[0]


def write_archived_run(folder: Path, best: dict, epoch: int, step: int, metrics: list[dict] = (), **flags) -> None:
    """A CIFAR-10 run as `compare.py --archive` writes it: train.py's default flags with FLAGS
    changed, named after FOLDER, trained for EPOCH epochs (STEP steps) with result BEST."""
    import provenance
    import run_records
    import train
    from config import as_dict
    from experiment import parse_args

    config = {**as_dict(parse_args(train.CIFAR10, [])[0]), "experiment": "cifar10", "run_name": folder.name, **flags}
    summary = {
        "format": run_records.ARCHIVE_FORMAT,
        "config": {k: v for k, v in config.items() if k not in ("data_dir", "checkpoint_dir", "log_dir", "resume")},
        "best": best,
        "epoch": epoch,
        "step": step,
        "elapsed_seconds": 60.0,
        "device": "cpu",
        "num_parameters": 1,
        "provenance": [{"from_step": 0, **provenance.unknown()}],
    }
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
    from experiment import parse_args

    args = parse_args(experiment, argv)[0]
    return Path(args.checkpoint_dir) / args.run_name


def paused(step: int, signals: int, script: str, argv: list[str]) -> list[str]:
    """The worker and its arguments that run SCRIPT with ARGV held before its STEP-th training
    step until it is signalled (SIGNALS 2: also in the save that follows; tests/workers/paused.py)."""
    return [str(WORKERS / "paused.py"), str(step), str(signals), script, *argv]


def wait_for_line(proc: subprocess.Popen, text: str) -> str:
    """Read PROC's stdout (a text pipe) until a line holds TEXT, and return that line; fail if the output ends first."""
    for line in proc.stdout:
        if text in line:
            return line
    proc.wait(timeout=HANG)
    pytest.fail(f"the process ended (exit {proc.returncode}) before printing {text!r}: {proc.stderr.read()[-3000:]}")


def saved_model(saved: dict) -> torch.nn.Module:
    """The untrained network of a saved configuration SAVED (a checkpoint's or an archive's)."""
    from experiment import all_experiments, config_of

    experiment = all_experiments()[saved["experiment"]]
    return experiment.build_model(config_of(experiment, saved))
