"""The blocks and the network against a reference written independently from ordinary
torch layers (nn.Conv2d, nn.BatchNorm2d, nn.Linear) loaded with the same weights."""

import pytest
import torch
import torch.nn as nn

from primary_net import PrimaryNetwork
from resnet_blocks import WideBasicBlock


def randomize_bn_(bn: nn.BatchNorm2d, g: torch.Generator) -> None:
    with torch.no_grad():
        bn.weight.copy_(torch.rand(bn.num_features, generator=g, dtype=bn.weight.dtype) + 0.5)
        bn.bias.copy_(torch.randn(bn.num_features, generator=g, dtype=bn.bias.dtype))
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=g, dtype=bn.running_mean.dtype))
        bn.running_var.copy_(torch.rand(bn.num_features, generator=g, dtype=bn.running_var.dtype) + 0.5)


def copy_bn(bn: nn.BatchNorm2d) -> nn.BatchNorm2d:
    ref = nn.BatchNorm2d(bn.num_features).to(bn.weight.dtype)
    ref.load_state_dict(bn.state_dict())
    ref.train(bn.training)
    return ref


def conv3x3(w: torch.Tensor, bias: torch.Tensor, stride: int) -> nn.Conv2d:
    conv = nn.Conv2d(w.shape[1], w.shape[0], 3, stride=stride, padding=1).to(w.dtype)
    with torch.no_grad():
        conv.weight.copy_(w)
        conv.bias.copy_(bias)
    return conv


def reference_block(block: WideBasicBlock, x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """The pre-activation wide block, written out: BN-ReLU-conv(stride)-BN-ReLU-conv + shortcut."""
    bn1, bn2 = copy_bn(block.bn1), copy_bn(block.bn2)
    h = torch.relu(bn1(x))
    if block.proj is not None:  # 1x1 projection of the pre-activated input, with the block's stride
        proj = nn.Conv2d(block.in_ch, block.out_ch, 1, stride=block.stride, bias=False).to(x.dtype)
        with torch.no_grad():
            proj.weight.copy_(block.proj.weight)
        shortcut = proj(h)
    else:  # subsample by the stride, new channels zero AFTER the existing ones
        sub = x[:, :, :: block.stride, :: block.stride]
        zeros = torch.zeros(sub.shape[0], block.out_ch - block.in_ch, *sub.shape[2:], dtype=x.dtype)
        shortcut = torch.cat([sub, zeros], dim=1)
    out = conv3x3(w1, block.bias1, block.stride)(h)
    out = conv3x3(w2, block.bias2, 1)(torch.relu(bn2(out)))
    return out + shortcut


@pytest.mark.parametrize(
    "in_ch,out_ch,stride,shortcut",
    [
        (16, 16, 1, "pad"),
        (16, 32, 1, "pad"),
        (16, 32, 2, "pad"),
        (32, 32, 2, "pad"),
        (16, 32, 2, "conv"),
        (16, 32, 1, "conv"),
        (32, 32, 2, "conv"),
        (16, 16, 1, "conv"),
    ],
)
@pytest.mark.parametrize("training", [True, False])
def test_block_equals_reference(in_ch, out_ch, stride, shortcut, training):
    g = torch.Generator().manual_seed(in_ch + out_ch + stride)
    block = WideBasicBlock(in_ch, out_ch, stride, shortcut).double()
    for bn in (block.bn1, block.bn2):
        randomize_bn_(bn, g)
    with torch.no_grad():
        block.bias1.copy_(torch.randn(out_ch, generator=g, dtype=torch.float64))
        block.bias2.copy_(torch.randn(out_ch, generator=g, dtype=torch.float64))
        if block.proj is not None:
            block.proj.weight.copy_(torch.randn(block.proj.weight.shape, generator=g, dtype=torch.float64))
    block.train(training)
    x = torch.randn(4, in_ch, 8, 8, generator=g, dtype=torch.float64)
    w1 = torch.randn(out_ch, in_ch, 3, 3, generator=g, dtype=torch.float64) * 0.2
    w2 = torch.randn(out_ch, out_ch, 3, 3, generator=g, dtype=torch.float64) * 0.2
    expected = reference_block(block, x, w1, w2)
    torch.testing.assert_close(block(x, w1, w2), expected, rtol=1e-10, atol=1e-10)


def reference_network(net: PrimaryNetwork, x: torch.Tensor, kernels: list[torch.Tensor]) -> torch.Tensor:
    """WRN-(6N+4)-k written out: stem conv + BN, three stages of N blocks (stride 2 at the
    first block of stages 2 and 3), BN-ReLU-pool-linear; block i takes kernels 2i, 2i+1."""
    stem = nn.Conv2d(3, 16, 3, padding=1).to(x.dtype)
    stem.load_state_dict(net.stem.state_dict())
    h = copy_bn(net.stem_bn)(stem(x))
    n = (net.depth - 4) // 6
    widths = [16 * net.width, 32 * net.width, 64 * net.width]
    for i, block in enumerate(net.blocks):
        stage, j = divmod(i, n)
        assert block.out_ch == widths[stage] and block.stride == (2 if stage and not j else 1)
        h = reference_block(block, h, kernels[2 * i], kernels[2 * i + 1])
    h = torch.relu(copy_bn(net.bn)(h)).mean(dim=(2, 3))
    fc = nn.Linear(widths[-1], net.num_classes).to(x.dtype)
    fc.load_state_dict(net.fc.state_dict())
    return fc(h)


@pytest.mark.parametrize("depth,width,hyper", [(10, 1, True), (16, 1, True), (16, 2, False), (10, 2, True)])
@pytest.mark.parametrize("training", [True, False])
def test_network_equals_reference(depth, width, hyper, training):
    torch.manual_seed(depth + width)
    net = PrimaryNetwork(depth, width, hyper=hyper).double()
    g = torch.Generator().manual_seed(3)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            randomize_bn_(m, g)
    with torch.no_grad():
        for block in net.blocks:
            block.bias1.normal_(generator=g)
            block.bias2.normal_(generator=g)
    net.train(training)
    x = torch.randn(3, 3, 32, 32, generator=g, dtype=torch.float64)
    torch.testing.assert_close(net(x), reference_network(net, x, net.generate()), rtol=1e-9, atol=1e-9)


def test_each_block_gets_its_own_kernels_even_when_shapes_match():
    """Blocks 2..N of a stage have equal kernel shapes: swapping two kernels must change the output."""
    net = PrimaryNetwork(16, 1, hyper=True).double().eval()  # N = 2: blocks 0 and 1 share shapes
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    kernels = net.generate()
    swapped = list(kernels)
    swapped[1], swapped[3] = kernels[3], kernels[1]  # block 0's second kernel <-> block 1's second kernel
    assert kernels[1].shape == kernels[3].shape
    unswapped = net(x)
    net.generate = lambda: swapped  # forward runs on what generate() returns
    assert not torch.allclose(net(x), unswapped)
    torch.testing.assert_close(net(x), reference_network(net, x, swapped), rtol=1e-9, atol=1e-9)
