"""fp16 autocast with its GradScaler, on the CPU: the loss scale and the overflowed steps
across an epoch, a mid-epoch checkpoint and a resume.

The loops are driven directly (`runner.set_up`, `engine.train_one_epoch`, `runner.checkpoint`,
`runner.restore`) on the tiny MNIST: 100 training images, batch 20, 5 steps an epoch.
"""

import contextlib
import io
import math
import signal

import pytest
import torch

import checkpointing
import engine
import mnist
import runner
from experiment import parse_args

CROSS_ENTROPY = torch.nn.functional.cross_entropy
FLAGS = [
    "--val-size",
    "20",
    "--batch-size",
    "20",
    "--epochs",
    "2",
    "--amp",
    "fp16",
    "--no-download",
    "--no-progress",
    "--device",
    "cpu",
]


class Losses:
    """engine's cross-entropy, recording every training step's finite loss; the steps (counted
    from 1) in OVERFLOW give an infinite loss, as an overflowed fp16 forward does."""

    def __init__(self, monkeypatch, overflow: set[int]):
        self.overflow, self.calls, self.finite = overflow, 0, []
        monkeypatch.setattr(engine.F, "cross_entropy", self)

    def __call__(self, logits, y):
        self.calls += 1
        loss = CROSS_ENTROPY(logits, y)
        if self.calls in self.overflow:
            return loss * float("inf")
        self.finite.append(loss.detach().clone())
        return loss


class StopAt:
    """A stop request that reports SIGTERM once RUN has taken STEP steps (a signal, without one)."""

    def __init__(self, run, step: int):
        self.run, self.step, self.decided = run, step, 0

    def agreed(self, dist, device, check) -> int:
        self.decided = signal.SIGTERM if self.run.progress.step == self.step else 0
        return self.decided


@contextlib.contextmanager
def fp16_run(folder, mnist_dir, ckpt: dict | None = None):
    """A fresh fp16 MNIST run in FOLDER, or one resumed from CKPT, ready to train."""
    argv = [
        *FLAGS,
        "--data-dir",
        str(mnist_dir),
        "--checkpoint-dir",
        str(folder / "ck"),
        "--log-dir",
        str(folder / "runs"),
    ]
    run = runner.set_up(mnist.MNIST, parse_args(mnist.MNIST, argv)[0], ckpt)
    try:
        if ckpt is not None:
            runner.restore(run, ckpt)
        engine.prepare_step(run.state, run.place, run.config.compile)
        yield run
    finally:
        checkpointing.release_run_lock(run.lock)


def saved(run) -> dict:
    """RUN's checkpoint as a file holds it (through torch.save and a weights-only load)."""
    buffer = io.BytesIO()
    torch.save(runner.checkpoint(run), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_a_resumed_fp16_run_goes_on_with_its_saved_loss_scale(tmp_path, mnist_dir, monkeypatch):
    """The GradScaler's state (its scale halved by an overflow) is saved and comes back on resume, not a fresh 2**16."""
    Losses(monkeypatch, overflow={2})
    with fp16_run(tmp_path, mnist_dir) as run:
        assert engine.train_one_epoch(run, 0) is not None
        scale = run.state.scaler.get_scale()
        ckpt = saved(run)
    assert scale == ckpt["scaler"]["scale"] == 2.0**15
    with fp16_run(tmp_path, mnist_dir, ckpt) as resumed:
        assert resumed.state.scaler.get_scale() == scale
        assert resumed.state.scaler.state_dict() == ckpt["scaler"]


def test_overflowed_steps_are_left_out_of_the_epochs_mean_loss(tmp_path, mnist_dir, monkeypatch):
    """One overflow in an epoch of 5 steps: its train_loss is the mean of the other 4 losses, exactly."""
    losses = Losses(monkeypatch, overflow={3})
    with fp16_run(tmp_path, mnist_dir) as run:
        stats = engine.train_one_epoch(run, 0)
    assert losses.calls == 5 and len(losses.finite) == 4
    total = torch.zeros(())
    for loss in losses.finite:  # in the loop's order and precision
        total += loss
    assert math.isfinite(stats.train_loss)
    assert stats.train_loss == pytest.approx(total.item() / 4, rel=1e-6, abs=0)


def test_a_mid_epoch_checkpoint_keeps_the_epochs_overflow_count(tmp_path, mnist_dir, monkeypatch):
    """Stopped after step 3 of 5, step 2 overflowed: `partial` holds that overflow, and the
    resumed epoch's loss is the uninterrupted epoch's."""
    Losses(monkeypatch, overflow={2})
    with fp16_run(tmp_path / "straight", mnist_dir) as run:
        straight = engine.train_one_epoch(run, 0).train_loss
    losses = Losses(monkeypatch, overflow={2})
    with fp16_run(tmp_path / "split", mnist_dir) as run:
        run.stop = StopAt(run, 3)
        assert engine.train_one_epoch(run, 0) is None
        ckpt = saved(run)
    assert ckpt["partial"]["position"] == 3 and ckpt["partial"]["overflowed"] == 1
    with fp16_run(tmp_path / "split", mnist_dir, ckpt) as resumed:
        assert resumed.progress.partial.overflowed == 1
        stats = engine.train_one_epoch(resumed, 0)
    assert losses.calls == 5 and len(losses.finite) == 4  # steps 4 and 5 after the resume
    assert math.isfinite(straight)
    assert stats.train_loss == pytest.approx(straight, rel=1e-6, abs=0)
