"""Tests aimed at kinds of bug that once passed the whole suite.

Each test here fails when one specific, plausible one-line bug is put into the code
(named in its docstring), and passes on the code as it is. They go through the public
entry points (the command line, `engine.precise_bn`, the augmentations, the models)
wherever they can, so that a refactor of the loop's internals keeps them meaningful.
"""

import os
import stat

import pytest
import torch

import checkpointing
import compare
import data
import engine
import train
from conftest import write_archived_run, only_run
from hypernetwork_modules import hypernetize
from test_hypernetize import SmallCNN
from test_results import table_rows
from test_train import load, tiny_args


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


# ----------------------------------------------------------------------------- 3. no short last batch


# ----------------------------------------------------------------------------- 4. torchrun shares


# ----------------------------------------------------------------------------- 5. explicit optimizer and lr


# ----------------------------------------------------------------------------- 6. resume with other --epochs


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
