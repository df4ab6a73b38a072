"""Train a HyperResNet (or the plain WRN baseline) on CIFAR-10 with the paper's protocol.

    python train.py                         # Hyper-WRN-40-1, paper schedule (App. A.3.2)
    python train.py --plain --width 2       # the WRN-40-2 baseline
    python train.py --epochs 10             # the same schedule squeezed into 10 epochs
    python train.py -r                      # resume the run named by the flags, exactly

Top to bottom: arguments, data (pickles -> uint8 tensors on the device -> batched
augmentation), schedule, checkpoints (atomic, weights_only-loadable), evaluation, the
training loop. Every user error ends in one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import codecs
import json
import math
import os
import pickle
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from primary_net import PAPER_TABLE2, PrimaryNetwork, blocks_per_stage, model_name, num_parameters

CHECKPOINT_FORMAT = "hyperresnet-train-v1"
CHECKPOINT_KEYS = {"model", "optimizer", "scheduler", "epoch", "step", "best_val_error", "best", "rng", "config",
                   "train_indices", "val_indices", "elapsed_seconds"}
SPLIT_SEED = 0  # the validation images are drawn once with this seed, for every run
PAD = 2  # the paper pads 32x32 images to 36x36 before the random 32x32 crop

# Paper App. A.3.2, batch 128. Boundaries in steps; lr multipliers of the base lr.
SCHEDULES = {
    "hyper": dict(optimizer="adam", lr=0.002, total=672_000, boundaries=[168_000, 336_000, 504_000], factors=[1, 0.5, 0.1, 0.025]),
    "plain": dict(optimizer="sgd", lr=0.1, total=140_000, boundaries=[28_000, 56_000, 84_000, 112_000], factors=[1, 0.2, 0.04, 0.008, 0.0016]),
}

# Flags that may differ between a checkpoint and the command that resumes it.
RESUMABLE_CHANGES = {"resume", "device", "progress", "log_dir", "checkpoint_dir", "compile", "eval_batch_size", "data_dir",
                     "download", "stop_after", "patience", "sync_bn"}


class UserError(Exception):
    """A mistake the user can fix; reported as one line, exit status 1."""


def first_line(error: Exception) -> str:
    """An exception's message cut to one short line (its type name if it has none)."""
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


# ----------------------------------------------------------------------------- arguments


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def wrn_depth(text: str) -> int:
    depth = int(text)
    try:
        blocks_per_stage(depth)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return depth


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default unless it is None or the help text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


class Schedule(NamedTuple):
    """How an experiment trains: optimizer, base lr, length, and the lr multiplier per step."""

    optimizer: str
    lr: float
    epochs: int
    total_steps: int
    multiplier: Callable[[int], float]


@dataclass(frozen=True)
class Experiment:
    """What one experiment defines. `fit` supplies the rest (data on the device, the loop,
    checkpoints, exact resume, metrics, TensorBoard, one-line errors), the same for all.

    The model it builds must offer ``kernels()``, ``kernel_sq_norm()`` and
    ``forward(x, kernels)``, like `PrimaryNetwork`.
    """

    name: str  # stored in every checkpoint's config, e.g. "cifar10"
    script: str  # the command that runs it, for messages
    description: str
    add_arguments: Callable[[dict[str, argparse._ArgumentGroup], Callable[[object], dict]], None]
    defaults: dict  # batch_size, weight_decay, epochs, patience and help texts for the shared flags
    load_data: Callable[[str, bool], tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor]
    build_model: Callable[[dict], torch.nn.Module]
    schedule: Callable[[argparse.Namespace, int], Schedule]
    run_name: Callable[[argparse.Namespace], str]
    paper_result: Callable[[argparse.Namespace], str]


