"""Figures drawn by code, every number taken from the live models or the runs' files.

    python diagrams.py                         # runs in checkpoints/ and results/runs/, PNGs to diagrams/
    python diagrams.py --runs results/runs     # from the archived runs alone (compare.py --archive)

    architecture.png   z's -> one shared hypernetwork -> 16x16x3x3 tiles -> each stage's
                       kernels, with the tile grids and parameter counts of Hyper-40-1 and 40-2
    curves_cifar.png   training loss and validation/test error per epoch, hyper and plain runs
    curves_torchvision.png  the same for torchvision models (train.py --arch)
    curves_mnist.png   the same for the MNIST runs with the paper's protocol and init
    curves_mnist_notebook.png, curves_mnist_init.png
                       MNIST with the author's notebook protocol; hyper with each --init
    bn_lag.png         per run with --precise-bn: validation error with training's running
                       BatchNorm statistics against precise ones, beside the training error
    kernels_RUN.png    one generated layer at initialisation and after training, for each
                       hyper Wide-ResNet and MNIST configuration (its lowest seed)

Runs are found and read by run_records.py (a checkpoint folder or an archived one, alike).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle
from matplotlib.ticker import MaxNLocator

import run_records
import seed_stats
import tables
from checkpointing import writable_dir, write_error
from cli import ArgumentParser, HelpFormatter, UserError, first_line, run_cli
from experiment import all_experiments, config_of
from hypernetwork_modules import HyperNetwork, KernelBank
from mnist import MnistNet
from primary_net import PrimaryNetwork, model_name, num_parameters

DEPTH, WIDTHS = 40, (1, 2)  # the paper's two HyperResNets
STAGES = 3  # a WRN's three stages hold equally many generated kernels
COLOURS = {
    "z": "#cfe2f3",
    "hypernet": "#f9cb9c",
    "tile": "#d9ead3",
    "tile_edge": "#6a8f5f",
    "stage": "#f3f3f3",
    "rest": "#d9d9d9",
    "edge": "#444444",
}
RUN_COLOURS = {
    True: ["tab:blue", "tab:green", "tab:purple", "tab:cyan"],  # hyper runs
    False: ["tab:orange", "tab:red", "tab:brown", "tab:olive"],
}  # plain runs
MARKERS = ["o", "s", "^", "D", "v"]
# One figure of learning curves per (file, title, which runs, the flag it compares or None).
# A figure that compares a flag is drawn only when its runs differ in that flag.
CURVES = [
    ("curves_cifar.png", "CIFAR-10", lambda run: run.experiment == "cifar10" and tables.is_wrn(run), None),
    (
        "curves_torchvision.png",
        "CIFAR-10, torchvision models",
        lambda run: run.experiment == "cifar10" and not tables.is_wrn(run),
        None,
    ),
    (
        "curves_mnist.png",
        "MNIST, the paper's protocol",
        lambda run: run.experiment == "mnist" and not run_records.departures(run),
        None,
    ),
    (
        "curves_mnist_notebook.png",
        "MNIST, the author's notebook protocol",
        lambda run: run.experiment == "mnist" and run_records.setting(run, "protocol") == "notebook",
        None,
    ),
    (
        "curves_mnist_init.png",
        "MNIST hyper, the paper's protocol",
        lambda run: run.experiment == "mnist" and run.hyper and set(run_records.departures(run)) <= {"init"},
        "init",
    ),
]
SHOWN_LAYER = {"cifar10": "stage 1, block 1, first conv", "mnist": "layer 2"}  # the first generated kernel


# ----------------------------------------------------------------------------- architecture


def rounded(ax: Axes, x: float, y: float, w: float, h: float, colour: str) -> None:
    ax.add_patch(
        FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0,rounding_size=0.8", fc=colour, ec=COLOURS["edge"], lw=1.2)
    )


def box(ax: Axes, x: float, y: float, w: float, h: float, colour: str, title: str, lines: list[str]) -> None:
    """A rounded box with a bold title and centred lines of text."""
    rounded(ax, x, y, w, h, colour)
    ax.text(x + w / 2, y + h - 1.5, title, ha="center", va="top", fontsize=11, weight="bold")
    ax.text(x + w / 2, y + h - 4.3, "\n".join(lines), ha="center", va="top", fontsize=9.5, linespacing=1.6)


def arrow(ax: Axes, start: tuple[float, float], end: tuple[float, float]) -> None:
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=14, lw=1.3, color=COLOURS["edge"]))


def tile_name(hypernet: HyperNetwork) -> str:
    """The shape of the basic kernel HYPERNET makes, e.g. 16x16x3x3."""
    return f"{hypernet.out_size}x{hypernet.in_size}x{hypernet.f_size}x{hypernet.f_size}"


def draw_tile_grid(ax: Axes, x: float, top: float, rows: int, cols: int, side: float) -> None:
    """ROWS x COLS small squares, one per tile of a kernel, top-left corner at (X, TOP)."""
    for r in range(rows):
        for c in range(cols):
            ax.add_patch(
                Rectangle(
                    (x + c * side, top - (r + 1) * side),
                    side,
                    side,
                    fc=COLOURS["tile"],
                    ec=COLOURS["tile_edge"],
                    lw=0.6,
                )
            )


def draw_stage(
    ax: Axes, bank: KernelBank, stage: int, layers: range, y: float, side: float, source: tuple[float, float]
) -> None:
    """One stage's box, with an arrow from SOURCE: its counts, and each distinct kernel's
    grid of tiles (with how many kernels share it)."""
    x, w, h = 67, 32, 12.5
    arrow(ax, source, (x, y + h / 2))
    rounded(ax, x, y, w, h, COLOURS["stage"])
    channels = bank.shapes[layers[0]][0]
    zs = sum(bank.tiles_per_layer[i] for i in layers)
    ax.text(x + 1.2, y + h - 1.5, f"stage {stage + 1}", ha="left", va="top", fontsize=11, weight="bold")
    ax.text(
        x + 1.2,
        y + h - 4.3,
        f"{channels} channels\n{len(layers)} kernels\n{zs} z's",
        ha="left",
        va="top",
        fontsize=9.5,
        linespacing=1.6,
    )
    left: float = x + 12
    for ((rows, cols), shape), count in Counter((bank.grids[i], bank.shapes[i]) for i in layers).items():
        draw_tile_grid(ax, left, y + h - 1.2, rows, cols, side)
        ax.text(
            left,
            y + h - 1.9 - rows * side,
            f"{count} kernel{'s' if count > 1 else ''} {shape[0]}x{shape[1]}\n"
            f"{rows}x{cols} tile{'s' if rows * cols > 1 else ''} each",
            ha="left",
            va="top",
            fontsize=8,
            linespacing=1.3,
        )
        left += max(cols * side, 8) + 1.5


def draw_generation(ax: Axes, bank: KernelBank, n_z: int, n_hyper: int) -> None:
    """The z's, the hypernetwork and the tiles it makes, left to right."""
    hypernet = bank.hypernet
    z_lines = [f"{bank.num_tiles} x {hypernet.z_dim}", "one learned z per tile", f"{n_z:,} params"]
    box(ax, 1, 20, 17, 14, COLOURS["z"], "z-embeddings", z_lines)
    arrow(ax, (18, 27), (23, 27))
    hypernet_lines = ["shared by every tile", "one batched call", f"{n_hyper:,} params"]
    box(ax, 23, 20, 20, 14, COLOURS["hypernet"], "hypernetwork", hypernet_lines)
    arrow(ax, (43, 27), (48, 27))
    tile_lines = [f"each {tile_name(hypernet)}", "laid out in grids", "per kernel"]
    box(ax, 48, 20, 14, 14, COLOURS["tile"], f"{bank.num_tiles} tiles", tile_lines)


