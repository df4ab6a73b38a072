"""torchrun: 2 CPU processes with gloo train one model, write one set of files, evaluate
like one process, and resume exactly after both are killed."""

import contextlib
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import engine
import runner
import train
from conftest import (
    HANG,
    REPO,
    WORKERS,
    as_rank,
    only_run,
    paused,
    run_folder,
    saved_model,
    wait_for_line,
    write_fake_cifar,
)
from data import Normalize, load_cifar10
from devices import FP32
from test_train import without_timing

pytestmark = pytest.mark.slow  # every test here starts torchrun, a subprocess or a training run
EPOCHS = "3"
STEPS_PER_EPOCH = (5 * 40 - 20) // 32  # write_fake_cifar's 200 training images, 20 held out, global batches of 32


def torchrun(script: str, *args: str, max_restarts: int = 0, **popen) -> subprocess.Popen:
    """SCRIPT on 2 processes, as `torchrun --standalone --nproc-per-node 2 --max-restarts
    MAX_RESTARTS SCRIPT ARGS` starts it. With restarts, torchrun's agent keeps no shared
    TCPStore: in torch 2.14 the one it shares keeps the first attempt's gloo addresses, and a
    restarted worker then connects to a dead one (refused, or a hang; pytorch/pytorch#135712)."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        **({"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"} if max_restarts else {}),
    }
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "--max-restarts",
        str(max_restarts),
        script,
        *args,
    ]
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen
    )


def flags(root: Path, data: Path, *extra: str) -> list[str]:
    return [
        "--depth",
        "10",
        "--epochs",
        EPOCHS,
        "--batch-size",
        "32",
        "--val-size",
        "20",
        "--data-dir",
        str(data),
        "--no-download",
        "--no-progress",
        "--device",
        "cpu",
        "--checkpoint-dir",
        str(root / "ck"),
        "--log-dir",
        str(root / "runs"),
        *extra,
    ]


def descendants(pid: int) -> list[int]:
    """Child processes of PID, recursively (Linux /proc); torchrun starts its workers in their own sessions."""
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    return [d for c in children for d in [c, *descendants(c)]]


def finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=HANG)
    assert proc.returncode == 0, err[-3000:]
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_fake_cifar(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data) -> tuple[Path, str]:
    """One uninterrupted 2-process run; each process saved its final model state."""
    root = tmp_path_factory.mktemp("ddp")
    out = finish(torchrun(str(WORKERS / "train_and_save.py"), str(root), *flags(root, data)))
    return root, out


def test_one_set_of_files_and_identical_parameters_on_both_ranks(reference):
    root, out = reference
    run = only_run(root / "ck")
    assert sorted(p.name for p in run.iterdir()) == [
        ".lock",
        "best.pt",
        "config.json",
        "last.pt",
        "metrics.jsonl",
    ]  # rank 0 alone wrote
    assert len(list((only_run(root / "runs")).iterdir())) == 1  # one TensorBoard event file
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(only_run(root / "runs"))).Reload()  # all there, though the workers skip finalization
    assert [e.step for e in events.Scalars("train/loss")] == [r["step"] for r in records]
    assert [r["epoch"] for r in records] == list(range(1, int(EPOCHS) + 1))
    assert all(r["processes"] == 2 for r in records)
    assert out.count("final: hyper-10-1") == 1 and "x 2 processes" in out  # rank 0 alone reports
    rank0, rank1 = (torch.load(root / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    saved = torch.load(run / "last.pt", weights_only=True)
    for key, value in rank0.items():  # BatchNorm statistics too: rank 0's are broadcast before evaluation
        assert torch.equal(value, rank1[key]), key
        assert torch.equal(value, saved["model"][key]), key
    assert len(saved["rng_per_rank"]) == 2
    assert not torch.equal(saved["rng_per_rank"][0]["augment"], saved["rng_per_rank"][1]["augment"])
    init = saved_model(saved["config"]).state_dict()
    assert not torch.equal(init["kernel_bank.z"], rank0["kernel_bank.z"])  # it did train


@pytest.mark.parametrize("world", ["1", "2"])
def test_a_torchrun_worker_exits_with_its_code_and_output_but_skips_finalization(world):
    """exit_process: a torchrun worker's buffered output and exit code survive os._exit, and
    the interpreter's finalization (where gloo's threads can abort) never runs; alone, it does."""
    code = (
        "import atexit, sys, distributed; atexit.register(print, 'finalized'); "
        "sys.stdout.write('buffered'); sys.stderr.write('unflushed'); distributed.exit_process(7)"
    )
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}, "WORLD_SIZE": world}  # output buffered
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=HANG)
    assert done.returncode == 7 and done.stderr == "unflushed"
    assert done.stdout == ("buffered" if world == "2" else "bufferedfinalized\n")


def test_two_process_evaluation_equals_one_process_evaluation(reference, data):
    root, _ = reference
    ckpt = torch.load(only_run(root / "ck") / "last.pt", weights_only=True)
    model = saved_model(ckpt["config"])
    model.load_state_dict(ckpt["model"])
    train_x, train_y, test_x, test_y = load_cifar10(data, download=False)
    normalize = Normalize(train_x[ckpt["train_indices"]])
    args = (normalize, 7, torch.contiguous_format, FP32)  # another batch size than the run's
    val_error = engine.evaluate(model, train_x[ckpt["val_indices"]], train_y[ckpt["val_indices"]], *args)
    test_error = engine.evaluate(model, test_x, test_y, *args)
    last = json.loads((only_run(root / "ck") / "metrics.jsonl").read_text().splitlines()[-1])
    assert (last["val_error"], last["test_error"]) == (val_error, test_error)


def test_killed_then_resumed_under_torchrun_ends_where_the_uninterrupted_run_ends(reference, data, tmp_path):
    proc = torchrun(*paused(STEPS_PER_EPOCH + 3, 1, "train.py", flags(tmp_path, data)))
    last = run_folder(train.CIFAR10, flags(tmp_path, data)) / "last.pt"
    wait_for_line(proc, f"paused before step {STEPS_PER_EPOCH + 3}")  # in epoch 2
    workers = descendants(proc.pid)
    for pid in [*workers, proc.pid]:  # both workers and torchrun, mid-run
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.communicate()
    killed_at = torch.load(last, weights_only=True)["epoch"]
    assert len(workers) >= 2 and killed_at == 1

    out = finish(torchrun("train.py", *flags(tmp_path, data), "-r"))
    assert f"resumed after epoch {killed_at}" in out
    resumed = torch.load(last, weights_only=True)
    straight = torch.load(only_run(reference[0] / "ck") / "last.pt", weights_only=True)
    assert resumed["epoch"] == straight["epoch"] == int(EPOCHS)
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    lines = (only_run(tmp_path / "ck") / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(1, int(EPOCHS) + 1))


def test_a_worker_killed_mid_epoch_is_restarted_by_torchrun_and_the_run_ends_as_uninterrupted(
    reference, data, tmp_path
):
    """torchrun --max-restarts 1 ... -r: the one command starts the run (no checkpoint yet)
    and, after rank 0 is killed with SIGKILL in epoch 2, its restart resumes from epoch 1's."""
    argv = [*flags(tmp_path, data), "-r"]
    last = run_folder(train.CIFAR10, argv) / "last.pt"
    proc = torchrun(*paused(STEPS_PER_EPOCH + 3, 1, "train.py", argv), max_restarts=1)
    wait_for_line(proc, f"no checkpoint at {last} yet: starting the run")
    line = wait_for_line(proc, f"paused before step {STEPS_PER_EPOCH + 3} (pid ")  # in epoch 2, first attempt only
    assert torch.load(last, weights_only=True)["epoch"] == 1
    os.kill(int(re.search(r"\(pid (\d+)\)", line).group(1)), signal.SIGKILL)  # rank 0 alone; rank 1 waits on it
    out = finish(proc)  # the restart's output
    assert (
        out.count("resumed after epoch 1") == 1 and out.count("final: hyper-10-1") == 1 and "no checkpoint" not in out
    )

    straight_run = only_run(reference[0] / "ck")
    resumed, straight = torch.load(last, weights_only=True), torch.load(straight_run / "last.pt", weights_only=True)
    assert resumed["epoch"] == straight["epoch"] == int(EPOCHS) and resumed["best"] == straight["best"]
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    records = [
        without_timing([json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()])
        for run in (last.parent, straight_run)
    ]
    assert records[0] == records[1] and len(records[0]) == int(EPOCHS)


