"""Portable backend: closed-form forward and backward in torch ops.

Works on any device and dtype torch supports. It computes the backward from
the saved input alone (no intermediate is kept between forward and backward),
so the autograd Function keeps one input-sized tensor, like ReLU does.

Both functions take and return tensors of shape ``(outer, C, inner)``: the
channel axis in the middle, so that an ``(N, C)`` activation is
``(N, C, 1)`` and a contiguous ``NCHW`` activation is ``(N, C, H*W)`` without
any copy. Kernels share this interface; like theirs, the forward's result is a
tensor of its own rather than a view of a temporary, so in-place ops on the
output work the same on every backend.

Per cone, with axis value ``a``, section ``s`` and ``n = ||s||``::

    a' = phi(a),  r = a' / (n + eps),  y = (a', w(r) s)

and for an upstream gradient ``(g_a, g_s)``, writing ``q = <g_s, s>`` and
``k = q w'(r) / (n + eps)``::

    dL/ds = w(r) g_s - (k r / n) s
    dL/da = (g_a + k) phi'(a)          (k summed over cones for a shared axis)

RCoLU is the same projection in the basis (e, e-perp) of each group of S
channels (:meth:`~colu.spec.ConeSpec.homogeneous_basis`), e = (1, ..., 1)/sqrt(S).
The basis is never formed here: ``t = x . e`` is the group's mean times
sqrt(S) and ``x - t e`` the group minus its mean, with no matmul.
"""

from __future__ import annotations

import math

import torch

from ..spec import ConeSpec


def _weight_and_slope(r: torch.Tensor, scaling: str):
    if scaling == "hard":
        w = torch.clamp(r, 0.0, 1.0)
        # inclusive at 0 and 1, as torch.clamp's own gradient
        slope = ((r >= 0) & (r <= 1)).to(r.dtype)
        return w, slope
    if scaling == "soft":
        w = torch.sigmoid(r - 0.5)
        return w, w * (1 - w)
    w = torch.sigmoid(4.0 * r - 2.0)
    return w, 4.0 * w * (1 - w)


def _axis_act(a: torch.Tensor, name: str) -> torch.Tensor:
    if name == "identity":
        return a
    if name == "relu":
        return torch.relu(a)
    return torch.nn.functional.silu(a)


def _axis_act_grad(a: torch.Tensor, name: str):
    if name == "relu":
        return (a > 0).to(a.dtype)
    sig = torch.sigmoid(a)
    return sig * (1 + a * (1 - sig))


def _norm(t: torch.Tensor) -> torch.Tensor:
    """The Euclidean norm over dimension 2 (a cone's section), as ``sqrt(sum(t * t))``.

    ``torch.linalg.vector_norm`` over a short strided dimension took 80% of the whole forward (about 100x
    ReLU's time on NCHW activations); a product and a sum are the fast, vectorised kernels, and give the
    same values (neither rescales against overflow).
    """
    return (t * t).sum(2).sqrt()


def _split(x: torch.Tensor, spec: ConeSpec):
    """``(axes, sections)`` of an ``(outer, C, inner)`` tensor, as views: axes ``(outer, A, inner)`` (A = G, or
    1 for a shared axis), sections ``(outer, G, S-1, inner)``.

    The channel axis stays in the middle: moving it last (as :meth:`ConeSpec.split` wants) would make every
    reduction over a cone run at stride ``inner``, and the copies back cost more than the arithmetic on
    NCHW activations. Here a cone's norm is a reduction over dimension 2, which torch vectorises along the
    contiguous ``inner`` axis.
    """
    outer, _, inner = x.shape
    G, S = spec.num_cones, spec.cone_dim
    if spec.contiguous:
        cones = x.reshape(outer, G, S, inner)
        return cones[:, :, 0], cones[:, :, 1:]
    A = 1 if spec.share_axis else G
    return x[:, :A], x[:, A:].reshape(outer, G, S - 1, inner)


def _merge(axes: torch.Tensor, sections: torch.Tensor, spec: ConeSpec) -> torch.Tensor:
    """Inverse of :func:`_split`: a new ``(outer, C, inner)`` tensor."""
    outer, _, _, inner = sections.shape
    if spec.contiguous:
        return torch.cat([axes.unsqueeze(2), sections], dim=2).view(outer, spec.channels, inner)
    return torch.cat([axes, sections.reshape(outer, -1, inner)], dim=1)


