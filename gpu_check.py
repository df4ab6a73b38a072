"""Verify and measure a GPU in one command: what a session or a user with a GPU runs first.

    python gpu_check.py --out gpu_report                              # a CUDA GPU, about 5 minutes
    python gpu_check.py --out gpu_report --mnist-dir ../shared/data   # ... with Table 7 from the real MNIST
    python gpu_check.py --dry-run --out /tmp/gpu_check                # every section on the CPU, tiny sizes

Each section runs in its own process under its own time limit, and OUT/report.md and
OUT/report.json are rewritten after each one, so a check cut short keeps what it finished:

    tests    pytest tests/test_gpu.py (skips say what did not run, and why)
    bench    bench.py on the device with train.py's defaults for it: generation, train
             steps, the paper schedule's wall time, train.py end to end against the bare step
    syncs    a steady-state Hyper-WRN-40-1 step with train.py's defaults under CUDA's sync
             debug mode: any host-device synchronisation is an error
    mnist    Table 7: hyper and normal, five seeds each, all ten runs at once on the one
             device, then compare.py (needs --mnist-dir, or --dry-run's synthetic MNIST)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from checkpointing import atomic_write_text, writable_dir
from cli import ArgumentParser, HelpFormatter, UserError, positive_int, run_cli
from devices import Precision, choose_compute, configure_backends

REPO = Path(__file__).resolve().parent
TAIL_LINES = 30  # of each section's output, in the report
DRY_RUN_LIMIT = 900  # seconds for any section of a dry run (each takes under a minute on an idle 2-core machine)


def sections(args: argparse.Namespace, device: str) -> list[tuple[str, list[str], int]]:
    """(name, command, time limit in seconds) of each section, for DEVICE; tiny sizes for a dry run."""
    py, out, dry = sys.executable, str(args.out), ["--dry-run"] if args.dry_run else []
    bench = (
        [
            "--widths",
            "1",
            "--repeats",
            "1",
            "--batch-size",
            "8",
            "--small-batch",
            "2",
            "--val-size",
            "16",
            "--precise-bn",
            "8",
        ]
        if args.dry_run
        else ["--repeats", "5"]
    )
    own = [py, "gpu_check.py", "--device", device, "--out", out, *dry]  # a section of this script, in its own process
    return [
        ("tests", [py, "-m", "pytest", "tests/test_gpu.py", "-rs", "-q", "-p", "no:cacheprovider"], 150),
        (
            "bench",
            [py, "bench.py", "--device", device, *bench, "--json", f"{out}/bench.json", "--out", f"{out}/bench.md"],
            150,
        ),
        ("syncs", [*own, "--section", "syncs"], 60),
        ("mnist", [*own, "--section", "mnist", *(["--mnist-dir", args.mnist_dir] if args.mnist_dir else [])], 180),
    ]


def mnist_plan(args: argparse.Namespace, out: Path) -> tuple[Path, list[str], list[str]]:
    """The MNIST folder, the seeds and mnist.py's own flags: five seeds on --mnist-dir, or for
    a dry run two seeds of one epoch on a synthetic MNIST written into OUT."""
    if not args.dry_run:
        return Path(args.mnist_dir), ["0", "1", "2", "3", "4"], []
    from data import write_synthetic_mnist

    return write_synthetic_mnist(out / "synthetic", 300, 100), ["0", "1"], ["--epochs", "1", "--val-size", "50"]


def check_mnist(args: argparse.Namespace) -> None:
    """Table 7 on the device: hyper and normal, five seeds each (two, one epoch, for a dry run),
    every run at once as its own process, then compare.py's tables into OUT/mnist.md."""
    out = Path(args.out)
    data, seeds, extra = mnist_plan(args, out)
    flags = ["--data-dir", str(data), "--no-download", "--device", args.device]
    flags += ["--checkpoint-dir", str(out / "mnist"), "--log-dir", str(out / "mnist-tb"), *extra]
    command = [sys.executable, "seeds.py", "mnist.py", "--seeds", *seeds, "--jobs", str(len(seeds)), "--", *flags]
    procs = [subprocess.Popen([*command, *plain], cwd=REPO) for plain in ([], ["--plain"])]
    failed = [p for p in procs if p.wait() != 0]
    if failed:
        raise UserError(f"{len(failed)} of the two seeds.py runs failed: see {out / 'mnist'}/*/seeds.log")
    import compare

    with contextlib.redirect_stdout(io.StringIO()):  # the tables go to OUT/mnist.md, which the report includes
        if compare.main(["--runs", str(out / "mnist"), "--out", str(out / "mnist.md")]) != 0:
            raise UserError("compare.py failed on the MNIST runs")


def environment(device: str) -> dict:
    """Where the check ran."""
    import provenance

    here = provenance.collect(torch.device(device), processes=1)  # torch, Python, device, commit
    return {**here, "cuda": torch.version.cuda}


def run_section(name: str, command: list[str], limit: int) -> dict:
    """Run one section's COMMAND under LIMIT seconds; what it printed last, and how it ended."""
    start = time.time()
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=limit)
        status, output = (
            ("passed" if done.returncode == 0 else f"failed (exit {done.returncode})"),
            done.stdout + done.stderr,
        )
    except subprocess.TimeoutExpired as e:
        status = f"cut at its {limit} s limit"
        output = "".join(
            part.decode(errors="replace") if isinstance(part, bytes) else part or "" for part in (e.stdout, e.stderr)
        )
    tail = output.strip().splitlines()[-TAIL_LINES:]
    return {
        "section": name,
        "status": status,
        "seconds": round(time.time() - start, 1),
        "command": command[1:],
        "tail": tail,
    }


