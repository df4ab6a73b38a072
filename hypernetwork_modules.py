"""The static hypernetwork of Ha, Dai & Le (2017), Sec. 3.1, and the kernel bank it fills.

The path from a learned embedding to a convolution kernel, top to bottom:

    z (num_tiles, z_dim)                      one learned vector per 16x16 tile
      -> HyperNetwork, ONE batched call       two linear layers, no nonlinearity
      -> tiles (num_tiles, in, out, f, f)     16x16x3x3 basic kernels, as the paper's slices K_i
      -> reshape/permute per layer            (C_out/16) x (C_in/16) grid of tiles
      -> kernels [(C_out, C_in, f, f), ...]   used by F.conv2d in resnet_blocks.py

`HyperNetwork` is the paper's two-layer linear generator. `KernelBank` owns the
z-embeddings of every generated layer and turns them into full kernels with one call
of the hypernetwork per forward pass (no Python loop over tiles).

`target_hypernetwork.TargetHyperNetwork` applies the same scheme to every parameter of
any module, in the same words: embeddings z (one per chunk of a flat vector instead of
one per tile), a generator shared by all of them, one generator call per forward, and a
layout that places the outputs (flatten/truncate/split instead of the tile grid). Its
module docstring maps the two side by side. Both generators start from `init_linear_`.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Sequence
from typing import Literal, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "HyperNetized",
    "HyperNetwork",
    "Init",
    "KernelBank",
    "ScaleIn",
    "default_layers",
    "hypernetize",
    "init_linear_",
    "layout_of",
    "rebuild",
]

Init = Literal["random", "fit"]  # how `hypernetize` starts the z's and hypernetworks
ScaleIn = Literal["z", "hypernet"]  # which parameters of a `KernelBank` carry its initial scale


def init_linear_(layer: nn.Linear) -> None:
    """Variance-preserving init of a generator layer: weight ~ N(0, 1/in_features), bias 0.

    With it, a linear layer keeps the scale of its input: std(layer(z)) ~= std(z).
    """
    nn.init.normal_(layer.weight, std=1.0 / math.sqrt(layer.in_features))
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def _without_autocast(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast switched off; nothing on a device torch has no autocast for (MPS before torch 2.5)."""
    try:
        return torch.autocast(device_type, enabled=False)
    except (RuntimeError, ValueError):
        return contextlib.nullcontext()


