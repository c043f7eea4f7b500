"""The toy VAE of Appendix D.1.

Every hidden state sits between two named ``nn.Linear`` layers (``HIDDEN_STATES``),
so the alignment tools can look them up by name.
"""

from __future__ import annotations

import torch
from torch import nn


class ToyVAE(nn.Module):
    """The toy VAE of Appendix D.1: z = enc_out(enc_act(enc_in(x))), x̂ = sigmoid(dec_out(dec_act(dec_in(z)))).

    Hidden states: ``enc_act`` between ``enc_in`` and ``enc_out`` (width C),
    ``dec_act`` between ``dec_in`` and ``dec_out`` (width C). The latent z is
    deterministic; the KL term of the loss uses the batch statistics of z
    (see :func:`colu_lab.experiments.mnist_vae.experiment.vae_loss`). ``forward`` returns
    ``(logits of x̂, z)``: the sigmoid is folded into the loss for stability.
    """

    HIDDEN_STATES = {"enc_act": ("enc_in", "enc_out"), "dec_act": ("dec_in", "dec_out")}

    def __init__(self, d_in: int, width: int, latent: int, enc_act: nn.Module, dec_act: nn.Module,
                 bias: bool = False):
        super().__init__()
        self.enc_in = nn.Linear(d_in, width, bias=bias)
        self.enc_act = enc_act
        self.enc_out = nn.Linear(width, latent, bias=bias)
        self.dec_in = nn.Linear(latent, width, bias=bias)
        self.dec_act = dec_act
        self.dec_out = nn.Linear(width, d_in, bias=bias)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.enc_out(self.enc_act(self.enc_in(x)))

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.dec_out(self.dec_act(self.dec_in(z)))

    def forward(self, x: torch.Tensor):
        z = self.encode(x)
        return self.decode_logits(z), z
