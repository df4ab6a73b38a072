"""Export a trained HyperResNet as a plain WRN: inference pays nothing for the hypernetwork.

    python export.py checkpoints/hyper-40-1/best.pt            # -> checkpoints/hyper-40-1/best-plain.pt

The generated kernels are computed once and stored; the result is the same function
(identical outputs in eval mode) as a `PrimaryNetwork(depth, width, hyper=False)`:

    model = export.load_exported("checkpoints/hyper-40-1/best-plain.pt").eval()
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import torch

import train
from checkpointing import atomic_save, load_checkpoint, safe_load
from cli import ArgumentParser, UserError, run_cli
from experiment import config_of
from primary_net import PrimaryNetwork, num_parameters

EXPORT_FORMAT = "hyperresnet-plain-v1"


def model_from_checkpoint(ckpt: dict) -> PrimaryNetwork:
    """The Wide-ResNet a train.py checkpoint describes, with its trained weights.

    Raises:
        UserError: If the checkpoint holds another model (``--arch``): `HyperNetized.to_plain` exports those.
    """
    model = train.build_model(config_of(train.CIFAR10, ckpt["config"]))
    if not isinstance(model, PrimaryNetwork):
        raise UserError(
            f"export.py exports Wide-ResNets; this is --arch {ckpt['config']['arch']}: use "
            "hypernetwork_modules.HyperNetized.to_plain()"
        )
    model.load_state_dict(ckpt["model"])
    return model


def load_exported(path: str | Path) -> PrimaryNetwork:
    """A plain network from a file written by this script (loaded with weights_only=True)."""
    blob = safe_load(Path(path), "a file written by export.py")
    if not isinstance(blob, dict) or blob.get("format") != EXPORT_FORMAT:
        raise UserError(f"{path} is not a file written by export.py")
    a = blob["architecture"]
    model = PrimaryNetwork(a["depth"], a["width"], a["num_classes"], hyper=False, shortcut=a["shortcut"])
    model.load_state_dict(blob["model"])
    return model


def weights_bytes(model: torch.nn.Module) -> int:
    """Size of the model's state_dict as torch.save writes it."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def export(checkpoint: Path, out: Path | None = None) -> Path:
    """Write the plain version of CHECKPOINT's model; returns the output path."""
    ckpt = load_checkpoint(checkpoint)
    experiment = ckpt["config"]["experiment"]
    if experiment != train.CIFAR10.name:
        raise UserError(f"{checkpoint} is a {experiment} run; export.py exports CIFAR-10 HyperResNets")
    model = model_from_checkpoint(ckpt)
    if not model.hyper:
        raise UserError(f"{checkpoint} holds a plain network already: nothing to export")
    plain = model.to_plain()
    out = out or checkpoint.with_name(f"{checkpoint.stem}-plain.pt")
    architecture = {
        "depth": plain.depth,
        "width": plain.width,
        "num_classes": plain.num_classes,
        "shortcut": plain.shortcut,
    }
    atomic_save({"format": EXPORT_FORMAT, "architecture": architecture, "model": plain.state_dict()}, out)
    kib = 1024
    print(f"{checkpoint}: {checkpoint.stat().st_size / kib:,.0f} KiB (training checkpoint: weights, optimizer, RNG)")
    print(f"hyper weights: {num_parameters(model):,} parameters, {weights_bytes(model) / kib:,.0f} KiB")
    print(
        f"{out}: {out.stat().st_size / kib:,.0f} KiB ({weights_bytes(plain) / weights_bytes(model):.1f}x the hyper "
        f"weights' bytes), plain weights: {num_parameters(plain):,} parameters "
        f"({num_parameters(plain) / num_parameters(model):.2f}x the hyper's)"
    )
    return out


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(description="Store a trained HyperResNet's generated kernels in a plain WRN.")
    p.add_argument("checkpoint", type=Path, help="a train.py checkpoint (last.pt or best.pt) of a hyper run")
    p.add_argument("-o", "--out", type=Path, help="output file (default: CHECKPOINT's name + '-plain.pt')")
    args = p.parse_args(argv)
    return run_cli(lambda: export(args.checkpoint, args.out))


if __name__ == "__main__":
    sys.exit(main())
