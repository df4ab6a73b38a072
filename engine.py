"""The inner loops: one training step, one epoch of them, and evaluation.

    train_one_epoch(run, epoch)    shuffled global batches -> this process's share ->
                                   augment -> normalise -> train_step, with a progress bar
    train_step(state, x, y, ...)   forward (the model generates its kernels once);
                                   cross-entropy + wd/2 * sum K^2; backward; optimizer
                                   and lr schedule step
    evaluate(...)                  top-1 error

`Run` holds everything a run in progress needs; `runner.fit` builds it.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, NamedTuple

import torch
import torch.nn.functional as F
from tqdm import tqdm

from cli import UserError, format_time
from config import RunConfig
from data import Normalize
from devices import FP32, Precision, autocast, grad_scaler
from distributed import SINGLE_PROCESS, Distributed, all_sum, broadcast_buffers
from experiment import Augment, Experiment, Schedule
from hypernetwork_modules import default_layers
from preemption import StopRequest


@dataclass
class Data:
    """A run's images and labels on the training device, and how it split them."""

    train_x: torch.Tensor  # uint8 (N, C, H, W)
    train_y: torch.Tensor  # int64 (N,)
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    train_indices: torch.Tensor  # into the official training set; saved in checkpoints
    val_indices: torch.Tensor
    normalize: Normalize  # with the training split's statistics


@dataclass
class EpochSums:
    """What an epoch has summed so far: kept in a checkpoint taken in the middle of an epoch."""

    position: int = 0  # steps done in this epoch
    loss: float = 0.0  # sum over those steps of the mean loss over all processes
    correct: int = 0  # correct predictions over all processes
    seconds: float = 0.0  # training time spent on them
    overflowed: int = 0  # fp16 losses that overflowed, over all processes (their steps skipped; in no sum)


@dataclass
class Progress:
    """Where a run stands; what a checkpoint restores besides the states."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    best_val_error: float = math.inf
    best: dict = field(default_factory=dict)  # epoch, step, val_error, test_error of the best validation epoch
    elapsed_seconds: float = 0.0  # training and evaluation time over all sessions
    partial: EpochSums = field(default_factory=EpochSums)  # the epoch in flight (position 0: none)
    metrics: list[dict] = field(default_factory=list)  # one record per completed epoch (metrics.jsonl)


@dataclass(frozen=True)
class Place:
    """Where and how a run computes (chosen by `runner.set_up`; may change on resume)."""

    device: torch.device
    dist: Distributed
    precision: Precision = FP32  # float32, or bf16/fp16 autocast
    memory_format: torch.memory_format = torch.contiguous_format


@dataclass(frozen=True)
class Settings:
    """The flags the loops read, typed and fixed for the whole run."""

    batch_size: int  # global, split over the processes: --batch-size, or less for a tiny training set
    steps_per_epoch: int  # whole batches only: a short last batch is dropped
    weight_decay: float  # the L2 penalty wd/2 * sum K^2 on the kernels in use
    precise_bn: int  # training images for precise BatchNorm statistics before each evaluation (0: none)
    eval_batch_size: int
    progress: bool  # show a progress bar


@dataclass
class TrainState:
    """What a training step changes: the model, its optimizer, lr schedule and loss scale."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None = None  # fp16 only
    # What a step calls, eager on one process until `prepare_step` decides for the run's place:
    forward: Callable = field(init=False)  # the model, or it wrapped in DDP
    objective: Callable = field(init=False)  # (x, y, wd) -> loss, loss + penalty, logits
    step_optimizer: Callable = field(init=False)  # optimizer.step, or it compiled

    def __post_init__(self) -> None:
        self.forward = self.model
        self.objective = objective_of(self.forward, self.model)
        self.step_optimizer = self.optimizer.step

    @classmethod
    def create(
        cls,
        model: torch.nn.Module,
        optimizer: str,
        lr: float,
        multiplier: Callable[[int], float],
        place: Place,
        compiled: bool = False,
    ) -> TrainState:
        """MODEL with a fresh OPTIMIZER ("adam" or "sgd") at base LR times MULTIPLIER(step).

        On CUDA, an eager step's Adam is torch's fused one: one kernel, and under fp16 it reads
        the loss scaler's overflow flag on the GPU instead of copying it to the host each step.
        A step that will be COMPILED keeps the default Adam, which inductor fuses itself, and
        capturable (its step counts on the GPU) where the step runs as CUDA graphs.
        """
        opt = build_optimizer(
            model,
            optimizer,
            lr,
            fused=place.device.type == "cuda" and not compiled,
            capturable=compiled and uses_cuda_graphs(place),
        )
        return cls(
            model, opt, torch.optim.lr_scheduler.LambdaLR(opt, multiplier), grad_scaler(place.device, place.precision)
        )

    def load(self, ckpt: dict) -> None:
        """The model, optimizer, lr schedule and (fp16) loss scale of a checkpoint.

        The optimizer keeps the implementation `create` chose for this place (a checkpoint
        from another device, or from a compiled run, holds its own). Its per-parameter tensors
        take their parameter's memory layout: a
        checkpoint holds them contiguous, and a run resumed with channels_last would
        otherwise send torch's batched (foreach) optimizer down its per-tensor path.
        """
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(own_implementation(ckpt["optimizer"], self.optimizer))
        for p, state in self.optimizer.state.items():
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                    state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt["scaler"]:  # an fp16 run goes on with its loss scale
            self.scaler.load_state_dict(ckpt["scaler"])