def report(env: dict, results: list[dict], out: Path) -> None:
    """OUT/report.md and OUT/report.json with what has run so far."""
    lines = [
        f"# gpu_check: {env['device']}",
        "",
        f"torch {env['torch']} (built for CUDA {env['cuda']}), Python {env['python']}, commit {env['commit']}"
        f"{' (dirty)' if env['dirty'] is True else ''}",
        "",
        "| section | status | seconds |",
        "|---|---|---:|",
    ]
    lines += [f"| {r['section']} | {r['status']} | {r['seconds']} |" for r in results]
    for r in results:
        lines += ["", f"## {r['section']}: {r['status']}", "", "```", *r["tail"], "```"]
    if (out / "mnist.md").is_file():
        lines += ["", "## mnist.md", "", (out / "mnist.md").read_text()]
    atomic_write_text("\n".join(lines) + "\n", out / "report.md")
    atomic_write_text(json.dumps({"environment": env, "sections": results}, indent=1) + "\n", out / "report.json")


def hyper_step(dev: torch.device) -> tuple[Callable[[], None], Precision, torch.memory_format]:
    """A Hyper-WRN-40-1 training step on augmented random images, with train.py's defaults for
    DEV: the step, and the precision and memory format it runs in."""
    from data import Normalize, augment_cifar
    from distributed import SINGLE_PROCESS
    from engine import Place, TrainState, train_step
    from primary_net import PrimaryNetwork

    precision, layout = choose_compute("auto", None, dev)
    configure_backends(dev)
    place = Place(dev, SINGLE_PROCESS, precision, layout)
    # torch's stubs lack the Module.to(device, memory_format=...) that it accepts
    model = PrimaryNetwork(40, 1).to(dev, memory_format=layout)  # type: ignore[call-overload]
    state = TrainState.create(model, "adam", 2e-3, lambda step: 1.0, place)
    images = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8, device=dev)
    labels = torch.randint(0, 10, (256,), device=dev)
    normalize, gen = Normalize(images), torch.Generator(dev).manual_seed(0)

    def step() -> None:
        train_step(state, normalize(augment_cifar(images[:128], gen), layout), labels[:128], 5e-4, precision)

    return step, precision, layout


def check_syncs(device: str) -> None:
    """A steady-state Hyper-WRN-40-1 training step, with train.py's defaults for DEVICE, under
    CUDA's sync debug mode (a host-device synchronisation raises). Elsewhere it only runs."""
    dev = torch.device(device)
    step, precision, layout = hyper_step(dev)
    for _ in range(3):  # warm-up: first calls allocate, and the autotuner synchronises
        step()
    if dev.type != "cuda":
        print(f"ran 3 steps on {dev.type} ({precision.describe()}); host syncs are checked on CUDA only")
        return
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(5):
            step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    print(
        f"5 steady-state steps ({precision.describe()}, {'channels_last' if layout == torch.channels_last else 'NCHW'}) "
        "with no host-device synchronisation"
    )


def check(args: argparse.Namespace) -> None:
    """Every section in turn, the report rewritten after each."""
    if not args.dry_run and not torch.cuda.is_available():
        raise UserError("no CUDA GPU here: run on a machine with one, or use --dry-run to try every section on the CPU")
    if not args.dry_run and args.mnist_dir is None:
        print("note: no --mnist-dir: the mnist section is left out", file=sys.stderr)
    device = "cpu" if args.dry_run else "cuda"
    out = writable_dir(Path(args.out), "--out folder")
    env, results = environment(device), []
    todo = [s for s in sections(args, device) if args.dry_run or args.mnist_dir is not None or s[0] != "mnist"]
    for name, command, limit in todo:
        limit = DRY_RUN_LIMIT if args.dry_run else limit  # a dry run only has to finish, on however busy a CPU
        limit = min(limit, args.section_limit) if args.section_limit else limit
        print(f"{name}: running (at most {limit} s)", flush=True)
        results.append(run_section(name, command, limit))
        report(env, results, out)
        print(f"{name}: {results[-1]['status']} in {results[-1]['seconds']} s", flush=True)
    print(f"wrote {out / 'report.md'} and {out / 'report.json'}")
    failed = [r["section"] for r in results if r["status"] != "passed"]
    if failed:
        raise UserError(f"section(s) {', '.join(failed)} did not pass: see {out / 'report.md'}")


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="gpu_check.py", description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    p.add_argument(
        "--out", required=True, metavar="DIR", help="where report.md, report.json and each section's files go"
    )
    p.add_argument("--mnist-dir", metavar="DIR", help="a folder holding MNIST/raw/*.gz, for the mnist section")
    p.add_argument("--dry-run", action="store_true", help="every section on the CPU with tiny sizes (a few minutes)")
    p.add_argument("--section-limit", type=positive_int, metavar="SECONDS", help="cap every section's time limit")
    p.add_argument(
        "--section", choices=["syncs", "mnist"], help=argparse.SUPPRESS
    )  # one section, in a process of its own
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    """python gpu_check.py: 0 when every section passed; 1 with one line otherwise (the report says more)."""
    args = build_parser().parse_args(argv)
    if args.section == "syncs":
        return run_cli(lambda: check_syncs(args.device))
    if args.section == "mnist":
        return run_cli(lambda: check_mnist(args))
    return run_cli(lambda: check(args))


if __name__ == "__main__":
    sys.exit(main())