def build_parser(experiment: Experiment, suppress_defaults: bool = False) -> argparse.ArgumentParser:
    """The command line: the experiment's own flags plus the shared ones. With
    suppress_defaults, only flags given explicitly appear."""
    p = argparse.ArgumentParser(
        prog=experiment.script,
        description=experiment.description,
        formatter_class=HelpFormatter,
        argument_default=argparse.SUPPRESS if suppress_defaults else None,
    )
    d = (lambda v: {}) if suppress_defaults else (lambda v: {"default": v})
    defaults = experiment.defaults
    groups = {name: p.add_argument_group(name) for name in ("model", "training", "system", "output")}
    experiment.add_arguments(groups, d)
    t = groups["training"]
    t.add_argument("--epochs", type=positive_int, **d(defaults["epochs"]), help=defaults["epochs_help"])
    t.add_argument("--batch-size", type=positive_int, **d(defaults["batch_size"]), help="images per training step")
    t.add_argument("--optimizer", choices=["adam", "sgd"], **d(None), help=defaults["optimizer_help"])
    t.add_argument("--lr", type=float, **d(None), help=defaults["lr_help"])
    t.add_argument("--weight-decay", type=float, **d(defaults["weight_decay"]), help="L2 penalty wd/2*sum(K^2) on the kernels in use")
    t.add_argument("--seed", type=int, **d(0), help="seeds the model init, data order and augmentation")
    t.add_argument("--val-size", type=positive_int, **d(5000), help="validation images held out of the training set")
    t.add_argument("--patience", type=positive_int, **d(defaults["patience"]), metavar="EPOCHS",
                   help="early stopping: end the run after this many epochs without a better validation error")
    t.add_argument("--stop-after", type=positive_int, **d(None), metavar="EPOCH",
                   help="stop after this epoch (resume later with -r), e.g. to fit a job time limit")
    s = groups["system"]
    s.add_argument("--data-dir", **d("./data"), help=defaults["data_help"])
    s.add_argument("--download", action=argparse.BooleanOptionalAction, **d(True), help="download the dataset if missing")
    s.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], **d("auto"), help="auto: cuda > mps > cpu")
    s.add_argument("--amp", action=argparse.BooleanOptionalAction, **d(None), help="bf16 autocast (default: on for cuda)")
    s.add_argument("--channels-last", action=argparse.BooleanOptionalAction, **d(None), help="default: on for cuda")
    s.add_argument("--compile", action="store_true", **d(False), help="torch.compile the model")
    s.add_argument("--sync-bn", action="store_true", **d(False),
                   help="under torchrun: BatchNorm statistics over the global batch (SyncBatchNorm, CUDA only)")
    s.add_argument("--eval-batch-size", type=positive_int, **d(1000), help="images per evaluation batch")
    s.add_argument("--progress", action=argparse.BooleanOptionalAction, **d(True), help="tqdm progress bar")
    o = groups["output"]
    o.add_argument("--run-name", **d(None), help=f"default: from the model, e.g. {defaults['run_name_example']}")
    o.add_argument("--checkpoint-dir", **d("checkpoints"))
    o.add_argument("--log-dir", **d("runs"), help="TensorBoard logs go to LOG_DIR/RUN_NAME")
    o.add_argument("-r", "--resume", nargs="?", const="", **d(None), metavar="PATH", help="resume PATH, or this run's last.pt")
    return p


def parse_args(argv: list[str] | None = None, experiment: Experiment | None = None) -> tuple[argparse.Namespace, set[str]]:
    """Parsed arguments (CIFAR-10's unless another experiment is given) and the names of
    the flags given explicitly."""
    experiment = experiment or CIFAR10
    args = build_parser(experiment).parse_args(argv)
    explicit = set(vars(build_parser(experiment, suppress_defaults=True).parse_args(argv)))
    if args.run_name is None:
        args.run_name = experiment.run_name(args)
    return args, explicit


# ----------------------------------------------------------------------------- data


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


