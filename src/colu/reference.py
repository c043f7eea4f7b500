"""Reference implementation: the paper's formulas in plain torch ops.

This module is the correctness oracle. It is written for reading, not for
speed: it gathers each cone's axis and section by explicit channel indices
(from :class:`~colu.spec.ConeSpec`), applies eq. (1)/(2)/(5) literally and
lets autograd differentiate it. Every faster path (the closed-form autograd
Function, the fused CPU and Triton kernels) is tested against it.

The functions here take the same arguments as :func:`colu.colu` and
:func:`colu.rcolu` and follow the same special cases (``num_cones=0`` is the
identity, ``cone_dim=2`` is component-wise for CoLU unless
``componentwise=False``, which makes it the two-dimensional cone: the general
formulas below with a one-channel section).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from colu.spec import AXIS_ACTIVATIONS, SCALINGS, ConeSpec, check_choice

__all__ = ["colu", "rcolu", "weighting", "componentwise", "exact_projection"]


def weighting(r: torch.Tensor, scaling: str) -> torch.Tensor:
    """The section weight w(r) of eq. (1) (hard), eq. (2) (soft), Section 3.1 (firm), or the JAX package's
    ``sqrt(max(r, 0))`` and ``log1p(max(r, 0))``.

    The square root is taken of ``r`` only where ``r > 0`` (0 where ``r <= 0``): autograd would otherwise multiply
    its infinite slope at 0 by the clamp's and return NaN, where the kernels (and jax-colu behind a ReLU
    axis) give a zero gradient.
    """
    if scaling == "hard":
        return torch.clamp(r, 0.0, 1.0)
    if scaling == "soft":
        return torch.sigmoid(r - 0.5)
    if scaling == "firm":
        return torch.sigmoid(4.0 * r - 2.0)
    off = r <= 0  # false for NaN, which comes back as NaN like the other weightings'
    r_on = torch.where(off, torch.ones_like(r), r)  # the double where keeps NaN out of the gradient
    if scaling == "sqrt":
        return torch.where(off, torch.zeros_like(r), torch.sqrt(r_on))
    if scaling == "log":
        return torch.where(off, torch.zeros_like(r), torch.log1p(r_on))
    raise ValueError(f"weighting() has no formula for scaling={scaling!r}: 'exact' is not a weighting of the section")


def section_norm(s: torch.Tensor) -> torch.Tensor:
    """``||s||`` over the last dimension. ``torch.linalg.vector_norm`` squares without rescaling, so section
    values above about 1e19 (1e154 in float64) give an infinite norm where every value is finite; those
    cones take ``m ||s / m||`` with ``m = max |s|``."""
    n = torch.linalg.vector_norm(s, dim=-1)
    over = torch.isinf(n) & torch.isfinite(s).all(-1)
    if bool(over.any()):
        m = s.abs().amax(-1, keepdim=True)
        m = torch.where(over.unsqueeze(-1), m, torch.ones_like(m))
        n = torch.where(over, m.squeeze(-1) * torch.linalg.vector_norm(s / m, dim=-1), n)
    return n


def exact_projection(a: torch.Tensor, norm: torch.Tensor):
    """The metric projection of ``(a, s)`` onto the Lorentz cone ``{||s|| <= a}`` given ``norm = ||s||``:
    ``(axis, c)`` with the projection ``(axis, c * s)``.

    ``(a, s)`` where ``||s|| <= a``; ``0`` where ``||s|| <= -a``; otherwise
    ``m (1, s/||s||)`` with ``m = (a + ||s||)/2``. No ``eps``: the middle case has ``||s|| > |a| >= 0``.
    """
    inside = norm <= a
    polar = norm <= -a
    safe = torch.where(inside | polar, torch.ones_like(norm), norm)  # the middle case only divides
    m = 0.5 * (a + safe)
    axis = torch.where(inside, a, torch.where(polar, torch.zeros_like(a), m))
    coef = torch.where(inside, torch.ones_like(a), torch.where(polar, torch.zeros_like(a), m / safe))
    return axis, coef


def _scaled(r: torch.Tensor, angle_scale) -> torch.Tensor:
    return r if angle_scale is None else r * angle_scale.to(r.dtype)


def _axis_activation(a: torch.Tensor, name: str) -> torch.Tensor:
    if name == "identity":
        return a
    if name == "relu":
        return torch.relu(a)
    return F.silu(a)


def componentwise(x: torch.Tensor, scaling: str) -> torch.Tensor:
    """The S = 2 case (Section 3.2): ReLU (hard), SiLU (soft), x*sigmoid(4x) (firm)."""
    if scaling == "hard":
        return torch.relu(x)
    if scaling == "soft":
        return F.silu(x)
    if scaling == "firm":
        return x * torch.sigmoid(4.0 * x)
    raise ValueError(
        f"cone_dim=2 is component-wise only for 'hard', 'soft' and 'firm', not scaling={scaling!r}; "
        f"componentwise=False makes it the two-dimensional cone, which takes every scaling"
    )


# reference.colu's argument ``componentwise`` hides the function of that name inside it
_componentwise_activation = componentwise


def _to_channels_last(x: torch.Tensor, dim: int):
    work = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    return work.movedim(dim, -1)


def colu(
    x,
    cone_dim=None,
    num_cones=None,
    *,
    share_axis=False,
    scaling="hard",
    dim=-1,
    eps=1e-7,
    layout="grouped",
    axis_activation="identity",
    componentwise=True,
    angle_scale=None,
):
    """Reference CoLU; same arguments and semantics as :func:`colu.colu`."""
    check_choice("scaling", scaling, SCALINGS)
    check_choice("axis_activation", axis_activation, AXIS_ACTIVATIONS)
    spec = ConeSpec.resolve(
        x.shape[dim], cone_dim, num_cones, share_axis=share_axis, layout=layout, componentwise=componentwise
    )
    if spec.is_identity:
        return x
    if spec.componentwise:
        work = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        return _componentwise_activation(work, scaling).to(x.dtype)
    xl = _to_channels_last(x, dim)
    axis_idx, section_idx = spec.axis_channels(), spec.section_channels()
    a = _axis_activation(xl[..., axis_idx], axis_activation)  # (..., G)
    s = xl[..., section_idx]  # (..., G, S-1)
    if scaling == "exact":
        if share_axis:
            raise ValueError("scaling='exact' moves each cone's axis; a shared axis cannot move per cone")
        a, coef = exact_projection(a, section_norm(s))
        s_out = coef.unsqueeze(-1) * s
    else:
        r = _scaled(a / (section_norm(s) + eps), angle_scale)
        s_out = weighting(r, scaling).unsqueeze(-1) * s
    out = torch.zeros_like(xl)
    out = out.index_copy(-1, axis_idx[:1] if share_axis else axis_idx, a[..., :1] if share_axis else a)
    out = out.index_copy(-1, section_idx.flatten(), s_out.flatten(-2))
    return out.movedim(-1, dim).to(x.dtype)


def rcolu(
    x, cone_dim=None, num_cones=None, *, scaling="hard", dim=-1, eps=1e-7, axis_activation="identity", angle_scale=None
):
    """Reference RCoLU (Section 3.4, signed projection); same arguments as :func:`colu.rcolu`."""
    check_choice("scaling", scaling, SCALINGS)
    check_choice("axis_activation", axis_activation, AXIS_ACTIVATIONS)
    spec = ConeSpec.resolve(x.shape[dim], cone_dim, num_cones, kind="rcolu")
    if spec.is_identity:
        return x
    xl = _to_channels_last(x, dim)
    groups = xl[..., spec.cone_channels()]  # (..., G, S)
    e = spec.homogeneous_basis(xl.dtype, xl.device)[:, 0]  # the homogeneous axis (1, ..., 1)/sqrt(S)
    t = groups @ e  # (..., G)
    perp = groups - t.unsqueeze(-1) * e
    t_out = _axis_activation(t, axis_activation)
    if scaling == "exact":
        t_out, w = exact_projection(t_out, section_norm(perp))
    else:
        w = weighting(_scaled(t_out / (section_norm(perp) + eps), angle_scale), scaling)
    out = t_out.unsqueeze(-1) * e + w.unsqueeze(-1) * perp
    return out.flatten(-2).movedim(-1, dim).to(x.dtype)
