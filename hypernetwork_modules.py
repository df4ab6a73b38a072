"""The static hypernetwork of Ha, Dai & Le (2017), Sec. 3.1, and the kernel bank it fills.

The path from a learned embedding to a convolution kernel, top to bottom:

    z (num_tiles, z_dim)                      one learned vector per 16x16 tile
      -> HyperNetwork, ONE batched call       two linear layers, no nonlinearity
      -> tiles (num_tiles, out, in, f, f)     16x16x3x3 basic kernels
      -> reshape/permute per layer            (C_out/16) x (C_in/16) grid of tiles
      -> kernels [(C_out, C_in, f, f), ...]   used by F.conv2d in resnet_blocks.py

`HyperNetwork` is the paper's two-layer linear generator. `KernelBank` owns the
z-embeddings of every generated layer and turns them into full kernels with one call
of the hypernetwork per forward pass (no Python loop over tiles).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn


class L2Grad(torch.autograd.Function):
    """Identity in the forward pass; adds ``weight_decay * x`` to the gradient in the backward.

    The gradient of the penalty ``weight_decay / 2 * sum(x**2)``, folded into a backward
    pass that runs anyway: no extra forward op, one fused add in the backward.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight_decay: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.weight_decay = weight_decay
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        return torch.add(grad, x, alpha=ctx.weight_decay), None


def l2_grad(x: torch.Tensor, weight_decay: float) -> torch.Tensor:
    """``x``, whose backward also applies the L2 penalty ``weight_decay / 2 * sum(x**2)``."""
    return L2Grad.apply(x, weight_decay) if weight_decay and x.requires_grad else x


class HyperNetwork(nn.Module):
    """The paper's static hypernetwork: z -> one (out_size, in_size, f, f) basic kernel.

    For each input slice i in 0..in_size-1 (the paper's N_in slices):
        a_i = W_i z + B_i                    W_i: (d, z_dim), B_i: (d,)     d = z_dim
        K_i = <W_out, a_i> + B_out           W_out: (out_size*f*f, d), shared over i
    and K_i is the kernel's slice for input channel i, i.e. ``K[:, i] = K_i``. The
    slice index i is therefore the kernel's *second* (input-channel) dimension.

    Parameters: d*(z_dim+1)*in_size + f*out_size*f*(d+1) = 75,920 with the defaults.

    Initialisation keeps scale: with zero biases, std(K) ~= std(z), so the caller sets
    the kernel's initial std through the std of z (see `KernelBank`).

    Args:
        z_dim: Size of each embedding z (the paper's N_z; the hidden size d equals it).
        in_size: Input channels of a basic kernel (N_in).
        out_size: Output channels of a basic kernel (N_out).
        f_size: Spatial size f of the kernel (f x f).
    """

    def __init__(self, z_dim: int = 64, in_size: int = 16, out_size: int = 16, f_size: int = 3):
        super().__init__()
        self.z_dim, self.in_size, self.out_size, self.f_size = z_dim, in_size, out_size, f_size
        d = z_dim
        # All in_size (W_i, B_i) pairs stacked into one linear layer: rows i*d..(i+1)*d-1 are W_i.
        self.w_in = nn.Linear(z_dim, in_size * d)
        self.w_out = nn.Linear(d, out_size * f_size * f_size)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Variance-preserving init: Var(W_i) = 1/z_dim, Var(W_out) = 1/d, zero biases."""
        nn.init.normal_(self.w_in.weight, std=1.0 / math.sqrt(self.z_dim))
        nn.init.normal_(self.w_out.weight, std=1.0 / math.sqrt(self.z_dim))
        nn.init.zeros_(self.w_in.bias)
        nn.init.zeros_(self.w_out.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Generate basic kernels.

        Args:
            z: Embeddings of shape (..., z_dim); any leading batch shape.

        Returns:
            Kernels of shape (..., out_size, in_size, f_size, f_size). The result is a
            transposed view; `KernelBank` relies on that to assemble with one copy.
        """
        a = self.w_in(z).unflatten(-1, (self.in_size, self.z_dim))  # (..., in, d): a_i for every i
        k = self.w_out(a)  # (..., in, out*f*f): K_i for every i
        k = k.unflatten(-1, (self.out_size, self.f_size, self.f_size))  # (..., in, out, f, f)
        return k.transpose(-4, -3)  # (..., out, in, f, f)


