"""What does the hypernetwork cost? Ratios measured in one run, one process.

    python bench.py                      # CPU, all threads
    python bench.py --threads 2 --out results/bench.md --json results/bench.json   # the README's table

1. Kernel generation (forward + backward) for 40-1 and 40-2: our one batched call vs a
   per-tile loop (one hypernetwork call per z, as the public implementation does).
2. A training step (`engine.train_step`: forward, backward, optimizer step) at two batch
   sizes: Hyper-WRN-40-k vs WRN-40-k, k = 1, 2.
3. `train.py` end to end (data pipeline, augmentation, logging: images/s of its
   fastest epoch on a small fake CIFAR-10) vs the bare step rate of 2 (fastest block).
4. With --compile: the compiled Hyper-WRN-40-1 step (train.py --compile) vs the eager one.
   And a train step of `hypernetize(resnet18)` (its default layers) vs torchvision's
   ResNet-18 at --batch-size on CIFAR-size input.
5. What `--precise-bn 2000` adds to every epoch of Hyper-WRN-40-1: the recomputation
   plus the running-statistics validation pass logged beside it, as a fraction of the
   epoch's training steps (45,000 images at --batch-size).

Times are medians over --repeats. Compared functions run in turn (A B A B ...), and a
ratio is the median of the per-pair ratios, so drift in a shared machine's speed
cancels out instead of landing on one side.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
import torchvision

import train
from checkpointing import atomic_write_text
from cli import ArgumentParser, HelpFormatter, positive_int, run_cli
from data import Normalize, write_synthetic_cifar
from devices import AMP_CHOICES, Precision, choose_compute, configure_backends, pick_device
from distributed import SINGLE_PROCESS
from engine import Place, TrainState, evaluate, precise_bn, prepare_step, train_step
from hypernetwork_modules import KernelBank, hypernetize
from primary_net import PrimaryNetwork
from provenance import device_model
from run_records import read_run

CIFAR_TRAIN_IMAGES = 45_000  # train.py's training split (50,000 less --val-size 5000)
# What each ratio should reach on a CPU with 2 threads: at most for the step-time ratios (hyper/plain
# at batch 128 and 8, hypernetize(ResNet-18)/ResNet-18 in training and in inference), at least for the speedups and train.py/bare.
TARGETS = {
    "step_128": 1.05,
    "step_8": 1.12,
    "generation_speedup_40_2": 30.0,
    "pipeline": 0.95,
    "compile_128": 1.25,
    "resnet18_128": 1.15,
    "resnet18_eval_128": 1.05,
}
Section = tuple[dict, list[str]]  # a section's numbers (for --json) and its rows of the report's table


def per_tile_kernels(bank: KernelBank) -> list[torch.Tensor]:
    """Reference: the paper's two steps run once per z (as the public implementation
    does, with the same parameters), tiles concatenated into kernels."""
    hn = bank.hypernet

    def one_tile(z: torch.Tensor) -> torch.Tensor:
        a = hn.w_in(z).view(hn.in_size, hn.z_dim)  # (in, d): a_i = W_i z + B_i for every i
        k = hn.w_out(a).view(hn.in_size, hn.out_size, hn.f_size, hn.f_size)  # K_i = W_out a_i + B_out
        return k.transpose(0, 1)  # (out, in, f, f)

    kernels, offset = [], 0
    for rows, cols in bank.grids:
        row_blocks = []
        for r in range(rows):
            tiles = [one_tile(bank.z[offset + r * cols + c]) for c in range(cols)]
            row_blocks.append(torch.cat(tiles, dim=1))  # (16, cols*16, 3, 3)
        kernels.append(torch.cat(row_blocks, dim=0))  # (rows*16, cols*16, 3, 3)
        offset += rows * cols
    return kernels


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


def interleaved_times(
    fns: list[Callable[[], object]], repeats: int, device: torch.device, warmup: int = 2
) -> list[list[float]]:
    """Seconds of each call of each function, timing them in turn (A B A B ...)."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    sync(device)
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, t in zip(fns, times):
            start = time.perf_counter()
            fn()
            sync(device)
            t.append(time.perf_counter() - start)
    return times


def paired(fast: list[float], slow: list[float]) -> tuple[float, float, float]:
    """(median of fast, median of slow, median of the per-pair ratios slow/fast)."""
    return statistics.median(fast), statistics.median(slow), statistics.median(s / f for f, s in zip(fast, slow))


