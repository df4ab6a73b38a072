"""One training run, from flags (or a checkpoint) to the final line: `fit`, step by step.

    fit(experiment, argv)
      resolve_args     the flags, or the checkpoint's configuration when resuming (-r)
      set_up           device and torchrun, folders, seeds, data, model, optimizer
      restore          the checkpoint's weights, optimizer, schedule, progress, random states
      for each epoch:
        engine.train_one_epoch, engine.evaluate_run, save_epoch
      a summary line, and the summary as a dict

Every user error raises `cli.UserError`; `main` prints it as one line.
"""

from __future__ import annotations

import copy
import dataclasses
import faulthandler
import json
import random
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np
import torch

import distributed
import provenance
from checkpointing import (
    CHECKPOINT_FORMAT,
    acquire_run_lock,
    append_line,
    atomic_save,
    atomic_write_text,
    load_checkpoint,
    release_run_lock,
    remove_stale_temporaries,
    resumed_config,
    rng_state,
    set_rng_state,
    writable_dir,
)
from cli import UserError, first_line, format_time
from config import RunConfig, as_dict
from data import Normalize, split_indices
from devices import choose_compute, configure_backends, pick_device
from distributed import Distributed, all_gather, augment_seed, broadcast_object
from engine import (
    Data,
    EpochStats,
    EpochSums,
    Place,
    Progress,
    Run,
    Settings,
    TrainState,
    evaluate_run,
    prepare_step,
    train_one_epoch,
)
from experiment import DEFAULT_DATA_DIR, Experiment, check_complete, config_of, configuration_name, parse_args


def resolve_args(experiment: Experiment, argv: list[str] | None) -> tuple[RunConfig, dict | None]:
    """The run's configuration and, when resuming, its checkpoint. Resuming takes the
    checkpoint's configuration, with each flag's `config.Role`: a given flag that a resume
    cannot change is refused when it contradicts the checkpoint; the others take the given
    values ("kept": only when given; "given": defaults too).
    ``-r PATH`` continues the run in PATH's folder. A bare ``-r`` before the run's first
    save starts it, so one command both starts and continues a job (a requeue, a torchrun
    restart); a missing PATH stays an error (a typo must not start a new run). Under
    torchrun every process decides alike: none writes last.pt before all have joined."""
    config, explicit = parse_args(experiment, argv)
    if config.resume is None:
        return config, None
    path = Path(config.resume) if config.resume else Path(config.checkpoint_dir) / config.run_name / "last.pt"
    if not config.resume and not path.exists():
        if distributed.is_main_process():
            print(f"no checkpoint at {path} yet: starting the run", flush=True)
        config.resume = None
        return config, None
    ckpt = load_checkpoint(path)
    saved = dict(ckpt["config"])
    if saved["experiment"] != experiment.name:
        raise UserError(f"{path} is a {saved['experiment']} run, not {experiment.name}: resume it with its own script")
    check_complete(experiment, saved, path)
    resumed = resumed_config(config_of(experiment, saved), config, explicit)
    if config.resume and "checkpoint_dir" not in explicit:  # a file named by -r PATH: its folder is the run's
        folder = path.parent if path.parent.name else path.resolve().parent  # "-r last.pt" inside the folder too
        resumed.checkpoint_dir, resumed.run_name = str(folder.parent), folder.name
    return resumed, ckpt


def place_process(config: RunConfig) -> tuple[torch.device, Distributed]:
    """The device, chosen before the process group (nccl needs it), and this process's place in torchrun."""
    device = pick_device(config.device, distributed.local_rank())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    world = distributed.world_size()  # checked before joining: a refused job never opens a connection
    if config.sync_bn and device.type != "cuda":
        raise UserError("--sync-bn needs CUDA: torch's SyncBatchNorm does not run on the CPU")
    if config.batch_size % world:
        raise UserError(f"--batch-size {config.batch_size} does not split evenly over {world} processes")
    return device, distributed.init_distributed(device)


