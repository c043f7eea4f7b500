"""The kernels as torch custom ops, so that ``torch.compile(fullgraph=True)`` can keep them.

Eager calls skip these (dispatch calls the kernels directly: a custom op
costs tens of microseconds of Python per call). Under ``torch.compile`` the
autograd Function in :mod:`colu.ops.autograd` is traced and its forward and
backward become ``colu::cone_forward``/``colu::cone_backward`` nodes, which
the compiled graph calls as opaque kernels; ``register_fake`` gives their
output shapes. Autograd stays with the Function, so no autograd formula is
registered here. The ops take the cone spec as plain fields because custom
op schemas allow only simple types.

Each op picks its kernel when it runs, through :func:`colu.ops.dispatch.select`
on the tensor it gets (so a compiled graph follows ``COLU_BACKEND`` and the
kernels available where it runs, as an eager call does), and uses the closed
form where no kernel is available (no compiler, no triton).
"""

from __future__ import annotations

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
_lib = torch.library.Library("colu", "DEF")
_CONE = "int channels, int num_cones, int cone_dim, bool share_axis, str layout, str kind, str scaling, float eps, " \
        "str axis_activation"
_lib.define(f"cone_forward(Tensor x, {_CONE}) -> Tensor")
_lib.define(f"cone_backward(Tensor x, Tensor grad, {_CONE}) -> Tensor")


def cone_forward(x, channels, num_cones, cone_dim, share_axis, layout, kind, scaling, eps, axis_activation):
    spec, backend = _prepare(x, channels, num_cones, cone_dim, share_axis, layout, kind)
    if backend == "closed_form":
        return closed_form.cone_forward(x, spec, scaling, eps, axis_activation)
    return dispatch.kernel_forward(x.contiguous(), spec, scaling, eps, axis_activation, backend)


def cone_backward(x, grad, channels, num_cones, cone_dim, share_axis, layout, kind, scaling, eps, axis_activation):
    spec, backend = _prepare(x, channels, num_cones, cone_dim, share_axis, layout, kind)
    if backend == "closed_form":
        return closed_form.cone_backward(x, grad, spec, scaling, eps, axis_activation)
    return dispatch.kernel_backward(x.contiguous(), grad.contiguous(), spec, scaling, eps, axis_activation, backend)


# every device: the implementations pick the backend for the tensor they get
_lib.impl("cone_forward", cone_forward, "CompositeExplicitAutograd")
_lib.impl("cone_backward", cone_backward, "CompositeExplicitAutograd")


@torch.library.register_fake("colu::cone_forward", lib=_lib)
def _(x, channels, num_cones, cone_dim, share_axis, layout, kind, scaling, eps, axis_activation):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("colu::cone_backward", lib=_lib)
def _(x, grad, channels, num_cones, cone_dim, share_axis, layout, kind, scaling, eps, axis_activation):
    return torch.empty_like(x, memory_format=torch.contiguous_format)
