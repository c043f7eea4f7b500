"""Batch sources whose every draw is a function of ``(seed, step)``.

A run that resumes at step ``k`` asks for batch ``k`` and gets exactly the
batch an uninterrupted run would have had: nothing depends on how many
batches were drawn before, on a global RNG or on the device. Each call
seeds its own CPU ``torch.Generator`` from ``(seed, purpose, step)``, mixed
by :class:`numpy.random.SeedSequence` so that neighbouring seeds and steps
give unrelated streams.

* :func:`augmented_image_batch`: one epoch is a permutation of the training
  images (a function of ``(seed, epoch)``); each image gets a random crop
  of its zero-padded self and a random horizontal flip, the standard CIFAR
  augmentation of He et al. (2016).
* :func:`token_window_batch`: random windows of a token sequence with their
  next-token targets, for a character-level language model.
* :func:`fixed_token_batches`: a fixed set of windows for evaluation, the
  same at every evaluation point.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# separate streams for the separate random choices, so that e.g. changing the
# augmentation cannot shift the epoch order
_ORDER, _AUGMENT, _WINDOWS, _EVAL_WINDOWS = 1, 2, 3, 4


def derived_seed(seed: int, stream: int, index: int) -> int:
    """A 63-bit seed for ``torch.Generator.manual_seed`` from ``(seed, stream, index)``.

    Args:
        seed: the run's seed (any non-negative int).
        stream: which kind of draw (order, augmentation, windows, ...).
        index: the epoch or step.
    """
    if min(seed, stream, index) < 0:
        raise ValueError(f"seed, stream and index must be non-negative, got {seed}, {stream}, {index}")
    words = np.random.SeedSequence([seed, stream, index]).generate_state(2, dtype=np.uint32)
    return ((int(words[0]) << 32) | int(words[1])) & ((1 << 63) - 1)


def _generator(seed: int, stream: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(derived_seed(seed, stream, index))


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of ``n`` examples in epoch ``epoch`` of a run with seed ``seed`` (int64 on the CPU)."""
    return torch.randperm(n, generator=_generator(seed, _ORDER, epoch))


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """Indices of the examples in batch ``step``: consecutive slices of each epoch's permutation.

    An epoch is ``n // batch_size`` full batches; the ``n % batch_size``
    examples left at the end of a permutation wait for a later epoch (which
    orders them differently), so every batch has exactly ``batch_size``
    examples.

    Args:
        n: number of examples.
        batch_size: examples per batch, at most ``n``.
        seed: the run's seed.
        step: the batch number, from 0.
    """
    if not 0 < batch_size <= n:
        raise ValueError(f"batch_size={batch_size} must be between 1 and the number of examples ({n}); "
                         "lower the batch size or use more data")
    per_epoch = n // batch_size
    epoch, pos = divmod(step, per_epoch)
    return epoch_permutation(n, seed, epoch)[pos * batch_size:(pos + 1) * batch_size]


def augmented_image_batch(images: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int, step: int, *,
                          pad: int = 4, flip: bool = True, mean: torch.Tensor | None = None,
                          std: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch ``step`` of randomly cropped and flipped images, a function of ``(seed, step)`` alone.

    Each image is zero-padded by ``pad`` pixels on every side and an
    ``H x W`` window is cut out at a random offset (``0 .. 2 pad`` in each
    direction), then mirrored left-right with probability 1/2. Padding is
    applied to the images as given, so pass them in [0, 1] and give
    ``mean``/``std`` to normalise afterwards: the padding is then black, as in
    the usual pipeline (crop, then normalise).

    Args:
        images: ``(N, C, H, W)`` floating images, on any device.
        labels: ``(N,)`` labels.
        batch_size: images per batch (at most ``N``).
        seed: the run's seed.
        step: the batch number, from 0; epochs follow from it
            (see :func:`batch_indices`).
        pad: padding in pixels (default 4; 0 switches cropping off).
        flip: random horizontal flips (default True).
        mean, std: optional per-channel ``(C,)`` statistics; the batch is
            returned as ``(x - mean) / std``.

    Returns:
        ``(x, y)``: ``(batch_size, C, H, W)`` images and ``(batch_size,)``
        labels, on the images' device.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if labels.shape[:1] != images.shape[:1]:
        raise ValueError(f"{labels.shape[0]} labels for {images.shape[0]} images")
    if pad < 0:
        raise ValueError(f"pad={pad} must be >= 0")
    idx = batch_indices(images.shape[0], batch_size, seed, step)
    dev = images.device
    x = images[idx.to(dev)]
    y = labels[idx.to(labels.device)]
    B, C, H, W = x.shape
    g = _generator(seed, _AUGMENT, step)
    # drawn in a fixed order (offsets, then flips) whatever the options, so that
    # switching flips off leaves the crops as they were
    offsets = torch.randint(0, 2 * pad + 1, (2, B), generator=g)
    flips = torch.rand(B, generator=g) < 0.5
    if pad:
        padded = F.pad(x, (pad, pad, pad, pad))
        rows = (offsets[0][:, None] + torch.arange(H)).to(dev)  # (B, H)
        cols = (offsets[1][:, None] + torch.arange(W)).to(dev)  # (B, W)
        b = torch.arange(B, device=dev)[:, None, None, None]
        c = torch.arange(C, device=dev)[None, :, None, None]
        x = padded[b, c, rows[:, None, :, None], cols[:, None, None, :]]
    if flip:
        x = torch.where(flips.to(dev)[:, None, None, None], x.flip(-1), x)
    if mean is not None or std is not None:
        if mean is None or std is None:
            raise ValueError("give both mean and std, or neither")
        x = (x - mean.to(x)[:, None, None]) / std.to(x)[:, None, None]
    return x, y


def token_window_batch(tokens: torch.Tensor, block: int, batch_size: int, seed: int,
                       step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch ``step`` of random windows of a token sequence and their next-token targets.

    Window ``b`` starts at a random ``i`` (uniform over every start that
    leaves room for the target): ``x[b] = tokens[i : i + block]`` and
    ``y[b] = tokens[i + 1 : i + 1 + block]``.

    Args:
        tokens: 1-D integer token ids, on any device.
        block: window length (the model's context).
        batch_size: windows per batch.
        seed: the run's seed.
        step: the batch number, from 0.

    Returns:
        ``(x, y)``, each ``(batch_size, block)`` int64 on the tokens' device.
    """
    return _windows(tokens, block, batch_size, _generator(seed, _WINDOWS, step))


def fixed_token_batches(tokens: torch.Tensor, block: int, batch_size: int, count: int,
                        seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` batches of windows that depend only on ``seed`` (default 0), for a stable evaluation loss.

    Evaluating on the same windows at every evaluation point makes the
    points of an eval-loss curve comparable with each other and between
    runs of different training seeds.
    """
    return [_windows(tokens, block, batch_size, _generator(seed, _EVAL_WINDOWS, k)) for k in range(count)]


def _windows(tokens, block, batch_size, g):
    if tokens.dim() != 1:
        raise ValueError(f"tokens must be 1-D, got shape {tuple(tokens.shape)}")
    n = tokens.shape[0]
    if block < 1 or n < block + 1:
        raise ValueError(f"a window of block={block} plus its target needs at least {block + 1} tokens, "
                         f"the sequence has {n}")
    starts = torch.randint(0, n - block, (batch_size,), generator=g)
    pos = (starts[:, None] + torch.arange(block)).to(tokens.device)
    return tokens[pos].long(), tokens[pos + 1].long()
