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


# ----------------------------------------------------------------------------- 8. stale temporaries


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


