"""How do our runs compare with the paper's tables? One command, one Markdown file.

    python compare.py                                  # runs under checkpoints/ -> results/results.md
    python compare.py --runs checkpoints results/runs  # several folders of runs
    python compare.py --archive results/runs           # also keep each run's small files there

A run is a folder holding train.py's ``last.pt``, or the small files ``--archive``
writes for it: ``run.json`` (configuration, result, provenance: no machine's paths),
``metrics.jsonl`` and, for a hyper run, ``kernel_bank.pt`` (its z's and hypernetwork).
Both read the same, so the tables (and diagrams.py's figures) can be rebuilt from
committed archives without the checkpoints.

The command line lives here; the jobs it runs live beside it: run_records.py reads the
runs, tables.py writes the two tables (paper Table 2 for CIFAR-10, Table 7 for MNIST)
with our parameter counts computed from the live models, seed_stats.py gives the
statistics over seeds, archiving.py writes the archive.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from archiving import archive, to_archive
from checkpointing import atomic_write_text, write_error
from cli import ArgumentParser, HelpFormatter, run_cli
from run_records import find_runs, run_roots
from tables import report


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="compare.py",
        description="Compare our runs with the paper's Table 2 (CIFAR-10) and Table 7 (MNIST): print a Markdown "
        "report and write it to --out.",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--runs",
        nargs="+",
        action="extend",
        metavar="DIR",
        help="folders of runs: each subfolder with last.pt (train.py, mnist.py) or run.json "
        "(--archive) is a run (default: checkpoints and results/runs, those that exist; a run in "
        "both is read from checkpoints)",
    )
    p.add_argument("--out", default="results/results.md", metavar="FILE", help="the Markdown file to write")
    p.add_argument(
        "--archive",
        metavar="DIR",
        help="also write each run's run.json, metrics.jsonl and (hyper) kernel_bank.pt to DIR/RUN_NAME: "
        "small files from which compare.py and diagrams.py rebuild everything",
    )
    return p


def compare(args: argparse.Namespace) -> None:
    """Print the report, write it to --out, and archive the runs if asked."""
    roots = run_roots(args.runs)
    command = shlex.join(
        ["python", "compare.py", "--runs", *map(str, roots), "--out", args.out]
        + (["--archive", args.archive] if args.archive else [])
    )
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