def generation_bench(width: int, device: torch.device, repeats: int) -> dict:
    bank = PrimaryNetwork(40, width, hyper=True).kernel_bank.to(device)

    # Each sum is a Tensor, never the int 0 of an empty sum: a bank makes at least one kernel.
    def batched():
        cast(torch.Tensor, sum(k.sum() for k in bank())).backward()

    def loop():
        cast(torch.Tensor, sum(k.sum() for k in per_tile_kernels(bank))).backward()

    t_batched, t_loop, speedup = paired(*interleaved_times([batched, loop], repeats, device))
    return {"tiles": bank.num_tiles, "batched_s": t_batched, "per_tile_s": t_loop, "speedup": speedup}


class StepRunner:
    """A model, its optimizer and one fixed batch: calling it runs `engine.train_step`."""

    def __init__(
        self,
        width: int,
        hyper: bool,
        batch: int,
        device: torch.device,
        args: argparse.Namespace,
        compiled: bool | None = None,
    ):
        torch.manual_seed(0)
        memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
        # torch's stubs lack the Module.to(device, memory_format=...) that it accepts
        model = PrimaryNetwork(40, width, hyper=hyper).to(device, memory_format=memory_format)  # type: ignore[call-overload]
        self.precision = Precision(args.amp)
        compiled = args.compile if compiled is None else compiled
        place = Place(device, SINGLE_PROCESS, self.precision, memory_format)
        self.state = TrainState.create(model, "adam" if hyper else "sgd", 1e-4, lambda step: 1.0, place, compiled)
        prepare_step(self.state, place, compiled)  # as train.py runs it (the whole step compiled with --compile)
        self.x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=memory_format)
        self.y = torch.randint(0, 10, (batch,), device=device)

    def __call__(self) -> None:
        train_step(self.state, self.x, self.y, 5e-4, self.precision)


def step_bench(width: int, batch: int, device: torch.device, args: argparse.Namespace, repeats: int) -> dict:
    hyper, plain = StepRunner(width, True, batch, device, args), StepRunner(width, False, batch, device, args)
    t_plain, t_hyper, ratio = paired(*interleaved_times([plain, hyper], repeats, device))
    return {"hyper_s": t_hyper, "plain_s": t_plain, "ratio": ratio}


class ModelStep:
    """A model, Adam and one fixed CIFAR-size batch: calling it runs one training step."""

    def __init__(self, model: torch.nn.Module, batch: int, device: torch.device):
        self.model = model.to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.x = torch.randn(batch, 3, 32, 32, device=device)
        self.y = torch.randint(0, 10, (batch,), device=device)

    def __call__(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(self.model(self.x), self.y).backward()
        self.optimizer.step()


def hypernetize_bench(device: torch.device, args: argparse.Namespace, repeats: int) -> dict:
    """A train step of `hypernetize(resnet18)` (its defaults) against torchvision's ResNet-18 at --batch-size."""
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(num_classes=10)
    hyper = ModelStep(hypernetize(resnet), args.batch_size, device)  # a copy: resnet stays as it is
    plain = ModelStep(resnet, args.batch_size, device)
    t_plain, t_hyper, ratio = paired(*interleaved_times([plain, hyper], repeats, device))
    return {"hyper_s": t_hyper, "plain_s": t_plain, "ratio": ratio}


def hypernetize_eval_bench(device: torch.device, args: argparse.Namespace, repeats: int) -> dict:
    """An inference forward (eval mode, no_grad: its kernels are generated once and reused) of
    `hypernetize(resnet18)` against torchvision's ResNet-18 at --batch-size."""
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(num_classes=10).to(device).eval()
    hyper = hypernetize(resnet).eval()
    x = torch.randn(args.batch_size, 3, 32, 32, device=device)

    def forward(model: torch.nn.Module) -> Callable[[], object]:
        def run() -> torch.Tensor:
            with torch.no_grad():
                return model(x)

        return run

    t_plain, t_hyper, ratio = paired(*interleaved_times([forward(resnet), forward(hyper)], repeats, device))
    return {"hyper_s": t_hyper, "plain_s": t_plain, "ratio": ratio}


def compile_bench(device: torch.device, args: argparse.Namespace, repeats: int) -> dict:
    """A Hyper-WRN-40-1 train step at --batch-size, compiled (`engine.compile_step`) against eager."""
    eager, compiled = (StepRunner(1, True, args.batch_size, device, args, compiled=c) for c in (False, True))
    start = time.perf_counter()
    compiled()  # the compilation: the first step, untimed below
    sync(device)
    compile_s = time.perf_counter() - start
    t_compiled, t_eager, speedup = paired(*interleaved_times([compiled, eager], repeats, device))
    return {"compiled_s": t_compiled, "eager_s": t_eager, "speedup": speedup, "compile_s": compile_s}


def block_seconds(step: StepRunner, steps: int, device: torch.device) -> float:
    """Seconds per step of STEPS consecutive calls of STEP."""
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - start) / steps


