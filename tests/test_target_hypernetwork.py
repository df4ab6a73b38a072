"""TargetHyperNetwork (static and dynamic) and the four examples that use it."""

import importlib.util
import math
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.func import functional_call

from cli import UserError
from conftest import HANG, write_fake_cifar
from target_hypernetwork import DEFAULT_ENCODER_HIDDEN, TargetHyperNetwork

# Most tests wrap small targets on purpose: the warning that the hypernetwork is larger is tested on its own.
pytestmark = pytest.mark.filterwarnings("ignore:TargetHyperNetwork.*larger than its target:UserWarning")

ROOT = Path(__file__).resolve().parents[1]


def load_example(name: str):
    """Import examples/<name>.py as a module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class WithScalar(nn.Module):
    """A target with a 0-dim parameter and a conv, to exercise odd shapes."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.gain = nn.Parameter(torch.tensor(2.0))
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1)) * self.gain


def mlp_target() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 3))


def bn_cnn() -> nn.Module:
    conv = nn.Conv2d(3, 4, 3, padding=1)
    return nn.Sequential(conv, nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


# name -> (constructor, input shape, output shape)
TARGETS = {
    "mlp": (mlp_target, (5, 6), (5, 3)),
    "bn_cnn": (bn_cnn, (5, 3, 6, 6), (5, 3)),
    "scalar": (WithScalar, (5, 3, 6, 6), (5, 5)),
}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread is as fast, and does not stall on a busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- shapes and layout


@pytest.mark.parametrize("key", list(TARGETS))
@pytest.mark.parametrize("chunk_size", [1, 7, 64, 10_000])
def test_generated_shapes_equal_the_targets(key, chunk_size):
    make, x_shape, out_shape = TARGETS[key]
    torch.manual_seed(0)
    target = make()
    expected = {n: p.shape for n, p in target.named_parameters()}
    hnet = TargetHyperNetwork(target, chunk_size=chunk_size, z_dim=4, hidden_sizes=(8,))
    out, params = hnet(torch.randn(x_shape))
    assert list(params) == list(expected)
    assert {n: p.shape for n, p in params.items()} == expected
    assert out.shape == out_shape


def test_dynamic_params_have_a_leading_batch_dimension():
    torch.manual_seed(0)
    target = WithScalar()
    hnet = TargetHyperNetwork(target, chunk_size=50, z_dim=4, dynamic=True, in_features=3 * 6 * 6)
    out, params = hnet(torch.randn(7, 3, 6, 6))
    assert out.shape == (7, 5)
    assert {n: p.shape for n, p in params.items()} == {n: (7, *p.shape) for n, p in target.named_parameters()}


def test_params_are_offset_plus_scale_times_the_flat_generator_output_in_order():
    torch.manual_seed(0)
    hnet = TargetHyperNetwork(WithScalar(), chunk_size=37, z_dim=5, hidden_sizes=(6, 7)).double()
    raw = hnet.generator(hnet.z).flatten()  # (num_chunks * 37,)
    assert raw.numel() == hnet.num_chunks * 37 > hnet.num_target_parameters
    params, start = hnet.generate(), 0
    for k, (_name, p) in enumerate(params.items()):
        piece = raw[start : start + p.numel()].view(p.shape)
        torch.testing.assert_close(p, hnet.init_offset[k] + hnet.init_scale[k] * piece)
        start += p.numel()
    assert start == hnet.num_target_parameters


def test_static_output_equals_the_target_loaded_with_the_generated_params():
    torch.manual_seed(0)
    hnet = TargetHyperNetwork(WithScalar(), chunk_size=100, z_dim=8)
    x = torch.randn(4, 3, 6, 6)
    out, params = hnet(x)
    plain = WithScalar()
    plain.load_state_dict({n: p.detach() for n, p in params.items()})
    torch.testing.assert_close(out, plain(x))


def test_one_generator_call_per_forward():
    torch.manual_seed(0)
    for dynamic in (False, True):
        kwargs = dict(dynamic=True, in_features=6) if dynamic else {}
        hnet = TargetHyperNetwork(mlp_target(), chunk_size=5, z_dim=4, **kwargs)
        calls = []
        hnet.generator.register_forward_hook(lambda *args, calls=calls: calls.append(1))
        hnet(torch.randn(3, 6))
        assert len(calls) == 1, dynamic


# ---------------------------------------------------------------- training behaviour


@pytest.mark.parametrize("dynamic", [False, True])
def test_gradients_reach_every_hypernetwork_parameter_and_embedding(dynamic):
    torch.manual_seed(0)
    kwargs = dict(dynamic=True, in_features=3 * 6 * 6) if dynamic else {}
    hnet = TargetHyperNetwork(WithScalar(), chunk_size=16, z_dim=6, hidden_sizes=(12,), **kwargs)
    out, _ = hnet(torch.randn(4, 3, 6, 6))
    out.square().mean().backward()
    trainable = [(n, p) for n, p in hnet.named_parameters() if p.requires_grad]
    assert {n for n, _ in trainable} >= {"z", "generator.0.weight", "generator.2.bias"}
    assert all(not n.startswith("target.") for n, _ in trainable)
    if dynamic:
        assert any(n.startswith("encoder.") for n, _ in trainable)
    for name, p in trainable:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert hnet.z.grad.abs().sum(dim=1).gt(0).all(), "every chunk embedding must get a gradient"
    for p in hnet.target.parameters():
        assert p.grad is None


def test_the_template_is_left_as_it_was_and_unchanged_by_an_optimizer_step():
    torch.manual_seed(0)
    target = bn_cnn()
    before = {n: p.detach().clone() for n, p in target.named_parameters()}
    hnet = TargetHyperNetwork(target, chunk_size=32, z_dim=4)
    assert all(p.requires_grad for p in target.parameters())  # the caller's module: not frozen, not emptied
    assert not list(hnet.target.parameters())  # the hypernetwork's copy holds its buffers only
    hyper_before = hnet.z.detach().clone()
    opt = torch.optim.AdamW(hnet.parameters(), lr=0.1, weight_decay=0.5)  # decay would move them if touched
    for _ in range(3):
        out, _ = hnet(torch.randn(4, 3, 6, 6))
        opt.zero_grad()
        out.square().mean().backward()
        opt.step()
    for n, p in target.named_parameters():
        assert torch.equal(p, before[n]), n
    assert not torch.equal(hnet.z, hyper_before), "the hypernetwork itself must have trained"


def test_training_reduces_the_loss():
    torch.manual_seed(0)
    hnet = TargetHyperNetwork(mlp_target(), chunk_size=20, z_dim=8)
    x, y = torch.randn(64, 6), torch.randn(64, 3)
    opt = torch.optim.Adam(hnet.parameters(), lr=1e-2)
    losses = []
    for _ in range(50):
        loss = nn.functional.mse_loss(hnet(x)[0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


# ---------------------------------------------------------------- counts and init


@pytest.mark.parametrize("chunk_size,z_dim,hidden", [(10, 4, (6,)), (66, 3, ()), (1, 2, (5, 7)), (1000, 8, (16,))])
def test_parameter_counts_follow_the_formula(chunk_size, z_dim, hidden):
    target = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    total = 5 * 7 + 7 + 7 * 3 + 3  # 66
    hnet = TargetHyperNetwork(target, chunk_size=chunk_size, z_dim=z_dim, hidden_sizes=hidden)
    chunks = math.ceil(66 / chunk_size)
    sizes = [z_dim, *hidden, chunk_size]
    generator = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    assert hnet.num_target_parameters == total == 66
    assert hnet.num_chunks == chunks
    assert hnet.z.shape == (chunks, z_dim)
    assert hnet.num_hyper_parameters == chunks * z_dim + generator
    assert f"{hnet.num_hyper_parameters:,} parameters" in hnet.summary()


def test_pinned_counts_of_the_library_example_configuration():
    target = nn.Sequential(nn.Linear(8, 256), nn.Tanh(), nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, 4, bias=False))
    hnet = TargetHyperNetwork(target, chunk_size=135, z_dim=32, hidden_sizes=(64,))
    # 8*256+256 + 256*256+256 + 256*4 = 69,120 = 512 * 135 exactly
    assert hnet.num_target_parameters == 69_120 and hnet.num_chunks == 512
    # 512*32 embeddings + (32*64+64) + (64*135+135) generator
    assert hnet.num_hyper_parameters == 16_384 + 2_112 + 8_775 == 27_271
    assert hnet.num_hyper_parameters < hnet.num_target_parameters


def test_dynamic_counts_include_the_default_encoder():
    hnet = TargetHyperNetwork(nn.Linear(12, 4), chunk_size=13, z_dim=16, dynamic=True, in_features=12)
    h = DEFAULT_ENCODER_HIDDEN
    encoder = 12 * h + h + h * 16 + 16
    assert hnet.num_hyper_parameters == 4 * 16 + (16 * 64 + 64 + 64 * 13 + 13) + encoder == 3_869


def test_generated_params_start_at_the_templates_scale():
    torch.manual_seed(0)
    target = nn.Sequential(nn.Conv2d(16, 64, 3), nn.BatchNorm2d(64), nn.Flatten(), nn.Linear(1024, 256))
    hnet = TargetHyperNetwork(target, chunk_size=512, z_dim=32, hidden_sizes=(64,))
    raw = hnet.generator(hnet.z)
    assert abs(raw.std().item() - 1) < 1e-4  # the last layer is rescaled to unit std
    params = hnet.generate()
    for name, template in target.named_parameters():
        if name.startswith("1."):  # BatchNorm: constant at init (ones, zeros) -> template value +- 0.1
            assert abs(params[name].mean().item() - template.mean().item()) < 0.05, name
            assert 0.05 < params[name].std().item() < 0.2, name
        else:  # random at init: the template's std, the same for every layer
            ratio = params[name].std().item() / template.std().item()
            assert 0.7 < ratio < 1.4, (name, ratio)


class ConstantsAtInit(nn.Module):
    """Tensors that start constant (a zeroed bias, BatchNorm's ones and zeros, a scalar) next to a random weight."""

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(2.0))
        self.fc = nn.Linear(16, 256)
        nn.init.zeros_(self.fc.bias)
        self.bn = nn.BatchNorm1d(256)

    def forward(self, x):
        return self.bn(self.fc(x)) * self.gain


def test_constant_scale_sets_the_spread_of_tensors_that_start_constant():
    generated = {}
    for constant_scale in (0.02, 0.5):
        torch.manual_seed(0)  # the same raw generator output for both scales
        target = ConstantsAtInit()
        hnet = TargetHyperNetwork(target, chunk_size=64, z_dim=8, constant_scale=constant_scale)
        scale = dict(zip(hnet.names, hnet.init_scale.tolist()))
        assert scale["fc.weight"] == pytest.approx(target.fc.weight.std(unbiased=False).item())  # random: its own std
        for name in ("gain", "fc.bias", "bn.weight", "bn.bias"):
            assert scale[name] == pytest.approx(constant_scale), name
        params = hnet.generate()
        for name, template in target.named_parameters():
            if name == "fc.weight":
                continue
            deviation = (params[name] - template).detach()  # template: the constant it started at
            generated[constant_scale, name] = deviation / constant_scale
            if name == "gain":  # a single number: within a few constant_scale of 2.0
                assert deviation.abs().item() < 3 * constant_scale
            else:  # 256 values around the template constant, spread ~constant_scale
                assert deviation.mean().abs().item() < 0.25 * constant_scale, name
                assert 0.7 * constant_scale < deviation.std().item() < 1.4 * constant_scale, name
    for name in ("gain", "fc.bias", "bn.weight", "bn.bias"):  # the spread is proportional to constant_scale
        torch.testing.assert_close(generated[0.02, name], generated[0.5, name], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- dynamic mode


@pytest.mark.parametrize("key", ["mlp", "scalar"])
def test_vmap_equals_a_per_sample_python_loop(key):
    make, x_shape, _ = TARGETS[key]
    torch.manual_seed(0)
    in_features = math.prod(x_shape[1:])
    hnet = TargetHyperNetwork(make(), chunk_size=23, z_dim=6, dynamic=True, in_features=in_features).double()
    x = torch.randn(x_shape, dtype=torch.float64)
    out, params = hnet(x)
    loop = []
    for i in range(len(x)):
        p_i = {n: p[i] for n, p in params.items()}
        loop.append(functional_call(hnet.target, p_i, (x[i : i + 1],))[0])
    torch.testing.assert_close(out, torch.stack(loop))
    for p in params.values():  # and each sample really has its own weights
        assert not torch.allclose(p[0], p[1])


def test_dynamic_weights_depend_only_on_their_own_sample():
    torch.manual_seed(0)
    hnet = TargetHyperNetwork(mlp_target(), chunk_size=9, z_dim=4, dynamic=True, in_features=6).double()
    x = torch.randn(4, 6, dtype=torch.float64)
    out_a, params_a = hnet(x)
    x_b = x.clone()
    x_b[1:] = torch.randn(3, 6, dtype=torch.float64)
    out_b, params_b = hnet(x_b)
    torch.testing.assert_close(out_a[0], out_b[0])
    for n in params_a:
        torch.testing.assert_close(params_a[n][0], params_b[n][0])


def test_user_encoder_is_used_and_trained():
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(6, 5))
    hnet = TargetHyperNetwork(mlp_target(), chunk_size=9, z_dim=5, dynamic=True, encoder=encoder)
    assert hnet.encoder is encoder
    out, _ = hnet(torch.randn(3, 6))
    out.sum().backward()
    assert encoder[1].weight.grad.abs().sum() > 0
    assert hnet.num_hyper_parameters == hnet.num_chunks * 5 + (5 * 64 + 64 + 64 * 9 + 9) + (6 * 5 + 5)


def test_dynamic_mode_draws_dropout_per_sample():
    torch.manual_seed(0)
    target = nn.Sequential(nn.Linear(6, 32), nn.Dropout(0.5), nn.Linear(32, 2))
    hnet = TargetHyperNetwork(target, chunk_size=64, z_dim=4, dynamic=True, in_features=6)
    out, _ = hnet(torch.randn(5, 6))  # vmap's default randomness would raise here
    assert out.shape == (5, 2)


def test_dynamic_dropout_masks_differ_between_identical_samples():
    torch.manual_seed(0)
    target = nn.Sequential(nn.Linear(6, 64), nn.Dropout(0.5))  # a zero in the output marks a dropped unit
    hnet = TargetHyperNetwork(target, chunk_size=64, z_dim=4, dynamic=True, in_features=6)
    x = torch.randn(1, 6).repeat(4, 1)  # four identical samples
    out, params = hnet(x)
    for p in params.values():  # same input, same generated weights ...
        for i in range(1, 4):
            torch.testing.assert_close(p[i], p[0])
    dropped = out == 0  # (4, 64)
    assert dropped.any(dim=1).all() and not dropped.all(dim=1).any()
    assert len({tuple(row.tolist()) for row in dropped}) == 4, "each sample must draw its own dropout mask"
    hnet.eval()  # ... so without dropout the four outputs agree
    out_eval, _ = hnet(x)
    assert not out_eval.eq(0).any()
    for i in range(1, 4):
        torch.testing.assert_close(out_eval[i], out_eval[0])


# ---------------------------------------------------------------- buffers (BatchNorm)


def test_static_batchnorm_keeps_updating_its_running_stats():
    torch.manual_seed(0)
    target = bn_cnn()
    hnet = TargetHyperNetwork(target, chunk_size=32, z_dim=4)
    bn = hnet.target[1]  # its copy of the template's BatchNorm
    assert torch.equal(bn.running_mean, torch.zeros(4)) and bn.num_batches_tracked == 0
    hnet(torch.randn(8, 3, 6, 6) + 3)
    assert bn.num_batches_tracked == 1
    assert bn.running_mean.abs().sum() > 0
    mean_after_one = bn.running_mean.clone()
    hnet(torch.randn(8, 3, 6, 6) + 3)
    assert bn.num_batches_tracked == 2 and not torch.equal(bn.running_mean, mean_after_one)
    # eval mode uses the running stats: a sample's output does not depend on its batch
    hnet.eval()
    x = torch.randn(6, 3, 6, 6)
    torch.testing.assert_close(hnet(x)[0][:2], hnet(x[:2])[0])
    frozen = bn.running_mean.clone()
    hnet(x)
    assert torch.equal(bn.running_mean, frozen)


def test_dynamic_batchnorm_in_training_mode_is_refused_and_works_in_eval():
    torch.manual_seed(0)
    hnet = TargetHyperNetwork(bn_cnn(), chunk_size=32, z_dim=4, dynamic=True, in_features=3 * 6 * 6).double()
    x = torch.randn(3, 3, 6, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="BatchNorm in training mode"):
        hnet(x)
    hnet.target.eval()
    out, params = hnet(x)
    loop = [functional_call(hnet.target, {n: p[i] for n, p in params.items()}, (x[i : i + 1],))[0] for i in range(3)]
    torch.testing.assert_close(out, torch.stack(loop))


# ---------------------------------------------------------------- errors, dtype, device


class NoParams(nn.Module):
    def forward(self, x):
        return x


def nan_linear() -> nn.Linear:
    """A template left uninitialised in the worst way."""
    layer = nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight.fill_(float("nan"))
    return layer


@pytest.mark.parametrize(
    "make,kwargs,match",
    [
        (NoParams, {}, "no parameters"),
        (nn.ReLU, {}, "no parameters"),
        (mlp_target, {"chunk_size": 0}, "chunk_size and z_dim must be >= 1"),
        (mlp_target, {"z_dim": 0}, "chunk_size and z_dim must be >= 1"),
        (mlp_target, {"hidden_sizes": (8, 0)}, "hidden sizes must be >= 1"),
        (mlp_target, {"constant_scale": 0.0}, "constant_scale"),
        (mlp_target, {"dynamic": True}, "exactly one of encoder or in_features"),
        (mlp_target, {"dynamic": True, "in_features": 6, "encoder": nn.Linear(6, 32)}, "exactly one"),
        (mlp_target, {"dynamic": True, "in_features": 0}, "in_features must be >= 1"),
        (mlp_target, {"in_features": 6}, "only used in dynamic mode"),
        (mlp_target, {"encoder": nn.Linear(6, 32)}, "only used in dynamic mode"),
        (lambda: nn.LazyLinear(3), {}, "uninitialized"),
        (nan_linear, {}, "inf/nan"),
    ],
)
def test_clear_errors_at_construction(make, kwargs, match):
    with pytest.raises(ValueError, match=match):
        TargetHyperNetwork(make(), **kwargs)


WRONG_ENCODERS = [nn.Linear(6, 7), nn.Identity(), nn.Sequential(nn.Linear(6, 32), nn.Unflatten(1, (4, 8)))]


@pytest.mark.parametrize("encoder", WRONG_ENCODERS)
def test_encoder_with_the_wrong_output_shape_is_a_clear_error(encoder):
    hnet = TargetHyperNetwork(mlp_target(), z_dim=32, dynamic=True, encoder=encoder)
    with pytest.raises(ValueError, match=r"encoder output must have shape \(batch, z_dim\) = \(3, 32\)"):
        hnet(torch.randn(3, 6))


def test_generate_arguments_match_the_mode():
    static = TargetHyperNetwork(mlp_target())
    with pytest.raises(ValueError, match="static mode"):
        static.generate(torch.randn(2, 6))
    dynamic = TargetHyperNetwork(mlp_target(), dynamic=True, in_features=6)
    with pytest.raises(ValueError, match="call generate\\(x\\)"):
        dynamic.generate()


def test_no_device_in_constructor_and_to_moves_everything():
    hnet = TargetHyperNetwork(bn_cnn(), chunk_size=32, dynamic=True, in_features=108)
    assert {t.device.type for t in list(hnet.parameters()) + list(hnet.buffers())} == {"cpu"}
    hnet = hnet.to(torch.float64)
    assert {t.dtype for t in list(hnet.parameters()) + [hnet.init_offset, hnet.init_scale]} == {torch.float64}
    hnet.target.eval()
    out, params = hnet(torch.randn(2, 3, 6, 6, dtype=torch.float64))
    assert out.dtype == torch.float64 and all(p.dtype == torch.float64 for p in params.values())
    assert "init_scale" in hnet.state_dict() and "z" in hnet.state_dict()


def test_state_dict_keys_are_stable():
    """Saved state must keep loading: the keys are part of the API, and their order is the
    order of hnet.parameters(), which a saved optimizer state refers to by position. The
    template's values are no part of it (the target keeps only its buffers)."""
    hnet = TargetHyperNetwork(nn.Linear(3, 2), chunk_size=4, z_dim=2, hidden_sizes=(5,), dynamic=True, in_features=3)
    assert list(hnet.state_dict()) == [
        "z", "init_offset", "init_scale",
        "generator.0.weight", "generator.0.bias", "generator.2.weight", "generator.2.bias",
        "encoder.1.weight", "encoder.1.bias", "encoder.3.weight", "encoder.3.bias",
    ]  # fmt: skip


# ---------------------------------------------------------------- examples


def test_mlp_exercise_example_reports_nonzero_gradients(capsys):
    argv = ["--hidden", "5", "--steps", "20", "--z-dim", "3", "--hyper-hidden", "4"]
    result = load_example("mlp_exercise").main(argv)
    assert result["target_params"] == 4 * 5 + 5 + 5 * 2 + 2
    assert result["hyper_params"] == 3 + (3 * 4 + 4) + (4 * 37 + 37)
    assert set(result["grad_norms"]) == {"z", "0.weight", "0.bias", "2.weight", "2.bias"}
    assert all(g > 0 for g in result["grad_norms"].values())
    assert "all 5 hypernetwork tensors received non-zero gradients" in capsys.readouterr().out


@pytest.mark.slow
def test_library_style_example_loss_goes_down(capsys):
    argv = ["--steps", "60", "--hidden", "32", "--num-chunks", "16", "--log-every", "30", "--train-size", "256"]
    result = load_example("library_style").main(argv)
    total = 8 * 32 + 32 + 32 * 32 + 32 + 32 * 4
    assert result["target_params"] == total and result["num_chunks"] == 16
    assert result["last_loss"] < 0.5 * result["first_loss"]
    assert "ratio:" in capsys.readouterr().out


@pytest.mark.slow
def test_dynamic_weights_example_runs_and_dynamic_beats_static(capsys):
    result = load_example("dynamic_weights").main(["--steps", "150", "--train-size", "512", "--mlp-hidden", "8"])
    mse = result["test_mse"]
    assert set(mse) == {"static", "mlp", "dynamic"}
    assert mse["dynamic"] < 0.5 * mse["static"]
    assert "dynamic params for 3 test samples: weight (3, 4, 12), bias (3, 4)" in capsys.readouterr().out


@pytest.mark.slow
def test_cnn_generator_cifar_example_on_fake_data(tmp_path, capsys):
    example = load_example("cnn_generator_cifar")
    write_fake_cifar(tmp_path / "data", per_batch=20, test_size=20)
    out = tmp_path / "curve.png"
    argv = ["--data-dir", str(tmp_path / "data"), "--out", str(out)]
    argv += ["--steps", "3", "--batch-size", "8", "--eval-every", "2"]
    result = example.main(argv)
    assert out.is_file() and out.stat().st_size > 1000
    assert len(result["losses"]) == 3 and all(math.isfinite(v) for v in result["losses"])
    n = 554_922  # 3 conv+BN stages (32, 64, 128 channels) + 2048->224->10
    assert result["cnn_params"] == n
    assert result["flat_params"] == 64 + (64 * 256 + 256) + (256 * n + n) == 142_631_658
    assert result["hyper_params"] == 542 * 64 + (64 * 128 + 128) + (128 * 1024 + 1024) == 175_104
    assert result["hyper_params"] < result["cnn_params"] < result["flat_params"]
    text = capsys.readouterr().out
    assert "100 training and 20 test images" in text and "142,631,658" in text


def test_cifar_example_uses_train_loader_with_limits(tmp_path):
    example = load_example("cnn_generator_cifar")
    write_fake_cifar(tmp_path, per_batch=20, test_size=20)
    x_train, y_train, x_test, y_test = example.load_cifar10(tmp_path, train_limit=30)
    assert x_train.shape == (30, 3, 32, 32) and x_train.dtype == torch.uint8 and y_train.shape == (30,)
    assert x_test.shape == (20, 3, 32, 32) and y_test.dtype == torch.int64
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    assert torch.equal(x_train[0], torch.from_numpy(raw[b"data"][0].reshape(3, 32, 32)))  # channel-planar rows
    with pytest.raises(UserError, match="cifar-10-batches-py"):
        example.load_cifar10(tmp_path / "nowhere")


@pytest.mark.parametrize(
    "name", ["mlp_exercise", "library_style", "dynamic_weights", "cnn_generator_cifar", "fit_start"]
)
def test_examples_have_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_example(name).main(["--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


@pytest.mark.slow
def test_example_runs_as_a_script_from_the_repo_root():
    cmd = [sys.executable, "examples/library_style.py"]
    cmd += ["--steps", "2", "--hidden", "8", "--num-chunks", "4", "--log-every", "1"]
    env = {**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}  # must find target_hypernetwork by itself
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=HANG)
    assert done.returncode == 0, done.stderr
    assert "step     2" in done.stdout


def test_to_plain_holds_the_generated_parameters_and_gives_the_same_outputs():
    torch.manual_seed(0)
    hnet = TargetHyperNetwork(bn_cnn(), chunk_size=32, z_dim=4).eval()
    plain = hnet.to_plain()
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(plain(x), hnet(x)[0], rtol=0, atol=0)
    assert {n: p.shape for n, p in plain.named_parameters()} == {n: p.shape for n, p in bn_cnn().named_parameters()}
    with pytest.raises(ValueError, match="dynamic mode"):
        TargetHyperNetwork(bn_cnn(), chunk_size=32, dynamic=True, in_features=108).to_plain()


def test_a_hypernetwork_larger_than_its_target_says_so_in_one_line():
    with pytest.warns(UserWarning, match=r"the hypernetwork \(.*\) is larger than its target \(103\)"):
        TargetHyperNetwork(mlp_target())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TargetHyperNetwork(nn.Linear(100, 100), chunk_size=100, z_dim=4, hidden_sizes=(8,))  # smaller: silent
