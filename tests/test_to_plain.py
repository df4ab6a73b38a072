"""to_plain: the ordinary copy of a hypernetize'd model trains like any ordinary model.

(primary_net.to_plain's stored kernels are checked by test_speed_pieces.py::test_export_cli_round_trip,
whose printed parameter count counts only parameters that require a gradient.)
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from hypernetwork_modules import hypernetize
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
