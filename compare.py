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
import sys
from collections import Counter
from pathlib import Path

from checkpointing import atomic_save, atomic_write_text, write_error
from cli import ArgumentParser, HelpFormatter, UserError, run_cli
from run_records import ARCHIVE_FORMAT, Run, find_runs, is_run_dir, read_run, run_identity, run_roots
from tables import report

MACHINE_KEYS = ("data_dir", "checkpoint_dir", "log_dir", "resume")  # flags naming the machine's files: not archived


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
