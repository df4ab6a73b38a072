"""The archive: each run's small files (run.json, metrics.jsonl and, for a hyper run,
kernel_bank.pt) written to a folder of runs, from which run_records.py reads it again."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from checkpointing import atomic_save, atomic_write_text, write_error
from cli import UserError
from config import roles
from experiment import all_experiments
from run_records import ARCHIVE_FORMAT, Run, is_run_dir, read_run, run_identity


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
        raise UserError(
            f"{folder} holds another run named {run.name} (another configuration or seed); "
            f"nothing was archived: rerun this one with its own --run-name"
        )


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
        local = {k: role.local for k, role in roles(all_experiments()[run.experiment].config_type).items()}
        summary = {
            "format": ARCHIVE_FORMAT,
            "config": {k: v for k, v in run.config.items() if not local.get(k, False)},
            "best": run.best,
            "epoch": run.epoch,
            "step": run.step,
            "elapsed_seconds": run.elapsed_seconds,
            "device": run.device,
            "num_parameters": run.num_parameters,
            "provenance": run.provenance,
        }
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
