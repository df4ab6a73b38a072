"""Train a HyperResNet (or the plain WRN baseline) on CIFAR-10 with the paper's protocol.

    python train.py                         # Hyper-WRN-40-1, paper schedule (App. A.3.2)
    python train.py --plain --width 2       # the WRN-40-2 baseline
    python train.py --epochs 10             # the same schedule squeezed into 10 epochs
    python train.py -r                      # resume the run named by the flags, exactly
    python train.py --arch resnet18         # hypernetize(torchvision's ResNet-18), same loop
    python train.py --arch resnet18 --plain # torchvision's ResNet-18 itself

This file is the CIFAR-10 experiment: its flags, model, schedule and paper row. The
data, the loop, checkpoints and resume are shared with mnist.py (data.py, engine.py,
runner.py, checkpointing.py).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import torch
import torchvision

from cli import UserError, positive_int
from config import SETTING, RunConfig, flag
from data import augment_cifar, load_cifar10
from distributed import exit_process
from experiment import SCALE_INITS, Experiment, FlagDefaults, Schedule, kernel_init, parser_defaults
from hypernetwork_modules import ScaleIn, hypernetize
from primary_net import PAPER_TABLE2, PrimaryNetwork, blocks_per_stage, model_name
from runner import main as run_main

INITS = SCALE_INITS  # --init: where a HyperResNet's initial kernel scale lives (the first: default)


class PaperSchedule(NamedTuple):
    """One of the paper's schedules (App. A.3.2, batch 128): boundaries in steps, lr multipliers of the base lr."""

    optimizer: str
    lr: float
    total: int
    boundaries: list[int]
    factors: list[float]


SCHEDULES = {
    "hyper": PaperSchedule("adam", 0.002, 672_000, [168_000, 336_000, 504_000], [1, 0.5, 0.1, 0.025]),
    "plain": PaperSchedule("sgd", 0.1, 140_000, [28_000, 56_000, 84_000, 112_000], [1, 0.2, 0.04, 0.008, 0.0016]),
}


def wrn_depth(text: str) -> int:
    """argparse type: a WRN depth 6N+4."""
    depth = int(text)
    try:
        blocks_per_stage(depth)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return depth


def arch_name(text: str) -> str:
    """argparse type: "wrn" (the paper's Wide-ResNet) or a torchvision classification model's name."""
    if text != "wrn" and text not in torchvision.models.list_models(module=torchvision.models):
        raise argparse.ArgumentTypeError(
            f"must be wrn or a torchvision classification model (resnet18, mobilenet_v2, "
            f"...: torchvision.models.list_models()), got {text!r}"
        )
    return text


@dataclasses.dataclass
class CifarFlags:
    """CIFAR-10's own flags, in the parser's order."""

    arch: str = flag(SETTING)
    depth: int = flag(SETTING)
    width: int = flag(SETTING)
    plain: bool = flag(SETTING)
    z_dim: int = flag(SETTING)
    shortcut: str = flag(SETTING)
    init: str = flag(SETTING)
    schedule: str = flag(SETTING)


@dataclasses.dataclass
class CifarConfig(RunConfig, CifarFlags):
    """A CIFAR-10 run's flags: its own first (a dataclass lists the last base's fields first)."""


def check_arch_flags(config: CifarConfig, explicit: set[str]) -> None:
    """Refuse WRN flags on a torchvision model, and an init that `hypernetize` does not offer."""
    if config.arch == "wrn":
        return
    defaults = parser_defaults(CIFAR10)
    for name in ("depth", "width", "shortcut"):  # the flags only --arch wrn reads
        if getattr(config, name) != defaults[name]:
            raise UserError(f"--{name} is a Wide-ResNet flag: it does nothing for --arch {config.arch}")
    if config.init != INITS[0]:
        raise UserError(f"--init {config.init} is for --arch wrn: hypernetize keeps the initial scale in the z's")


def cifar_arguments(groups: dict[str, argparse._ArgumentGroup], d: Callable[[object], dict]) -> None:
    """The model flags, and the schedule choice."""
    m = groups["model"]
    m.add_argument(
        "--arch",
        type=arch_name,
        **d("wrn"),
        metavar="NAME",
        help="wrn: the paper's Wide-ResNet; or any torchvision classification model (resnet18, ...), "
        "hypernetized unless --plain",
    )
    m.add_argument("--depth", type=wrn_depth, **d(40), help="WRN depth, 6N+4")
    m.add_argument("--width", type=positive_int, **d(1), help="widening factor k")
    m.add_argument(
        "--plain", action="store_true", **d(False), help="train the plain model (stored weights), not the hypernetwork"
    )
    m.add_argument("--z-dim", type=positive_int, **d(64), help="size of each z-embedding")
    m.add_argument("--shortcut", choices=["pad", "conv"], **d("pad"), help="shortcut where a block changes shape")
    m.add_argument(
        "--init",
        choices=INITS,
        **d(INITS[0]),
        help="hyper: where the kernels' initial Kaiming scale lives: in the z's (std 0.03-0.12), or in the "
        "hypernetwork's output weights with z's of unit scale (hyperfan-in style)",
    )
    groups["training"].add_argument(
        "--schedule", choices=["paper"], **d("paper"), help="lr schedule (App. A.3.2: Table 9 hyper, Table 8 plain)"
    )


