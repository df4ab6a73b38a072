"""Where and how a run computes: the device, mixed precision, the memory format.

Defaults per device, each overridable by a flag:

    device   precision (--amp)                          channels_last              cuDNN autotuner
    CUDA     bf16 autocast on compute capability >= 8   on with bf16/fp16          on
             (A100, H100, RTX 30xx/40xx); fp16 autocast  (tensor cores want NHWC);
             with a GradScaler below (V100, T4)          off in fp32
    MPS      off (float32)                              off                        -
    CPU      off (float32)                              off                        -

Nothing here assumes CUDA, bfloat16 or float64 is available: every torch call that
some device or torch version lacks is made only where it exists.
"""

from __future__ import annotations

import contextlib
import re
from typing import NamedTuple

import torch

from cli import UserError

AMP_CHOICES = ("auto", "bf16", "fp16", "off")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Precision(NamedTuple):
    """How the forward pass computes: float32, or autocast to a 16-bit type."""

    name: str  # "fp32", "bf16" or "fp16"

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype (None: no autocast)."""
        return DTYPES.get(self.name)

    @property
    def scaled(self) -> bool:
        """fp16 needs its loss scaled (torch.amp.GradScaler) so small gradients survive."""
        return self.name == "fp16"

    def describe(self) -> str:
        return {"fp32": "float32", "bf16": "bf16 autocast", "fp16": "fp16 autocast + GradScaler"}[self.name]


FP32 = Precision("fp32")


def pick_device(name: str, index: int = 0) -> torch.device:
    """The device for --device NAME; under torchrun, CUDA device INDEX (the local rank)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", index)
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was given but CUDA is not available")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("--device mps was given but MPS is not available")
    return torch.device(name, index) if name == "cuda" else torch.device(name)


def capability(device: torch.device) -> tuple[int, int] | None:
    """A CUDA device's compute capability, e.g. (8, 0) for an A100; None elsewhere."""
    return torch.cuda.get_device_capability(device) if device.type == "cuda" else None


def choose_precision(
    requested: str, device_type: str, cuda_capability: tuple[int, int] | None, torch_version: str | None = None
) -> Precision:
    """--amp REQUESTED on this device: "auto" is bf16 where a CUDA GPU runs it natively
    (compute capability 8.0 or newer), fp16 on older CUDA GPUs, float32 elsewhere.

    Raises:
        UserError: For 16-bit autocast on MPS with a torch older than 2.5 (it has none there).
    """
    if requested == "off":
        return FP32
    torch_version = torch_version or str(torch.__version__)
    if requested in DTYPES and device_type == "mps" and tuple(map(int, re.findall(r"\d+", torch_version)[:2])) < (2, 5):
        raise UserError(
            f"--amp {requested} on MPS needs torch 2.5 or newer (this is torch {torch_version}): "
            "use --amp off, or a newer torch"
        )
    if requested in DTYPES:
        return Precision(requested)
    if device_type != "cuda":
        return FP32
    return Precision("bf16" if cuda_capability is not None and cuda_capability >= (8, 0) else "fp16")


def choose_channels_last(requested: bool | None, device_type: str, precision: Precision) -> bool:
    """--channels-last, or by default: on for CUDA with 16-bit autocast (tensor cores), else off."""
    if requested is not None:
        return requested
    return device_type == "cuda" and precision.dtype is not None


def choose_compute(amp: str, channels_last: bool | None, device: torch.device) -> tuple[Precision, torch.memory_format]:
    """--amp and --channels-last as train.py resolves them on DEVICE: the precision and the memory format."""
    precision = choose_precision(amp, device.type, capability(device))
    layout = (
        torch.channels_last if choose_channels_last(channels_last, device.type, precision) else torch.contiguous_format
    )
    return precision, layout


def configure_backends(device: torch.device) -> None:
    """Let cuDNN pick the fastest convolution algorithms (input shapes are fixed here)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def autocast(device_type: str, precision: Precision) -> contextlib.AbstractContextManager:
    """Autocast to PRECISION on this device, or nothing at all for float32 (torch < 2.5
    refuses even a disabled autocast on MPS)."""
    if precision.dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=precision.dtype)


def grad_scaler(device: torch.device, precision: Precision) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16; None otherwise."""
    return torch.amp.GradScaler(device.type) if precision.scaled else None


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move a small tensor to DEVICE without making the host wait for the GPU (a CPU tensor
    goes through pinned memory, non-blocking, to CUDA; one already there stays)."""
    if t.device.type == "cpu" and device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def cuda_rng_state(device: torch.device) -> torch.Tensor | None:
    """This process's CUDA generator state (None off CUDA)."""
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def cuda_state_for(saved: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """The saved CUDA generator state, when it applies to DEVICE (a CUDA one)."""
    return saved if saved is not None and device.type == "cuda" else None