def load_cifar10(data_dir: str | os.PathLike, download: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
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
        gen: CPU generator for the crop offsets and flips.
    """
    b, _, h, w = x.shape
    offsets = torch.randint(0, 2 * pad + 1, (2, b), generator=gen).to(x.device)
    flips = torch.rand(b, generator=gen).lt(0.5).to(x.device) if flip else torch.zeros(b, dtype=torch.bool, device=x.device)
    padded = F.pad(x, (pad, pad, pad, pad))  # (B, C, H+2P, W+2P)
    rows = offsets[0, :, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = offsets[1, :, None] + torch.arange(w, device=x.device)  # (B, W)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # (B, C, H, W)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The paper's CIFAR augmentation: pad 32x32 to 36x36, random 32x32 crop, random flip."""
    return random_crop(x, gen, PAD, flip=True)


class Normalize:
    """uint8 images -> float, per-channel standardised with the training split's statistics."""

    def __init__(self, images: torch.Tensor):
        total = torch.zeros(2, images.shape[1], dtype=torch.float64, device=images.device)
        for chunk in images.split(5000):  # bounded memory: never the whole set in float
            c = chunk.double().div_(255)
            total += torch.stack([c.sum(dim=(0, 2, 3)), c.pow(2).sum(dim=(0, 2, 3))])
        count = images.numel() / images.shape[1]
        mean, mean_sq = total / count
        self.mean = mean.float().view(1, -1, 1, 1)
        self.std = (mean_sq - mean**2).sqrt().float().view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
        x = x.float().div_(255).sub_(self.mean.to(x.device)).div_(self.std.to(x.device))
        return x.contiguous(memory_format=memory_format)


# ----------------------------------------------------------------------------- schedule


def schedule_for(args: argparse.Namespace, steps_per_epoch: int) -> tuple[dict, int, int]:
    """(paper schedule entry, total steps, epochs), rescaled to --epochs when given."""
    sched = SCHEDULES["plain" if args.plain else "hyper"]
    epochs = args.epochs or max(1, round(sched["total"] / steps_per_epoch))
    return sched, epochs * steps_per_epoch, epochs


def lr_multiplier(step: int, sched: dict, total: int) -> float:
    """Piecewise-constant multiplier at STEP, the paper's boundaries scaled to TOTAL steps."""
    return sched["factors"][sum(step * sched["total"] >= b * total for b in sched["boundaries"])]  # exact in integers


# ----------------------------------------------------------------------------- checkpoints


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
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    internal, version, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    for name, g in generators.items():
        g.set_state(state[name])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


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


# ----------------------------------------------------------------------------- torchrun


class Distributed(NamedTuple):
    """Where this process stands in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int
    world: int

    @property
    def main(self) -> bool:
        """The one process that writes checkpoints, logs, metrics and the progress bar."""
        return self.rank == 0


SINGLE_PROCESS = Distributed(0, 1)


def init_distributed(device: torch.device) -> Distributed:
    """Join the torchrun job described by the environment, if any: nccl on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return SINGLE_PROCESS
    dist = Distributed(int(os.environ["RANK"]), world)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist


def all_sum(t: torch.Tensor, dist: Distributed) -> torch.Tensor:
    """T summed over all processes (a new tensor; T itself is left alone)."""
    t = t.clone()
    if dist.world > 1:
        torch.distributed.all_reduce(t)
    return t


def augment_seed(seed: int, rank: int) -> int:
    """Each process's own augmentation stream; rank 0's is the single-process one."""
    return seed + 2 + 1_000_003 * rank


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(model: PrimaryNetwork, images: torch.Tensor, labels: torch.Tensor, normalize: Normalize,
             batch_size: int, memory_format: torch.memory_format, amp: bool, dist: Distributed | None = None) -> float:
    """Top-1 error in percent over all IMAGES. Kernels are generated once for the whole pass.
    Under torchrun each process takes every world-th image and the counts are summed."""
    dist = dist or SINGLE_PROCESS
    mine, my_labels = images[dist.rank :: dist.world], labels[dist.rank :: dist.world]
    model.eval()
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
        kernels = model.kernels()
        wrong = torch.zeros((), dtype=torch.long, device=images.device)
        for i in range(0, len(mine), batch_size):
            logits = model(normalize(mine[i : i + batch_size], memory_format), kernels)
            wrong += (logits.argmax(1) != my_labels[i : i + batch_size]).sum()
    model.train()
    return 100.0 * all_sum(wrong, dist).item() / len(images)


# ----------------------------------------------------------------------------- training


def build_model(config: dict) -> PrimaryNetwork:
    """The network a run's configuration (its arguments, as saved in checkpoints) describes."""
    return PrimaryNetwork(config["depth"], config["width"], hyper=not config["plain"], z_dim=config["z_dim"],
                          shortcut=config["shortcut"])


def build_optimizer(model: torch.nn.Module, name: str, lr: float) -> torch.optim.Optimizer:
    """Adam (the paper's for hyper) or Nesterov SGD with momentum 0.9 (for plain)."""
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True)


