"""train.py: the CLI end to end, exact resume, crash safety, bad input, the data pipeline."""

import dataclasses
import math
import os
import pickle
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

import checkpointing
import data
import engine
import mnist
import runner
import train
from conftest import (
    HANG,
    REPO,
    as_rank,
    error_line,
    only_run,
    paused,
    run_folder,
    saved_model,
    wait_for_line,
    write_fake_cifar,
)
from experiment import Experiment, Schedule, parse_args

# 200 fake images: 160 train + 40 val, 40 test; batch 32 -> 5 steps an epoch.
SMALL = ["--depth", "10", "--batch-size", "32", "--val-size", "40", "--no-progress", "--no-download", "--device", "cpu"]


def run_args(tmp_path: Path, cifar_dir: Path, *extra: str) -> list[str]:
    return [
        *SMALL,
        "--data-dir",
        str(cifar_dir),
        "--checkpoint-dir",
        str(tmp_path / "ck"),
        "--log-dir",
        str(tmp_path / "runs"),
        *extra,
    ]


def cli(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "train.py", *args], cwd=REPO, capture_output=True, text=True, timeout=HANG, **kwargs
    )


def assert_same_state(a: dict, b: dict) -> None:
    """Model and optimizer tensors bit-identical."""
    for key, value in a["model"].items():  # tensors, and a hypernetized model's arguments (its extra state)
        assert torch.equal(value, b["model"][key]) if torch.is_tensor(value) else value == b["model"][key], key
    for pid, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][pid][name]), (pid, name)
    assert a["step"] == b["step"] and a["epoch"] == b["epoch"]


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def without_timing(metrics: list[dict]) -> list[dict]:
    """METRICS (a run's records) without the fields that measure time, which differ between runs."""
    return [{k: v for k, v in m.items() if not k.endswith("_seconds") and k != "images_per_s"} for m in metrics]


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_cli_end_to_end(tmp_path, cifar_dir):
    result = cli(run_args(tmp_path, cifar_dir, "--epochs", "2", "--run-name", "e2e"))
    assert result.returncode == 0, result.stderr
    run = tmp_path / "ck" / "e2e"
    assert (run / "last.pt").is_file() and (run / "best.pt").is_file()
    assert list((tmp_path / "runs" / "e2e").glob("events.out.tfevents.*"))
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and '"val_error"' in lines[0] and '"test_error"' in lines[0]
    assert "device cpu, float32, NCHW |" in result.stdout.splitlines()[0]  # the start-up line names the layout
    final = result.stdout.strip().splitlines()[-1]
    assert (
        final.startswith("final: e2e (hyper-10-1-epochs-2-batch-size-32-val-size-40) test error")
        and "parameters" in final
    )  # the run, and what it is
    ckpt = load(run / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["step"] == 10 and ckpt["config"]["depth"] == 10
    assert set(ckpt["rng_per_rank"][0]) >= {"torch", "numpy", "python", "data_order", "augment"}
    assert len(ckpt["val_indices"]) == 40 and len(ckpt["train_indices"]) == 160
    assert f"{ckpt['num_parameters']:,} parameters" in final


@pytest.mark.slow
def test_plain_run_uses_sgd(tmp_path, cifar_dir):
    assert train.main(run_args(tmp_path, cifar_dir, "--epochs", "1", "--plain")) == 0
    ckpt = load(only_run(tmp_path / "ck") / "last.pt")
    assert ckpt["optimizer"]["param_groups"][0]["nesterov"] is True
    assert not any("kernel_bank" in k for k in ckpt["model"])


def test_init_flag_names_the_run_and_builds_unit_scale_z():
    args, _ = parse_args(train.CIFAR10, ["--init", "scale-in-hypernet", "--depth", "10"])
    assert args.run_name == "hyper-10-1-init-scale-in-hypernet"
    assert parse_args(train.CIFAR10, ["--init", "scale-in-hypernet", "--plain"])[0].run_name == "wrn-40-1"
    assert parse_args(train.CIFAR10, [])[0].run_name == "hyper-40-1"
    torch.manual_seed(0)
    unit = train.build_model(args).kernel_bank
    old = train.build_model(dataclasses.replace(args, init="scale-in-z")).kernel_bank
    assert (unit.scale_in, old.scale_in) == ("hypernet", "z") and unit.z.std() > 0.7 > 0.15 > old.z.std()


def test_a_run_name_says_every_setting_that_changes_the_result():
    """Two budgets (or any two settings that change the result) never share a run folder;
    where and how a run executes does not change its name."""

    def name(experiment, *flags):
        return parse_args(experiment, list(flags))[0].run_name

    assert name(train.CIFAR10) == "hyper-40-1"
    assert name(train.CIFAR10, "--epochs", "10") == "hyper-40-1-epochs-10"
    assert (
        name(train.CIFAR10, "--seed", "2", "--precise-bn", "0", "--epochs", "10")
        == "hyper-40-1-epochs-10-precise-bn-0-seed2"
    )
    assert name(train.CIFAR10, "--plain", "--lr", "0.05") == "wrn-40-1-lr-0.05"
    assert name(train.CIFAR10, "--lr", "0.002", "--optimizer", "adam") == "hyper-40-1"  # the schedule's own, given
    assert name(train.CIFAR10, "--plain", "--lr", "0.002") == "wrn-40-1-lr-0.002"  # not plain's schedule lr (0.1)
    place = [
        "--data-dir",
        "elsewhere",
        "--no-download",
        "--device",
        "cpu",
        "--amp",
        "off",
        "--compile",
        "--stop-after",
        "3",
        "--eval-batch-size",
        "10",
        "--no-progress",
        "--checkpoint-dir",
        "ck",
        "--log-dir",
        "tb",
    ]
    assert name(train.CIFAR10, *place) == "hyper-40-1"
    assert name(train.CIFAR10, "--epochs", "10", "--run-name", "mine") == "mine"
    assert name(mnist.MNIST, "--epochs", "1") == "mnist-hyper-epochs-1"
    assert name(mnist.MNIST, "--protocol", "notebook") == "mnist-hyper-notebook"  # the protocol's own 50 epochs
    assert name(mnist.MNIST, "--protocol", "notebook", "--epochs", "100") == "mnist-hyper-notebook-epochs-100"


@pytest.mark.slow
@pytest.mark.parametrize(
    "flags,precision,channels_last",
    [(["--amp", "bf16"], "bf16", False), (["--amp", "fp16"], "fp16", False), (["--channels-last"], "fp32", True)],
)
def test_cuda_default_paths_run_on_cpu(flags, precision, channels_last, tmp_path, cifar_dir):
    """bf16 autocast, fp16 autocast with a GradScaler and channels_last (the CUDA defaults)
    train, save finite float32 weights, and resume exactly (the fp16 loss scale included)."""
    straight = run_args(tmp_path / "a", cifar_dir, "--epochs", "2", *flags)
    assert train.main(straight) == 0
    ckpt = load(only_run(tmp_path / "a" / "ck") / "last.pt")
    assert ckpt["placement"]["precision"] == precision and ckpt["placement"]["channels_last"] is channels_last
    assert (ckpt["scaler"] is not None) == (precision == "fp16")
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())
    assert all(t.dtype == torch.float32 for t in ckpt["model"].values() if t.is_floating_point())
    split = run_args(tmp_path / "b", cifar_dir, "--epochs", "2", *flags)
    assert train.main([*split, "--stop-after", "1"]) == 0
    assert train.main([*split, "-r"]) == 0
    assert_same_state(ckpt, load(only_run(tmp_path / "b" / "ck") / "last.pt"))