def cifar_run_name(config: CifarConfig) -> str:
    """hyper-40-1, wrn-40-2, ..., and the init where it is not the default (hyper-40-1-init-scale-in-hypernet);
    hyper-resnet18 or resnet18 for a torchvision model."""
    hyper = not config.plain
    if config.arch != "wrn":
        return f"hyper-{config.arch}" if hyper else config.arch
    name = model_name(config.depth, config.width, hyper)
    return name if kernel_init(config.init, hyper) == kernel_init(INITS[0], hyper) else f"{name}-init-{config.init}"


def build_model(config: CifarConfig) -> torch.nn.Module:
    """The network a run's configuration describes."""
    if config.arch != "wrn":
        model = torchvision.models.get_model(config.arch, num_classes=10)
        return model if config.plain else hypernetize(model, z_dim=config.z_dim, inplace=True)
    scale_in: ScaleIn = "hypernet" if config.init == "scale-in-hypernet" else "z"
    return PrimaryNetwork(
        config.depth,
        config.width,
        hyper=not config.plain,
        z_dim=config.z_dim,
        shortcut=config.shortcut,
        scale_in=scale_in,
    )


def schedule_for(config: CifarConfig, steps_per_epoch: int) -> tuple[PaperSchedule, int, int]:
    """(paper schedule entry, total steps, epochs), rescaled to --epochs when given."""
    sched = SCHEDULES["plain" if config.plain else "hyper"]
    epochs = config.epochs or max(1, round(sched.total / steps_per_epoch))
    return sched, epochs * steps_per_epoch, epochs


def lr_multiplier(step: int, sched: PaperSchedule, total: int) -> float:
    """Piecewise-constant multiplier at STEP, the paper's boundaries scaled to TOTAL steps."""
    return sched.factors[sum(step * sched.total >= b * total for b in sched.boundaries)]  # exact in integers


def cifar_schedule(config: CifarConfig, steps_per_epoch: int) -> Schedule:
    """The paper's schedule for this model (Adam for hyper, Nesterov SGD for plain), rescaled to --epochs."""
    sched, total, epochs = schedule_for(config, steps_per_epoch)
    return Schedule(sched.optimizer, sched.lr, epochs, total, lambda step: lr_multiplier(step, sched, total))


def cifar_paper_result(config: CifarConfig) -> str:
    """The paper's Table 2 figure for this configuration."""
    if config.arch != "wrn":
        return f"no paper row: {config.arch} is torchvision's"
    paper = PAPER_TABLE2.get((config.depth, config.width, not config.plain))
    return f"paper: {paper[0]:.2f}% with {paper[1]:.3f}M" if paper else "no paper row for this configuration"


CIFAR10 = Experiment(
    name="cifar10",
    script="train.py",
    description="Train a HyperResNet or a plain Wide-ResNet on CIFAR-10 (Ha et al. 2017), or any torchvision "
    "classification model, hypernetized or not.",
    config_type=CifarConfig,
    add_arguments=cifar_arguments,
    defaults=FlagDefaults(
        epochs=None,
        epochs_help="rescale the schedule to this many epochs (default: the paper's step count)",
        batch_size=128,
        weight_decay=5e-4,
        patience=None,
        optimizer_help="default: adam for hyper, Nesterov sgd for plain",
        lr_help="base lr (default: 0.002 hyper, 0.1 plain)",
        data_help="folder holding cifar-10-batches-py/",
        run_name_example="hyper-40-1-epochs-10-seed1",
        precise_bn=2000,
    ),
    load_data=load_cifar10,
    augment=lambda config: augment_cifar,
    build_model=build_model,
    schedule=cifar_schedule,
    run_name=cifar_run_name,
    named_flags=("arch", "depth", "width", "plain", "init"),
    paper_result=cifar_paper_result,
    resolve_defaults=check_arch_flags,
)


def main(argv: list[str] | None = None) -> int:
    """python train.py: 0 on success, 1 with one line on stderr for a user error."""
    return run_main(CIFAR10, argv)


if __name__ == "__main__":
    exit_process(main())
