"""mnist.py --protocol notebook and --init: the author's augmentation, schedule, clipping,
slicing and initialisation, and how compare.py keeps such runs out of Table 7's rows."""

import json
import math

import pytest
import torch

import compare
import data
import diagrams
import engine
import mnist
import run_records
from conftest import only_run
from experiment import parse_args
from hypernetwork_modules import HyperNetwork, KernelBank

SMALL = ["--val-size", "20", "--batch-size", "50", "--no-download", "--no-progress", "--device", "cpu"]


# ----------------------------------------------------------------------------- the stretch augmentation


@pytest.mark.parametrize("size", [5, 28])
def test_insertions_interpolate_between_neighbours_and_keep_every_row(size):
    gen = torch.Generator().manual_seed(3)
    maps = data.insert_between(64, size, 2, gen, torch.device("cpu"))  # (64, size+2, size)
    assert maps.shape == (64, size + 2, size)
    assert torch.allclose(maps.sum(2), torch.ones(64, size + 2))  # each new row is a weighted mean of old rows
    ramp = maps @ torch.arange(size, dtype=torch.float32)  # (64, size+2): where each new row comes from
    for r in ramp:
        assert r[0] == 0 and r[-1] == size - 1  # the first and last rows are never displaced
        assert (r.diff() >= 0).all() and (r.diff() <= 1).all()  # in order, no row skipped
        assert set(range(size)) <= set(r.tolist())  # every original row survives
    assert any(not torch.equal(maps[0], m) for m in maps[1:])  # the places differ between images


def test_stretch_keeps_a_flat_image_flat_and_is_deterministic():
    flat = torch.full((8, 1, 28, 28), 200, dtype=torch.uint8)
    out = data.stretch_mnist(flat, torch.Generator().manual_seed(0))
    assert out.shape == (8, 1, 28, 28) and out.dtype == torch.float32
    assert torch.allclose(out, torch.full_like(out, 200.0))  # no padding: the crop stays inside the stretched image
    images = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8)
    a = data.stretch_mnist(images, torch.Generator().manual_seed(1))
    b = data.stretch_mnist(images, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, images.float())
    assert a.stride() == data.augment_mnist(images, torch.Generator()).stride()  # one memory layout for both protocols
    assert a.min() >= 0 and a.max() <= 255


def test_stretch_is_a_window_of_the_stretched_image():
    """Row maps applied to a ramp image: each output row is a window of 28 consecutive stretched rows."""
    ramp = torch.arange(28, dtype=torch.uint8).view(1, 1, 28, 1).expand(16, 1, 28, 28).contiguous()
    out = data.stretch_mnist(ramp, torch.Generator().manual_seed(2))[:, 0, :, 0]  # (16, 28): source row of each
    assert (out[:, 0] <= 2).all() and (out[:, -1] >= 25).all()  # a window of 28 of the 30 stretched rows
    assert (out.diff(dim=1) >= 0).all() and (out.diff(dim=1) <= 1).all()
    assert len(set(out[:, 0].tolist())) > 1  # the offsets differ between images


# ----------------------------------------------------------------------------- schedule, clipping, defaults


def notebook_args(*extra: str):
    args, _ = parse_args(mnist.MNIST, ["--protocol", "notebook", *extra])
    return args


def test_notebook_defaults_and_run_names():
    args = notebook_args()
    assert (args.epochs, args.patience, args.init, args.run_name) == (50, None, "notebook", "mnist-hyper-notebook")
    args = notebook_args("--epochs", "7", "--patience", "3", "--init", "scale-in-z", "--plain")
    assert (args.epochs, args.patience, args.run_name) == (
        7,
        3,
        "mnist-plain-notebook-init-scale-in-z-epochs-7-patience-3",
    )
    paper, _ = parse_args(mnist.MNIST, [])
    assert (paper.epochs, paper.patience, paper.init, paper.run_name) == (100, 20, "scale-in-hypernet", "mnist-hyper")
    other, _ = parse_args(mnist.MNIST, ["--init", "scale-in-z"])
    assert other.run_name == "mnist-hyper-init-scale-in-z"
    plain, _ = parse_args(mnist.MNIST, ["--plain", "--init", "scale-in-z"])
    assert plain.run_name == "mnist-plain"  # no hypernetwork to place the scale in: the default plain net
    assert (
        parse_args(mnist.MNIST, ["--init", "notebook"])[0].run_name == "mnist-hyper-init-notebook"
    )  # not the protocol's name


