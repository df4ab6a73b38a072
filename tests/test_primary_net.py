"""The hypernetwork, the kernel bank and the primary network against the paper."""

import math

import pytest
import torch
import torch.nn as nn

from bench import per_tile_kernels
from hypernetwork_modules import HyperNetwork, KernelBank
from primary_net import PAPER_TABLE2, PrimaryNetwork, blocks_per_stage, num_parameters, paper_table

# Exact counts of our layout: parameter-free "pad" shortcuts, a bias on every conv, a BN
# after the stem conv, BN gamma/beta, FC bias, the hypernetwork's biases.
PINNED = {
    (40, 1, False): 562_762,
    (40, 1, True): 96_602,
    (40, 2, False): 2_235_530,
    (40, 2, True): 147_610,
}


def paper_hypernet(hn: HyperNetwork, z: torch.Tensor) -> torch.Tensor:
    """Direct transcription of Sec. 3.1 for one z: loop over input slices i."""
    d, f = hn.z_dim, hn.f_size
    w_in, b_in = hn.w_in.weight, hn.w_in.bias  # rows i*d..(i+1)*d-1 are W_i, B_i
    w_out, b_out = hn.w_out.weight, hn.w_out.bias
    slices = []
    for i in range(hn.in_size):
        a_i = w_in[i * d : (i + 1) * d] @ z + b_in[i * d : (i + 1) * d]
        k_i = w_out @ a_i + b_out  # (out*f*f,)
        slices.append(k_i.view(hn.out_size, f, f))
    return torch.stack(slices)  # (in, out, f, f): [i] = K_i


def randomize_(module: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))


def test_hypernetwork_parameter_count_matches_paper_formula():
    hn = HyperNetwork()
    d = nz = 64
    assert num_parameters(hn) == d * (nz + 1) * 16 + 3 * 16 * 3 * (d + 1) == 75_920


@pytest.mark.parametrize("z_dim,in_size,out_size,f", [(64, 16, 16, 3), (4, 16, 16, 7), (8, 3, 5, 3)])
def test_hypernetwork_equals_paper_equations(z_dim, in_size, out_size, f):
    hn = HyperNetwork(z_dim, in_size, out_size, f).double()
    randomize_(hn, seed=1)
    z = torch.randn(z_dim, dtype=torch.float64)
    torch.testing.assert_close(hn(z), paper_hypernet(hn, z), rtol=1e-12, atol=1e-12)


def test_the_kernel_is_the_papers_not_a_view_of_the_stacked_slices():
    """The paper's kernel K has K[:, i] = K_i. Stacking the slices as an (in, out*f*f) matrix and
    viewing it as (out, in, f, f), as the public PyTorch implementation this field starts from
    does, puts the same numbers elsewhere: a permutation of the paper's kernel, not the kernel."""
    hn = HyperNetwork(8, 16, 16, 3).double()
    randomize_(hn, seed=3)
    z = torch.randn(8, dtype=torch.float64)
    slices = paper_hypernet(hn, z)  # (in, out, f, f)
    paper_kernel = torch.stack(list(slices), dim=1)  # K[:, i] = K_i: (out, in, f, f)
    bank = KernelBank([(16, 16, 3, 3)], hn).double()
    with torch.no_grad():
        bank.z.copy_(z)
    torch.testing.assert_close(bank()[0], paper_kernel, rtol=1e-12, atol=1e-12)  # ours: the paper's layout
    viewed = slices.reshape(16, 16 * 3 * 3).view(16, 16, 3, 3)  # the view
    assert not torch.allclose(viewed, paper_kernel)
    assert torch.equal(viewed.flatten().sort().values, paper_kernel.flatten().sort().values)  # the same numbers, moved
    assert torch.equal(viewed, paper_kernel.transpose(0, 1))  # input and output channels swapped


def test_hypernetwork_accepts_any_leading_shape():
    hn = HyperNetwork(z_dim=8)
    z = torch.randn(2, 3, 5, 8)
    out = hn(z)
    assert out.shape == (2, 3, 5, 16, 16, 3, 3)
    torch.testing.assert_close(out[1, 2, 4], hn(z[1, 2, 4]))


