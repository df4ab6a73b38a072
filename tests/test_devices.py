"""The per-device choices (precision, memory format, random states), checked on the CPU.

What needs a GPU to be checked at all is in test_gpu.py.
"""

import contextlib

import pytest
import torch

import checkpointing
import devices
import hypernetwork_modules
import runner
import train
from cli import UserError
from conftest import only_run
from data import Normalize, augment_cifar
from devices import FP32, Precision, choose_channels_last, choose_precision, cuda_state_for

A100, H100, V100, T4 = (8, 0), (9, 0), (7, 0), (7, 5)


@pytest.mark.parametrize(
    "requested,device,capability,expected",
    [
        ("auto", "cuda", A100, "bf16"),
        ("auto", "cuda", H100, "bf16"),
        ("auto", "cuda", V100, "fp16"),
        ("auto", "cuda", T4, "fp16"),  # no native bf16 before compute capability 8.0
        ("auto", "cpu", None, "fp32"),
        ("auto", "mps", None, "fp32"),
        ("off", "cuda", A100, "fp32"),
        ("fp16", "cuda", A100, "fp16"),
        ("bf16", "cpu", None, "bf16"),
    ],
)
def test_precision_policy(requested, device, capability, expected):
    precision = choose_precision(requested, device, capability)
    assert precision.name == expected
    assert precision.scaled == (expected == "fp16")  # a GradScaler exactly for fp16


@pytest.mark.parametrize(
    "requested,device,precision,expected",
    [
        (None, "cuda", "bf16", True),
        (None, "cuda", "fp16", True),
        (None, "cuda", "fp32", False),  # NHWC pays with tensor cores
        (None, "cpu", "fp32", False),
        (None, "mps", "fp32", False),
        (True, "cpu", "fp32", True),
        (False, "cuda", "bf16", False),
    ],
)
def test_channels_last_policy(requested, device, precision, expected):
    assert choose_channels_last(requested, device, Precision(precision)) is expected


def test_cuda_state_applies_on_cuda_only():
    one = torch.zeros(4, dtype=torch.uint8)  # this process's GPU's state
    assert cuda_state_for(one, torch.device("cuda", 3)) is one
    assert cuda_state_for(one, torch.device("cpu")) is None and cuda_state_for(None, torch.device("cuda", 0)) is None


def test_checkpoint_of_a_gpu_run_restores_on_the_cpu():
    generators = {"g": torch.Generator().manual_seed(1)}
    state = checkpointing.rng_state(generators, torch.device("cpu"))
    state["cuda"] = torch.zeros(4, dtype=torch.uint8)
    checkpointing.set_rng_state(state, generators, torch.device("cpu"))  # the CUDA states do not apply here


