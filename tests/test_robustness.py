"""What a kill, a preemption, a full disk, a bad number or a second process must not break."""

import argparse
import errno
import json
import os
import signal
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest
import torch

import checkpointing
import compare
import export
import train
from conftest import HANG, REPO, error_line, only_run, paused, run_folder, wait_for_line, write_fake_cifar
from experiment import parse_args

Usage = namedtuple("Usage", "total used free")
SMALL = ["--depth", "10", "--batch-size", "32", "--val-size", "40", "--no-progress", "--no-download", "--device", "cpu"]


def run_args(root: Path, data: Path, *extra: str) -> list[str]:
    return [
        *SMALL,
        "--data-dir",
        str(data),
        "--checkpoint-dir",
        str(root / "ck"),
        "--log-dir",
        str(root / "runs"),
        *extra,
    ]


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def epochs_in_metrics(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a["step"] == b["step"] and a["epoch"] == b["epoch"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for pid, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][pid][name]), (pid, name)


# ----------------------------------------------------------------------------- torn files


@pytest.mark.slow
def test_torn_metrics_line_does_not_block_resume(tmp_path, cifar_dir):
    args = run_args(tmp_path, cifar_dir, "--epochs", "3")
    assert train.main([*args, "--stop-after", "1"]) == 0
    run = only_run(tmp_path / "ck")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "step": 10, "train_lo')  # a kill in the middle of an append
    (run / ".last.pt.abc123.tmp").write_bytes(b"half a checkpoint")  # a kill in the middle of a save
    assert train.main([*args, "-r"]) == 0
    assert epochs_in_metrics(run) == [1, 2, 3]
    assert not list(run.glob(".*.tmp"))


@pytest.mark.slow
def test_kill_between_checkpoint_and_metrics_line_loses_no_epoch(tmp_path, cifar_dir):
    """The checkpoint is written before the metrics line; the checkpoint holds the records."""
    args = run_args(tmp_path, cifar_dir, "--epochs", "3")
    assert train.main([*args, "--stop-after", "1"]) == 0
    run = only_run(tmp_path / "ck")
    assert [r["epoch"] for r in load(run / "last.pt")["metrics"]] == [1]
    (run / "metrics.jsonl").write_text("")  # killed after last.pt was saved, before its line was appended
    assert train.main([*args, "-r"]) == 0
    assert epochs_in_metrics(run) == [1, 2, 3]


# ----------------------------------------------------------------------------- a full disk


@pytest.mark.slow
@pytest.mark.parametrize("failure", ["ENOSPC", "zip writer"])
def test_full_disk_is_one_line_and_keeps_what_was_saved(failure, tmp_path, cifar_dir, capsys, monkeypatch):
    args = run_args(tmp_path, cifar_dir, "--epochs", "3")
    real_save, saves = torch.save, []

    def fills_the_disk(obj, f):
        saves.append(1)
        if len(saves) <= 2:  # epoch 1: best.pt and last.pt
            return real_save(obj, f)
        f.write(b"partial")
        if failure == "ENOSPC":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing file data/3")

    monkeypatch.setattr(checkpointing.torch, "save", fills_the_disk)
    if failure == "zip writer":  # torch does not say why: the free space does
        monkeypatch.setattr(checkpointing.shutil, "disk_usage", lambda path: Usage(100, 100, 0))
    run = run_folder(train.CIFAR10, args)
    line = error_line(train.main(args), capsys)
    assert "the disk is full" in line and f"cannot write {run}{os.sep}" in line and ".pt" in line
    monkeypatch.undo()
    assert load(run / "last.pt")["epoch"] == 1 and load(run / "best.pt")["epoch"] == 1
    assert epochs_in_metrics(run) == [1]  # no line for the epoch whose checkpoint was never written
    assert sorted(p.name for p in run.iterdir()) == [".lock", "best.pt", "config.json", "last.pt", "metrics.jsonl"]


# ----------------------------------------------------------------------------- bad numbers and names


