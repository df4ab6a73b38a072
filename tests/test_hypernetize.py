"""hypernetize: the paper's tiled hypernetwork for an unmodified CNN (torchvision's or yours)."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from hypernetwork_modules import HyperNetized, default_layers, hypernetize, layout_of, rebuild
from primary_net import PrimaryNetwork


class SmallCNN(nn.Module):
    """A user's CNN: a 3-channel stem (not tileable), two tileable 3x3 convs, a 1x1 and a depthwise conv."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.conv1 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 32, 3, padding=1, bias=False)
        self.point = nn.Conv2d(32, 32, 1)
        self.depthwise = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        h = F.relu(self.bn(self.stem(x)))
        h = F.relu(self.conv2(F.relu(self.conv1(h))))
        h = self.depthwise(self.point(h))
        return self.fc(h.mean(dim=(2, 3)))


def models():
    torch.manual_seed(0)
    return {"small": SmallCNN(), "resnet18": torchvision.models.resnet18(num_classes=10)}


@pytest.mark.parametrize("name", ["small", "resnet18"])
def test_same_outputs_shape_one_call_gradients_and_fewer_parameters(name):
    model = models()[name]
    original_count = sum(p.numel() for p in model.parameters())
    x = torch.randn(2, 3, 32, 32)
    expected_shape = model(x).shape
    net = hypernetize(model, z_dim=8 if name == "small" else 64)  # a small model wants a small hypernetwork
    calls = {key: [] for key in net.banks}
    for key, bank in net.banks.items():
        bank.hypernet.register_forward_hook(lambda *a, key=key: calls[key].append(1))
    out = net(x)
    assert out.shape == expected_shape and all(len(c) == 1 for c in calls.values())  # one call per hypernetwork
    F.cross_entropy(out, torch.tensor([1, 2])).backward()
    for bank in net.banks.values():
        assert bank.z.grad.abs().sum(dim=1).gt(0).all(), "every z gets a gradient"
        for p in bank.hypernet.parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0
    trainable = sum(p.numel() for p in net.parameters())
    assert trainable < original_count / (5 if name == "resnet18" else 1.5)
    assert "fewer" in net.summary()


def test_which_layers_are_generated_and_by_which_tiles():
    net = hypernetize(SmallCNN())  # by default every conv but the stem; each kernel shape family its own tile
    assert net.generated == ["conv1.weight", "conv2.weight", "point.weight", "depthwise.weight"]
    assert list(net.banks) == ["16x16x3x3", "16x16x1x1", "16x1x3x3"]
    names = {n for n, _ in net.named_parameters()}
    assert "model.stem.weight" in names and "model.fc.weight" in names and "model.conv1.bias" in names
    assert "model.conv1.weight" not in names and "model.depthwise.weight" not in names
    assert hypernetize(SmallCNN(), layers=["conv2"]).generated == ["conv2.weight"]
    two_heads = nn.Sequential(
        SmallCNN(), nn.Linear(10, 16), nn.Linear(16, 4)
    )  # Linear layers too, all but the classifier
    assert (
        hypernetize(two_heads).generated[-1] == "1.weight"
        and "1.weight" not in hypernetize(two_heads, linear=False).generated
    )
    chosen = hypernetize(SmallCNN(), layers=lambda name, m: isinstance(m, nn.Linear))
    assert chosen.generated == ["fc.weight"] and chosen(torch.randn(2, 3, 8, 8)).shape == (2, 10)


def test_errors_say_which_layer_and_why():
    with pytest.raises(ValueError, match=r"^SmallCNN has no layer named 'conv3'$"):  # a typo
        hypernetize(SmallCNN(), layers=["conv3"])
    with pytest.raises(
        ValueError, match=r"^bn cannot be generated: it is a BatchNorm2d, neither an nn.Conv2d nor an nn.Linear$"
    ):
        hypernetize(SmallCNN(), layers=["bn"])
    with pytest.raises(ValueError, match=r"^1 cannot be generated: its kernel is 1x7: the tiles are square$"):
        hypernetize(nn.Sequential(nn.Conv2d(3, 16, 3), nn.Conv2d(16, 16, (1, 7))), layers=["1"])
    with pytest.raises(
        ValueError, match=r"^Sequential has nothing to generate: no square nn.Conv2d but its first, no nn.Linear"
    ):
        hypernetize(nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU()))


