"""Precise BatchNorm statistics before evaluation: exact, deterministic, harmless."""

import copy
import json

import pytest
import torch

import data
import engine
import train
from conftest import only_run, saved_model
from mnist import MnistNet
from primary_net import PrimaryNetwork
from test_train import load, run_args, tiny_args


def batchnorm_inputs(net: PrimaryNetwork, images: torch.Tensor, normalize, batch: int) -> dict:
    """What each BatchNorm of NET sees, batch by batch, when IMAGES go through it in training
    mode in batches of BATCH (the last one shorter), by hooks."""
    seen = {bn: [] for bn in engine.batchnorms(net)}
    hooks = [bn.register_forward_pre_hook(lambda m, inputs: seen[m].append(inputs[0])) for bn in seen]
    net.train()
    with torch.no_grad():
        for i in range(0, len(images), batch):
            net(normalize(images[i : i + batch], torch.contiguous_format))
    for h in hooks:
        h.remove()
    return seen


def batch_statistics(net: PrimaryNetwork, images: torch.Tensor, normalize, batch: int) -> list:
    """Each BatchNorm's (mean, unbiased variance) averaged over the batches."""
    seen = batchnorm_inputs(net, images, normalize, batch)
    return [
        (
            torch.stack([x.mean(dim=(0, 2, 3)) for x in xs]).mean(0),
            torch.stack([x.var(dim=(0, 2, 3), unbiased=True) for x in xs]).mean(0),
        )
        for xs in seen.values()
    ]