IMPLEMENTATION = ("fused", "foreach", "capturable")  # how an optimizer computes: chosen for the place, not saved state


def own_implementation(saved: dict, optimizer: torch.optim.Optimizer) -> dict:
    """SAVED (an optimizer's state_dict) with OPTIMIZER's implementation flags: loading it then
    keeps OPTIMIZER's implementation, and torch puts each state tensor where that
    implementation needs it (Adam's step count on the parameter's device when fused or
    capturable, on the CPU otherwise)."""
    groups = [
        {**group, **{k: mine[k] for k in IMPLEMENTATION if k in mine}}
        for group, mine in zip(saved["param_groups"], optimizer.param_groups)
    ]
    return {**saved, "param_groups": groups}


@dataclass
class Run:
    """A training run in progress (see `runner.set_up`)."""

    experiment: Experiment
    config: RunConfig  # the configuration as given (saved in checkpoints); the loops read `settings`
    place: Place
    settings: Settings
    schedule: Schedule
    data: Data
    state: TrainState
    augment: Augment  # the training augmentation, from the experiment and the run's flags
    generators: dict[str, torch.Generator]  # "data_order" (same on every process), "augment" (per process)
    run_dir: Path  # checkpoints and metrics.jsonl
    log_dir: Path  # TensorBoard
    lock: IO | None = None  # rank 0 holds the run folder's lock while it trains
    provenance: list[dict] = field(default_factory=list)  # where it ran: one entry per place (provenance.py)
    progress: Progress = field(default_factory=Progress)
    order_state: torch.Tensor | None = None  # the data-order generator's state before this epoch's shuffle
    stop: StopRequest = field(default_factory=StopRequest)  # SIGTERM/SIGINT: stop after the step in flight
    session_start: tuple[float, int] = (0.0, 0)  # (time, step) when this process started or resumed
    cpu_note_due: bool = False  # say once how long the paper schedule would take on this CPU

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.state.model.parameters() if p.requires_grad)

    def log(self, *args, **kwargs) -> None:
        """print, on rank 0 only."""
        if self.place.dist.main:
            print(*args, **kwargs)

    def eta(self) -> float:
        """Seconds left in the run, at this session's average step time (evaluations included).

        Until the session has trained a whole epoch, the run's rate up to its last completed
        epoch is used when there is one: a resumed session's first evaluation, averaged over
        only the few steps before it, would otherwise inflate the estimate many times over.
        """
        start, start_step = self.session_start
        step, metrics = self.progress.step, self.progress.metrics
        per_step = (time.time() - start) / max(step - start_step, 1)
        if metrics and step - start_step < self.settings.steps_per_epoch:
            per_step = metrics[-1]["elapsed_seconds"] / metrics[-1]["step"]
        return per_step * (self.schedule.total_steps - step)


class EpochStats(NamedTuple):
    train_loss: float
    train_error: float  # percent
    seconds: float  # training only
    images_per_s: float
    started: float  # time.time() at the epoch's start (or resumption)
    resumed_seconds: float  # training time spent on the epoch before a resumption in its middle


