"""to_plain: the ordinary copy of a hypernetwork-driven model computes the same function,
is a copy, and trains like any ordinary model (for PrimaryNetwork.to_plain and HyperNetized.to_plain)."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from hypernetwork_modules import hypernetize
from primary_net import PrimaryNetwork
from test_hypernetize import SmallCNN


def assert_trainable(plain: nn.Module, weights: list[torch.Tensor], x: torch.Tensor) -> None:
    """Each of WEIGHTS is one of PLAIN's own parameters, requires a gradient, gets a non-zero
    one from a loss on PLAIN(X), and an optimizer step over PLAIN's parameters changes it."""
    own = {id(p) for p in plain.parameters()}
    assert weights and all(isinstance(w, nn.Parameter) and w.requires_grad and id(w) in own for w in weights)
    before = [w.detach().clone() for w in weights]
    optimizer = torch.optim.SGD(plain.parameters(), lr=0.1)
    plain.train()
    F.cross_entropy(plain(x), torch.arange(len(x)) % 10).backward()
    for w in weights:
        assert w.grad is not None and w.grad.abs().sum() > 0
    optimizer.step()
    assert all(not torch.equal(w, b) for w, b in zip(weights, before))


def test_a_hypernetized_models_plain_copy_has_trainable_weights_where_they_were_generated():
    """HyperNetized.to_plain: every formerly generated weight is a parameter again, with gradients and optimizer steps."""
    torch.manual_seed(0)
    net = hypernetize(SmallCNN(), z_dim=8)
    plain = net.to_plain()
    weights = [plain.get_submodule(name.rsplit(".", 1)[0]).weight for name in net.generated]
    assert len(weights) == 4
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in SmallCNN().parameters())
    assert_trainable(plain, weights, torch.randn(4, 3, 16, 16))


def test_to_plain_copies_and_leaves_the_hypernetized_model_alone():
    """HyperNetized.to_plain returns a copy: changing it leaves the hypernetized model and a later copy as they were."""
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


def test_a_hyper_wrns_plain_copy_has_trainable_kernels_where_they_were_generated():
    """PrimaryNetwork.to_plain: every formerly generated kernel is a stored parameter, with gradients and optimizer steps."""
    torch.manual_seed(0)
    hyper = PrimaryNetwork(10, 1, hyper=True)
    plain = hyper.to_plain()
    assert len(plain.generate()) == len(hyper.generate())
    assert_trainable(plain, plain.generate(), torch.randn(4, 3, 32, 32))


def test_to_plain_gives_identical_outputs():
    torch.manual_seed(0)
    hyper = PrimaryNetwork(16, 2, hyper=True)
    hyper(torch.randn(8, 3, 32, 32))  # move BN running stats off their init
    hyper.eval()
    plain = hyper.to_plain().eval()
    assert not plain.hyper and not hasattr(plain, "kernel_bank")
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(plain(x), hyper(x))
