"""seeds.py runs an experiment over seeds; compare.py reports their mean, spread and n."""

import json
import signal
import statistics
import subprocess
import sys
import time

import pytest
import torch

import compare
import diagrams
import seed_stats
import seeds
from conftest import HANG, REPO


@pytest.mark.slow
def test_seeds_run_resume_and_aggregate(tmp_path, mnist_dir, monkeypatch):
    monkeypatch.chdir(REPO)  # the scripts run from the repository root
    ck = tmp_path / "ck"
    flags = [
        "--val-size",
        "20",
        "--batch-size",
        "50",
        "--no-download",
        "--device",
        "cpu",
        "--epochs",
        "2",
        "--data-dir",
        str(mnist_dir),
        "--checkpoint-dir",
        str(ck),
        "--log-dir",
        str(tmp_path / "runs"),
    ]
    assert seeds.main(["mnist.py", "--seeds", "3", "7", "--jobs", "2", "--", *flags]) == 0
    names = [
        f"mnist-hyper-epochs-2-batch-size-50-val-size-20-seed{seed}" for seed in (3, 7)
    ]  # every flag that changes the result
    assert sorted(p.name for p in ck.iterdir()) == names
    metrics = {p.name: (p / "metrics.jsonl").read_text() for p in ck.iterdir()}
    assert all(len(m.splitlines()) == 2 for m in metrics.values())

    assert seeds.main(["mnist.py", "--seeds", "3", "7", "--", *flags]) == 0  # finished: resumed, nothing retrained
    assert {p.name: (p / "metrics.jsonl").read_text() for p in ck.iterdir()} == metrics

    out = tmp_path / "results.md"
    assert compare.main(["--runs", str(ck), "--out", str(out)]) == 0
    row = next(line for line in out.read_text().splitlines() if line.startswith("| hyper, z_dim 4 | 2 |"))
    tests = []
    for name in names:
        records = [json.loads(line) for line in metrics[name].splitlines()]
        best = min(records, key=lambda r: (r["val_error"], r["epoch"]))
        tests.append(best["test_error"])
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2:5] == ["0.76%", "2", "3, 7"]
    assert cells[5] == f"{statistics.mean(tests):.2f} ± {statistics.stdev(tests):.2f}%"
    half = 12.706 * statistics.stdev(tests) / 2**0.5  # t(0.975, 1 degree of freedom)
    assert cells[8] == f"{statistics.mean(tests) - half:.2f}% - {statistics.mean(tests) + half:.2f}%"

    figures = tmp_path / "figures"  # the seeds drawn as one configuration: one kernel picture, the lowest seed's
    assert diagrams.main(["--runs", str(ck), "--out", str(figures)]) == 0
    assert sorted(p.name for p in figures.glob("kernels_*")) == [f"kernels_{names[0]}.png"]


@pytest.mark.slow
def test_a_failing_seed_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    code = seeds.main(
        [
            "mnist.py",
            "--seeds",
            "0",
            "--",
            "--no-download",
            "--device",
            "cpu",
            "--data-dir",
            str(tmp_path),
            "--checkpoint-dir",
            str(tmp_path / "ck"),
            "--log-dir",
            str(tmp_path / "runs"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err == ["error: seed(s) 0 failed: see their seeds.log"]
    assert "no MNIST at" in (tmp_path / "ck" / "mnist-hyper-seed0" / "seeds.log").read_text()


def test_mean_interval_is_the_t_interval():
    low, high = seed_stats.mean_interval([1.0, 2.0, 3.0, 4.0, 5.0])  # mean 3, sd sqrt(2.5), t(0.975, 4) = 2.776
    half = 2.776 * 2.5**0.5 / 5**0.5
    assert abs(low - (3 - half)) < 1e-9 and abs(high - (3 + half)) < 1e-9
    low, high = seed_stats.mean_interval([2.0] * 40)  # no spread: no width, and more than 31 runs is fine
    assert low == high == 2.0


@pytest.mark.slow
def test_ctrl_c_is_one_line_and_every_running_seed_saves_its_step(tmp_path, mnist_dir):
    """SIGINT to seeds.py alone (as from a scheduler): no traceback, exit 130, and each
    running seed, signalled in turn, saved a checkpoint that the same command continues."""
    ck = tmp_path / "ck"
    flags = [
        "--val-size",
        "20",
        "--batch-size",
        "10",
        "--no-download",
        "--device",
        "cpu",
        "--epochs",
        "500",
        "--patience",
        "500",  # fake MNIST reaches 0% validation error at once: no early stop within seconds
        "--data-dir",
        str(mnist_dir),
        "--checkpoint-dir",
        str(ck),
        "--log-dir",
        str(tmp_path / "runs"),
    ]
    proc = subprocess.Popen(
        [sys.executable, "seeds.py", "mnist.py", "--seeds", "0", "1", "--jobs", "2", "--", *flags],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lasts = [seeds.seed_command("mnist.py", seed, flags)[1] / "last.pt" for seed in (0, 1)]
    for _ in range(HANG * 10):  # every seed is training once it has saved its first epoch
        if all(last.exists() for last in lasts) or proc.poll() is not None:
            break
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=HANG)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("interrupted: each running seed saved where it stopped")
    for last in lasts:
        ckpt = torch.load(last, weights_only=True)
        assert 1 <= ckpt["epoch"] < 500, last  # stopped by the signal, not by the end of the schedule
        assert "SIGINT: saved" in (last.parent / "seeds.log").read_text()


def test_seeds_of_two_budgets_are_different_runs():
    """seeds.py names each seed after its configuration: a 1-epoch seed 0 is never resumed
    (and reported) as the full-budget seed 0."""
    short, full = (seeds.seed_command("mnist.py", 0, flags)[1].name for flags in (["--epochs", "1"], []))
    assert (short, full) == ("mnist-hyper-epochs-1-seed0", "mnist-hyper-seed0")
    assert seeds.seed_command("mnist.py", 3, ["--run-name", "mine"])[1].name == "mine-seed3"