class HyperNetwork(nn.Module):
    """The paper's static hypernetwork: z -> one basic kernel, as in_size slices of (out_size, f, f).

    For each input slice i in 0..in_size-1 (the paper's N_in slices):
        a_i = W_i z + B_i                    W_i: (d, z_dim), B_i: (d,)     d = z_dim
        K_i = <W_out, a_i> + B_out           W_out: (out_size*f*f, d), shared over i
    and K_i is the kernel's slice for input channel i, i.e. ``K[:, i] = K_i``. The
    slice index i is therefore the kernel's *second* (input-channel) dimension.

    Parameters: d*(z_dim+1)*in_size + f*out_size*f*(d+1) = 75,920 with the defaults.

    Both maps are linear, so `forward` evaluates them in the cheaper order
    K_i = (W_out W_i) z + (W_out B_i + B_out): the same function of the same parameters
    (tested against the equations above). Composing costs in*out*f*f*d*z_dim
    multiply-adds once per call; each z then costs in*out*f*f*z_dim instead of
    in*d*z_dim + in*out*f*f*d, so a large batch of z's is cheaper (forward: 12% fewer
    for the 242 z's of Hyper-40-1, 26% fewer for the 966 of Hyper-40-2).

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
        """Variance-preserving init (`init_linear_`): Var(W_i) = 1/z_dim, Var(W_out) = 1/d, zero biases."""
        init_linear_(self.w_in)  # in_features = z_dim
        init_linear_(self.w_out)  # in_features = d = z_dim

    def composed(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The two linear maps as one: K(z) = M z + c, slice i major.

        Returns:
            M of shape (in*out*f*f, z_dim) and c of shape (in*out*f*f,).
        """
        w_i = self.w_in.weight.view(self.in_size, self.z_dim, self.z_dim)  # (in, d, z_dim): W_i for every i
        b_i = self.w_in.bias.view(self.in_size, self.z_dim)  # (in, d): B_i for every i
        m = torch.matmul(self.w_out.weight, w_i)  # (in, out*f*f, z_dim): W_out W_i
        c = torch.addmm(self.w_out.bias, b_i, self.w_out.weight.t())  # (in, out*f*f): W_out B_i + B_out
        return m.flatten(0, 1), c.flatten()

    def sq_norm(self, z: torch.Tensor, keep: tuple[int, int] | None = None) -> torch.Tensor:
        """sum over all z of ||K(z)||^2, without generating a single kernel.

        With K(z) = M z + c and Z the (n, z_dim) stack of z's:
            sum ||M z + c||^2 = <M^T M, Z^T Z> + 2 c^T M sum(z) + n ||c||^2,
        which needs only z_dim x z_dim Gram matrices. This is how the L2 penalty on the
        generated kernels costs (almost) nothing. At least float32, even under autocast.
        KEEP = (in, out) counts only the first in slices and out channels of each basic
        kernel (a tile cropped at a kernel's edge): the same sum over those rows of M and c.
        """
        dtype = torch.promote_types(z.dtype, torch.float32)
        with _without_autocast(z.device.type):
            m, c = (t.to(dtype) for t in self.composed())
            if keep is not None:  # rows are (in, out, f*f)-major
                shape = (self.in_size, self.out_size, self.f_size**2)
                m = m.view(*shape, self.z_dim)[: keep[0], : keep[1]].reshape(-1, self.z_dim)
                c = c.view(shape)[: keep[0], : keep[1]].reshape(-1)
            z = z.reshape(-1, self.z_dim).to(dtype)  # (n, z_dim)
            gram = (m.t() @ m) * (z.t() @ z)  # (z_dim, z_dim), elementwise product of the two Grams
            return gram.sum() + 2 * (c @ m) @ z.sum(0) + z.shape[0] * c.dot(c)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Generate basic kernels as the paper's slices, input channel first.

        Args:
            z: Embeddings of shape (..., z_dim); any leading batch shape.

        Returns:
            Contiguous (..., in_size, out_size, f_size, f_size): ``[..., i, :, :, :]`` is the
            slice K_i, i.e. the conv kernel is ``.transpose(-4, -3)`` of it. `KernelBank`
            places the slices in its layers' kernels directly, without that transpose.
        """
        m, c = self.composed()
        k = F.linear(z, m, c)  # (..., in*out*f*f): K_i for every i, i major
        return k.unflatten(-1, (self.in_size, self.out_size, self.f_size, self.f_size))  # (..., in, out, f, f)


def tile_grid(shape: Sequence[int], tile_out: int, tile_in: int) -> tuple[int, int]:
    """Number of (row, column) tiles that cover a (C_out, C_in, ...) kernel; the last row
    and column are cropped where the channels are not multiples of the tile's."""
    return -(-shape[0] // tile_out), -(-shape[1] // tile_in)


def edge_tiles(shapes: list[tuple[int, ...]], grids: list[tuple[int, int]], hypernet: HyperNetwork) -> dict:
    """The tiles a crop cuts, by what they keep: {(in slices, out channels) kept: z indices}."""
    cut: dict[tuple[int, int], list[int]] = {}
    first = 0
    for (c_out, c_in, *_), (rows, cols) in zip(shapes, grids):
        edge = sorted(
            {(r, cols - 1) for r in range(rows)} | {(rows - 1, c) for c in range(cols)}
        )  # only these can be cut
        for r, c in edge:
            keep = (
                min(hypernet.in_size, c_in - c * hypernet.in_size),
                min(hypernet.out_size, c_out - r * hypernet.out_size),
            )
            if keep != (hypernet.in_size, hypernet.out_size):
                cut.setdefault(keep, []).append(first + r * cols + c)
        first += rows * cols
    return {keep: torch.tensor(index, dtype=torch.long) for keep, index in cut.items()}


def principal(rows: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean of ROWS (n, m) and their top-K principal directions as orthonormal columns
    (m, K), with zero columns where there are fewer than K: the best K-dim affine fit."""
    mean = rows.mean(0)
    vh = torch.linalg.svd(rows - mean, full_matrices=False).Vh  # (min(n, m), m)
    basis = rows.new_zeros(rows.shape[1], k)
    basis[:, : min(k, vh.shape[0])] = vh[:k].t()
    return mean, basis


class KernelBank(nn.Module):
    """The z-embeddings of a set of layers, and the shared hypernetwork that expands them.

    Every tile of every layer has its own learned z. All z's live in one parameter of
    shape (num_tiles, z_dim), layer after layer, each layer's tiles in row-major order
    of the (ceil(C_out/out_size), ceil(C_in/in_size)) grid that covers its kernel; where
    the channels are not multiples of the tile's, the last row and column are cropped.
    `forward` makes every kernel with ONE hypernetwork call.

    Initialisation: every generated kernel starts with the std of a Kaiming-normal kernel
    of its layer's fan-in, sqrt(2 / fan_in) (or the given ``z_stds``). Where that scale
    lives is ``scale_in``:
      "z" (default): each layer's z's are drawn with that std; the hypernetwork keeps scale.
      "hypernet": z's of unit scale (each layer's std over the layers' geometric mean, so
        exactly N(0, 1) for a single std), and that mean multiplies the hypernetwork's
        output weights (hyperfan-in style, Chang et al. 2020). Under Adam, whose steps have
        a fixed absolute size, a z of unit scale moves by a smaller fraction per step.

    Args:
        shapes: Kernel shapes (C_out, C_in, f, f) of the generated layers, in order (C_in is
            the input channels per group of a grouped conv).
        hypernet: The shared generator; its in/out/f sizes define the tile.
        z_stds: Optional initial std of each layer's kernel.
        scale_in: "z" or "hypernet": which parameters carry that std.
    """

    whole_tiles: torch.Tensor  # a buffer, registered only where a crop cuts some tiles

    def __init__(
        self,
        shapes: Sequence[Sequence[int]],
        hypernet: HyperNetwork,
        z_stds: Sequence[float] | None = None,
        scale_in: ScaleIn = "z",
    ):
        super().__init__()
        self.hypernet = hypernet
        f = hypernet.f_size
        for s in shapes:
            if tuple(s[2:]) != (f, f):
                raise ValueError(f"kernel {tuple(s)} does not have the hypernetwork's {f}x{f} size")
        self.shapes = [tuple(int(d) for d in s) for s in shapes]
        self.grids = [tile_grid(s, hypernet.out_size, hypernet.in_size) for s in self.shapes]
        self.tiles_per_layer = [r * c for r, c in self.grids]
        cut = edge_tiles(self.shapes, self.grids, hypernet)  # {kept (in, out): its tiles}
        self.cut_keeps = list(cut)
        for k, index in enumerate(cut.values()):  # buffers: they follow the bank to its device
            self.register_buffer(f"cut_tiles_{k}", index, persistent=False)
        if cut:
            whole = torch.ones(sum(self.tiles_per_layer), dtype=torch.bool)
            whole[torch.cat(list(cut.values()))] = False
            self.register_buffer("whole_tiles", whole, persistent=False)
        kaiming = [math.sqrt(2.0 / (s[1] * s[2] * s[3])) for s in self.shapes]
        self.z_stds = [float(v) for v in (z_stds if z_stds is not None else kaiming)]
        if len(self.z_stds) != len(self.shapes):
            raise ValueError(f"{len(self.z_stds)} z_stds for {len(self.shapes)} kernels")
        if scale_in not in ("z", "hypernet"):
            raise ValueError(f"scale_in must be 'z' or 'hypernet', not {scale_in!r}")
        self.scale_in = scale_in
        self.z = nn.Parameter(torch.empty(sum(self.tiles_per_layer), hypernet.z_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw each layer's z's so its kernel starts at its std (see the class docstring);
        with scale_in="hypernet" the hypernetwork is re-initialised too."""
        stds = self.z_stds
        with torch.no_grad():
            if self.scale_in == "hypernet":
                common = math.exp(sum(math.log(s) for s in stds) / len(stds))  # geometric mean
                self.hypernet.reset_parameters()
                self.hypernet.w_out.weight.mul_(common)  # zero biases: K = W_out W_i z scales with W_out
                stds = [s / common for s in stds]
            for z, std in zip(self.z.split(self.tiles_per_layer), stds):
                z.normal_(0.0, std)

    @property
    def num_tiles(self) -> int:
        """Total number of z-embeddings (tiles) over all layers."""
        return self.z.shape[0]

    @property
    def z_dim(self) -> int:
        """Size of each z."""
        return self.z.shape[1]

    @property
    def num_hyper_parameters(self) -> int:
        """Learnable parameters that make the kernels: the z's and the hypernetwork."""
        return sum(p.numel() for p in self.parameters())

    @property
    def num_target_parameters(self) -> int:
        """Number of values generated: every entry of every kernel."""
        return sum(math.prod(s) for s in self.shapes)

    def summary(self) -> str:
        """One line: the kernels made, and the z's and hypernetwork that make them."""
        hyper = sum(p.numel() for p in self.hypernet.parameters())
        return (
            f"{len(self.shapes)} weights, {self.num_target_parameters:,} values from {self.num_hyper_parameters:,} "
            f"parameters ({self.num_tiles} z's + a {hyper:,}-parameter hypernetwork; "
            f"{ratio(self.num_hyper_parameters, self.num_target_parameters)})"
        )

    def kernel_sq_norm(self) -> torch.Tensor:
        """Sum of squares of every generated kernel (for the L2 penalty), from Gram matrices:
        one sum for the whole tiles, and one per kind of tile a crop cuts (see `edge_tiles`)."""
        if not self.cut_keeps:
            return self.hypernet.sq_norm(self.z)
        total = self.hypernet.sq_norm(self.z[self.whole_tiles])
        for k, keep in enumerate(self.cut_keeps):
            total = total + self.hypernet.sq_norm(self.z[getattr(self, f"cut_tiles_{k}")], keep)
        return total

    def tiles_of(self, kernels: Sequence[torch.Tensor]) -> torch.Tensor:
        """KERNELS (one per layer, as in `shapes`) cut into this bank's tiles, float64, in the
        hypernetwork's output order: (num_tiles, in, out*f*f); a crop's missing entries are 0."""
        hn = self.hypernet
        tiles = []
        for kernel, (rows, cols) in zip(kernels, self.grids):
            kernel = kernel.detach().reshape(*kernel.shape[:2], hn.f_size, hn.f_size).double()
            full = kernel.new_zeros(rows * hn.out_size, cols * hn.in_size, hn.f_size, hn.f_size)
            full[: kernel.shape[0], : kernel.shape[1]] = kernel
            t = full.unflatten(0, (rows, hn.out_size)).unflatten(2, (cols, hn.in_size))  # (rows, out, cols, in, f, f)
            tiles.append(t.permute(0, 2, 3, 1, 4, 5).flatten(0, 1).flatten(2))  # (rows*cols, in, out*f*f)
        return torch.cat(tiles)

    @torch.no_grad()
    def fit_(self, kernels: Sequence[torch.Tensor]) -> float:
        """Set the hypernetwork and every z so that the generated kernels approximate KERNELS.

        The paper's hypernetwork makes each input slice of a tile as W_out a_i + B_out, and the
        tile's slice coordinates as a = W_in z + B_in. The fit takes both stages in turn, each
        the Eckart-Young best in squared error given the one before: the mean and top-d
        principal directions of all slices give B_out and W_out (orthonormal), then the mean
        and top-z_dim principal directions of the tiles' coordinates give B_in, W_in and the
        z's. The total error is the sum of the two SVD residuals (with no cropped tiles).
        Only a model whose slices span d directions and whose coordinates span z_dim comes
        back exactly; the fit is not claimed to be the joint optimum of both stages.

        Returns:
            The relative squared error sum ||K - fit||^2 / sum ||K||^2 over KERNELS.
        """
        hn = self.hypernet
        t = self.tiles_of(kernels)  # (n, in, out*f*f)
        b_out, w_out = principal(t.flatten(0, 1), hn.z_dim)  # every slice -> one d-dim affine subspace
        a = ((t - b_out) @ w_out).flatten(1)  # (n, in*d): each tile's slice coordinates
        b_in, w_in = principal(a, hn.z_dim)  # every tile -> one z_dim-dim affine subspace
        for param, value in zip(
            (hn.w_out.weight, hn.w_out.bias, hn.w_in.weight, hn.w_in.bias, self.z),
            (w_out, b_out, w_in, b_in, (a - b_in) @ w_in),
        ):
            param.copy_(value)
        error = sum((k.double() - m.reshape(k.shape).double()).square().sum() for k, m in zip(kernels, self()))
        return float(error / sum(k.double().square().sum() for k in kernels))

    def generate(self, memory_format: torch.memory_format = torch.contiguous_format) -> list[torch.Tensor]:
        """Every layer's kernel: ``bank(memory_format)``, named as `HyperNetized.generate` and
        `TargetHyperNetwork.generate` are (forward hooks see the call)."""
        return self(memory_format)

    def forward(self, memory_format: torch.memory_format = torch.contiguous_format) -> list[torch.Tensor]:
        """Generate every layer's kernel.

        Args:
            memory_format: The kernels' layout: ``torch.channels_last`` for convs that run
                channels_last, which then use them without converting them first.

        Returns:
            One kernel per layer, shape (C_out, C_in, f, f), in the order of `shapes`.
        """
        # Work in the hypernetwork's own contiguous (in, out) order, so that the backward
        # pass (the gradients' concatenation, the GEMMs) stays contiguous too.
        tiles = self.hypernet(self.z)  # (num_tiles, in, out, f, f)
        last = memory_format == torch.channels_last
        kernels = []
        for t, (rows, cols), shape in zip(tiles.split(self.tiles_per_layer), self.grids, self.shapes):
            t = t.unflatten(0, (rows, cols))  # (rows, cols, in, out, f, f)
            c_out, c_in = rows * t.shape[3], cols * t.shape[2]
            if last:  # the one copy, in (C_out, f, f, C_in) order (a single tile's reshape is a view: copied here)
                t = t.permute(0, 3, 4, 5, 1, 2).reshape(c_out, *shape[2:], c_in).permute(0, 3, 1, 2)
                t = t.contiguous(memory_format=torch.channels_last)
            else:  # the one copy, in (C_out, C_in, f, f) order (a single tile's reshape is a view)
                t = t.permute(0, 3, 1, 2, 4, 5).reshape(c_out, c_in, *shape[2:])  # from (rows, out, cols, in, f, f)
            kernels.append(t if t.shape == shape else t[: shape[0], : shape[1]])  # cropped to the layer's channels
        return kernels


# ----------------------------------------------------------------------------- any CNN


def layout_of(module: nn.Module) -> torch.memory_format:
    """The layout of MODULE's first stored 4-D weight whose two layouts differ (C_in > 1, a
    kernel larger than 1x1): ``torch.channels_last`` after ``module.to(memory_format=
    torch.channels_last)``, else contiguous. The layout its generated kernels should take;
    called on every forward, so it stops at that first weight."""
    for p in module.parameters():
        if p.dim() == 4:
            nhwc = p.is_contiguous(memory_format=torch.channels_last)
            if nhwc != p.is_contiguous():
                return torch.channels_last if nhwc else torch.contiguous_format
    return torch.contiguous_format


def ratio(ours: int, theirs: int) -> str:
    """OURS against THEIRS in words: "4.20x fewer", "1.05x more" or "as many"."""
    if ours == theirs:
        return "as many"
    return f"{theirs / ours:.2f}x fewer" if ours < theirs else f"{ours / theirs:.2f}x more"


def why_not_generated(module: nn.Module) -> str | None:
    """Why `hypernetize` cannot generate MODULE's weight, or None when it can."""
    if isinstance(module, nn.Linear):
        return None
    if not isinstance(module, nn.Conv2d):
        return f"it is a {type(module).__name__}, neither an nn.Conv2d nor an nn.Linear"
    if module.kernel_size[0] != module.kernel_size[1]:
        return f"its kernel is {module.kernel_size[0]}x{module.kernel_size[1]}: the tiles are square"
    return None


def default_layers(model: nn.Module, linear: bool = True) -> list[str]:
    """The layers `hypernetize` generates unless told otherwise: every nn.Conv2d with a square
    kernel but the first (the stem, which sees the image) and, with LINEAR, every nn.Linear
    but the last (the classifier)."""
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and why_not_generated(m) is None]
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)] if linear else []
    return convs[1:] + linears[:-1]


