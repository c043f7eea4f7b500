"""Functional interface: :func:`colu` and :func:`rcolu`."""

from __future__ import annotations

import ctypes
import math
from threading import get_ident

import torch

from . import reference
from .ops import cpu, dispatch
from .spec import AXIS_ACTIVATIONS, SCALINGS, ConeSpec, check_choice, check_eps

__all__ = ["colu", "rcolu"]

class _ConeFunction(torch.autograd.Function):
    """Cone activation on an ``(outer, C, inner)`` tensor with a closed-form backward.

    Only the input is saved for backward (the same memory ReLU keeps); the
    backward recomputes the per-cone norms from it. Half-precision inputs are
    saved as they are and computed in float32 (see :mod:`colu.ops.dispatch`).
    Double backward works: under ``create_graph=True`` the backward runs in
    differentiable torch ops. ``torch.func`` transforms work: ``vmap`` folds
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
            return _ConeFunction.apply(x, spec, scaling, eps, axis_activation, backend), None
        xb = x.movedim(in_dims[0], 0)
        B, outer, C, inner = xb.shape
        y = _ConeFunction.apply(xb.reshape(B * outer, C, inner), spec, scaling, eps, axis_activation, backend)
        return y.reshape(xb.shape), 0


class _EagerConeFunction(torch.autograd.Function):
    """:class:`_ConeFunction` in the ``forward(ctx, ...)`` form, for calls outside ``torch.func`` transforms and
    ``torch.compile``.

    With ``setup_context`` every ``apply`` binds its arguments through
    ``inspect.signature``: about 20 us, half the time of a call that no
    cached plan covers (e.g. channels-last images, half types whose cones
    are not contiguous channels).
    This form skips that but cannot run under transforms, which keep
    :class:`_ConeFunction`.
    """

    @staticmethod
    def forward(ctx, x, spec, scaling, eps, axis_activation, backend):
        ctx.save_for_backward(x)
        ctx.config = (spec, scaling, eps, axis_activation, backend)
        return _ConeFunction.forward(x, spec, scaling, eps, axis_activation, backend)

    backward = staticmethod(_ConeFunction.backward)


class _Plan:
    """What a checked call on a contiguous tensor resolved to, for replaying it (base of the per-backend plans).

    :func:`colu`/:func:`rcolu` cache one per argument combination, input
    shape, dtype, device and calling thread (key built by :func:`_planned`)
    after the checked path has accepted the call and chosen a kernel, so that
    a repeated call (every call of a layer in a training loop) skips
    validation, spec resolution, backend selection and the reshapes. Anything
    the checks or the backend choice depend on is in the key or re-checked
    per call (the CPU kernel library, ``COLU_BACKEND``, compiling/exporting,
    contiguity), and a miss takes the checked path, so errors and results are
    the same either way.
    """

    __slots__ = ("outer", "C", "inner", "spec", "scaling", "eps", "axis_activation")
    backend = ""
    lib = None  # the CPU library a plan was made with; None: nothing to re-check

    def __init__(self, x, dim, spec, scaling, eps, axis_activation):
        self.outer = math.prod(x.shape[:dim])
        self.C = x.shape[dim]
        self.inner = math.prod(x.shape[dim + 1 :])
        self.spec, self.scaling, self.eps, self.axis_activation = spec, scaling, eps, axis_activation


class _CpuPlan(_Plan):
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
        self.run(self.args_addr)
        return y

    def backward(self, x, grad):
        grad = grad.contiguous()
        if self.call is not None:
            return self.call(self.args_addr, self.half, x, grad)
        out = torch.empty_like(x)
        cpu.run(self.lib, 1, x, grad, out, self.outer, self.C, self.inner, ctypes.addressof(self.cfg_struct))
        return out


class _TritonPlan(_Plan):
    """The Triton kernels (any of their dtypes) with block sizes and grid worked out once."""

    __slots__ = ("launcher",)
    backend = "triton"

    def __init__(self, x, dim, spec, scaling, eps, axis_activation):
        from .ops import triton_kernels

        super().__init__(x, dim, spec, scaling, eps, axis_activation)
        shape3 = (self.outer, self.C, self.inner)
        self.launcher = triton_kernels.Launcher(spec, scaling, eps, axis_activation, shape3, x.dtype)

    def forward(self, x):
        return self.launcher.forward(x)

    def backward(self, x, grad):
        return self.launcher.backward(x, grad)


class _PlannedFunction(torch.autograd.Function):
    """:class:`_ConeFunction` for a cached :class:`_Plan`: same saved tensor, same backward.

    Written with ``forward(ctx, ...)`` rather than ``setup_context``: with
    ``setup_context`` every ``apply`` binds its arguments through
    ``inspect.signature``, which cost about 10 us a call, more than the
    kernel's own time on a small tensor. That form cannot run under
    ``torch.func`` transforms, so :func:`_planned` keeps plans out of them
    (:class:`_ConeFunction` handles those).
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
        backend = "closed_form" if torch.is_grad_enabled() else dispatch.select(x)
        shape3 = (p.outer, p.C, p.inner)
        g = dispatch.backward(
            x.view(shape3), grad.reshape(shape3), p.spec, p.scaling, p.eps, p.axis_activation, backend
        )
        return g.reshape(x.shape), None