@pytest.mark.parametrize("width", [1, 2])
def test_batched_assembly_equals_per_tile_loop(width):
    net = PrimaryNetwork(40, width, hyper=True).double()
    randomize_(net.kernel_bank, seed=2)
    batched = net.generate()
    reference = per_tile_kernels(net.kernel_bank)
    assert len(batched) == len(reference) == 36
    for b, r in zip(batched, reference):
        assert b.shape == r.shape
        # float64: one batched GEMM and 966 single-row GEMMs may round differently
        # only in the last bits; any tiling mistake would be O(1).
        torch.testing.assert_close(b, r, rtol=1e-12, atol=1e-12)


def test_tiles_land_in_the_right_place():
    """Each tile (r, c) of a layer is the hypernetwork applied to that tile's own z."""
    bank = KernelBank([(32, 48, 3, 3)], HyperNetwork(z_dim=8)).double()
    (kernel,) = bank()
    assert bank.grids == [(2, 3)]
    for r in range(2):
        for c in range(3):
            tile = bank.hypernet(bank.z[r * 3 + c]).transpose(0, 1)  # slices K_i -> the conv's (out, in, f, f)
            torch.testing.assert_close(
                kernel[r * 16 : (r + 1) * 16, c * 16 : (c + 1) * 16], tile, rtol=1e-12, atol=1e-12
            )


def test_a_channels_last_model_gets_its_kernels_channels_last_with_the_same_values():
    """Kernels made in the layout the convs use are not converted by each conv, forward and backward."""
    torch.manual_seed(0)
    nchw = PrimaryNetwork(16, 1)  # 16- to 64-channel kernels: one tile, and grids of tiles
    last = PrimaryNetwork(16, 1)
    last.load_state_dict(nchw.state_dict())
    last.to(memory_format=torch.channels_last)
    kernels = last.generate()
    assert all(k.is_contiguous(memory_format=torch.channels_last) and not k.is_contiguous() for k in kernels)
    assert all(torch.equal(a, b) for a, b in zip(nchw.generate(), kernels))
    bank = KernelBank([(24, 40, 3, 3)], HyperNetwork(z_dim=8))  # a grid cut at its edges keeps its values
    assert torch.equal(bank()[0], bank(torch.channels_last)[0])
    x = torch.randn(4, 3, 32, 32)
    nchw(x).square().sum().backward()
    last(x.contiguous(memory_format=torch.channels_last)).square().sum().backward()
    grads = [(a.grad, b.grad) for a, b in zip(nchw.kernel_bank.parameters(), last.kernel_bank.parameters())]
    assert all((a - b).abs().max() <= 1e-4 * a.abs().max() for a, b in grads)  # conv algorithms differ by layout


@pytest.mark.parametrize("key", list(PINNED))
def test_parameter_counts_pinned_and_round_to_paper(key):
    depth, width, hyper = key
    count = num_parameters(PrimaryNetwork(depth, width, hyper=hyper))
    assert count == PINNED[key]
    assert round(count / 1e6, 3) == PAPER_TABLE2[key][1]


@pytest.mark.parametrize("width,tiles", [(1, 242), (2, 966)])
def test_number_of_z_and_generated_layers(width, tiles):
    net = PrimaryNetwork(40, width, hyper=True)
    assert net.kernel_bank.num_tiles == tiles
    assert net.kernel_bank.z.shape == (tiles, 64)
    assert len(net.generate()) == 36


