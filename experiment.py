"""What an experiment is, and its command line.

An `Experiment` (CIFAR-10 in train.py, MNIST in mnist.py) supplies data, augmentation,
the model, the schedule and names; `runner.fit` supplies the rest, the same for all:
checkpoints, exact resume, metrics, TensorBoard, torchrun, one-line errors. The model
it builds is any `nn.Module` with ``forward(x)`` (see `engine.objective_of` for its L2 penalty).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, NamedTuple, TypeVar

import torch

from cli import (
    ArgumentParser,
    HelpFormatter,
    UserError,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    run_name,
    seed,
)
from config import RunConfig, result_flags
from data import Splits
from devices import AMP_CHOICES


class Schedule(NamedTuple):
    """How an experiment trains: optimizer, base lr, length, the lr multiplier per step, and
    (optionally) the global gradient-norm clip."""

    optimizer: str
    lr: float
    epochs: int
    total_steps: int
    multiplier: Callable[[int], float]
    clip_norm: float | None = None  # clip the gradients' global L2 norm to this before each step


@dataclass(frozen=True)
class FlagDefaults:
    """Defaults and help texts of the shared flags that differ between experiments."""

    epochs: int | None
    epochs_help: str
    batch_size: int
    weight_decay: float
    patience: int | None
    optimizer_help: str
    lr_help: str
    data_help: str
    run_name_example: str
    precise_bn: int = 0  # training images for precise BatchNorm statistics before each evaluation


DEFAULT_DATA_DIR = "./data"  # the one --data-dir that is created (for a download) when missing
SCALE_INITS = ("scale-in-z", "scale-in-hypernet")  # --init values that only place a hypernetwork's initial kernel scale


def kernel_init(init: str, hyper: bool) -> str:
    """INIT as the kernels see it: the `SCALE_INITS` differ only in where a hypernetwork
    keeps the kernels' initial scale, so a plain net starts the same under both ("kaiming")."""
    return "kaiming" if not hyper and init in SCALE_INITS else init


ArgumentAdder = Callable[[dict[str, argparse._ArgumentGroup], Callable[[object], dict]], None]
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]  # uint8 batch -> batch on the 0-255 scale
C = TypeVar("C", bound=RunConfig)


@dataclass(frozen=True)
class Experiment(Generic[C]):
    """What one experiment defines; `fit` supplies the rest, the same for all."""

    name: str  # stored in every checkpoint's config, e.g. "cifar10"
    script: str  # the command that runs it, for messages
    description: str
    config_type: type[C]  # its flags: the shared ones and its own
    add_arguments: ArgumentAdder  # the experiment's own flags, into the "model"/"training" groups
    defaults: FlagDefaults
    load_data: Callable[[str, bool], Splits]  # (data_dir, download) -> uint8 images and labels
    augment: Callable[[C], Augment]  # a run's configuration -> its training augmentation
    build_model: Callable[[C], torch.nn.Module]
    schedule: Callable[[C, int], Schedule]  # (config, steps per epoch) -> schedule
    run_name: Callable[[C], str]  # the model's name (hyper-40-1): `configuration_name` adds the rest
    named_flags: tuple[str, ...]  # the flags that `run_name` already says
    paper_result: Callable[[C], str]  # the paper's figure, for the final line
    # Fills the defaults that depend on other flags (e.g. a protocol's epochs), given the flags set explicitly.
    resolve_defaults: Callable[[C, set[str]], None] | None = None


def all_experiments() -> dict[str, Experiment[Any]]:
    """Every experiment, by name: CIFAR-10 (train.py) and MNIST (mnist.py).

    They are imported on the first call, not with this module, which both of them import.
    """
    import mnist
    import train

    return {e.name: e for e in (train.CIFAR10, mnist.MNIST)}


# ----------------------------------------------------------------------------- command line


def add_shared_arguments(
    groups: dict[str, argparse._ArgumentGroup], d: Callable[[object], dict], defaults: FlagDefaults
) -> None:
    """The flags every experiment has, into GROUPS; D(value) gives a flag's default keyword."""
    add_training_arguments(groups["training"], d, defaults)
    add_system_arguments(groups["system"], d, defaults)
    add_output_arguments(groups["output"], d, defaults)