def train_step(model: PrimaryNetwork, forward, optimizer: torch.optim.Optimizer, scheduler, x: torch.Tensor,
               y: torch.Tensor, weight_decay: float, amp: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step: generate kernels once; cross-entropy plus L2 on the kernels in use.

    Args:
        model: The network (owner of the kernels).
        forward: ``model`` or its torch.compile'd version.
        x: Normalised images (B, 3, 32, 32); y: labels (B,).

    Returns:
        The detached cross-entropy loss and logits.
    """
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        logits = forward(x, model.kernels())
        loss = F.cross_entropy(logits.float(), y)
        penalty = 0.5 * weight_decay * model.kernel_sq_norm() if weight_decay else 0.0
    optimizer.zero_grad(set_to_none=True)
    (loss + penalty).backward()
    optimizer.step()
    scheduler.step()
    return loss.detach(), logits.detach()


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """The device for --device NAME; under torchrun, CUDA device LOCAL_RANK."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was given but CUDA is not available")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("--device mps was given but MPS is not available")
    return torch.device(name, local_rank) if name == "cuda" else torch.device(name)


def format_time(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    return (f"{days}d " if days else "") + time.strftime("%H:%M:%S", time.gmtime(rest))


def fit(experiment: Experiment, argv: list[str] | None = None) -> dict:
    """Run (or resume) one training run of EXPERIMENT; returns its final summary.

    Under ``torchrun --nproc_per_node=N`` it trains data-parallel: every process takes
    its 1/N share of each global batch of --batch-size images, and only rank 0 writes.
    """
    args, explicit = parse_args(argv, experiment)
    ckpt = None
    if args.resume is not None:
        path = Path(args.resume) if args.resume else Path(args.checkpoint_dir) / args.run_name / "last.pt"
        ckpt = load_checkpoint(path)
        saved_experiment = ckpt["config"].get("experiment", CIFAR10.name)  # checkpoints before MNIST: CIFAR-10
        if saved_experiment != experiment.name:
            raise UserError(f"{path} is a {saved_experiment} run, not {experiment.name}: resume it with its own script")
        check_resume_config(ckpt["config"], args, explicit)
        saved = {**vars(build_parser(experiment).parse_args([])), **ckpt["config"]}  # flags newer than the checkpoint
        saved.update({k: getattr(args, k) for k in RESUMABLE_CHANGES})
        args = argparse.Namespace(**saved)

    device = pick_device(args.device, int(os.environ.get("LOCAL_RANK", "0")))  # chosen before the process group: nccl needs it
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist = init_distributed(device)
    if args.sync_bn and dist.world > 1 and device.type != "cuda":
        raise UserError("--sync-bn needs CUDA: torch's SyncBatchNorm does not run on the CPU")
    if args.batch_size % dist.world:
        raise UserError(f"--batch-size {args.batch_size} does not split evenly over {dist.world} processes")
    amp = args.amp if args.amp is not None else device.type == "cuda"
    channels_last = args.channels_last if args.channels_last is not None else device.type == "cuda"
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    run_dir = writable_dir(Path(args.checkpoint_dir) / args.run_name, "checkpoint directory")
    if ckpt is None and (run_dir / "last.pt").exists():
        raise UserError(f"{run_dir / 'last.pt'} exists: resume it with -r, or pick another --run-name")
    log_dir = writable_dir(Path(args.log_dir) / args.run_name, "log directory")
    log = print if dist.main else lambda *a, **k: None

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    random.seed(args.seed)
    generators = {"data_order": torch.Generator().manual_seed(args.seed + 1),  # the same on every process
                  "augment": torch.Generator().manual_seed(augment_seed(args.seed, dist.rank))}

    # Data: whole dataset as uint8 tensors on the device.
    train_x, train_y, test_x, test_y = experiment.load_data(args.data_dir, args.download)
    if ckpt is not None:
        train_idx, val_idx = ckpt["train_indices"], ckpt["val_indices"]
    else:
        train_idx, val_idx = split_indices(len(train_x), args.val_size)
    val_x, val_y = train_x[val_idx].to(device), train_y[val_idx].to(device)
    train_x, train_y = train_x[train_idx].to(device), train_y[train_idx].to(device)
    test_x, test_y = test_x.to(device), test_y.to(device)
    normalize = Normalize(train_x)
    batch_size = min(args.batch_size, len(train_x) - len(train_x) % dist.world)  # global
    local_batch = batch_size // dist.world
    steps_per_epoch = len(train_x) // batch_size
    schedule = experiment.schedule(args, steps_per_epoch)
    total_steps, epochs = schedule.total_steps, schedule.epochs

    # Model, optimizer, schedule.
    model = experiment.build_model(vars(args)).to(device, memory_format=memory_format)
    if args.sync_bn and dist.world > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    n_params = num_parameters(model)
    optimizer_name = args.optimizer or schedule.optimizer
    lr = args.lr if args.lr is not None else schedule.lr
    optimizer = build_optimizer(model, optimizer_name, lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.multiplier)

    start_epoch, step, best_val, best, elapsed = 0, 0, math.inf, {}, 0.0
    metrics_path = run_dir / "metrics.jsonl"
    if ckpt is not None:
        # Every process restores the same model and optimizer, and its own random streams.
        per_rank = ckpt.get("rng_per_rank") or [ckpt["rng"]]
        try:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            set_rng_state(per_rank[dist.rank] if len(per_rank) == dist.world else per_rank[0], generators, device)
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"{args.resume or 'the checkpoint'} does not fit its own configuration ({first_line(e)})") from None
        if len(per_rank) != dist.world:
            log(f"note: the checkpoint was written by {len(per_rank)} process(es), this job has {dist.world}: "
                "augmentation streams restart from the seed (the run goes on, but not bit-exactly)")
            generators["augment"].manual_seed(augment_seed(args.seed, dist.rank) + 7919 * ckpt["epoch"])
        start_epoch, step, best_val, best = ckpt["epoch"], ckpt["step"], ckpt["best_val_error"], ckpt["best"]
        elapsed = ckpt["elapsed_seconds"]
        # Forget metrics of epochs that ran after this checkpoint (an interrupted epoch).
        if dist.main and metrics_path.exists():
            kept = [line for line in metrics_path.read_text().splitlines() if line and json.loads(line)["epoch"] <= start_epoch]
            metrics_path.write_text("".join(line + "\n" for line in kept))
    elif dist.main and metrics_path.exists():
        metrics_path.unlink()
    forward = model
    if dist.world > 1:  # gradients (hypernetwork and z's included) are averaged over processes in backward
        forward = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:
        forward = torch.compile(forward)

    from torch.utils.tensorboard import SummaryWriter  # imported late: slow, and only needed here

    writer = SummaryWriter(str(log_dir), purge_step=step if ckpt is not None else None) if dist.main else None
    name = experiment.run_name(args)
    log(f"{name}: {n_params:,} parameters | {len(train_x)} train / {len(val_x)} val / {len(test_x)} test images | "
        f"device {device.type}{' bf16' if amp else ''}{' channels_last' if channels_last else ''}"
        f"{f' x {dist.world} processes' if dist.world > 1 else ''} | "
        f"{optimizer_name} lr {lr:g}, {epochs} epochs x {steps_per_epoch} steps of {batch_size}"
        + (f" | resumed at epoch {start_epoch}" if ckpt is not None else ""))
    cpu_note_due = device.type == "cpu" and args.epochs is None  # printed once the step time is known

    run_start, run_start_step = time.time(), step

    def run_eta() -> float:
        """Seconds left in the run, at this session's average step time so far."""
        return (time.time() - run_start) / max(step - run_start_step, 1) * (total_steps - step)
    for epoch in range(start_epoch, epochs):
        if args.patience is not None and best and epoch - best["epoch"] >= args.patience:
            log(f"early stop after epoch {epoch}: no better validation error for {args.patience} epochs")
            break
        model.train()
        order = torch.randperm(len(train_x), generator=generators["data_order"]).to(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        epoch_start = time.time()
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{epochs}", disable=not args.progress or not dist.main,
                   leave=False, dynamic_ncols=True, file=sys.stderr)
        for i in bar:
            idx = order[i * batch_size : (i + 1) * batch_size]  # the global batch
            idx = idx[dist.rank * local_batch : (dist.rank + 1) * local_batch]  # this process's share
            x = normalize(experiment.augment(train_x[idx], generators["augment"]), memory_format)
            y = train_y[idx]
            loss, logits = train_step(model, forward, optimizer, scheduler, x, y, args.weight_decay, amp)
            step += 1
            loss_sum += loss
            correct += (logits.argmax(1) == y).sum()
            if i % 10 == 9 or i == steps_per_epoch - 1:
                running = all_sum(loss_sum, dist).item() / dist.world / (i + 1)  # the same on every process
                if not math.isfinite(running):
                    raise UserError(f"training loss became {running} at step {step}; stopped. "
                                    f"The last good checkpoint is kept: {run_dir / 'last.pt'}")
                rate = (i + 1) * batch_size / (time.time() - epoch_start)
                eta = run_eta()
                if cpu_note_due and dist.main:
                    tqdm.write(f"note: the paper schedule is {total_steps:,} steps: about {format_time(eta)} more "
                               "on this CPU. Use --epochs N for a short budget.", file=sys.stderr)
                    cpu_note_due = False
                bar.set_postfix_str(f"loss {running:.3f} acc {100 * correct.item() / ((i + 1) * local_batch):.1f}% "
                                    f"{rate:.0f} img/s run ETA {format_time(eta)}")
        bar.close()
        train_loss = all_sum(loss_sum, dist).item() / dist.world / steps_per_epoch
        train_error = 100 - 100 * all_sum(correct, dist).item() / (steps_per_epoch * batch_size)
        seconds = time.time() - epoch_start
        images_per_s = steps_per_epoch * batch_size / seconds
        if dist.world > 1:  # BatchNorm running statistics drift apart per process: evaluate (and save) rank 0's
            for buffer in model.buffers():
                torch.distributed.broadcast(buffer, 0)
        val_error = evaluate(model, val_x, val_y, normalize, args.eval_batch_size, memory_format, amp, dist)
        test_error = evaluate(model, test_x, test_y, normalize, args.eval_batch_size, memory_format, amp, dist)
        record = {"epoch": epoch + 1, "step": step, "train_loss": train_loss, "train_error": train_error,
                  "val_error": val_error, "test_error": test_error, "lr": optimizer.param_groups[0]["lr"],
                  "images_per_s": images_per_s, "epoch_seconds": seconds,
                  "elapsed_seconds": elapsed + time.time() - epoch_start, "device": device.type, "processes": dist.world}
        is_best = val_error < best_val
        if is_best:
            best_val = val_error
            best = {"epoch": epoch + 1, "step": step, "val_error": val_error, "test_error": test_error}
        rng = rng_state(generators, device)
        per_rank = [None] * dist.world
        if dist.world > 1:
            torch.distributed.all_gather_object(per_rank, rng)
        else:
            per_rank = [rng]
        elapsed = record["elapsed_seconds"]
        if dist.main:
            writer.add_scalar("train/loss", train_loss, step)
            writer.add_scalar("train/accuracy", 100 - train_error, step)
            for key in ("val_error", "test_error", "lr", "images_per_s"):
                writer.add_scalar(key, record[key], step)
            writer.flush()
            checkpoint = {
                "format": CHECKPOINT_FORMAT, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "step": step, "best_val_error": best_val,
                "best": best, "rng": rng, "rng_per_rank": per_rank, "config": {**vars(args), "experiment": experiment.name},
                "train_indices": train_idx, "val_indices": val_idx, "num_parameters": n_params,
                "elapsed_seconds": elapsed, "processes": dist.world,
            }
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            if is_best:
                atomic_save(checkpoint, run_dir / "best.pt")
            atomic_save(checkpoint, run_dir / "last.pt")
        log(f"epoch {epoch + 1}/{epochs} step {step} | loss {train_loss:.4f} train err {train_error:.2f}% | "
            f"val err {val_error:.2f}% test err {test_error:.2f}% | lr {record['lr']:.3g} | "
            f"{images_per_s:.0f} img/s | {format_time(seconds)}/epoch, ETA {format_time(run_eta())}", flush=True)
        if args.stop_after is not None and epoch + 1 >= args.stop_after and epoch + 1 < epochs:
            log(f"stopped after epoch {epoch + 1} (--stop-after); continue with: "
                f"python {experiment.script} -r {run_dir / 'last.pt'}")
            if writer:
                writer.close()
            return {"name": name, "num_parameters": n_params, "stopped_at": epoch + 1, **best}
    if writer:
        writer.close()

    log(f"final: {name} test error {best['test_error']:.2f}% (best validation epoch {best['epoch']}, "
        f"val error {best['val_error']:.2f}%) | {n_params:,} parameters ({n_params / 1e6:.3f}M) | {experiment.paper_result(args)}")
    return {"name": name, "num_parameters": n_params, **best}