def prepare_dirs(config: RunConfig, resuming: bool, dist: Distributed) -> tuple[Path, Path, IO | None]:
    """The run's checkpoint and log folders, checked writable, and (rank 0) the run's lock.
    A new run never overwrites a saved one; two processes never train one run at once."""
    run_dir = writable_dir(Path(config.checkpoint_dir) / config.run_name, "checkpoint directory")
    log_dir = writable_dir(Path(config.log_dir) / config.run_name, "log directory")
    if not resuming and (run_dir / "last.pt").exists():
        raise UserError(f"{run_dir / 'last.pt'} exists: resume it with -r, or pick another --run-name")
    lock = None
    if dist.main:
        lock = acquire_run_lock(run_dir)
        remove_stale_temporaries(run_dir)
    return run_dir, log_dir, lock


def seed_everything(seed: int, dist: Distributed, device: torch.device) -> dict[str, torch.Generator]:
    """Seed torch, numpy and random; the generators for the data order (on the CPU, the same
    on every process) and for augmentation (this process's own; on a CUDA DEVICE, on it: no
    copies; elsewhere on the CPU, whose draws are copied to the device)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    augment_device = device if device.type == "cuda" else torch.device("cpu")
    return {
        "data_order": torch.Generator().manual_seed(seed + 1),
        "augment": torch.Generator(augment_device).manual_seed(augment_seed(seed, dist.rank)),
    }


def read_dataset(experiment: Experiment, config: RunConfig, dist: Distributed) -> tuple:
    """The experiment's images and labels. Under torchrun rank 0 reads (and, if allowed,
    downloads) them first while the others wait, then they read what it left: one
    download into the shared folder, never several writing the same files."""
    error = None
    if dist.main:
        try:
            splits = experiment.load_data(config.data_dir, config.download)
        except UserError as e:
            error = str(e)
    error = broadcast_object(error, dist)  # the other ranks wait here for rank 0
    if error is not None:
        raise UserError(error)
    return splits if dist.main else experiment.load_data(config.data_dir, False)


def load_data(experiment: Experiment, config: RunConfig, ckpt: dict | None, place: Place) -> Data:
    """The whole dataset as uint8 tensors on the run's device, split as the checkpoint says (or afresh)."""
    device = place.device
    train_x, train_y, test_x, test_y = read_dataset(experiment, config, place.dist)
    if ckpt is not None:
        train_idx, val_idx = ckpt["train_indices"], ckpt["val_indices"]
    else:
        train_idx, val_idx = split_indices(len(train_x), config.val_size)
    val_x, val_y = train_x[val_idx].to(device), train_y[val_idx].to(device)
    train_x, train_y = train_x[train_idx].to(device), train_y[train_idx].to(device)
    return Data(
        train_x, train_y, val_x, val_y, test_x.to(device), test_y.to(device), train_idx, val_idx, Normalize(train_x)
    )


def set_up(experiment: Experiment, config: RunConfig, ckpt: dict | None) -> Run:
    """Everything a run needs, freshly initialised (a checkpoint is restored afterwards)."""
    if Path(config.data_dir) != Path(DEFAULT_DATA_DIR) and not Path(config.data_dir).is_dir():
        raise UserError(
            f"--data-dir {config.data_dir} is not a folder: check the path (to download into a new folder, "
            "create it first)"
        )
    device, dist = place_process(config)
    place = Place(device, dist, *choose_compute(config.amp, config.channels_last, device))
    configure_backends(device)
    folders = [Path(config.checkpoint_dir) / config.run_name, Path(config.log_dir) / config.run_name]
    new = {folder: [p for p in (folder, *folder.parents) if not p.exists()] for folder in folders}
    lock = None
    try:
        run_dir, log_dir, lock = prepare_dirs(config, ckpt is not None, dist)
        return build_run(experiment, config, ckpt, place, (run_dir, log_dir, lock))
    except BaseException:
        release_run_lock(lock)
        if dist.main:  # a start that failed leaves no folder behind that it made
            for made in new.values():
                remove_empty(made)
        raise


def remove_empty(folders: list[Path]) -> None:
    """Remove FOLDERS (a folder, then its parents) while they hold nothing but a run's lock."""
    for folder in folders:
        try:
            (folder / ".lock").unlink(missing_ok=True)
            folder.rmdir()
        except OSError:  # not empty, or never made (a path through a file)
            return