def add_training_arguments(t: argparse._ArgumentGroup, d: Callable[[object], dict], defaults: FlagDefaults) -> None:
    """The schedule, the data split, stopping and evaluation."""
    t.add_argument("--epochs", type=positive_int, **d(defaults.epochs), help=defaults.epochs_help)
    t.add_argument("--batch-size", type=positive_int, **d(defaults.batch_size), help="images per training step")
    t.add_argument("--optimizer", choices=["adam", "sgd"], **d(None), help=defaults.optimizer_help)
    t.add_argument("--lr", type=positive_float, **d(None), help=defaults.lr_help)
    t.add_argument(
        "--weight-decay",
        type=non_negative_float,
        **d(defaults.weight_decay),
        help="L2 penalty wd/2*sum(K^2) on the kernels in use",
    )
    t.add_argument("--seed", type=seed, **d(0), help="seeds the model init, data order and augmentation")
    t.add_argument("--val-size", type=positive_int, **d(5000), help="validation images held out of the training set")
    t.add_argument(
        "--patience",
        type=positive_int,
        **d(defaults.patience),
        metavar="EPOCHS",
        help="early stopping: end the run after this many epochs without a better validation error "
        f"(default: {'none, train every epoch' if defaults.patience is None else defaults.patience})",
    )
    t.add_argument(
        "--precise-bn",
        type=non_negative_int,
        **d(defaults.precise_bn),
        metavar="IMAGES",
        help="before each evaluation, recompute BatchNorm statistics on this many training images "
        "(0: use the running statistics; no effect on a model without BatchNorm)",
    )
    t.add_argument(
        "--stop-after",
        type=positive_int,
        **d(None),
        metavar="EPOCH",
        help="stop after this epoch (resume later with -r), e.g. to fit a job time limit",
    )


def add_system_arguments(s: argparse._ArgumentGroup, d: Callable[[object], dict], defaults: FlagDefaults) -> None:
    """Where the data is and how this process computes."""
    s.add_argument("--data-dir", **d(DEFAULT_DATA_DIR), help=defaults.data_help)
    s.add_argument(
        "--download", action=argparse.BooleanOptionalAction, **d(True), help="download the dataset if missing"
    )
    s.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], **d("auto"), help="auto: cuda > mps > cpu")
    s.add_argument(
        "--amp",
        choices=AMP_CHOICES,
        **d("auto"),
        help="autocast: auto is bf16 on CUDA GPUs of compute capability >= 8.0, fp16 (with a GradScaler) "
        "on older ones, off on CPU and MPS",
    )
    s.add_argument("--no-amp", dest="amp", action="store_const", const="off", **d("auto"), help="the same as --amp off")
    s.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        **d(None),
        help="NHWC memory format (default: on for CUDA with bf16/fp16, else off)",
    )
    s.add_argument(
        "--compile",
        action="store_true",
        **d(False),
        help="torch.compile the whole training step: kernel generation, forward, loss, penalty, optimizer",
    )
    s.add_argument(
        "--sync-bn",
        action="store_true",
        **d(False),
        help="under torchrun: BatchNorm statistics over the global batch (SyncBatchNorm, CUDA only)",
    )
    s.add_argument("--eval-batch-size", type=positive_int, **d(1000), help="images per evaluation batch")
    s.add_argument("--progress", action=argparse.BooleanOptionalAction, **d(True), help="tqdm progress bar")


def add_output_arguments(o: argparse._ArgumentGroup, d: Callable[[object], dict], defaults: FlagDefaults) -> None:
    """The run's name, its folders, and resuming."""
    o.add_argument(
        "--run-name",
        type=run_name,
        **d(None),
        help=f"default: the model, then each flag that changes the result and is not at its default, then "
        f"the seed if not 0, e.g. {defaults.run_name_example}",
    )
    o.add_argument(
        "--checkpoint-dir", **d("checkpoints"), help="last.pt, best.pt and metrics.jsonl go to CHECKPOINT_DIR/RUN_NAME"
    )
    o.add_argument("--log-dir", **d("runs"), help="TensorBoard logs go to LOG_DIR/RUN_NAME")
    o.add_argument(
        "-r",
        "--resume",
        nargs="?",
        const="",
        **d(None),
        metavar="PATH",
        help="resume PATH, or this run's last.pt (none yet: start the run)",
    )