def test_the_callers_model_is_left_as_it_was_unless_inplace():
    torch.manual_seed(0)
    model, x = SmallCNN().eval(), torch.randn(2, 3, 32, 32)
    before, out = copy.deepcopy(model.state_dict()), model(x)
    net = hypernetize(model)
    assert net.model is not model and torch.equal(model(x), out)  # the caller's model still runs, as it did
    assert model.state_dict().keys() == before.keys() and all(
        torch.equal(before[k], v) for k, v in model.state_dict().items()
    )
    wrapped = hypernetize(model, inplace=True)
    assert wrapped.model is model and not hasattr(model.conv1, "weight")  # its kernels now come from the bank
    assert "HyperNetized" not in repr(model) and "banks" in repr(wrapped)


def test_summary_says_fewer_or_more():
    assert "x fewer)" in hypernetize(torchvision.models.resnet18(num_classes=10)).summary()
    one = hypernetize(SmallCNN(), layers=["conv1"])  # 4,608 generated values from a 75,920-parameter hypernetwork
    assert one.summary().endswith("x more)") and "16x16x3x3 tiles: 1 weights, 4,608 values from" in one.summary()


def test_generated_kernels_start_at_each_layers_own_scale():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    stds = {f"{n}.weight": m.weight.std().item() for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    net = hypernetize(model)
    for name, kernel in zip(net.generated, net.generate()):
        assert abs(kernel.std().item() / stds[name] - 1) < 0.25, name


def test_state_dict_round_trip_and_conversion_to_a_plain_model():
    torch.manual_seed(0)
    net = hypernetize(torchvision.models.resnet18(num_classes=10)).eval()
    with torch.no_grad():
        for bank in net.banks.values():
            bank.z.mul_(1.5)  # anything but the initial state
    x = torch.randn(2, 3, 32, 32)
    fresh = hypernetize(torchvision.models.resnet18(num_classes=10)).eval()
    fresh.load_state_dict(net.state_dict())
    assert torch.equal(fresh(x), net(x))
    plain = net.to_plain().eval()
    assert isinstance(plain, torchvision.models.ResNet) and not isinstance(plain, HyperNetized)
    torch.testing.assert_close(plain(x), net(x), rtol=1e-5, atol=1e-6)
    assert sum(p.numel() for p in plain.parameters()) == 11_181_642  # an ordinary resnet18 again


def test_l2_penalty_from_gram_matrices_equals_the_kernels_sum_of_squares():
    net = hypernetize(SmallCNN()).double()
    torch.testing.assert_close(net.kernel_sq_norm(), sum(k.pow(2).sum() for k in net.generate()), rtol=1e-10, atol=0)


def test_train_eval_to_and_compile():
    net = hypernetize(SmallCNN())
    net.eval()
    assert not net.model.bn.training
    net.train()
    assert net.model.bn.training
    net = net.to(torch.float64)
    assert net(torch.randn(1, 3, 8, 8, dtype=torch.float64)).dtype == torch.float64
    compiled = torch.compile(copy.deepcopy(net).float(), backend="aot_eager")  # graph capture, no C++ build
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(compiled(x), net.float()(x))
    last = copy.deepcopy(net).to(memory_format=torch.channels_last)  # its kernels follow the stem's layout
    kernels = dict(zip(last.generated, last.generate()))
    conv1 = kernels["conv1.weight"]
    assert conv1.is_contiguous(memory_format=torch.channels_last) and not conv1.is_contiguous()
    assert all(torch.equal(a, b) for a, b in zip(net.generate(), last.generate()))


class PlainWRN(nn.Module):
    """A WRN-(6N+4)-k written with ordinary nn.Conv2d layers, the layout of PrimaryNetwork."""

    def __init__(self, depth: int = 40, width: int = 1):
        super().__init__()
        reference = PrimaryNetwork(depth, width, hyper=False)
        self.reference = reference
        shapes = [s for block in reference.blocks for s in block.kernel_shapes()]
        self.convs = nn.ModuleList(nn.Conv2d(s[1], s[0], 3, padding=1, bias=False) for s in shapes)

    def forward(self, x):
        return self.reference(x, [c.weight for c in self.convs])


def test_wrn_40_1_from_ordinary_convs_gives_the_papers_36_kernels_from_242_zs():
    model = PlainWRN(40, 1)
    assert default_layers(model) == [f"convs.{i}" for i in range(36)]  # all but the stem
    net = hypernetize(model)  # the paper's settings are the defaults: z_dim 64, 16x16 tiles
    paper = PrimaryNetwork(40, 1, hyper=True)
    (bank,) = net.banks.values()
    assert bank.num_tiles == paper.kernel_bank.num_tiles == 242
    assert bank.shapes == paper.kernel_bank.shapes and len(net.generate()) == 36
    bank.load_state_dict(paper.kernel_bank.state_dict())
    for a, b in zip(net.generate(), paper.generate()):
        assert torch.equal(a, b)
    assert sum(p.numel() for p in bank.parameters()) == sum(p.numel() for p in paper.kernel_bank.parameters())


def test_cropped_tiles_and_their_penalty_are_exact():
    """Channels that are not multiples of 16 (24, 40, 3 per group) come from a covering grid of
    tiles, cropped; the L2 penalty from Gram matrices still equals the kernels' sum of squares."""
    model = nn.Sequential(
        nn.Conv2d(3, 24, 3), nn.Conv2d(24, 40, 3), nn.Conv2d(40, 40, 3, groups=8), nn.Conv2d(40, 24, 1)
    )
    net = hypernetize(model, z_dim=8).double()
    assert [tuple(k.shape) for k in net.generate()] == [(40, 24, 3, 3), (40, 5, 3, 3), (24, 40, 1, 1)]
    assert list(net.banks) == ["16x16x3x3", "16x5x3x3", "16x16x1x1"]
    torch.testing.assert_close(net.kernel_sq_norm(), sum(k.pow(2).sum() for k in net.generate()), rtol=1e-10, atol=0)


FAMILIES = [
    "resnet18",
    "resnet50",
    "vgg11",
    "densenet121",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "convnext_tiny",
    "regnet_y_400mf",
    "shufflenet_v2_x0_5",
    "squeezenet1_1",
    "googlenet",
]


@pytest.mark.parametrize("name", FAMILIES)
def test_torchvisions_families_hypernetize_with_the_defaults(name):
    """Forward and backward finite, one call per hypernetwork, far fewer parameters,
    `to_plain()` the same outputs, a state_dict round trip, and the caller's model untouched."""
    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    model = getattr(torchvision.models, name)(num_classes=10, **kwargs).eval()
    x = torch.randn(2, 3, 64, 64)
    before = model(x)
    net = hypernetize(model).eval()
    calls = []
    for bank in net.banks.values():
        bank.hypernet.register_forward_hook(lambda *a: calls.append(1))
    out = net(x)
    assert len(calls) == len(net.banks) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.banks.parameters())
    assert sum(p.numel() for p in net.parameters()) < sum(p.numel() for p in model.parameters()) / 1.8  # 1.9x-22x
    torch.testing.assert_close(net.to_plain().eval()(x), out, rtol=1e-4, atol=1e-5)
    fresh = hypernetize(getattr(torchvision.models, name)(num_classes=10, **kwargs)).eval()
    fresh.load_state_dict(net.state_dict())
    assert torch.equal(fresh(x), out.detach())
    assert torch.equal(model(x), before)  # the caller's model runs as before