def build_run(experiment: Experiment, config: RunConfig, ckpt: dict | None, place: Place, folders: tuple) -> Run:
    """Seeds, data, model and optimizer, for the place `set_up` chose."""
    device, dist = place.device, place.dist
    generators = seed_everything(config.seed, dist, device)
    data = load_data(experiment, config, ckpt, place)
    batch_size = min(config.batch_size, len(data.train_x) - len(data.train_x) % dist.world)  # global
    settings = Settings(
        batch_size,
        len(data.train_x) // batch_size,
        config.weight_decay,
        config.precise_bn,
        config.eval_batch_size,
        config.progress,
    )
    schedule = experiment.schedule(config, settings.steps_per_epoch)
    state = TrainState.create(
        place_model(experiment, config, data, place),
        config.optimizer or schedule.optimizer,
        config.lr if config.lr is not None else schedule.lr,
        schedule.multiplier,
        place,
        compiled=config.compile,
    )
    run_dir, log_dir, lock = folders
    return Run(
        experiment=experiment,
        config=config,
        place=place,
        settings=settings,
        schedule=schedule,
        data=data,
        state=state,
        augment=experiment.augment(config),
        generators=generators,
        run_dir=run_dir,
        log_dir=log_dir,
        lock=lock,
        provenance=[{"from_step": 0, **provenance.collect(device, dist.world)}],
        cpu_note_due=device.type == "cpu" and config.epochs is None,
    )


def place_model(experiment: Experiment, config: RunConfig, data: Data, place: Place) -> torch.nn.Module:
    """The run's model on its device and memory format, checked to classify the data's images."""
    model = experiment.build_model(config).to(place.device, memory_format=place.memory_format)  # type: ignore[call-overload]  # torch's stubs lack this overload
    check_classifies(model, data.normalize(data.train_x[:2], place.memory_format), experiment.run_name(config))
    if config.sync_bn and place.dist.world > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def check_classifies(model: torch.nn.Module, x: torch.Tensor, name: str) -> None:
    """Refuse, in one line, a model whose training forward does not give one row of logits per
    image of X (a torchvision model made for larger images, or one that returns more than
    logits). Tried on a copy, with the random streams restored: the run starts as if untried."""
    trial = copy.deepcopy(model).train()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            out = trial(x)
    except (RuntimeError, ValueError, AssertionError, TypeError) as e:
        raise UserError(f"{name} cannot classify these {tuple(x.shape[1:])} images: {first_line(e)}") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or len(out) != len(x):
        raise UserError(
            f"{name} does not return one row of logits per image in training mode "
            f"(it returns {type(out).__name__}): it cannot be trained here"
        )


def restore(run: Run, ckpt: dict) -> None:
    """Every process restores the same model, optimizer and schedule, and its own random streams."""
    per_rank, dist = ckpt["rng_per_rank"], run.place.dist
    try:
        run.state.load(ckpt)
        unfit = set_rng_state(
            per_rank[dist.rank] if len(per_rank) == dist.world else per_rank[0], run.generators, run.place.device
        )
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise UserError(
            f"{run.config.resume or 'the checkpoint'} does not fit its own configuration ({first_line(e)})"
        ) from None
    why = None
    if len(per_rank) != dist.world:
        why = f"the checkpoint was written by {len(per_rank)} process(es), this job has {dist.world}"
    elif "augment" in unfit:
        why = "the checkpoint's augmentation stream was drawn on another kind of device"
    if why:
        run.log(f"note: {why}: augmentation streams restart from the seed (the run goes on, but not bit-exactly)")
        run.generators["augment"].manual_seed(augment_seed(run.config.seed, dist.rank) + 7919 * ckpt["epoch"])
    run.progress = Progress(
        ckpt["epoch"],
        ckpt["step"],
        ckpt["best_val_error"],
        ckpt["best"],
        ckpt["elapsed_seconds"],
        EpochSums(**ckpt["partial"]),
        list(ckpt["metrics"]),
    )
    here = {**run.provenance[-1], "from_step": ckpt["step"]}
    saved = list(ckpt["provenance"])
    run.provenance = saved if saved and provenance.same_place(saved[-1], here) else [*saved, here]


