"""The GPU paths, run only where a CUDA GPU (or Apple's MPS) is present.

On a machine without one, pytest reports these as skipped with the reason
"needs a CUDA GPU" / "needs MPS": they were not run there. Everything about the GPU
paths that a CPU can check (the precision policy, RNG states across GPU counts, no
float64 on the data's device, resuming across precisions) is in test_devices.py.
"""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import test_train
import train
from conftest import HANG, only_run
from devices import capability, choose_precision

REPO = Path(__file__).resolve().parent.parent
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: not run on this machine")
mps = pytest.mark.skipif(
    not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
    reason="needs MPS: not run on this machine",
)


def run_args(root: Path, data: Path, device: str, *extra: str) -> list[str]:
    return test_train.run_args(root, data, "--device", device, *extra)  # the last --device counts


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


@pytest.mark.slow
@cuda
@pytest.mark.parametrize("plain", [False, True])
def test_one_epoch_with_the_device_defaults(plain, tmp_path, cifar_dir):
    assert train.main(run_args(tmp_path, cifar_dir, "cuda", "--epochs", "1", *(["--plain"] if plain else []))) == 0
    ckpt = load(next((tmp_path / "ck").iterdir()) / "last.pt")
    expected = choose_precision("auto", "cuda", capability(torch.device("cuda", 0))).name
    assert ckpt["placement"] == {"device": "cuda", "precision": expected, "processes": 1, "channels_last": True}
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())
    block_biases = [v for k, v in ckpt["model"].items() if k.endswith((".bias1", ".bias2"))]
    assert block_biases and not any(b.any() for b in block_biases)  # 16-bit autocast left them at zero


@pytest.mark.slow
@cuda
@pytest.mark.parametrize("amp", ["auto", "fp16"])
def test_resume_on_the_gpu_continues_the_run(amp, tmp_path, cifar_dir):
    """Stopped after epoch 1 and resumed, the run ends where an uninterrupted one does (up to
    the GPU's non-deterministic kernels); with fp16 the GradScaler's state comes back too."""
    straight = run_args(tmp_path / "a", cifar_dir, "cuda", "--epochs", "2", "--amp", amp)
    assert train.main(straight) == 0
    split = run_args(tmp_path / "b", cifar_dir, "cuda", "--epochs", "2", "--amp", amp)
    assert train.main([*split, "--stop-after", "1"]) == 0
    assert train.main([*split, "-r"]) == 0
    a, b = load(only_run(tmp_path / "a" / "ck") / "last.pt"), load(only_run(tmp_path / "b" / "ck") / "last.pt")
    assert a["step"] == b["step"] and a["placement"] == b["placement"]
    assert (b["scaler"] is not None) == (b["placement"]["precision"] == "fp16")
    for key, value in a["model"].items():
        if value.is_floating_point():
            torch.testing.assert_close(value, b["model"][key], rtol=5e-2, atol=5e-3)


@pytest.mark.slow
@cuda
def test_a_compiled_run_resumes_on_the_gpu(tmp_path, cifar_dir):
    """--compile (the whole step) on the GPU: stopped and resumed, it ends where a straight run does."""
    straight = run_args(tmp_path / "a", cifar_dir, "cuda", "--epochs", "2", "--compile")
    assert train.main(straight) == 0
    split = run_args(tmp_path / "b", cifar_dir, "cuda", "--epochs", "2", "--compile")
    assert train.main([*split, "--stop-after", "1"]) == 0
    assert train.main([*split, "-r"]) == 0
    a, b = load(only_run(tmp_path / "a" / "ck") / "last.pt"), load(only_run(tmp_path / "b" / "ck") / "last.pt")
    assert a["step"] == b["step"]
    for key, value in a["model"].items():
        if value.is_floating_point():
            torch.testing.assert_close(value, b["model"][key], rtol=5e-2, atol=5e-3)


@pytest.mark.slow
@cuda
def test_a_checkpoint_moves_from_the_gpu_to_the_cpu_and_back(tmp_path, cifar_dir):
    on_gpu = run_args(tmp_path, cifar_dir, "cuda", "--epochs", "3")
    assert train.main([*on_gpu, "--stop-after", "1"]) == 0
    assert train.main([*run_args(tmp_path, cifar_dir, "cpu", "--epochs", "3"), "--stop-after", "2", "-r"]) == 0
    assert train.main([*on_gpu, "-r"]) == 0
    ckpt = load(only_run(tmp_path / "ck") / "last.pt")
    assert [m["device"] for m in ckpt["metrics"]] == ["cuda", "cpu", "cuda"] and ckpt["placement"]["device"] == "cuda"
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())


@pytest.mark.slow
@cuda
def test_fp16_with_its_grad_scaler_over_many_steps(tmp_path, cifar_dir):
    assert train.main(run_args(tmp_path, cifar_dir, "cuda", "--epochs", "6", "--amp", "fp16")) == 0
    ckpt = load(only_run(tmp_path / "ck") / "last.pt")
    assert (
        ckpt["scaler"] and ckpt["scaler"]["scale"] > 0 and all(math.isfinite(m["train_loss"]) for m in ckpt["metrics"])
    )


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs: not run on this machine")
def test_torchrun_with_nccl_on_two_gpus(tmp_path, cifar_dir):
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "train.py",
        *run_args(tmp_path, cifar_dir, "cuda", "--epochs", "2"),
    ]
    result = subprocess.run(
        command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=HANG
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert load(only_run(tmp_path / "ck") / "last.pt")["placement"]["processes"] == 2


@pytest.mark.slow
@mps
def test_one_epoch_on_mps(tmp_path, cifar_dir):
    assert train.main(run_args(tmp_path, cifar_dir, "mps", "--epochs", "1")) == 0


@cuda
@pytest.mark.parametrize("amp", ["bf16", "fp16"])  # fp16: the loss scaler's overflow flag stays on the GPU (fused Adam)
def test_augmentation_and_a_training_step_never_wait_for_the_gpu(amp):
    """torch raises on any host-device synchronisation inside this block."""
    from data import Normalize, augment_cifar
    from devices import Precision
    from distributed import SINGLE_PROCESS
    from engine import Place, TrainState, train_step
    from primary_net import PrimaryNetwork

    device = torch.device("cuda", 0)
    images = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (256,), device=device)
    normalize, gen = Normalize(images), torch.Generator(device).manual_seed(0)
    layout, precision = torch.channels_last, Precision(amp)  # train.py's GPU defaults for Hyper-WRN-40-1
    state = TrainState.create(
        PrimaryNetwork(40, 1).to(device, memory_format=layout),
        "adam",
        1e-3,
        lambda step: 1.0,
        Place(device, SINGLE_PROCESS, precision, layout),
    )
    idx = torch.arange(128, device=device)
    for _ in range(2):  # warm-up: first-call allocations may synchronise
        train_step(state, normalize(augment_cifar(images[idx], gen), layout), labels[idx], 5e-4, precision)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        x = normalize(augment_cifar(images[idx], gen), layout)
        train_step(state, x, labels[idx], 5e-4, precision)
    finally:
        torch.cuda.set_sync_debug_mode("default")
