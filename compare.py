"""How do our runs compare with the paper's tables? One command, one Markdown file.

    python compare.py                                  # runs under checkpoints/ -> results/results.md
    python compare.py --runs checkpoints results/runs  # several folders of runs
    python compare.py --archive results/runs           # also keep each run's small files there

A run is a folder holding train.py's ``last.pt``, or the small files ``--archive``
writes for it: ``run.json`` (configuration, result, provenance: no machine's paths),
``metrics.jsonl`` and, for a hyper run, ``kernel_bank.pt`` (its z's and hypernetwork).
Both read the same, so the tables (and diagrams.py's figures) can be rebuilt from
committed archives without the checkpoints.

Top to bottom: reading runs, the two tables (paper Table 2 for CIFAR-10, Table 7 for
MNIST) with our parameter counts computed from the live models, the archive, the CLI.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

import mnist
import provenance
import train
from checkpointing import atomic_save, atomic_write_text, load_checkpoint, safe_load, write_error
from cli import ArgumentParser, HelpFormatter, UserError, first_line, format_time, run_cli
from experiment import acting_value, all_experiments, default_config, kernel_init, result_flags
from primary_net import PAPER_TABLE2, PrimaryNetwork, model_name, num_parameters

CIFAR_Z_DIM, CIFAR_SHORTCUT = 64, "pad"  # the configuration behind the paper's Table 2 (N_z = 64)
DEFAULT_RUNS = ("checkpoints", "results/runs")  # new runs, then the archived ones: a fresh clone shows the archive
ARCHIVE_FORMAT = "hyperresnet-run-v2"  # run.json: today's configuration keys, provenance, no machine paths
MACHINE_KEYS = ("data_dir", "checkpoint_dir", "log_dir", "resume")  # flags naming the machine's files: not archived
BANK_PREFIX = "kernel_bank."  # model-state keys of the z's and the hypernetwork
SUMMARY_KEYS = ("format", "config", "best", "epoch", "step", "elapsed_seconds", "num_parameters", "device", "provenance")
BEST_KEYS = {"epoch", "step", "val_error", "test_error"}
RUN_COLUMNS = ["run", "test error", "val error", "best epoch", "epochs", "steps x batch", "stopped", "device", "wall time",
               "where it ran"]
SEED_COLUMNS = ["configuration", "epochs", "paper test error", "n", "seeds", "test error", "val error", "test error range",
                "95% interval of the mean test error"]
GAP_COLUMNS = ["hyper configuration", "plain configuration", "n (hyper, plain)", "paper gap", "our gap",
               "standard error", "95% interval of our gap"]
# Student's t, 97.5% quantile, by degrees of freedom (n - 1); beyond 30 the value at 30 (slightly wide).
T_975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]
# The paper's rows hold runs of the paper's protocol and our default init (the paper gives none);
# another value of these flags puts a run in its own row.
PAPER_SETUP = {"cifar10": {"init": train.INITS[0]}, "mnist": {"protocol": "paper", "init": mnist.PROTOCOL_INIT["paper"]}}
LEFT_COLUMNS = {"model", "configuration", "run", "epochs", "stopped", "device", "seeds", "where it ran",
                "hyper configuration", "plain configuration", "n (hyper, plain)"}  # words; the other columns are numbers


# ----------------------------------------------------------------------------- reading runs


@dataclass(eq=False)  # runs compare by identity
class Run:
    """One training run, read from its checkpoint or from its archived summary."""

    directory: Path
    config: dict  # the run's command-line arguments, as train.py saved them
    best: dict  # epoch, step, val_error, test_error at the best validation epoch
    epoch: int  # epochs done
    step: int
    elapsed_seconds: float
    num_parameters: int
    device: str  # e.g. "cpu", or "cuda x4" under torchrun
    provenance: list[dict]  # where it ran: one entry per place (provenance.py)
    metrics: list[dict]  # metrics.jsonl, one record per epoch done
    kernel_bank: dict[str, torch.Tensor]  # the model-state entries of the kernel bank; empty for plain runs

    @property
    def experiment(self) -> str:
        return self.config["experiment"]

    @property
    def name(self) -> str:
        return self.config["run_name"]

    @property
    def hyper(self) -> bool:
        return not self.config["plain"]


class NoResultYet(UserError):
    """A run saved before the end of its first epoch: nothing to report yet."""


def is_run_dir(directory: Path) -> bool:
    return (directory / "last.pt").is_file() or (directory / "run.json").is_file()


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not readable JSON ({first_line(e)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a JSON object")
    return data


def read_metrics(path: Path) -> list[dict]:
    """The records of an archived metrics.jsonl (written whole by `archive`: a torn line is an error)."""
    try:
        records = [json.loads(line) for line in path.read_text().splitlines()]
        if not all(isinstance(r, dict) and isinstance(r.get("epoch"), int) for r in records):
            raise ValueError("a line is not an epoch's record")
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not a metrics file ({first_line(e)})") from None
    return records


def check_summary(summary: dict, source: Path) -> None:
    """Raise a UserError naming SOURCE unless SUMMARY has every field the tables use."""
    if summary.get("format") != ARCHIVE_FORMAT:
        raise UserError(f"{source} has archive format {summary.get('format')!r}, this code reads {ARCHIVE_FORMAT!r}: "
                        "read it with the commit that archived it (git log -- compare.py)")
    missing = [k for k in SUMMARY_KEYS if k not in summary]
    if not missing:
        config, best = summary["config"], summary["best"]
        if not isinstance(config, dict) or not isinstance(best, dict):
            raise UserError(f"{source} is not a run summary: its config and best are not dicts")
        experiment = config.get("experiment")
        if experiment not in all_experiments():
            raise UserError(f"{source} is a run of an unknown experiment {experiment!r}")
        needed = {"run_name", *result_flags(default_config(all_experiments()[experiment], {}))}
        missing = [f"config.{k}" for k in sorted(needed - set(config))]
        missing += [f"best.{k}" for k in sorted(BEST_KEYS - set(best))]
    if missing:
        raise UserError(f"{source} is incomplete: it lacks {', '.join(missing)}")


def devices(metrics: list[dict]) -> str:
    """Where the run trained, from its metrics ("cpu", "cuda x4", "cpu, then cuda"; "none" before its first epoch)."""
    seen = [m["device"] + (f" x{m['processes']}" if m["processes"] > 1 else "") for m in metrics]
    return ", then ".join(dict.fromkeys(seen)) or "none"


def read_run(directory: Path) -> Run:
    """The run in DIRECTORY: from last.pt if it has one, else from an archived run.json.

    Raises:
        UserError: If its files are unreadable or lack what the tables need.
    """
    if (directory / "last.pt").is_file():
        source = directory / "last.pt"
        ckpt = load_checkpoint(source)
        if ckpt.get("epoch") == 0:
            script = all_experiments()[ckpt["config"]["experiment"]].script
            raise NoResultYet(f"stopped in its first epoch, before any result; continue with: python {script} -r {source}")
        metrics = ckpt["metrics"]
        summary = {**{k: ckpt[k] for k in SUMMARY_KEYS if k in ckpt}, "format": ARCHIVE_FORMAT, "device": devices(metrics)}
        bank = {k: v for k, v in ckpt["model"].items() if k.startswith(BANK_PREFIX)}
        check_summary(summary, source)
    else:
        source = directory / "run.json"
        summary = read_json(source)
        check_summary(summary, source)
        metrics = read_metrics(directory / "metrics.jsonl")
        bank = read_kernel_bank(directory / "kernel_bank.pt")
    return Run(directory=directory, config=summary["config"], best=summary["best"], epoch=summary["epoch"],
               step=summary["step"], elapsed_seconds=summary["elapsed_seconds"], num_parameters=summary["num_parameters"],
               device=summary["device"], provenance=summary["provenance"], metrics=metrics[: summary["epoch"]],
               kernel_bank=bank)


def read_kernel_bank(path: Path) -> dict[str, torch.Tensor]:
    """An archived kernel_bank.pt (weights_only: no code runs), or {} when there is none."""
    if not path.is_file():
        return {}
    bank = safe_load(path, "a kernel bank written by compare.py")
    if not isinstance(bank, dict) or not all(isinstance(v, torch.Tensor) and k.startswith(BANK_PREFIX) for k, v in bank.items()):
        raise UserError(f"{path} is not a kernel bank written by compare.py")
    return bank


def run_identity(run: Run) -> str:
    """What makes two run folders the same run: its name and the flags that define it (a
    resume cannot change them). Runs of one default name (hyper-40-1) that differ in, e.g.,
    --z-dim are different runs."""
    return json.dumps([run.experiment, run.name, configuration(run)], sort_keys=True)


def as_run_sees_it(run: Run, flag: str, value):
    """VALUE of FLAG as it acts on RUN: a plain run's --init is its `kernel_init`; an
    --optimizer or --lr left to the schedule is the schedule's."""
    if flag == "init":
        return kernel_init(value, run.hyper)
    return acting_value(all_experiments()[run.experiment], {**run.config, flag: value}, flag)