def draw_budget(ax: Axes, n_hyper: int, n_z: int, n_total: int) -> None:
    """Where the parameters are: a bar split in proportion, and its legend."""
    parts = [
        ("hypernetwork", n_hyper, COLOURS["hypernet"]),
        ("z's", n_z, COLOURS["z"]),
        ("rest: stem, BatchNorm, biases, classifier", n_total - n_hyper - n_z, COLOURS["rest"]),
    ]
    left = 1.0
    for _label, count, colour in parts:
        ax.add_patch(Rectangle((left, 11), 61 * count / n_total, 4, fc=colour, ec=COLOURS["edge"], lw=0.8))
        left += 61 * count / n_total
    ax.text(1, 16, "where the parameters are", ha="left", va="bottom", fontsize=9.5, style="italic")
    legend = "   ".join(f"{label} {count:,} ({100 * count / n_total:.0f}%)" for label, count, _ in parts)
    ax.text(1, 9.5, legend, ha="left", va="top", fontsize=9)


def draw_hyper_resnet(ax: Axes, model: PrimaryNetwork, side: float) -> None:
    """The path from z's to kernels of a hyper PrimaryNetwork, with its parameter budget."""
    depth, width, bank = model.depth, model.width, model.kernel_bank
    n_hyper, n_z, n_total = num_parameters(bank.hypernet), bank.z.numel(), num_parameters(model)
    n_plain = num_parameters(PrimaryNetwork(depth, width, hyper=False))
    ax.set(xlim=(0, 100), ylim=(0, 44), aspect="equal")
    ax.axis("off")
    title = f"{model_name(depth, width, True)}: {n_total:,} parameters make {len(bank.shapes)} kernels"
    ax.set_title(f"{title} (the plain {model_name(depth, width, False)} stores {n_plain:,})", loc="left", fontsize=13)
    draw_generation(ax, bank, n_z, n_hyper)
    per_stage = len(bank.shapes) // STAGES
    for stage in range(STAGES):
        layers = range(stage * per_stage, (stage + 1) * per_stage)
        draw_stage(ax, bank, stage, layers, 30.5 - 14 * stage, side, (62, 27))
    draw_budget(ax, n_hyper, n_z, n_total)


