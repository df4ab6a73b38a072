"""The training protocol as it runs: the lr over a whole run, the L2 penalty's exact size,
no decay inside the optimizer, normalisation from the training split, evaluation that
leaves the model as it found it, and compare.py keeping configurations apart."""

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import compare
import data
import engine
import runner
import train
from conftest import only_run, write_archived_run
from primary_net import PrimaryNetwork

# 200 fake images: 160 train + 40 val; batch 32 -> 5 steps an epoch.
SMALL = ["--depth", "10", "--batch-size", "32", "--val-size", "40", "--no-progress", "--no-download", "--device", "cpu"]


def run_args(root: Path, data_dir: Path, *extra: str) -> list[str]:
    return [
        *SMALL,
        "--data-dir",
        str(data_dir),
        "--checkpoint-dir",
        str(root / "ck"),
        "--log-dir",
        str(root / "runs"),
        *extra,
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    "plain,epochs,base,factors",
    [
        (False, 4, 0.002, [1, 0.5, 0.1, 0.025]),  # Adam, Table 9: boundaries at 1/4, 1/2, 3/4 of the steps
        (True, 5, 0.1, [1, 0.2, 0.04, 0.008, 0.0016]),  # Nesterov SGD, Table 8: at fifths
    ],
)
def test_lr_follows_the_paper_schedule_over_a_whole_run(plain, epochs, base, factors, tmp_path, cifar_dir, monkeypatch):
    seen = []
    real_step = engine.train_step

    def recording(state, *args, **kwargs):
        seen.append(state.optimizer.param_groups[0]["lr"])  # the rate this step trains at
        assert (
            state.optimizer.param_groups[0]["weight_decay"] == 0
        )  # the penalty is in the loss, never in the optimizer
        return real_step(state, *args, **kwargs)

    monkeypatch.setattr(engine, "train_step", recording)
    flags = ["--epochs", str(epochs), *(["--plain"] if plain else [])]
    assert train.main(run_args(tmp_path, cifar_dir, *flags)) == 0
    expected = [base * f for f in factors for _ in range(5)]  # 5 steps an epoch, one epoch per phase
    assert seen == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("hyper", [True, False])
def test_l2_penalty_is_exactly_half_wd_times_the_kernels_sum_of_squares(hyper):
    """One SGD step (lr 1, no momentum) moves every parameter by minus the gradient of
    cross-entropy + wd/2 * sum over the kernels in use of K^2, computed here by hand."""
    torch.manual_seed(0)
    model = PrimaryNetwork(10, 1, hyper=hyper).double()
    x, y = torch.randn(4, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (4,))
    wd = 0.37  # large, so that a wrong factor shows
    reference = copy.deepcopy(model)
    kernels = reference.generate()
    loss = F.cross_entropy(reference(x), y) + wd / 2 * sum(k.pow(2).sum() for k in kernels)
    grads = torch.autograd.grad(loss, list(reference.parameters()))

    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    before = [p.detach().clone() for p in model.parameters()]
    engine.train_step(engine.TrainState(model, optimizer, scheduler), x, y, wd)
    for p0, p1, g in zip(before, model.parameters(), grads):
        torch.testing.assert_close(p0 - p1, g, rtol=1e-4, atol=1e-6)  # the loss itself is float32


@pytest.mark.slow
def test_normalisation_statistics_come_from_the_training_split_only(tmp_path, monkeypatch):
    root = data.write_synthetic_cifar(tmp_path / "d")
    all_x, _, _, _ = data.load_cifar10(root, download=False)
    seen = []
    real = runner.Normalize

    def recording(images):
        seen.append(images.clone())
        return real(images)

    monkeypatch.setattr(runner, "Normalize", recording)
    assert train.main(run_args(tmp_path, root, "--epochs", "1")) == 0
    ckpt = torch.load(only_run(tmp_path / "ck") / "last.pt", weights_only=True)
    assert len(seen) == 1 and torch.equal(seen[0], all_x[ckpt["train_indices"]])
    assert not set(ckpt["train_indices"].tolist()) & set(ckpt["val_indices"].tolist())


@pytest.mark.slow
def test_metrics_hold_each_epoch_once_after_an_interrupted_epoch(tmp_path, cifar_dir):
    args = run_args(tmp_path, cifar_dir, "--epochs", "3")
    assert train.main([*args, "--stop-after", "1"]) == 0
    metrics = only_run(tmp_path / "ck") / "metrics.jsonl"
    with open(metrics, "a") as f:  # what a killed epoch 2 could have left
        f.write(json.dumps({"epoch": 2, "step": 10, "train_loss": 99.0}) + "\n")
    assert train.main([*args, "-r"]) == 0
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3] and records[1]["train_loss"] != 99.0


def test_evaluate_restores_train_mode_and_changes_nothing():
    torch.manual_seed(0)
    model = PrimaryNetwork(10, 1).train()
    images = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (20,))
    state = copy.deepcopy(model.state_dict())
    error = engine.evaluate(model, images, labels, data.Normalize(images), 7, torch.contiguous_format)
    assert 0 <= error <= 100 and model.training and all(m.training for m in model.modules())
    for key, value in model.state_dict().items():  # parameters and BatchNorm statistics alike
        assert torch.equal(value, state[key]), key


def test_compare_keeps_runs_of_different_z_dim_apart(tmp_path):
    runs = tmp_path / "runs"
    for z_dim, error in ((16, 31.0), (32, 29.0), (64, 27.0)):
        best = {"epoch": 10, "step": 3510, "val_error": error, "test_error": error}
        write_archived_run(runs / f"hyper-z{z_dim}", best, 10, 3510, z_dim=z_dim, epochs=10)
    out = tmp_path / "results.md"
    assert compare.main(["--runs", str(runs), "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    paper_row = [line for line in lines if line.startswith("| hyper-40-1 | 8.02%")]
    assert len(paper_row) == 1 and "`hyper-z64`" in paper_row[0]  # only N_z = 64 is the paper's configuration
    assert any("hyper-40-1, z_dim 16" in line and "`hyper-z16`" in line for line in lines)
    assert any("hyper-40-1, z_dim 32" in line and "`hyper-z32`" in line for line in lines)