def setting(run: Run, flag: str):
    """RUN's value of FLAG as it acts on RUN: plain runs of either `SCALE_INITS` are one configuration."""
    return as_run_sees_it(run, flag, run.config[flag])


def departures(run: Run) -> dict:
    """RUN's PAPER_SETUP flags that differ from the paper's setup (empty: the paper's protocol and init)."""
    paper = PAPER_SETUP[run.experiment]
    return {k: setting(run, k) for k in paper if setting(run, k) != as_run_sees_it(run, k, paper[k])}


def run_roots(given: list[str] | None) -> list[Path]:
    """The folders of runs to read: those given, else those of `DEFAULT_RUNS` that exist."""
    return [Path(d) for d in given] if given else [p for p in map(Path, DEFAULT_RUNS) if p.is_dir()]


def find_runs(roots: list[Path]) -> list[Run]:
    """Every run in ROOTS: a root that is a run folder itself, else its run subfolders (by name).

    A run folder that cannot be read is reported in one warning line on stderr and skipped;
    so is a run that an earlier root already gave (an archived copy of a checkpoint: the
    same name and the same configuration, `run_identity`).

    Raises:
        UserError: If a root is not a folder.
    """
    runs, seen, names = [], set(), {}
    for root in roots:
        if not root.is_dir():
            raise UserError(f"--runs {root} is not a folder")
        folders = [root] if is_run_dir(root) else sorted(d for d in root.iterdir() if d.is_dir() and is_run_dir(d))
        for folder in folders:
            if folder.resolve() in seen:  # named twice on the command line
                continue
            seen.add(folder.resolve())
            try:
                run = read_run(folder)
            except UserError as e:
                kind = "note" if isinstance(e, NoResultYet) else "warning"
                print(f"{kind}: skipped {folder}: {first_line(e)}", file=sys.stderr)
                continue
            identity = run_identity(run)
            if identity in names:
                print(f"note: skipped {folder}: run {run.name} is read from {names[identity]}", file=sys.stderr)
                continue
            names[identity] = folder
            runs.append(run)
    return runs