@pytest.mark.parametrize(
    "flags,flag",
    [
        (["--lr", "-1"], "--lr"),
        (["--lr", "nan"], "--lr"),
        (["--lr", "0"], "--lr"),
        (["--lr", "inf"], "--lr"),
        (["--weight-decay", "-5"], "--weight-decay"),
        (["--weight-decay", "nan"], "--weight-decay"),
        (["--seed", "-1"], "--seed"),
        (["--seed", "4294967296"], "--seed"),
        (["--run-name", "../../x"], "--run-name"),
        (["--run-name", "a/b"], "--run-name"),
        (["--run-name", ".."], "--run-name"),
    ],
)
def test_bad_numbers_and_run_names_are_one_line_naming_the_flag(flags, flag, capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(train.CIFAR10, flags)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and f"argument {flag}:" in err[0], err


def test_good_numbers_still_parse():
    args, _ = parse_args(
        train.CIFAR10, ["--lr", "1e-3", "--weight-decay", "0", "--seed", "7", "--run-name", "my-run_1"]
    )
    assert (args.lr, args.weight_decay, args.seed, args.run_name) == (1e-3, 0.0, 7, "my-run_1")


# ----------------------------------------------------------------------------- checkpoint formats


@pytest.mark.slow
def test_checkpoint_of_a_newer_format_is_refused_in_one_line(tmp_path, cifar_dir, capsys):
    args = run_args(tmp_path, cifar_dir, "--epochs", "2")
    assert train.main([*args, "--stop-after", "1"]) == 0
    last = only_run(tmp_path / "ck") / "last.pt"
    newer = load(last)
    newer["format"] = "hyperresnet-train-v9"
    torch.save(newer, last)
    capsys.readouterr()
    line = error_line(train.main([*args, "-r"]), capsys)
    assert "hyperresnet-train-v9" in line and "this code reads" in line


@pytest.mark.slow
def test_checkpoint_of_the_previous_format_is_refused_naming_it(tmp_path, cifar_dir, capsys):
    args = run_args(tmp_path, cifar_dir, "--epochs", "2", "--stop-after", "1")
    assert train.main(args) == 0
    last = only_run(tmp_path / "ck") / "last.pt"
    v2 = load(last)
    v2["format"] = "hyperresnet-train-v2"
    del v2["provenance"]
    torch.save(v2, last)
    before = last.read_bytes()
    capsys.readouterr()
    line = error_line(train.main([*args, "-r"]), capsys)
    assert "'hyperresnet-train-v2'" in line and "this code reads 'hyperresnet-train-v3'" in line and "git log" in line
    assert last.read_bytes() == before


# ----------------------------------------------------------------------------- signals and a second process


@pytest.fixture(scope="module")
def signal_data(tmp_path_factory) -> Path:
    return write_fake_cifar(tmp_path_factory.mktemp("sigdata"), per_batch=200)  # 960 train images: 30 steps an epoch


ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # bit-identical means the same thread count in every run


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, signal_data) -> dict:
    root = tmp_path_factory.mktemp("straight")
    result = subprocess.run(
        [sys.executable, "train.py", *run_args(root, signal_data, "--epochs", "3")],
        cwd=REPO,
        env=ONE_THREAD,
        capture_output=True,
        text=True,
        timeout=HANG,
    )
    assert result.returncode == 0, result.stderr
    return load(only_run(root / "ck") / "last.pt")


@pytest.mark.slow
def test_the_processes_tests_start_have_sigint_and_sigterm_at_their_defaults():
    """A suite started with both signals ignored (a background job ignores SIGINT) still
    starts its processes with them at their defaults, so that the signal tests mean something."""
    report = "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler, signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)"
    suite = (
        "import signal, subprocess, sys; import conftest; conftest.pytest_configure(None); "
        f"subprocess.run([sys.executable, '-c', {report!r}])"
    )

    def ignoring():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    done = subprocess.run(
        [sys.executable, "-c", suite],
        cwd=REPO / "tests",
        preexec_fn=ignoring,
        capture_output=True,
        text=True,
        timeout=HANG,
    )
    assert done.stdout.split() == ["True", "True"], done.stderr


EPOCH2_STEP5 = 35  # the 35th training step: step 5 of epoch 2's 30


