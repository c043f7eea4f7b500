"""Section 5.2, Tables 1-2, Appendix D.1: the toy VAE on binarized MNIST.

Encoder z = w_E λ(w'_E x), decoder x̂ = sigmoid(w_G λ(w'_G z)), latent d = 20,
no biases. The latent is deterministic; the loss is

    L = BCE(x, x̂) summed over pixels, averaged over the batch
        + α KL(N(μ_z, σ_z²) || N(0, 1)),   KL = -½ Σ_j (1 + log σ_j² - μ_j² - σ_j²)

with μ_z, σ_z the per-dimension mean and unbiased standard deviation of z over
the batch (eq. 13, whose printed sign is that of -KL; we minimise the KL).
Width: C = 2401 with a shared axis (C - 1 = G(S - 1)) and for component-wise
activations, C = 2400 + G with separate axes. Adam with weight decay 1e-2 as
``torch.optim.Adam(weight_decay=...)`` (L2 added to the gradient, not AdamW),
lr 1e-3, batch 128, 10 epochs: on MNIST's 60000 training images that is
4690 optimizer steps, the default budget, so that smaller datasets get as
many updates (``--epochs E`` trains for E epochs instead). Reported: test loss at the evaluation with the
lowest test loss (early stopping), and the training loss at that evaluation.
Binarization: pixel > 0.5 -> 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

import torch
import torch.nn.functional as F

from . import data as data_mod
from .config import TrainConfig
from .models import ToyVAE

name = "mnist-vae"
summary = "Sec. 5.2, Tables 1-2: toy VAE, CoLU groups G x hard/soft x shared axis (test loss)"
metrics = {"train_loss": False, "test_loss": False}
datasets = ("digits", "mnist")  # what --dataset may name (digits is built in)
curve_metrics = ("test_loss", "train_loss")
GROUPS = (0, 1, 2, 10, 50, 200, 800, 1200)


@dataclass
class Config(TrainConfig):
    activations: list = field(default_factory=list)
    hidden: int = 2400  # G(S-1): the non-axis channels; width C follows from the activation (see module doc)
    latent: int = 20
    alpha: float = 1.0
    epochs: Optional[int] = None
    steps: Optional[int] = 4690  # 10 epochs of 60000 images at batch 128 (469 batches each)
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-2
    bias: bool = False

    LIMITS: ClassVar[dict] = {**TrainConfig.LIMITS, "hidden": (">=", 1), "latent": (">=", 1), "alpha": (">=", 0.0)}


REPORT_NOTE = (
    "How we read Appendix D.1: z is deterministic (no sampling; the paper describes none) and pixels are "
    "binarized by thresholding at 0.5. Both choices affect the loss scale, so absolute losses may differ from the "
    "paper's even on the full MNIST training set; the comparisons between activations are the claims.")

quick_settings = {"epochs": 3, "seeds": 2, "hidden": 200, "eval_every": 6}


def default_activations(cfg):
    return ["relu", "silu", "colu:G=50,soft,share", "colu:G=50,soft"]


def sweep_grid(cfg):
    """ReLU, SiLU and G x {hard, soft} x {shared, separate} (G = 0 once: the identity), where G divides hidden."""
    grid = ["relu", "silu", "colu:G=0"]
    for g in GROUPS[1:]:
        if cfg.hidden % g:
            continue  # S - 1 = hidden / G must be whole
        for soft in (False, True):
            for share in (True, False):
                grid.append(f"colu:G={g}" + (",soft" if soft else "") + (",share" if share else ""))
    return grid


def load_data(cfg):
    d = data_mod.load_classification(cfg.dataset, cfg.data, cfg.split_from_test)
    d.x_train, d.x_test = (d.x_train > 0.5).float(), (d.x_test > 0.5).float()
    d.description += "; binarized at 0.5"
    return d


def check_activation(cfg, act, data):
    act.paper_width(cfg.hidden)


def build_model(cfg, act, data):
    width = act.paper_width(cfg.hidden)
    model = ToyVAE(data.input_dim, width, cfg.latent, act.build(width), act.build(width), bias=cfg.bias)
    return model, width


def vae_loss(logits, x, z, alpha=1.0, *, global_batch=None, world=1):
    """Mean-over-batch BCE (summed over pixels) + α·KL on the batch statistics of z.

    Under DDP (``world > 1``) μ_z and σ_z are taken over the global batch with a
    differentiable all-reduce, and the BCE part is scaled so DDP's gradient
    average equals the single-process gradient.
    """
    n = global_batch or x.shape[0]
    bce = F.binary_cross_entropy_with_logits(logits.float(), x, reduction="sum")
    z = z.float()
    if world > 1:
        from torch.distributed.nn.functional import all_reduce

        mu = all_reduce(z.sum(0)) / n
        var = all_reduce((z - mu).pow(2).sum(0)) / (n - 1)
    else:
        mu, var = z.mean(0), z.var(0, unbiased=True)
    kl = -0.5 * (1 + var.log() - mu.pow(2) - var).sum()
    return bce * (world / n) + alpha * kl


def train_loss(net, x, y, cfg, *, global_batch, world):
    logits, z = net(x)
    return vae_loss(logits, x, z, cfg.alpha, global_batch=global_batch, world=world)


def _dataset_loss(model, x, cfg, device):
    # batches of the training batch size in a fixed order, so batch statistics mean what they mean in training
    total, n = 0.0, x.shape[0]
    b = cfg.batch_size
    if n % b == 1:
        b += 1  # never leave a batch of one (no unbiased variance)
    for i in range(0, n, b):
        xb = x[i:i + b].to(device)
        logits, z = model(xb)
        total += vae_loss(logits, xb, z, cfg.alpha).item() * xb.shape[0]
    return total / n


def evaluate(model, data, cfg, device):
    return {"train_loss": _dataset_loss(model, data.x_train, cfg, device),
            "test_loss": _dataset_loss(model, data.x_test, cfg, device)}


def final_metrics(curve):
    finite = [p for p in curve if p["test_loss"] == p["test_loss"] and abs(p["test_loss"]) != float("inf")]
    if not finite:
        return {"train_loss": float("nan"), "test_loss": float("nan")}
    best = min(finite, key=lambda p: p["test_loss"])
    return {"train_loss": best["train_loss"], "test_loss": best["test_loss"], "best_step": best["step"]}
