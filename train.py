"""Train a HyperResNet (or the plain WRN baseline) on CIFAR-10 with the paper's protocol.

    python train.py                         # Hyper-WRN-40-1, paper schedule (App. A.3.2)
    python train.py --plain --width 2       # the WRN-40-2 baseline
    python train.py --epochs 10             # the same schedule squeezed into 10 epochs
    python train.py -r                      # resume the run named by the flags, exactly

This file is the CIFAR-10 experiment: its flags, model, schedule and paper row. The
data, the loop, checkpoints and resume are shared with mnist.py (data.py, engine.py,
runner.py, checkpointing.py).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from cli import positive_int
from data import augment_cifar, load_cifar10
from experiment import SCALE_INITS, Experiment, FlagDefaults, Schedule, kernel_init
from primary_net import PAPER_TABLE2, PrimaryNetwork, blocks_per_stage, model_name
from distributed import exit_process
from runner import main as run_main

INITS = SCALE_INITS  # --init: where a HyperResNet's initial kernel scale lives (the first: default)
# Paper App. A.3.2, batch 128. Boundaries in steps; lr multipliers of the base lr.
SCHEDULES = {
    "hyper": dict(optimizer="adam", lr=0.002, total=672_000, boundaries=[168_000, 336_000, 504_000], factors=[1, 0.5, 0.1, 0.025]),
    "plain": dict(optimizer="sgd", lr=0.1, total=140_000, boundaries=[28_000, 56_000, 84_000, 112_000], factors=[1, 0.2, 0.04, 0.008, 0.0016]),
}


def wrn_depth(text: str) -> int:
    """argparse type: a WRN depth 6N+4."""
    depth = int(text)
    try:
        blocks_per_stage(depth)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return depth


def cifar_arguments(groups: dict[str, argparse._ArgumentGroup], d: Callable[[object], dict]) -> None:
    """The model flags, and the schedule choice."""
    m = groups["model"]
    m.add_argument("--depth", type=wrn_depth, **d(40), help="WRN depth, 6N+4")
    m.add_argument("--width", type=positive_int, **d(1), help="widening factor k")
    m.add_argument("--plain", action="store_true", **d(False), help="train the plain WRN baseline, not the hypernetwork")
    m.add_argument("--z-dim", type=positive_int, **d(64), help="size of each z-embedding")
    m.add_argument("--shortcut", choices=["pad", "conv"], **d("pad"), help="shortcut where a block changes shape")
    m.add_argument("--init", choices=INITS, **d(INITS[0]),
                   help="hyper: where the kernels' initial Kaiming scale lives: in the z's (std 0.03-0.12), or in the "
                        "hypernetwork's output weights with z's of unit scale (hyperfan-in style)")
    groups["training"].add_argument("--schedule", choices=["paper"], **d("paper"),
                                    help="lr schedule (App. A.3.2: Table 9 hyper, Table 8 plain)")


def cifar_run_name(args: argparse.Namespace) -> str:
    """hyper-40-1, wrn-40-2, ..., and the init where it is not the default (hyper-40-1-init-scale-in-hypernet)."""
    hyper = not args.plain
    name = model_name(args.depth, args.width, hyper)
    return name if kernel_init(args.init, hyper) == kernel_init(INITS[0], hyper) else f"{name}-init-{args.init}"


def build_model(config: dict) -> PrimaryNetwork:
    """The network a run's configuration (its arguments, as saved in checkpoints) describes."""
    scale_in = "hypernet" if config["init"] == "scale-in-hypernet" else "z"
    return PrimaryNetwork(config["depth"], config["width"], hyper=not config["plain"], z_dim=config["z_dim"],
                          shortcut=config["shortcut"], scale_in=scale_in)


def schedule_for(args: argparse.Namespace, steps_per_epoch: int) -> tuple[dict, int, int]:
    """(paper schedule entry, total steps, epochs), rescaled to --epochs when given."""
    sched = SCHEDULES["plain" if args.plain else "hyper"]
    epochs = args.epochs or max(1, round(sched["total"] / steps_per_epoch))
    return sched, epochs * steps_per_epoch, epochs


def lr_multiplier(step: int, sched: dict, total: int) -> float:
    """Piecewise-constant multiplier at STEP, the paper's boundaries scaled to TOTAL steps."""
    return sched["factors"][sum(step * sched["total"] >= b * total for b in sched["boundaries"])]  # exact in integers


def cifar_schedule(args: argparse.Namespace, steps_per_epoch: int) -> Schedule:
    """The paper's schedule for this model (Adam for hyper, Nesterov SGD for plain), rescaled to --epochs."""
    sched, total, epochs = schedule_for(args, steps_per_epoch)
    return Schedule(sched["optimizer"], sched["lr"], epochs, total, lambda step: lr_multiplier(step, sched, total))


def cifar_paper_result(args: argparse.Namespace) -> str:
    """The paper's Table 2 figure for this configuration."""
    paper = PAPER_TABLE2.get((args.depth, args.width, not args.plain))
    return f"paper: {paper[0]:.2f}% with {paper[1]:.3f}M" if paper else "no paper row for this configuration"


CIFAR10 = Experiment(
    name="cifar10",
    script="train.py",
    description="Train a HyperResNet or a plain Wide-ResNet on CIFAR-10 (Ha et al. 2017).",
    add_arguments=cifar_arguments,
    defaults=FlagDefaults(
        epochs=None, epochs_help="rescale the schedule to this many epochs (default: the paper's step count)",
        batch_size=128, weight_decay=5e-4, patience=None, optimizer_help="default: adam for hyper, Nesterov sgd for plain",
        lr_help="base lr (default: 0.002 hyper, 0.1 plain)", data_help="folder holding cifar-10-batches-py/",
        run_name_example="hyper-40-1-epochs-10-seed1", precise_bn=2000),
    load_data=load_cifar10,
    augment=lambda config: augment_cifar,
    build_model=build_model,
    schedule=cifar_schedule,
    run_name=cifar_run_name,
    named_flags=("depth", "width", "plain", "init"),
    paper_result=cifar_paper_result,
)


def main(argv: list[str] | None = None) -> int:
    """python train.py: 0 on success, 1 with one line on stderr for a user error."""
    return run_main(CIFAR10, argv)


if __name__ == "__main__":
    exit_process(main())