def start(root: Path, data: Path, signals: int = 1) -> subprocess.Popen:
    """A 3-epoch run held before EPOCH2_STEP5 until it is signalled (SIGNALS 2: also in the save that follows)."""
    command = paused(EPOCH2_STEP5, signals, "train.py", run_args(root, data, "--epochs", "3"))
    proc = subprocess.Popen(
        [sys.executable, *command], cwd=REPO, env=ONE_THREAD, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    wait_for_line(proc, f"paused before step {EPOCH2_STEP5}")
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("signals", [("SIGTERM",), ("SIGINT", "SIGINT")])  # both signals; a second one during the save
def test_signal_mid_epoch_saves_that_step_and_resume_is_exact(signals, tmp_path, signal_data, uninterrupted):
    proc = start(tmp_path, signal_data, len(signals))
    last = run_folder(train.CIFAR10, run_args(tmp_path, signal_data, "--epochs", "3")) / "last.pt"
    os.kill(proc.pid, getattr(signal, signals[0]))
    if len(signals) > 1:
        wait_for_line(proc, "paused in the save")
        os.kill(proc.pid, getattr(signal, signals[1]))
    out, err = proc.communicate(timeout=HANG)
    assert proc.returncode == 128 + getattr(signal, signals[0]), err
    saved = load(last)
    assert (
        saved["epoch"] == 1 and saved["step"] == EPOCH2_STEP5 and saved["partial"]["position"] == 5
    )  # the step in flight, no more
    assert f"{signals[0]}: saved {last} at step {EPOCH2_STEP5} (epoch 2, step 5 of 30)" in out
    command = next(line for line in out.splitlines() if "continue with: " in line).split("continue with: ")[1].split()
    assert command == ["python", "train.py", "-r", str(last)]  # the path: it finds the run wherever it was named
    assert epochs_in_metrics(last.parent) == [1]

    resumed = subprocess.run(
        [sys.executable, *command[1:]], cwd=REPO, env=ONE_THREAD, capture_output=True, text=True, timeout=HANG
    )  # as printed
    assert resumed.returncode == 0, resumed.stderr
    assert f"| resumed at step {EPOCH2_STEP5} (epoch 2, step 5 of 30)" in resumed.stdout  # not "epoch 1"
    assert_same_weights(load(last), uninterrupted)
    assert epochs_in_metrics(last.parent) == [1, 2, 3]


@pytest.mark.slow
def test_second_process_on_the_same_run_is_refused(tmp_path, signal_data, capsys):
    proc = start(tmp_path, signal_data)
    last = run_folder(train.CIFAR10, run_args(tmp_path, signal_data, "--epochs", "3")) / "last.pt"
    try:
        before = last.read_bytes()
        line = error_line(train.main([*run_args(tmp_path, signal_data, "--epochs", "3"), "-r"]), capsys)
        assert "another process is training the run" in line
        assert proc.poll() is None  # the first one goes on, untouched
    finally:
        proc.kill()
        proc.communicate()
    assert load(last)["epoch"] == 1 and last.read_bytes() == before  # the first process's checkpoint is whole


# ----------------------------------------------------------------------------- the other scripts


def test_compare_in_a_fresh_clone_keeps_the_archived_results(tmp_path, monkeypatch):
    """No checkpoints yet: the default report still shows the committed runs."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "runs").symlink_to(REPO / "results" / "runs")
    assert compare.main(["--out", str(tmp_path / "results.md")]) == 0
    report = (tmp_path / "results.md").read_text()
    archived = [d.name for d in (REPO / "results" / "runs").iterdir() if d.is_dir()]
    assert len(archived) > 10 and all(f"`{name}`" in report and f"results/runs/{name}" in report for name in archived)


def test_bench_on_a_missing_device_is_one_line(capsys, monkeypatch):
    import bench

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert (
        error_line(bench.main(["--device", "cuda"]), capsys)
        == "error: --device cuda was given but CUDA is not available"
    )


def test_a_file_holding_objects_is_refused_without_advice_to_load_it_unsafely(tmp_path, capsys):
    """A pickle holding an object (what a crafted file would hold): one line saying what the
    file is not, and never torch's suggestion to retry with weights_only=False."""
    crafted = tmp_path / "crafted.pt"
    torch.save({"format": "hyperresnet-train-v3", "model": argparse.Namespace(a=1)}, crafted)
    for line in (error_line(train.main(["-r", str(crafted)]), capsys), error_line(export.main([str(crafted)]), capsys)):
        assert line.startswith(
            f"error: {crafted} is not a checkpoint written by train.py or mnist.py: it holds objects"
        )
        assert "weights_only" not in line and "False" not in line
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    line = error_line(train.main(["-r", str(tmp_path / "garbage.pt")]), capsys)
    assert "is not a checkpoint written by train.py or mnist.py: it is not a file torch.save wrote" in line
    (tmp_path / "torn.pt").write_bytes((tmp_path / "crafted.pt").read_bytes()[:100])  # a zip cut short
    line = error_line(train.main(["-r", str(tmp_path / "torn.pt")]), capsys)
    assert (
        "is not a checkpoint written by train.py or mnist.py: it cannot be read (" in line
        and "weights_only" not in line
    )
