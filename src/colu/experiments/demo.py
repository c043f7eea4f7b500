"""A first look: a tiny 3 -> 3 -> 3 network learns a rotation with ReLU and with CoLU."""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn

import colu


def _rotation() -> torch.Tensor:
    c, s = math.cos(math.pi / 4), math.sin(math.pi / 4)
    rx = torch.tensor([[1, 0, 0], [0, c, -s], [0, s, c]])
    ry = torch.tensor([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    rz = torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    return rz @ ry @ rx


def train(activation: nn.Module, seed: int, steps: int) -> float:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2048, 3, generator=gen)
    x[:, 0] = x[:, 0].abs()  # a hemisphere-like cloud around the first axis
    x = x / x.norm(dim=1, keepdim=True)
    y = x @ _rotation().T
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 3, bias=False), activation, nn.Linear(3, 3, bias=False))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return nn.functional.mse_loss(model(x), y).item()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="colu demo", description=__doc__)
    parser.add_argument("--steps", type=int, default=2000, help="Adam steps per run (default 2000)")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (default 3)")
    args = parser.parse_args(argv)
    for name, make in [("relu", nn.ReLU), ("colu S=3", lambda: colu.CoLU(cone_dim=3))]:
        losses = [train(make(), seed, args.steps) for seed in range(args.seeds)]
        print(f"{name:10s} final MSE per seed: " + ", ".join(f"{v:.2e}" for v in losses))
    return 0
