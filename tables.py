"""The Markdown report: the paper's Table 2 (CIFAR-10) and Table 7 (MNIST), each beside our
runs, with our parameter counts computed from the live models, and our runs over seeds."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mnist
import provenance
import train
from cli import format_time
from experiment import all_experiments, config_of
from primary_net import PAPER_TABLE2, PrimaryNetwork, model_name, num_parameters
from run_records import Run, as_run_sees_it, departures, setting
from seed_stats import gap_interval, mean_interval, mean_sd, reruns, seed_group, seed_groups

CIFAR_Z_DIM, CIFAR_SHORTCUT = 64, "pad"  # the configuration behind the paper's Table 2 (N_z = 64)
RUN_COLUMNS = [
    "run",
    "test error",
    "val error",
    "best epoch",
    "epochs",
    "steps x batch",
    "stopped",
    "device",
    "wall time",
    "where it ran",
]
SEED_COLUMNS = [
    "configuration",
    "epochs",
    "paper test error",
    "n",
    "seeds",
    "test error",
    "val error",
    "test error range",
    "95% interval of the mean test error",
]
GAP_COLUMNS = [
    "hyper configuration",
    "plain configuration",
    "n (hyper, plain)",
    "paper gap",
    "our gap",
    "standard error",
    "95% interval of our gap",
]
LEFT_COLUMNS = {
    "model",
    "configuration",
    "run",
    "epochs",
    "stopped",
    "device",
    "seeds",
    "where it ran",
    "hyper configuration",
    "plain configuration",
    "n (hyper, plain)",
}  # words; the other columns are numbers


def percent(value: float) -> str:
    return f"{value:.2f}%"


def planned_epochs(run: Run) -> int:
    """The run's length in epochs: --epochs, or the paper's step count at the run's steps per epoch."""
    steps_per_epoch = max(1, run.step // max(1, run.epoch))
    experiment = all_experiments()[run.experiment]
    return experiment.schedule(config_of(experiment, run.config), steps_per_epoch).epochs


def stop_status(run: Run) -> str:
    """finished | early stop (patience N) | unfinished (still running, or stopped to resume later)."""
    patience = run.config.get("patience")
    if run.epoch >= planned_epochs(run):
        return "finished"
    if patience and run.epoch - run.best["epoch"] >= patience:
        return f"early stop (patience {patience})"
    return "unfinished"


def run_cells(run: Run | None) -> list[str]:
    """One run's result and budget, or "no run"."""
    if run is None:
        return ["no run"] + [""] * (len(RUN_COLUMNS) - 1)
    schedule = " (paper schedule)" if run.config["epochs"] is None else ""
    return [
        f"`{run.name}`",
        percent(run.best["test_error"]),
        percent(run.best["val_error"]),
        str(run.best["epoch"]),
        f"{run.epoch} of {planned_epochs(run):,}{schedule}",
        f"{run.step:,} x {run.config['batch_size']}",
        stop_status(run),
        run.device,
        format_time(run.elapsed_seconds),
        provenance.describe(run.provenance),
    ]


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Markdown lines; numbers right-aligned, words (LEFT_COLUMNS) left-aligned."""
    align = "|" + "".join("---|" if column in LEFT_COLUMNS else "---:|" for column in header)
    return ["| " + " | ".join(header) + " |", align] + ["| " + " | ".join(row) + " |" for row in rows]


def sources(runs: list[Run], roots: list[Path]) -> str:
    """The line under a table: which run folders its rows came from, and on what devices."""
    if not runs:
        return f"No matching runs in {', '.join(f'`{root}`' for root in roots)}."
    folders = ", ".join(f"`{run.directory}`" for run in runs)
    return f"Rows from {folders}; trained on {', '.join(dict.fromkeys(run.device for run in runs))}."


@dataclass(frozen=True)
class PaperTable:
    """How one experiment's runs line up with one table of the paper."""

    experiment: str  # runs of this experiment go in the table
    title: str
    paper: dict  # the paper's table: row key -> its numbers
    columns: list[str]  # the leading columns: the model, the paper's numbers, our counts
    cells: Callable[[Any, Any], list[str]]  # row key, paper numbers -> the leading cells
    key: Callable[[Run], object]  # a run -> its row key, or None when it does not match the paper's setup
    describe: Callable[[Run], str]  # a run that matches no row -> its configuration in words
    takes: Callable[[Run], bool] = lambda run: True  # which of the experiment's runs this section shows


def seed_rows(table: PaperTable, finished: list[Run]) -> list[list[str]]:
    """One row per configuration with several of the FINISHED runs: n, their seeds, mean ± sd of the
    test and validation errors (at each run's best validation epoch), the range, and the
    95% t-interval of the mean test error (the runs taken as independent draws)."""
    rows = []
    for group in (g for g in seed_groups(finished) if len(g) > 1):
        key = table.key(group[0])
        paper = percent(table.paper[key][0]) if key in table.paper else "no row"
        tests, vals = [r.best["test_error"] for r in group], [r.best["val_error"] for r in group]
        epochs = group[0].config["epochs"]
        rows.append(
            [
                table.describe(group[0]),
                "paper schedule" if epochs is None else f"{epochs}",
                paper,
                str(len(group)),
                ", ".join(str(seed) for seed in sorted(r.config["seed"] for r in group)),
                mean_sd(tests),
                mean_sd(vals),
                f"{percent(min(tests))} - {percent(max(tests))}",
                " - ".join(map(percent, mean_interval(tests))),
            ]
        )
    return rows


def gap_rows(table: PaperTable, finished: list[Run]) -> list[list[str]]:
    """Hyper minus plain test error of FINISHED runs, for each hyper configuration with several seeds whose
    plain twin (every setting the same but the model, and the hyper-only --init and
    --z-dim; --optimizer and --lr as given, so left to each model's schedule when not given
    or given at the schedule's own value) has several too: the paper's gap, ours with its
    standard error and 95% interval."""
    groups = [g for g in seed_groups(finished) if len(g) > 1]

    def twin(group: list[Run]) -> str:
        first = group[0]  # its seeds act alike, though one may give a schedule's value that another leaves to it
        given = [
            None if setting(first, k) == as_run_sees_it(first, k, None) else first.config[k]
            for k in ("optimizer", "lr")
        ]
        return seed_group(group[0], ignoring=("plain", "init", "z_dim", "optimizer", "lr")) + json.dumps(given)

    plains = {twin(g): g for g in groups if not g[0].hyper}
    rows = []
    for hyper in (g for g in groups if g[0].hyper and twin(g) in plains):
        plain = plains[twin(hyper)]
        keys = table.key(hyper[0]), table.key(plain[0])
        paper = (
            f"{table.paper[keys[0]][0] - table.paper[keys[1]][0]:+.2f}"
            if all(k in table.paper for k in keys)
            else "no row"
        )
        gap, se, half = gap_interval([r.best["test_error"] for r in hyper], [r.best["test_error"] for r in plain])
        rows.append(
            [
                table.describe(hyper[0]),
                table.describe(plain[0]),
                f"{len(hyper)}, {len(plain)}",
                paper,
                f"{gap:+.2f}",
                f"{se:.2f}",
                f"{gap - half:+.2f} - {gap + half:+.2f}",
            ]
        )
    return rows


def table_section(table: PaperTable, runs: list[Run], roots: list[Path]) -> list[str]:
    """The paper's table with one line per matching run ("no run" where none matches), the
    line saying where those runs came from, then a table of the experiment's other runs
    (for a section without a paper table: its runs, or nothing when it has none)."""
    runs = [run for run in runs if run.experiment == table.experiment and table.takes(run)]
    if not runs and not table.paper:
        return []
    rows, matched = [], []
    for key, numbers in table.paper.items():
        matching = [run for run in runs if table.key(run) == key]
        shown: list[Run | None] = [*matching] or [None]  # "no run" when none matches
        rows += [table.cells(key, numbers) + run_cells(run) for run in shown]
        matched += matching
    others = [run for run in runs if run not in matched]
    lines = [f"## {table.title}"]
    if table.paper:
        lines += ["", *markdown_table([*table.columns, *RUN_COLUMNS], rows), "", sources(matched, roots)]
    if others:
        rows = [[table.describe(run), f"{run.num_parameters:,}", *run_cells(run)] for run in others]
        lines += ["", "Other runs (no row in the paper's table):"] if table.paper else []
        lines += ["", *markdown_table(["configuration", "our params", *RUN_COLUMNS], rows), "", sources(others, roots)]
    return lines + seed_lines(table, [run for run in runs if stop_status(run) != "unfinished"])


def seed_lines(table: PaperTable, finished: list[Run]) -> list[str]:
    """The section's statistics over the seeds of its FINISHED runs (nothing with no configuration run twice)."""
    seeds = seed_rows(table, finished)
    if not seeds:
        return []
    lines = [
        "",
        "Over seeds: each configuration with several finished runs (mean ± sample standard deviation, n runs):",
        "",
        *markdown_table(SEED_COLUMNS, seeds),
    ]
    gaps = gap_rows(table, finished)
    if gaps:
        lines += [
            "",
            "Hyper - plain over seeds (test error, points): the difference of the means, its standard "
            "error, and its 95% Welch t-interval:",
            "",
            *markdown_table(GAP_COLUMNS, gaps),
        ]
    again = reruns(finished)
    if again:
        lines += [
            "",
            "Not counted over seeds (a seed of the same configuration counted already): "
            + ", ".join(f"`{run.name}` (seed {run.config['seed']})" for run in again)
            + ".",
        ]
    return lines


def is_wrn(run: Run) -> bool:
    """Whether RUN trained the paper's Wide-ResNet (not a torchvision --arch)."""
    return run.config["arch"] == "wrn"


def cifar_key(run: Run) -> tuple[int, int, bool] | None:
    c = run.config
    if not is_wrn(run):
        return None
    default_init = not run.hyper or not departures(run)  # a plain net has no generated kernels to initialise
    paper_setup = (c["z_dim"], c["shortcut"]) == (CIFAR_Z_DIM, CIFAR_SHORTCUT) and default_init
    return (c["depth"], c["width"], run.hyper) if paper_setup else None


def cifar_cells(key: tuple[int, int, bool], paper: tuple[float, float]) -> list[str]:
    depth, width, hyper = key
    ours = num_parameters(PrimaryNetwork(depth, width, hyper=hyper))
    return [model_name(depth, width, hyper), percent(paper[0]), f"{paper[1]:.3f}M", f"{ours:,}"]


def cifar_describe(run: Run) -> str:
    c = run.config
    words = f"{model_name(c['depth'], c['width'], run.hyper)}, z_dim {c['z_dim']}, shortcut {c['shortcut']}"
    return words + (f", init {setting(run, 'init')}" if run.hyper and departures(run) else "")


def torchvision_describe(run: Run) -> str:
    """E.g. "hyper-resnet18, z_dim 64" or "resnet18"."""
    return f"hyper-{run.config['arch']}, z_dim {run.config['z_dim']}" if run.hyper else run.config["arch"]


def mnist_key(run: Run) -> bool | None:
    return run.hyper if run.config["z_dim"] == mnist.Z_DIM and not departures(run) else None


def mnist_cells(hyper: bool, paper: tuple[float, int]) -> list[str]:
    net = mnist.MnistNet(hyper)
    return [
        "hyper" if hyper else "normal",
        percent(paper[0]),
        f"{paper[1]:,}",
        f"{net.layer2_parameters():,}",
        f"{num_parameters(net):,}",
    ]


def mnist_describe(run: Run) -> str:
    """E.g. "hyper, z_dim 4", and the protocol and init where they are not the paper's."""
    words = f"{'hyper' if run.hyper else 'normal'}, z_dim {run.config['z_dim']}"
    if departures(run):
        words += f", {setting(run, 'protocol')} protocol, init {setting(run, 'init')}"
    return words


def paper_tables() -> list[PaperTable]:
    """Paper Table 2 (CIFAR-10) and Table 7 (MNIST), and how our runs match their rows."""
    return [
        PaperTable(
            train.CIFAR10.name,
            "CIFAR-10: paper Table 2 against our runs",
            PAPER_TABLE2,
            ["model", "paper test error", "paper params", "our params"],
            cifar_cells,
            cifar_key,
            cifar_describe,
            is_wrn,
        ),
        PaperTable(
            train.CIFAR10.name,
            "CIFAR-10: torchvision models, plain and hypernetized (no paper row)",
            {},
            [],
            cifar_cells,
            cifar_key,
            torchvision_describe,
            lambda run: not is_wrn(run),
        ),
        PaperTable(
            mnist.MNIST.name,
            "MNIST: paper Table 7 against our runs",
            mnist.PAPER_TABLE7,
            ["model", "paper test error", "paper layer-2 params", "our layer-2 params", "our params"],
            mnist_cells,
            mnist_key,
            mnist_describe,
        ),
    ]


def paper_error(run: Run) -> float | None:
    """The paper's test error for RUN's model and setup, or None when the paper has no such row."""
    for table in paper_tables():
        if table.experiment == run.experiment and table.takes(run) and table.key(run) in table.paper:
            return table.paper[table.key(run)][0]
    return None


def report(runs: list[Run], roots: list[Path], command: str) -> str:
    """The whole Markdown report: each paper table beside our runs."""
    lines = [
        f"Generated by `{command}`. Test error: at the epoch with the best validation error "
        "(early stopping), as in the paper. Our parameter counts are computed from the models."
    ]
    for table in paper_tables():
        section = table_section(table, runs, roots)
        lines += ["", *section] if section else []
    return "\n".join(lines) + "\n"