def build_optimizer(
    model: torch.nn.Module, name: str, lr: float, fused: bool = False, capturable: bool = False
) -> torch.optim.Optimizer:
    """Adam (the paper's for hyper; FUSED: torch's single-kernel implementation; CAPTURABLE:
    safe inside a CUDA graph) or Nesterov SGD with momentum 0.9 (for plain; always torch's
    default implementation). Neither decays weights itself: the L2 penalty is in the loss
    (see `train_step`)."""
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, fused=fused or None, capturable=capturable)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True)


def train_step(
    state: TrainState,
    x: torch.Tensor,
    y: torch.Tensor,
    weight_decay: float = 0.0,
    precision: Precision = FP32,
    clip_norm: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step: one forward (the model generates its kernels once), cross-entropy
    plus L2 on the kernels in use.

    Args:
        state: The model, optimizer, lr schedule and (fp16) loss scaler; the step changes them.
        x: Normalised images (B, C, H, W); y: labels (B,).
        weight_decay: wd in the penalty wd/2 * sum K^2 over the kernels in use.
        precision: float32, or the autocast dtype.
        clip_norm: If given, the gradients' global L2 norm is clipped to it before the step.

    Returns:
        The detached cross-entropy loss and logits.
    """
    optimizer, scaler = state.optimizer, state.scaler
    with autocast(x.device.type, precision):
        loss, total, logits = state.objective(x, y, weight_decay)
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        total.backward()
        clip_gradients(optimizer, clip_norm)
        state.step_optimizer()
    else:
        scaler.scale(total).backward()
        if clip_norm is not None:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        clip_gradients(optimizer, clip_norm)
        scaler.step(optimizer)  # skipped when the scaled gradients overflowed
        scaler.update()
    state.scheduler.step()
    return loss.detach(), logits.detach()


def kernel_sq_norm_of(model: torch.nn.Module) -> Callable[[], torch.Tensor]:
    """The sum of squares the L2 penalty takes: MODEL's own exact ``kernel_sq_norm()`` where it
    has one (a hypernetwork's from its Gram matrices, without generating the kernels), else
    that of the weights `hypernetize` would generate (every square conv but the first, every
    linear layer but the last), so a plain model and its hypernetized twin pay the same penalty."""
    own = getattr(model, "kernel_sq_norm", None)
    if callable(own):
        return own
    modules = dict(model.named_modules())
    weights = [modules[name].weight for name in default_layers(model)]
    return lambda: sum(w.pow(2).sum() for w in weights)


def objective_of(forward: Callable, model: torch.nn.Module) -> Callable:
    """What a step minimises, as one function of the batch (the part `compile_step` compiles):
    FORWARD (the model, or it wrapped in DDP) generates its kernels once, then runs."""
    sq_norm = kernel_sq_norm_of(model)

    def objective(
        x: torch.Tensor, y: torch.Tensor, weight_decay: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = forward(x)
        loss = F.cross_entropy(logits.float(), y)
        penalty = 0.5 * weight_decay * sq_norm() if weight_decay else 0.0  # wd/2 * sum K^2
        return loss, loss + penalty, logits

    return objective


def uses_cuda_graphs(place: Place) -> bool:
    """Whether a compiled step at PLACE runs as CUDA graphs: on CUDA, in a single process
    (DDP's gradient hooks run between the graphs)."""
    return place.device.type == "cuda" and place.dist.world == 1


def prepare_step(state: TrainState, place: Place, compiled: bool) -> None:
    """Decide what `train_step` calls at PLACE, in this one place: the model, or it wrapped in
    DDP under torchrun (the hypernetwork's and z's gradients averaged too); the objective and
    the optimizer step, eager or (COMPILED) torch.compile'd."""
    state.forward = state.model
    if place.dist.world > 1:
        device_ids = [place.device.index] if place.device.type == "cuda" else None
        state.forward = torch.nn.parallel.DistributedDataParallel(state.model, device_ids=device_ids)
    if compiled:  # under DDP, dynamo splits the graph at its gradient buckets
        cuda_graphs = uses_cuda_graphs(place)
        state.objective, state.step_optimizer = compile_step(
            state, fullgraph=place.dist.world == 1, cuda_graphs=cuda_graphs
        )
        return
    for group in state.optimizer.param_groups:  # a compiled run's checkpoint holds its lr as a tensor
        group["lr"] = float(group["lr"])
    state.objective, state.step_optimizer = objective_of(state.forward, state.model), state.optimizer.step


def compile_step(
    state: TrainState, fullgraph: bool, backend: str = "inductor", cuda_graphs: bool = False
) -> tuple[Callable, Callable]:
    """The whole step torch.compile'd, as (objective, optimizer step): kernel generation, forward,
    loss and penalty as one graph (FULLGRAPH: no graph break; AOTAutograd compiles the backward).
    The lr becomes a tensor the schedule fills in place, so an lr change does not recompile.
    CUDA_GRAPHS: inductor's "reduce-overhead" mode, each step replayed as CUDA graphs (the
    optimizer must be capturable: `TrainState.create` with ``compiled=True`` makes it so)."""
    for group in state.optimizer.param_groups:  # on the parameters' device: no copy per step
        group["lr"] = torch.as_tensor(group["lr"], dtype=torch.float32, device=group["params"][0].device)
    mode = "reduce-overhead" if cuda_graphs else None
    compiled = torch.compile(objective_of(state.forward, state.model), fullgraph=fullgraph, backend=backend, mode=mode)
    step_optimizer = torch.compile(state.optimizer.step, backend=backend, mode=mode)
    if not cuda_graphs:
        return compiled, step_optimizer

    def objective(x: torch.Tensor, y: torch.Tensor, weight_decay: float) -> tuple[torch.Tensor, ...]:
        torch.compiler.cudagraph_mark_step_begin()  # a new step: the last step's graph outputs may be overwritten
        return compiled(x, y, weight_decay)

    return objective, step_optimizer


def clip_gradients(optimizer: torch.optim.Optimizer, max_norm: float | None) -> None:
    """Scale all of OPTIMIZER's gradients down together so their global L2 norm is at most MAX_NORM (None: leave them)."""
    if max_norm is not None:
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], max_norm)


@dataclass
class Tally:
    """This process's running sums over an epoch, kept on the device (no host sync per step)."""

    loss: torch.Tensor  # sum of the step losses, overflowed fp16 ones left out
    correct: torch.Tensor  # correct predictions
    overflowed: torch.Tensor  # fp16 losses that overflowed

    @classmethod
    def start(cls, sums: EpochSums, place: Place) -> Tally:
        """The sums of an epoch from SUMS on: the part done before a resume (summed over processes) counts on rank 0."""
        main, device = place.dist.main, place.device
        return cls(
            torch.tensor(sums.loss if main else 0.0, device=device),
            torch.tensor(sums.correct if main else 0, dtype=torch.long, device=device),
            torch.tensor(sums.overflowed if main else 0, dtype=torch.long, device=device),
        )

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, scaled: bool) -> None:
        """Count one step; SCALED (fp16): an overflowed loss's step is skipped by the scaler, and in no sum."""
        if scaled:
            finite = torch.isfinite(loss)
            self.overflowed += ~finite
            loss = torch.where(finite, loss, torch.zeros_like(loss))
        self.loss += loss
        self.correct += (logits.argmax(1) == y).sum()

    def total(self, name: str, dist: Distributed) -> float:
        """The sum NAME over every process: a collective, so every process calls it alike."""
        return all_sum(getattr(self, name), dist).item()


