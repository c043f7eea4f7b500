"""Section 5.3, Table 3, Appendix D.2: a two-layer MLP 784 -> C -> 10 with softmax cross-entropy.

C = 512 (511 for the shared-axis CoLU, so that C - 1 = G(S - 1)). Adam,
learning rate 1e-3, batch 1024. The paper does not state the number of epochs
or any weight decay; we read it as 10 epochs of MNIST's 60000 training images
and none, and state the budget in optimizer steps (10 x 59 batches = 590
steps), so that a smaller dataset (the built-in digits: 1437 images, two
batches per epoch) still gets the same number of updates instead of 20.
``--epochs E`` trains for E epochs instead. No biases, following
the paper's parameterization θ = (w, w'). Metrics are taken after the last
epoch: ``train_loss`` over the whole training set, ``test_accuracy``.
With ``--dataset digits`` (the default) the input is the 64 pixels of the
8x8 digits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

import torch
import torch.nn.functional as F

from . import data as data_mod
from .config import TrainConfig
from .models import TwoLayer

name = "mnist-mlp"
summary = "Sec. 5.3, Table 3: 784->512->10 MLP, ReLU vs CoLU S=4 (test accuracy)"
metrics = {"train_loss": False, "test_accuracy": True}
datasets = ("digits", "mnist")  # what --dataset may name (digits is built in)
curve_metrics = ("test_accuracy", "train_loss")


@dataclass
class Config(TrainConfig):
    activations: list = field(default_factory=list)
    width: int = 512
    epochs: Optional[int] = None
    steps: Optional[int] = 590  # 10 epochs of 60000 images at batch 1024 (59 batches each)
    batch_size: int = 1024
    lr: float = 1e-3
    bias: bool = False

    LIMITS: ClassVar[dict] = {**TrainConfig.LIMITS, "width": (">=", 1)}


quick_settings = {"epochs": 4, "seeds": 2, "batch_size": 128}


def default_activations(cfg):
    return ["relu", "colu:S=4", "colu:S=4,soft,share"]


def sweep_grid(cfg):
    return ["relu", "silu", "gelu", "colu:S=3", "colu:S=4", "colu:S=4,soft", "colu:S=4,share",
            "colu:S=4,soft,share", "colu:S=8", "rcolu:S=4"]


def load_data(cfg):
    return data_mod.load_classification(cfg.dataset, cfg.data, cfg.split_from_test)


def check_activation(cfg, act, data):
    act.fit_width(cfg.width)


def build_model(cfg, act, data):
    width = act.fit_width(cfg.width)
    return TwoLayer(data.input_dim, width, 10, act.build(width), bias=cfg.bias), width


def train_loss(net, x, y, cfg, *, global_batch, world):
    return F.cross_entropy(net(x), y, reduction="sum") * (world / global_batch)


def _batched_logits(model, x, device, chunk=8192):
    return torch.cat([model(x[i:i + chunk].to(device)).float() for i in range(0, x.shape[0], chunk)])


def evaluate(model, data, cfg, device):
    train_loss_value = F.cross_entropy(_batched_logits(model, data.x_train, device), data.y_train.to(device))
    pred = _batched_logits(model, data.x_test, device).argmax(1)
    return {"train_loss": train_loss_value.item(),
            "test_accuracy": (pred == data.y_test.to(device)).float().mean().item()}


def final_metrics(curve):
    last = curve[-1]
    return {k: last[k] for k in metrics}
