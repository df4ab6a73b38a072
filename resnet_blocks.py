"""The pre-activation wide basic block, with its 3x3 kernels passed in.

The block owns everything except its two 3x3 kernels: BatchNorms, conv biases and the
optional 1x1 projection shortcut. Each conv bias feeds a training-mode BatchNorm, so its
gradient is exactly zero and is passed back as such (`bn_fed`). `forward(x, w1, w2)` takes
the kernels, so the plain Wide-ResNet (stored kernels) and the HyperResNet (generated
kernels) share this code.

    x -> BN -> ReLU -> conv3x3(w1, stride) -> BN -> ReLU -> conv3x3(w2) -> (+) -> out
    x -------------------------- shortcut ------------------------------------^
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["WideBasicBlock", "bn_fed"]

SHORTCUTS = ("pad", "conv")


class _ZeroGradient(torch.autograd.Function):
    """The identity, whose gradient is exactly zero."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)  # a view: no copy, no kernel launch

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(grad)


def bn_fed(bias: torch.Tensor) -> torch.Tensor:
    """BIAS as it is, with its gradient set to its exact value, zero.

    For a conv bias whose every path leads into a training-mode BatchNorm (in the
    Wide-ResNet all of them: the stem's, and both of each block's, whose residual stream is
    read only by BatchNorms). BatchNorm subtracts each channel's batch mean, so a
    per-channel shift does not change the loss. Computed, its gradient is rounding noise,
    larger under 16-bit autocast than in float32, which Adam would scale up to steps of
    about the lr; passing zero trains the same function on every device. The biases stay
    parameters (the paper counts them) and keep their initial values.
    """
    return _ZeroGradient.apply(bias)


class WideBasicBlock(nn.Module):
    """Pre-activation wide basic block (Zagoruyko & Komodakis, 2016) taking its kernels.

    Shortcut when the shape changes:
      * ``"pad"`` (default): parameter-free, stride-s subsampling plus zero channel
        padding; the layout whose parameter counts round to the paper's Table 2.
      * ``"conv"``: a learned 1x1 projection applied to the pre-activated input.
    When in/out channels and stride agree the shortcut is the identity in both modes.

    Args:
        in_ch: Input channels.
        out_ch: Output channels.
        stride: Stride of the first 3x3 convolution (and of the shortcut).
        shortcut: ``"pad"`` or ``"conv"``.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, shortcut: str = "pad"):
        super().__init__()
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {shortcut!r}")
        if out_ch < in_ch:
            raise ValueError(f"out_ch ({out_ch}) must be >= in_ch ({in_ch})")
        self.in_ch, self.out_ch, self.stride = in_ch, out_ch, stride
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.bias1 = nn.Parameter(torch.zeros(out_ch))
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.bias2 = nn.Parameter(torch.zeros(out_ch))
        changes_shape = in_ch != out_ch or stride != 1
        self.proj = nn.Conv2d(in_ch, out_ch, 1, stride, bias=False) if shortcut == "conv" and changes_shape else None

    def kernel_shapes(self) -> list[tuple[int, int, int, int]]:
        """Shapes of the two 3x3 kernels this block expects: [(out, in, 3, 3), (out, out, 3, 3)]."""
        return [(self.out_ch, self.in_ch, 3, 3), (self.out_ch, self.out_ch, 3, 3)]

    def forward(self, x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        Args:
            x: Input of shape (N, in_ch, H, W).
            w1: First kernel, (out_ch, in_ch, 3, 3).
            w2: Second kernel, (out_ch, out_ch, 3, 3).

        Returns:
            Output of shape (N, out_ch, H/stride, W/stride).
        """
        h = F.relu(self.bn1(x))
        shortcut = self.proj(h) if self.proj is not None else self._pad_shortcut(x)
        h = F.conv2d(h, w1, bn_fed(self.bias1), self.stride, padding=1)  # (N, out, H/s, W/s)
        h = F.relu(self.bn2(h))
        h = F.conv2d(h, w2, bn_fed(self.bias2), 1, padding=1)
        return h + shortcut

    def _pad_shortcut(self, x: torch.Tensor) -> torch.Tensor:
        """Identity, or subsample by the stride and zero-pad the new channels."""
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]  # (N, in, H/s, W/s)
        if self.out_ch != self.in_ch:
            x = F.pad(x, (0, 0, 0, 0, 0, self.out_ch - self.in_ch))  # (N, out, H/s, W/s)
        return x
