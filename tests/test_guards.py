"""Tests aimed at kinds of bug that once passed the whole suite.

Each test here fails when one specific, plausible one-line bug is put into the code
(named in its docstring), and passes on the code as it is. They go through the public
entry points (the command line, `engine.precise_bn`, the augmentations, the models)
wherever they can, so that a refactor of the loop's internals keeps them meaningful.
"""

import dataclasses
import os
import stat

import pytest
import torch

import checkpointing
import compare
import data
import engine
import runner
import train
from conftest import as_rank, error_line, write_archived_run, write_fake_cifar, only_run
from experiment import Experiment
from hypernetwork_modules import hypernetize
from primary_net import PrimaryNetwork
from test_hypernetize import SmallCNN
from test_results import table_rows
from test_train import load, run_args


@pytest.fixture(scope="module")
def tiny_cifar(tmp_path_factory):
    """A CIFAR-10 of 50 training and 10 test images: the runs here take a few small steps."""
    return write_fake_cifar(tmp_path_factory.mktemp("tiny"), per_batch=10, test_size=10)


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


# ----------------------------------------------------------------------------- 1. precise BN


def test_precise_bn_statistics_come_from_the_first_training_images(tmp_path, tiny_cifar):
    """Bug: precise BN computed on validation images (d.val_x[:n]) instead of training images."""
    assert train.main(tiny_args(tmp_path, tiny_cifar, "--epochs", "1", "--precise-bn", "16")) == 0
    ckpt = load(only_run(tmp_path / "ck") / "last.pt")
    images = data.load_cifar10(tiny_cifar, download=False)[0]
    train_x, val_x = images[ckpt["train_indices"]], images[ckpt["val_indices"]]

    def statistics(source: torch.Tensor) -> dict:
        model = train.build_model(ckpt["config"])
        model.load_state_dict(ckpt["model"])
        engine.precise_bn(model, source[:16], data.Normalize(train_x), 8, torch.contiguous_format)
        return {k: v for k, v in model.state_dict().items() if k.endswith(("running_mean", "running_var"))}

    expected, from_val = statistics(train_x), statistics(val_x)
    assert len(expected) == 2 * len(engine.batchnorms(train.build_model(ckpt["config"])))
    for key, value in expected.items():
        torch.testing.assert_close(ckpt["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert any(not torch.allclose(v, from_val[k], rtol=1e-3, atol=1e-4) for k, v in expected.items())  # it can tell


# ----------------------------------------------------------------------------- 2. flip probability


def flipped(augmented: torch.Tensor) -> torch.Tensor:
    """Which images of columns rising left to right (see `rising`) come out mirrored."""
    half = augmented.shape[-1] // 2
    return augmented[..., :half].float().sum(dim=(1, 2, 3)) > augmented[..., half:].float().sum(dim=(1, 2, 3))


def rising(n: int, size: int) -> torch.Tensor:
    """N one-channel images whose column j holds j + 1: a crop keeps the left half darker, a flip does not."""
    return (torch.arange(size, dtype=torch.uint8) + 1).expand(n, 1, size, size).contiguous()


def test_cifar_augmentation_flips_half_the_images_and_mnist_none():
    """Bug: a flip probability other than 0.5 in random_crop (e.g. .lt(0.3) or .lt(0.6))."""
    n = 20_000
    rate = flipped(data.augment_cifar(rising(n, 32), torch.Generator().manual_seed(0))).float().mean().item()
    assert abs(rate - 0.5) < 0.02, rate  # 0.02 is 5.7 standard errors: 0.45 or 0.55 lie far outside
    assert not flipped(data.augment_mnist(rising(n, 28), torch.Generator().manual_seed(0))).any()


# ----------------------------------------------------------------------------- 3. no short last batch


def test_every_step_trains_on_a_whole_batch(tmp_path, tiny_cifar):
    """Bug: a short last batch (steps per epoch rounded up, or the last slice taken short)."""
    seen = []
    args = tiny_args(tmp_path, tiny_cifar, "--epochs", "1", "--batch-size", "12")  # 40 images: 3 batches and 4 over
    assert runner.main(stamped_cifar(seen), args) == 0
    assert [len(batch) for batch in seen] == [12, 12, 12]
    assert len(set(torch.cat(seen).tolist())) == 36  # no image twice in an epoch
    assert load(only_run(tmp_path / "ck") / "last.pt")["step"] == 40 // 12


# ----------------------------------------------------------------------------- 4. torchrun shares


def test_torchrun_ranks_train_on_disjoint_halves_of_each_global_batch(tmp_path, tiny_cifar, monkeypatch):
    """Bug: every process training on the same share of the global batch (idx[:local_batch])."""
    shares = []
    for rank in (0, 1):
        seen = []
        with as_rank(rank, 2, tmp_path / f"store{rank}", monkeypatch):
            assert runner.main(stamped_cifar(seen), tiny_args(tmp_path / f"rank{rank}", tiny_cifar, "--epochs", "1")) == 0
        shares.append(seen)
    assert [len(s) for s in shares] == [5, 5] and all(len(b) == 4 for s in shares for b in s)
    for a, b in zip(*shares):  # step by step: the two halves of one global batch of 8
        assert not set(a.tolist()) & set(b.tolist())
    every = torch.cat([torch.cat(s) for s in shares]).tolist()
    assert len(every) == len(set(every)) == 40  # together: each training image once in the epoch


# ----------------------------------------------------------------------------- 5. explicit optimizer and lr


def test_explicit_optimizer_and_lr_are_honoured(tmp_path, tiny_cifar):
    """Bug: an explicit --optimizer (or --lr) silently replaced by the schedule's default."""
    assert train.main(tiny_args(tmp_path, tiny_cifar, "--epochs", "1", "--optimizer", "sgd", "--lr", "0.05")) == 0
    group = load(only_run(tmp_path / "ck") / "last.pt")["optimizer"]["param_groups"][0]
    assert group.get("nesterov") is True and "betas" not in group and group["initial_lr"] == 0.05
    assert train.main(tiny_args(tmp_path / "plain", tiny_cifar, "--epochs", "1", "--optimizer", "adam", "--plain")) == 0
    group = load(only_run(tmp_path / "plain" / "ck") / "last.pt")["optimizer"]["param_groups"][0]
    assert "betas" in group and "nesterov" not in group and group["initial_lr"] == 0.1  # the plain schedule's lr


# ----------------------------------------------------------------------------- 6. resume with other --epochs


def test_resume_refuses_a_different_epochs(tmp_path, tiny_cifar, capsys):
    """Bug: --epochs among the resumable changes (the schedule silently rescaled mid-run)."""
    args = tiny_args(tmp_path, tiny_cifar, "--epochs", "2")
    assert train.main([*args, "--stop-after", "1"]) == 0
    last = only_run(tmp_path / "ck") / "last.pt"
    before = last.read_bytes()
    capsys.readouterr()
    assert "--epochs" in error_line(train.main([*args, "-r", str(last), "--epochs", "3"]), capsys)
    assert last.read_bytes() == before


# ----------------------------------------------------------------------------- 7. fsync before rename


def test_checkpoint_is_fsynced_before_it_is_renamed_into_place(tmp_path, monkeypatch):
    """Bug: os.replace before the temporary file's fsync (a crash could leave an empty last.pt)."""
    calls, fsync, replace = [], os.fsync, os.replace

    def recording_fsync(fd):
        calls.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        fsync(fd)

    def recording_replace(src, dst):
        calls.append("replace")
        replace(src, dst)

    monkeypatch.setattr(checkpointing.os, "fsync", recording_fsync)
    monkeypatch.setattr(checkpointing.os, "replace", recording_replace)
    checkpointing.atomic_save({"epoch": 1}, tmp_path / "last.pt")
    assert calls == ["fsync file", "replace", "fsync folder"]
    assert load(tmp_path / "last.pt") == {"epoch": 1}


# ----------------------------------------------------------------------------- 8. stale temporaries


def test_a_killed_saves_temporary_file_is_removed_on_resume(tmp_path, tiny_cifar):
    """Bug: the next start no longer removes the .last.pt.XXXX.tmp a killed save left behind."""
    args = tiny_args(tmp_path, tiny_cifar, "--epochs", "2")
    assert train.main([*args, "--stop-after", "1"]) == 0
    run_dir = only_run(tmp_path / "ck")
    stale = run_dir / ".last.pt.k1ll3d.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert train.main([*args, "-r"]) == 0
    assert not stale.exists()
    assert load(run_dir / "last.pt")["epoch"] == 2


# ----------------------------------------------------------------------------- 9. Kaiming fan-in


def test_plain_wrn_kernels_start_at_kaiming_fan_in_scale():
    """Bug: the plain WRN's stored kernels drawn at Kaiming fan-out (mode="fan_out")."""
    torch.manual_seed(0)
    kernels = PrimaryNetwork(10, 2, hyper=False).kernels()
    assert sum(k.shape[0] != k.shape[1] for k in kernels) == 3  # layers where fan-in and fan-out differ (by 2x)
    for k in kernels:
        fan_in = k.shape[1] * k.shape[2] * k.shape[3]
        ratio = k.std().item() / (2 / fan_in) ** 0.5
        assert abs(ratio - 1) < 0.1, (tuple(k.shape), ratio)  # fan-out would give 0.71


# ----------------------------------------------------------------------------- 10. to_plain copies


def test_to_plain_copies_and_leaves_the_hypernetized_model_alone():
    """Bug: HyperNetized.to_plain() changing and returning the wrapped model instead of a copy."""
    torch.manual_seed(0)
    net = hypernetize(SmallCNN(), z_dim=8).eval()
    names = [n for n, _ in net.named_parameters()]
    x = torch.randn(2, 3, 16, 16)
    before = net(x)
    plain = net.to_plain()
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(1.0)
    assert torch.equal(net(x), before)
    assert [n for n, _ in net.named_parameters()] == names  # still generates conv1 and conv2
    again = net.to_plain().eval()
    torch.testing.assert_close(again(x), before, rtol=1e-5, atol=1e-6)  # the second copy is untouched by the first


# ----------------------------------------------------------------------------- 11. compare's test error


def test_compare_shows_the_test_error_of_the_best_validation_epoch(tmp_path):
    """Bug: compare.py's run table showing the lowest test error over epochs."""
    errors = [(30.0, 31.25), (20.0, 22.5), (25.0, 18.75)]  # (val, test): epoch 2 is best on val, epoch 3 on test
    metrics = [{"epoch": e, "step": 5 * e, "val_error": v, "test_error": t, "device": "cpu", "processes": 1}
               for e, (v, t) in enumerate(errors, 1)]
    best = {k: metrics[1][k] for k in ("epoch", "step", "val_error", "test_error")}
    write_archived_run(tmp_path / "runs" / "guard", best, 3, 15, metrics, depth=10, plain=True, epochs=3, batch_size=32)
    out = tmp_path / "results.md"
    assert compare.main(["--runs", str(tmp_path / "runs"), "--out", str(out)]) == 0
    (row,) = table_rows(out.read_text())["wrn-10-1, z_dim 64, shortcut pad"]
    assert row[2:6] == ["`guard`", "22.50%", "20.00%", "2"]
