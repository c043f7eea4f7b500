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

from colu.reference import exact_projection
from colu.spec import ConeSpec


def weight_and_slope(r: torch.Tensor, scaling: str):
    """``w(r)`` and ``w'(r)`` (see :func:`colu.reference.weighting`)."""
    if scaling == "hard":
        w = torch.clamp(r, 0.0, 1.0)
        # 1 where the clamp keeps r: inclusive at 0 and 1, as torch.clamp's own gradient; 0 for NaN (one
        # comparison instead of two and their conjunction)
        return w, (w == r).to(r.dtype)
    if scaling == "soft":
        w = torch.sigmoid(r - 0.5)
        return w, w * (1 - w)
    if scaling == "firm":
        w = torch.sigmoid(4.0 * r - 2.0)
        return w, 4.0 * w * (1 - w)
    # sqrt, log: 0 for r <= 0 with slope 0 there (sqrt's slope at 0+ is infinite, and a ReLU axis gives r = 0
    # for every negative axis value); NaN stays NaN
    off = r <= 0
    r_on = torch.where(off, torch.ones_like(r), r)
    zero = torch.zeros_like(r)
    if scaling == "sqrt":
        root = torch.sqrt(r_on)
        return torch.where(off, zero, root), torch.where(off, zero, 0.5 / root)
    return torch.where(off, zero, torch.log1p(r_on)), torch.where(off, zero, 1.0 / (1.0 + r_on))


def axis_act(a: torch.Tensor, name: str) -> torch.Tensor:
    if name == "identity":
        return a
    if name == "relu":
        return torch.relu(a)
    return torch.nn.functional.silu(a)


def axis_act_grad(a: torch.Tensor, name: str):
    if name == "relu":
        return (a > 0).to(a.dtype)
    sig = torch.sigmoid(a)
    return sig * (1 + a * (1 - sig))


def section_norm(t: torch.Tensor) -> torch.Tensor:
    """The Euclidean norm over dimension 2 (a cone's section), as ``sqrt(sum(t * t))``.

    ``torch.linalg.vector_norm`` over a short strided dimension took 80% of the whole forward (about 100x
    ReLU's time on NCHW activations); a product and a sum are the fast, vectorised kernels. Neither
    rescales against overflow: squares of section values above about 1e19 (1e154 in float64) are infinite
    where the values are not, so cones whose norm comes out infinite take :func:`_scaled_norm` instead: in
    eager mode only when there is one; compiled (where Inductor fuses the select) or under ``vmap`` and the
    other functorch transforms (which cannot branch on data), always.
    """
    n = _dot(t, t).sqrt()
    if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active() or bool(torch.isinf(n).any()):
        n = torch.where(torch.isinf(n), _scaled_norm(t), n)
    return n


def _scaled_norm(t: torch.Tensor) -> torch.Tensor:
    """The norm over dimension 2 as ``m * ||t / m||`` with ``m = max |t|``: no square exceeds 1 (an
    infinite or NaN value keeps its infinite or NaN norm)."""
    m = t.abs().amax(2, keepdim=True)
    m = torch.where((m > 0) & (m < math.inf), m, torch.ones_like(m))
    u = t / m
    return m.squeeze(2) * _dot(u, u).sqrt()