# ----------------------------------------------------------------------------- resume


@pytest.mark.slow
def test_resume_is_bit_identical(tmp_path, cifar_dir):
    straight = run_args(tmp_path / "a", cifar_dir, "--epochs", "2")
    assert train.main(straight) == 0
    split = run_args(tmp_path / "b", cifar_dir, "--epochs", "2")
    assert train.main([*split, "--stop-after", "1"]) == 0
    assert load(only_run(tmp_path / "b" / "ck") / "last.pt")["epoch"] == 1
    assert train.main([*split, "-r"]) == 0
    a = load(only_run(tmp_path / "a" / "ck") / "last.pt")
    b = load(only_run(tmp_path / "b" / "ck") / "last.pt")
    assert_same_state(a, b)
    assert a["best"] == b["best"]
    assert (only_run(tmp_path / "b" / "ck") / "metrics.jsonl").read_text().count("\n") == 2


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_matches_uninterrupted(tmp_path):
    data = write_fake_cifar(tmp_path / "data", per_batch=100)  # 460 train images: 14 steps an epoch
    args = run_args(tmp_path / "killed", data, "--epochs", "3")
    proc = subprocess.Popen(
        [sys.executable, *paused(19, 1, "train.py", args)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_line(proc, "paused before step 19")  # step 5 of epoch 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    last = run_folder(train.CIFAR10, args) / "last.pt"
    assert load(last)["epoch"] == 1  # what was last saved is intact
    resumed = cli([*args, "-r"])
    assert resumed.returncode == 0, resumed.stderr
    assert cli(run_args(tmp_path / "straight", data, "--epochs", "3")).returncode == 0
    assert_same_state(load(last), load(only_run(tmp_path / "straight" / "ck") / "last.pt"))


def test_atomic_save_uses_the_usual_permissions(tmp_path):
    old = os.umask(0o027)
    try:
        checkpointing.atomic_save({"epoch": 1}, tmp_path / "a.pt")
    finally:
        os.umask(old)
    assert (tmp_path / "a.pt").stat().st_mode & 0o777 == 0o640


def test_atomic_save_keeps_previous_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpointing.atomic_save({"epoch": 1}, path)

    def dies_midway(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpointing.torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        checkpointing.atomic_save({"epoch": 2}, path)
    assert load(path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--depth", "12"], "6N+4"),
        (["--width", "0"], "must be >= 1"),
        (["--epochs", "0"], "must be >= 1"),
        (["--batch-size", "0"], "must be >= 1"),
    ],
)
def test_bad_flags_are_argparse_errors(flags, message, capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(train.CIFAR10, flags)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_data_names_data_dir(tmp_path, capsys):
    line = error_line(train.main(run_args(tmp_path, tmp_path)), capsys)  # a folder without the dataset
    assert "--data-dir" in line and "cifar-10-batches-py" in line


def test_corrupt_batch_file_is_a_clear_error(tmp_path, capsys):
    data = write_fake_cifar(tmp_path / "data")
    batch = data / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:500])
    assert "data_batch_3 is not a CIFAR-10 batch file" in error_line(train.main(run_args(tmp_path, data)), capsys)


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned_marker",))


def test_malicious_cifar_pickle_is_refused_and_runs_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = write_fake_cifar(tmp_path / "data")
    with open(data / "cifar-10-batches-py" / "data_batch_1", "wb") as f:
        pickle.dump({b"data": RunsCode(), b"labels": [0]}, f)
    line = error_line(train.main(run_args(tmp_path, data)), capsys)
    assert "refusing to load" in line and "posix.system" in line
    assert not (tmp_path / "pwned_marker").exists()


def test_unwritable_checkpoint_dir_fails_before_training(tmp_path, cifar_dir, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    args = run_args(tmp_path, cifar_dir)
    args[args.index("--checkpoint-dir") + 1] = str(blocker / "ck")
    assert "checkpoint directory" in error_line(train.main(args), capsys)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("events*"))


def test_unwritable_log_dir_fails_before_training(tmp_path, cifar_dir, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    args = run_args(tmp_path, cifar_dir)
    args[args.index("--log-dir") + 1] = str(blocker)
    assert "log directory" in error_line(train.main(args), capsys)
    assert not list((tmp_path / "ck").glob("*/last.pt"))


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, cifar_dir, capsys, monkeypatch):
    args = run_args(tmp_path, cifar_dir, "--epochs", "3")
    real = torch.nn.functional.cross_entropy
    calls = []

    def nan_after_first_epoch(logits, y):
        calls.append(1)
        loss = real(logits, y)
        return loss * float("nan") if len(calls) > 5 else loss

    monkeypatch.setattr(engine.F, "cross_entropy", nan_after_first_epoch)
    line = error_line(train.main(args), capsys)
    assert "training loss became nan" in line
    assert load(only_run(tmp_path / "ck") / "last.pt")["epoch"] == 1


def overflow_at(steps, monkeypatch):
    """Make the cross-entropy of the given training steps (counted from 1) infinite, as an
    overflowed fp16 forward makes it; evaluation computes none."""
    real, calls = torch.nn.functional.cross_entropy, []

    def loss(logits, y):
        calls.append(1)
        return real(logits, y) * (float("inf") if steps(len(calls)) else 1.0)

    monkeypatch.setattr(engine.F, "cross_entropy", loss)


@pytest.mark.slow
def test_one_overflowed_fp16_step_is_skipped_and_the_run_goes_on(tmp_path, cifar_dir, monkeypatch):
    """fp16: the GradScaler skips an overflowed step; the run neither stops nor logs an infinite loss."""
    overflow_at(lambda step: step == 3, monkeypatch)
    assert train.main(run_args(tmp_path, cifar_dir, "--epochs", "2", "--amp", "fp16")) == 0
    ckpt = load(only_run(tmp_path / "ck") / "last.pt")
    assert ckpt["epoch"] == 2 and all(math.isfinite(m["train_loss"]) for m in ckpt["metrics"])
    assert ckpt["scaler"]["scale"] < 2.0**16  # the scaler saw the overflow and halved its scale


@pytest.mark.slow
def test_fp16_run_whose_every_loss_overflows_stops_in_one_line(tmp_path, cifar_dir, capsys, monkeypatch):
    overflow_at(lambda step: step > 5, monkeypatch)  # from epoch 2 on (5 steps an epoch)
    line = error_line(train.main(run_args(tmp_path, cifar_dir, "--epochs", "3", "--amp", "fp16")), capsys)
    assert "every fp16 training loss of the last 5 steps overflowed" in line and "last good checkpoint" in line
    assert load(only_run(tmp_path / "ck") / "last.pt")["epoch"] == 1


@pytest.mark.slow
def test_bare_resume_before_any_checkpoint_starts_the_run_and_then_continues_it(tmp_path, tiny_cifar, capsys):
    """One command for a job's first start and every restart (a requeue, a torchrun restart)."""
    straight = tiny_args(tmp_path / "a", tiny_cifar, "--epochs", "2")
    assert train.main(straight) == 0
    again = [*tiny_args(tmp_path / "b", tiny_cifar, "--epochs", "2", "--stop-after", "1"), "-r"]
    last = run_folder(train.CIFAR10, again) / "last.pt"
    capsys.readouterr()
    assert train.main(again) == 0
    first = capsys.readouterr().out
    assert first.count(f"no checkpoint at {last} yet: starting the run") == 1 and "stopped after epoch 1" in first
    assert load(last)["epoch"] == 1 and load(last)["config"]["resume"] is None  # saved as a new run's
    assert train.main(again) == 0  # the same command: --stop-after 1 is behind it now
    second = capsys.readouterr().out
    assert "resumed after epoch 1" in second and "no checkpoint" not in second
    a, b = load(only_run(tmp_path / "a" / "ck") / "last.pt"), load(last)
    assert_same_state(a, b)
    assert a["best"] == b["best"] and b["epoch"] == 2
    assert (last.parent / "metrics.jsonl").read_text().count("\n") == 2


def test_resume_of_a_missing_path_is_an_error(tmp_path, cifar_dir, capsys):
    """-r PATH never starts a run: a mistyped PATH must not begin a new one beside the real one."""
    typo = tmp_path / "ck" / "hyper-10-1" / "lats.pt"
    line = error_line(train.main([*run_args(tmp_path, cifar_dir), "-r", str(typo)]), capsys)
    assert line == f"error: no checkpoint at {typo}"
    assert not (tmp_path / "ck").exists() and not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_resume_with_conflicting_model_is_an_error(tmp_path, cifar_dir, capsys):
    args = run_args(tmp_path, cifar_dir, "--epochs", "2", "--run-name", "r")
    assert train.main([*args, "--stop-after", "1"]) == 0
    capsys.readouterr()
    line = error_line(train.main([*args, "--width", "2", "-r"]), capsys)
    assert "--width" in line


@pytest.mark.slow
def test_new_run_does_not_overwrite_an_existing_one(tmp_path, cifar_dir, capsys):
    args = run_args(tmp_path, cifar_dir, "--epochs", "1")
    assert train.main(args) == 0
    before = (only_run(tmp_path / "ck") / "last.pt").read_bytes()
    capsys.readouterr()
    assert "resume it with -r" in error_line(train.main(args), capsys)
    assert (only_run(tmp_path / "ck") / "last.pt").read_bytes() == before


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["garbage", "truncated", "foreign", "malicious", "incomplete", "mismatched"])
def test_bad_resume_file_is_one_clear_line(kind, tmp_path, cifar_dir):
    bad = tmp_path / "bad.pt"
    if kind == "garbage":
        bad.write_bytes(os.urandom(4096))
    elif kind == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, bad)
    elif kind == "malicious":
        torch.save({"format": checkpointing.CHECKPOINT_FORMAT, "x": RunsCode()}, bad)
    elif kind == "incomplete":
        torch.save({"format": checkpointing.CHECKPOINT_FORMAT, "model": {}}, bad)
    elif kind == "mismatched":  # every key present, but the weights are not this model's
        good = run_args(tmp_path / "good", cifar_dir, "--epochs", "1")
        assert train.main(good) == 0
        ckpt = load(only_run(tmp_path / "good" / "ck") / "last.pt")
        ckpt["model"] = {"w": torch.zeros(3)}
        torch.save(ckpt, bad)
    else:
        torch.save({"format": checkpointing.CHECKPOINT_FORMAT, "model": {"w": torch.zeros(10_000)}}, bad)
        bad.write_bytes(bad.read_bytes()[:20_000])
    result = cli([*run_args(tmp_path, cifar_dir), "-r", str(bad)])
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(bad) in lines[0], result.stderr
    assert not (REPO / "pwned_marker").exists()