def assembled(bank, layer: int) -> torch.Tensor:
    """Layer LAYER's kernel of BANK built here: the hypernetwork on that layer's own z's, each
    basic kernel placed in its (row, column) of the grid, the grid cropped to the layer's channels."""
    first = sum(bank.tiles_per_layer[:layer])
    (rows, cols), (c_out, c_in, f, _) = bank.grids[layer], bank.shapes[layer]
    hyper = bank.hypernet
    tiles = hyper(bank.z[first : first + rows * cols])  # (tiles, in, out, f, f): K[:, i] = K_i
    grid = torch.zeros(rows * hyper.out_size, cols * hyper.in_size, f, f, dtype=tiles.dtype)
    for r in range(rows):
        for c in range(cols):
            grid[r * hyper.out_size : (r + 1) * hyper.out_size, c * hyper.in_size : (c + 1) * hyper.in_size] = tiles[
                r * cols + c
            ].transpose(0, 1)
    return grid[:c_out, :c_in]


def test_every_layer_of_a_bank_crops_its_own_tiles():
    """Three layers of one bank, all with cut tiles: each kernel comes from that layer's own z's,
    cropped, and the L2 penalty counts each layer's cut tiles from its own z's too."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 24, 3), nn.Conv2d(24, 40, 3), nn.Conv2d(40, 20, 3), nn.Conv2d(20, 24, 3))
    net = hypernetize(model, z_dim=8).double()
    (bank,) = net.banks.values()
    assert bank.shapes == [(40, 24, 3, 3), (20, 40, 3, 3), (24, 20, 3, 3)] and bank.tiles_per_layer == [6, 6, 4]
    with torch.no_grad():
        torch.nn.init.normal_(bank.hypernet.w_in.bias)  # every term of the generator matters
        torch.nn.init.normal_(bank.hypernet.w_out.bias)
    kernels = net.generate()
    for layer, kernel in enumerate(kernels):
        torch.testing.assert_close(kernel, assembled(bank, layer), rtol=1e-12, atol=1e-12, msg=f"layer {layer}")
    expected = sum(assembled(bank, layer).pow(2).sum() for layer in range(3))
    torch.testing.assert_close(net.kernel_sq_norm(), expected, rtol=1e-10, atol=0)


def hypernet_calls(model: nn.Module) -> list:
    """A list that grows by one on every call of any of MODEL's hypernetworks."""
    calls: list = []
    for m in model.modules():
        if type(m).__name__ == "HyperNetwork":
            m.register_forward_hook(lambda *a: calls.append(1))
    return calls


