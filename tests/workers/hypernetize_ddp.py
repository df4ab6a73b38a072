"""Trains a hypernetized CNN for a few steps under torchrun (gloo, CPU) and saves each
process's final state (for tests/test_distributed.py).

    torchrun --standalone --nproc-per-node 2 tests/workers/hypernetize_ddp.py OUT_DIR
"""

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from distributed import exit_process  # noqa: E402
from hypernetwork_modules import hypernetize  # noqa: E402

STEPS, BATCH = 3, 8  # BATCH: the global batch, split evenly over the processes


def small_cnn() -> torch.nn.Module:
    """No BatchNorm (its statistics are per process); one conv a 16x16x3x3 tile can make."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(32, 10),
    )


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [
        (torch.randn(BATCH, 3, 8, 8, generator=gen), torch.randint(0, 10, (BATCH,), generator=gen))
        for _ in range(STEPS)
    ]


def train(model: torch.nn.Module, forward, rank: int, world: int) -> None:
    """STEPS of SGD on this process's share of each global batch."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    share = BATCH // world
    for x, y in batches():
        x, y = x[rank * share : (rank + 1) * share], y[rank * share : (rank + 1) * share]
        optimizer.zero_grad()
        F.cross_entropy(forward(x), y).backward()
        optimizer.step()


def main() -> int:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same initial model on every process
    model = hypernetize(small_cnn(), z_dim=8)
    train(model, DistributedDataParallel(model), rank, world)
    torch.save(model.state_dict(), Path(sys.argv[1]) / f"rank{os.environ['RANK']}.pt")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    exit_process(main())