def _own(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a tensor of its own rather than a view of the buffer it was assembled in.

    The result is built by ``torch.cat`` and brought back to ``(outer, C,
    inner)`` by a view. Returned from the autograd Function, a
    view makes autograd refuse in-place ops on the output (``y.mul_(2)``,
    ``nn.Dropout(inplace=True)``), which the kernels' outputs accept.
    ``detach()`` drops the view relation without copying (nothing else holds
    the buffer). A result that is itself being differentiated (``torch.func``
    transforms differentiate through the forward) is returned as it is.
    """
    return t if t.requires_grad else t.detach()


def cone_forward(x: torch.Tensor, spec: ConeSpec, scaling: str, eps: float, axis_activation: str) -> torch.Tensor:
    if spec.kind == "rcolu":
        return _own(_rcolu_forward(x, spec, scaling, eps, axis_activation))
    axes, sections = _split(x, spec)
    axes_out = _axis_act(axes, axis_activation)
    norm = _norm(sections)
    w, _ = _weight_and_slope(axes_out / (norm + eps), scaling)
    return _own(_merge(axes_out, w.unsqueeze(2) * sections, spec))


def cone_backward(
    x: torch.Tensor, grad: torch.Tensor, spec: ConeSpec, scaling: str, eps: float, axis_activation: str
) -> torch.Tensor:
    if spec.kind == "rcolu":
        return _rcolu_backward(x, grad, spec, scaling, eps, axis_activation)
    axes, sections = _split(x, spec)
    g_axes, g_sections = _split(grad.contiguous(), spec)
    axes_out = _axis_act(axes, axis_activation)
    norm = _norm(sections)
    denom = norm + eps
    r = axes_out / denom
    w, slope = _weight_and_slope(r, scaling)
    k = (g_sections * sections).sum(2) * slope / denom
    # s/n -> 0 with s, so a zero section contributes nothing (q = 0 there too)
    coef = k * r / torch.where(norm > 0, norm, torch.ones_like(norm))
    g_sec_in = w.unsqueeze(2) * g_sections - coef.unsqueeze(2) * sections
    g_ax = g_axes + (k.sum(1, keepdim=True) if spec.share_axis else k)
    if axis_activation != "identity":
        g_ax = g_ax * _axis_act_grad(axes, axis_activation)
    return _merge(g_ax, g_sec_in, spec)


def _rcolu_parts(x, spec, scaling, eps, axis_activation):
    S = spec.cone_dim
    outer, _, inner = x.shape
    groups = x.reshape(outer, spec.num_cones, S, inner)
    mean = groups.mean(2, keepdim=True)
    perp = groups - mean
    norm = _norm(perp)
    t = mean.squeeze(2) * math.sqrt(S)
    t_out = _axis_act(t, axis_activation)
    denom = norm + eps
    r = t_out / denom
    w, slope = _weight_and_slope(r, scaling)
    return groups, perp, norm, denom, t, t_out, r, w, slope


def _rcolu_forward(x, spec, scaling, eps, axis_activation):
    _, perp, _, _, _, t_out, _, w, _ = _rcolu_parts(x, spec, scaling, eps, axis_activation)
    out = (t_out / math.sqrt(spec.cone_dim)).unsqueeze(2) + w.unsqueeze(2) * perp
    return out.view(x.shape)


def _rcolu_backward(x, grad, spec, scaling, eps, axis_activation):
    S = spec.cone_dim
    _, perp, norm, denom, t, _, r, w, slope = _rcolu_parts(x, spec, scaling, eps, axis_activation)
    g = grad.reshape(perp.shape)
    g_mean = g.mean(2)
    k = (g * perp).sum(2) * slope / denom
    coef = k * r / torch.where(norm > 0, norm, torch.ones_like(norm))
    # dL/dt' = sum(g)/sqrt(S) + k, pushed back along e (dt/dx = e)
    g_t = g_mean + k / math.sqrt(S)
    if axis_activation != "identity":
        g_t = g_t * _axis_act_grad(t, axis_activation)
    g_in = w.unsqueeze(2) * (g - g_mean.unsqueeze(2)) - coef.unsqueeze(2) * perp + g_t.unsqueeze(2)
    return g_in.view(x.shape)