def train_py_argv(root: Path, device: torch.device, args: argparse.Namespace, epochs: int) -> list[str]:
    """train.py's command line for Hyper-WRN-40-1 on the fake CIFAR-10 in ROOT/data, with ARGS' compute flags."""
    argv = f"--depth 40 --width 1 --epochs {epochs} --batch-size {args.batch_size} --val-size 100".split()
    argv += ["--data-dir", str(root / "data"), "--checkpoint-dir", str(root / "ck"), "--log-dir", str(root / "runs")]
    argv += f"--device {device.type} --no-download --eval-batch-size 100 --no-progress --run-name bench".split()
    argv += ["--compile"] if args.compile else []
    amp = "off" if args.amp == "fp32" else args.amp
    return argv + ["--amp", amp, "--channels-last" if args.channels_last else "--no-channels-last"]


def train_py_metrics(argv: list[str], run_dir: Path) -> list[dict]:
    """Run train.py with ARGV, its epoch lines kept out of the bench's output; the metrics it logged in RUN_DIR."""
    with contextlib.redirect_stdout(io.StringIO()):
        if train.main(argv) != 0:
            raise RuntimeError("train.py failed inside the pipeline benchmark")
    return read_run(run_dir).metrics


def pipeline_bench(device: torch.device, args: argparse.Namespace, steps: int = 15, epochs: int = 3) -> dict:
    """train.py's images/s (its fastest epoch of STEPS steps) vs the bare step's (its fastest
    block of STEPS consecutive steps, blocks run before and after train.py). Best-of on
    both sides, since a shared machine only ever makes a block slower."""
    bare = StepRunner(1, True, args.batch_size, device, args)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        per_batch = (steps * args.batch_size + 100) // 5 + 1  # 5 train batches: steps*batch train images + 100 val
        write_synthetic_cifar(root / "data", per_batch=per_batch, test_size=100)
        bare()  # warm-up
        blocks = [block_seconds(bare, steps, device) for _ in range(2)]
        metrics = train_py_metrics(train_py_argv(root, device, args, epochs), root / "ck" / "bench")
        blocks += [block_seconds(bare, steps, device) for _ in range(2)]
    train_rate = max(m["images_per_s"] for m in metrics)
    bare_rate = args.batch_size / min(blocks)
    return {"train_py_images_per_s": train_rate, "bare_step_images_per_s": bare_rate, "ratio": train_rate / bare_rate}


def precise_bn_bench(device: torch.device, args: argparse.Namespace, repeats: int) -> dict:
    """Section 4: the per-epoch cost of precise BN (as `engine.evaluate_run` spends it) vs
    the epoch's training steps, each timed as the median of REPEATS, in turn."""
    step = StepRunner(1, True, args.batch_size, device, args)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.val_size, 3, 32, 32), dtype=torch.uint8, generator=gen).to(device)
    labels = torch.randint(0, 10, (args.val_size,), generator=gen).to(device)
    normalize = Normalize(images)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    n = min(args.precise_bn, args.val_size)

    def overhead():
        evaluate(
            step.state.model, images, labels, normalize, 1000, memory_format, step.precision
        )  # the running-stats error
        precise_bn(step.state.model, images[:n], normalize, min(args.batch_size, n), memory_format, step.precision)

    step_times, overhead_times = interleaved_times([step, overhead], repeats, device)
    steps = CIFAR_TRAIN_IMAGES // args.batch_size
    t_step, t_overhead = statistics.median(step_times), statistics.median(overhead_times)
    return {
        "images": n,
        "val_images": args.val_size,
        "steps_per_epoch": steps,
        "step_s": t_step,
        "overhead_s": t_overhead,
        "fraction_of_epoch": t_overhead / (steps * t_step),
    }


def add_compute_flags(p: ArgumentParser) -> None:
    """The flags that choose how each step computes, as train.py's do."""
    p.add_argument(
        "--compile",
        action="store_true",
        help="compile every step measured (as train.py --compile), and add compiled vs eager at --batch-size",
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="channels_last memory format (default: train.py's for the device)",
    )
    p.add_argument(
        "--amp",
        choices=AMP_CHOICES,
        default="auto",
        help="autocast dtype, fp16 with a GradScaler (default: auto, train.py's for the device)",
    )