# ----------------------------------------------------------------------------- the tables


def percent(value: float) -> str:
    return f"{value:.2f}%"


def planned_epochs(run: Run) -> int:
    """The run's length in epochs: --epochs, or the paper's step count at the run's steps per epoch."""
    steps_per_epoch = max(1, run.step // max(1, run.epoch))
    return all_experiments()[run.experiment].schedule(argparse.Namespace(**run.config), steps_per_epoch).epochs


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
    return [f"`{run.name}`", percent(run.best["test_error"]), percent(run.best["val_error"]), str(run.best["epoch"]),
            f"{run.epoch} of {planned_epochs(run):,}{schedule}", f"{run.step:,} x {run.config['batch_size']}",
            stop_status(run), run.device, format_time(run.elapsed_seconds), provenance.describe(run.provenance)]


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
    cells: Callable[[object, tuple], list[str]]  # row key, paper numbers -> the leading cells
    key: Callable[[Run], object]  # a run -> its row key, or None when it does not match the paper's setup
    describe: Callable[[Run], str]  # a run that matches no row -> its configuration in words


def configuration(run: Run) -> dict:
    """Every setting RUN's result depends on (its seed included), as they act on it."""
    return {k: setting(run, k) for k in result_flags(run.config)}


def seed_group(run: Run, ignoring: tuple[str, ...] = ()) -> str:
    """What a run's result depends on besides its seed (and the flags IGNORING): runs with
    equal groups are seeds of one configuration."""
    left_out = ("seed", *ignoring)
    return json.dumps([run.experiment, {k: v for k, v in configuration(run).items() if k not in left_out}], sort_keys=True)


def seed_groups(runs: list[Run]) -> list[list[Run]]:
    """RUNS grouped by configuration, in the runs' order, one run per seed: a seed trained
    again (e.g. on another machine) is no independent draw, so only its first run counts."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        group = groups.setdefault(seed_group(run), [])
        if all(other.config["seed"] != run.config["seed"] for other in group):
            group.append(run)
    return list(groups.values())


def reruns(runs: list[Run]) -> list[Run]:
    """The runs of RUNS that `seed_groups` leaves out: a seed of their configuration ran before them."""
    counted = {id(run) for group in seed_groups(runs) for run in group}
    return [run for run in runs if id(run) not in counted]


def mean_sd(values: list[float]) -> str:
    """mean ± sample standard deviation, in percent."""
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}%"


def mean_interval(values: list[float]) -> tuple[float, float]:
    """The two-sided 95% t-interval of the mean of VALUES (at least two)."""
    mean, n = statistics.mean(values), len(values)
    half = T_975[min(n - 1, len(T_975)) - 1] * statistics.stdev(values) / n**0.5
    return mean - half, mean + half


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
        rows.append([table.describe(group[0]), "paper schedule" if epochs is None else f"{epochs}", paper, str(len(group)),
                     ", ".join(str(seed) for seed in sorted(r.config["seed"] for r in group)), mean_sd(tests), mean_sd(vals),
                     f"{percent(min(tests))} - {percent(max(tests))}", " - ".join(map(percent, mean_interval(tests)))])
    return rows


def gap_interval(hyper: list[float], plain: list[float]) -> tuple[float, float, float]:
    """mean(HYPER) - mean(PLAIN), its standard error, and the half-width of its 95% Welch t-interval."""
    a, b = statistics.variance(hyper) / len(hyper), statistics.variance(plain) / len(plain)
    se = (a + b) ** 0.5
    df = (a + b) ** 2 / (a**2 / (len(hyper) - 1) + b**2 / (len(plain) - 1)) if a + b else len(hyper) + len(plain) - 2
    t = T_975[min(max(int(df), 1), len(T_975)) - 1]  # df rounded down: the interval errs wide
    return statistics.mean(hyper) - statistics.mean(plain), se, t * se


def gap_rows(table: PaperTable, finished: list[Run]) -> list[list[str]]:
    """Hyper minus plain test error of FINISHED runs, for each hyper configuration with several seeds whose
    plain twin (every setting the same but the model, and the hyper-only --init and
    --z-dim; --optimizer and --lr as given, so left to each model's schedule when not given
    or given at the schedule's own value) has several too: the paper's gap, ours with its
    standard error and 95% interval."""
    groups = [g for g in seed_groups(finished) if len(g) > 1]

    def twin(group: list[Run]) -> str:
        first = group[0]  # its seeds act alike, though one may give a schedule's value that another leaves to it
        given = [None if setting(first, k) == as_run_sees_it(first, k, None) else first.config[k]
                 for k in ("optimizer", "lr")]
        return seed_group(group[0], ignoring=("plain", "init", "z_dim", "optimizer", "lr")) + json.dumps(given)

    plains = {twin(g): g for g in groups if not g[0].hyper}
    rows = []
    for hyper in (g for g in groups if g[0].hyper and twin(g) in plains):
        plain = plains[twin(hyper)]
        keys = table.key(hyper[0]), table.key(plain[0])
        paper = (f"{table.paper[keys[0]][0] - table.paper[keys[1]][0]:+.2f}" if all(k in table.paper for k in keys)
                 else "no row")
        gap, se, half = gap_interval([r.best["test_error"] for r in hyper], [r.best["test_error"] for r in plain])
        rows.append([table.describe(hyper[0]), table.describe(plain[0]), f"{len(hyper)}, {len(plain)}", paper,
                     f"{gap:+.2f}", f"{se:.2f}", f"{gap - half:+.2f} - {gap + half:+.2f}"])
    return rows


def table_section(table: PaperTable, runs: list[Run], roots: list[Path]) -> list[str]:
    """The paper's table with one line per matching run ("no run" where none matches), the
    line saying where those runs came from, then a table of the experiment's other runs."""
    runs = [run for run in runs if run.experiment == table.experiment]
    rows, matched = [], []
    for key, numbers in table.paper.items():
        matching = [run for run in runs if table.key(run) == key]
        rows += [table.cells(key, numbers) + run_cells(run) for run in matching or [None]]
        matched += matching
    others = [run for run in runs if run not in matched]
    lines = [f"## {table.title}", "", *markdown_table([*table.columns, *RUN_COLUMNS], rows), ""]
    lines.append(sources(matched, roots))
    if others:
        rows = [[table.describe(run), f"{run.num_parameters:,}", *run_cells(run)] for run in others]
        lines += ["", "Other runs (no row in the paper's table):", ""]
        lines += [*markdown_table(["configuration", "our params", *RUN_COLUMNS], rows), "", sources(others, roots)]
    finished = [run for run in runs if stop_status(run) != "unfinished"]
    seeds = seed_rows(table, finished)
    if seeds:
        lines += ["", "Over seeds: each configuration with several finished runs (mean ± sample standard deviation, n runs):",
                  "", *markdown_table(SEED_COLUMNS, seeds)]
        gaps = gap_rows(table, finished)
        if gaps:
            lines += ["", "Hyper - plain over seeds (test error, points): the difference of the means, its standard "
                      "error, and its 95% Welch t-interval:", "", *markdown_table(GAP_COLUMNS, gaps)]
        again = reruns(finished)
        if again:
            lines += ["", "Not counted over seeds (a seed of the same configuration counted already): "
                      + ", ".join(f"`{run.name}` (seed {run.config['seed']})" for run in again) + "."]
    return lines


def cifar_key(run: Run) -> tuple[int, int, bool] | None:
    c = run.config
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


def mnist_key(run: Run) -> bool | None:
    return run.hyper if run.config["z_dim"] == mnist.Z_DIM and not departures(run) else None


def mnist_cells(hyper: bool, paper: tuple[float, int]) -> list[str]:
    net = mnist.MnistNet(hyper)
    return ["hyper" if hyper else "normal", percent(paper[0]), f"{paper[1]:,}", f"{net.layer2_parameters():,}",
            f"{num_parameters(net):,}"]


def mnist_describe(run: Run) -> str:
    """E.g. "hyper, z_dim 4", and the protocol and init where they are not the paper's."""
    words = f"{'hyper' if run.hyper else 'normal'}, z_dim {run.config['z_dim']}"
    if departures(run):
        words += f", {setting(run, 'protocol')} protocol, init {setting(run, 'init')}"
    return words


def paper_tables() -> list[PaperTable]:
    """Paper Table 2 (CIFAR-10) and Table 7 (MNIST), and how our runs match their rows."""
    return [
        PaperTable(train.CIFAR10.name, "CIFAR-10: paper Table 2 against our runs", PAPER_TABLE2,
                   ["model", "paper test error", "paper params", "our params"], cifar_cells, cifar_key, cifar_describe),
        PaperTable(mnist.MNIST.name, "MNIST: paper Table 7 against our runs", mnist.PAPER_TABLE7,
                   ["model", "paper test error", "paper layer-2 params", "our layer-2 params", "our params"],
                   mnist_cells, mnist_key, mnist_describe),
    ]


def paper_error(run: Run) -> float | None:
    """The paper's test error for RUN's model and setup, or None when the paper has no such row."""
    for table in paper_tables():
        if table.experiment == run.experiment and table.key(run) in table.paper:
            return table.paper[table.key(run)][0]
    return None


def report(runs: list[Run], roots: list[Path], command: str) -> str:
    """The whole Markdown report: each paper table beside our runs."""
    lines = [f"Generated by `{command}`. Test error: at the epoch with the best validation error "
             "(early stopping), as in the paper. Our parameter counts are computed from the models."]
    for table in paper_tables():
        lines += ["", *table_section(table, runs, roots)]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- archive


def check_same_run(run: Run, folder: Path) -> None:
    """Refuse to replace an archived run in FOLDER by another run of the same name (an
    update of the same run, e.g. after a resume, is fine; so is an unreadable folder)."""
    if not is_run_dir(folder):
        return
    try:
        archived = read_run(folder)
    except UserError:
        return
    if run_identity(archived) != run_identity(run):
        raise UserError(f"{folder} holds another run named {run.name} (another configuration or seed); "
                        f"nothing was archived: rerun this one with its own --run-name")


def to_archive(runs: list[Run], dest: Path) -> list[Run]:
    """The RUNS that `archive` would write to DEST (those not read from there already).

    Raises:
        UserError: If two of them have the same name, or a run's folder in DEST holds
            another run (another configuration or seed) of that name.
    """
    todo = [run for run in runs if run.directory.resolve() != (dest / run.name).resolve()]
    twice = [name for name, n in Counter(run.name for run in todo).items() if n > 1]
    if twice:
        raise UserError(f"two runs are named {twice[0]}: archive them one --runs folder at a time")
    for run in todo:
        check_same_run(run, dest / run.name)
    return todo


def archive(runs: list[Run], dest: Path) -> list[Path]:
    """Write each run's small files to DEST/<run name>/: run.json, metrics.jsonl and, for a
    hyper run, kernel_bank.pt (its z's and hypernetwork). Runs read from there are left alone.

    Returns:
        The folders written.

    Raises:
        UserError: As `to_archive`, or if DEST is not writable.
    """
    todo = to_archive(runs, dest)
    written = []
    for run in todo:
        folder = dest / run.name
        summary = {"format": ARCHIVE_FORMAT, "config": {k: v for k, v in run.config.items() if k not in MACHINE_KEYS},
                   "best": run.best, "epoch": run.epoch, "step": run.step, "elapsed_seconds": run.elapsed_seconds,
                   "device": run.device, "num_parameters": run.num_parameters, "provenance": run.provenance}
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise write_error(folder, e) from None
        # Each file whole or not at all (atomic_*: a full disk is one line, an older copy stays intact).
        atomic_write_text(json.dumps(summary, indent=1) + "\n", folder / "run.json")
        atomic_write_text("".join(json.dumps(m) + "\n" for m in run.metrics), folder / "metrics.jsonl")
        if run.kernel_bank:
            atomic_save({k: v.clone() for k, v in run.kernel_bank.items()}, folder / "kernel_bank.pt")
        written.append(folder)
    return written


# ----------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="compare.py",
        description="Compare our runs with the paper's Table 2 (CIFAR-10) and Table 7 (MNIST): print a Markdown "
                    "report and write it to --out.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--runs", nargs="+", action="extend", metavar="DIR",
                   help="folders of runs: each subfolder with last.pt (train.py, mnist.py) or run.json "
                        "(--archive) is a run (default: checkpoints and results/runs, those that exist; a run in "
                        "both is read from checkpoints)")
    p.add_argument("--out", default="results/results.md", metavar="FILE", help="the Markdown file to write")
    p.add_argument("--archive", metavar="DIR",
                   help="also write each run's run.json, metrics.jsonl and (hyper) kernel_bank.pt to DIR/RUN_NAME: "
                        "small files from which compare.py and diagrams.py rebuild everything")
    return p


def compare(args: argparse.Namespace) -> None:
    """Print the report, write it to --out, and archive the runs if asked."""
    roots = run_roots(args.runs)
    command = shlex.join(["python", "compare.py", "--runs", *map(str, roots), "--out", args.out]
                         + (["--archive", args.archive] if args.archive else []))
    out = Path(args.out)
    runs = find_runs(roots)
    if args.archive:
        to_archive(runs, Path(args.archive))  # a clash stops it before anything is written
    text = report(runs, roots, command)
    print(text, end="")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(out, e) from None
    atomic_write_text(text, out)
    print(f"wrote {out}", file=sys.stderr)
    if args.archive:
        folders = archive(runs, Path(args.archive))
        print(f"archived {len(folders)} run(s) to {args.archive}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """The command line: 0 on success, 1 with one line on stderr for a user error."""
    args = build_parser().parse_args(argv)
    return run_cli(lambda: compare(args))


if __name__ == "__main__":
    sys.exit(main())