def tile_grid(shape: Sequence[int], tile_out: int, tile_in: int) -> tuple[int, int]:
    """Number of (row, column) tiles that make a (C_out, C_in, ...) kernel.

    Raises:
        ValueError: If the channel counts are not multiples of the tile size.
    """
    c_out, c_in = shape[0], shape[1]
    if c_out % tile_out or c_in % tile_in:
        raise ValueError(f"kernel {tuple(shape)} is not tiled by {tile_out}x{tile_in} basic kernels")
    return c_out // tile_out, c_in // tile_in


class KernelBank(nn.Module):
    """The z-embeddings of a set of layers, and the shared hypernetwork that expands them.

    Every tile of every layer has its own learned z. All z's live in one parameter of
    shape (num_tiles, z_dim), layer after layer, each layer's tiles in row-major order
    of its (C_out/out_size, C_in/in_size) grid. `forward` makes every kernel with ONE
    hypernetwork call.

    Initialisation: each layer's z's are drawn with std sqrt(2 / fan_in) of that layer,
    so (the hypernetwork preserving scale) every generated kernel starts with the std of
    a Kaiming-normal kernel of the same fan-in.

    Args:
        shapes: Kernel shapes (C_out, C_in, f, f) of the generated layers, in order.
        hypernet: The shared generator; its in/out/f sizes define the tile.
    """

    def __init__(self, shapes: Sequence[Sequence[int]], hypernet: HyperNetwork):
        super().__init__()
        self.hypernet = hypernet
        f = hypernet.f_size
        for s in shapes:
            if tuple(s[2:]) != (f, f):
                raise ValueError(f"kernel {tuple(s)} does not have the hypernetwork's {f}x{f} size")
        self.shapes = [tuple(int(d) for d in s) for s in shapes]
        self.grids = [tile_grid(s, hypernet.out_size, hypernet.in_size) for s in self.shapes]
        self.tiles_per_layer = [r * c for r, c in self.grids]
        self.z = nn.Parameter(torch.empty(sum(self.tiles_per_layer), hypernet.z_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw each layer's z's with std sqrt(2 / fan_in) of that layer."""
        with torch.no_grad():
            for z, shape in zip(self.z.split(self.tiles_per_layer), self.shapes):
                fan_in = shape[1] * shape[2] * shape[3]
                z.normal_(0.0, math.sqrt(2.0 / fan_in))

    @property
    def num_tiles(self) -> int:
        """Total number of z-embeddings (tiles) over all layers."""
        return self.z.shape[0]

    def forward(self, weight_decay: float = 0.0) -> list[torch.Tensor]:
        """Generate every layer's kernel.

        Args:
            weight_decay: L2 penalty ``weight_decay / 2 * sum(K**2)`` over all generated
                kernels, applied in the backward pass (see `l2_grad`); the kernels are a
                permutation of the tiles, so it is applied once, to the tiles.

        Returns:
            One kernel per layer, shape (C_out, C_in, f, f), in the order of `shapes`.
        """
        tiles = l2_grad(self.hypernet(self.z), weight_decay)  # (num_tiles, out, in, f, f), a transposed view
        kernels = []
        for t, (rows, cols), shape in zip(tiles.split(self.tiles_per_layer), self.grids, self.shapes):
            t = t.unflatten(0, (rows, cols))  # (rows, cols, out, in, f, f)
            t = t.permute(0, 2, 1, 3, 4, 5)  # (rows, out, cols, in, f, f)
            kernels.append(t.reshape(shape))  # (rows*out, cols*in, f, f): the one copy
        return kernels