def draw_architecture() -> Figure:
    """Hyper-WRN-40-1 and 40-2, one above the other, tiles drawn at one scale."""
    models = [PrimaryNetwork(DEPTH, width, hyper=True) for width in WIDTHS]
    side = min(
        1.8, 8.0 / max(rows for m in models for rows, _ in m.kernel_bank.grids)
    )  # the largest grid fits a stage box
    fig = Figure(figsize=(15, 6.6 * len(WIDTHS) + 0.8), layout="constrained")
    hypernet = models[0].kernel_bank.hypernet
    fig.suptitle(
        f"HyperNetworks for Wide-ResNets: one shared hypernetwork makes every {hypernet.f_size}x{hypernet.f_size} "
        f"kernel from one z per {tile_name(hypernet)} tile",
        fontsize=15,
        weight="bold",
    )
    for ax, model in zip(fig.subplots(len(models), 1), models):
        draw_hyper_resnet(ax, model, side)
    return fig


# ----------------------------------------------------------------------------- learning curves


def draw_group(ax: Axes, key: str, group: list[run_records.Run], colour: str, style: str, label: str | None) -> None:
    """KEY per epoch: one run's curve, or several seeds' mean with their min-max band."""
    epochs = sorted({m["epoch"] for run in group for m in run.metrics})
    values = [[m[key] for run in group for m in run.metrics if m["epoch"] == e] for e in epochs]
    ax.plot(epochs, [float(np.mean(v)) for v in values], style, ms=3, color=colour, label=label)
    if len(group) > 1:
        ax.fill_between(epochs, [min(v) for v in values], [max(v) for v in values], color=colour, alpha=0.18, lw=0)


def paper_row_name(run: run_records.Run) -> str:
    """The model of the paper's row RUN is compared with: hyper-40-1, or MNIST's hyper / normal."""
    if run.experiment == "cifar10":
        return model_name(run.config["depth"], run.config["width"], run.hyper)
    return "hyper" if run.hyper else "normal"


def group_styles(groups: list[list[run_records.Run]]) -> list[tuple[str, str]]:
    """Each configuration's (colour, marker): hyper in blues, plain in oranges, and a marker
    of its own, so that each is told apart twice."""
    used: Counter[bool] = Counter()
    styles = []
    for n, group in enumerate(groups):
        palette = RUN_COLOURS[group[0].hyper]
        styles.append((palette[used[group[0].hyper] % len(palette)], MARKERS[n % len(MARKERS)]))
        used[group[0].hyper] += 1
    return styles


def group_label(group: list[run_records.Run], flag: str | None) -> str:
    """A configuration's legend entry: with FLAG its value of FLAG, else its first run's name."""
    if flag:  # the legend names the compared setting, not the runs
        seeds = f", {len(group)} runs (seeds): mean, min-max" if len(group) > 1 else ""
        return f"--{flag} {run_records.setting(group[0], flag)}{seeds}"
    more = len(group) - 1
    return f"{group[0].name} and {more} more run{'s' * (more > 1)} (seeds): mean, min-max" if more else group[0].name


