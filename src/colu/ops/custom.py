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


@torch.library.custom_op("colu::cone_forward", mutates_args=())
def cone_forward(
    x: torch.Tensor,
    channels: int,
    num_cones: int,
    cone_dim: int,
    share_axis: bool,
    layout: str,
    kind: str,
    scaling: str,
    eps: float,
    axis_activation: str,
) -> torch.Tensor:
    spec, backend = _prepare(x, channels, num_cones, cone_dim, share_axis, layout, kind)
    if backend == "closed_form":
        return closed_form.cone_forward(x, spec, scaling, eps, axis_activation)
    return dispatch.kernel_forward(x.contiguous(), spec, scaling, eps, axis_activation, backend)


@cone_forward.register_fake
def _(x, channels, num_cones, cone_dim, share_axis, layout, kind, scaling, eps, axis_activation):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("colu::cone_backward", mutates_args=())
def cone_backward(
    x: torch.Tensor,
    grad: torch.Tensor,
    channels: int,
    num_cones: int,
    cone_dim: int,
    share_axis: bool,
    layout: str,
    kind: str,
    scaling: str,
    eps: float,
    axis_activation: str,
) -> torch.Tensor:
    spec, backend = _prepare(x, channels, num_cones, cone_dim, share_axis, layout, kind)
    if backend == "closed_form":
        return closed_form.cone_backward(x, grad, spec, scaling, eps, axis_activation)
    return dispatch.kernel_backward(x.contiguous(), grad.contiguous(), spec, scaling, eps, axis_activation, backend)


@cone_backward.register_fake
def _(x, grad, channels, num_cones, cone_dim, share_axis, layout, kind, scaling, eps, axis_activation):
    return torch.empty_like(x, memory_format=torch.contiguous_format)