def saved_config(run: Run) -> dict:
    """The run's configuration as checkpoints and config.json hold it: its flags and its experiment."""
    return {**as_dict(run.config), "experiment": run.experiment.name}


def reset_files(run: Run) -> None:
    """Make metrics.jsonl hold exactly the epochs the checkpoint holds (none for a new run),
    and config.json the configuration the run continues with (a resume may change some flags)."""
    if run.place.dist.main:
        atomic_write_text("".join(json.dumps(r) + "\n" for r in run.progress.metrics), run.run_dir / "metrics.jsonl")
        atomic_write_text(json.dumps(saved_config(run), indent=2) + "\n", run.run_dir / "config.json")


def announce(run: Run, resumed: bool) -> None:
    """The run's one-line description."""
    a, d, s, place = run.config, run.data, run.schedule, run.place
    run.log(
        f"{run.experiment.run_name(a)}: {run.num_parameters:,} parameters | {len(d.train_x)} train / "
        f"{len(d.val_x)} val / {len(d.test_x)} test images | device {place.device.type}, {place.precision.describe()}"
        f"{', channels_last' if place.memory_format == torch.channels_last else ', NCHW'}"
        f"{f' x {place.dist.world} processes' if place.dist.world > 1 else ''} | "
        f"{a.optimizer or s.optimizer} lr {a.lr if a.lr is not None else s.lr:g}, {s.epochs} epochs x "
        f"{run.settings.steps_per_epoch} steps of {run.settings.batch_size}"
        + (f" | resumed {where_it_stands(run)}" if resumed else "")
    )


def where_it_stands(run: Run) -> str:
    """ "after epoch E", or "at step S (epoch E, step K of N)" in the middle of one."""
    p = run.progress
    if not p.partial.position:
        return f"after epoch {p.epoch}"
    return f"at step {p.step} (epoch {p.epoch + 1}, step {p.partial.position} of {run.settings.steps_per_epoch})"


def epoch_record(run: Run, stats: EpochStats, errors: dict[str, float]) -> dict:
    """One line of metrics.jsonl; updates the run's progress (epoch, best, elapsed time)."""
    p = run.progress
    p.epoch += 1
    p.elapsed_seconds += time.time() - stats.started + stats.resumed_seconds
    val_error, test_error = errors["val_error"], errors["test_error"]
    record = {
        "epoch": p.epoch,
        "step": p.step,
        "train_loss": stats.train_loss,
        "train_error": stats.train_error,
        **errors,
        "lr": float(run.state.optimizer.param_groups[0]["lr"]),
        "images_per_s": stats.images_per_s,
        "epoch_seconds": stats.seconds,
        "elapsed_seconds": p.elapsed_seconds,
        "device": run.place.device.type,
        "processes": run.place.dist.world,
    }
    if val_error < p.best_val_error:
        p.best_val_error = val_error
        p.best = {"epoch": p.epoch, "step": p.step, "val_error": val_error, "test_error": test_error}
    p.metrics.append(record)  # saved in the checkpoint: metrics.jsonl can always be rebuilt from it
    return record


def checkpoint(run: Run) -> dict:
    """Everything `restore` needs to continue the run exactly, at an epoch's end or in the
    middle of one (then with the data order of the epoch in flight, to draw it again)."""
    p, state = run.progress, run.state
    rng = rng_state(run.generators, run.place.device)
    if p.partial.position:
        rng["data_order"] = run.order_state
    return {
        "format": CHECKPOINT_FORMAT,
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "epoch": p.epoch,
        "step": p.step,
        "best_val_error": p.best_val_error,
        "best": p.best,
        "rng_per_rank": all_gather(rng, run.place.dist),
        "config": saved_config(run),
        "train_indices": run.data.train_indices,
        "val_indices": run.data.val_indices,
        "num_parameters": run.num_parameters,
        "elapsed_seconds": p.elapsed_seconds,
        "processes": run.place.dist.world,
        "partial": dataclasses.asdict(p.partial),
        "metrics": p.metrics,
        "scaler": state.scaler.state_dict() if state.scaler is not None else None,
        "placement": placement(run),
        "provenance": run.provenance,
    }


