"""Cached plans: a repeated call (every call of a layer in a training loop) replays what a checked call resolved.

:func:`colu.colu`/:func:`colu.rcolu` first ask :func:`replay` for a plan
made for the same arguments, input shape, dtype, device and calling thread.
A hit runs the kernel at once, skipping validation, spec resolution, backend
selection and the reshapes. A miss returns the key to cache under; the
public function then validates the call and hands it to :func:`run`, which
selects the backend (:func:`colu.ops.dispatch.select`, once), caches a plan
where a kernel runs on a contiguous tensor, and computes the result through
:func:`colu.ops.autograd.apply_cones`.

Anything the checks or the backend choice depend on is in the key or
re-checked per call (the CPU kernel library, ``COLU_BACKEND``, compiling,
exporting, ``torch.func`` transforms, contiguity), and a miss takes the
checked path, so errors and results are the same either way.
"""

from __future__ import annotations

import ctypes
import math
from threading import get_ident

import torch

from colu.ops import cpu, dispatch
from colu.ops.autograd import PlannedFunction, apply_cones, apply_scaled_cones

# autograd.tracing()'s test, spelled out in replay: it runs on every call, where one more call frame shows
_is_compiling = torch.compiler.is_compiling
_is_exporting = torch.compiler.is_exporting
_transforming = torch._C._are_functorch_transforms_active

__all__ = ["Plan", "CpuPlan", "TritonPlan", "cache", "clear", "replay", "run", "run_scaled"]


class Plan:
    """What a checked call on a contiguous tensor resolved to, for replaying it (base of the per-backend plans)."""

    __slots__ = ("outer", "C", "inner", "spec", "scaling", "eps", "axis_activation", "moved")
    backend = ""
    lib = None  # the CPU library a plan was made with; None: nothing to re-check

    def __init__(self, x, dim, spec, scaling, eps, axis_activation):
        self.outer = math.prod(x.shape[:dim])
        self.C = x.shape[dim]
        self.inner = math.prod(x.shape[dim + 1 :])
        self.spec, self.scaling, self.eps, self.axis_activation = spec, scaling, eps, axis_activation
        # None: made for contiguous tensors; else the channel dim of the calls it serves, whose view with that
        # dim moved last is contiguous (channels-last images, dim=1) and is what the plan runs on
        self.moved = None


class CpuPlan(Plan):
    """The C kernel on float32/float64, and on float16/bfloat16 where it converts them itself.

    The kernel's argument block is filled once here. A call goes through the
    library's CPython entry where it was built (``cpu.load()["call"]``), which
    fills in the data pointers and the thread count on its own copy of the
    block; otherwise through ctypes, writing them into the block itself, which
    is why a plan belongs to one thread (the thread is in the key): the kernel
    reads the block after ctypes has released the GIL.
    """

    __slots__ = ("lib", "cfg_struct", "args", "args_addr", "run", "call", "half")
    backend = "cpu"

    def __init__(self, lib, x, dim, spec, scaling, eps, axis_activation):
        super().__init__(x, dim, spec, scaling, eps, axis_activation)
        self.lib = lib
        self.cfg_struct = cpu.config(spec, scaling, eps, axis_activation)  # held here: the kernel gets its address
        self.args = cpu.forward_args(x, self.outer, self.C, self.inner, ctypes.addressof(self.cfg_struct))
        self.args_addr = ctypes.addressof(self.args)
        self.half = x.dtype in dispatch.HALF_DTYPES
        self.run = lib["run_half"] if self.half else lib["run"]
        self.call = lib["call"]

    def forward(self, x):
        if self.call is not None:
            return self.call(self.args_addr, self.half, x)
        y = torch.empty_like(x)
        args = self.args
        args[cpu.ARG_X] = x.data_ptr()
        args[cpu.ARG_OUT] = y.data_ptr()
        args[cpu.ARG_THREADS] = torch.get_num_threads()
        if not self.run(self.args_addr):  # a half plan's configuration is one the kernel takes: no memory
            raise MemoryError(cpu.OVERFLOW_NO_MEMORY)
        return y

    def backward(self, x, grad):
        grad = grad.contiguous()
        if self.call is not None:
            return self.call(self.args_addr, self.half, x, grad)
        out = torch.empty_like(x)
        cpu.run(self.lib, 1, x, grad, out, self.outer, self.C, self.inner, self.cfg_struct)
        return out


class TritonPlan(Plan):
    """The Triton kernels (any of their dtypes) with block sizes and grid worked out once."""

    __slots__ = ("launcher",)
    backend = "triton"

    def __init__(self, x, dim, spec, scaling, eps, axis_activation):
        from colu.ops import triton_kernels

        super().__init__(x, dim, spec, scaling, eps, axis_activation)
        shape3 = (self.outer, self.C, self.inner)
        self.launcher = triton_kernels.Launcher(spec, scaling, eps, axis_activation, shape3, x.dtype)

    def forward(self, x):
        return self.launcher.forward(x)

    def backward(self, x, grad):
        return self.launcher.backward(x, grad)


