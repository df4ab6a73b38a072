"""Checkpoints: written atomically, loaded without running code, holding every random state.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts (so it loads with
``torch.load(..., weights_only=True)``): the model, optimizer and scheduler states,
the position in the run, the best result so far, every random state, the run's full
configuration and its data split. `atomic_save` writes a temporary file, fsyncs it and
renames it over the old one, so a kill at any moment leaves a whole file.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from cli import UserError, first_line

CHECKPOINT_FORMAT = "hyperresnet-train-v1"
CHECKPOINT_KEYS = {"model", "optimizer", "scheduler", "epoch", "step", "best_val_error", "best", "rng", "config",
                   "train_indices", "val_indices", "elapsed_seconds"}
LEGACY_EXPERIMENT = "cifar10"  # checkpoints written before config["experiment"] existed are CIFAR-10 runs

# Flags that may differ between a checkpoint and the command that resumes it.
RESUMABLE_CHANGES = {"resume", "device", "progress", "log_dir", "checkpoint_dir", "compile", "eval_batch_size", "data_dir",
                     "download", "stop_after", "patience", "sync_bn"}


def experiment_of(config: dict) -> str:
    """The experiment a checkpoint's configuration belongs to."""
    return config.get("experiment", LEGACY_EXPERIMENT)


# ----------------------------------------------------------------------------- random states


def rng_state(generators: dict[str, torch.Generator], device: torch.device) -> dict:
    """Every random state that affects training, as tensors, numbers, strings, lists."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": [list(random.getstate()[1]), random.getstate()[0], random.getstate()[2]],
        **{name: g.get_state() for name, g in generators.items()},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, generators: dict[str, torch.Generator], device: torch.device) -> None:
    """Restore what `rng_state` captured."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    internal, version, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    for name, g in generators.items():
        g.set_state(state[name])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- files


def atomic_save(obj: dict, path: Path) -> None:
    """torch.save to a temporary file, fsync, then rename over PATH: never a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; give the file the permissions open() would
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint with weights_only=True (no code runs) and check it is one of ours."""
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path} is not a readable checkpoint ({first_line(e)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a checkpoint written by this train.py")
    missing = sorted(CHECKPOINT_KEYS - set(ckpt))
    if missing:
        raise UserError(f"{path} is incomplete: it lacks {', '.join(missing)}")
    return ckpt


def check_resume_config(saved: dict, args: argparse.Namespace, explicit: set[str]) -> None:
    """Refuse to resume when an explicit flag contradicts the checkpoint's configuration."""
    for name in sorted(explicit - RESUMABLE_CHANGES):
        if saved.get(name) != getattr(args, name):
            raise UserError(
                f"cannot resume: the checkpoint has --{name.replace('_', '-')} {saved.get(name)!r} "
                f"but {getattr(args, name)!r} was given"
            )


def writable_dir(path: Path, what: str) -> Path:
    """Create PATH and check a file can be written there, before any training step."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise UserError(f"{what} {path} is not writable ({e.strerror or e})") from None
    return path