def placement(run: Run) -> dict:
    """Where and how the run computes now (not part of its configuration: it may change on resume)."""
    place = run.place
    return {
        "device": place.device.type,
        "precision": place.precision.name,
        "processes": place.dist.world,
        "channels_last": place.memory_format == torch.channels_last,
    }


def note_moves(run: Run, saved: dict) -> None:
    """One line when a resumed run computes elsewhere or otherwise than before."""
    now = placement(run)
    changed = [f"{k} {saved[k]} -> {now[k]}" for k in now if saved[k] != now[k]]
    if changed:
        run.log(f"note: the run moved: {', '.join(changed)}")


def on_main_process(run: Run, write: Callable[[], None]) -> None:
    """WRITE on rank 0; a user error there (a full disk) stops every process, not only rank 0."""
    error = None
    if run.place.dist.main:
        try:
            write()
        except UserError as e:
            error = str(e)
    error = broadcast_object(error, run.place.dist)
    if error is not None:
        raise UserError(error)


def save_epoch(run: Run, record: dict, writer) -> None:
    """best.pt on a new best, last.pt, then metrics.jsonl and TensorBoard: a line in the
    metrics always has its checkpoint."""
    state = checkpoint(run)

    def write() -> None:
        if run.progress.best.get("epoch") == run.progress.epoch:
            atomic_save(state, run.run_dir / "best.pt")
        atomic_save(state, run.run_dir / "last.pt")
        append_line(json.dumps(record), run.run_dir / "metrics.jsonl")
        step = record["step"]
        writer.add_scalar("train/loss", record["train_loss"], step)
        writer.add_scalar("train/accuracy", 100 - record["train_error"], step)
        for key in ("val_error", "val_error_running", "test_error", "lr", "images_per_s"):
            if key in record:
                writer.add_scalar(key, record[key], step)
        writer.flush()

    on_main_process(run, write)


def save_interrupted(run: Run) -> Path:
    """last.pt at the step a signal stopped: the epoch in flight resumes from there."""
    state = checkpoint(run)  # the time spent on the epoch so far is in progress.partial
    on_main_process(run, lambda: atomic_save(state, run.run_dir / "last.pt"))
    return run.run_dir / "last.pt"


def log_epoch(run: Run, record: dict) -> None:
    run.log(
        f"epoch {record['epoch']}/{run.schedule.epochs} step {record['step']} | loss {record['train_loss']:.4f} "
        f"train err {record['train_error']:.2f}% | val err {record['val_error']:.2f}% test err {record['test_error']:.2f}% | "
        f"lr {record['lr']:.3g} | {record['images_per_s']:.0f} img/s | {format_time(record['epoch_seconds'])}/epoch, "
        f"ETA {format_time(run.eta())}",
        flush=True,
    )


def should_stop(run: Run, epoch: int) -> bool:
    """Early stopping: --patience epochs have passed without a better validation error."""
    patience, best = run.config.patience, run.progress.best
    if patience is not None and best and epoch - best["epoch"] >= patience:
        run.log(f"early stop after epoch {epoch}: no better validation error for {patience} epochs")
        return True
    return False


def run_epochs(run: Run, writer) -> str | None:
    """Train, evaluate and save epoch after epoch; returns why it stopped before the
    schedule's end ("stop-after", "early", a signal's name) or None."""
    with run.stop:  # SIGTERM/SIGINT: finish the step in flight, save it, leave
        for epoch in range(run.progress.epoch, run.schedule.epochs):
            if should_stop(run, epoch):
                return "early"
            stats = train_one_epoch(run, epoch)
            if stats is None:  # the processes agreed on a signal in the middle of the epoch
                save_interrupted(run)
                return signal.Signals(run.stop.decided).name
            record = epoch_record(run, stats, evaluate_run(run))
            save_epoch(run, record, writer)
            log_epoch(run, record)
            if run.stop.agreed(
                run.place.dist, run.place.device, True
            ):  # signalled while evaluating or saving: last.pt is this epoch
                return signal.Signals(run.stop.decided).name
            if run.config.stop_after is not None and run.config.stop_after <= record["epoch"] < run.schedule.epochs:
                return "stop-after"
    return None


