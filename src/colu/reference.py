"""Reference implementation: the paper's formulas in plain torch ops.

This module is the correctness oracle. It is written for reading, not for
speed: it gathers each cone's axis and section by explicit channel indices
(from :class:`~colu.spec.ConeSpec`), applies eq. (1)/(2)/(5) literally and
lets autograd differentiate it. Every faster path (the closed-form autograd
Function, the fused CPU and Triton kernels) is tested against it.

The functions here take the same arguments as :func:`colu.colu` and
:func:`colu.rcolu` and follow the same special cases (``num_cones=0`` is the
identity, ``cone_dim=2`` is component-wise for CoLU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .spec import AXIS_ACTIVATIONS, SCALINGS, ConeSpec, check_choice

__all__ = ["colu", "rcolu", "weighting", "componentwise"]


def weighting(r: torch.Tensor, scaling: str) -> torch.Tensor:
    """The section weight w(r) of eq. (1) (hard), eq. (2) (soft) or Section 3.1 (firm)."""
    if scaling == "hard":
        return torch.clamp(r, 0.0, 1.0)
    if scaling == "soft":
        return torch.sigmoid(r - 0.5)
    return torch.sigmoid(4.0 * r - 2.0)


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
    return x * torch.sigmoid(4.0 * x)


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
):
    """Reference CoLU; same arguments and semantics as :func:`colu.colu`."""
    check_choice("scaling", scaling, SCALINGS)
    check_choice("axis_activation", axis_activation, AXIS_ACTIVATIONS)
    spec = ConeSpec.resolve(x.shape[dim], cone_dim, num_cones, share_axis=share_axis, layout=layout)
    if spec.is_identity:
        return x
    if spec.componentwise:
        return componentwise(x.float() if x.dtype in (torch.float16, torch.bfloat16) else x, scaling).to(x.dtype)
    xl = _to_channels_last(x, dim)
    axis_idx, section_idx = spec.axis_channels(), spec.section_channels()
    a = _axis_activation(xl[..., axis_idx], axis_activation)  # (..., G)
    s = xl[..., section_idx]  # (..., G, S-1)
    r = a / (torch.linalg.vector_norm(s, dim=-1) + eps)
    s_out = weighting(r, scaling).unsqueeze(-1) * s
    out = torch.zeros_like(xl)
    out = out.index_copy(-1, axis_idx[:1] if share_axis else axis_idx, a[..., :1] if share_axis else a)
    out = out.index_copy(-1, section_idx.flatten(), s_out.flatten(-2))
    return out.movedim(-1, dim).to(x.dtype)


def rcolu(x, cone_dim=None, num_cones=None, *, scaling="hard", dim=-1, eps=1e-7, axis_activation="identity"):
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
    r = t_out / (torch.linalg.vector_norm(perp, dim=-1) + eps)
    out = t_out.unsqueeze(-1) * e + weighting(r, scaling).unsqueeze(-1) * perp
    return out.flatten(-2).movedim(-1, dim).to(x.dtype)
