"""A hypernetwork for any target module: it generates ALL the target's parameters.

`hypernetwork_modules.py` holds the paper's static scheme for 3x3 convolution kernels.
This file applies the same scheme to an arbitrary `nn.Module`, whose parameters it
treats as one flat vector cut into equal chunks. The three generators
(`KernelBank`, `hypernetwork_modules.HyperNetized`, `TargetHyperNetwork`) share one
vocabulary: the learned embeddings are ``z`` of size ``z_dim``; ``generate()`` makes
the weights, one call per generator; ``kernel_sq_norm()`` (where the weights are
kernels) is their L2 penalty; ``to_plain()`` (where there is a model) is the ordinary
model holding them; ``summary()`` describes it; ``num_hyper_parameters`` and
``num_target_parameters`` count what makes the weights and what is made. Where they differ:

    concept            KernelBank + HyperNetwork          TargetHyperNetwork
    embeddings z       one z per tile                     one z per chunk
                       (num_tiles, z_dim)                 (num_chunks, z_dim)
    generator          HyperNetwork: two linear layers,   .generator: an MLP with tanh,
                       shared by every tile               shared by every chunk
    one output         a tile (out, in, f, f),            a chunk of chunk_size values
                       16x16x3x3 by default
    layout             tile grid -> (C_out, C_in, f, f)   FlatLayout: flatten, truncate,
                                                          split per parameter tensor
    initial scale      in z: std sqrt(2 / fan_in)         after: offset + scale * raw,
                       per layer                          the template's own init
    per sample         no (static)                        dynamic=True: z + encoder(x)

Both generators start from `hypernetwork_modules.init_linear_`. The path, top to bottom:

    z (num_chunks, z_dim)                     embeddings: one learned z per chunk
      [dynamic: z + encoder(x)[:, None]]      (B, num_chunks, z_dim), per sample
      -> generator MLP (tanh), ONE batched call   shared by every chunk
      -> raw (..., num_chunks, chunk_size)
      -> layout: flatten, truncate to the target's parameter count, split per tensor
      -> params {name: offset + scale * raw}   (..., *shape of that parameter)
      -> torch.func.functional_call(target, params, x)   [dynamic: under torch.func.vmap]

num_chunks = ceil(num_target_parameters / chunk_size), so the hypernetwork
(num_chunks * z_dim embeddings plus one small generator) can be far smaller than
the target it generates.

Static mode: one weight set for the whole batch. Dynamic mode: an encoder turns each
input into a code that shifts every embedding z, so each sample gets its own weights
and the target runs once per sample under `vmap` (no Python loop).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.func import functional_call, vmap

from hypernetwork_modules import init_linear_

__all__ = [
    "FlatLayout",
    "TargetHyperNetwork",
]

DEFAULT_ENCODER_HIDDEN = 64  # hidden width of the default dynamic-mode encoder


def mlp(sizes: Sequence[int], activation: type[nn.Module] = nn.ReLU, flatten: bool = False) -> nn.Sequential:
    """Linear layers of the given sizes with an activation between them (none after the last).

    Args:
        sizes: Layer widths, input first, e.g. ``[32, 64, 1024]``.
        activation: Module class put between the linear layers.
        flatten: Start with ``nn.Flatten()`` so (B, ...) inputs become (B, sizes[0]).
    """
    layers: list[nn.Module] = [nn.Flatten()] if flatten else []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i:
            layers.append(activation())
        layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)


# ---------------------------------------------------------------- checking the arguments


def template_parameters(target: nn.Module) -> dict[str, torch.Tensor]:
    """The target's named parameters, checked to be something a generator can copy.

    Raises:
        ValueError: No parameters, lazy (uninitialised) ones, or inf/nan values.
    """
    named: dict[str, torch.Tensor] = dict(target.named_parameters())
    if not named:
        raise ValueError(f"target {type(target).__name__} has no parameters to generate")
    lazy = [n for n, p in named.items() if isinstance(p, nn.parameter.UninitializedParameter)]
    if lazy:
        raise ValueError(f"target has uninitialized (lazy) parameters {lazy}; run it once before wrapping it")
    not_finite = [n for n, p in named.items() if not torch.isfinite(p).all()]
    if not_finite:
        raise ValueError(f"target parameters {not_finite} hold inf/nan; initialise the template before wrapping it")
    return named


def check_options(
    chunk_size: int,
    z_dim: int,
    hidden_sizes: Sequence[int],
    dynamic: bool,
    encoder: nn.Module | None,
    in_features: int | None,
    constant_scale: float,
) -> None:
    """Check `TargetHyperNetwork`'s other constructor arguments (see there).

    Raises:
        ValueError: A size < 1, constant_scale <= 0, or encoder/in_features not matching the mode.
    """
    if chunk_size < 1 or z_dim < 1:
        raise ValueError(f"chunk_size and z_dim must be >= 1, got {chunk_size} and {z_dim}")
    if any(h < 1 for h in hidden_sizes):
        raise ValueError(f"hidden sizes must be >= 1, got {tuple(hidden_sizes)}")
    if not constant_scale > 0:
        raise ValueError(f"constant_scale must be > 0, got {constant_scale}")
    if not dynamic and (encoder is not None or in_features is not None):
        raise ValueError("encoder and in_features are only used in dynamic mode; pass dynamic=True")
    if dynamic and (encoder is None) == (in_features is None):
        raise ValueError("dynamic mode needs exactly one of encoder or in_features (for the default encoder)")
    if in_features is not None and in_features < 1:
        raise ValueError(f"in_features must be >= 1, got {in_features}")


# ---------------------------------------------------------------- layout: flat vector <-> tensors


def template_offset_and_scale(
    tensors: Sequence[torch.Tensor], constant_scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor (mean, std) of the target's own initial parameters.

    A tensor that is constant at init (BatchNorm's ones and zeros, zeroed biases, any
    single number) has no spread to copy; it gets ``constant_scale`` instead, so the
    generated tensor starts near its template value and can still move.

    Returns:
        offset, scale: Each of shape (num_tensors,).
    """
    offset, scale = [], []
    for t in tensors:
        t = t.detach().cpu().double()  # on the CPU: MPS has no float64
        std = t.std(unbiased=False).item() if t.numel() > 1 else 0.0
        offset.append(t.mean().item())
        scale.append(std if std > 0 else constant_scale)
    return torch.tensor(offset), torch.tensor(scale)