def build_parser() -> ArgumentParser:
    """bench.py's command line."""
    p = ArgumentParser(prog="bench.py", description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps"], help="where to measure")
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--batch-size", type=positive_int, default=128, help="large batch of section 2, and section 3")
    p.add_argument("--small-batch", type=positive_int, default=8, help="small batch of section 2")
    p.add_argument("--widths", type=positive_int, nargs="+", default=[1, 2], help="WRN-40-k widths k to measure")
    p.add_argument(
        "--repeats", type=positive_int, default=7, help="timed repeats per measurement (3x for the small batch)"
    )
    add_compute_flags(p)
    p.add_argument("--skip-pipeline", action="store_true", help="leave out section 3")
    p.add_argument(
        "--precise-bn",
        type=positive_int,
        default=train.CIFAR10.defaults.precise_bn,
        metavar="IMAGES",
        help="section 4: images of the precise-BN recomputation (train.py's default)",
    )
    p.add_argument(
        "--val-size", type=positive_int, default=5000, help="section 4: validation images (train.py's default)"
    )
    p.add_argument("--json", metavar="PATH", help="also write the numbers here")
    p.add_argument("--out", metavar="PATH", help="also write the printed report (Markdown) here")
    return p


def row(*cells: str) -> str:
    """One line of the report's table, an empty cell as a single space."""
    return "|" + "".join(f" {cell} |" if cell else " |" for cell in cells)


def verdict(value: float, bound: str, target: float, digits: int = 2) -> tuple[str, str]:
    """The target and met cells of a row: VALUE against TARGET, BOUND ">=" (at least) or "<=" (at most)."""
    met = value >= target if bound == ">=" else value <= target
    return f"{bound} {target:.{digits}f}x", "yes" if met else "NO"


def ms(seconds: float, digits: int = 1) -> str:
    """SECONDS as a table cell in milliseconds."""
    return f"{1e3 * seconds:.{digits}f} ms"


def generation_section(args: argparse.Namespace, device: torch.device) -> Section:
    """Section 1 for each width, the 40-2 against its target."""
    results, rows = {}, []
    for width in args.widths:
        g = results[f"generation_40_{width}"] = generation_bench(width, device, args.repeats)
        target = verdict(g["speedup"], ">=", TARGETS["generation_speedup_40_2"], 0) if width == 2 else ("", "")
        what = f"kernel generation fwd+bwd, 40-{width} ({g['tiles']} tiles): batched vs per-tile loop"
        rows.append(row(what, ms(g["batched_s"], 2), ms(g["per_tile_s"]), f"{g['speedup']:.1f}x faster", *target))
    return results, rows


def step_section(args: argparse.Namespace, device: torch.device) -> Section:
    """Section 2 at both batch sizes, and the paper's schedule at the measured Hyper-40-1 step."""
    results, rows = {}, []
    sizes = (args.batch_size, "step_128", args.repeats), (args.small_batch, "step_8", 3 * args.repeats)
    for batch, key, repeats in sizes:
        for width in args.widths:
            s = results[f"step_40_{width}_b{batch}"] = step_bench(width, batch, device, args, repeats)
            cells = ms(s["hyper_s"]), ms(s["plain_s"]), f"{s['ratio']:.3f}x", *verdict(s["ratio"], "<=", TARGETS[key])
            rows.append(row(f"train step, batch {batch}: Hyper-40-{width} vs WRN-40-{width}", *cells))
    if 1 in args.widths:  # the measured step, times the paper's step count (App. A.3.2, batch 128)
        total = train.SCHEDULES["hyper"].total
        hours = results["paper_schedule_hours"] = results[f"step_40_1_b{args.batch_size}"]["hyper_s"] * total / 3600
        what = f"the paper's Hyper-40-1 schedule ({total:,} steps) at this step, batch {args.batch_size}"
        rows.append(row(what, f"{hours:.1f} h of steps", "", "", "", ""))
    return results, rows


def compile_section(args: argparse.Namespace, device: torch.device) -> Section:
    """With --compile, the compiled Hyper-40-1 step against the eager one."""
    if not args.compile:
        return {}, []
    c = compile_bench(device, args, args.repeats)
    what = f"train step, batch {args.batch_size}, Hyper-40-1: compiled vs eager (first step compiles: {c['compile_s']:.0f} s)"
    cells = ms(c["compiled_s"]), ms(c["eager_s"]), f"{c['speedup']:.2f}x faster"
    return {"compile": c}, [row(what, *cells, *verdict(c["speedup"], ">=", TARGETS["compile_128"]))]


def hypernetize_section(args: argparse.Namespace, device: torch.device) -> Section:
    """hypernetize(ResNet-18) against ResNet-18."""
    r = hypernetize_bench(device, args, args.repeats)
    what = f"train step, batch {args.batch_size}, CIFAR-size: hypernetize(ResNet-18) vs ResNet-18"
    cells = ms(r["hyper_s"]), ms(r["plain_s"]), f"{r['ratio']:.3f}x"
    e = hypernetize_eval_bench(device, args, args.repeats)
    eval_what = f"inference forward, batch {args.batch_size}: hypernetize(ResNet-18) vs ResNet-18"
    eval_cells = ms(e["hyper_s"]), ms(e["plain_s"]), f"{e['ratio']:.3f}x"
    rows = [row(what, *cells, *verdict(r["ratio"], "<=", TARGETS["resnet18_128"]))]
    rows.append(row(eval_what, *eval_cells, *verdict(e["ratio"], "<=", TARGETS["resnet18_eval_128"])))
    return {"hypernetize_resnet18": r, "hypernetize_resnet18_eval": e}, rows


def pipeline_section(args: argparse.Namespace, device: torch.device) -> Section:
    """Section 3, unless --skip-pipeline: train.py end to end against the bare step."""
    if args.skip_pipeline:
        return {}, []
    e = pipeline_bench(device, args)
    what = f"train.py end to end vs bare step, Hyper-40-1, batch {args.batch_size}"
    cells = f"{e['train_py_images_per_s']:.0f} img/s", f"{e['bare_step_images_per_s']:.0f} img/s", f"{e['ratio']:.3f}x"
    return {"pipeline": e}, [row(what, *cells, *verdict(e["ratio"], ">=", TARGETS["pipeline"]))]


def precise_bn_section(args: argparse.Namespace, device: torch.device) -> Section:
    """What --precise-bn adds to an epoch."""
    p = precise_bn_bench(device, args, args.repeats)
    what = (
        f"--precise-bn {p['images']} per epoch, Hyper-40-1, batch {args.batch_size}: recompute + running-stats "
        f"pass over {p['val_images']} val images vs {p['steps_per_epoch']} train steps"
    )
    cells = f"{p['overhead_s']:.2f} s", f"{p['steps_per_epoch'] * p['step_s']:.1f} s"
    return {"precise_bn": p}, [row(what, *cells, f"{100 * p['fraction_of_epoch']:.1f}% of an epoch", "", "")]


def measure(args: argparse.Namespace, device: torch.device) -> tuple[dict, list[str]]:
    """Every section's numbers, and the table rows that report them."""
    flags = {flag: getattr(args, flag) for flag in ("repeats", "compile", "channels_last", "amp")}
    machine = {"device": device.type, "machine": device_model(device), "threads": torch.get_num_threads()}
    results: dict = {**machine, "torch": torch.__version__, **flags}
    rows = [row("measurement", "ours", "reference", "ratio", "target", "met"), "|---|---:|---:|---:|---:|:-:|"]
    sections = (generation_section, step_section, compile_section, hypernetize_section, pipeline_section)
    for section in (*sections, precise_bn_section):
        numbers, lines = section(args, device)
        results.update(numbers)
        rows += lines
    return results, rows


def bench(args: argparse.Namespace) -> dict:
    """Measure, print the report, write the files asked for."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    precision, layout = choose_compute(args.amp, args.channels_last, device)  # as train.py chooses them
    args.amp, args.channels_last = precision.name, layout == torch.channels_last
    configure_backends(device)
    cuda = f", CUDA {torch.version.cuda}" if device.type == "cuda" else ""
    header = (
        f"bench on {device.type} ({device_model(device)}), {torch.get_num_threads()} thread(s), torch {torch.__version__}"
        f"{cuda}, {precision.describe()}{', channels_last' if args.channels_last else ''}{', compiled' if args.compile else ''}, "
        f"medians of {args.repeats} repeats ({3 * args.repeats} for batch {args.small_batch})"
    )
    print(header + "\n", flush=True)
    results, rows = measure(args, device)
    report = "\n".join(rows)
    print(report)
    for path, text in ((args.json, json.dumps(results, indent=2) + "\n"), (args.out, f"{header}\n\n{report}\n")):
        if path:
            atomic_write_text(text, Path(path))  # a failed write is one line (UserError)
    return results


def main(argv: list[str] | None = None) -> int:
    """python bench.py: 0 on success, 1 with one line on stderr for a user error."""
    args = build_parser().parse_args(argv)
    return run_cli(lambda: bench(args))


if __name__ == "__main__":
    sys.exit(main())