# ----------------------------------------------------------------------------- CIFAR-10


def cifar_arguments(groups: dict[str, argparse._ArgumentGroup], d: Callable[[object], dict]) -> None:
    m = groups["model"]
    m.add_argument("--depth", type=wrn_depth, **d(40), help="WRN depth, 6N+4")
    m.add_argument("--width", type=positive_int, **d(1), help="widening factor k")
    m.add_argument("--plain", action="store_true", **d(False), help="train the plain WRN baseline, not the hypernetwork")
    m.add_argument("--z-dim", type=positive_int, **d(64), help="size of each z-embedding")
    m.add_argument("--shortcut", choices=["pad", "conv"], **d("pad"), help="shortcut where a block changes shape")
    groups["training"].add_argument("--schedule", choices=["paper"], **d("paper"),
                                    help="lr schedule (App. A.3.2: Table 9 hyper, Table 8 plain)")


def cifar_schedule(args: argparse.Namespace, steps_per_epoch: int) -> Schedule:
    """The paper's schedule for this model (Adam for hyper, Nesterov SGD for plain), rescaled to --epochs."""
    sched, total, epochs = schedule_for(args, steps_per_epoch)
    return Schedule(sched["optimizer"], sched["lr"], epochs, total, lambda step: lr_multiplier(step, sched, total))