@dataclass
class FlatLayout:
    """Where each target tensor lies in the generator's flat output.

    The counterpart of KernelBank's tile grid: tensor k (in the order of
    ``target.named_parameters()``) takes the next ``numels[k]`` values; the values past
    the last tensor (the unused tail of the last chunk) are dropped.
    """

    names: list[str]
    shapes: list[tuple[int, ...]]
    numels: list[int]

    @classmethod
    def of(cls, named: Mapping[str, torch.Tensor]) -> FlatLayout:
        """The layout of a module's ``dict(named_parameters())``."""
        return cls(list(named), [tuple(p.shape) for p in named.values()], [p.numel() for p in named.values()])

    @property
    def total(self) -> int:
        """Number of values placed: the sum of every tensor's size."""
        return sum(self.numels)

    def num_chunks(self, chunk_size: int) -> int:
        """Chunks of ``chunk_size`` values needed to cover every tensor."""
        return math.ceil(self.total / chunk_size)

    def unflatten(self, raw: torch.Tensor, offset: torch.Tensor, scale: torch.Tensor) -> dict[str, torch.Tensor]:
        """Generator output -> parameters: tensor k is ``offset[k] + scale[k] * its raw values``.

        Args:
            raw: Generator output (..., num_chunks, chunk_size); any leading batch shape.
            offset, scale: Per-tensor values, each of shape (num_tensors,).

        Returns:
            {name: tensor of shape (..., *shape)}, in the order of `names`.
        """
        flat = raw.flatten(-2)[..., : self.total]  # (..., total): the last chunk's unused tail dropped
        pieces = flat.split(self.numels, dim=-1)  # piece k: (..., numels[k])
        params = {}
        for name, shape, piece, off, sc in zip(self.names, self.shapes, pieces, offset, scale):
            params[name] = (off + sc * piece).reshape(piece.shape[:-1] + shape)  # (..., *shape)
        return params


