"""Reading runs: a run folder as one `Run`, and how each of its flags acts on it.

A run is a folder holding train.py's or mnist.py's ``last.pt``, or the small files
``compare.py --archive`` writes for it: ``run.json``, ``metrics.jsonl`` and, for a
hyper run, ``kernel_bank.pt``. Both read the same.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

import mnist
import train
from checkpointing import load_checkpoint, safe_load
from cli import UserError, first_line
from config import result_flags
from experiment import acting_value, all_experiments, config_of, kernel_init

DEFAULT_RUNS = ("checkpoints", "results/runs")  # new runs, then the archived ones: a fresh clone shows the archive
ARCHIVE_FORMAT = "hyperresnet-run-v2"  # run.json: today's configuration keys, provenance, no machine paths
BANK_PREFIX = "kernel_bank."  # model-state keys of the z's and the hypernetwork
SUMMARY_KEYS = (
    "format",
    "config",
    "best",
    "epoch",
    "step",
    "elapsed_seconds",
    "num_parameters",
    "device",
    "provenance",
)
BEST_KEYS = {"epoch", "step", "val_error", "test_error"}
# The paper's rows hold runs of the paper's protocol and our default init (the paper gives none);
# another value of these flags puts a run in its own row.
PAPER_SETUP = {
    "cifar10": {"init": train.INITS[0]},
    "mnist": {"protocol": "paper", "init": mnist.PROTOCOL_INIT["paper"]},
}


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
        raise UserError(
            f"{source} has archive format {summary.get('format')!r}, this code reads {ARCHIVE_FORMAT!r}: "
            "read it with the commit that archived it (git log -- compare.py)"
        )
    missing = [k for k in SUMMARY_KEYS if k not in summary]
    if not missing:
        config, best = summary["config"], summary["best"]
        if not isinstance(config, dict) or not isinstance(best, dict):
            raise UserError(f"{source} is not a run summary: its config and best are not dicts")
        experiment = config.get("experiment")
        if experiment not in all_experiments():
            raise UserError(f"{source} is a run of an unknown experiment {experiment!r}")
        needed = {"run_name", *result_flags(all_experiments()[experiment].config_type)}
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
        summary, metrics, bank = read_checkpointed(directory / "last.pt")
    else:
        source = directory / "run.json"
        summary = read_json(source)
        check_summary(summary, source)
        metrics = read_metrics(directory / "metrics.jsonl")
        bank = read_kernel_bank(directory / "kernel_bank.pt")
    return Run(
        directory=directory,
        config=summary["config"],
        best=summary["best"],
        epoch=summary["epoch"],
        step=summary["step"],
        elapsed_seconds=summary["elapsed_seconds"],
        num_parameters=summary["num_parameters"],
        device=summary["device"],
        provenance=summary["provenance"],
        metrics=metrics[: summary["epoch"]],
        kernel_bank=bank,
    )


def read_checkpointed(source: Path) -> tuple[dict, list[dict], dict[str, torch.Tensor]]:
    """The summary, metrics and kernel bank of the run whose last.pt is SOURCE."""
    ckpt = load_checkpoint(source)
    if ckpt.get("epoch") == 0:
        script = all_experiments()[ckpt["config"]["experiment"]].script
        raise NoResultYet(f"stopped in its first epoch, before any result; continue with: python {script} -r {source}")
    metrics = ckpt["metrics"]
    summary = {**{k: ckpt[k] for k in SUMMARY_KEYS if k in ckpt}, "format": ARCHIVE_FORMAT, "device": devices(metrics)}
    check_summary(summary, source)
    return summary, metrics, {k: v for k, v in ckpt["model"].items() if k.startswith(BANK_PREFIX)}


def read_kernel_bank(path: Path) -> dict[str, torch.Tensor]:
    """An archived kernel_bank.pt (weights_only: no code runs), or {} when there is none."""
    if not path.is_file():
        return {}
    bank = safe_load(path, "a kernel bank written by compare.py")
    if not isinstance(bank, dict) or not all(
        isinstance(v, torch.Tensor) and k.startswith(BANK_PREFIX) for k, v in bank.items()
    ):
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
    experiment = all_experiments()[run.experiment]
    return acting_value(experiment, config_of(experiment, {**run.config, flag: value}), flag)


def setting(run: Run, flag: str):
    """RUN's value of FLAG as it acts on RUN: plain runs of either `SCALE_INITS` are one configuration."""
    return as_run_sees_it(run, flag, run.config[flag])


def departures(run: Run) -> dict:
    """RUN's PAPER_SETUP flags that differ from the paper's setup (empty: the paper's protocol and init)."""
    paper = PAPER_SETUP[run.experiment]
    return {k: setting(run, k) for k in paper if setting(run, k) != as_run_sees_it(run, k, paper[k])}


def configuration(run: Run) -> dict:
    """Every setting RUN's result depends on (its seed included), as they act on it."""
    return {k: setting(run, k) for k in result_flags(all_experiments()[run.experiment].config_type)}


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
    runs: list[Run] = []
    seen: set[Path] = set()
    names: dict[str, Path] = {}  # run identity -> the folder it was read from
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