def _dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``sum(u * v)`` over dimension 2 (a cone's section). Where autograd records nothing (see
    :func:`_in_place_ok`) and sections are short, as multiply-adds of its slices into one cone-sized result:
    no section-sized product is written and read back."""
    if u.shape[2] > 8 or not _in_place_ok():
        return (u * v).sum(2)
    acc = u[:, :, 0] * v[:, :, 0]
    for k in range(1, u.shape[2]):
        acc.addcmul_(u[:, :, k], v[:, :, k])
    return acc


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


def _in_place_ok() -> bool:
    """Whether the result may be computed straight into a fresh output through ``out=`` and in-place ops.

    That saves the section-sized temporaries and the ``torch.cat`` of :func:`_merge` (the largest items in a
    profile of the closed form on NCHW activations), but autograd does not differentiate ``out=`` ops. So only where nothing records
    them: grad mode off (the autograd Functions' forward, and a backward without ``create_graph``; their
    inputs still say ``requires_grad``), no compiling, exporting or ``torch.func`` transform.
    """
    return not (
        torch.is_grad_enabled()
        or torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
        or torch._C._are_functorch_transforms_active()
    )


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


def _per_cone(scale, like):
    """The angle scale (``None``, a scalar or one value per cone) shaped to broadcast over ``(outer, G, inner)``."""
    if scale is None:
        return None
    scale = scale.to(like.dtype)
    return scale.reshape(1, -1, 1) if scale.dim() else scale


def cone_forward(
    x: torch.Tensor, spec: ConeSpec, scaling: str, eps: float, axis_activation: str, scale=None
) -> torch.Tensor:
    """The activation of an ``(outer, C, inner)`` tensor; ``scale`` (``None``, a scalar or ``(G,)``) multiplies
    each cone's ``r`` (the learnable cone angle; differentiable through torch's autograd here)."""
    if spec.kind == "rcolu":
        return _own(_rcolu_forward(x, spec, scaling, eps, axis_activation, scale))
    axes, sections = _split(x, spec)
    axes_out, w = _projected(axis_act(axes, axis_activation), section_norm(sections), eps, scaling, scale)
    if _in_place_ok():
        out = torch.empty_like(x)
        out_axes, out_sections = _split(out, spec)
        out_axes.copy_(axes_out)
        torch.mul(w.unsqueeze(2), sections, out=out_sections)
        return out
    return _own(_merge(axes_out, w.unsqueeze(2) * sections, spec))


def _projected(a, n, eps, scaling, scale):
    """``(axis, w)`` of a cone whose activated axis is ``a`` and section norm ``n``: the output is
    ``(axis, w s)``. The weightings keep the axis; the exact projection moves it."""
    if scaling == "exact":
        return exact_projection(a, n)
    r = a / (n + eps)
    c = _per_cone(scale, r)
    w, _ = weight_and_slope(r if c is None else r * c, scaling)
    return a, w


def _weighted_terms(a, n, q, eps, scaling, scale):
    """The per-cone terms of a weighting's backward at axis ``a``, section norm ``n`` and ``q = <g_s, s>``:
    ``(w, k, coef, g_c)`` with ``dL/da += k``, ``dL/ds = w g_s - coef s`` and ``g_c`` the gradient for the
    angle ``scale`` before its sum over positions (``None`` without a scale)."""
    denom = n + eps
    r = a / denom
    c = _per_cone(scale, r)
    w, slope = weight_and_slope(r if c is None else r * c, scaling)
    k = q * slope / denom
    g_c = None
    if c is not None:
        g_c = k * a  # q w'(c r) r
        k = k * c
    # s/n -> 0 with s, so a zero section contributes nothing (q = 0 there too)
    coef = k * r / torch.where(n > 0, n, 1.0)
    return w, k, coef, g_c


def _exact_backward(a, n, g_a, q):
    """The exact projection's vector-Jacobian product at axis ``a`` and section norm ``n``, for an upstream
    ``(g_a, g_s)`` with ``q = <g_s, s>``: ``(dL/da, W, V)`` with ``dL/ds = W g_s + V s``.

    Where ``|a| < n`` the projection is ``m (1, s/n)``, ``m = (a + n)/2``, whose Jacobian gives
    ``dL/da = g_a/2 + q/(2n)`` and ``dL/ds = g_a s/(2n) + (m/n) g_s - (a q/(2 n^3)) s``; it is the identity
    inside the cone and 0 in the polar cone."""
    inside, polar = n <= a, n <= -a
    mid = ~(inside | polar)
    safe = torch.where(mid, n, torch.ones_like(n))
    zero, one = torch.zeros_like(n), torch.ones_like(n)
    g_axis = torch.where(inside, g_a, torch.where(polar, zero, 0.5 * g_a + q / (2 * safe)))
    W = torch.where(inside, one, torch.where(polar, zero, (a + safe) / (2 * safe)))
    V = torch.where(mid, g_a / (2 * safe) - a * q / (2 * safe**3), zero)
    return g_axis, W, V


def cone_backward(
    x: torch.Tensor, grad: torch.Tensor, spec: ConeSpec, scaling: str, eps: float, axis_activation: str,
    scale=None, scale_grad: bool = False,
):
    """The gradient w.r.t. ``x`` of :func:`cone_forward` for the upstream ``grad``; with ``scale_grad`` also
    the gradient w.r.t. ``scale`` (shaped like it): ``(grad_x, grad_scale)``."""
    if spec.kind == "rcolu":
        g_in, g_c = _rcolu_backward(x, grad, spec, scaling, eps, axis_activation, scale)
        return (g_in, _scale_grad(g_c, scale)) if scale_grad else g_in
    axes, sections = _split(x, spec)
    g_axes, g_sections = _split(grad.contiguous(), spec)
    axes_out = axis_act(axes, axis_activation)
    norm = section_norm(sections)
    q = _dot(g_sections, sections)
    g_c = None
    if scaling == "exact":
        # an own axis per cone (a shared one is refused before this)
        g_ax, W, V = _exact_backward(axes_out, norm, g_axes, q)
        sec_terms = (W, V)  # dL/ds = W g_s + V s
    else:
        w, k, coef, g_c = _weighted_terms(axes_out, norm, q, eps, scaling, scale)
        sec_terms = (w, -coef)
        g_ax = g_axes + (k.sum(1, keepdim=True) if spec.share_axis else k)
    if axis_activation != "identity":
        g_ax = g_ax * axis_act_grad(axes, axis_activation)
    on_g, on_s = (t.unsqueeze(2) for t in sec_terms)
    if _in_place_ok():
        g_in = torch.empty_like(x)
        in_axes, in_sections = _split(g_in, spec)
        in_axes.copy_(g_ax)
        torch.mul(on_g, g_sections, out=in_sections).addcmul_(on_s, sections)
    else:
        g_in = _merge(g_ax, on_g * g_sections + on_s * sections, spec)
    return (g_in, _scale_grad(g_c, scale)) if scale_grad else g_in


def _scale_grad(g_c, scale):
    """Sum the per-cone ``(outer, G, inner)`` gradient ``g_c`` into the shape of ``scale``."""
    total = g_c.sum((0, 2))
    return (total if scale.dim() else total.sum()).to(scale.dtype)


def _rcolu_parts(x, spec, scaling, eps, axis_activation):
    S = spec.cone_dim
    outer, _, inner = x.shape
    groups = x.reshape(outer, spec.num_cones, S, inner)
    mean = groups.mean(2, keepdim=True)
    perp = groups - mean
    norm = section_norm(perp)
    t = mean.squeeze(2) * math.sqrt(S)
    t_out = axis_act(t, axis_activation)
    return perp, norm, t, t_out


def _rcolu_forward(x, spec, scaling, eps, axis_activation, scale):
    perp, norm, _, t_out = _rcolu_parts(x, spec, scaling, eps, axis_activation)
    t_out, w = _projected(t_out, norm, eps, scaling, scale)
    out = (t_out / math.sqrt(spec.cone_dim)).unsqueeze(2) + w.unsqueeze(2) * perp
    return out.view(x.shape)


def _rcolu_backward(x, grad, spec, scaling, eps, axis_activation, scale):
    S = spec.cone_dim
    perp, norm, t, t_out = _rcolu_parts(x, spec, scaling, eps, axis_activation)
    g = grad.reshape(perp.shape)
    g_mean = g.mean(2)
    q = (g * perp).sum(2)  # perp has zero mean, so this is <g_perp, perp>
    g_c = None
    if scaling == "exact":
        # in the basis (e, e-perp): g_t = sum(g)/sqrt(S) = g_mean sqrt(S)
        g_t, W, V = _exact_backward(t_out, norm, g_mean * math.sqrt(S), q)
        g_t = g_t / math.sqrt(S)
        g_perp = W.unsqueeze(2) * (g - g_mean.unsqueeze(2)) + V.unsqueeze(2) * perp
    else:
        w, k, coef, g_c = _weighted_terms(t_out, norm, q, eps, scaling, scale)
        # dL/dt' = sum(g)/sqrt(S) + k, pushed back along e (dt/dx = e)
        g_t = g_mean + k / math.sqrt(S)
        g_perp = w.unsqueeze(2) * (g - g_mean.unsqueeze(2)) - coef.unsqueeze(2) * perp
    if axis_activation != "identity":
        g_t = g_t * axis_act_grad(t, axis_activation)
    g_in = g_perp + g_t.unsqueeze(2)
    return g_in.view(x.shape), g_c