def train_one_epoch(run: Run, epoch: int) -> EpochStats | None:
    """One pass over the shuffled training split (or the rest of it, after a resume in the
    middle); every process takes its share of each global batch. Returns None when a
    signal stopped it early: then ``run.progress.partial`` says where it stands."""
    place, sums, steps = run.place, run.progress.partial, run.settings.steps_per_epoch
    run.state.model.train()
    run.order_state = run.generators["data_order"].get_state()  # a resumed epoch draws the same order again
    order = torch.randperm(len(run.data.train_x), generator=run.generators["data_order"]).to(place.device)
    tally, checked, start = Tally.start(sums, place), (sums.position, sums.overflowed), time.time()
    bar = progress_bar(run, epoch, sums.position)
    for i in bar:
        x, y = batch_of(run, order, i)
        loss, logits = train_step(run.state, x, y, run.settings.weight_decay, place.precision, run.schedule.clip_norm)
        run.progress.step += 1
        tally.add(loss, logits, y, run.state.scaler is not None)
        in_step = i % 10 == 9 or i == steps - 1  # every process reaches these steps: collectives are safe here
        if in_step:
            checked = check_in(run, bar, tally, i + 1, checked, (sums.position, start))
        if i < steps - 1 and run.stop.agreed(place.dist, place.device, in_step):
            bar.close()
            loss_sum, correct = tally.total("loss", place.dist), int(tally.total("correct", place.dist))
            seconds = sums.seconds + time.time() - start
            run.progress.partial = EpochSums(
                i + 1, loss_sum, correct, seconds, int(tally.total("overflowed", place.dist))
            )
            return None
    bar.close()
    run.progress.partial = EpochSums()
    return epoch_stats(run, tally, start, sums.seconds)