class NoFloat64(torch.Tensor):
    """A tensor on a device without float64, like MPS: converting it to float64 raises."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.Tensor.cpu,):
            return super().__torch_function__(func, types, args, kwargs).as_subclass(torch.Tensor)
        wants_double = func is torch.Tensor.double or torch.float64 in (*args[1:], kwargs.get("dtype"))
        if wants_double:
            raise TypeError("Cannot convert a MPS Tensor to float64 dtype")
        return super().__torch_function__(func, types, args, kwargs)


def test_normalize_and_augment_never_ask_the_device_for_float64():
    images = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    on_device = images.as_subclass(NoFloat64)
    with pytest.raises(TypeError):
        on_device.double()  # the stand-in works
    normalize = Normalize(on_device)
    reference = Normalize(images)
    assert torch.equal(normalize.mean.as_subclass(torch.Tensor), reference.mean)
    assert torch.equal(normalize.std.as_subclass(torch.Tensor), reference.std)
    out = normalize(augment_cifar(on_device, torch.Generator().manual_seed(0)), torch.contiguous_format)
    assert out.dtype == torch.float32


def test_no_autocast_where_torch_has_none(monkeypatch):
    """torch < 2.5 refuses torch.autocast("mps") even when disabled: float32 runs and the
    L2 penalty must not construct one."""
    real = torch.autocast

    def old_torch_autocast(device_type, *args, **kwargs):
        if device_type == "mps":
            raise RuntimeError("User specified an unsupported autocast device_type 'mps'")
        return real(device_type, *args, **kwargs)

    monkeypatch.setattr(torch, "autocast", old_torch_autocast)
    assert isinstance(devices.autocast("mps", FP32), contextlib.nullcontext)
    assert isinstance(hypernetwork_modules._without_autocast("mps"), contextlib.nullcontext)
    assert not isinstance(hypernetwork_modules._without_autocast("cpu"), contextlib.nullcontext)


@pytest.mark.slow
def test_resume_may_change_precision_and_memory_format(tmp_path, cifar_dir, capsys):
    """A run started with a GPU's defaults (bf16, channels_last) resumes on a CPU without them."""
    from test_train import run_args

    args = run_args(tmp_path, cifar_dir, "--epochs", "2")
    assert train.main([*args, "--amp", "bf16", "--channels-last", "--stop-after", "1"]) == 0
    capsys.readouterr()
    assert train.main([*args, "--amp", "off", "--no-channels-last", "-r"]) == 0
    out = capsys.readouterr().out
    assert "note: the run moved: precision bf16 -> fp32, channels_last True -> False" in out
    ckpt = torch.load(only_run(tmp_path / "ck") / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["placement"]["precision"] == "fp32"


def test_cudnn_autotuner_is_switched_on_for_cuda_only(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    devices.configure_backends(torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is False
    devices.configure_backends(torch.device("cuda", 0))  # only sets a flag: no GPU needed
    assert torch.backends.cudnn.benchmark is True


@pytest.mark.slow
@pytest.mark.parametrize("plain", [False, True])
def test_resuming_with_channels_last_gives_the_optimizer_state_the_parameters_layout(plain, tmp_path, cifar_dir):
    """A contiguous checkpoint resumed channels_last (as a CPU run moved to a GPU is): every
    optimizer tensor takes its parameter's strides, so the batched optimizer keeps its fast path."""
    from test_train import run_args

    args = run_args(tmp_path, cifar_dir, "--epochs", "2", "--stop-after", "1", *(["--plain"] if plain else []))
    assert train.main([*args, "--no-channels-last"]) == 0
    resumed, ckpt = runner.resolve_args(train.CIFAR10, [*args, "-r", "--channels-last"])
    run = runner.set_up(train.CIFAR10, resumed, ckpt)
    try:
        runner.restore(run, ckpt)
    finally:
        checkpointing.release_run_lock(run.lock)
    optimizer = run.state.optimizer
    params = [p for p in run.state.model.parameters() if p.dim() == 4]
    assert params and all(p.is_contiguous(memory_format=torch.channels_last) for p in params)
    assert not all(p.is_contiguous() for p in params)  # the layouts do differ (C > 1 somewhere)
    moments = [(p, v) for p in params for v in optimizer.state[p].values() if torch.is_tensor(v) and v.dim() == 4]
    assert moments and all(v.stride() == p.stride() for p, v in moments)
    saved = ckpt["optimizer"]["state"]
    assert all(
        torch.equal(v, saved[i][k])
        for i, p in enumerate(optimizer.param_groups[0]["params"])
        for k, v in optimizer.state[p].items()
    )  # the same values, only laid out anew


def test_target_hypernetwork_reads_its_template_without_float64_on_the_device():
    """TargetHyperNetwork's initial offsets and scales come from the target's own parameters,
    which on a Mac live on MPS: they are summarised in float64 on the CPU, not on the device."""
    from target_hypernetwork import template_offset_and_scale

    torch.manual_seed(0)
    tensors = [torch.randn(4, 3), torch.ones(5), torch.tensor([2.0])]
    expected = template_offset_and_scale(tensors, 0.1)
    got = template_offset_and_scale([t.as_subclass(NoFloat64) for t in tensors], 0.1)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


@pytest.mark.parametrize(
    "version,refused", [("2.3.1", True), ("2.4.0+cpu", True), ("2.5.0", False), ("2.14.1+cu130", False)]
)
def test_16_bit_autocast_on_mps_needs_torch_2_5(version, refused):
    """torch 2.3 and 2.4 have no MPS autocast: --amp bf16/fp16 there is one line, not a traceback."""
    for amp in ("bf16", "fp16"):
        if refused:
            with pytest.raises(UserError, match=f"--amp {amp} on MPS needs torch 2.5 or newer"):
                choose_precision(amp, "mps", None, version)
        else:
            assert choose_precision(amp, "mps", None, version).name == amp
        assert choose_precision(amp, "cuda", (8, 0), version).name == amp  # other devices: as before
    assert (
        choose_precision("auto", "mps", None, version) == FP32 and choose_precision("off", "mps", None, version) == FP32
    )


def test_adam_is_fused_for_an_eager_step_on_cuda_and_capturable_for_cuda_graphs(monkeypatch):
    import engine
    from distributed import SINGLE_PROCESS, Distributed

    chosen = []
    real = engine.build_optimizer

    def recording(model, name, lr, fused=False, capturable=False):
        chosen.append((fused, capturable))
        return real(model, name, lr)

    monkeypatch.setattr(engine, "build_optimizer", recording)
    model = torch.nn.Linear(2, 2)
    cases = [
        ("cuda", SINGLE_PROCESS, False),
        ("cuda", SINGLE_PROCESS, True),
        ("cuda", Distributed(0, 2), True),
        ("cpu", SINGLE_PROCESS, False),
        ("cpu", SINGLE_PROCESS, True),
        ("mps", SINGLE_PROCESS, False),
    ]
    for device, dist, compiled in cases:
        place = engine.Place(torch.device(device), dist, FP32, torch.contiguous_format)
        engine.TrainState.create(model, "adam", 1e-3, lambda step: 1.0, place, compiled)
    # eager on CUDA: fused; compiled on one GPU: CUDA graphs, so capturable; under DDP: neither
    assert chosen == [(True, False), (False, True), (False, False), (False, False), (False, False), (False, False)]
    assert not real(model, "sgd", 0.1, fused=True).defaults.get("fused")  # Nesterov SGD keeps torch's default


class RecordedDDP(torch.nn.Module):
    """Stands in for DistributedDataParallel (no process group needed): keeps what it was given."""

    def __init__(self, module, device_ids=None):
        super().__init__()
        self.module, self.device_ids = module, device_ids

    def forward(self, *args):
        return self.module(*args)


def wrap_decisions(monkeypatch, device: str, world: int, compiled: bool) -> tuple:
    """What `engine.prepare_step` makes of a run on DEVICE in a job of WORLD processes: the step's
    forward and compile_step's keywords (None when it was not called)."""

    import engine
    from distributed import Distributed

    calls = []
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", RecordedDDP)
    monkeypatch.setattr(engine, "compile_step", lambda state, **kwargs: calls.append(kwargs) or (None, None))
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    state = engine.TrainState(model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0))
    place = engine.Place(torch.device(device, 0) if device == "cuda" else torch.device(device), Distributed(0, world))
    engine.prepare_step(state, place, compiled)
    assert len(calls) == int(compiled)
    return state.forward, calls[0] if calls else None


CASES = [(device, world) for device in ("cuda", "cpu", "mps") for world in (1, 2)]


@pytest.mark.parametrize("device,world", CASES)
def test_a_compiled_step_runs_as_cuda_graphs_on_a_single_gpu_only(device, world, monkeypatch):
    """CUDA graphs exactly for --compile on CUDA in a single process; an eager step never compiles."""
    import engine
    from distributed import Distributed

    one_gpu = device == "cuda" and world == 1
    assert engine.uses_cuda_graphs(engine.Place(torch.device(device), Distributed(0, world))) is one_gpu
    _, keywords = wrap_decisions(monkeypatch, device, world, compiled=True)
    assert keywords["cuda_graphs"] is one_gpu
    assert wrap_decisions(monkeypatch, device, world, compiled=False)[1] is None


@pytest.mark.parametrize("device,world", CASES)
def test_the_step_compiles_as_one_graph_except_when_ddp_wraps_the_model(device, world, monkeypatch):
    """fullgraph for a single process; under torchrun the model is DDP-wrapped and dynamo may break the graph."""
    forward, keywords = wrap_decisions(monkeypatch, device, world, compiled=True)
    assert keywords["fullgraph"] is (world == 1)
    assert isinstance(forward, RecordedDDP) is (world > 1)
    if world > 1:
        assert forward.device_ids == ([0] if device == "cuda" else None)
    eager, _ = wrap_decisions(monkeypatch, device, world, compiled=False)
    assert isinstance(eager, RecordedDDP) is (world > 1)


class RecordedGenerator:
    """Stands in for torch.Generator (no CUDA needed): keeps its device and seed."""

    def __init__(self, device="cpu"):
        self.device = torch.device(device)

    def manual_seed(self, seed):
        self.seed = seed
        return self


@pytest.mark.parametrize(
    "device,augment_on",
    [
        (torch.device("cuda", 1), torch.device("cuda", 1)),
        (torch.device("cpu"), torch.device("cpu")),
        (torch.device("mps"), torch.device("cpu")),
    ],
)
def test_the_augmentation_generator_lives_on_a_cuda_device_and_on_the_cpu_elsewhere(device, augment_on, monkeypatch):
    """On CUDA the augmentation draws on the GPU itself; on the CPU and MPS on the CPU. The data order is always on the CPU."""
    from distributed import SINGLE_PROCESS, Distributed

    monkeypatch.setattr(torch, "Generator", RecordedGenerator)
    with torch.random.fork_rng(devices=[]):
        for dist in (SINGLE_PROCESS, Distributed(1, 2)):
            generators = runner.seed_everything(3, dist, device)
            assert generators["augment"].device == augment_on
            assert generators["data_order"].device == torch.device("cpu")
