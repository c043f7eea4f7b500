"""The autograd Functions around the backends: one input saved, a closed-form backward.

Every Function here takes a contiguous ``(outer, C, inner)`` tensor (or, for
:class:`PlannedFunction`, the caller's tensor and a cached plan from
:mod:`colu.ops.plans`), saves only the input (the same memory ReLU keeps) and
computes the gradient from it in the backend that ran the forward. Under
``create_graph=True`` the backward runs in differentiable torch ops (the
closed form), so double backward works.

Three forms of the same Function, because ``torch.autograd.Function`` binds
the arguments of every ``apply`` through ``inspect.signature`` when the
Function defines ``setup_context`` (about 10-20 us a call, more than the
kernel's own time on a small tensor), while only that form runs under
``torch.func`` transforms and ``torch.compile``:

* :class:`ConeFunction` (``setup_context``): transforms, compiling, exporting.
* :class:`EagerConeFunction` (``forward(ctx, ...)``): eager calls that no plan
  covers.
* :class:`PlannedFunction` (``forward(ctx, ...)``): eager calls replaying a plan.
"""

from __future__ import annotations

import math

import torch

from colu.ops import (
    closed_form,
    cpu,
    custom,  # noqa: F401  (registers the colu:: ops that dispatch calls under torch.compile)
    dispatch,
)

__all__ = ["ConeFunction", "EagerConeFunction", "PlannedFunction", "ScaledConeFunction", "apply_cones", "apply_scaled_cones"]


class ConeFunction(torch.autograd.Function):
    """Cone activation on an ``(outer, C, inner)`` tensor with a closed-form backward.

    Half-precision inputs are saved as they are and computed in float32 (see
    :mod:`colu.ops.dispatch`). ``torch.func`` transforms work: ``vmap`` folds
    the batch dimension into ``outer`` (the op acts on each ``(C,)`` fibre
    alone, so the batched call is the same call on a bigger tensor).
    """

    @staticmethod
    def forward(x, spec, scaling, eps, axis_activation, backend):
        return dispatch.forward(x, spec, scaling, eps, axis_activation, backend)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, spec, scaling, eps, axis_activation, backend = inputs
        ctx.save_for_backward(x)
        ctx.config = (spec, scaling, eps, axis_activation, backend)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        spec, scaling, eps, axis_activation, backend = ctx.config
        if torch.is_grad_enabled():  # create_graph=True: stay differentiable
            backend = "closed_form"
        grad_in = dispatch.backward(x, grad.to(x.dtype), spec, scaling, eps, axis_activation, backend)
        return grad_in, None, None, None, None, None

    @staticmethod
    def vmap(info, in_dims, x, spec, scaling, eps, axis_activation, backend):
        if in_dims[0] is None:
            return ConeFunction.apply(x, spec, scaling, eps, axis_activation, backend), None
        xb = x.movedim(in_dims[0], 0)
        B, outer, C, inner = xb.shape
        y = ConeFunction.apply(xb.reshape(B * outer, C, inner), spec, scaling, eps, axis_activation, backend)
        return y.reshape(xb.shape), 0


class EagerConeFunction(torch.autograd.Function):
    """:class:`ConeFunction` in the ``forward(ctx, ...)`` form, for eager calls that no plan covers
    (e.g. channels-last images, half types whose cones are not contiguous channels)."""

    @staticmethod
    def forward(ctx, x, spec, scaling, eps, axis_activation, backend):
        ctx.save_for_backward(x)
        ctx.config = (spec, scaling, eps, axis_activation, backend)
        return ConeFunction.forward(x, spec, scaling, eps, axis_activation, backend)

    backward = staticmethod(ConeFunction.backward)