def progress_bar(run: Run, epoch: int, position: int) -> tqdm:
    """The epoch's tqdm bar (rank 0, with --progress), from step POSITION on."""
    return tqdm(
        range(position, run.settings.steps_per_epoch),
        desc=f"epoch {epoch + 1}/{run.schedule.epochs}",
        initial=position,
        total=run.settings.steps_per_epoch,
        disable=not run.settings.progress or not run.place.dist.main,
        leave=False,
        dynamic_ncols=True,
        file=sys.stderr,
    )


def batch_of(run: Run, order: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's share of global batch I of ORDER, augmented and normalised: (B, C, H, W) images, (B,) labels."""
    data, dist, batch = run.data, run.place.dist, run.settings.batch_size
    local = batch // dist.world
    idx = order[i * batch : (i + 1) * batch]  # the global batch
    idx = idx[dist.rank * local : (dist.rank + 1) * local]
    x = data.normalize(run.augment(data.train_x[idx], run.generators["augment"]), run.place.memory_format)
    return x, data.train_y[idx]


def check_in(
    run: Run, bar: tqdm, tally: Tally, done: int, checked: tuple[int, int], since: tuple[int, float]
) -> tuple[int, int]:
    """Every few steps, on every process: stop on a non-finite loss, and show progress after
    DONE steps (SINCE: the step and time this session's part of the epoch began).
    Returns what `check_finite` needs next time."""
    dist, scaled = run.place.dist, run.state.scaler is not None
    total, lost = tally.total("loss", dist), int(tally.total("overflowed", dist)) if scaled else 0
    checked = check_finite(run, total, done, lost, checked)
    note_cpu_time(run)
    if run.settings.progress:  # the same on every process: the accuracy's collective is safe
        accuracy = 100 * tally.total("correct", dist) / (done * run.settings.batch_size)
        speed = (done - since[0]) / (time.time() - since[1])
        show_progress(run, bar, mean_loss(total, dist.world, done, lost), accuracy, speed)
    return checked


def epoch_stats(run: Run, tally: Tally, start: float, resumed_seconds: float) -> EpochStats:
    """The finished epoch's loss, error and speed, over every process."""
    dist, steps, batch = run.place.dist, run.settings.steps_per_epoch, run.settings.batch_size
    seconds = resumed_seconds + time.time() - start
    train_loss = mean_loss(tally.total("loss", dist), dist.world, steps, int(tally.total("overflowed", dist)))
    train_error = 100 - 100 * tally.total("correct", dist) / (steps * batch)
    return EpochStats(train_loss, train_error, seconds, steps * batch / seconds, start, resumed_seconds)


def mean_loss(total: float, world: int, steps: int, overflowed: int) -> float:
    """The mean loss over STEPS steps of WORLD processes, the OVERFLOWED ones (fp16) left out."""
    return total / world / steps if not overflowed else total / (world * steps - overflowed)


def check_finite(run: Run, loss_sum: float, steps: int, overflowed: int, checked: tuple[int, int]) -> tuple[int, int]:
    """Stop the run when training no longer makes finite losses: the sum of the losses is
    not (in float32 one NaN or inf makes it so), or, in fp16, every loss since the last
    check overflowed (one overflow is the GradScaler's business: it skips that step).
    The last saved checkpoint is kept. Returns (STEPS, OVERFLOWED) for the next check."""
    since_steps, since_overflowed = steps - checked[0], overflowed - checked[1]
    if not math.isfinite(loss_sum):
        why = f"training loss became {loss_sum}"
    elif since_overflowed == since_steps * run.place.dist.world > 0:
        why = f"every fp16 training loss of the last {since_steps} steps overflowed"
    else:
        return steps, overflowed
    raise UserError(
        f"{why} at step {run.progress.step}; stopped. The last good checkpoint is kept: {run.run_dir / 'last.pt'}"
    )


def note_cpu_time(run: Run) -> None:
    """Once, on a CPU running the paper's schedule: how long it would take."""
    if run.cpu_note_due and run.place.dist.main:
        tqdm.write(
            f"note: the paper schedule is {run.schedule.total_steps:,} steps: about {format_time(run.eta())} more "
            "on this CPU. Use --epochs N for a short budget.",
            file=sys.stderr,
        )
        run.cpu_note_due = False


def show_progress(run: Run, bar: tqdm, loss: float, accuracy: float, steps_per_s: float) -> None:
    """The bar's numbers: running loss and accuracy, speed, and the run's ETA."""
    bar.set_postfix_str(
        f"loss {loss:.3f} acc {accuracy:.1f}% {steps_per_s * run.settings.batch_size:.0f} img/s "
        f"run ETA {format_time(run.eta())}"
    )


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    normalize: Normalize,
    batch_size: int,
    memory_format: torch.memory_format,
    precision: Precision = FP32,
    dist: Distributed | None = None,
) -> float:
    """Top-1 error in percent over all IMAGES, in eval mode. Under torchrun each process
    takes every world-th image and the counts are summed."""
    dist = dist or SINGLE_PROCESS
    mine, my_labels = images[dist.rank :: dist.world], labels[dist.rank :: dist.world]
    model.eval()
    with autocast(images.device.type, precision):
        wrong = torch.zeros((), dtype=torch.long, device=images.device)
        for i in range(0, len(mine), batch_size):
            logits = model(normalize(mine[i : i + batch_size], memory_format))
            wrong += (logits.argmax(1) != my_labels[i : i + batch_size]).sum()
    model.train()
    return 100.0 * all_sum(wrong, dist).item() / len(images)