# ----------------------------------------------------------------------------- data pipeline


def test_schedule_rescales_paper_boundaries():
    args = parse_args(train.CIFAR10, ["--epochs", "4"])[0]
    sched, total, epochs = train.schedule_for(args, steps_per_epoch=100)
    assert (total, epochs) == (400, 4)
    assert [train.lr_multiplier(s, sched, total) for s in (0, 99, 100, 199, 200, 300, 399)] == [
        1,
        1,
        0.5,
        0.5,
        0.1,
        0.025,
        0.025,
    ]
    args = parse_args(train.CIFAR10, ["--plain"])[0]
    sched, total, epochs = train.schedule_for(args, steps_per_epoch=351)
    assert epochs == 399 and sched.optimizer == "sgd"  # 140k paper steps at 351 steps/epoch


@pytest.mark.slow
def test_checkpoint_lacking_a_flag_is_refused_in_one_line(tmp_path, cifar_dir, capsys):
    args = run_args(tmp_path, cifar_dir, "--epochs", "2", "--stop-after", "1")
    assert train.main(args) == 0
    last = only_run(tmp_path / "ck") / "last.pt"
    old = torch.load(last, weights_only=False)
    del old["config"]["init"]  # a configuration this code cannot rebuild the model from
    torch.save(old, last)
    before = last.read_bytes()
    capsys.readouterr()
    line = error_line(train.main([*args, "-r"]), capsys)
    assert "is incomplete" in line and "--init" in line
    assert last.read_bytes() == before


