"""Checkpoints: written atomically, loaded without running code, holding every random state.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts (so it loads with
``torch.load(..., weights_only=True)``): the model, optimizer and scheduler states,
the position in the run, the best result so far, every random state, the run's full
configuration and its data split. `atomic_save` writes a temporary file, fsyncs it and
renames it over the old one, so a kill at any moment leaves a whole file.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import pickle
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import IO, TypeVar

import numpy as np
import torch

from cli import UserError, first_line
from config import RunConfig, roles
from devices import cuda_rng_state, cuda_state_for

fcntl: ModuleType | None
try:
    import fcntl  # POSIX (Linux, macOS); elsewhere runs are not locked
except ImportError:  # pragma: no cover - Windows
    fcntl = None

FORMAT_NAME = "hyperresnet-train-v"
FORMAT_VERSION = 3  # 3: records where it ran ("provenance")
CHECKPOINT_FORMAT = f"{FORMAT_NAME}{FORMAT_VERSION}"
CHECKPOINT_KEYS = {
    "model",
    "optimizer",
    "scheduler",
    "epoch",
    "step",
    "best_val_error",
    "best",
    "rng_per_rank",
    "config",
    "train_indices",
    "val_indices",
    "num_parameters",
    "elapsed_seconds",
    "partial",
    "metrics",
    "scaler",
    "placement",
    "provenance",
}

# ----------------------------------------------------------------------------- random states


def rng_state(generators: dict[str, torch.Generator], device: torch.device) -> dict:
    """Every random state that affects training, as tensors, numbers, strings, lists."""
    np_state = np.random.get_state()
    assert isinstance(np_state, tuple)  # the legacy form of the global RandomState's MT19937 state
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": [list(random.getstate()[1]), random.getstate()[0], random.getstate()[2]],
        **{name: g.get_state() for name, g in generators.items()},
    }
    if device.type == "cuda":
        state["cuda"] = cuda_rng_state(device)  # this process's GPU only: a run may resume on fewer
    return state


def set_rng_state(state: dict, generators: dict[str, torch.Generator], device: torch.device) -> list[str]:
    """Restore what `rng_state` captured.

    Returns:
        The names of GENERATORS left as they were: their saved state is of another kind of
        device (a run resumed on a device other than the one it was saved on).
    """
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    internal, version, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    unfit = [name for name, g in generators.items() if state[name].numel() != g.get_state().numel()]
    for name, g in generators.items():
        if name not in unfit:
            g.set_state(state[name])
    cuda = cuda_state_for(state.get("cuda"), device)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)
    return unfit


# ----------------------------------------------------------------------------- files


def write_error(path: Path, error: Exception) -> UserError:
    """A failed write of PATH as one line, saying so when the disk is full."""
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    full = (isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)) or free == 0
    if full:
        return UserError(f"cannot write {path}: the disk is full; the files saved before are intact")
    reason = error.strerror if isinstance(error, OSError) and error.strerror else first_line(error)
    return UserError(f"cannot write {path} ({reason}); the files saved before are intact")


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """WRITE into a temporary file beside PATH, fsync, rename over PATH, fsync the folder:
    PATH is always either the old file or the whole new one. A failure to write (a full
    disk, a lost permission) is a `UserError`; the old file stays."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise write_error(path, e) from None
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; give the file the permissions open() would
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except (OSError, RuntimeError) as e:  # torch's zip writer reports a failed write as a RuntimeError
        Path(tmp).unlink(missing_ok=True)
        raise write_error(path, e) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save(obj: dict, path: Path) -> None:
    """torch.save OBJ to PATH atomically (see `atomic_write`)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: Path) -> None:
    """Replace PATH by TEXT atomically (see `atomic_write`)."""
    atomic_write(path, lambda f: f.write(text.encode()))


def append_line(line: str, path: Path) -> None:
    """Append LINE to a text file (a kill may tear it: readers drop a torn last line)."""
    try:
        with open(path, "a") as f:
            f.write(line + "\n")
    except OSError as e:
        raise write_error(path, e) from None


def remove_stale_temporaries(folder: Path) -> None:
    """Delete the temporary files of saves that a kill interrupted (only the lock holder may)."""
    for tmp in folder.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def acquire_run_lock(folder: Path) -> IO | None:
    """Hold FOLDER/.lock while this process trains the run there: a second process on the
    same run is refused instead of interleaving its writes. The lock ends with the process,
    however it ends (kill -9 included)."""
    if fcntl is None:
        return None
    lock = open(folder / ".lock", "a")
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise UserError(
            f"another process is training the run in {folder}: wait for it to end, or pick another --run-name"
        ) from None
    return lock


def release_run_lock(lock: IO | None) -> None:
    """Let another process train the run (see `acquire_run_lock`)."""
    if lock is not None:
        lock.close()


def safe_load(path: Path, what: str) -> object:
    """torch.load PATH with weights_only=True: tensors, numbers, strings, lists and dicts, no code.

    Raises:
        UserError: If PATH is not such a file: one line saying it is not WHAT, and never
            torch's advice to load it unsafely instead.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torn, truncated, empty, not a torch file, or holding objects the safe loader refuses
        if "Unsupported global" in str(e):  # torch's refusal names the object's class
            reason = "it holds objects other than tensors, numbers and text"
        elif isinstance(e, pickle.UnpicklingError):  # torch's message would advise loading it unsafely: not quoted
            reason = "it is not a file torch.save wrote, or it is torn"
        else:
            reason = f"it cannot be read ({first_line(e)})"
        raise UserError(f"{path} is not {what}: {reason}") from None


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint with weights_only=True (no code runs) and check it is one of ours."""
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}")
    ckpt = safe_load(path, "a checkpoint written by train.py or mnist.py")
    fmt = ckpt.get("format") if isinstance(ckpt, dict) else None
    if not isinstance(ckpt, dict) or not isinstance(fmt, str) or not fmt.startswith(FORMAT_NAME):
        raise UserError(f"{path} is not a checkpoint written by this train.py")
    if fmt != CHECKPOINT_FORMAT:
        raise UserError(
            f"{path} has checkpoint format {fmt!r}, this code reads {CHECKPOINT_FORMAT!r}: resume or "
            "export it with the commit that wrote it (git log -- checkpointing.py)"
        )
    missing = sorted(CHECKPOINT_KEYS - set(ckpt))
    if not missing and not (isinstance(ckpt["config"], dict) and "experiment" in ckpt["config"]):
        missing = ["config.experiment"]
    if missing:
        raise UserError(f"{path} is incomplete: it lacks {', '.join(missing)}")
    return ckpt


C = TypeVar("C", bound=RunConfig)


def resumed_config(saved: C, given: C, explicit: set[str]) -> C:
    """SAVED (a checkpoint's configuration) as the command GIVEN resumes it, flag by flag by
    its `Role`. Refuses, in one line, an EXPLICIT flag that contradicts a "fixed" one."""
    resumed = dataclasses.replace(saved)
    for name, role in roles(type(saved)).items():
        value = getattr(given, name)
        if role.on_resume == "fixed" and name in explicit and value != getattr(saved, name):
            raise UserError(
                f"cannot resume: the checkpoint has --{name.replace('_', '-')} {getattr(saved, name)!r} "
                f"but {value!r} was given"
            )
        if role.on_resume == "given" or (role.on_resume == "kept" and name in explicit):
            setattr(resumed, name, value)
    return resumed


def writable_dir(path: Path, what: str) -> Path:
    """Create PATH and check a file can be written there, before any training step."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise UserError(f"{what} {path} is not writable ({e.strerror or e})") from None
    return path
