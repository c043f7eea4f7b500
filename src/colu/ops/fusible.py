"""The cone activation in the form ``torch.compile`` fuses: each cone a slice of a reshaped view, the section
norm a reduction over the cone's channels, and everything else pointwise, forward and backward.

Under ``torch.compile`` the fused kernels are custom ops (:mod:`colu.ops.custom`), which Inductor calls as
opaque kernels: it cannot fuse a batch norm, a bias or a residual add into them, as it does into ReLU. These
functions are the same math (:mod:`colu.ops.closed_form`'s formulas) written with no ``out=``, no in-place
update, no ``torch.cat`` where a select does, and, compiled, no branch on the data (the section norm's
overflow check is a select there, :func:`colu.ops.closed_form.section_norm`), so that Inductor makes one
loop nest of the activation and its neighbours. They run where ``backend="fusible"`` asks for them:
``"auto"`` keeps the kernels, measured faster on CPU (see ``docs/kernels.md``). They also run eagerly, as
plain torch ops, which is how the tests compare them.

Both take and return ``(outer, C, inner)`` tensors, like every backend; float16/bfloat16 are computed in
float32 (casts Inductor fuses too).
"""

from __future__ import annotations

import math

import torch

from colu.ops.closed_form import axis_act, axis_act_grad, section_norm, weight_and_slope
from colu.spec import ConeSpec


def _work(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _parts(x: torch.Tensor, spec: ConeSpec):
    """``(cones, axes, sections)``: for cones of S contiguous channels, ``cones`` is the ``(outer, G, S, inner)``
    view and ``axes``/``sections`` its slices; otherwise ``cones`` is ``None``, ``axes`` the ``(outer, A, inner)``
    axis channels (A = G, or 1 shared) and ``sections`` the ``(outer, G, S - 1, inner)`` view of the rest."""
    outer, _, inner = x.shape
    G, S = spec.num_cones, spec.cone_dim
    if spec.contiguous:
        cones = x.reshape(outer, G, S, inner)
        return cones, cones[:, :, 0], cones[:, :, 1:]
    A = 1 if spec.share_axis else G
    return None, x[:, :A], x[:, A:].reshape(outer, G, S - 1, inner)


def _assemble(x, spec, cones, axis_value, section_value):
    """The ``(outer, C, inner)`` tensor whose axis channels hold ``axis_value`` (``(outer, A, inner)``) and whose
    section channels hold ``section_value`` (a function of the section tensor it is given). Contiguous cones
    are one select over the cone view, so that no section-sized tensor is built apart."""
    if cones is not None:
        first = torch.arange(spec.cone_dim, device=x.device).view(1, 1, -1, 1) == 0
        return torch.where(first, axis_value.unsqueeze(2), section_value(cones)).reshape(x.shape)
    outer, _, inner = x.shape
    _, _, sections = _parts(x, spec)
    return torch.cat([axis_value, section_value(sections).reshape(outer, -1, inner)], dim=1)


def cone_forward(x: torch.Tensor, spec: ConeSpec, scaling: str, eps: float, axis_activation: str) -> torch.Tensor:
    dtype, x = x.dtype, _work(x)
    if spec.kind == "rcolu":
        y = _rcolu_forward(x, spec, scaling, eps, axis_activation)
    else:
        cones, axes, sections = _parts(x, spec)
        a = axis_act(axes, axis_activation)
        w, _ = weight_and_slope(a / (section_norm(sections) + eps), scaling)
        y = _assemble(x, spec, cones, a, lambda s: w.unsqueeze(2) * s)
    return y.to(dtype)


def cone_backward(
    x: torch.Tensor, grad: torch.Tensor, spec: ConeSpec, scaling: str, eps: float, axis_activation: str
) -> torch.Tensor:
    dtype, x, grad = x.dtype, _work(x), _work(grad)
    if spec.kind == "rcolu":
        return _rcolu_backward(x, grad, spec, scaling, eps, axis_activation).to(dtype)
    cones, axes, sections = _parts(x, spec)
    g_cones, g_axes, g_sections = _parts(grad, spec)
    a = axis_act(axes, axis_activation)
    n = section_norm(sections)
    q = (g_sections * sections).sum(2)
    den = n + eps
    r = a / den
    w, slope = weight_and_slope(r, scaling)
    k = q * slope / den
    coef = k * r / torch.where(n > 0, n, 1.0)  # a zero section contributes nothing (q = 0 there too)
    g_ax = g_axes + (k.sum(1, keepdim=True) if spec.share_axis else k)
    if axis_activation != "identity":
        g_ax = g_ax * axis_act_grad(axes, axis_activation)
    w2, c2 = w.unsqueeze(2), coef.unsqueeze(2)
    if cones is not None:
        first = torch.arange(spec.cone_dim, device=x.device).view(1, 1, -1, 1) == 0
        g_in = torch.where(first, g_ax.unsqueeze(2), w2 * g_cones - c2 * cones).reshape(x.shape)
    else:
        outer, _, inner = x.shape
        g_in = torch.cat([g_ax, (w2 * g_sections - c2 * sections).reshape(outer, -1, inner)], dim=1)
    return g_in.to(dtype)


def _rcolu_parts(x, spec, axis_activation):
    S = spec.cone_dim
    outer, _, inner = x.shape
    groups = x.reshape(outer, spec.num_cones, S, inner)
    mean = groups.mean(2, keepdim=True)
    perp = groups - mean
    t = mean.squeeze(2) * math.sqrt(S)
    return groups, perp, section_norm(perp), t, axis_act(t, axis_activation)


def _rcolu_forward(x, spec, scaling, eps, axis_activation):
    _, perp, n, _, tp = _rcolu_parts(x, spec, axis_activation)
    w, _ = weight_and_slope(tp / (n + eps), scaling)
    return ((tp / math.sqrt(spec.cone_dim)).unsqueeze(2) + w.unsqueeze(2) * perp).reshape(x.shape)


def _rcolu_backward(x, grad, spec, scaling, eps, axis_activation):
    S = spec.cone_dim
    _, perp, n, t, tp = _rcolu_parts(x, spec, axis_activation)
    g = grad.reshape(perp.shape)
    g_mean = g.mean(2)
    q = (g * perp).sum(2)  # perp has zero mean: <g_perp, perp>
    den = n + eps
    r = tp / den
    w, slope = weight_and_slope(r, scaling)
    k = q * slope / den
    coef = k * r / torch.where(n > 0, n, 1.0)
    g_t = g_mean + k / math.sqrt(S)  # dL/dt' = sum(g)/sqrt(S) + k, pushed back along e
    if axis_activation != "identity":
        g_t = g_t * axis_act_grad(t, axis_activation)
    g_in = w.unsqueeze(2) * (g - g_mean.unsqueeze(2)) - coef.unsqueeze(2) * perp + g_t.unsqueeze(2)
    return g_in.reshape(x.shape)
