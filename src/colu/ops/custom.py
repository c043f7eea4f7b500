"""The kernels as torch custom ops, so that ``torch.compile(fullgraph=True)`` can keep them.

Eager calls skip these (dispatch calls the kernels directly: a custom op
costs tens of microseconds of Python per call). Under ``torch.compile``
:class:`colu.ops.autograd.CompiledKernelFunction` is traced and its forward
and backward become ``colu::cone_forward``/``colu::cone_backward`` nodes,
which the compiled graph calls as opaque kernels on the activation's own
tensor and channel ``dim``; ``register_fake`` gives their outputs (shaped and
laid out as the input). Autograd stays with the Function, so no autograd
formula is registered here. The ops take the cone spec as plain fields
because custom op schemas allow only simple types.

Each op picks its kernel when it runs, through :func:`colu.ops.dispatch.select`
on the tensor it gets (so a compiled graph follows ``COLU_BACKEND`` and the
kernels available where it runs, as an eager call does), and uses the closed
form where no kernel is available (no compiler, no triton).
"""

from __future__ import annotations

import math

import torch

from colu.ops import closed_form, dispatch
from colu.spec import ConeSpec


def _prepare(x, channels, num_cones, cone_dim, share_axis, layout, kind):
    """The spec from its fields and the backend to run, counted in dispatch.calls."""
    backend = dispatch.select(x)
    dispatch.calls[backend] += 1
    return ConeSpec(channels, num_cones, cone_dim, share_axis, layout, kind), backend


# Defined through torch.library.Library rather than torch.library.custom_op: the latter wraps every call in
# Python layers (an autograd check, a dynamo-disable wrapper, a redispatch) that measured about 85 us a call
# on a (256, 1024) tensor, as long as the kernel's own forward there; a compiled MLP step makes four calls.
# The ops take the activation's own tensor and its channel dim, in whatever layout it comes, and are tagged
# flexible_layout: Inductor then hands them its buffers as they are. Given a traced (N, C, H*W) view, Inductor
# kept it for an NCHW network but stores convolution outputs channels-last, so it copied every feature map
# into NCHW before the op and back after it (ResNet-56 NCHW compiled: 1.29x ReLU's step; channels_last 1.06x).
_lib = torch.library.Library("colu", "DEF")
_CONE = "int dim, int channels, int num_cones, int cone_dim, bool share_axis, str layout, str kind, str scaling, " \
        "float eps, str axis_activation"
_lib.define(f"cone_forward(Tensor x, {_CONE}) -> Tensor", tags=(torch.Tag.flexible_layout,))
_lib.define(f"cone_backward(Tensor x, Tensor grad, {_CONE}) -> Tensor", tags=(torch.Tag.flexible_layout,))


def _as_cones(x, dim, C):
    """``(x3, restore)``: ``x`` as the ``(outer, C, inner)`` tensor the kernels take (a view where the channels
    are innermost in memory, else a contiguous copy), and the function that turns a result of that shape back
    into a tensor laid out as ``x`` (the layout ``torch.empty_like(x)`` has, which the fake kernels promise)."""
    moved = x.movedim(dim, -1)
    if moved.is_contiguous():
        return moved.reshape(-1, C, 1), lambda y: y.reshape(moved.shape).movedim(-1, dim)
    outer = math.prod(x.shape[:dim])

    def restore(y):
        y = y.reshape(x.shape)
        return y if x.is_contiguous() else torch.empty_like(x).copy_(y)  # a rare layout: empty_like's, as promised

    return x.contiguous().reshape(outer, C, -1), restore


def cone_forward(x, dim, channels, num_cones, cone_dim, share_axis, layout, kind, scaling, eps, axis_activation):
    spec, backend = _prepare(x, channels, num_cones, cone_dim, share_axis, layout, kind)
    x3, restore = _as_cones(x, dim, channels)
    if backend == "closed_form":
        return restore(closed_form.cone_forward(x3, spec, scaling, eps, axis_activation))
    return restore(dispatch.kernel_forward(x3, spec, scaling, eps, axis_activation, backend))


def cone_backward(x, grad, dim, channels, num_cones, cone_dim, share_axis, layout, kind, scaling, eps,
                  axis_activation):
    spec, backend = _prepare(x, channels, num_cones, cone_dim, share_axis, layout, kind)
    if grad.stride() != x.stride():
        grad = torch.empty_like(x).copy_(grad)  # both read through the same view
    x3, restore = _as_cones(x, dim, channels)
    g3, _ = _as_cones(grad, dim, channels)
    if backend == "closed_form":
        return restore(closed_form.cone_backward(x3, g3, spec, scaling, eps, axis_activation))
    return restore(dispatch.kernel_backward(x3, g3.contiguous(), spec, scaling, eps, axis_activation, backend))


# every device: the implementations pick the backend for the tensor they get
_lib.impl("cone_forward", cone_forward, "CompositeExplicitAutograd")
_lib.impl("cone_backward", cone_backward, "CompositeExplicitAutograd")


@torch.library.register_fake("colu::cone_forward", lib=_lib)
def _(x, dim, channels, num_cones, cone_dim, share_axis, layout, kind, scaling, eps, axis_activation):
    return torch.empty_like(x)


@torch.library.register_fake("colu::cone_backward", lib=_lib)
def _(x, grad, dim, channels, num_cones, cone_dim, share_axis, layout, kind, scaling, eps, axis_activation):
    return torch.empty_like(x)