def draw_paper_line(ax: Axes, error: float, model: str, colour: str, above: bool) -> None:
    """The paper's test ERROR for MODEL, a dotted line labelled ABOVE it or below."""
    ax.axhline(error, ls=":", lw=1.2, color=colour)
    ax.annotate(
        f"paper, {model}: {error:.2f}%",
        xy=(0.99, error),
        xycoords=("axes fraction", "data"),
        ha="right",
        va="bottom" if above else "top",
        fontsize=8,
        color=colour,
    )


def draw_configuration(
    loss_ax: Axes, error_ax: Axes, group: list[run_records.Run], style: tuple[str, str], label: str
) -> None:
    """One configuration's curves: training loss, validation and test error, a star at each run's result."""
    colour, marker = style
    draw_group(loss_ax, "train_loss", group, colour, f"-{marker}", label)
    draw_group(error_ax, "val_error", group, colour, "--", None)
    draw_group(error_ax, "test_error", group, colour, f"-{marker}", None)
    for run in group:
        error_ax.plot(run.best["epoch"], run.best["test_error"], "*", ms=13, color=colour, mec="black", mew=0.6)


def set_curve_axes(loss_ax: Axes, error_ax: Axes, runs: list[run_records.Run]) -> None:
    """Titles, labels and y ranges from 0; the error's range zoomed on the runs' results."""
    keys = ("train_loss", "val_error", "test_error")
    highest = {key: max(m[key] for run in runs for m in run.metrics) for key in keys}
    loss_ax.set(
        title="training loss (cross-entropy)", xlabel="epoch", ylabel="loss", ylim=(0, 1.1 * highest["train_loss"])
    )
    best = max(run.best["test_error"] for run in runs)  # the first epochs' errors may be 10x the results: zoom on these
    top = min(1.1 * max(highest["val_error"], highest["test_error"], 1), 4 * best)
    error_ax.set(title="error", xlabel="epoch", ylabel="error (%)", ylim=(0, top))


def error_legend(papers: bool) -> list[Line2D]:
    """The error panel's legend: the line styles (the paper's with PAPERS) and the star."""
    lines = [("--", "validation"), ("-", "test")] + ([(":", "paper (test)")] if papers else [])
    styles = [Line2D([], [], color="grey", ls=ls, label=label) for ls, label in lines]
    label = "test at the best validation epoch"
    return [*styles, Line2D([], [], color="grey", ls="", marker="*", ms=11, mec="black", mew=0.6, label=label)]


def draw_curves(runs: list[run_records.Run], title: str, flag: str | None = None) -> Figure:
    """Training loss | validation (dashed) and test (solid) error against epochs, a star at
    each run's reported result (its best validation epoch), the paper's test error dotted.
    Seeds of one configuration: their mean and min-max band. Hyper in blues, plain in oranges.
    With FLAG, the figure compares that setting and each legend entry starts with its value."""
    fig = Figure(figsize=(13, 4.8), layout="constrained")
    loss_ax, error_ax = fig.subplots(1, 2)
    papers: dict[float, str] = {}
    groups = seed_stats.seed_groups(runs)
    for group, style in zip(groups, group_styles(groups)):
        draw_configuration(loss_ax, error_ax, group, style, group_label(group, flag))
        paper = tables.paper_error(group[0])
        if paper is not None and paper not in papers:  # one line per paper row, named by its model
            papers[paper] = paper_row_name(group[0])
            draw_paper_line(error_ax, paper, papers[paper], style[0], above=group[0].hyper)  # hyper's is the higher
    set_curve_axes(loss_ax, error_ax, runs)
    loss_ax.legend(title="run", fontsize=9)
    error_ax.legend(handles=error_legend(bool(papers)), fontsize=9)
    last_epoch = max(m["epoch"] for run in runs for m in run.metrics)
    for ax in (loss_ax, error_ax):
        ax.set_xlim(0, last_epoch + 1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=13, weight="bold")
    return fig


def lowest_seeds(runs: list[run_records.Run]) -> list[run_records.Run]:
    """One run per configuration, its lowest seed: the run a per-configuration figure shows."""
    return [min(group, key=lambda r: r.config["seed"]) for group in seed_stats.seed_groups(runs)]


