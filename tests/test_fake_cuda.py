"""The CUDA path on a machine without a GPU: tensors on a fake "cuda" device.

torch's FakeTensorMode gives tensors a device, shape, dtype and layout but no data, so the
step's forward, its loss and penalty, the augmentation and the optimizer's construction
and state loading run as they would on a GPU: a tensor left on the CPU, a wrong autocast
dtype or a host sync shows here. Four torch-level answers say "a GPU is here" around what
asks (`gpu_like`). Models are built on the CPU and moved, as `runner` does. Backward does not
run: torch's autograd engine asks a real CUDA device for a context. What only a GPU can
check (kernels, numerics, CUDA graphs, nccl) is in docs/platforms.md and gpu_check.py.
"""

import contextlib
from collections.abc import Iterator
from unittest import mock

import pytest
import torch
import torchvision
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

import data
import experiment
import train
from devices import Precision, choose_compute
from distributed import SINGLE_PROCESS
from engine import Place, TrainState, prepare_step, train_step
from hypernetwork_modules import hypernetize

pytestmark = pytest.mark.fake_cuda
CUDA = torch.device("cuda", 0)
SYNCS = {torch.Tensor.item, torch.Tensor.__bool__, torch.Tensor.cpu, torch.Tensor.tolist, torch.Tensor.numpy}


@pytest.fixture
def fake_cuda():
    """A FakeTensorMode in which ``.to(CUDA)`` makes fake CUDA tensors (skipped where this torch cannot)."""
    fake_tensor = pytest.importorskip("torch._subclasses.fake_tensor")
    mode = fake_tensor.FakeTensorMode(allow_non_fake_inputs=True)  # real CPU models and checkpoints go in
    try:
        with mode:
            torch.empty(1).to(CUDA)
    except Exception as error:  # noqa: BLE001  # any failure here means this torch has no fake CUDA
        pytest.skip(f"this torch cannot make fake CUDA tensors: {error}")
    return mode


@contextlib.contextmanager
def gpu_like(capability: tuple[int, int] = (9, 0)) -> Iterator[None]:
    """torch's answers on a GPU machine: CUDA and bf16 available, autocast on "cuda", CAPABILITY."""
    with (
        mock.patch("torch.cuda.is_available", return_value=True),
        mock.patch("torch.cuda.is_bf16_supported", return_value=True),
        mock.patch("torch.cuda.get_device_capability", return_value=capability),
        mock.patch("torch.amp.autocast_mode.is_autocast_available", return_value=True),
    ):
        yield


class Watch(TorchFunctionMode):
    """Records every host sync, every tensor made off CUDA, and the dtypes convolutions compute in."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs: list[str] = []
        self.off_device: list[str] = []
        self.conv_dtypes: set[torch.dtype] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if func in SYNCS:
            self.syncs.append(name)
        out = func(*args, **(kwargs or {}))
        self.off_device += [name for t in tree_leaves(out) if torch.is_tensor(t) and t.device != CUDA]
        if name == "conv2d":
            self.conv_dtypes.add(out.dtype)
        return out

    def check(self, conv_dtype: torch.dtype) -> None:
        assert self.syncs == [], f"host syncs: {self.syncs}"
        assert self.off_device == [], f"tensors made off the GPU by {sorted(set(self.off_device))}"
        assert self.conv_dtypes == {conv_dtype}


def to_fake_gpu(model: torch.nn.Module, memory_format: torch.memory_format) -> torch.nn.Module:
    """MODEL moved to the fake GPU, 4-d parameters in MEMORY_FORMAT, as ``model.to(CUDA,
    memory_format=...)`` in `runner.place_model` leaves it (``Module.to`` cannot swap in fake tensors)."""
    for module in model.modules():
        for name, p in module._parameters.items():
            if p is not None:
                layout = memory_format if p.dim() == 4 else torch.contiguous_format
                module._parameters[name] = torch.nn.Parameter(p.to(CUDA, memory_format=layout), p.requires_grad)
        for name, b in module._buffers.items():
            if b is not None:
                module._buffers[name] = b.to(CUDA)
    return model


def cifar_model(depth: int = 40) -> torch.nn.Module:
    """The default CIFAR-10 model (Hyper-40-1 at depth 40), built on the CPU as `runner` builds it."""
    torch.manual_seed(0)
    return train.CIFAR10.build_model(experiment.default_config(train.CIFAR10, {"depth": depth}))


def batch(memory_format: torch.memory_format, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """N normalised CIFAR-shaped images on the fake GPU, and their labels."""
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, device=CUDA)
    return data.Normalize(images)(images, memory_format), torch.randint(0, 10, (n,), device=CUDA)


def test_the_default_cuda_configuration_steps_forward_in_bf16_without_leaving_the_gpu(fake_cuda):
    with gpu_like():
        precision, memory_format = choose_compute("auto", None, CUDA)
    assert (precision, memory_format) == (Precision("bf16"), torch.channels_last)  # an H100's defaults
    place = Place(CUDA, SINGLE_PROCESS, precision, memory_format)
    model = cifar_model()
    with fake_cuda:
        model = to_fake_gpu(model, memory_format)
        assert all(p.device == CUDA and p.dtype == torch.float32 for p in model.parameters())
        with gpu_like():
            state = TrainState.create(model, "adam", 1e-3, lambda step: 1.0, place)
        prepare_step(state, place, compiled=False)
        x, y = batch(memory_format)
        with gpu_like(), Watch() as watch, torch.autocast("cuda", dtype=torch.bfloat16):
            loss, total, logits = state.objective(x, y, 5e-4)
    watch.check(conv_dtype=torch.bfloat16)
    assert logits.shape == (8, 10) and logits.device == CUDA and logits.dtype == torch.bfloat16
    assert loss.device == total.device == CUDA and loss.dtype == total.dtype == torch.float32


def test_backward_is_what_the_lane_cannot_run(fake_cuda):
    """The limit docs/platforms.md names: a step's backward needs a real GPU."""
    model = cifar_model(depth=10)
    with fake_cuda:
        model = to_fake_gpu(model, torch.contiguous_format)
        with gpu_like():
            state = TrainState.create(model, "adam", 1e-3, lambda step: 1.0, Place(CUDA, SINGLE_PROCESS))
            with pytest.raises(RuntimeError, match="PrimaryContext|NVIDIA driver"):
                train_step(state, *batch(torch.contiguous_format))