@pytest.mark.slow
@pytest.mark.parametrize("progress", ["--progress", "--no-progress"])
def test_paper_schedule_on_a_cpu_says_once_how_long_it_would_take(progress, tmp_path, cifar_dir, capfd):
    args = [*run_args(tmp_path, cifar_dir, "--stop-after", "2"), progress]  # no --epochs: the paper's 672k steps
    assert train.main(args) == 0
    err = capfd.readouterr().err
    assert err.count("note: the paper schedule is 672,000 steps: about ") == 1 and "Use --epochs N" in err


@pytest.mark.slow
def test_the_printed_resume_command_works_as_printed(tmp_path, cifar_dir, capsys, monkeypatch):
    """A run started with its own --data-dir, --checkpoint-dir and --log-dir, then stopped: the
    command it prints resumes it from another folder, where its files are, with nothing added."""
    ck, logs = tmp_path / "elsewhere" / "ck", tmp_path / "elsewhere" / "tb"
    args = [
        *SMALL,
        "--data-dir",
        str(cifar_dir),
        "--checkpoint-dir",
        str(ck),
        "--log-dir",
        str(logs),
        "--epochs",
        "2",
        "--precise-bn",
        "0",
        "--stop-after",
        "1",
    ]
    assert train.main(args) == 0
    hint = capsys.readouterr().out.strip().splitlines()[-1]
    command = hint.split("continue with: ")[1].split()
    assert command[:2] == ["python", "train.py"]
    monkeypatch.chdir(tmp_path)  # another folder: no ./data, no ./checkpoints
    assert train.main(command[2:]) == 0
    ckpt = load(only_run(ck) / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["config"]["data_dir"] == str(cifar_dir) and ckpt["config"]["precise_bn"] == 0
    assert (
        not (tmp_path / "checkpoints").exists()
        and not (tmp_path / "runs").exists()
        and not (tmp_path / "data").exists()
    )
    assert len(list((only_run(logs)).glob("events.out.tfevents.*"))) == 2  # both sessions logged in one place
    monkeypatch.chdir(only_run(ck))  # and from inside the run's folder, by its file name alone
    assert train.main(["-r", "last.pt", "--epochs", "2"]) == 0  # nothing left to do: it only reports
    assert sorted(p.name for p in (only_run(ck)).iterdir() if not p.name.startswith(".")) == [
        "best.pt",
        "config.json",
        "last.pt",
        "metrics.jsonl",
    ]


def test_sync_bn_on_a_cpu_is_refused_in_one_line_without_torchrun(tmp_path, cifar_dir, capsys):
    assert "--sync-bn needs CUDA" in error_line(train.main(run_args(tmp_path, cifar_dir, "--sync-bn")), capsys)
    assert not (tmp_path / "ck").exists()  # refused before anything was written


def test_a_failed_start_leaves_no_folder_it_made(tmp_path, capsys):
    """No dataset: the run's checkpoint and TensorBoard folders (and their new parents) go again."""
    empty = tmp_path / "empty"
    empty.mkdir()
    args = [
        *SMALL,
        "--data-dir",
        str(empty),
        "--checkpoint-dir",
        str(tmp_path / "ck"),
        "--log-dir",
        str(tmp_path / "tb" / "x"),
    ]
    assert error_line(train.main(args), capsys).startswith("error: no CIFAR-10 at")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_a_mistyped_data_dir_is_refused_not_created(tmp_path, capsys):
    """Online, a missing --data-dir would be made and downloaded into: a typo is flagged instead."""
    args = run_args(tmp_path, tmp_path / "typo")
    args.remove("--no-download")
    assert error_line(train.main(args), capsys).startswith(f"error: --data-dir {tmp_path / 'typo'} is not a folder")
    assert list(tmp_path.iterdir()) == []


def test_eta_after_a_resume_is_not_inflated_by_the_first_evaluation(monkeypatch):
    # Resumed 2 steps before the end of epoch 2 of 10 (351 steps each); the evaluation then took
    # 90 s, so the session has spent 94 s on 2 steps. The run so far averaged 2 s a step.
    monkeypatch.setattr(time, "time", lambda: 1000.0)
    schedule = Schedule("adam", 0.002, 10, 3510, lambda step: 1.0)
    metrics = [{"step": 351, "elapsed_seconds": 702.0}]
    run = types.SimpleNamespace(
        session_start=(906.0, 700),
        schedule=schedule,
        settings=types.SimpleNamespace(steps_per_epoch=351),
        progress=engine.Progress(epoch=2, step=702, metrics=metrics),
    )
    assert engine.Run.eta(run) == pytest.approx(2.0 * (3510 - 702))
    run.session_start = (1000.0 - 351 * 3.0, 702 - 351)  # a whole epoch in this session: its own rate
    assert engine.Run.eta(run) == pytest.approx(3.0 * (3510 - 702))


@pytest.mark.slow
def test_a_checkpoint_from_another_kind_of_device_resumes_with_a_fresh_augmentation_stream(tmp_path, cifar_dir, capsys):
    args = run_args(tmp_path, cifar_dir, "--epochs", "2", "--precise-bn", "0")
    assert train.main([*args, "--stop-after", "1"]) == 0
    last = only_run(tmp_path / "ck") / "last.pt"
    ckpt = load(last)
    ckpt["rng_per_rank"][0]["augment"] = torch.zeros(16, dtype=torch.uint8)  # a CUDA generator's state is 16 bytes
    torch.save(ckpt, last)
    capsys.readouterr()
    assert train.main([*args, "-r"]) == 0
    assert "augmentation stream was drawn on another kind of device" in capsys.readouterr().out
    assert load(last)["epoch"] == 2


def tiny_args(tmp_path, data_dir, *extra: str) -> list[str]:
    """`run_args` for `tiny_cifar`: 40 training images, 10 validation; batch 8 (5 steps an epoch)."""
    return run_args(tmp_path, data_dir, "--val-size", "10", "--batch-size", "8", *extra)


def stamped_cifar(seen: list[torch.Tensor]) -> Experiment:
    """CIFAR-10 whose training images carry their own index (two pixels), and an
    augmentation that records the indices of every batch it is given (and changes nothing)."""

    def load_data(data_dir, download):
        train_x, train_y, test_x, test_y = data.load_cifar10(data_dir, download)
        index = torch.arange(len(train_x))
        train_x = train_x.clone()
        train_x[:, 0, 0, 0], train_x[:, 0, 0, 1] = (index % 256).to(torch.uint8), (index // 256).to(torch.uint8)
        return train_x, train_y, test_x, test_y

    def record(x, gen):
        seen.append(x[:, 0, 0, 0].long() + 256 * x[:, 0, 0, 1].long())
        return x

    return dataclasses.replace(train.CIFAR10, load_data=load_data, augment=lambda config: record)


@pytest.mark.slow
def test_every_step_trains_on_a_whole_batch(tmp_path, tiny_cifar):
    """Bug: a short last batch (steps per epoch rounded up, or the last slice taken short)."""
    seen = []
    args = tiny_args(tmp_path, tiny_cifar, "--epochs", "1", "--batch-size", "12")  # 40 images: 3 batches and 4 over
    assert runner.main(stamped_cifar(seen), args) == 0
    assert [len(batch) for batch in seen] == [12, 12, 12]
    assert len(set(torch.cat(seen).tolist())) == 36  # no image twice in an epoch
    assert load(only_run(tmp_path / "ck") / "last.pt")["step"] == 40 // 12


@pytest.mark.slow
def test_torchrun_ranks_train_on_disjoint_halves_of_each_global_batch(tmp_path, tiny_cifar, monkeypatch):
    """Bug: every process training on the same share of the global batch (idx[:local_batch])."""
    shares = []
    for rank in (0, 1):
        seen = []
        with as_rank(rank, 2, tmp_path / f"store{rank}", monkeypatch):
            assert (
                runner.main(stamped_cifar(seen), tiny_args(tmp_path / f"rank{rank}", tiny_cifar, "--epochs", "1")) == 0
            )
        shares.append(seen)
    assert [len(s) for s in shares] == [5, 5] and all(len(b) == 4 for s in shares for b in s)
    for a, b in zip(*shares):  # step by step: the two halves of one global batch of 8
        assert not set(a.tolist()) & set(b.tolist())
    every = torch.cat([torch.cat(s) for s in shares]).tolist()
    assert len(every) == len(set(every)) == 40  # together: each training image once in the epoch


@pytest.mark.slow
def test_explicit_optimizer_and_lr_are_honoured(tmp_path, tiny_cifar):
    """Bug: an explicit --optimizer (or --lr) silently replaced by the schedule's default."""
    assert train.main(tiny_args(tmp_path, tiny_cifar, "--epochs", "1", "--optimizer", "sgd", "--lr", "0.05")) == 0
    group = load(only_run(tmp_path / "ck") / "last.pt")["optimizer"]["param_groups"][0]
    assert group.get("nesterov") is True and "betas" not in group and group["initial_lr"] == 0.05
    assert train.main(tiny_args(tmp_path / "plain", tiny_cifar, "--epochs", "1", "--optimizer", "adam", "--plain")) == 0
    group = load(only_run(tmp_path / "plain" / "ck") / "last.pt")["optimizer"]["param_groups"][0]
    assert "betas" in group and "nesterov" not in group and group["initial_lr"] == 0.1  # the plain schedule's lr


@pytest.mark.slow
def test_resume_refuses_a_different_epochs(tmp_path, tiny_cifar, capsys):
    """Bug: --epochs among the resumable changes (the schedule silently rescaled mid-run)."""
    args = tiny_args(tmp_path, tiny_cifar, "--epochs", "2")
    assert train.main([*args, "--stop-after", "1"]) == 0
    last = only_run(tmp_path / "ck") / "last.pt"
    before = last.read_bytes()
    capsys.readouterr()
    assert "--epochs" in error_line(train.main([*args, "-r", str(last), "--epochs", "3"]), capsys)
    assert last.read_bytes() == before


# ----------------------------------------------------------------------------- torchvision models


def torchvision_args(tmp_path: Path, data_dir: Path, *extra: str) -> list[str]:
    """A 2-epoch run of torchvision's ResNet-18 on `tiny_cifar` (5 steps of 8 an epoch)."""
    return [
        "--arch",
        "resnet18",
        "--epochs",
        "2",
        "--val-size",
        "10",
        "--batch-size",
        "8",
        "--no-progress",
        "--no-download",
        "--device",
        "cpu",
        "--data-dir",
        str(data_dir),
        "--checkpoint-dir",
        str(tmp_path / "ck"),
        "--log-dir",
        str(tmp_path / "runs"),
        *extra,
    ]


@pytest.mark.slow
@pytest.mark.parametrize("plain", [False, True])
def test_a_torchvision_model_trains_and_resumes_exactly(plain, tmp_path, tiny_cifar, capsys):
    """--arch resnet18 trains hypernetize(ResNet-18) (with --plain, ResNet-18 itself) with the
    same loop: named after the model, and a run stopped after epoch 1 and resumed with -r
    ends bit-identical to an uninterrupted one."""
    flags = ["--plain"] if plain else []
    assert train.main(torchvision_args(tmp_path / "a", tiny_cifar, *flags)) == 0
    assert train.main(torchvision_args(tmp_path / "b", tiny_cifar, *flags, "--stop-after", "1")) == 0
    assert train.main(torchvision_args(tmp_path / "b", tiny_cifar, *flags, "-r")) == 0
    name = "resnet18-epochs-2" if plain else "hyper-resnet18-epochs-2"
    a, b = (load(only_run(tmp_path / r / "ck") / "last.pt") for r in "ab")
    assert only_run(tmp_path / "a" / "ck").name.startswith(name)
    assert_same_state(a, b)
    assert without_timing(a["metrics"]) == without_timing(b["metrics"])
    model = saved_model(a["config"])
    assert any(k.startswith("banks.") for k in a["model"]) != plain
    assert a["num_parameters"] == sum(p.numel() for p in model.parameters())
    assert "no paper row: resnet18 is torchvision's" in capsys.readouterr().out


@pytest.mark.slow
def test_torchvision_runs_show_in_compare_with_their_gap_and_evaluate_as_recorded(tmp_path, tiny_cifar, capsys):
    """Two seeds each of resnet18 and hyper-resnet18: compare.py gives them their own section,
    with the hyper - plain gap; evaluate.py on best.pt prints the test error the run recorded,
    and writes nothing; diagrams.py draws their curves apart from the Wide-ResNets'."""
    import compare
    import diagrams
    import evaluate

    for flags in ([], ["--plain"]):
        for seed in ("0", "1"):
            assert train.main(torchvision_args(tmp_path, tiny_cifar, *flags, "--seed", seed)) == 0
    out = tmp_path / "results.md"
    assert compare.main(["--runs", str(tmp_path / "ck"), "--out", str(out)]) == 0
    section = out.read_text().split("## CIFAR-10: torchvision models")[1]
    assert "| hyper-resnet18, z_dim 64 | resnet18 | 2, 2 |" in section and "no row" in section
    best = tmp_path / "ck" / "hyper-resnet18-epochs-2-batch-size-8-val-size-10-seed1" / "best.pt"
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    capsys.readouterr()
    assert evaluate.main([str(best)]) == 0
    recorded = load(best)["best"]["test_error"]
    assert f"test error {recorded:.2f}% on 10 images | 515,818 parameters" in capsys.readouterr().out
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == files
    figures = tmp_path / "figures"  # their own curves; no kernel picture (their kernels are no kernel_bank's)
    assert diagrams.main(["--runs", str(tmp_path / "ck"), "--out", str(figures)]) == 0
    drawn = {p.name for p in figures.iterdir()}
    assert "curves_torchvision.png" in drawn and "curves_cifar.png" not in drawn
    assert not any(name.startswith("kernels_") for name in drawn)


def test_evaluate_refuses_a_missing_or_foreign_file_in_one_line(tmp_path, capsys):
    import evaluate

    assert "no checkpoint at" in error_line(evaluate.main([str(tmp_path / "none.pt")]), capsys)
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    assert "is not a checkpoint written by this train.py" in error_line(
        evaluate.main([str(tmp_path / "other.pt")]), capsys
    )


@pytest.mark.parametrize(
    "flags", [["--depth", "16"], ["--width", "2"], ["--shortcut", "conv"], ["--init", "scale-in-hypernet"]]
)
def test_wrn_flags_on_a_torchvision_model_are_refused_in_one_line(flags, tmp_path, tiny_cifar, capsys):
    line = error_line(train.main(torchvision_args(tmp_path, tiny_cifar, *flags)), capsys)
    assert line.startswith(f"error: {flags[0]} ") and "--arch" in line
    assert not (tmp_path / "ck").exists()


@pytest.mark.parametrize(
    "arch, why",
    [
        ("vit_b_16", "cannot classify these (3, 32, 32) images"),
        ("googlenet", "does not return one row of logits per image"),
    ],
)
def test_a_model_that_cannot_train_on_cifar_is_refused_before_any_step(arch, why, tmp_path, tiny_cifar, capsys):
    args = torchvision_args(tmp_path, tiny_cifar)
    args[1] = arch
    assert why in error_line(train.main(args), capsys)
    assert not (tmp_path / "ck").exists() and not (tmp_path / "runs").exists()