def bn_lag_runs(runs: list[run_records.Run]) -> list[run_records.Run]:
    """The runs that logged both validation errors (`--precise-bn`): one per configuration
    (its lowest seed), hyper first."""
    logged = [run for run in lowest_seeds(runs) if run.metrics and all("val_error_running" in m for m in run.metrics)]
    return sorted(logged, key=lambda r: (not r.hyper, r.name))


def draw_bn_lag(runs: list[run_records.Run], title: str) -> Figure:
    """One panel per run: its training error (batch statistics) and its validation error with
    training's running BatchNorm statistics and with precise ones (`--precise-bn`)."""
    fig = Figure(figsize=(4.4 * len(runs) + 0.6, 4.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(runs), sharey=True))
    for ax, run in zip(axes, runs):
        epochs = [m["epoch"] for m in run.metrics]
        for key, style, label in (
            ("train_error", "-", "training (batch statistics, augmented)"),
            ("val_error_running", ":", "validation, running statistics"),
            ("val_error", "--", f"validation, precise ({run_records.setting(run, 'precise_bn'):,} images)"),
        ):
            ax.plot(
                epochs,
                [m[key] for m in run.metrics],
                style,
                marker="o",
                ms=3,
                label=label,
                color=RUN_COLOURS[run.hyper][0] if key != "val_error_running" else "black",
            )
        ax.set(title=run.name, xlabel="epoch", xlim=(0, max(epochs) + 1), ylim=(0, None))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("error (%)")
    axes[0].legend(fontsize=9)
    fig.suptitle(title, fontsize=13, weight="bold")
    return fig


# ----------------------------------------------------------------------------- generated kernels


class LayerKernels(NamedTuple):
    """A run's first generated kernel (C_out, C_in, f, f), as it started and as it ended."""

    init: torch.Tensor
    trained: torch.Tensor
    tile: tuple[int, int]  # (out, in) channels of one generated tile


@torch.no_grad()
def layer_kernels(run: run_records.Run) -> LayerKernels:
    """RUN's first generated kernel at initialisation and after training.

    `runner.fit` seeds torch with the run's seed and builds the model before any other draw
    from torch's generator, so seeding and building again gives the very same initial
    weights. The trained kernel comes from the run's saved kernel bank (z's and hypernetwork).

    Raises:
        UserError: If the saved kernel bank does not fit the run's configuration.
    """
    with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
        torch.manual_seed(run.config["seed"])
        experiment = all_experiments()[run.experiment]
        model = experiment.build_model(config_of(experiment, run.config))
    assert isinstance(model, (PrimaryNetwork, MnistNet))  # the experiments' models, both with a kernel_bank
    init = model.generate()[0]
    prefix = len(run_records.BANK_PREFIX)
    try:
        model.kernel_bank.load_state_dict({k[prefix:]: v for k, v in run.kernel_bank.items()})
    except RuntimeError as e:
        raise UserError(f"{run.directory}: its kernel bank does not fit its configuration ({first_line(e)})") from None
    hypernet = model.kernel_bank.hypernet
    return LayerKernels(init, model.generate()[0], (hypernet.out_size, hypernet.in_size))


def mosaic(kernel: torch.Tensor) -> np.ndarray:
    """(O, I, f, f) -> one image of O x I cells, cell (o, i) the f x f slice K[o, i], NaN gaps between."""
    o, i, f, _ = kernel.shape
    cells = F.pad(kernel.detach().float(), (0, 1, 0, 1), value=float("nan"))  # (O, I, f+1, f+1)
    return cells.permute(0, 2, 1, 3).reshape(o * (f + 1), i * (f + 1))[:-1, :-1].numpy()