def test_notebook_schedule_decays_per_step_to_its_floor():
    s = mnist.mnist_schedule(notebook_args(), 55)
    assert (s.optimizer, s.lr, s.epochs, s.total_steps, s.clip_norm) == ("adam", 5e-3, 50, 2750, 100.0)
    assert s.multiplier(0) == 1.0 and math.isclose(
        s.lr * s.multiplier(54), 0.004737, rel_tol=1e-3
    )  # the notebook's lr after epoch 0
    assert math.isclose(s.lr * s.multiplier(10_000), 1e-4)
    paper = mnist.mnist_schedule(parse_args(mnist.MNIST, [])[0], 55)
    assert (paper.lr, paper.clip_norm, paper.multiplier(10_000)) == (1e-3, None, 1.0)


def test_train_step_clips_the_global_gradient_norm():
    torch.manual_seed(0)
    net = mnist.MnistNet(hyper=True)
    before = [p.detach().clone() for p in net.parameters()]
    opt = torch.optim.SGD(net.parameters(), lr=1.0)  # the update is minus the (clipped) gradient
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    x, y = torch.randn(20, 1, 28, 28), torch.randint(0, 10, (20,))
    engine.train_step(engine.TrainState(net, opt, sched), x, y, clip_norm=1e-3)
    step = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, net.parameters())])
    assert math.isclose(step.norm().item(), 1e-3, rel_tol=1e-3)


# ----------------------------------------------------------------------------- initialisation and slicing


def test_notebook_init_matches_the_notebook():
    torch.manual_seed(0)
    net = mnist.MnistNet(hyper=True, init="notebook")
    hypernet = net.kernel_bank.hypernet
    for w in (net.conv1.weight, hypernet.w_in.weight, hypernet.w_out.weight):
        assert w.abs().max() <= 0.02 and 0.007 < w.std() < 0.0095  # truncated at 2 std: std 0.88 x 0.01
    for b in (net.conv1.bias, hypernet.w_in.bias, hypernet.w_out.bias, net.fc.bias):
        assert not b.any()
    z = torch.stack([mnist.MnistNet(hyper=True, init="notebook").kernel_bank.z for _ in range(200)])
    assert z.min() >= 0.01 - 2 and z.max() <= 0.01 + 2 and 0.8 < z.std() < 0.95  # mean 0.01, std 1, truncated
    w = net.fc.weight  # (10, 784): orthonormal rows
    assert torch.allclose(w @ w.t(), torch.eye(10), atol=1e-5)
    plain = mnist.MnistNet(hyper=False, init="notebook")
    assert plain.conv2_weight.abs().max() <= 0.02


def test_scale_in_hypernet_gives_the_same_kernel_scale_from_unit_z():
    torch.manual_seed(0)
    shapes = [(64, 64, 3, 3), (32, 16, 3, 3)]
    stds = [0.05, 0.2]
    bank = KernelBank(shapes, HyperNetwork(8, 16, 16, 3), z_stds=stds, scale_in="hypernet")
    z64, z16 = bank.z.split(bank.tiles_per_layer)
    assert math.isclose(z64.std().item(), 0.5, rel_tol=0.1) and math.isclose(z16.std().item(), 2.0, rel_tol=0.25)
    for kernel, std in zip(bank(), stds):
        assert math.isclose(kernel.std().item(), std, rel_tol=0.15)
    one = KernelBank([(64, 64, 3, 3)], HyperNetwork(8, 16, 16, 3), scale_in="hypernet")
    assert math.isclose(one.z.std().item(), 1.0, rel_tol=0.1)
    assert math.isclose(one().pop().std().item(), math.sqrt(2 / (64 * 9)), rel_tol=0.15)
    with pytest.raises(ValueError, match="scale_in"):
        KernelBank(shapes, HyperNetwork(8, 16, 16, 3), scale_in="both")