def test_projection_shortcut_option_adds_1x1_convs():
    pad = PrimaryNetwork(40, 2, hyper=True)
    conv = PrimaryNetwork(40, 2, hyper=True, shortcut="conv")
    # 1x1 projections where shape changes: 16->32, 32->64 (stride 2), 64->128 (stride 2)
    assert num_parameters(conv) - num_parameters(pad) == 16 * 32 + 32 * 64 + 64 * 128
    assert round(num_parameters(conv) / 1e6, 3) > PAPER_TABLE2[(40, 2, True)][1]
    assert conv(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_hypernetwork_called_once_per_forward():
    net = PrimaryNetwork(40, 2, hyper=True)
    calls = []
    net.kernel_bank.hypernet.register_forward_hook(lambda *args: calls.append(1))
    net(torch.randn(2, 3, 32, 32))
    assert len(calls) == 1
    net(torch.randn(2, 3, 32, 32))
    assert len(calls) == 2


@pytest.mark.parametrize("hyper", [True, False])
def test_every_parameter_gets_a_gradient(hyper):
    torch.manual_seed(0)
    net = PrimaryNetwork(10, 2, hyper=hyper)
    net.fc.bias.data.normal_()  # zero-initialised biases still get gradients; keep it generic
    loss = nn.functional.cross_entropy(net(torch.randn(8, 3, 32, 32)), torch.randint(0, 10, (8,)))
    loss.backward()
    biases = conv_biases(net)
    for name, p in net.named_parameters():
        if name in biases:
            assert p.grad is not None and not p.grad.any(), name  # exactly zero: BatchNorm follows
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    if hyper:
        assert net.kernel_bank.z.grad.abs().sum(dim=1).gt(0).all(), "every single z must get a gradient"
    else:
        assert not any(isinstance(m, (HyperNetwork, KernelBank)) for m in net.modules())


def conv_biases(net: PrimaryNetwork) -> list[str]:
    """Names of the stem's and every block's conv biases: each feeds a training-mode BatchNorm."""
    return [n for n, _ in net.named_parameters() if n == "stem.bias" or n.endswith((".bias1", ".bias2"))]


@pytest.mark.parametrize("shortcut", ["pad", "conv"])
def test_a_shift_of_every_conv_bias_leaves_the_training_loss_unchanged(shortcut):
    """Why their gradient is exactly zero: every path from a conv bias ends in a training-mode BN."""
    torch.manual_seed(0)
    net = PrimaryNetwork(16, 1, hyper=True, shortcut=shortcut).double()
    x, y = torch.randn(8, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (8,))
    before = nn.functional.cross_entropy(net(x), y)
    params = dict(net.named_parameters())
    assert len(conv_biases(net)) == 1 + 2 * len(net.blocks)
    with torch.no_grad():
        for name in conv_biases(net):
            params[name].normal_()
    after = nn.functional.cross_entropy(net(x), y)
    assert torch.allclose(after, before, rtol=0, atol=1e-9) and not torch.equal(net.stem.bias, torch.zeros(16))


@pytest.mark.parametrize("hyper", [True, False])
def test_conv_biases_do_not_move_under_bf16_autocast_adam(hyper):
    """Their rounded gradient would move them by ~lr per Adam step; their exact one is zero."""
    torch.manual_seed(0)
    net = PrimaryNetwork(10, 1, hyper=hyper)
    initial = {name: p.detach().clone() for name, p in net.named_parameters()}
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(3):
        with torch.autocast("cpu", torch.bfloat16):
            loss = nn.functional.cross_entropy(net(torch.randn(8, 3, 32, 32)), torch.randint(0, 10, (8,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    params = dict(net.named_parameters())
    for name in conv_biases(net):
        assert torch.equal(params[name], initial[name]), name
    assert not torch.equal(params["stem.weight"], initial["stem.weight"])


@pytest.mark.parametrize("hyper", [True, False])
def test_output_shape(hyper):
    assert PrimaryNetwork(16, 1, hyper=hyper)(torch.randn(3, 3, 32, 32)).shape == (3, 10)
    assert PrimaryNetwork(10, 1, num_classes=7, hyper=hyper)(torch.randn(1, 3, 32, 32)).shape == (1, 7)


@pytest.mark.parametrize("scale_in", ["z", "hypernet"])
@pytest.mark.parametrize("width", [1, 2])
def test_generated_kernels_start_with_kaiming_std(width, scale_in):
    torch.manual_seed(0)
    net = PrimaryNetwork(40, width, hyper=True, scale_in=scale_in)
    for kernel in net.generate():
        target = math.sqrt(2.0 / (kernel.shape[1] * 9))
        assert abs(kernel.std().item() / target - 1) < 0.2, (tuple(kernel.shape), kernel.std().item(), target)
    z_std = net.kernel_bank.z.std().item()
    assert 0.7 < z_std < 1.3 if scale_in == "hypernet" else z_std < 0.15  # unit-scale z, or z carrying the scale


def test_forward_runs_on_the_kernels_that_kernels_returns():
    net = PrimaryNetwork(10, 1, hyper=True).eval()
    x = torch.randn(2, 3, 32, 32)
    generated = net(x)
    net.generate = lambda: [torch.zeros_like(k) for k in PrimaryNetwork.generate(net)]
    assert not torch.allclose(net(x), generated)


@pytest.mark.parametrize("depth", [0, 9, 11, 39, 41])
def test_depth_must_be_6n_plus_4(depth):
    with pytest.raises(ValueError, match="6N\\+4"):
        PrimaryNetwork(depth)


def test_blocks_per_stage():
    assert blocks_per_stage(40) == 6 and blocks_per_stage(10) == 1


def test_channels_not_multiples_of_the_tile_are_cropped_and_another_size_is_rejected():
    bank = KernelBank([(24, 16, 3, 3)], HyperNetwork())
    assert bank.grids == [(2, 1)] and bank().pop().shape == (24, 16, 3, 3)  # a 32x16 grid of tiles, cropped
    with pytest.raises(ValueError, match="does not have the hypernetwork's 3x3 size"):
        KernelBank([(16, 16, 1, 1)], HyperNetwork())


def test_no_device_in_constructor_and_to_moves_everything():
    net = PrimaryNetwork(10, 1, hyper=True)
    assert {t.device.type for t in list(net.parameters()) + list(net.buffers())} == {"cpu"}
    net = net.to(torch.float64)  # .to() reaches every tensor: z, hypernetwork, blocks
    assert {t.dtype for t in net.parameters()} == {torch.float64}
    assert net(torch.randn(1, 3, 32, 32, dtype=torch.float64)).dtype == torch.float64


def test_paper_table_lists_four_rows_with_counts():
    table = paper_table()
    for count in PINNED.values():
        assert f"{count:,}" in table
    assert "| hyper-40-2 | 147,610 | 0.148 | 0.148 | 7.23% | 966 | 36 |" in table


@pytest.mark.parametrize("hyper", [True, False])
def test_kernel_sq_norm_equals_sum_of_squares_of_generated_kernels(hyper):
    torch.manual_seed(0)
    net = PrimaryNetwork(10, 2, hyper=hyper).double()
    if hyper:  # non-zero biases, so every term of the Gram identity matters
        torch.nn.init.normal_(net.kernel_bank.hypernet.w_in.bias)
        torch.nn.init.normal_(net.kernel_bank.hypernet.w_out.bias)
    params = list(net.parameters())
    explicit = sum(k.pow(2).sum() for k in net.generate())
    cheap = net.kernel_sq_norm()
    torch.testing.assert_close(cheap, explicit, rtol=1e-12, atol=0)
    for (name, _), e, g in zip(
        net.named_parameters(),
        torch.autograd.grad(explicit, params, allow_unused=True),
        torch.autograd.grad(cheap, params, allow_unused=True),
    ):
        if e is None:
            assert g is None or not g.any(), name
        else:
            torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12, msg=name)


def test_sq_norm_is_float32_under_bf16_autocast():
    net = PrimaryNetwork(10, 1, hyper=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = net.kernel_sq_norm()
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, sum(k.pow(2).sum() for k in net.generate()), rtol=1e-4, atol=0)


def test_plain_wrn_kernels_start_at_kaiming_fan_in_scale():
    """Bug: the plain WRN's stored kernels drawn at Kaiming fan-out (mode="fan_out")."""
    torch.manual_seed(0)
    kernels = PrimaryNetwork(10, 2, hyper=False).generate()
    assert sum(k.shape[0] != k.shape[1] for k in kernels) == 3  # layers where fan-in and fan-out differ (by 2x)
    for k in kernels:
        fan_in = k.shape[1] * k.shape[2] * k.shape[3]
        ratio = k.std().item() / (2 / fan_in) ** 0.5
        assert abs(ratio - 1) < 0.1, (tuple(k.shape), ratio)  # fan-out would give 0.71
