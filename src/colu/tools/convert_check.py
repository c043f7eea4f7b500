"""``colu convert-check``: convert a trained model to CoLU and fine-tune the loss back.

Trains a small MLP with ReLU (or SiLU) on a generated 2-D regression task,
converts it with :func:`colu.convert`, shows the loss jump (CoLU computes a
different function from the same weights) and fine-tunes until the loss
recovers. Runs in seconds on a CPU and downloads nothing.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from colu.convert import convert


def _data(n, generator):
    x = torch.rand(n, 2, generator=generator) * 4 - 2
    y = torch.sin(2 * x[:, :1]) * torch.cos(1.5 * x[:, 1:]) + 0.3 * x[:, :1] * x[:, 1:]
    return x, y


def _train(model, x, y, steps, lr):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()


@torch.no_grad()
def _loss(model, x, y):
    return float(nn.functional.mse_loss(model(x), y))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="colu convert-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--activation", choices=("relu", "silu"), default="relu",
                        help="activation to train with (default: %(default)s)")
    parser.add_argument("--width", type=int, default=64,
                        help="hidden width, a multiple of --cone-dim (default: %(default)s)")
    parser.add_argument("--cone-dim", type=int, default=4,
                        help="channels per cone S of the CoLU that replaces the activation (default: %(default)s)")
    parser.add_argument("--scaling", choices=("hard", "soft", "firm"), default="hard",
                        help="CoLU scaling (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=1000,
                        help="training steps before conversion (default: %(default)s)")
    parser.add_argument("--finetune-steps", type=int, default=600,
                        help="fine-tuning steps after conversion (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=3e-3,
                        help="Adam learning rate of training; fine-tuning uses a third of it (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the data and the initial weights (default: %(default)s)")
    args = parser.parse_args(argv)

    g = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    x, y = _data(1024, g)
    xt, yt = _data(512, g)
    act = nn.ReLU if args.activation == "relu" else nn.SiLU
    model = nn.Sequential(
        nn.Linear(2, args.width), act(), nn.Linear(args.width, args.width), act(), nn.Linear(args.width, 1)
    )
    _train(model, x, y, args.steps, args.lr)
    trained = _loss(model, xt, yt)
    print(f"trained with {args.activation}: test loss {trained:.5f}")

    report = convert(model, cone_dim=args.cone_dim, scaling=args.scaling, example_input=x[:8])
    print(report)
    converted = _loss(model, xt, yt)
    print(f"after conversion (no training): test loss {converted:.5f}  ({converted / trained:.1f}x)")

    done = 0
    for chunk in (args.finetune_steps // 6, args.finetune_steps // 3, args.finetune_steps - args.finetune_steps // 2):
        _train(model, x, y, chunk, args.lr / 3)
        done += chunk
        print(f"  fine-tuned {done:4d} steps: test loss {_loss(model, xt, yt):.5f}")
    final = _loss(model, xt, yt)
    print(f"after fine-tuning: test loss {final:.5f} ({final / trained:.2f}x the loss before conversion, down from {converted / trained:.0f}x)")
    return 0