def tile_of(weight: torch.Tensor, tile: int) -> tuple[int, int, int]:
    """(out, in, f) of the basic kernel that makes WEIGHT (a conv's (C_out, C_in/groups, f, f)
    or a linear layer's (C_out, C_in), as 1x1): TILE x TILE, or narrower for fewer inputs per group."""
    return tile, min(tile, weight.shape[1]), weight.shape[2] if weight.dim() == 4 else 1


class HyperNetized(nn.Module):
    """A model whose chosen weights are generated, on every forward, from per-tile z's by
    one shared `HyperNetwork` per tile shape (16x16x3x3, 16x16x1x1, a depthwise 16x1x3x3,
    ...): the paper's scheme for any CNN, each family of kernels from its own tile.

    ``forward`` is the model's own forward, unchanged: each hypernetwork is called ONCE
    (one `KernelBank` per tile shape, in ``banks``) and the weights handed to the model with
    `torch.func.functional_call`. The generated layers hold no weight of their own;
    everything else (BatchNorm, biases, the layers not chosen) stays an ordinary parameter.
    The wrapped model is ``model`` (its layers by name: ``net.model.get_submodule("layer1.0")``);
    called itself, it runs with the generated weights too.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], z_dim: int, tile: int, init: Init = "random"):
        super().__init__()
        if init not in ("random", "fit"):
            raise ValueError(f"init must be 'random' or 'fit', not {init!r}")
        modules = dict(model.named_modules())
        weights = {name: modules[name].weight for name in layers}
        by_tile: dict[tuple[int, int, int], list[str]] = {}
        for name, w in weights.items():
            by_tile.setdefault(tile_of(w, tile), []).append(name)
        self.banks = nn.ModuleDict()
        for (out, inp, f), names in by_tile.items():
            shapes = [weights[n].shape[:2] + (f, f) for n in names]  # a linear layer's weight as 1x1
            self.banks[f"{out}x{inp}x{f}x{f}"] = KernelBank(
                shapes,
                HyperNetwork(z_dim, inp, out, f),
                z_stds=[weights[n].detach().float().std().item() for n in names],
            )
        self.fit_errors = {  # each bank's relative squared error, where init="fit" started it from the model's weights
            key: cast(KernelBank, self.banks[key]).fit_([weights[n] for n in names])
            for key, names in zip(self.banks, by_tile.values())
            if init == "fit"
        }
        place = {n: (key, i) for key, names in zip(self.banks, by_tile.values()) for i, n in enumerate(names)}
        self.generated = [f"{name}.weight" for name in layers]
        self.places = [place[name] for name in layers]  # (bank, index in it) of each generated weight
        self.shapes = [tuple(weights[name].shape) for name in layers]
        for name in layers:
            del modules[name].weight  # the weight now comes from a bank
        self.model = model
        # ``net.model(x)`` runs with the generated weights too: put in for the call, then taken out
        self._put = False
        self._hooks = [model.register_forward_pre_hook(self._put_in), model.register_forward_hook(self._take_out)]
        self.arguments = {"layers": list(layers), "z_dim": z_dim, "tile": tile}  # what `rebuild` passes to hypernetize
        self._cache: tuple[tuple, list[torch.Tensor]] | None = None  # (what they depend on, the weights) for inference

    def _layers(self) -> list[nn.Module]:
        """The layer of each generated weight, in the order of ``generated``."""
        return [self.model.get_submodule(name.rpartition(".")[0]) for name in self.generated]

    def _put_in(self, module: nn.Module, args: tuple) -> None:
        """Before a direct call of ``self.model``: the generated weights as the layers' attributes.
        (`forward` passes them through `torch.func.functional_call`, which puts them in itself,
        so on that path this looks up one layer and returns.)"""
        if hasattr(self.model.get_submodule(self.generated[0].rpartition(".")[0]), "weight"):
            return
        for layer, kernel in zip(self._layers(), self.generate()):
            layer.weight = kernel
        self._put = True

    def _take_out(self, module: nn.Module, args: tuple, output: object) -> None:
        if self._put:
            for layer in self._layers():
                del layer.weight
            self._put = False

    def get_extra_state(self) -> dict:
        """The `hypernetize` arguments that made this module, saved in its state_dict (see `rebuild`)."""
        return self.arguments

    def set_extra_state(self, state: dict) -> None:
        """Refuse a state_dict made with other `hypernetize` arguments: its tensors would not fit."""
        if state != self.arguments:
            raise ValueError(f"this state_dict was made by hypernetize with {state}, not {self.arguments}")

    def generate(self) -> list[torch.Tensor]:
        """The generated weights, in the order of ``generated``: one call per hypernetwork.

        For inference (eval mode, gradients off) they are made once and reused until a z or a
        hypernetwork weight changes (its version counter, place or dtype), or the layout or
        autocast does; in training mode, or with gradients on, every call generates them.
        """
        layout = layout_of(self.model)
        if self.training or torch.is_grad_enabled():
            self._cache = None
            return self._make(layout)
        key = self._cache_key(layout)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self._make(layout))
        return self._cache[1]

    def _make(self, layout: torch.memory_format) -> list[torch.Tensor]:
        made = {key: bank(layout) for key, bank in self.banks.items()}
        return [made[key][i].reshape(shape) for (key, i), shape in zip(self.places, self.shapes)]

    def _cache_key(self, layout: torch.memory_format) -> tuple:
        """What the generated weights depend on besides their values' formulas."""
        params = tuple((p._version, p.data_ptr(), p.dtype, p.device) for p in self.banks.parameters())
        device = next(self.banks.parameters()).device.type
        return params, layout, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)

    def kernel_sq_norm(self) -> torch.Tensor:
        """Sum of squares of every generated weight (for an L2 penalty), from Gram matrices."""
        # Each bank is a KernelBank (ModuleDict types it nn.Module); the sum is never the int 0
        # of an empty sum, as hypernetize makes at least one bank.
        return cast(torch.Tensor, sum(cast(KernelBank, bank).kernel_sq_norm() for bank in self.banks.values()))

    def forward(self, *args, **kwargs):
        """The model's forward, with the generated weights in place."""
        return torch.func.functional_call(self.model, dict(zip(self.generated, self.generate())), args, kwargs)

    @torch.no_grad()
    def to_plain(self) -> nn.Module:
        """An ordinary copy of the model holding the generated weights as its own."""
        for hook in self._hooks:  # the copy is an ordinary model: without them
            hook.remove()
        try:
            plain = copy.deepcopy(self.model)
        finally:
            self._hooks = [
                self.model.register_forward_pre_hook(self._put_in),
                self.model.register_forward_hook(self._take_out),
            ]
        modules = dict(plain.named_modules())
        for name, kernel in zip(self.generated, self.generate()):
            modules[name.rsplit(".", 1)[0]].weight = nn.Parameter(kernel.detach().clone())
        return plain

    @property
    def num_hyper_parameters(self) -> int:
        """Learnable parameters that make the generated weights: every bank's z's and hypernetwork."""
        return sum(p.numel() for p in self.banks.parameters())

    @property
    def num_target_parameters(self) -> int:
        """Number of values generated: every entry of every generated weight."""
        return sum(math.prod(s) for s in self.shapes)

    def summary(self) -> str:
        """Per hypernetwork: the weights it makes and its parameters; then stored, generated and the ratio."""
        stored = sum(p.numel() for p in self.model.parameters())
        lines = [] if self.fit_errors else ["the generated weights start afresh: the model's own values are not used"]
        for key, bank in self.banks.items():
            fit = f"; fit to the model's weights, error {100 * self.fit_errors[key]:.1f}%" if self.fit_errors else ""
            lines.append(f"{key} tiles: {cast(KernelBank, bank).summary()}{fit}")  # ModuleDict types it nn.Module
        made, generated = self.num_hyper_parameters, self.num_target_parameters
        lines.append(
            f"{len(self.generated)} weights generated by {len(self.banks)} hypernetwork(s); {stored:,} parameters "
            f"stored as they were; {stored + made:,} trainable in all, against {stored + generated:,} "
            f"({ratio(stored + made, stored + generated)})"
        )
        return "\n".join(lines)