def cifar_paper_result(args: argparse.Namespace) -> str:
    paper = PAPER_TABLE2.get((args.depth, args.width, not args.plain))
    return f"paper: {paper[0]:.2f}% with {paper[1]:.3f}M" if paper else "no paper row for this configuration"


CIFAR10 = Experiment(
    name="cifar10",
    script="train.py",
    description="Train a HyperResNet or a plain Wide-ResNet on CIFAR-10 (Ha et al. 2017).",
    add_arguments=cifar_arguments,
    defaults=dict(epochs=None, epochs_help="rescale the schedule to this many epochs (default: the paper's step count)",
                  batch_size=128, weight_decay=5e-4, patience=None, optimizer_help="default: adam for hyper, Nesterov sgd for plain",
                  lr_help="base lr (default: 0.002 hyper, 0.1 plain)", data_help="folder holding cifar-10-batches-py/",
                  run_name_example="hyper-40-1"),
    load_data=load_cifar10,
    augment=augment,
    build_model=build_model,
    schedule=cifar_schedule,
    run_name=lambda args: model_name(args.depth, args.width, not args.plain),
    paper_result=cifar_paper_result,
)


def train(argv: list[str] | None = None) -> dict:
    """Run (or resume) one CIFAR-10 run; returns its final summary."""
    return fit(CIFAR10, argv)


def main(argv: list[str] | None = None, experiment: Experiment = CIFAR10) -> int:
    """The command line of EXPERIMENT: 0 on success, 1 with one line on stderr for a user error."""
    main_process = int(os.environ.get("RANK", "0")) == 0  # under torchrun, one process reports
    try:
        fit(experiment, argv)
    except UserError as e:
        if main_process:
            print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if main_process:
            print("interrupted: the last completed epoch is saved; resume with -r", file=sys.stderr)
        return 130
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