def test_statistics_are_the_average_over_the_batches_and_nothing_else_changes():
    torch.manual_seed(0)
    net = PrimaryNetwork(10, 1).double().eval()
    images = torch.randint(0, 256, (96, 3, 32, 32), dtype=torch.uint8)
    base = data.Normalize(images)

    def normalize(x, memory_format):  # float64 all the way, for an exact comparison
        return base(x, memory_format).double()

    expected = batch_statistics(copy.deepcopy(net), images, normalize, 32)
    params = {k: v.clone() for k, v in net.named_parameters()}
    net.eval()
    assert engine.precise_bn(net, images, normalize, 32, torch.contiguous_format)
    assert not net.training  # the mode it had
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn, (mean, var) in zip(bns, expected):
        torch.testing.assert_close(bn.running_mean, mean, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(bn.running_var, var, rtol=1e-10, atol=1e-12)
        assert bn.momentum == 0.1  # restored
    for name, p in net.named_parameters():
        assert torch.equal(p, params[name]), name
    again = copy.deepcopy(net)
    engine.precise_bn(again, images, normalize, 32, torch.contiguous_format)
    for a, b in zip(net.buffers(), again.buffers()):
        assert torch.equal(a, b)  # deterministic


def test_a_model_without_batchnorm_is_left_alone():
    net = MnistNet(hyper=True)
    images = torch.randint(0, 256, (20, 1, 28, 28), dtype=torch.uint8)
    state = copy.deepcopy(net.state_dict())
    assert not engine.precise_bn(net.train(), images, data.Normalize(images), 10, torch.contiguous_format)
    assert net.training and all(torch.equal(v, state[k]) for k, v in net.state_dict().items())


@pytest.mark.slow
def test_runs_log_both_errors_and_resume_exactly(tmp_path, cifar_dir):
    def args(folder: str, precise_bn: str = "64") -> list[str]:
        return run_args(tmp_path / folder, cifar_dir, "--epochs", "2", "--precise-bn", precise_bn)

    assert train.main(args("a")) == 0
    records = [
        json.loads(line) for line in (only_run(tmp_path / "a" / "ck") / "metrics.jsonl").read_text().splitlines()
    ]
    assert all({"val_error", "val_error_running", "precise_bn_seconds"} <= set(r) for r in records)
    assert train.main([*args("b"), "--stop-after", "1"]) == 0 and train.main([*args("b"), "-r"]) == 0
    x, y = (load(only_run(tmp_path / d / "ck") / "last.pt") for d in "ab")
    for key in x["model"]:
        assert torch.equal(x["model"][key], y["model"][key]), key
    assert train.main(args("c", "0")) == 0
    last = json.loads((only_run(tmp_path / "c" / "ck") / "metrics.jsonl").read_text().splitlines()[-1])
    assert "val_error_running" not in last
    z = load(only_run(tmp_path / "c" / "ck") / "last.pt")
    assert torch.equal(z["model"]["kernel_bank.z"], x["model"]["kernel_bank.z"])  # training itself is unchanged


def test_batchnorm_gets_the_cumulative_factor_without_reading_its_counter():
    """momentum=None would make every BatchNorm read its batch counter back from the device at
    every batch (a host sync on a GPU); the factor 1/n is given instead, with the same result."""
    torch.manual_seed(0)
    net = PrimaryNetwork(10, 1)
    images = torch.randint(0, 256, (96, 3, 32, 32), dtype=torch.uint8)
    normalize = data.Normalize(images)
    reference = copy.deepcopy(net)
    bns = engine.batchnorms(reference)
    for bn in bns:  # the textbook way: momentum None, the factor from the counter
        bn.reset_running_stats()
        bn.momentum = None
    with torch.no_grad():
        for i in range(0, 96, 32):
            reference(normalize(images[i : i + 32], torch.contiguous_format))
    factors = []
    hooks = [
        bn.register_forward_pre_hook(lambda m, inputs: factors.append(m.momentum)) for bn in engine.batchnorms(net)
    ]
    engine.precise_bn(net, images, normalize, 32, torch.contiguous_format)
    for h in hooks:
        h.remove()
    assert factors == [1.0 / n for n in (1, 2, 3) for _ in bns]  # never None
    for key, value in reference.state_dict().items():
        if "running" in key or "num_batches" in key:
            assert torch.equal(net.state_dict()[key], value), key  # bit for bit
    assert [bn.momentum for bn in engine.batchnorms(net)] == [0.1] * len(bns)  # training's momentum back


def per_image_statistics(net: PrimaryNetwork, images: torch.Tensor, normalize, batch: int) -> list:
    """Each BatchNorm's statistics over IMAGES fed in batches of BATCH (the last one shorter),
    every image counting the same: the mean over all of them, and the batches' unbiased
    variances averaged with their sizes as weights."""
    seen = batchnorm_inputs(net, images, normalize, batch)
    statistics = []
    for xs in seen.values():
        sizes = torch.tensor([len(x) for x in xs], dtype=torch.float64)
        assert sizes.sum() == len(images)
        variances = torch.stack([x.var(dim=(0, 2, 3), unbiased=True) for x in xs])
        statistics.append((torch.cat(xs).mean(dim=(0, 2, 3)), (sizes[:, None] * variances).sum(0) / sizes.sum()))
    return statistics


def precise_run(n: int, batch: int):
    """A float64 WRN-10-1 as `engine.evaluate_run` sees it with --precise-bn N and --batch-size BATCH."""
    import types

    from distributed import SINGLE_PROCESS

    torch.manual_seed(0)
    images = torch.randint(0, 256, (100, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (100,))
    base = data.Normalize(images)

    def normalize(x, memory_format):  # float64 all the way, for an exact comparison
        return base(x, memory_format).double()

    d = engine.Data(
        images, labels, images[:4], labels[:4], images[4:8], labels[4:8], torch.arange(100), torch.arange(0), normalize
    )
    settings = engine.Settings(batch, 100 // batch, 0.0, n, 50, False)
    net = PrimaryNetwork(10, 1).double()
    place = engine.Place(torch.device("cpu"), SINGLE_PROCESS)
    return types.SimpleNamespace(state=types.SimpleNamespace(model=net), data=d, place=place, settings=settings)


def assert_statistics(net: PrimaryNetwork, expected: list) -> None:
    bns = engine.batchnorms(net)
    assert len(bns) == len(expected) > 0
    for bn, (mean, var) in zip(bns, expected):
        torch.testing.assert_close(bn.running_mean, mean, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(bn.running_var, var, rtol=1e-10, atol=1e-12)


def test_a_short_last_batch_counts_each_of_its_images_like_any_other():
    """--precise-bn 40 with batch 16 (16 + 16 + 8 images): the statistics over exactly the first 40 training images."""
    run = precise_run(40, 16)
    expected = per_image_statistics(copy.deepcopy(run.state.model), run.data.train_x[:40], run.data.normalize, 16)
    errors = engine.evaluate_run(run)
    assert "val_error_running" in errors
    assert_statistics(run.state.model, expected)
    wrong = per_image_statistics(copy.deepcopy(run.state.model), run.data.train_x[:32], run.data.normalize, 16)
    assert not torch.allclose(wrong[0][0], expected[0][0])  # the last 8 images do count


def test_fewer_precise_bn_images_than_a_batch_are_all_used_and_no_more():
    """--precise-bn 12 with batch 32: the statistics of exactly the first 12 training images, as one batch."""
    run = precise_run(12, 32)
    expected = per_image_statistics(copy.deepcopy(run.state.model), run.data.train_x[:12], run.data.normalize, 12)
    engine.evaluate_run(run)
    assert_statistics(run.state.model, expected)


@pytest.mark.slow
def test_precise_bn_statistics_come_from_the_first_training_images(tmp_path, tiny_cifar):
    """Bug: precise BN computed on validation images (d.val_x[:n]) instead of training images."""
    assert train.main(tiny_args(tmp_path, tiny_cifar, "--epochs", "1", "--precise-bn", "16")) == 0
    ckpt = load(only_run(tmp_path / "ck") / "last.pt")
    images = data.load_cifar10(tiny_cifar, download=False)[0]
    train_x, val_x = images[ckpt["train_indices"]], images[ckpt["val_indices"]]

    def statistics(source: torch.Tensor) -> dict:
        model = saved_model(ckpt["config"])
        model.load_state_dict(ckpt["model"])
        engine.precise_bn(model, source[:16], data.Normalize(train_x), 8, torch.contiguous_format)
        return {k: v for k, v in model.state_dict().items() if k.endswith(("running_mean", "running_var"))}

    expected, from_val = statistics(train_x), statistics(val_x)
    assert len(expected) == 2 * len(engine.batchnorms(saved_model(ckpt["config"])))
    for key, value in expected.items():
        torch.testing.assert_close(ckpt["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert any(not torch.allclose(v, from_val[k], rtol=1e-3, atol=1e-4) for k, v in expected.items())  # it can tell
