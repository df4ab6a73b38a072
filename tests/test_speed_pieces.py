"""The pieces issue 5 added for speed: the folded L2 penalty, export, and bench.py itself."""

import torch

from primary_net import PrimaryNetwork, to_plain


def test_to_plain_gives_identical_outputs():
    torch.manual_seed(0)
    hyper = PrimaryNetwork(16, 2, hyper=True)
    hyper(torch.randn(8, 3, 32, 32))  # move BN running stats off their init
    hyper.eval()
    plain = to_plain(hyper).eval()
    assert not plain.hyper and not hasattr(plain, "kernel_bank")
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(plain(x), hyper(x))