def batchnorms(model: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer of MODEL (any dimension, SyncBatchNorm included)."""
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def precise_bn(
    model: torch.nn.Module,
    images: torch.Tensor,
    normalize: Normalize,
    batch_size: int,
    memory_format: torch.memory_format,
    precision: Precision = FP32,
) -> bool:
    """Replace every BatchNorm's running statistics by their average over IMAGES in
    batches of BATCH_SIZE (the last one shorter when BATCH_SIZE does not divide their
    number), every image counting the same, computed with the kernels as they are now
    (precise BN).

    The running statistics that training keeps (momentum 0.1) lag kernels that move fast;
    these do not. Deterministic (no augmentation, no randomness), the parameters are left
    alone, and the model's train/eval mode is restored. Returns False for a model with no
    BatchNorm (nothing to do).
    """
    bns = batchnorms(model)
    if not bns or not len(images):
        return False
    momenta, was_training = [bn.momentum for bn in bns], model.training
    for bn in bns:
        bn.reset_running_stats()
    model.train()
    with autocast(images.device.type, precision):
        for i in range(0, len(images), batch_size):  # every image, the last batch possibly short
            batch = images[i : i + batch_size]
            for bn in bns:  # a cumulative average weighted by batch size (equal batches: momentum=None's 1/n),
                bn.momentum = len(batch) / (
                    i + len(batch)
                )  # given so that BatchNorm does not read its count from the device
            model(normalize(batch, memory_format))
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
    model.train(was_training)
    return True


def evaluate_run(run: Run) -> dict[str, float]:
    """Validation and test error of the model now. With --precise-bn N the BatchNorm
    statistics are first recomputed on the first N training images, and the validation
    error with the running statistics is kept beside (``val_error_running``). Under
    torchrun, rank 0's statistics are used everywhere."""
    model, d, place, n = run.state.model, run.data, run.place, run.settings.precise_bn
    broadcast_buffers(model, place.dist)
    args = (d.normalize, run.settings.eval_batch_size, place.memory_format, place.precision, place.dist)
    errors = {}
    if n and batchnorms(model):  # without BatchNorm there is nothing to recompute, nor a second error to log
        start = time.time()
        running = evaluate(model, d.val_x, d.val_y, *args)
        precise_bn(
            model, d.train_x[:n], d.normalize, min(run.settings.batch_size, n), place.memory_format, place.precision
        )
        errors = {"val_error_running": running, "precise_bn_seconds": time.time() - start}
    errors["val_error"] = evaluate(model, d.val_x, d.val_y, *args)
    errors["test_error"] = evaluate(model, d.test_x, d.test_y, *args)
    return errors