# ---------------------------------------------------------------- running the target


def without_parameters(target: nn.Module) -> nn.Module:
    """A copy of TARGET without its parameters, which the hypernetwork generates: its buffers
    (BatchNorm's running statistics) stay, the template's values do not (so a state_dict
    holds no second copy of them), and TARGET itself is left as it was."""
    stripped = copy.deepcopy(target)
    for name, _ in list(stripped.named_parameters(remove_duplicate=False)):
        module_name, _, attr = name.rpartition(".")
        delattr(stripped.get_submodule(module_name), attr)
    return stripped


def refuse_training_batchnorm(target: nn.Module) -> None:
    """Dynamic mode: raise if any BatchNorm of the target is in training mode (see `TargetHyperNetwork.forward`)."""
    batchnorm = nn.modules.batchnorm._BatchNorm  # every BatchNorm*d, SyncBatchNorm and lazy variant
    training_bn = [n for n, m in target.named_modules() if isinstance(m, batchnorm) and m.training]
    if training_bn:
        raise ValueError(
            f"dynamic mode cannot run BatchNorm in training mode (modules {training_bn}): each sample has its"
            " own weights, so there is no batch to normalise over; call hnet.target.eval() after any hnet.train(),"
            " or use LayerNorm/GroupNorm"
        )