def cpu_checkpoint(model: torch.nn.Module) -> dict:
    """What a CPU run of MODEL (float32, torch's default Adam) saves after one real step, with
    the loss scale an fp16 run would save."""
    state = TrainState.create(model, "adam", 1e-3, lambda step: 1.0, Place(torch.device("cpu"), SINGLE_PROCESS))
    train_step(state, torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
    return {
        "model": model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "scaler": torch.amp.GradScaler("cpu", init_scale=1024.0).state_dict(),
    }


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_a_cpu_checkpoint_resumes_on_the_gpu_with_fused_adam_and_its_state_there(fake_cuda, amp):
    ckpt, model = cpu_checkpoint(cifar_model(depth=10)), cifar_model(depth=10)
    place = Place(CUDA, SINGLE_PROCESS, Precision(amp), torch.channels_last)
    with fake_cuda:
        model = to_fake_gpu(model, torch.channels_last)
        with gpu_like():
            state = TrainState.create(model, "adam", 1e-3, lambda step: 1.0, place)
        state.load(ckpt)  # outside `gpu_like`: fake mode would copy the checkpoint to a real GPU
        loss_scale = None if state.scaler is None else state.scaler.get_scale()  # before a step puts it on the GPU
        x, y = batch(torch.channels_last)
        with gpu_like(), Watch() as watch, torch.autocast("cuda", dtype=Precision(amp).dtype):
            _, total, _ = state.objective(x, y, 5e-4)
            scaled = total if state.scaler is None else state.scaler.scale(total)
    watch.check(conv_dtype=Precision(amp).dtype)
    group = state.optimizer.param_groups[0]
    assert (group["fused"], group["capturable"]) == (True, False)
    assert len(state.optimizer.state) == len(list(model.parameters()))
    for p, saved in state.optimizer.state.items():
        assert saved["step"].device == saved["exp_avg"].device == saved["exp_avg_sq"].device == CUDA
        assert saved["exp_avg"].stride() == p.stride()  # channels_last, as the fused kernel expects
    assert (state.scaler is not None) == (amp == "fp16")
    assert loss_scale == (1024.0 if amp == "fp16" else None)  # the checkpoint's loss scale
    assert scaled.device == CUDA and scaled.dtype == torch.float32


def test_the_augmentation_stays_on_the_gpu(fake_cuda):
    # A CUDA generator needs a real GPU: this one's draws go to the fake device as a CUDA
    # generator would have made them there (pinned memory, too, is a real GPU's).
    with fake_cuda, mock.patch("data.to_device", lambda t, device: t.to(device)), Watch() as watch:
        images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8).to(CUDA)
        out = data.augment_cifar(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8 and out.device == CUDA
    assert watch.syncs == []


def test_a_hypernetized_resnet18_runs_forward_on_the_gpu_in_bf16(fake_cuda):
    torch.manual_seed(0)
    model = hypernetize(torchvision.models.resnet18(num_classes=10))
    with fake_cuda:
        model = to_fake_gpu(model, torch.contiguous_format)
        x, _ = batch(torch.contiguous_format)
        with gpu_like(), Watch() as watch, torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(x)
    watch.check(conv_dtype=torch.bfloat16)
    assert logits.shape == (8, 10) and logits.device == CUDA and logits.dtype == torch.bfloat16
