"""One vocabulary across the three generators: KernelBank, HyperNetized and TargetHyperNetwork."""

import importlib

import pytest
import torch
import torch.nn as nn

from hypernetwork_modules import HyperNetwork, KernelBank, hypernetize
from target_hypernetwork import TargetHyperNetwork

LIBRARY = ("hypernetwork_modules", "target_hypernetwork", "primary_net", "resnet_blocks")


@pytest.mark.parametrize("name", LIBRARY)
def test_each_library_module_lists_its_public_names_and_has_them(name):
    module = importlib.import_module(name)
    assert module.__all__ and all(hasattr(module, n) for n in module.__all__)
    assert all(not n.startswith("_") for n in module.__all__)


def generators() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 32, 3), nn.Flatten(), nn.Linear(32 * 4 * 4, 4))
    return {
        "bank": KernelBank([(32, 16, 3, 3), (16, 16, 3, 3)], HyperNetwork(8, 16, 16, 3)),
        "hypernetized": hypernetize(model, z_dim=8),
        "target": TargetHyperNetwork(nn.Linear(40, 30), chunk_size=50, z_dim=8, hidden_sizes=(4,)),
    }


@pytest.mark.parametrize("kind", ["bank", "hypernetized", "target"])
def test_the_generators_share_their_names_and_their_counts_add_up(kind):
    gen = generators()[kind]
    made = gen.generate()
    values = made.values() if isinstance(made, dict) else made
    assert gen.num_target_parameters == sum(v.numel() for v in values)
    assert gen.num_hyper_parameters == sum(
        p.numel() for n, p in gen.named_parameters() if n.split(".")[0] in {"z", "generator", "hypernet", "banks"}
    )
    assert f"{gen.num_hyper_parameters:,}" in gen.summary()
    zs = [gen.z] if kind != "hypernetized" else [b.z for b in gen.banks.values()]
    assert all(z.shape[1] == 8 for z in zs)
    for old in ("kernels", "embeddings", "embed_dim", "sq_norm"):
        assert not hasattr(gen, old), old