@pytest.mark.parametrize("name", ["hyper-wrn", "mnist", "hypernetize-resnet18", "resnet18"])
def test_the_trainer_steps_any_module_generating_each_kernel_once_per_step(name):
    """engine.train_step takes any nn.Module with forward(x): the paper's networks and a
    torchvision model, hypernetized or not. Each hypernetwork runs once per step, and the
    L2 penalty is the sum of squares of the generated (or would-be generated) weights."""
    import engine
    import mnist

    torch.manual_seed(0)
    model, shape = {
        "hyper-wrn": (lambda: PrimaryNetwork(10, 1), (4, 3, 32, 32)),
        "mnist": (lambda: mnist.MnistNet(), (4, 1, 28, 28)),
        "hypernetize-resnet18": (lambda: hypernetize(torchvision.models.resnet18(num_classes=10)), (4, 3, 32, 32)),
        "resnet18": (lambda: torchvision.models.resnet18(num_classes=10), (4, 3, 32, 32)),
    }[name]
    model = model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    state = engine.TrainState(model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0))
    calls, before = hypernet_calls(model), [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(shape), torch.randint(0, 10, (4,))
    for _step in range(2):
        loss, logits = engine.train_step(state, x, y, weight_decay=0.1)
        assert logits.shape == (4, 10) and torch.isfinite(loss)
    hypernetworks = {"resnet18": 0, "hypernetize-resnet18": len(getattr(model, "banks", ()))}.get(name, 1)
    assert len(calls) == 2 * hypernetworks
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    if name == "resnet18":  # the weights hypernetize would generate
        modules = dict(model.named_modules())
        expected = sum(modules[n].weight.pow(2).sum() for n in default_layers(model))
        torch.testing.assert_close(engine.kernel_sq_norm_of(model)(), expected)


def test_a_saved_hypernetized_model_rebuilds_from_its_state_dict_alone(tmp_path):
    """The state_dict records hypernetize's arguments: a fresh torchvision model and `rebuild` give the
    same module back, with no arguments remembered by the caller."""
    torch.manual_seed(0)
    net = hypernetize(torchvision.models.resnet18(num_classes=10), z_dim=8, layers=["layer1.0.conv1", "fc"]).eval()
    torch.save(net.state_dict(), tmp_path / "net.pt")
    saved = torch.load(tmp_path / "net.pt", weights_only=True)
    back = rebuild(torchvision.models.resnet18(num_classes=10), saved).eval()
    assert back.get_extra_state() == {"layers": ["layer1.0.conv1", "fc"], "z_dim": 8, "tile": 16}
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(back(x), net(x))
    with pytest.raises(ValueError, match="not a HyperNetized state_dict"):
        rebuild(torchvision.models.resnet18(num_classes=10), torchvision.models.resnet18(num_classes=10).state_dict())
    other = hypernetize(torchvision.models.resnet18(num_classes=10), z_dim=8, layers=["layer1.0.conv1", "fc"], tile=8)
    with pytest.raises(ValueError, match="made by hypernetize with"):
        other.load_state_dict(saved, strict=False)


def test_inference_reuses_the_kernels_until_a_parameter_changes():
    """Eval mode with gradients off generates once; an in-place update of a z or of a
    hypernetwork weight (as an optimizer step makes) regenerates; training never reuses."""
    torch.manual_seed(0)
    net = hypernetize(torchvision.models.resnet18(num_classes=10), z_dim=8).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        first = net.generate()
        assert all(a is b for a, b in zip(net.generate(), first))  # reused
        expected = net(x)
    for bank in net.banks.values():
        for param in (bank.z, bank.hypernet.w_out.weight):
            with torch.no_grad():
                param.add_(0.01)
                again = net.generate()
                assert not any(a is b for a, b in zip(again, first))
                assert all(torch.equal(a, b) for a, b in zip(again, net._make(layout_of(net.model))))
            first = again
    with torch.inference_mode():  # weights made here serve a later no_grad call, unchanged
        made = [k.clone() for k in net.generate()]
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(net.generate(), made)) and not torch.equal(net(x), expected)
    kernels = net.generate()  # gradients on (e.g. a model fine-tuned in eval mode): fresh, with their graph
    assert all(k.requires_grad for k in kernels) and not any(a is b for a, b in zip(kernels, net.generate()))
    net.train()
    with torch.no_grad():
        assert not any(a is b for a, b in zip(net.generate(), net.generate()))


def test_the_wrapped_model_runs_with_the_generated_weights_when_called_itself():
    """``net.model`` is the caller's architecture: called directly it runs with the generated
    weights (gradients reach the z's), and holds none of them afterwards; to_plain's copy
    is an ordinary model, without that machinery."""
    torch.manual_seed(0)
    net = hypernetize(torchvision.models.resnet18(num_classes=10), z_dim=8)
    x = torch.randn(2, 3, 32, 32)
    net.eval()
    with torch.no_grad():
        assert torch.equal(net.model(x), net(x))
    assert not hasattr(net.model.get_submodule("layer1.0.conv1"), "weight")
    net.train()
    net.model(x).sum().backward()
    assert all(bank.z.grad is not None for bank in net.banks.values())
    plain = net.eval().to_plain()
    assert not plain._forward_pre_hooks and not plain._forward_hooks
    with torch.no_grad():
        torch.testing.assert_close(plain(x), net(x))
