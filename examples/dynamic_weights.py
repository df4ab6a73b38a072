"""Dynamic weights: a hypernetwork that gives every sample its own target weights.

Each sample is x = [c, u]: a context c (k numbers) and a vector u (d numbers). The
answer is y = A(c) u, where the linear map A(c) = sum_i c_i A_i depends on the
context. One fixed weight set cannot do that: a linear target with static weights
(static hypernetwork) cannot multiply c with u, and a plain MLP has to approximate
the product from scratch. A dynamic hypernetwork encodes x, generates the target's
weights per sample and so can realise A(c) exactly, with a target that is just one
`nn.Linear`.

Three models, same data, same optimiser, same steps:
  static   TargetHyperNetwork(Linear(k+d, out))          one weight set for all
  mlp      MLP k+d -> 80 -> 80 -> out                    plain baseline, more parameters
  dynamic  TargetHyperNetwork(Linear(k+d, out), dynamic)  weights from x, run under vmap

    python -m examples.dynamic_weights
    python -m examples.dynamic_weights --help
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from target_hypernetwork import TargetHyperNetwork, mlp  # installed by `pip install -e .` (requirements.txt)


def make_data(n: int, k: int, d: int, out: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """x = [c, u] (n, k+d) and y = A(c) u (n, out) with A(c) = sum_i c_i A_i, fixed random A_i.

    The first call with a given generator state fixes the A_i; split one call into
    train and test so both share them.
    """
    maps = torch.randn(k, out, d, generator=generator) / math.sqrt(k * d)  # A_1..A_k
    c = torch.randn(n, k, generator=generator)
    u = torch.randn(n, d, generator=generator)
    a = torch.einsum("nk,kod->nod", c, maps)  # (n, out, d): each sample's own map
    y = torch.einsum("nod,nd->no", a, u)  # (n, out)
    return torch.cat([c, u], dim=1), y


class Baseline(nn.Module):
    """A plain MLP, returning (output, None) like TargetHyperNetwork returns (output, params)."""

    def __init__(self, sizes: list[int]):
        super().__init__()
        self.net = mlp(sizes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.net(x), None


def train(model: nn.Module, data: tuple[torch.Tensor, ...], args: argparse.Namespace, label: str) -> float:
    """Adam on MSE; prints progress and returns the final test MSE."""
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(args.seed)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    start = time.time()
    for _step in range(1, args.steps + 1):
        idx = torch.randint(0, len(x_train), (args.batch_size,))
        loss = F.mse_loss(model(x_train[idx])[0], y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        test = F.mse_loss(model(x_test)[0], y_test).item()
    print(f"  {label:8s} final train-batch MSE {loss.item():.4f}  test MSE {test:.4f}  ({time.time() - start:.1f}s)")
    return test


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--context", type=int, default=4, help="k: size of the context c")
    p.add_argument("--features", type=int, default=8, help="d: size of u")
    p.add_argument("--out", type=int, default=4, help="output size")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--chunk-size", type=int, default=None, help="generator outputs per chunk (default: whole target)")
    p.add_argument("--z-dim", type=int, default=16)
    p.add_argument("--hidden", type=int, default=64, help="hidden width of the generator")
    p.add_argument("--mlp-hidden", type=int, default=80, help="hidden width of the MLP baseline")
    p.add_argument("--train-size", type=int, default=8192)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads; tiny tensors run best on one")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Train the three models; returns their test MSEs and sizes."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    n_in = args.context + args.features
    generator = torch.Generator().manual_seed(args.seed)
    x, y = make_data(args.train_size + 2048, args.context, args.features, args.out, generator)
    data = (x[: args.train_size], y[: args.train_size], x[args.train_size :], y[args.train_size :])
    print(
        f"task: y = A(c) u, c in R^{args.context}, u in R^{args.features}, y in R^{args.out};"
        f" predict-zero test MSE {data[3].pow(2).mean().item():.4f}"
    )

    torch.manual_seed(args.seed)
    chunk_size = args.chunk_size or n_in * args.out + args.out  # default: Linear(n_in, out) in one chunk
    hyper_kw = dict(chunk_size=chunk_size, z_dim=args.z_dim, hidden_sizes=(args.hidden,))
    models = {
        "static": TargetHyperNetwork(nn.Linear(n_in, args.out), **hyper_kw),
        "mlp": Baseline([n_in, args.mlp_hidden, args.mlp_hidden, args.out]),
        "dynamic": TargetHyperNetwork(nn.Linear(n_in, args.out), dynamic=True, in_features=n_in, **hyper_kw),
    }
    print(models["dynamic"].summary())
    sizes = {name: sum(p.numel() for p in m.parameters() if p.requires_grad) for name, m in models.items()}
    print("trainable parameters: " + ", ".join(f"{name} {n:,}" for name, n in sizes.items()))
    print(f"training each for {args.steps} steps:")
    results = {name: train(m, data, args, name) for name, m in models.items()}
    _, params = models["dynamic"](data[2][:3])
    print("dynamic params for 3 test samples: " + ", ".join(f"{n} {tuple(p.shape)}" for n, p in params.items()))
    best_baseline = min(results["static"], results["mlp"])
    print(f"dynamic test MSE is {best_baseline / max(results['dynamic'], 1e-12):.1f}x lower than the best baseline")
    return {"test_mse": results, "params": sizes}


if __name__ == "__main__":
    main()