def hypernetize(
    model: nn.Module,
    z_dim: int = 64,
    tile: int = 16,
    layers: Sequence[str] | Callable[[str, nn.Module], bool] | None = None,
    linear: bool = True,
    inplace: bool = False,
    init: Init = "random",
) -> HyperNetized:
    """Generate MODEL's weights with the paper's tiled hypernetworks, one per tile shape.

    Args:
        model: Any module (e.g. ``torchvision.models.mobilenet_v2(num_classes=10)``). It is
            copied, and the copy wrapped: MODEL itself stays as it was.
        z_dim: Size of each z (and each hypernetwork's hidden size), 64 in the paper.
        tile: Output (and at most input) channels of a basic kernel, 16 in the paper. A
            kernel whose channels are not multiples of it is cut from a covering grid.
        layers: The names of the layers to generate, or a predicate (name, module) -> bool
            (default: `default_layers`: every conv but the stem, every linear layer but the
            classifier).
        linear: With the default LAYERS, False leaves every nn.Linear stored.
        inplace: Wrap MODEL itself instead of a copy (no second copy of a large model in
            memory): its generated layers then lose their stored weight, so MODEL alone no
            longer runs.
        init: "random": the generated weights start afresh, and MODEL's own values of them are
            NOT used: each layer's z's are drawn with the std of the weight they replace (a
            hypernetwork keeps scale), so a trained model comes back untrained. "fit": every
            hypernetwork and z are set from MODEL's weights by two SVDs per tile shape
            (`KernelBank.fit_`); `summary()` and ``fit_errors`` give each shape's relative error.

    Raises:
        ValueError: If a name in LAYERS is no layer of MODEL, or a layer whose weight cannot
            be generated (the message says why), or there is nothing to generate.
    """
    names = chosen_layers(model, layers, linear)
    return HyperNetized(model if inplace else copy.deepcopy(model), names, z_dim, tile, init)