cache: dict = {}
"""The plans by key (see :func:`replay`); :func:`clear` empties it."""

_MAX_PLANS = 4096  # a bound, in case of a stream of distinct shapes or threads


def clear() -> None:
    """Forget every cached plan (the next call of each kind takes the checked path)."""
    cache.clear()


def replay(x, backend, call):
    """Replay a cached plan for this call: ``(result, key)``.

    ``result`` is ``None`` where the checked path must run: no plan yet (:func:`run`
    then caches one under ``key``; for contiguous tensors, and for those whose
    channels are innermost in memory, such as channels-last images with
    ``dim=1``), another non-contiguous layout, a reset kernel
    library, or a call under ``torch.compile``/``torch.export``/``torch.func``
    (``key`` is then ``None``: nothing is cached). ``call`` names the
    arguments: :func:`colu.colu` and :func:`colu.rcolu` pass theirs followed
    by the types of the numeric ones, because ``True == 1 == 1.0`` hash alike
    while the checks treat them differently; a module passes its own, checked
    when it was built.
    This runs on every call, so it is written for speed: a planned hard
    (64, 512) forward costs about 4.4 us on a 2-core CPU (2.1-2.3 us of it in
    the kernel), against ReLU's 2.3-2.7 us.
    """
    if type(x) is not torch.Tensor or _is_compiling() or _is_exporting() or _transforming():
        return None, None
    env = dispatch.env_token() if backend == "auto" else None
    contiguous = x.is_contiguous()
    key = (call, x.shape, x.dtype, x.device, backend, env, contiguous, get_ident())
    try:
        plan = cache.get(key)
    except TypeError:  # an unhashable argument: let the checks report it
        return None, None
    if plan is None or (plan.lib is not None and cpu._state["lib"] is not plan.lib):
        return None, key
    if not contiguous:
        # a plan for channels that are innermost in memory (channels-last images): it runs on the view with
        # the channels moved last, which must be contiguous for this tensor too (not merely for the one the
        # plan was made for: another layout of the same shape takes the checked path)
        moved = x.movedim(plan.moved, -1)
        if not moved.is_contiguous():
            return None, key
        return _replay(moved, plan).movedim(-1, plan.moved), key
    return _replay(x, plan), key


def _replay(x, plan):
    if x.requires_grad and torch.is_grad_enabled():
        return PlannedFunction.apply(x, plan)
    dispatch.calls[plan.backend] += 1
    return plan.forward(x)


def run(key, x, dim, spec, scaling, eps, axis_activation, backend):
    """Compute a validated call (``dim`` normalised, ``spec`` resolved, neither the identity nor
    component-wise) on the backend :func:`~colu.ops.dispatch.select` picks, caching a plan under
    ``key`` (from :func:`replay`; ``None``: none) where that backend is a kernel on a contiguous tensor."""
    chosen = dispatch.select(x, backend, scaling)
    if key is not None:
        if x.is_contiguous():
            _remember(key, x, dim, spec, scaling, float(eps), axis_activation, chosen)
        else:
            moved = x.movedim(dim, -1)
            if moved.is_contiguous():  # channels innermost in memory: plan the moved view
                _remember(key, moved, moved.dim() - 1, spec, scaling, float(eps), axis_activation, chosen,
                          moved=dim)
    return apply_cones(x, dim, spec, scaling, eps, axis_activation, chosen)


def run_scaled(x, dim, spec, scaling, eps, axis_activation, scale):
    """Compute a validated call with a per-cone angle scale (a tensor that may need a gradient): always the closed
    form, never planned, since the kernels take no scale."""
    return apply_scaled_cones(x, dim, spec, scaling, eps, axis_activation, scale)


def _remember(key, x, dim, spec, scaling, eps, axis_activation, chosen, moved=None):
    lib = cpu._state["lib"]
    if chosen == "cpu" and lib is not None and (
        x.dtype in (torch.float32, torch.float64) or _half_in_kernel(lib, x, dim, spec, scaling, eps, axis_activation)
    ):
        plan = CpuPlan(lib, x, dim, spec, scaling, eps, axis_activation)
    elif chosen == "triton":
        plan = TritonPlan(x, dim, spec, scaling, eps, axis_activation)
    else:
        return
    plan.moved = moved
    if len(cache) >= _MAX_PLANS:
        cache.clear()
    cache[key] = plan


def _half_in_kernel(lib, x, dim, spec, scaling, eps, axis_activation):
    """Whether the C kernel takes this float16/bfloat16 call itself (else it runs through an upcast, unplanned)."""
    if x.dtype not in dispatch.HALF_DTYPES:
        return False
    return cpu.runs_half(lib, cpu.config(spec, scaling, eps, axis_activation), x.dtype, math.prod(x.shape[dim + 1 :]))
