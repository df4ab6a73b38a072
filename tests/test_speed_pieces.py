"""The pieces issue 5 added for speed: the folded L2 penalty, export, and bench.py itself."""

import json

import pytest
import torch

import bench
import export
import train
from cli import UserError
from primary_net import PrimaryNetwork, num_parameters, to_plain
from conftest import only_run


@pytest.mark.parametrize("hyper", [True, False])
def test_kernel_sq_norm_equals_sum_of_squares_of_generated_kernels(hyper):
    torch.manual_seed(0)
    net = PrimaryNetwork(10, 2, hyper=hyper).double()
    if hyper:  # non-zero biases, so every term of the Gram identity matters
        torch.nn.init.normal_(net.kernel_bank.hypernet.w_in.bias)
        torch.nn.init.normal_(net.kernel_bank.hypernet.w_out.bias)
    params = list(net.parameters())
    explicit = sum(k.pow(2).sum() for k in net.kernels())
    cheap = net.kernel_sq_norm()
    torch.testing.assert_close(cheap, explicit, rtol=1e-12, atol=0)
    for (name, _), e, g in zip(net.named_parameters(), torch.autograd.grad(explicit, params, allow_unused=True),
                               torch.autograd.grad(cheap, params, allow_unused=True)):
        if e is None:
            assert g is None or not g.any(), name
        else:
            torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12, msg=name)


def test_sq_norm_is_float32_under_bf16_autocast():
    net = PrimaryNetwork(10, 1, hyper=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = net.kernel_sq_norm()
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, sum(k.pow(2).sum() for k in net.kernels()), rtol=1e-4, atol=0)


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
    args = ["--depth", "10", "--batch-size", "32", "--val-size", "40", "--no-progress", "--no-download", "--device", "cpu", "--epochs", "1",
            "--data-dir", str(cifar_dir), "--checkpoint-dir", str(tmp_path / "ck"), "--log-dir", str(tmp_path / "runs")]
    assert train.main(args) == 0
    best = only_run(tmp_path / "ck") / "best.pt"
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
    with pytest.raises(UserError, match="not a file written by export.py"):
        export.load_exported(foreign)


def test_bench_runs_with_tiny_sizes(tmp_path, capsys):
    out = tmp_path / "bench.json"
    report = tmp_path / "bench.md"
    assert bench.main(["--widths", "1", "--repeats", "1", "--batch-size", "4", "--small-batch", "2", "--val-size", "6",
                       "--precise-bn", "4", "--json", str(out), "--out", str(report)]) == 0
    table = capsys.readouterr().out
    assert "batched vs per-tile loop" in table and "train step, batch 4" in table and "end to end" in table
    assert "epoch 1/" not in table and "final:" not in table  # train.py's own lines stay out of the report
    assert report.read_text().strip() == table.strip()
    saved = json.loads(out.read_text())
    assert saved["generation_40_1"]["tiles"] == 242
    assert (saved["amp"], saved["channels_last"]) == ("fp32", False)  # train.py's choices on a CPU
    assert saved["paper_schedule_hours"] == saved["step_40_1_b4"]["hyper_s"] * 672_000 / 3600
    for key in ("step_40_1_b4", "step_40_1_b2"):
        assert saved[key]["ratio"] > 0 and saved[key]["hyper_s"] > 0 and saved[key]["plain_s"] > 0
    assert saved["pipeline"]["train_py_images_per_s"] > 0
    assert saved["hypernetize_resnet18"]["ratio"] > 0 and "hypernetize(ResNet-18) vs ResNet-18" in table
    p = saved["precise_bn"]
    assert (p["images"], p["val_images"], p["steps_per_epoch"]) == (4, 6, 45_000 // 4)
    assert p["overhead_s"] > 0 and p["fraction_of_epoch"] == p["overhead_s"] / (p["steps_per_epoch"] * p["step_s"])
    assert "--precise-bn 4 per epoch" in table


def test_paired_ratio_is_the_median_of_per_pair_ratios():
    # pair 2 ran while the machine was slow for both: its ratio is still 1
    fast, slow = [1.0, 10.0, 1.0], [2.0, 10.0, 3.0]
    assert bench.paired(fast, slow) == (1.0, 3.0, 2.0)
