"""Loss barriers: the loss along the straight line between two models' weights (paper eq. 11)."""

from __future__ import annotations

import copy
import math
from typing import Optional

import torch
from torch import nn

from colu.align.running import batches_of, rng_scope
from colu.align.states import check_same_architecture


def interpolate(model_a: nn.Module, model_b: nn.Module, s: float) -> nn.Module:
    """A copy of ``model_a`` with weights ``(1 - s) theta_A + s theta_B`` (buffers too).

    Integer buffers (e.g. BatchNorm's step counter) are taken from model A.
    ``interpolate(m, m, s)`` reproduces ``m`` exactly.
    """
    check_same_architecture(model_a, model_b)
    out = copy.deepcopy(model_a)
    sd, sb = out.state_dict(), model_b.state_dict()
    with torch.no_grad():
        for k, t in sd.items():
            if t.is_floating_point():
                # lerp is exact when both ends are equal, so a model with itself has zero barrier
                t.copy_(torch.lerp(t, sb[k].to(t), float(s)))
    return out


def loss_curve(model_a, model_b, loss_fn, data, num_points: int = 11, *, seed: int = 0) -> list:
    """``[(s, L(theta_s)), ...]`` at ``num_points`` evenly spaced ``s`` in ``[0, 1]``.

    ``loss_fn(model, batch)`` returns a scalar (tensor or number); ``L`` is
    its mean over the batches of ``data``. Each model is evaluated in eval
    mode without gradients, with the random seed reset to ``seed`` before
    each pass so that every point of the path sees the same noise.
    """
    if not (isinstance(num_points, int) and num_points >= 2):
        raise ValueError(f"num_points must be an int >= 2 (the two ends), got {num_points!r}")
    batches = batches_of(data)
    curve = []
    for i in range(num_points):
        s = i / (num_points - 1)
        model = interpolate(model_a, model_b, s)
        model.eval()
        values = []
        with torch.no_grad(), rng_scope(model):
            torch.manual_seed(seed)
            for batch in batches:
                value = loss_fn(model, batch)
                if isinstance(value, torch.Tensor):
                    if value.numel() != 1:
                        raise ValueError(f"loss_fn must return a scalar, got a tensor of shape {tuple(value.shape)}")
                    value = value.item()
                values.append(float(value))
        if not values:
            raise ValueError("data yielded no batches; the loss curve needs at least one batch")
        curve.append((s, sum(values) / len(values)))
    return curve


def loss_barrier(model_a, model_b, loss_fn, data, num_points: int = 11, *, seed: int = 0) -> dict:
    """The loss barrier of paper eq. (11) on the straight line from ``model_a`` to ``model_b``.

    ``sup_s L((1-s) theta_0 + s theta_1) / ((1-s) L(theta_0) + s L(theta_1)) - 1``
    over ``num_points`` values of ``s``. The barrier is *relative*: 0.1 means
    a 10% loss increase over the straight line between the two end losses, so
    both end losses must be positive.

    Returns ``{"barrier": float, "curve": [(s, loss), ...], "relative": [(s, B(s)), ...]}``.
    See :func:`loss_curve` for ``loss_fn`` and ``data``.
    """
    curve = loss_curve(model_a, model_b, loss_fn, data, num_points, seed=seed)
    l0, l1 = curve[0][1], curve[-1][1]
    if not (math.isfinite(l0) and math.isfinite(l1) and l0 > 0 and l1 > 0):
        raise ValueError(
            f"the barrier of eq. (11) is relative and needs positive end losses, got L(theta_0)={l0!r} and "
            f"L(theta_1)={l1!r}; use a positive loss (e.g. add a constant) or read the absolute values "
            f"from loss_curve()"
        )
    relative = [(s, value / ((1 - s) * l0 + s * l1) - 1.0) for s, value in curve]
    return {"barrier": max(b for _, b in relative), "curve": curve, "relative": relative}


def kl_standard_normal(mu: torch.Tensor, logvar: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``KL(N(mu, exp(logvar)) || N(0, I))`` summed over the last axis, averaged over the rest.

    The KL term of a VAE, for the KL barrier of paper Figure 14. With a
    deterministic latent ``z``, pass its batch statistics:
    ``kl_standard_normal(z.mean(0), z.var(0).log())``. Example::

        def kl_loss(vae, batch):
            z = vae.encode(batch[0])
            return kl_standard_normal(z.mean(0), z.var(0).log())

        loss_barrier(vae_a, aligned_b, kl_loss, test_loader)["curve"]
    """
    if logvar is None:
        logvar = torch.zeros_like(mu)
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)
    return kl.sum(-1).mean() if kl.dim() > 1 else kl.sum()