def run_per_sample(target: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Run ``target`` on each sample with that sample's own parameters, under ``torch.func.vmap``.

    Args:
        target: The template module (its buffers are used, its parameters are not).
        params: {name: (B, *shape)}, sample b's parameters at index b.
        x: Input batch (B, ...).

    Returns:
        The outputs stacked, (B, ...). Random ops (dropout) draw independently per sample.
    """

    def run_one(p: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        out = functional_call(target, p, (xi.unsqueeze(0),))  # a batch of one sample
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"dynamic mode needs a target that returns a tensor, got {type(out).__name__}")
        return out.squeeze(0)

    return vmap(run_one, randomness="different")(params, x)


# ---------------------------------------------------------------- the module


class TargetHyperNetwork(nn.Module):
    """Generates every parameter of ``target`` and runs it with the generated ones.

    ``out, params = hnet(x)``: ``params`` maps each name in
    ``target.named_parameters()`` to a tensor of that parameter's shape (dynamic mode:
    with a leading batch dimension), and ``out`` is the target applied to ``x`` with
    them. In the words of `KernelBank`: one embedding z per chunk (`z`), a
    generator shared by all chunks (`generator`), one generator call per forward
    (`generate`), and a layout (`layout`) in place of the tile grid.

    The target is only a template. Its parameters are frozen (``requires_grad_(False)``
    on the module you pass in) and never used in the forward pass; they still live in
    ``hnet.parameters()``, have no gradient, and so an optimizer leaves them alone.
    Its buffers are used as usual: in static mode BatchNorm keeps updating its running
    statistics. Dynamic mode refuses BatchNorm in training mode (see `forward`).

    The generator is an MLP with tanh hidden layers. Tanh rather than ReLU: its hidden
    features are centred, so an optimizer step on the shared last layer does not push
    every chunk (and so every generated weight) in the same direction; with ReLU a
    single early Adam step could shift all units of a layer into the dead zone.

    Initialisation: embeddings z ~ N(0, 1) and a generator whose raw outputs start with
    std 1 (see `reset_parameters`). Each generated tensor is then
    ``offset + scale * raw``, with a fixed per-tensor offset (the template's mean) and
    scale (the template's std, or ``constant_scale`` for a tensor that starts
    constant), stored as buffers ``init_offset`` and ``init_scale``. Generated
    parameters thus start at the scale of the target's own default initialisation,
    layer by layer.

    Args:
        target: Any module with parameters; its forward takes one tensor.
        chunk_size: Outputs of the generator per embedding z.
        z_dim: Size of each embedding z (the generator's input).
        hidden_sizes: Hidden widths of the generator MLP (tanh); ``()`` makes it linear.
        dynamic: Generate weights per sample: sample b's chunk c is generated from
            ``z[c] + encoder(x)[b]``.
        encoder: Dynamic mode: a module mapping x (B, ...) to codes (B, z_dim).
        in_features: Dynamic mode without ``encoder``: size of a flattened input, for
            the default encoder ``Flatten -> Linear(in_features, 64) -> ReLU ->
            Linear(64, z_dim)`` (PyTorch's default init).
        constant_scale: Scale of the generated values for tensors that start constant.
    """

    init_offset: torch.Tensor  # buffers (see above)
    init_scale: torch.Tensor

    def __init__(
        self,
        target: nn.Module,
        chunk_size: int = 1024,
        z_dim: int = 32,
        hidden_sizes: Sequence[int] = (64,),
        dynamic: bool = False,
        encoder: nn.Module | None = None,
        in_features: int | None = None,
        constant_scale: float = 0.1,
    ):
        super().__init__()
        named = template_parameters(target)
        check_options(chunk_size, z_dim, hidden_sizes, dynamic, encoder, in_features, constant_scale)
        self.target = without_parameters(target)
        layout = FlatLayout.of(named)
        self.names, self.shapes, self.numels = layout.names, layout.shapes, layout.numels
        self.chunk_size, self.z_dim, self.dynamic = chunk_size, z_dim, dynamic
        # This order (z, generator, encoder, buffers) fixes the state_dict keys' order
        # and which random numbers each default init draws; keep it.
        self.z = nn.Parameter(torch.empty(layout.num_chunks(chunk_size), z_dim))  # z: (C, z_dim)
        self.generator = mlp([z_dim, *hidden_sizes, chunk_size], activation=nn.Tanh)
        if dynamic and encoder is None:
            assert in_features is not None  # check_options: dynamic mode needs encoder or in_features
            encoder = mlp([in_features, DEFAULT_ENCODER_HIDDEN, z_dim], activation=nn.ReLU, flatten=True)
        self.encoder = encoder
        offset, scale = template_offset_and_scale(list(named.values()), constant_scale)
        self.register_buffer("init_offset", offset.to(torch.get_default_dtype()))
        self.register_buffer("init_scale", scale.to(torch.get_default_dtype()))
        self.reset_parameters()
        if self.num_hyper_parameters > self.num_target_parameters:
            warnings.warn(
                f"TargetHyperNetwork: the hypernetwork ({self.num_hyper_parameters:,} parameters) is larger than "
                f"its target ({self.num_target_parameters:,}); a smaller chunk_size or z_dim shrinks it",
                stacklevel=2,
            )

    def reset_parameters(self) -> None:
        """Embeddings z ~ N(0, 1); generator: `init_linear_` (N(0, 1/fan_in) weights, zero
        biases), its last layer then rescaled so the raw outputs over all chunks have std 1.
        A given encoder is left as it is."""
        nn.init.normal_(self.z)
        linears = [m for m in self.generator if isinstance(m, nn.Linear)]
        for layer in linears:
            init_linear_(layer)
        with torch.no_grad():
            raw = self.generator(self.z)  # (C, chunk_size)
            if raw.numel() > 1:
                linears[-1].weight.div_(raw.std())

    @property
    def layout(self) -> FlatLayout:
        """Where each target tensor lies in the generator's flat output (a view of names/shapes/numels)."""
        return FlatLayout(self.names, self.shapes, self.numels)

    @property
    def num_chunks(self) -> int:
        """Number of embeddings z: ceil(num_target_parameters / chunk_size)."""
        return self.z.shape[0]

    @property
    def num_target_parameters(self) -> int:
        """Number of values generated: every parameter of the target."""
        return sum(self.numels)

    @property
    def num_hyper_parameters(self) -> int:
        """Learnable parameters of the hypernetwork: z's, generator, encoder."""
        parts = [self.z, *self.generator.parameters()]
        if self.encoder is not None:
            parts += list(self.encoder.parameters())
        return sum(p.numel() for p in parts)

    def summary(self) -> str:
        """A few lines comparing the hypernetwork's size with the target's."""
        encoder = sum(p.numel() for p in self.encoder.parameters()) if self.encoder is not None else 0
        generator = sum(p.numel() for p in self.generator.parameters())
        hyper, total = self.num_hyper_parameters, self.num_target_parameters
        used_in_last = total - (self.num_chunks - 1) * self.chunk_size
        return "\n".join(
            [
                f"TargetHyperNetwork ({'dynamic' if self.dynamic else 'static'}) for {type(self.target).__name__}",
                f"  target:       {total:,} parameters in {len(self.names)} tensors (generated, not trained)",
                f"  chunks:       {self.num_chunks} x {self.chunk_size} values, last chunk uses {used_in_last}",
                f"  hypernetwork: {hyper:,} parameters = z's {self.z.numel():,}"
                f" + generator {generator:,} + encoder {encoder:,}",
                f"  ratio:        hypernetwork / target = {hyper / total:.3f}",
            ]
        )

    @torch.no_grad()
    def to_plain(self) -> nn.Module:
        """The target as an ordinary module holding the generated parameters (static mode).

        Raises:
            ValueError: In dynamic mode, whose weights depend on each input.
        """
        if self.dynamic:
            raise ValueError("dynamic mode generates weights per input: there is no one plain model")
        plain = copy.deepcopy(self.target)
        for name, value in self.generate().items():
            module_name, _, attr = name.rpartition(".")
            setattr(plain.get_submodule(module_name), attr, nn.Parameter(value.detach().clone()))
        return plain

    def _z_for(self, x: torch.Tensor | None) -> torch.Tensor:
        """The embeddings z this forward feeds the generator: (C, z_dim), or (B, C, z_dim) in dynamic mode."""
        if not self.dynamic:
            if x is not None:
                raise ValueError("static mode generates one weight set from learned embeddings: call generate()")
            return self.z  # (C, z_dim)
        if x is None:
            raise ValueError("dynamic mode generates weights from the input: call generate(x)")
        assert self.encoder is not None  # dynamic mode always has one (see __init__)
        code = self.encoder(x)  # (B, z_dim)
        if code.shape != (x.shape[0], self.z_dim):
            raise ValueError(
                f"encoder output must have shape (batch, z_dim) = ({x.shape[0]}, {self.z_dim}), got {tuple(code.shape)}"
            )
        return self.z + code.unsqueeze(1)  # (B, C, z_dim): each sample shifts every embedding z

    def generate(self, x: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """All target parameters, from ONE generator call (as `KernelBank.generate` makes all kernels).

        Args:
            x: Dynamic mode: the input batch (B, ...) that the weights depend on.
                Static mode: must be None.

        Returns:
            {name: tensor of shape (*shape)} in static mode, (B, *shape) in dynamic mode.
        """
        z = self._z_for(x)  # (C, z_dim) or (B, C, z_dim)
        raw = self.generator(z)  # (..., C, chunk_size): one chunk per embedding z
        return self.layout.unflatten(raw, self.init_offset, self.init_scale)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Generate the target's parameters and run the target on x with them.

        Dynamic mode runs the target once per sample, as a batch of one, under
        ``torch.func.vmap`` (dropout draws a different mask per sample). BatchNorm in
        training mode is refused there: its batch statistics would be those of a single
        sample and its running-stat update cannot be batched. Use BatchNorm in eval
        mode, or a normalisation without batch statistics (LayerNorm, GroupNorm).

        Args:
            x: Input batch (B, ...) for the target.

        Returns:
            out: The target's output (dynamic mode: must be a tensor; (B, ...)).
            params: The generated parameters, see `generate`.
        """
        if not self.dynamic:
            params = self.generate()
            return functional_call(self.target, params, (x,)), params
        refuse_training_batchnorm(self.target)
        params = self.generate(x)
        return run_per_sample(self.target, params, x), params
