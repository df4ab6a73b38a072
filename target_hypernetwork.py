"""A hypernetwork for any target module: it generates ALL the target's parameters.

The static hypernetwork of `hypernetwork_modules.py` is built for 3x3 kernels. This
file does the same for an arbitrary `nn.Module`, by treating the target's parameters
as one flat vector cut into equal chunks:

    e (num_chunks, embed_dim)                  one learned embedding per chunk
      [dynamic: e + encoder(x)[:, None]]       (B, num_chunks, embed_dim), per sample
      -> generator MLP (tanh), ONE batched call   shared by every chunk
      -> raw (..., num_chunks, chunk_size)
      -> flatten, truncate to the target's parameter count, split per tensor
      -> params {name: offset + scale * raw}   (..., *shape of that parameter)
      -> torch.func.functional_call(target, params, x)   [dynamic: under torch.func.vmap]

num_chunks = ceil(num_target_parameters / chunk_size), so the hypernetwork
(num_chunks * embed_dim embeddings plus one small generator) can be far smaller than
the target it generates.

Static mode: one weight set for the whole batch. Dynamic mode: an encoder turns each
input into a code that shifts every chunk embedding, so each sample gets its own
weights and the target runs once per sample under `vmap` (no Python loop).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
from torch.func import functional_call, vmap

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
        t = t.detach().double()
        std = t.std(unbiased=False).item() if t.numel() > 1 else 0.0
        offset.append(t.mean().item())
        scale.append(std if std > 0 else constant_scale)
    return torch.tensor(offset), torch.tensor(scale)


class TargetHyperNetwork(nn.Module):
    """Generates every parameter of ``target`` and runs it with the generated ones.

    ``out, params = hnet(x)``: ``params`` maps each name in
    ``target.named_parameters()`` to a tensor of that parameter's shape (dynamic mode:
    with a leading batch dimension), and ``out`` is the target applied to ``x`` with
    them.

    The target is only a template. Its parameters are frozen (``requires_grad_(False)``
    on the module you pass in) and never used in the forward pass; they still live in
    ``hnet.parameters()``, have no gradient, and so an optimizer leaves them alone.
    Its buffers are used as usual: in static mode BatchNorm keeps updating its running
    statistics. Dynamic mode refuses BatchNorm in training mode (see `forward`).

    The generator is an MLP with tanh hidden layers. Tanh rather than ReLU: its hidden
    features are centred, so an optimizer step on the shared last layer does not push
    every chunk (and so every generated weight) in the same direction; with ReLU a
    single early Adam step could shift all units of a layer into the dead zone.

    Initialisation: embeddings ~ N(0, 1) and a generator whose raw outputs start with
    std 1 (see `reset_parameters`). Each generated tensor is then
    ``offset + scale * raw``, with a fixed per-tensor offset (the template's mean) and
    scale (the template's std, or ``constant_scale`` for a tensor that starts
    constant), stored as buffers. Generated parameters thus start at the scale of the
    target's own default initialisation, layer by layer.

    Args:
        target: Any module with parameters; its forward takes one tensor.
        chunk_size: Outputs of the generator per embedding.
        embed_dim: Size of each chunk embedding (the generator's input).
        hidden_sizes: Hidden widths of the generator MLP (tanh); ``()`` makes it linear.
        dynamic: Generate weights per sample: sample b's chunk c is generated from
            ``embeddings[c] + encoder(x)[b]``.
        encoder: Dynamic mode: a module mapping x (B, ...) to codes (B, embed_dim).
        in_features: Dynamic mode without ``encoder``: size of a flattened input, for
            the default encoder ``Flatten -> Linear(in_features, 64) -> ReLU ->
            Linear(64, embed_dim)`` (PyTorch's default init).
        constant_scale: Scale of the generated values for tensors that start constant.
    """

    def __init__(
        self,
        target: nn.Module,
        chunk_size: int = 1024,
        embed_dim: int = 32,
        hidden_sizes: Sequence[int] = (64,),
        dynamic: bool = False,
        encoder: nn.Module | None = None,
        in_features: int | None = None,
        constant_scale: float = 0.1,
    ):
        super().__init__()
        named = dict(target.named_parameters())
        if not named:
            raise ValueError(f"target {type(target).__name__} has no parameters to generate")
        lazy = [n for n, p in named.items() if isinstance(p, nn.parameter.UninitializedParameter)]
        if lazy:
            raise ValueError(f"target has uninitialized (lazy) parameters {lazy}; run it once before wrapping it")
        not_finite = [n for n, p in named.items() if not torch.isfinite(p).all()]
        if not_finite:
            raise ValueError(f"target parameters {not_finite} hold inf/nan; initialise the template before wrapping it")
        if chunk_size < 1 or embed_dim < 1:
            raise ValueError(f"chunk_size and embed_dim must be >= 1, got {chunk_size} and {embed_dim}")
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

        self.target = target.requires_grad_(False)
        self.names = list(named)
        self.shapes = [tuple(p.shape) for p in named.values()]
        self.numels = [p.numel() for p in named.values()]
        self.chunk_size, self.embed_dim, self.dynamic = chunk_size, embed_dim, dynamic

        num_chunks = math.ceil(sum(self.numels) / chunk_size)
        self.embeddings = nn.Parameter(torch.empty(num_chunks, embed_dim))
        self.generator = mlp([embed_dim, *hidden_sizes, chunk_size], activation=nn.Tanh)
        if dynamic and encoder is None:
            encoder = mlp([in_features, DEFAULT_ENCODER_HIDDEN, embed_dim], activation=nn.ReLU, flatten=True)
        self.encoder = encoder
        offset, scale = template_offset_and_scale(list(named.values()), constant_scale)
        self.register_buffer("init_offset", offset.to(torch.get_default_dtype()))
        self.register_buffer("init_scale", scale.to(torch.get_default_dtype()))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Embeddings ~ N(0, 1); generator: N(0, 1/fan_in) weights and zero biases, its last
        layer then rescaled so the raw outputs over all chunks have std 1. A given
        encoder is left as it is."""
        nn.init.normal_(self.embeddings)
        linears = [m for m in self.generator if isinstance(m, nn.Linear)]
        for layer in linears:
            nn.init.normal_(layer.weight, std=1.0 / math.sqrt(layer.in_features))
            nn.init.zeros_(layer.bias)
        with torch.no_grad():
            raw = self.generator(self.embeddings)  # (C, chunk_size)
            if raw.numel() > 1:
                linears[-1].weight.div_(raw.std())

    @property
    def num_chunks(self) -> int:
        """Number of chunk embeddings: ceil(num_target_parameters / chunk_size)."""
        return self.embeddings.shape[0]

    @property
    def num_target_parameters(self) -> int:
        """Number of values generated: every parameter of the target."""
        return sum(self.numels)

    @property
    def num_hyper_parameters(self) -> int:
        """Learnable parameters of the hypernetwork: embeddings, generator, encoder."""
        parts = [self.embeddings, *self.generator.parameters()]
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
                f"  hypernetwork: {hyper:,} parameters = embeddings {self.embeddings.numel():,}"
                f" + generator {generator:,} + encoder {encoder:,}",
                f"  ratio:        hypernetwork / target = {hyper / total:.3f}",
            ]
        )

    def generate(self, x: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """All target parameters, from ONE generator call.

        Args:
            x: Dynamic mode: the input batch (B, ...) that the weights depend on.
                Static mode: must be None.

        Returns:
            {name: tensor of shape (*shape)} in static mode, (B, *shape) in dynamic mode.
        """
        z = self.embeddings  # (C, E)
        if self.dynamic:
            if x is None:
                raise ValueError("dynamic mode generates weights from the input: call generate(x)")
            code = self.encoder(x)
            if code.shape != (x.shape[0], self.embed_dim):
                raise ValueError(
                    f"encoder output must have shape (batch, embed_dim) = ({x.shape[0]}, {self.embed_dim}),"
                    f" got {tuple(code.shape)}"
                )
            z = z + code.unsqueeze(1)  # (B, C, E): each sample shifts every chunk embedding
        elif x is not None:
            raise ValueError("static mode generates one weight set from learned embeddings: call generate()")
        raw = self.generator(z)  # (..., C, chunk_size)
        flat = raw.flatten(-2)[..., : self.num_target_parameters]  # (..., total)
        pieces = flat.split(self.numels, dim=-1)
        params = {}
        stats = zip(self.init_offset, self.init_scale)
        for name, shape, piece, (offset, scale) in zip(self.names, self.shapes, pieces, stats):
            params[name] = (offset + scale * piece).reshape(piece.shape[:-1] + shape)  # (..., *shape)
        return params

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

        batchnorm = nn.modules.batchnorm._BatchNorm  # every BatchNorm*d, SyncBatchNorm and lazy variant
        training_bn = [n for n, m in self.target.named_modules() if isinstance(m, batchnorm) and m.training]
        if training_bn:
            raise ValueError(
                f"dynamic mode cannot run BatchNorm in training mode (modules {training_bn}): each sample has its"
                " own weights, so there is no batch to normalise over; call hnet.target.eval() after any hnet.train(),"
                " or use LayerNorm/GroupNorm"
            )
        params = self.generate(x)

        def run_one(p: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
            out = functional_call(self.target, p, (xi.unsqueeze(0),))  # a batch of one sample
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"dynamic mode needs a target that returns a tensor, got {type(out).__name__}")
            return out.squeeze(0)

        return vmap(run_one, randomness="different")(params, x), params
