"""The pieces issue 5 added for speed: the folded L2 penalty, export, and bench.py itself."""

import json

import pytest
import torch
import torch.nn.functional as F

import bench
import export
import train
from primary_net import PrimaryNetwork, num_parameters, to_plain


@pytest.mark.parametrize("hyper", [True, False])
def test_folded_l2_equals_explicit_penalty(hyper):
    torch.manual_seed(0)
    net = PrimaryNetwork(10, 2, hyper=hyper).double()
    x, y = torch.randn(4, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (4,))
    wd = 0.01

    kernels = net.kernels()
    explicit = F.cross_entropy(net(x, kernels), y) + 0.5 * wd * sum(k.pow(2).sum() for k in kernels)
    expected = torch.autograd.grad(explicit, list(net.parameters()))

    folded = F.cross_entropy(net(x, net.kernels(weight_decay=wd)), y)
    got = torch.autograd.grad(folded, list(net.parameters()))
    for (name, _), e, g in zip(net.named_parameters(), expected, got):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12, msg=name)
    without = torch.autograd.grad(F.cross_entropy(net(x), y), list(net.parameters()))
    assert not all(torch.allclose(w, e) for w, e in zip(without, expected))  # the penalty matters


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


def test_export_cli_round_trip(tmp_path, cifar_dir, capsys):
    args = ["--depth", "10", "--batch-size", "32", "--val-size", "40", "--no-progress", "--no-download", "--epochs", "1",
            "--data-dir", str(cifar_dir), "--checkpoint-dir", str(tmp_path / "ck"), "--log-dir", str(tmp_path / "runs")]
    assert train.main(args) == 0
    best = tmp_path / "ck" / "hyper-10-1" / "best.pt"
    assert export.main([str(best)]) == 0
    out = best.with_name("best-plain.pt")
    printed = capsys.readouterr().out
    assert "79,802 parameters" in printed and str(out) in printed
    model = export.model_from_checkpoint(torch.load(best, weights_only=True)).eval()
    plain = export.load_exported(out).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(plain(x), model(x))
    assert f"plain weights: {num_parameters(plain):,} parameters" in printed


def test_export_refuses_plain_and_foreign_files(tmp_path, capsys):
    foreign = tmp_path / "x.pt"
    torch.save({"a": 1}, foreign)
    assert export.main([str(foreign)]) == 1
    assert "not a checkpoint written by this train.py" in capsys.readouterr().err
    with pytest.raises(train.UserError, match="not a file written by export.py"):
        export.load_exported(foreign)


def test_bench_runs_with_tiny_sizes(tmp_path, capsys):
    out = tmp_path / "bench.json"
    results = bench.main(["--widths", "1", "--repeats", "1", "--batch-size", "4", "--small-batch", "2",
                          "--json", str(out)])
    table = capsys.readouterr().out
    assert "batched vs per-tile loop" in table and "train step, batch 4" in table and "end to end" in table
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved["generation_40_1"]["tiles"] == 242
    for key in ("step_40_1_b4", "step_40_1_b2"):
        assert saved[key]["ratio"] == pytest.approx(saved[key]["hyper_s"] / saved[key]["plain_s"])
    assert saved["pipeline"]["train_py_images_per_s"] > 0