_plans: dict = {}
_MAX_PLANS = 4096  # a bound, in case of a stream of distinct shapes or threads

_is_compiling = torch.compiler.is_compiling
_is_exporting = torch.compiler.is_exporting
_transforming = torch._C._are_functorch_transforms_active


def _planned(x, backend, call):
    """Replay a cached plan for this call: ``(result, key)``.

    ``result`` is ``None`` where the checked path must run: no plan yet (it
    then caches one under ``key``), a non-contiguous input, a reset kernel
    library, or a call under ``torch.compile``/``torch.export``/``torch.func``
    (``key`` is then ``None``: nothing is cached). ``call`` holds the call's
    own arguments followed by the types of the numeric ones, because
    ``True == 1 == 1.0`` hash alike while the checks treat them differently.
    This runs on every call, so it is written for speed: a planned hard
    (64, 512) forward costs about 4.4 us on a 2-core CPU (2.1-2.3 us of it in
    the kernel), against ReLU's 2.3-2.7 us.
    """
    if type(x) is not torch.Tensor or _is_compiling() or _is_exporting() or _transforming():
        return None, None
    env = dispatch.env_token() if backend == "auto" else None
    key = (call, x.shape, x.dtype, x.device, backend, env, get_ident())
    try:
        plan = _plans.get(key)
    except TypeError:  # an unhashable argument: let the checks report it
        return None, None
    if plan is None or not x.is_contiguous() or (plan.lib is not None and cpu._state["lib"] is not plan.lib):
        return None, key
    if x.requires_grad and torch.is_grad_enabled():
        return _PlannedFunction.apply(x, plan), key
    dispatch.calls[plan.backend] += 1
    return plan.forward(x), key


def _half_in_kernel(lib, x, dim, spec, scaling, eps, axis_activation):
    if x.dtype not in dispatch.HALF_DTYPES:
        return False
    cfg = ctypes.addressof(cpu.config(spec, scaling, float(eps), axis_activation))
    return cpu.runs_half(lib, cfg, x.dtype, math.prod(x.shape[dim + 1 :]))


def _remember(key, x, dim, spec, scaling, eps, axis_activation, backend):
    """Cache a plan for ``key`` if this call runs a kernel on a contiguous tensor (the C kernel: float32/float64,
    and half types where it converts them itself)."""
    if key is None or not x.is_contiguous():
        return
    chosen = dispatch.select(x, backend)
    lib = cpu._state["lib"]
    if chosen == "cpu" and lib is not None and (
        x.dtype in (torch.float32, torch.float64) or _half_in_kernel(lib, x, dim, spec, scaling, eps, axis_activation)
    ):
        plan = _CpuPlan(lib, x, dim, spec, scaling, float(eps), axis_activation)
    elif chosen == "triton":
        plan = _TritonPlan(x, dim, spec, scaling, float(eps), axis_activation)
    else:
        return
    if len(_plans) >= _MAX_PLANS:
        _plans.clear()
    _plans[key] = plan


def _check_input(x, eps, name):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} expects a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(
            f"{name} expects a floating-point tensor, got dtype={x.dtype}; convert it first, e.g. x.float()"
        )
    if x.dim() == 0:
        raise ValueError(f"{name} needs a channel axis, got a 0-dim tensor; reshape it to (1,) or (N, C)")
    check_eps(eps)


def _channel_dim(x, dim):
    ndim = x.dim()
    if not isinstance(dim, int) or isinstance(dim, bool):
        raise TypeError(f"dim must be an int, got {dim!r}")
    if not -ndim <= dim < ndim:
        raise IndexError(f"Dimension out of range (expected to be in range of [{-ndim}, {ndim - 1}], but got {dim})")
    return dim % ndim


