"""One experiment, several seeds: a single run is an anecdote, a mean with its spread is a result.

    python seeds.py mnist.py --seeds 0 1 2 3 4 -- --data-dir ../shared/data          # hyper
    python seeds.py mnist.py --seeds 0 1 2 3 4 -- --data-dir ../shared/data --plain  # normal
    python seeds.py train.py --seeds 0 1 2 --jobs 2 -- --epochs 10 --data-dir ../shared/data

Each seed is an ordinary run of the script (`--seed K --run-name NAME-seedK`, everything
after ``--`` passed on), so checkpoints, `-r` and metrics are the script's own; a seed
with a checkpoint already is resumed (a finished one only reports its result). With
``--jobs 2`` two seeds train at once, one thread each. `python compare.py` then reports
each configuration's mean, standard deviation and n.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from io import TextIOWrapper
from pathlib import Path

from cli import ArgumentParser, HelpFormatter, UserError, format_time, positive_int, run_cli
from experiment import Experiment, all_experiments, configuration_name, parse_args


def experiments() -> dict[str, Experiment]:
    """The experiments by the script that runs them (imported on this call, not at start-up)."""
    return {e.script: e for e in all_experiments().values()}


def seed_command(script: str, seed: int, flags: list[str]) -> tuple[list[str], Path]:
    """The command that runs or resumes SEED, and its checkpoint folder."""
    experiment = experiments()[script]
    args, explicit = parse_args(experiment, [*flags, "--seed", str(seed)])
    name = f"{args.run_name if 'run_name' in explicit else configuration_name(experiment, args, seed=False)}-seed{seed}"
    run_dir = Path(args.checkpoint_dir) / name
    # -r resumes a seed that has a checkpoint and starts one that has none yet
    return [sys.executable, script, *flags, "--seed", str(seed), "--run-name", name, "--no-progress", "-r"], run_dir


def run_seeds(script: str, seeds: list[int], flags: list[str], jobs: int) -> list[int]:
    """Run every unfinished seed, JOBS at a time; returns the seeds whose run failed."""
    todo = [(seed, *seed_command(script, seed, flags)) for seed in seeds]
    env = {**os.environ, "OMP_NUM_THREADS": "1"} if jobs > 1 else dict(os.environ)
    running: list[tuple[int, subprocess.Popen[bytes], TextIOWrapper]] = []
    failed: list[int] = []
    start = time.time()
    try:
        while todo or running:
            while todo and len(running) < jobs:
                seed, command, run_dir = todo.pop(0)
                run_dir.mkdir(parents=True, exist_ok=True)
                log = open(run_dir / "seeds.log", "a")
                print(f"seed {seed}: {' '.join(command[1:])} (log: {run_dir / 'seeds.log'})", flush=True)
                running.append((seed, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env), log))
            time.sleep(1)
            for item in [r for r in running if r[1].poll() is not None]:
                seed, proc, log = item
                log.close()
                running.remove(item)
                print(f"seed {seed}: exit {proc.returncode} after {format_time(time.time() - start)}", flush=True)
                if proc.returncode != 0:
                    failed.append(seed)
    except KeyboardInterrupt:  # each running seed saves the step it is at (as for its own Ctrl-C), then all leave
        for _, proc, _log in running:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for _, proc, _log in running:
            proc.wait()
            log.close()
        raise
    return failed


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="seeds.py", description="Run one experiment with several seeds.", formatter_class=HelpFormatter
    )
    p.add_argument("script", choices=sorted(experiments()), help="the experiment's script")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="the seeds to run")
    p.add_argument("--jobs", type=positive_int, default=1, help="seeds trained at once (one thread each when > 1)")
    p.epilog = "Everything after -- is passed to the script, the same for every seed."
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    args, flags = build_parser().parse_args(argv[:split]), argv[split + 1 :]

    def go() -> None:
        failed = run_seeds(args.script, args.seeds, flags, args.jobs)
        if failed:
            raise UserError(f"seed(s) {', '.join(map(str, failed))} failed: see their seeds.log")

    try:
        return run_cli(go)
    except KeyboardInterrupt:
        print("interrupted: each running seed saved where it stopped; the same command continues them", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
