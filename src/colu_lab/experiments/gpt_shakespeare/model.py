"""A small decoder-only Transformer (GPT) for character-level language modelling.

The layout is GPT-2's by default: token and learned position embeddings,
``n_layer`` blocks of pre-LayerNorm causal self-attention and MLP, each added
back to the residual stream, a final LayerNorm, and a linear head to the
vocabulary (by default sharing the token embedding's weights, as Vaswani et
al. 2017 do). ``norm_placement="post"`` lays the blocks out as Vaswani et
al. do instead: each sub-layer's output is added to the residual stream and
then normalised, ``LayerNorm(x + sublayer(x))``, and there is no final
LayerNorm (the last block's output is already normalised). The MLP's activation comes from a factory, so the experiment can swap
ReLU for CoLU in that one place; ``act`` is called with the MLP's hidden
width (``4 * n_embd``) and acts on the last axis of ``(B, T, 4 * n_embd)``.

The defaults are the paper's GPT of Appendix D.4: 6 layers, embedding 256,
8 heads of 32, context (block) 64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

ActFactory = Callable[[int], nn.Module]


@dataclass
class GPTConfig:
    """Sizes of a :class:`GPT`.

    Args:
        vocab_size: number of distinct tokens (65 for tiny Shakespeare).
        block_size: longest context, in tokens (default 64).
        n_layer: Transformer blocks (default 6).
        n_head: attention heads (default 8); must divide ``n_embd``.
        n_embd: width of the residual stream (default 256).
        mlp_ratio: MLP hidden width as a multiple of ``n_embd`` (default 4).
        dropout: dropout probability after attention weights, attention
            output, MLP output and embeddings (default 0.0).
        tie_weights: share the token embedding with the output head
            (default True).
        norm_placement: ``"pre"`` (default, GPT-2's: ``x + sublayer(LN(x))``
            and a final LayerNorm) or ``"post"`` (Vaswani et al.'s:
            ``LN(x + sublayer(x))``, no final LayerNorm).
    """

    vocab_size: int
    block_size: int = 64
    n_layer: int = 6
    n_head: int = 8
    n_embd: int = 256
    mlp_ratio: int = 4
    dropout: float = 0.0
    tie_weights: bool = True
    norm_placement: str = "pre"

    NORM_PLACEMENTS = ("pre", "post")

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "mlp_ratio"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}: must be a positive int")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}; "
                             "choose a head count that divides the embedding width")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout!r}: must be in [0, 1)")
        if self.norm_placement not in self.NORM_PLACEMENTS:
            raise ValueError(f"norm_placement={self.norm_placement!r} is not one of "
                             f"{', '.join(self.NORM_PLACEMENTS)} (pre: GPT-2's x + f(LN(x)); post: Vaswani et "
                             "al.'s LN(x + f(x)))")


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which position ``t`` sees positions ``<= t`` only."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.dropout = cfg.dropout
        self.out_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        # (B, T, 3C) -> three (B, n_head, T, head_size) tensors
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out_drop(self.proj(y.transpose(1, 2).reshape(B, T, C)))


class MLP(nn.Module):
    """``Linear(n_embd -> hidden)``, the activation under test, ``Linear(hidden -> n_embd)``."""

    def __init__(self, cfg: GPTConfig, act: ActFactory):
        super().__init__()
        hidden = cfg.mlp_ratio * cfg.n_embd
        self.fc = nn.Linear(cfg.n_embd, hidden)
        self.act = act(hidden)
        self.proj = nn.Linear(hidden, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(self.act(self.fc(x))))


class Block(nn.Module):
    """Pre-norm: ``x + attn(ln1(x))`` then ``x + mlp(ln2(x))``; post-norm: ``ln1(x + attn(x))`` then
    ``ln2(x + mlp(x))``."""

    def __init__(self, cfg: GPTConfig, act: ActFactory):
        super().__init__()
        self.post_norm = cfg.norm_placement == "post"
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.post_norm:
            x = self.ln1(x + self.attn(x))
            return self.ln2(x + self.mlp(x))
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Decoder-only Transformer over token ids.

    Args:
        cfg: the sizes (:class:`GPTConfig`).
        act: activation factory for the MLPs, ``act(hidden) -> nn.Module``
            acting on the last axis (default ReLU); for CoLU
            ``lambda c: colu.CoLU(cone_dim=4, dim=-1)``.

    Shape:
        - Input: ``idx`` ``(B, T)`` int64 with ``T <= block_size``.
        - Output: logits ``(B, T, vocab_size)`` and, with ``targets``
          ``(B, T)``, the mean cross-entropy over all positions.
    """

    def __init__(self, cfg: GPTConfig, act: ActFactory | None = None):
        super().__init__()
        self.cfg = cfg
        act = act or (lambda hidden: nn.ReLU())
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, act) for _ in range(cfg.n_layer))
        # post-norm blocks end normalised: Vaswani et al. have no final LayerNorm
        self.ln_f = nn.Identity() if cfg.norm_placement == "post" else nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.apply(self._init)
        # GPT-2's scaling: each block adds two projections to the residual
        # stream, so their initial size shrinks with depth to keep the sum's variance steady
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.n_layer))
        if cfg.tie_weights:
            self.head.weight = self.tok_emb.weight

    @staticmethod
    def _init(m: nn.Module):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """Logits for every position, and the loss against ``targets`` when given (else ``None``)."""
        B, T = idx.shape
        if T > self.cfg.block_size:
            raise ValueError(f"sequence of {T} tokens is longer than block_size={self.cfg.block_size}; "
                             "crop it to the last block_size tokens")
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(B * T))
        return logits, loss

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Extend ``idx`` ``(B, T)`` by ``max_new_tokens`` sampled tokens, returning ``(B, T + max_new_tokens)``.

        Each step looks at the last ``block_size`` tokens only. Call
        ``model.eval()`` first so that dropout is off.

        Args:
            idx: the prompt, int64 ``(B, T)`` with ``T >= 1``.
            max_new_tokens: tokens to add.
            temperature: divides the logits (default 1.0); ``0`` picks the
                most likely token every time (greedy).
            top_k: sample only among the ``top_k`` most likely tokens (default
                ``None``: all).
            generator: a ``torch.Generator`` on ``idx``'s device for
                reproducible samples (default ``None``: the global RNG).
        """
        if temperature < 0:
            raise ValueError(f"temperature={temperature!r}: must be >= 0 (0 is greedy)")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k={top_k!r}: must be >= 1 or None")
        if idx.dim() != 2 or idx.shape[1] < 1:
            raise ValueError(f"idx must be a (B, T) prompt with T >= 1, got shape {tuple(idx.shape)}")
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.cfg.block_size:])
            logits = logits[:, -1, :]
            if temperature == 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None and top_k < logits.shape[-1]:
                    kth = torch.topk(logits, top_k).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(F.softmax(logits, -1), 1, generator=generator)
            idx = torch.cat([idx, nxt], 1)
        return idx