def _apply_cones(x, dim, spec, scaling, eps, axis_activation, backend):
    """Run the autograd Function on an (outer, C, inner) view of ``x`` and map the result back."""
    backend = dispatch.select(x, backend)
    fn = _ConeFunction if _is_compiling() or _is_exporting() or _transforming() else _EagerConeFunction
    C = x.shape[dim]
    moved = x.movedim(dim, -1)
    if moved.is_contiguous():  # (..., C) rows, including channels_last NCHW with dim=1
        y = fn.apply(moved.reshape(-1, C, 1), spec, scaling, float(eps), axis_activation, backend)
        return y.reshape(moved.shape).movedim(-1, dim)
    outer = math.prod(x.shape[:dim])
    y = fn.apply(x.contiguous().reshape(outer, C, -1), spec, scaling, float(eps), axis_activation, backend)
    return y.reshape(x.shape)


def colu(
    x: torch.Tensor,
    cone_dim: int | None = None,
    num_cones: int | None = None,
    *,
    share_axis: bool = False,
    scaling: str = "hard",
    dim: int = -1,
    eps: float = 1e-7,
    layout: str = "grouped",
    axis_activation: str = "identity",
    backend: str = "auto",
) -> torch.Tensor:
    r"""Conic Linear Unit: project each cone of channels onto a Lorentz cone.

    The channels along ``dim`` are split into :math:`G` cones of dimension
    :math:`S` (see ``layout``). For a cone with axis value :math:`a` and
    section :math:`s \in \mathbb{R}^{S-1}`:

    .. math::
        a' = \phi(a), \qquad r = \frac{a'}{\lVert s \rVert + \varepsilon}, \qquad
        \mathrm{CoLU}(a, s) = \bigl(a',\; w(r)\, s\bigr)

    with the weighting

    * ``"hard"`` (paper eq. 1): :math:`w(r) = \min\{\max\{r, 0\}, 1\}`, the
      nearest-point projection onto the cone inside the plane
      :math:`y_1 = a'` (Lemma 4.2);
    * ``"soft"`` (eq. 2): :math:`w(r) = \mathrm{sigmoid}(r - 1/2)`;
    * ``"firm"`` (Section 3.1): :math:`w(r) = \mathrm{sigmoid}(4r - 2)`.

    and :math:`\phi` the ``axis_activation`` (the identity in the paper).
    With ``share_axis=True`` all cones use channel 0 as their axis
    (eq. 4), which is output once.

    Special cases (Section 3.2): ``num_cones=0`` returns the input unchanged
    (the identity); ``cone_dim=2`` is the component-wise activation applied to
    every channel: ReLU for ``"hard"``, SiLU for ``"soft"`` and
    :math:`x\,\mathrm{sigmoid}(4x)` for ``"firm"`` (the component-wise
    analogue, as SiLU's :math:`\mathrm{sigmoid}(x)` is to
    :math:`\mathrm{sigmoid}(r-1/2)`); ``axis_activation`` has no effect there.

    The output satisfies :math:`\lVert s' \rVert \le \max(a', 0)` for hard
    scaling, hard CoLU is idempotent, and the op is equivariant under
    :math:`\mathrm{Perm}(G) \times O(S-1)^G` (permute cones, rotate sections).

    Args:
        x: input tensor of any floating dtype; float16/bfloat16 are computed in
            float32 internally and returned in their own dtype.
        cone_dim: S, channels per cone including the axis. Give this or
            ``num_cones``, not both; with neither, ``cone_dim=4``.
        num_cones: G, the number of cones; ``0`` gives the identity.
        share_axis: share one axis (channel 0) among all cones; then
            :math:`C - 1 = G (S - 1)`, otherwise :math:`C = G S`.
        scaling: ``"hard"``, ``"soft"`` or ``"firm"``.
        dim: the channel axis: ``-1`` for ``(N, C)``/``(N, L, C)``, ``1`` for
            ``NCHW``.
        eps: the :math:`\varepsilon` of eq. (1), :math:`10^{-7}` in the paper.
            It also keeps an all-zero cone exact; with ``eps=0`` such a cone
            gives :math:`r = 0/0` and NaN sections.
        layout: ``"grouped"``: cone ``g`` is channels ``g*S ... g*S+S-1``, axis
            first. ``"axes_first"``: the ``G`` axes first, then ``G`` blocks of
            ``S-1`` section channels (the JAX package's layout). With a shared
            axis both layouts put the axis at channel 0 followed by the
            sections.
        axis_activation: ``"identity"`` (the paper), ``"relu"`` or ``"silu"``
            (the JAX package's convention) applied to the axis before the
            projection.
        backend: ``"auto"`` or a backend name from
            :mod:`colu.ops.dispatch` to force one (``COLU_BACKEND`` does the
            same from the environment).

    Shape:
        - Input: :math:`(*, C, *)` with :math:`C` at ``dim``.
        - Output: same shape, dtype and memory format as the input.

    Examples::

        >>> x = torch.randn(8, 12)
        >>> y = colu.colu(x, cone_dim=4)                      # 3 cones of dimension 4
        >>> y = colu.colu(x[:, :10], cone_dim=4, share_axis=True)  # 10 - 1 = 3 * (4 - 1)
        >>> img = torch.randn(2, 16, 5, 5)
        >>> y = colu.colu(img, num_cones=4, scaling="soft", dim=1)
    """
    call = (
        "colu", cone_dim, num_cones, share_axis, scaling, dim, eps, layout, axis_activation,
        type(cone_dim), type(num_cones), type(share_axis), type(dim), type(eps),
    )  # fmt: skip
    y, key = _planned(x, backend, call)
    if y is not None:
        return y
    _check_input(x, eps, "colu")
    check_choice("scaling", scaling, SCALINGS)
    check_choice("axis_activation", axis_activation, AXIS_ACTIVATIONS)
    dim = _channel_dim(x, dim)
    spec = ConeSpec.resolve(x.shape[dim], cone_dim, num_cones, share_axis=share_axis, layout=layout)
    if spec.is_identity:
        return x
    if spec.cone_dim == 2:
        return reference.componentwise(x, scaling)
    _remember(key, x, dim, spec, scaling, eps, axis_activation, backend)
    return _apply_cones(x, dim, spec, scaling, eps, axis_activation, backend)