def channel_ticks(channels: int, f: int) -> tuple[np.ndarray, list[str]]:
    """Tick positions at the centres of about 8 channels' cells of a mosaic, and their labels."""
    every = max(1, channels // 8)
    return np.arange(0, channels, every) * (f + 1) + (f - 1) / 2, [str(n) for n in range(0, channels, every)]


def draw_kernels(run: run_records.Run, kernels: LayerKernels) -> Figure:
    """The kernel's f x f slices as an image grid, at initialisation | after training, each
    panel with its own symmetric colour scale; tile boundaries as lines."""
    o, i, f, _ = kernels.init.shape
    rows, cols = o // kernels.tile[0], i // kernels.tile[1]
    fig = Figure(
        figsize=(min(13.0, max(9.0, 3.0 + 10.0 * i / o)), 6.8), layout="constrained"
    )  # panels as wide as the mosaic
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="white")
    titles = [
        f"at initialisation (seed {run.config['seed']})",
        f"after training (epoch {run.epoch}, step {run.step:,})",
    ]
    for ax, kernel, title in zip(fig.subplots(1, 2), (kernels.init, kernels.trained), titles):
        limit = kernel.abs().max().item() or 1.0
        image = ax.imshow(mosaic(kernel), cmap=cmap, vmin=-limit, vmax=limit, interpolation="nearest")
        fig.colorbar(image, ax=ax, shrink=0.85)
        for r in range(1, rows):
            ax.axhline(r * kernels.tile[0] * (f + 1) - 1, color="black", lw=1)
        for c in range(1, cols):
            ax.axvline(c * kernels.tile[1] * (f + 1) - 1, color="black", lw=1)
        ax.set_yticks(*channel_ticks(o, f))
        ax.set_xticks(*channel_ticks(i, f))
        ax.set(title=title, xlabel="input channel i", ylabel="output channel o")
    fig.suptitle(
        f"{run.name}: the generated kernel of {SHOWN_LAYER[run.experiment]}, {o}x{i}x{f}x{f}\n"
        f"({rows}x{cols} tile{'s' if rows * cols > 1 else ''}); each cell is one {f}x{f} slice K[o, i]",
        fontsize=12,
        weight="bold",
    )
    return fig


# ----------------------------------------------------------------------------- command line


def save(fig: Figure, path: Path) -> Path:
    """Write FIG as a PNG and print its path."""
    try:
        fig.savefig(path, dpi=110)
    except OSError as e:
        raise write_error(path, e) from None
    print(path)
    return path


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="diagrams.py",
        description="Draw PNGs into --out: architecture.png (from the live models), curves_cifar.png, "
        "curves_torchvision.png and curves_mnist*.png (the runs' metrics), and kernels_RUN.png for each hyper "
        "Wide-ResNet and MNIST run (a generated kernel at initialisation and after training).",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--runs",
        nargs="+",
        action="extend",
        metavar="DIR",
        help="folders of runs, as for compare.py: each subfolder with last.pt or run.json "
        "(compare.py --archive) is a run (default: checkpoints and results/runs, those that exist)",
    )
    p.add_argument("--out", default="diagrams", metavar="DIR", help="the folder for the PNGs")
    return p


def draw_all(args: argparse.Namespace) -> None:
    """Every figure the runs allow, into --out."""
    runs = run_records.find_runs(run_records.run_roots(args.runs))
    out = writable_dir(Path(args.out), "--out folder")
    save(draw_architecture(), out / "architecture.png")
    for filename, name, chosen, flag in CURVES:
        with_metrics = [run for run in runs if chosen(run) and run.metrics]
        if not with_metrics or (flag and len({run_records.setting(run, flag) for run in with_metrics}) < 2):
            differing = f" of more than one --{flag}" if flag else ""
            print(f"note: no runs of {name} with metrics.jsonl{differing}: {filename} not drawn")
            continue
        title = f"{name}: learning curves" + (f", each --{flag}" if flag else "")
        save(draw_curves(with_metrics, title, flag), out / filename)
    lagging = bn_lag_runs(runs)
    if lagging:
        save(
            draw_bn_lag(lagging, "Validation error with running and with precise BatchNorm statistics"),
            out / "bn_lag.png",
        )
    # One picture per configuration of the paper's models (a hypernetized torchvision model has no kernel_bank)
    for run in lowest_seeds([run for run in runs if run.hyper and (run.experiment == "mnist" or tables.is_wrn(run))]):
        try:
            kernels = layer_kernels(run)
        except UserError as e:
            print(f"warning: skipped kernels_{run.name}.png: {e}", file=sys.stderr)
            continue
        save(draw_kernels(run, kernels), out / f"kernels_{run.name}.png")


def main(argv: list[str] | None = None) -> int:
    """The command line: 0 on success, 1 with one line on stderr for a user error."""
    args = build_parser().parse_args(argv)
    matplotlib.use("Agg")  # files only, no window
    return run_cli(lambda: draw_all(args))


if __name__ == "__main__":
    sys.exit(main())
