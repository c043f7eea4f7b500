"""Running models for alignment: batches of data, evaluation mode, seeded random numbers.

Every model run by :mod:`colu.align` (matching on data, checking an aligned
model, evaluating a loss path) runs in evaluation mode, without gradients,
with the random seed reset before each pass so that sampling layers draw the
same noise in every model, and without disturbing the caller's random state.
"""

from __future__ import annotations

import torch


def rng_scope(*models):
    """Fork the RNGs of every device the models live on, so reseeding leaves the caller's state alone."""
    devices = sorted({t.device.index or 0 for m in models for t in m.state_dict().values() if t.is_cuda})
    return torch.random.fork_rng(devices=devices)


def run_seeded(model, forward, batch, seed: int = 0):
    """``forward(model, batch)`` with the random seed set to ``seed`` (default 0) for the pass only."""
    with rng_scope(model):
        torch.manual_seed(seed)
        return forward(model, batch)


def batches_of(data) -> list:
    """A tensor or tuple is one batch; any other iterable (list, DataLoader) is a sequence of batches."""
    if isinstance(data, (torch.Tensor, tuple)):
        return [data]
    try:
        it = iter(data)
    except TypeError:
        raise TypeError(f"data must be a tensor, a tuple or an iterable of batches, got {type(data).__name__}") from None
    # a one-shot iterator would be exhausted after the first pass
    return list(it) if it is data else data


def default_forward(model, batch):
    """``model(batch)``, or ``model(batch[0])`` for a tuple/list batch whose first item is the input."""
    if isinstance(batch, torch.Tensor):
        return model(batch)
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return model(batch[0])  # (inputs, targets, ...) as a DataLoader yields them
    raise TypeError(
        f"cannot feed a batch of type {type(batch).__name__} to the model; pass forward=lambda model, batch: ..."
    )


class EvalMode:
    """Put models in eval mode and restore each module's flag afterwards."""

    def __init__(self, *models):
        self.models = models

    def __enter__(self):
        self.flags = [[(m, m.training) for m in model.modules()] for model in self.models]
        for model in self.models:
            model.eval()

    def __exit__(self, *exc):
        for flags in self.flags:
            for m, t in flags:
                m.training = t