def launcher(dist: Distributed) -> str:
    """How the continue command starts the script: as this run was, alone or under torchrun on one machine."""
    return f"torchrun --standalone --nproc-per-node {dist.world}" if dist.world > 1 else "python"


def report_end(run: Run, reason: str | None) -> None:
    """The run's last line: its result, or how to continue it."""
    p, script, last = run.progress, run.experiment.script, run.run_dir / "last.pt"
    name = configuration_name(run.experiment, run.config)  # the run's own name may differ (--run-name, seeds.py)
    name = name if run.run_dir.name == name else f"{run.run_dir.name} ({name})"
    again = f"{launcher(run.place.dist)} {script} -r {last}"
    if reason == "stop-after":
        run.log(f"stopped after epoch {p.epoch} (--stop-after); continue with: {again}")
    elif reason not in (None, "early"):
        run.log(f"{reason}: saved {last} {where_it_stands(run)}; continue with: {again}", flush=True)
    else:
        best = p.best
        run.log(
            f"final: {name} test error {best['test_error']:.2f}% (best validation epoch {best['epoch']}, "
            f"val error {best['val_error']:.2f}%) | {run.num_parameters:,} parameters ({run.num_parameters / 1e6:.3f}M) "
            f"| {run.experiment.paper_result(run.config)}"
        )


def fit(experiment: Experiment, argv: list[str] | None = None) -> dict:
    """Run (or resume) one training run of EXPERIMENT; returns its final summary.

    Under ``torchrun --nproc_per_node=N`` it trains data-parallel: every process takes
    its 1/N share of each global batch of --batch-size images, and only rank 0 writes.
    """
    config, ckpt = resolve_args(experiment, argv)
    run = set_up(experiment, config, ckpt)
    try:
        if ckpt is not None:
            restore(run, ckpt)
            note_moves(run, ckpt["placement"])
        reset_files(run)
        prepare_step(run.state, run.place, run.config.compile)
        from torch.utils.tensorboard import SummaryWriter  # imported late: slow, and only needed here

        writer = (
            SummaryWriter(str(run.log_dir), purge_step=run.progress.step if ckpt else None)
            if run.place.dist.main
            else None
        )
        announce(run, resumed=ckpt is not None)
        run.session_start = (time.time(), run.progress.step)
        try:
            reason = run_epochs(run, writer)
        finally:
            if writer:
                writer.close()
        distributed.barrier(run.place.dist)  # no process leaves the group while another still saves
        report_end(run, reason)
    finally:
        release_run_lock(run.lock)
    summary = {
        "name": configuration_name(experiment, config),
        "num_parameters": run.num_parameters,
        **run.progress.best,
    }
    return {**summary, "stopped": reason} if reason not in (None, "early") else summary


def main(experiment: Experiment, argv: list[str] | None = None) -> int:
    """The command line of EXPERIMENT: 0 on success, 1 with one line on stderr for a user error."""
    report = distributed.is_main_process()  # under torchrun, one process reports
    if distributed.world_size() > 1:  # torchrun reports a crashed worker's signal; this adds its Python stack
        faulthandler.enable()
    try:
        stopped = fit(experiment, argv).get("stopped")
    except UserError as e:
        if report:
            print(f"error: {e}", file=sys.stderr)
        elif (
            not distributed.joined()
        ):  # refused before any process joined: torchrun ends this one once rank 0 has reported
            distributed.await_the_end()
        distributed.shut_down(after_error=True)
        return 1
    except KeyboardInterrupt:  # before training began: the signal handlers were not yet in place
        if report:
            print("interrupted before training began: nothing new was saved", file=sys.stderr)
        return 130
    finally:
        distributed.shut_down()
    return (
        128 + signal.Signals[stopped].value if isinstance(stopped, str) and stopped in signal.Signals.__members__ else 0
    )
