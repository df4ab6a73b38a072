"""The smallest hypernetwork, written out: an MLP that outputs another MLP's weights.

The hypernetwork maps one learned vector z to a flat vector holding every weight and
bias of a two-layer target MLP. We cut that vector into W1, b1, W2, b2, run the target
with `F.linear`, and backpropagate the target's loss. The gradient flows through the
generated weights into the hypernetwork: only z and the hypernetwork are trained; the
target has no parameters of its own.

    z (z_dim,) -> Linear -> ReLU -> Linear -> flat (n_target,)
    flat -> W1 (hidden, in), b1 (hidden,), W2 (out, hidden), b2 (out,)
    y = F.linear(relu(F.linear(x, W1, b1)), W2, b2)

`target_hypernetwork.py` does the same for any module, in chunks.

    python -m examples.mlp_exercise
    python -m examples.mlp_exercise --help
"""

from __future__ import annotations

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F


class FlatHyperNetwork(nn.Module):
    """A learned z and an MLP that turns it into the flat parameter vector of a 2-layer MLP.

    Args:
        in_features: Target input size.
        hidden: Target hidden size.
        out_features: Target output size.
        z_dim: Size of the learned embedding z.
        hyper_hidden: Hidden width of the hypernetwork.
    """

    def __init__(self, in_features: int, hidden: int, out_features: int, z_dim: int = 8, hyper_hidden: int = 32):
        super().__init__()
        # (name, shape) of every target tensor, in the order they sit in the flat vector
        self.shapes = [
            ("W1", (hidden, in_features)),
            ("b1", (hidden,)),
            ("W2", (out_features, hidden)),
            ("b2", (out_features,)),
        ]
        self.sizes = [torch.Size(s).numel() for _, s in self.shapes]
        self.z = nn.Parameter(torch.randn(z_dim))
        self.net = nn.Sequential(nn.Linear(z_dim, hyper_hidden), nn.ReLU(), nn.Linear(hyper_hidden, sum(self.sizes)))

    def forward(self) -> dict[str, torch.Tensor]:
        """The target's weights, generated from z."""
        flat = self.net(self.z)  # (n_target,)
        return {name: piece.view(shape) for (name, shape), piece in zip(self.shapes, flat.split(self.sizes))}


def target_mlp(x: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
    """The target MLP, run with given weights: (N, in) -> (N, out)."""
    h = F.relu(F.linear(x, w["W1"], w["b1"]))  # (N, hidden)
    return F.linear(h, w["W2"], w["b2"])  # (N, out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--in-features", type=int, default=4)
    p.add_argument("--hidden", type=int, default=16, help="target hidden size")
    p.add_argument("--out-features", type=int, default=2)
    p.add_argument("--z-dim", type=int, default=8)
    p.add_argument("--hyper-hidden", type=int, default=32, help="hypernetwork hidden size")
    p.add_argument("--steps", type=int, default=300, help="training steps after the gradient check")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads; tiny tensors run best on one")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Check that gradients reach the hypernetwork, then train it a little."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    hnet = FlatHyperNetwork(args.in_features, args.hidden, args.out_features, args.z_dim, args.hyper_hidden)
    n_target = sum(hnet.sizes)
    n_hyper = sum(p.numel() for p in hnet.parameters())
    print(f"target MLP {args.in_features}->{args.hidden}->{args.out_features}: {n_target} generated values")
    print(f"hypernetwork (z + MLP): {n_hyper} parameters, {n_hyper / n_target:.0f}x the target (one output per value)")

    # a regression task: a fixed random smooth function of x
    x = torch.randn(256, args.in_features)
    y = torch.sin(x @ torch.randn(args.in_features, args.out_features))

    # 1. one backward pass: every hypernetwork tensor gets a gradient through the generated weights
    flat = hnet.net(hnet.z)
    flat.retain_grad()  # keep dL/d(flat): the gradient the target's weights receive
    weights = {name: piece.view(shape) for (name, shape), piece in zip(hnet.shapes, flat.split(hnet.sizes))}
    loss = F.mse_loss(target_mlp(x, weights), y)
    loss.backward()
    print(f"\ninitial loss {loss.item():.4f}; gradient norms of the hypernetwork's parameters:")
    grad_norms = {}
    for name, p in [("z", hnet.z), *hnet.net.named_parameters()]:
        grad_norms[name] = p.grad.norm().item()
        print(f"  {name:10s} {tuple(p.shape)!s:10s} |grad| = {grad_norms[name]:.3e}")
    if not all(g > 0 for g in grad_norms.values()):
        raise RuntimeError(f"some hypernetwork parameter got no gradient: {grad_norms}")
    print(f"all {len(grad_norms)} hypernetwork tensors received non-zero gradients")
    # The last layer computes flat = A h + c, so dL/dc is exactly dL/d(flat).
    torch.testing.assert_close(hnet.net[-1].bias.grad, flat.grad)
    print("the output bias's gradient equals dL/d(generated weights), as the chain rule says")

    # 2. train z and the hypernetwork on the target's loss
    opt = torch.optim.Adam(hnet.parameters(), lr=1e-2)
    for step in range(1, args.steps + 1):
        loss = F.mse_loss(target_mlp(x, hnet()), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % max(1, args.steps // 5) == 0:
            print(f"step {step:4d}  loss {loss.item():.4f}")
    with torch.no_grad():
        final = F.mse_loss(target_mlp(x, hnet()), y).item()
    print(f"final loss {final:.4f} (predict-zero loss {y.pow(2).mean().item():.4f})")
    return {"target_params": n_target, "hyper_params": n_hyper, "grad_norms": grad_norms, "final_loss": final}


if __name__ == "__main__":
    main()