def build_parser(experiment: Experiment, suppress_defaults: bool = False) -> argparse.ArgumentParser:
    """The command line: the experiment's own flags plus the shared ones. With
    suppress_defaults, only flags given explicitly appear."""
    p = ArgumentParser(
        prog=experiment.script,
        description=experiment.description,
        formatter_class=HelpFormatter,
        argument_default=argparse.SUPPRESS if suppress_defaults else None,
    )
    d = (lambda v: {}) if suppress_defaults else (lambda v: {"default": v})
    groups = {name: p.add_argument_group(name) for name in ("model", "training", "system", "output")}
    experiment.add_arguments(groups, d)
    add_shared_arguments(groups, d, experiment.defaults)
    return p


def parse_args(experiment: Experiment[C], argv: list[str] | None = None) -> tuple[C, set[str]]:
    """ARGV as EXPERIMENT's configuration, and the names of the flags it gives."""
    given = vars(build_parser(experiment, suppress_defaults=True).parse_args(argv))
    config = default_config(experiment, given)
    if config.run_name is None:
        config.run_name = configuration_name(experiment, config)
    return config, set(given)


def parser_defaults(experiment: Experiment) -> dict:
    """Every flag of EXPERIMENT at its parser's default, in command-line order."""
    return vars(build_parser(experiment).parse_args([]))


def config_of(experiment: Experiment[C], saved: dict) -> C:
    """A SAVED configuration (a checkpoint's, an archived run's) as EXPERIMENT's config object;
    the flags it leaves out (an archive's paths) at their defaults."""
    values = {**parser_defaults(experiment), **saved}
    values.pop("experiment", None)
    return experiment.config_type(**values)


def check_complete(experiment: Experiment, config: dict, path: Path) -> None:
    """Refuse, in one line, the checkpoint at PATH when its CONFIG lacks a flag of EXPERIMENT or has a foreign one."""
    names = set(parser_defaults(experiment))
    missing, foreign = sorted(names - set(config)), sorted(set(config) - names - {"experiment"})
    if missing or foreign:
        flags = ", ".join("--" + k.replace("_", "-") for k in missing or foreign)
        raise UserError(
            f"{path} {'is incomplete: its configuration lacks' if missing else 'has flags this code lacks:'} {flags}"
        )


def acting_value(experiment: Experiment, config: RunConfig, flag: str):
    """CONFIG's value of FLAG as the run uses it: an --optimizer or --lr left to the schedule
    (None) is the schedule's own (so ``--lr 0.002`` on a hyper run is its default)."""
    value = getattr(config, flag)
    if value is None and flag in ("optimizer", "lr"):
        return getattr(experiment.schedule(config, 1), flag)
    return value


def default_config(experiment: Experiment[C], given: dict) -> C:
    """EXPERIMENT's flags at their defaults, except those in GIVEN (and the defaults that depend on them)."""
    config = config_of(experiment, given)
    if experiment.resolve_defaults is not None:
        experiment.resolve_defaults(config, set(given))
    return config


def flag_text(flag: str, value: object) -> str:
    """FLAG=VALUE as a name part: epochs-10, precise-bn-0, no-download."""
    name = flag.replace("_", "-")
    if isinstance(value, bool):
        return name if value else f"no-{name}"
    return f"{name}-{value}"


def configuration_name(experiment: Experiment[C], config: C, seed: bool = True) -> str:
    """A run's default name, which says every setting that changes its result: the model's name
    (hyper-40-1, mnist-plain-notebook), then FLAG-VALUE for each other such flag that is not at
    its default (hyper-40-1-epochs-10-precise-bn-0), then seedK for a seed other than 0 (with SEED)."""
    defaults = default_config(experiment, {k: getattr(config, k) for k in experiment.named_flags})
    parts = [experiment.run_name(config)]
    parts += [
        flag_text(k, getattr(config, k))
        for k in result_flags(experiment.config_type)
        if k not in experiment.named_flags
        and k != "seed"
        and acting_value(experiment, config, k) != acting_value(experiment, defaults, k)
    ]
    if seed and config.seed:
        parts.append(f"seed{config.seed}")
    return "-".join(parts)
