"""mnist.py: the paper's Table 7 counts, the IDX reader, and the shared loop end to end."""

import gzip
import json
import shutil

import pytest
import torch

import data
import export
import mnist
import train
from conftest import error_line, only_run, write_fake_mnist

SMALL = ["--val-size", "20", "--batch-size", "50", "--no-download", "--no-progress", "--device", "cpu"]


def run_args(tmp_path, data_dir, *extra):
    return [
        *SMALL,
        "--data-dir",
        str(data_dir),
        "--checkpoint-dir",
        str(tmp_path / "ck"),
        "--log-dir",
        str(tmp_path / "runs"),
        *extra,
    ]


# ----------------------------------------------------------------------------- the model


def test_layer2_counts_match_paper_table7():
    hyper, plain = mnist.MnistNet(hyper=True), mnist.MnistNet(hyper=False)
    assert hyper.layer2_parameters() == 4_244 == mnist.PAPER_TABLE7[True][1]  # 4,240 hypernetwork + 4 z
    assert sum(p.numel() for p in hyper.kernel_bank.hypernet.parameters()) == 4_240
    assert hyper.kernel_bank.z.shape == (1, 4)
    assert plain.layer2_parameters() == 12_544 == mnist.PAPER_TABLE7[False][1]
    # Everything but layer 2 is shared: conv1 (800), layer-2 bias (16), fc (7,850).
    others = 800 + 16 + 7_850
    assert sum(p.numel() for p in hyper.parameters()) == 4_244 + others
    assert sum(p.numel() for p in plain.parameters()) == 12_544 + others


@pytest.mark.parametrize("hyper", [True, False])
def test_forward_shapes_and_the_kernel_in_use(hyper):
    torch.manual_seed(0)
    net = mnist.MnistNet(hyper=hyper)
    x = torch.randn(3, 1, 28, 28)
    (w2,) = net.generate()
    assert w2.shape == (16, 16, 7, 7)
    out = net(x)
    assert out.shape == (3, 10)
    net.generate = lambda: [torch.zeros_like(w2)]  # forward runs on what generate() returns
    assert not torch.equal(out, net(x))
    assert torch.allclose(net.kernel_sq_norm(), w2.pow(2).sum(), rtol=1e-4)


def test_generated_kernel_is_kaiming_scaled():
    torch.manual_seed(0)
    stds = torch.stack([mnist.MnistNet(hyper=True).generate()[0].std() for _ in range(30)])
    kaiming = (2 / (16 * 49)) ** 0.5
    assert abs(stds.mean().item() / kaiming - 1) < 0.25


def test_gradients_reach_z_and_hypernetwork():
    net = mnist.MnistNet(hyper=True)
    net(torch.randn(2, 1, 28, 28)).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# ----------------------------------------------------------------------------- data


def test_load_mnist_reads_the_idx_files(tmp_path):
    root = write_fake_mnist(tmp_path, train_size=30, test_size=10)
    train_x, train_y, test_x, test_y = data.load_mnist(str(root), download=False)
    assert train_x.shape == (30, 1, 28, 28) and train_x.dtype == torch.uint8
    assert test_x.shape == (10, 1, 28, 28) and train_y.dtype == torch.int64 and len(test_y) == 10
    raw = root / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz"
    with gzip.open(raw) as f:
        assert train_y.tolist() == list(f.read()[8:])


def test_uncompressed_files_are_read_too(tmp_path):
    root = write_fake_mnist(tmp_path, train_size=30, test_size=10)
    for gz in (root / "MNIST" / "raw").glob("*.gz"):
        with gzip.open(gz) as f:
            gz.with_suffix("").write_bytes(f.read())
        gz.unlink()
    assert data.load_mnist(str(root), download=False)[0].shape == (30, 1, 28, 28)


def test_augment_shifts_by_at_most_one_pixel_and_never_flips():
    x = torch.zeros(200, 1, 28, 28, dtype=torch.uint8)
    x[:, 0, 10, 3] = 255  # one bright pixel, left of centre
    out = data.augment_mnist(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    where = [tuple((img[0] == 255).nonzero()[0].tolist()) for img in out]
    assert {r for r, _ in where} == {9, 10, 11} and {c for _, c in where} == {2, 3, 4}


@pytest.mark.slow
def test_missing_data_is_one_line(tmp_path, capsys):
    line = error_line(mnist.main(run_args(tmp_path, tmp_path)), capsys)  # a folder without the dataset
    assert "no MNIST at" in line and "MNIST/raw" in line


def test_truncated_or_foreign_file_is_one_line(tmp_path, capsys):
    root = write_fake_mnist(tmp_path / "data")
    images = root / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:100])
    line = error_line(mnist.main(run_args(tmp_path, root)), capsys)
    assert "t10k-images-idx3-ubyte.gz is not an MNIST IDX file" in line
    labels = root / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz"
    with gzip.open(labels, "wb") as f:
        f.write(b"\x00\x00\x08\x03" + bytes(20))  # an images header in a labels file
    line = error_line(mnist.main(run_args(tmp_path, root)), capsys)
    assert "train-labels-idx1-ubyte.gz is not an MNIST IDX file" in line


# ----------------------------------------------------------------------------- the loop


@pytest.mark.slow
def test_run_resume_and_early_stop(tmp_path, mnist_dir, capsys):
    args = run_args(tmp_path, mnist_dir, "--epochs", "3")
    assert mnist.main([*args, "--stop-after", "1"]) == 0
    command = capsys.readouterr().out.strip().splitlines()[-1].split("continue with: ")[1].split()
    assert command[:2] == ["python", "mnist.py"]
    assert mnist.main(command[2:]) == 0  # as printed
    run = only_run(tmp_path / "ck")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["config"]["experiment"] == "mnist" and ckpt["config"]["batch_size"] == 50
    out = capsys.readouterr().out
    assert "final: mnist-hyper" in out and "layer 2: 4,244 parameters (paper 4,244)" in out

    # Patience 1 on a fresh run: it stops as soon as one epoch fails to improve validation.
    early = run_args(tmp_path / "early", mnist_dir, "--epochs", "30", "--patience", "1", "--plain")
    assert mnist.main(early) == 0
    records = [
        json.loads(line) for line in (only_run(tmp_path / "early" / "ck") / "metrics.jsonl").read_text().splitlines()
    ]
    best = min(range(len(records)), key=lambda i: (records[i]["val_error"], i))
    assert len(records) < 30 and len(records) == best + 2
    assert "early stop after epoch" in capsys.readouterr().out


@pytest.mark.slow
def test_checkpoints_of_the_other_experiment_are_refused(tmp_path, mnist_dir, cifar_dir, capsys):
    assert mnist.main(run_args(tmp_path, mnist_dir, "--epochs", "1")) == 0
    foreign = only_run(tmp_path / "ck") / "last.pt"
    cifar = [*run_args(tmp_path, cifar_dir, "--depth", "10", "--epochs", "1"), "-r", str(foreign)]
    line = error_line(train.main(cifar), capsys)
    assert "is a mnist run, not cifar10" in line
    line = error_line(export.main([str(foreign)]), capsys)
    assert "is a mnist run; export.py exports CIFAR-10 HyperResNets" in line
    shutil.rmtree(tmp_path / "ck")