def rebuild(model: nn.Module, state_dict: dict) -> HyperNetized:
    """A saved `HyperNetized` back from its STATE_DICT alone: MODEL (a fresh instance of the
    wrapped architecture, e.g. ``torchvision.models.resnet18(num_classes=10)``) is
    hypernetized with the arguments the state_dict recorded, in place, and loaded.

    Raises:
        ValueError: If STATE_DICT is not a HyperNetized module's (it records no arguments).
    """
    arguments = state_dict.get("_extra_state")
    if not isinstance(arguments, dict) or set(arguments) != {"layers", "z_dim", "tile"}:
        raise ValueError("not a HyperNetized state_dict: it records no hypernetize arguments (_extra_state)")
    net = hypernetize(model, inplace=True, **arguments)
    net.load_state_dict(state_dict)
    return net


def chosen_layers(
    model: nn.Module, layers: Sequence[str] | Callable[[str, nn.Module], bool] | None, linear: bool
) -> list[str]:
    """The names of the layers `hypernetize` generates, checked (its LAYERS and LINEAR)."""
    modules = dict(model.named_modules())
    if layers is None:
        layers = default_layers(model, linear)
    elif callable(layers):
        layers = [n for n, m in modules.items() if n and layers(n, m)]
    for name in layers:
        if name not in modules:
            raise ValueError(f"{type(model).__name__} has no layer named {name!r}")
        reason = why_not_generated(modules[name])
        if reason:
            raise ValueError(f"{name} cannot be generated: {reason}")
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has nothing to generate: no square nn.Conv2d but its first, "
            "no nn.Linear but its last"
        )
    return list(layers)