def rcolu(
    x: torch.Tensor,
    cone_dim: int | None = None,
    num_cones: int | None = None,
    *,
    scaling: str = "hard",
    dim: int = -1,
    eps: float = 1e-7,
    axis_activation: str = "identity",
    backend: str = "auto",
) -> torch.Tensor:
    r"""Rotated Conic Linear Unit (paper Section 3.4): cones around the all-ones axis.

    The channels along ``dim`` form :math:`G` groups of :math:`S` contiguous
    channels. With :math:`e = (1, \dots, 1)/\sqrt{S}`, for each group
    :math:`x \in \mathbb{R}^S`:

    .. math::
        t = x \cdot e, \qquad x_\perp = x - t e, \qquad t' = \phi(t), \qquad
        \mathrm{RCoLU}(x) = t' e + w\!\left(\frac{t'}{\lVert x_\perp \rVert + \varepsilon}\right) x_\perp

    with :math:`w` the weighting of ``scaling`` (see :func:`colu`). This is
    CoLU in the rotated basis :math:`(e, e^\perp)`, so every channel plays
    the same role.

    Note:
        The paper's eq. (5) prints the weight as
        :math:`\max\{\min\{|x_e|/(\lVert x_\perp\rVert+\varepsilon), 0\}, 1\}`,
        which read literally is the constant 1 (no activation at all). We
        implement the projection the text describes: the signed :math:`t`,
        clamped to :math:`[0, 1]`, so that groups with :math:`t < 0` collapse
        onto the negative axis exactly as in CoLU.

    ``num_cones=0`` is the identity. Unlike :func:`colu`, ``cone_dim=2`` is
    not special-cased: it is the cone of the rotated quadrant.

    Args:
        x: input tensor of any floating dtype (half types computed in float32).
        cone_dim: S, channels per group. Give this or ``num_cones``; default 4.
        num_cones: G, the number of groups; ``0`` gives the identity. A single
            cone over all channels (``num_cones=1``) is the paper's axis
            sharing for RCoLU (:math:`e = (1, \dots, 1)/\sqrt{C}`).
        scaling: ``"hard"``, ``"soft"`` or ``"firm"``.
        dim: the channel axis.
        eps: numerical-stability constant, :math:`10^{-7}`.
        axis_activation: ``"identity"``, ``"relu"`` or ``"silu"`` applied to
            :math:`t`.
        backend: force a backend (see :func:`colu`).

    Shape:
        - Input: :math:`(*, C, *)` with :math:`C = G S` at ``dim``.
        - Output: same shape, dtype and memory format as the input.

    Examples::

        >>> x = torch.randn(8, 12)
        >>> y = colu.rcolu(x, cone_dim=3)
    """
    call = ("rcolu", cone_dim, num_cones, scaling, dim, eps, axis_activation, type(cone_dim), type(num_cones), type(dim), type(eps))
    y, key = _planned(x, backend, call)
    if y is not None:
        return y
    _check_input(x, eps, "rcolu")
    check_choice("scaling", scaling, SCALINGS)
    check_choice("axis_activation", axis_activation, AXIS_ACTIVATIONS)
    dim = _channel_dim(x, dim)
    spec = ConeSpec.resolve(x.shape[dim], cone_dim, num_cones, kind="rcolu")
    if spec.is_identity:
        return x
    _remember(key, x, dim, spec, scaling, eps, axis_activation, backend)
    return _apply_cones(x, dim, spec, scaling, eps, axis_activation, backend)
