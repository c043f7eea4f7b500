"""The paper's networks for ``colu bench --models`` (the ``colu.bench_models`` entry point in pyproject.toml).

ResNet-56 at batch 128 in NCHW and channels_last, and the Table 7 GPT at
batch 64; with ``quick``, tiny versions of both for tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from colu.tools.bench import ModelRow
from colu_lab.experiments.gpt_shakespeare.model import GPT, GPTConfig
from colu_lab.experiments.resnet_cifar.model import resnet_cifar

PAPER = dict(resnet_depth=56, resnet_batch=128, image=32, gpt=dict(n_layer=6, n_embd=256, n_head=8),
             block=64, gpt_batch=64)
QUICK = dict(resnet_depth=8, resnet_batch=4, image=16, gpt=dict(n_layer=1, n_embd=32, n_head=2), block=8, gpt_batch=2)


def paper_models(quick: bool, device, dtype) -> list:
    """The rows: each builds its model around an activation factory and has a loss on fixed inputs."""
    size = QUICK if quick else PAPER
    n, px, depth = size["resnet_batch"], size["image"], size["resnet_depth"]
    images = torch.randn(n, 3, px, px, device=device, dtype=dtype)
    labels = torch.randint(0, 10, (n,), device=device)
    rows = []
    for layout, fmt in (("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last)):
        x = images.contiguous(memory_format=fmt)
        rows.append(ModelRow(f"ResNet-{depth} batch {n} {layout} train step",
                             build=lambda act: resnet_cifar(depth, act),
                             loss=lambda m, x=x: F.cross_entropy(m(x), labels), dim=1, memory_format=fmt))
    cfg = GPTConfig(vocab_size=65, block_size=size["block"], **size["gpt"])
    idx = torch.randint(0, 65, (size["gpt_batch"], size["block"]), device=device)
    rows.append(ModelRow(f"GPT {cfg.n_layer}x{cfg.n_embd} block {cfg.block_size} batch {size['gpt_batch']} train step",
                         build=lambda act: GPT(cfg, act), loss=lambda m: m(idx[:, :-1], idx[:, 1:])[1]))
    return rows
