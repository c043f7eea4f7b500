"""The two-layer network the toy experiments share (hemisphere, mnist-mlp, cap-rotation).

Every hidden state sits between two named ``nn.Linear`` layers, so tools that
transform or align weights around an activation can look them up by name:
``HIDDEN_STATES`` maps each model's activation attribute to the
``(layer_before, layer_after)`` pair.
"""

from __future__ import annotations

import torch
from torch import nn


class TwoLayer(nn.Module):
    """x -> fc_out(act(fc_in(x))): the paper's y = w λ(w' x) with w' = fc_in, w = fc_out.

    Hidden state: ``act`` acts on the C outputs of ``fc_in``; ``fc_out`` reads them.
    Used for the hemisphere (3 -> 3 -> 3, no biases) and the MNIST MLP
    (784 -> C -> 10, logits; softmax lives in the loss).
    """

    HIDDEN_STATES = {"act": ("fc_in", "fc_out")}

    def __init__(self, d_in: int, width: int, d_out: int, act: nn.Module, bias: bool = False):
        super().__init__()
        self.fc_in = nn.Linear(d_in, width, bias=bias)
        self.act = act
        self.fc_out = nn.Linear(width, d_out, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.act(self.fc_in(x)))
