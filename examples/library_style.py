"""TargetHyperNetwork used like any other module: a static hypernetwork for an MLP.

The target is an ordinary `nn.Sequential` (69,120 parameters). The hypernetwork owns
512 learned chunk embeddings of size 32 and one small generator MLP that turns each
into 135 values; together they make every weight and bias of the target, and only
they are trained. The task is a small synthetic regression (a fixed random teacher
network plus noise).

    python -m examples.library_style            # about 12 s on 2 CPU cores
    python -m examples.library_style --help
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from target_hypernetwork import TargetHyperNetwork  # installed by `pip install -e .` (requirements.txt)


def make_target(hidden: int = 256) -> nn.Sequential:
    """The target network: 8 -> hidden -> hidden -> 4, tanh, no bias on the output."""
    return nn.Sequential(
        nn.Linear(8, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 4, bias=False)
    )


def make_data(n_train: int, n_test: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """x ~ N(0, I_8) and y = teacher(x) + noise, for one fixed random tanh teacher.

    Returns:
        x_train (n_train, 8), y_train (n_train, 4), x_test (n_test, 8), y_test (n_test, 4).
    """
    teacher_in = torch.randn(8, 32, generator=generator) / math.sqrt(8)
    teacher_out = torch.randn(32, 4, generator=generator) / math.sqrt(32)
    x = torch.randn(n_train + n_test, 8, generator=generator)
    y = torch.tanh(2 * x @ teacher_in) @ teacher_out + 0.05 * torch.randn(len(x), 4, generator=generator)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=1500, help="training steps")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate")
    p.add_argument("--hidden", type=int, default=256, help="hidden width of the target (256 in the spec)")
    p.add_argument("--num-chunks", type=int, default=512, help="chunk embeddings (chunk size follows)")
    p.add_argument("--z-dim", type=int, default=32, help="size of each chunk embedding")
    p.add_argument("--generator-hidden", type=int, default=64, help="hidden width of the generator MLP")
    p.add_argument("--train-size", type=int, default=4096)
    p.add_argument("--log-every", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads; tiny tensors run best on one")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Train the hypernetwork on the regression task; returns the numbers it prints."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    x_train, y_train, x_test, y_test = make_data(args.train_size, 1024, torch.Generator().manual_seed(args.seed))

    target = make_target(args.hidden)
    total = sum(p.numel() for p in target.parameters())
    chunk_size = math.ceil(total / args.num_chunks)
    hnet = TargetHyperNetwork(target, chunk_size=chunk_size, z_dim=args.z_dim, hidden_sizes=(args.generator_hidden,))
    print(hnet.summary())
    print(f"predict-the-mean test MSE {y_test.var(dim=0).mean().item():.4f}, noise floor {0.05**2:.4f}")
    with torch.no_grad():
        print(f"step     0  test MSE {F.mse_loss(hnet(x_test)[0], y_test).item():.4f}")

    opt = torch.optim.Adam(hnet.parameters(), lr=args.lr)  # the frozen target template has no grads: skipped
    start, losses = time.time(), []
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, args.train_size, (args.batch_size,))
        pred, _ = hnet(x_train[idx])
        loss = F.mse_loss(pred, y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % args.log_every == 0 or step == args.steps:
            with torch.no_grad():
                test = F.mse_loss(hnet(x_test)[0], y_test).item()
            print(f"step {step:5d}  train MSE {loss.item():.4f}  test MSE {test:.4f}  ({time.time() - start:.1f}s)")
    with torch.no_grad():
        final_test = F.mse_loss(hnet(x_test)[0], y_test).item()
    return {
        "target_params": hnet.num_target_parameters,
        "hyper_params": hnet.num_hyper_parameters,
        "num_chunks": hnet.num_chunks,
        "first_loss": losses[0],
        "last_loss": sum(losses[-10:]) / len(losses[-10:]),
        "test_mse": final_test,
    }


if __name__ == "__main__":
    main()