def test_the_printed_continue_command_works_under_torchrun(data, tmp_path):
    """Stopped under torchrun, a run prints a torchrun command; run as printed, it ends the run on two processes."""
    out = finish(torchrun("train.py", *flags(tmp_path, data, "--epochs", "2", "--stop-after", "1")))
    command = out.strip().splitlines()[-1].split("continue with: ")[1].split()
    assert command[:5] == ["torchrun", "--standalone", "--nproc-per-node", "2", "train.py"]
    again = [sys.executable, "-m", "torch.distributed.run", *command[1:]]  # torchrun is this module's entry point
    finish(
        subprocess.Popen(
            again,
            cwd=REPO,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    )
    ckpt = torch.load(command[-1], weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["placement"]["processes"] == 2


def test_sync_bn_is_refused_on_cpu_in_one_line(data, tmp_path):
    """Refused before any process joins the group: rank 0 reports it, however late it gets there."""
    proc = torchrun(str(WORKERS / "late_rank_0.py"), *flags(tmp_path, data, "--sync-bn"))
    _, err = proc.communicate(timeout=HANG)
    assert proc.returncode != 0
    assert err.count("error: --sync-bn needs CUDA") == 1


def test_global_batch_must_split_over_processes(data, tmp_path):
    proc = torchrun("train.py", *flags(tmp_path, data, "--batch-size", "33"))
    _, err = proc.communicate(timeout=HANG)
    assert proc.returncode != 0 and err.count("error: --batch-size 33 does not split evenly over 2 processes") == 1


def test_full_disk_on_rank_0_stops_every_rank_by_itself(data, tmp_path):
    """Only rank 0 writes; its error must not leave rank 1 waiting in the next collective."""
    proc = torchrun(str(WORKERS / "disk_full.py"), str(tmp_path), *flags(tmp_path, data))
    _, err = proc.communicate(timeout=HANG)  # a hang would last until the gloo timeout (30 minutes)
    assert proc.returncode != 0
    assert err.count("error: cannot write") == 1 and "the disk is full" in err, err[-2000:]
    rank1 = re.search(r"rank\s*: 1 \(local_rank: 1\)\s*exitcode\s*: (-?\d+)", err)
    assert rank1 and rank1.group(1) == "1", "rank 1 must stop by itself (exit 1), not be killed by torchrun (-15)"
    assert torch.load(only_run(tmp_path / "ck") / "last.pt", weights_only=True)["epoch"] == 1


def test_hypernetize_under_ddp_trains_like_one_process_on_the_whole_batch(tmp_path):
    """DDP averages the z's and the hypernetwork's gradients like any parameters: both
    ranks end identical, and equal to one process that saw each whole batch."""
    sys.path.insert(0, str(WORKERS))
    import hypernetize_ddp

    finish(torchrun(str(WORKERS / "hypernetize_ddp.py"), str(tmp_path)))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    torch.manual_seed(0)
    alone = hypernetize_ddp.hypernetize(hypernetize_ddp.small_cnn(), z_dim=8)
    assert any(k.startswith("banks.") for k in alone.state_dict())
    assert ranks[0]["_extra_state"] == ranks[1]["_extra_state"] == alone.get_extra_state()  # hypernetize's arguments
    tensors = {k: v for k, v in alone.state_dict().items() if torch.is_tensor(v)}
    before = {k: v.clone() for k, v in tensors.items()}
    hypernetize_ddp.train(alone, alone, rank=0, world=1)
    for key, value in alone.state_dict().items():
        if key not in tensors:
            continue
        assert torch.equal(ranks[0][key], ranks[1][key]), key
        torch.testing.assert_close(ranks[0][key], value, rtol=1e-5, atol=1e-6, msg=key)
        assert key.endswith(".bias") or not torch.equal(value, before[key]), key  # every tensor trained


def test_only_rank_0_may_download_the_dataset(data, tmp_path, monkeypatch):
    """Rank 0 reads (downloading if allowed) while the others wait; they then read its
    files without downloading, so no two processes write one archive."""
    calls = []

    def recording(data_dir, download):
        calls.append(download)
        return load_cifar10(data_dir, download=False)

    experiment = dataclasses.replace(train.CIFAR10, load_data=recording)
    for rank in (0, 1):
        argv = [*flags(tmp_path / f"rank{rank}", data, "--epochs", "1"), "--download"]
        with as_rank(rank, 2, tmp_path / f"store{rank}", monkeypatch):
            assert runner.main(experiment, argv) == 0
    assert calls == [True, False]


def test_a_crashed_process_reports_its_python_stack(data, tmp_path):
    """torchrun alone reports only 'Signal 6 (SIGABRT)'; the stack names where the run was."""
    proc = torchrun(str(WORKERS / "crash.py"), *flags(tmp_path, data))
    _, err = proc.communicate(timeout=HANG)
    assert proc.returncode != 0
    assert "Fatal Python error: Aborted" in err and "crash_inside_the_run" in err, err[-2000:]
