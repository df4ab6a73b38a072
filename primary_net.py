"""The primary network: a Wide-ResNet whose 3x3 kernels are stored or generated.

WRN-(6N+4)-k for CIFAR (Zagoruyko & Komodakis, 2016), as used in Sec. 4.2 of the paper:

    stem   conv3x3(3 -> 16) + BN                                ordinary layers
    stage1 N blocks, 16k channels,  32x32                       2N generated kernels
    stage2 N blocks, 32k channels,  16x16 (first block stride 2) 2N generated kernels
    stage3 N blocks, 64k channels,   8x8  (first block stride 2) 2N generated kernels
    head   BN -> ReLU -> global average pool -> linear(64k -> classes)

With ``hyper=True`` all 6N block kernels come from one `KernelBank` (one hypernetwork
call per forward); with ``hyper=False`` they are ordinary parameters. Everything else
is the same code. ``python primary_net.py`` prints the paper's Table 2 beside our counts.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from hypernetwork_modules import HyperNetwork, KernelBank, ScaleIn, layout_of
from resnet_blocks import WideBasicBlock, bn_fed

__all__ = [
    "PAPER_TABLE2",
    "PrimaryNetwork",
    "blocks_per_stage",
    "model_name",
    "num_parameters",
    "paper_table",
]

STEM_CHANNELS = 16
TILE = 16  # basic kernels are TILE x TILE x 3 x 3 (paper Sec. 4.2)

# Paper Table 2 (arXiv 1609.09106 v4): (depth, width, hyper) -> (test error %, params in M).
PAPER_TABLE2 = {
    (40, 1, False): (6.73, 0.563),
    (40, 1, True): (8.02, 0.097),
    (40, 2, False): (5.66, 2.236),
    (40, 2, True): (7.23, 0.148),
}


def blocks_per_stage(depth: int) -> int:
    """N for a WRN of depth 6N+4.

    Raises:
        ValueError: If depth is not of the form 6N+4 with N >= 1.
    """
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"depth must be 6N+4 with N >= 1 (10, 16, 22, 28, 34, 40, ...), got {depth}")
    return (depth - 4) // 6


def model_name(depth: int, width: int, hyper: bool) -> str:
    """Short name used for runs and tables, e.g. ``hyper-40-1`` or ``wrn-40-2``."""
    return f"{'hyper' if hyper else 'wrn'}-{depth}-{width}"


class PrimaryNetwork(nn.Module):
    """Wide-ResNet-(depth)-(width) for 32x32 images, with stored or generated 3x3 kernels.

    Args:
        depth: 6N+4 (40 in the paper).
        width: Widening factor k (1 or 2 in the paper); stage widths 16k, 32k, 64k.
        num_classes: Output classes.
        hyper: Generate the block kernels with the hypernetwork (else store them).
        z_dim: Size of each z-embedding (and of the hypernetwork's hidden layer).
        shortcut: ``"pad"`` (parameter-free, matches the paper's counts) or ``"conv"``
            (1x1 projection) where a block changes shape.
        scale_in: Where the generated kernels' initial (Kaiming) scale lives: ``"z"`` or
            ``"hypernet"`` (z's of unit scale; see `KernelBank`).
    """

    def __init__(
        self,
        depth: int = 40,
        width: int = 1,
        num_classes: int = 10,
        hyper: bool = True,
        z_dim: int = 64,
        shortcut: str = "pad",
        scale_in: ScaleIn = "z",
    ):
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        n = blocks_per_stage(depth)
        self.depth, self.width, self.hyper = depth, width, hyper
        self.num_classes, self.shortcut = num_classes, shortcut
        widths = [STEM_CHANNELS] + [STEM_CHANNELS * (2**s) * width for s in range(3)]

        self.stem = nn.Conv2d(3, STEM_CHANNELS, 3, padding=1, bias=True)
        self.stem_bn = nn.BatchNorm2d(STEM_CHANNELS)
        self.blocks = nn.ModuleList()
        for stage in range(3):
            for j in range(n):
                in_ch = widths[stage] if j == 0 else widths[stage + 1]
                stride = 2 if stage > 0 and j == 0 else 1
                self.blocks.append(WideBasicBlock(in_ch, widths[stage + 1], stride, shortcut))
        self.bn = nn.BatchNorm2d(widths[-1])
        self.fc = nn.Linear(widths[-1], num_classes)

        shapes = [s for block in self.blocks if isinstance(block, WideBasicBlock) for s in block.kernel_shapes()]
        if hyper:
            self.kernel_bank = KernelBank(shapes, HyperNetwork(z_dim, TILE, TILE, 3), scale_in=scale_in)
        else:
            self.stored_kernels = nn.ParameterList(nn.Parameter(torch.empty(s)) for s in shapes)
            for w in self.stored_kernels:
                nn.init.kaiming_normal_(w, mode="fan_in", nonlinearity="relu")

    def generate(self) -> list[torch.Tensor]:
        """The 6N block kernels in use, in block order (generated on each call if hyper, in
        the layout of the stem's stored kernel: channels_last after ``to(memory_format=...)``)."""
        if self.hyper:
            return self.kernel_bank(layout_of(self.stem))
        return list(self.stored_kernels)

    def kernel_sq_norm(self) -> torch.Tensor:
        """Sum of squares of all kernels in use, for the L2 penalty. For a hyper network it
        comes from the hypernetwork's Gram matrices, without generating the kernels."""
        if self.hyper:
            return self.kernel_bank.kernel_sq_norm()
        return sum(w.pow(2).sum() for w in self.stored_kernels)

    @torch.no_grad()
    def to_plain(self) -> PrimaryNetwork:
        """A ``hyper=False`` network that stores the generated kernels: the same function, with
        nothing left to generate at inference time (on this network's device)."""
        plain = PrimaryNetwork(self.depth, self.width, self.num_classes, hyper=False, shortcut=self.shortcut)
        state = {k: v for k, v in self.state_dict().items() if not k.startswith("kernel_bank.")}
        state.update({f"stored_kernels.{i}": k for i, k in enumerate(self.generate())})
        plain.load_state_dict(state)
        return plain.to(next(self.parameters()).device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) of images (N, 3, 32, 32): the block kernels are generated
        once (a hyper network's one hypernetwork call), then the network runs."""
        kernels = self.generate()
        assert self.stem.bias is not None  # built with one
        h = self.stem_bn(
            F.conv2d(x, self.stem.weight, bn_fed(self.stem.bias), padding=self.stem.padding)
        )  # (N, 16, 32, 32)
        for i, block in enumerate(self.blocks):
            h = block(h, kernels[2 * i], kernels[2 * i + 1])  # (N, 16k|32k|64k, 32|16|8, 32|16|8)
        h = F.relu(self.bn(h))
        h = F.adaptive_avg_pool2d(h, 1).flatten(1)  # (N, 64k)
        return self.fc(h)


def num_parameters(module: nn.Module) -> int:
    """Number of learnable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def paper_table() -> str:
    """Table 2's four rows with our exact parameter counts, as Markdown."""
    lines = [
        "| model | our params | ours (M) | paper (M) | paper test error | z's | generated layers |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (depth, width, hyper), (error, paper_m) in PAPER_TABLE2.items():
        net = PrimaryNetwork(depth, width, hyper=hyper)
        count = num_parameters(net)
        zs = net.kernel_bank.num_tiles if hyper else 0
        lines.append(
            f"| {model_name(depth, width, hyper)} | {count:,} | {count / 1e6:.3f} | {paper_m:.3f} | "
            f"{error:.2f}% | {zs} | {len(net.generate()) if hyper else 0} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    argparse.ArgumentParser(description="Print the paper's Table 2 beside this code's parameter counts.").parse_args()
    print(paper_table())