class PlannedFunction(torch.autograd.Function):
    """:class:`ConeFunction` for a cached plan (:mod:`colu.ops.plans`): same saved tensor, same backward.

    The plan's backward runs where the kernel library that made the plan is
    still the loaded one; after :func:`colu.ops.cpu.reset` the gradient takes
    the checked route on a freshly selected backend instead.
    """

    @staticmethod
    def forward(ctx, x, plan):
        dispatch.calls[plan.backend] += 1
        ctx.save_for_backward(x)
        ctx.plan = plan
        return plan.forward(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        p = ctx.plan
        if not torch.is_grad_enabled() and (p.lib is None or cpu._state["lib"] is p.lib):
            dispatch.calls[p.backend] += 1
            return p.backward(x, grad), None
        # create_graph=True: stay differentiable; a reset library: the checked route
        backend = "closed_form" if torch.is_grad_enabled() else dispatch.select(x, scaling=p.scaling)
        shape3 = (p.outer, p.C, p.inner)
        g = dispatch.backward(
            x.view(shape3), grad.reshape(shape3), p.spec, p.scaling, p.eps, p.axis_activation, backend
        )
        return g.reshape(x.shape), None


_is_compiling = torch.compiler.is_compiling
_is_exporting = torch.compiler.is_exporting
_transforming = torch._C._are_functorch_transforms_active


def tracing() -> bool:
    """Whether this call is being compiled, exported or transformed by ``torch.func``: only
    :class:`ConeFunction` runs there, and nothing is cached."""
    return _is_compiling() or _is_exporting() or _transforming()


class CompiledKernelFunction(torch.autograd.Function):
    """The kernels under ``torch.compile``: the custom ops ``colu::cone_forward``/``colu::cone_backward``
    (:mod:`colu.ops.custom`) on the activation's own tensor and channel ``dim``, so that Inductor may hand
    them its buffers in the layout it chose (see there). Saves the input, as :class:`ConeFunction`; a double
    backward takes the closed form."""

    @staticmethod
    def forward(x, dim, spec, scaling, eps, axis_activation):
        return torch.ops.colu.cone_forward(x, dim, *_op_args(spec, scaling, eps, axis_activation))

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, dim, spec, scaling, eps, axis_activation = inputs
        ctx.save_for_backward(x)
        ctx.config = (dim, spec, scaling, eps, axis_activation)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        dim, spec, scaling, eps, axis_activation = ctx.config
        if torch.is_grad_enabled():  # create_graph=True: stay differentiable
            return _closed_form_grad(x, grad, dim, spec, scaling, eps, axis_activation), None, None, None, None, None
        g = torch.ops.colu.cone_backward(x, grad.to(x.dtype), dim, *_op_args(spec, scaling, eps, axis_activation))
        return g, None, None, None, None, None


def _op_args(spec, scaling, eps, axis_activation):
    return (spec.channels, spec.num_cones, spec.cone_dim, spec.share_axis, spec.layout, spec.kind, scaling, eps,
            axis_activation)


def _closed_form_grad(x, grad, dim, spec, scaling, eps, axis_activation):
    C = x.shape[dim]
    outer = math.prod(x.shape[:dim])
    g = dispatch.backward(x.contiguous().reshape(outer, C, -1), grad.to(x.dtype).contiguous().reshape(outer, C, -1),
                          spec, scaling, eps, axis_activation, "closed_form")
    return g.reshape(x.shape)


def apply_cones(x, dim, spec, scaling, eps, axis_activation, backend):
    """Run the cone activation on ``x`` along ``dim`` with the already selected ``backend``.

    The Function sees an ``(outer, C, inner)`` view: ``(rows, C, 1)`` where the
    channels are the innermost axis in memory (``(..., C)`` rows, and
    channels-last ``NCHW`` with ``dim=1``), else a contiguous copy of ``x``.
    The result has the shape and memory format of ``x``. Compiled, the kernels
    take ``x`` itself (:class:`CompiledKernelFunction`).
    """
    if backend in ("cpu", "triton") and _is_compiling():
        return CompiledKernelFunction.apply(x, dim % x.dim(), spec, scaling, float(eps), axis_activation)
    fn = ConeFunction if tracing() else EagerConeFunction
    C = x.shape[dim]
    moved = x.movedim(dim, -1)
    if moved.is_contiguous():
        y = fn.apply(moved.reshape(-1, C, 1), spec, scaling, float(eps), axis_activation, backend)
        return y.reshape(moved.shape).movedim(-1, dim)
    outer = math.prod(x.shape[:dim])
    y = fn.apply(x.contiguous().reshape(outer, C, -1), spec, scaling, float(eps), axis_activation, backend)
    return y.reshape(x.shape)


class ScaledConeFunction(torch.autograd.Function):
    """The cone activation with each cone's ``r`` multiplied by ``scale`` (a learnable cone angle), on an
    ``(outer, C, inner)`` tensor: the closed form on any device, gradients for the input and the scale.

    It saves the input and the scale; its backward is torch ops, so under ``create_graph=True`` it is
    itself differentiable, and ``torch.func`` transforms get a generated vmap rule.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, scale, spec, scaling, eps, axis_activation):
        if x.dtype in dispatch.HALF_DTYPES:
            return closed_form.cone_forward(x.float(), spec, scaling, eps, axis_activation, scale.float()).to(x.dtype)
        return closed_form.cone_forward(x, spec, scaling, eps, axis_activation, scale)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, scale, spec, scaling, eps, axis_activation = inputs
        ctx.save_for_backward(x, scale)
        ctx.config = (spec, scaling, eps, axis_activation)

    @staticmethod
    def backward(ctx, grad):
        x, scale = ctx.saved_tensors
        spec, scaling, eps, axis_activation = ctx.config
        work = torch.float32 if x.dtype in dispatch.HALF_DTYPES else x.dtype
        g_x, g_scale = closed_form.cone_backward(
            x.to(work), grad.to(work), spec, scaling, eps, axis_activation, scale.to(work), scale_grad=True
        )
        return g_x.to(x.dtype), g_scale.to(scale.dtype), None, None, None, None


def apply_scaled_cones(x, dim, spec, scaling, eps, axis_activation, scale):
    """:func:`apply_cones` with the angle ``scale`` (see :class:`ScaledConeFunction`)."""
    C = x.shape[dim]
    moved = x.movedim(dim, -1)
    if moved.is_contiguous():
        y = ScaledConeFunction.apply(moved.reshape(-1, C, 1), scale, spec, scaling, float(eps), axis_activation)
        return y.reshape(moved.shape).movedim(-1, dim)
    outer = math.prod(x.shape[:dim])
    y = ScaledConeFunction.apply(x.contiguous().reshape(outer, C, -1), scale, spec, scaling, float(eps), axis_activation)
    return y.reshape(x.shape)