def test_mnist_kernel_starts_at_kaiming_scale_with_either_scale_init():
    for init in ("scale-in-z", "scale-in-hypernet"):
        torch.manual_seed(0)
        stds = torch.stack([mnist.MnistNet(hyper=True, init=init).generate()[0].std() for _ in range(30)])
        assert math.isclose(stds.mean().item(), math.sqrt(2 / (16 * 49)), rel_tol=0.15), init


def test_output_slicing_transposes_the_generated_kernel():
    torch.manual_seed(0)
    by_input = mnist.MnistNet(hyper=True)
    by_output = mnist.MnistNet(hyper=True, slice_outputs=True)
    by_output.load_state_dict(by_input.state_dict())
    (a,), (b,) = by_input.generate(), by_output.generate()
    assert torch.equal(b, a.transpose(0, 1))
    # Slice i of the hypernetwork (its W_i, B_i) makes input channel i of one, output filter i of the other.
    with torch.no_grad():
        by_input.kernel_bank.hypernet.w_in.bias[:4] += 1.0  # moves slice 0 only
    by_output.load_state_dict(by_input.state_dict())
    (a2,), (b2,) = by_input.generate(), by_output.generate()
    assert torch.equal((a2 != a).any((0, 2, 3)), torch.arange(16) == 0)  # input channel 0 changed
    assert torch.equal((b2 != b).any((1, 2, 3)), torch.arange(16) == 0)  # output filter 0 changed


# ----------------------------------------------------------------------------- end to end, and compare.py


@pytest.mark.slow
def test_notebook_run_end_to_end_and_kept_out_of_table7(tmp_path, mnist_dir, capsys):
    folders = [
        "--data-dir",
        str(mnist_dir),
        "--checkpoint-dir",
        str(tmp_path / "ck"),
        "--log-dir",
        str(tmp_path / "tb"),
    ]
    assert mnist.main([*SMALL, *folders, "--protocol", "notebook", "--epochs", "2"]) == 0
    run = only_run(tmp_path / "ck")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = records[0]["step"]
    assert math.isclose(records[0]["lr"], 5e-3 * 0.999**steps, rel_tol=1e-6)  # the lr of the next step
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert (ckpt["config"]["protocol"], ckpt["config"]["init"], ckpt["config"]["patience"]) == (
        "notebook",
        "notebook",
        None,
    )
    paper_run = [*SMALL, *folders, "--epochs", "1", "--seed", "1"]
    assert mnist.main(paper_run) == 0  # a paper run beside it
    text = capsys.readouterr()
    out = tmp_path / "results.md"
    assert compare.main(["--runs", str(tmp_path / "ck"), "--out", str(out)]) == 0
    report = out.read_text()
    table7 = report[report.index("## MNIST") :]
    paper_rows = table7[: table7.index("Rows from")]
    assert (
        f"`{parse_args(mnist.MNIST, paper_run)[0].run_name}`" in paper_rows and "mnist-hyper-notebook" not in paper_rows
    )
    assert "hyper, z_dim 4, notebook protocol, init notebook" in table7  # among the other runs
    assert text.err.count("error") == 0
    figures = tmp_path / "figures"
    assert diagrams.main(["--runs", str(tmp_path / "ck"), "--out", str(figures)]) == 0
    drawn = {p.name for p in figures.iterdir()}
    assert {"curves_mnist.png", "curves_mnist_notebook.png"} <= drawn and "curves_mnist_init.png" not in drawn
    # A second --init with the paper's protocol makes the ablation figure.
    assert mnist.main([*SMALL, *folders, "--epochs", "1", "--init", "scale-in-z"]) == 0
    assert diagrams.main(["--runs", str(tmp_path / "ck"), "--out", str(figures)]) == 0
    assert (figures / "curves_mnist_init.png").exists()
    _, _, chosen, flag = next(entry for entry in diagrams.CURVES if entry[0] == "curves_mnist_init.png")
    ablation = [run for run in run_records.find_runs([tmp_path / "ck"]) if chosen(run)]
    legend = diagrams.draw_curves(ablation, "t", flag).axes[0].get_legend()
    labels = sorted(text.get_text() for text in legend.get_texts())
    assert labels == ["--init scale-in-hypernet", "--init scale-in-z"]  # each arm named by its init, not only its run
