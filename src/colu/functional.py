"""Functional interface: :func:`colu` and :func:`rcolu`.

This module holds the public functions, their documentation and their
argument checks. How a checked call is computed (the backends, the autograd
Functions, the cache that lets a repeated call skip all of this) is in
:mod:`colu.ops`: :mod:`colu.ops.plans` is the entry point.
"""

from __future__ import annotations

import torch

from colu import reference
from colu.ops import plans
from colu.spec import AXIS_ACTIVATIONS, SCALINGS, ConeSpec, check_choice, check_eps, check_flag

__all__ = ["colu", "rcolu", "potential", "bregman_divergence"]

# the weightings the paper defines for cone_dim=2 (the component-wise activations of Section 3.2)
_COMPONENTWISE_SCALINGS = ("hard", "soft", "firm")


def _check_input(x, name):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} expects a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(
            f"{name} expects a floating-point tensor, got dtype={x.dtype}; convert it first, e.g. x.float()"
        )
    if x.dim() == 0:
        raise ValueError(f"{name} needs a channel axis, got a 0-dim tensor; reshape it to (1,) or (N, C)")


def check_dim(dim) -> None:
    """``dim`` must be an int (not a bool); its range is checked against each input."""
    if not isinstance(dim, int) or isinstance(dim, bool):
        raise TypeError(f"dim must be an int, got {dim!r}")


def _channel_dim(x, dim):
    check_dim(dim)
    ndim = x.dim()
    if not -ndim <= dim < ndim:
        raise IndexError(f"Dimension out of range (expected to be in range of [{-ndim}, {ndim - 1}], but got {dim})")
    return dim % ndim


def check_options(scaling, eps, axis_activation):
    """The option values of a call that do not depend on its input (the modules check them once, when built)."""
    check_eps(eps)
    check_choice("scaling", scaling, SCALINGS)
    check_choice("axis_activation", axis_activation, AXIS_ACTIVATIONS)


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
    componentwise: bool = True,
    backend: str = "auto",
    angle_scale: torch.Tensor | None = None,
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
    * ``"firm"`` (Section 3.1): :math:`w(r) = \mathrm{sigmoid}(4r - 2)`;
    * ``"sqrt"`` and ``"log"`` (the JAX package's, jax-colu 0.3.0):
      :math:`w(r) = \sqrt{\max(r, 0)}` and :math:`\log(1 + \max(r, 0))`. These are **not
      projections** and not idempotent. The output stays in the cone where :math:`w(r) \le r`:
      ``"sqrt"`` leaves it for :math:`0 < r < 1` and grows the section for :math:`r > 1`; ``"log"``
      never leaves it (:math:`\log(1 + r) \le r`) and grows the section for :math:`r > e - 1`. jax-colu applies them after a ReLU on the
      axis: pass ``axis_activation="relu"`` (and ``layout="axes_first"``) to match it; other axis
      activations stay allowed. Their slope at :math:`r \le 0` is taken as 0;
    * ``"exact"``: the metric projection onto the Lorentz cone
      :math:`V = \{(a, s): \lVert s \rVert \le a\}`, which unlike the weightings above also moves
      the axis: :math:`(a', s)` if :math:`\lVert s\rVert \le a'`, :math:`0` if
      :math:`\lVert s\rVert \le -a'`, else :math:`\tfrac{a' + \lVert s\rVert}{2}(1, s/\lVert s\rVert)`.
      It is idempotent, firmly non-expansive and the gradient of the convex :func:`potential`. It
      ignores ``eps``, needs an axis per cone (no ``share_axis``) and runs on the closed form on every
      device (the fused kernels do not compute it; a forced kernel backend refuses it).

    and :math:`\phi` the ``axis_activation`` (the identity in the paper).
    With ``share_axis=True`` all cones use channel 0 as their axis
    (eq. 4), which is output once.

    Special cases (Section 3.2): ``num_cones=0`` returns the input unchanged
    (the identity); ``cone_dim=2`` (also when ``num_cones`` splits C into
    cones of 2) is by default the component-wise activation applied to
    every channel: ReLU for ``"hard"``, SiLU for ``"soft"`` and
    :math:`x\,\mathrm{sigmoid}(4x)` for ``"firm"`` (the component-wise
    analogue, as SiLU's :math:`\mathrm{sigmoid}(x)` is to
    :math:`\mathrm{sigmoid}(r-1/2)`); ``axis_activation`` has no effect there. The paper defines no
    component-wise form for the other weightings, so they need ``cone_dim >= 3`` or the
    two-dimensional cone. ``componentwise=False`` makes ``cone_dim=2`` that **two-dimensional cone**
    (the JAX package's ``dim=2``): each pair of one axis channel :math:`a` and one section channel
    :math:`s` is a cone like any other, with :math:`|s|` for :math:`\lVert s \rVert`, so
    :math:`r = a' / (|s| + \varepsilon)` and the output is :math:`(a', w(r)\, s)`; every weighting
    (``"exact"`` projects onto :math:`\{|s| \le a\}`), layout, ``share_axis``,
    ``axis_activation`` and ``angle_scale`` apply, and its symmetry group is
    :math:`\mathrm{Perm}(G) \times O(1)^G` (permute the pairs, flip the sign of a section).

    The output satisfies :math:`\lVert s' \rVert \le \max(a', 0)` for hard
    scaling, hard CoLU is idempotent, and the op is equivariant under
    :math:`\mathrm{Perm}(G) \times O(S-1)^G` (permute cones, rotate sections).

    Args:
        x: input tensor of any floating dtype; float16/bfloat16 are computed in
            float32 internally and returned in their own dtype.
        cone_dim: S, channels per cone including the axis, at least 2. Give
            this or ``num_cones``, not both. Default: ``None`` (``cone_dim=4``
            when ``num_cones`` is not given either).
        num_cones: G, the number of cones; ``0`` gives the identity.
            Default: ``None`` (follows from ``cone_dim`` and C).
        share_axis: share one axis (channel 0) among all cones; then
            :math:`C - 1 = G (S - 1)`, otherwise :math:`C = G S`.
            Default: ``False``.
        scaling: ``"hard"``, ``"soft"``, ``"firm"``, ``"sqrt"``, ``"log"`` or
            ``"exact"``. Default: ``"hard"``.
        dim: the channel axis: ``-1`` for ``(N, C)``/``(N, L, C)``, ``1`` for
            ``NCHW``. Default: ``-1``.
        eps: the :math:`\varepsilon` of eq. (1), a finite number >= 0. It also
            keeps an all-zero cone exact; with ``eps=0`` such a cone gives
            :math:`r = 0/0` and NaN sections. Default: ``1e-7`` (the paper's).
        layout: ``"grouped"``: cone ``g`` is channels ``g*S ... g*S+S-1``, axis
            first. ``"axes_first"``: the ``G`` axes first, then ``G`` blocks of
            ``S-1`` section channels (the JAX package's layout). With a shared
            axis both layouts put the axis at channel 0 followed by the
            sections. Default: ``"grouped"``.
        axis_activation: ``"identity"`` (the paper), ``"relu"`` or ``"silu"``
            (the JAX package's convention) applied to the axis before the
            projection. Default: ``"identity"``.
        componentwise: how to read cones of dimension 2: ``True`` is the
            paper's component-wise activation, ``False`` the two-dimensional
            cone (see the special cases). No effect when :math:`S \ge 3`.
            Default: ``True``.
        backend: ``"auto"`` or a backend name from
            :mod:`colu.ops.dispatch` to force one (``COLU_BACKEND`` does the
            same from the environment). Default: ``"auto"``.
        angle_scale: a positive tensor, one value per cone (shape ``(G,)``) or
            one for all (a scalar), that multiplies each cone's :math:`r`:
            :math:`w(c_g r)` is the weighting of a cone of half-angle
            :math:`\arctan c_g` (1 is the paper's 45 degrees). It receives a
            gradient (:class:`colu.CoLU` with ``learnable_angle`` holds it as
            :math:`c_g = e^{\theta_g}`). Calls with it run on the closed form
            and are not cached. Not for ``"exact"``. Default: ``None``.

    Shape:
        - Input: :math:`(*, C, *)` with :math:`C` at ``dim``.
        - Output: same shape, dtype and memory format as the input.
        - ``angle_scale``: :math:`(G,)` or :math:`()`.

    Examples::

        >>> x = torch.randn(8, 12)
        >>> y = colu.colu(x, cone_dim=4)                      # 3 cones of dimension 4
        >>> y = colu.colu(x[:, :10], cone_dim=4, share_axis=True)  # 10 - 1 = 3 * (4 - 1)
        >>> img = torch.randn(2, 16, 5, 5)
        >>> y = colu.colu(img, num_cones=4, scaling="soft", dim=1)
        >>> y = colu.colu(x, cone_dim=4, scaling="sqrt", layout="axes_first", axis_activation="relu")  # jax-colu
        >>> y = colu.colu(x, cone_dim=2, componentwise=False)  # 6 two-dimensional cones, not ReLU
    """
    if angle_scale is not None:
        _check_input(x, "colu")
        check_options(scaling, eps, axis_activation)
        dim = _channel_dim(x, dim)
        spec = ConeSpec.resolve(x.shape[dim], cone_dim, num_cones, share_axis=share_axis, layout=layout,
                                componentwise=componentwise)
        return _with_angle_scale(x, dim, spec, scaling, eps, axis_activation, backend, angle_scale)
    call = (
        "colu", cone_dim, num_cones, share_axis, scaling, dim, eps, layout, axis_activation, componentwise,
        type(cone_dim), type(num_cones), type(share_axis), type(dim), type(eps), type(componentwise),
    )  # fmt: skip
    y, key = plans.replay(x, backend, call)
    if y is not None:
        return y
    _check_input(x, "colu")
    check_options(scaling, eps, axis_activation)
    check_flag("componentwise", componentwise)
    componentwise = bool(componentwise)
    return _resolve_and_run_colu(
        x, key, cone_dim, num_cones, share_axis, scaling, dim, eps, layout, axis_activation, componentwise, backend
    )


def colu_for_module(x, call, cone_dim, num_cones, share_axis, scaling, dim, eps, layout, axis_activation,
                    componentwise=True):
    """:func:`colu` with ``backend="auto"`` for argument values validated beforehand (a :class:`~colu.CoLU`
    checks its own at construction): only what depends on ``x`` is checked.

    ``call`` names these arguments in plan keys (see :func:`colu.ops.plans.replay`). Unlike :func:`colu`'s
    own, it needs no argument types: valid values that compare equal (``eps=1`` and ``eps=1.0``) compute
    the same, and no call that the checks would reject gets here."""
    y, key = plans.replay(x, "auto", call)
    if y is not None:
        return y
    _check_input(x, "colu")
    return _resolve_and_run_colu(
        x, key, cone_dim, num_cones, share_axis, scaling, dim, eps, layout, axis_activation, componentwise, "auto"
    )


def _resolve_and_run_colu(
    x, key, cone_dim, num_cones, share_axis, scaling, dim, eps, layout, axis_activation, componentwise, backend
):
    """The rest of a cache miss once ``x`` and the option values are valid: the channel axis and the
    cone spec, which depend on ``x``'s shape."""
    dim = _channel_dim(x, dim)
    spec = ConeSpec.resolve(x.shape[dim], cone_dim, num_cones, share_axis=share_axis, layout=layout,
                            componentwise=componentwise)
    if spec.is_identity:
        return x
    check_scaling_fits(spec.componentwise, spec.share_axis, scaling)
    if spec.componentwise:
        return reference.componentwise(x, scaling)
    return plans.run(key, x, dim, spec, scaling, eps, axis_activation, backend)


def check_scaling_fits(componentwise: bool, share_axis: bool, scaling: str, angle: bool = False) -> None:
    """The weightings and cone angles that exist only for some cone configurations (``componentwise``: CoLU
    with ``cone_dim=2`` read component-wise, :attr:`ConeSpec.componentwise`; ``angle``: an angle scale is
    given). :class:`colu.CoLU` checks the same when built."""
    if componentwise and scaling not in _COMPONENTWISE_SCALINGS:
        raise ValueError(
            f"cone_dim=2 is the component-wise activation, defined for scaling 'hard', 'soft' or 'firm'; "
            f"scaling={scaling!r} needs cone_dim >= 3, or componentwise=False for two-dimensional cones"
        )
    if scaling == "exact" and share_axis:
        raise ValueError(
            "scaling='exact' moves each cone's axis, which a shared axis cannot do for every cone at once; "
            "use share_axis=False (or another scaling)"
        )
    if angle and componentwise:
        raise ValueError(
            "cone_dim=2 is component-wise and has no cone angle; an angle scale needs cone_dim >= 3, or "
            "componentwise=False for two-dimensional cones"
        )
    if angle and scaling == "exact":
        raise ValueError("an angle scale multiplies the weighting's r; scaling='exact' has none (use another scaling)")


def _with_angle_scale(x, dim, spec, scaling, eps, axis_activation, backend, angle_scale):
    """A validated call with a cone-angle scale: checks the scale and runs the closed form (no plan)."""
    if not isinstance(angle_scale, torch.Tensor) or not angle_scale.is_floating_point():
        raise TypeError(f"angle_scale must be a floating-point tensor, got {angle_scale!r}")
    if backend not in ("auto", "closed_form"):
        raise RuntimeError(f"backend={backend!r}: calls with angle_scale run on the closed form; use 'auto'")
    if spec.is_identity:
        return x
    check_scaling_fits(spec.componentwise, spec.share_axis, scaling, angle=True)
    if angle_scale.shape not in ((), (spec.num_cones,)):
        raise ValueError(
            f"angle_scale has shape {tuple(angle_scale.shape)}; expected ({spec.num_cones},), one value per cone, "
            f"or () for all cones"
        )
    if angle_scale.device != x.device:
        raise ValueError(f"angle_scale is on {angle_scale.device} but the input on {x.device}; move one of them")
    return plans.run_scaled(x, dim, spec, scaling, eps, axis_activation, angle_scale)


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
    angle_scale: torch.Tensor | None = None,
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
        cone_dim: S, channels per group, at least 2. Give this or
            ``num_cones``, not both. Default: ``None`` (``cone_dim=4`` when
            ``num_cones`` is not given either).
        num_cones: G, the number of groups; ``0`` gives the identity. A single
            cone over all channels (``num_cones=1``) is the paper's axis
            sharing for RCoLU (:math:`e = (1, \dots, 1)/\sqrt{C}`).
            Default: ``None`` (follows from ``cone_dim`` and C).
        scaling: any of :func:`colu`'s; ``"exact"`` projects onto the cone
            around :math:`e` (moving :math:`t` too). Default: ``"hard"``.
        dim: the channel axis. Default: ``-1``.
        eps: numerical-stability constant, a finite number >= 0.
            Default: ``1e-7``.
        axis_activation: ``"identity"``, ``"relu"`` or ``"silu"`` applied to
            :math:`t`. Default: ``"identity"``.
        backend: force a backend (see :func:`colu`). Default: ``"auto"``.
        angle_scale: multiplies each group's :math:`r` (see :func:`colu`).
            Default: ``None``.

    Shape:
        - Input: :math:`(*, C, *)` with :math:`C = G S` at ``dim``.
        - Output: same shape, dtype and memory format as the input.

    Examples::

        >>> x = torch.randn(8, 12)
        >>> y = colu.rcolu(x, cone_dim=3)
    """
    if angle_scale is not None:
        _check_input(x, "rcolu")
        check_options(scaling, eps, axis_activation)
        dim = _channel_dim(x, dim)
        spec = ConeSpec.resolve(x.shape[dim], cone_dim, num_cones, kind="rcolu")
        return _with_angle_scale(x, dim, spec, scaling, eps, axis_activation, backend, angle_scale)
    call = ("rcolu", cone_dim, num_cones, scaling, dim, eps, axis_activation, type(cone_dim), type(num_cones), type(dim), type(eps))
    y, key = plans.replay(x, backend, call)
    if y is not None:
        return y
    _check_input(x, "rcolu")
    check_options(scaling, eps, axis_activation)
    return _resolve_and_run_rcolu(x, key, cone_dim, num_cones, scaling, dim, eps, axis_activation, backend)


def rcolu_for_module(x, call, cone_dim, num_cones, scaling, dim, eps, axis_activation):
    """:func:`rcolu` for validated argument values and their key (see :func:`colu_for_module`)."""
    y, key = plans.replay(x, "auto", call)
    if y is not None:
        return y
    _check_input(x, "rcolu")
    return _resolve_and_run_rcolu(x, key, cone_dim, num_cones, scaling, dim, eps, axis_activation, "auto")


def _resolve_and_run_rcolu(x, key, cone_dim, num_cones, scaling, dim, eps, axis_activation, backend):
    dim = _channel_dim(x, dim)
    spec = ConeSpec.resolve(x.shape[dim], cone_dim, num_cones, kind="rcolu")
    if spec.is_identity:
        return x
    return plans.run(key, x, dim, spec, scaling, eps, axis_activation, backend)


def potential(
    x: torch.Tensor,
    cone_dim: int | None = None,
    num_cones: int | None = None,
    *,
    layout: str = "grouped",
    dim: int = -1,
    rotated: bool = False,
) -> torch.Tensor:
    r"""The convex potential whose gradient is the exact cone projection: :math:`\nabla F = \pi_V`.

    .. math::
        F(x) = \tfrac12 \lVert x \rVert^2 - \tfrac12 \operatorname{dist}(x, V)^2
             = \tfrac12 \lVert \pi_V(x) \rVert^2

    (the two agree by Moreau's decomposition), summed over the cones of each
    position. :math:`\pi_V` is ``colu(x, ..., scaling="exact")`` (``rcolu``
    with ``rotated=True``). Because :math:`F` is convex, its Bregman
    divergence :math:`D_F(x, y) = F(x) - F(y) - \langle \pi_V(y), x - y\rangle
    \ge 0` is a matching loss for the projection (:func:`bregman_divergence`).

    Args:
        x: input tensor.
        cone_dim, num_cones, layout, dim: the cones, as in :func:`colu`.
        rotated: cones around the all-ones axis of each group, as in
            :func:`rcolu` (``layout`` is then ignored). Default: ``False``.

    Shape:
        - Input: :math:`(*, C, *)` with :math:`C` at ``dim``.
        - Output: the input's shape without ``dim``.

    Example::

        >>> x = torch.randn(8, 12, requires_grad=True)
        >>> colu.potential(x, cone_dim=4).sum().backward()
        >>> torch.allclose(x.grad, colu.colu(x, cone_dim=4, scaling="exact"))
        True
    """
    projected = _exact(x, cone_dim, num_cones, layout, dim, rotated)
    return 0.5 * (projected * projected).sum(dim)


def bregman_divergence(
    x: torch.Tensor,
    y: torch.Tensor,
    cone_dim: int | None = None,
    num_cones: int | None = None,
    *,
    layout: str = "grouped",
    dim: int = -1,
    rotated: bool = False,
) -> torch.Tensor:
    r""":math:`D_F(x, y) = F(x) - F(y) - \langle \nabla F(y), x - y \rangle \ge 0` for the
    :func:`potential` :math:`F` (same cone arguments), per position: the matching loss of the exact cone
    projection between pre-activations ``x`` and ``y``. Zero when both project to the same point and
    ``x - y`` is normal to the cone there (e.g. ``x == y``).

    Shape:
        - ``x``, ``y``: the same shape :math:`(*, C, *)`.
        - Output: that shape without ``dim``.
    """
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    py = _exact(y, cone_dim, num_cones, layout, dim, rotated)
    return potential(x, cone_dim, num_cones, layout=layout, dim=dim, rotated=rotated) - 0.5 * (py * py).sum(dim) - (
        py * (x - y)
    ).sum(dim)


def _exact(x, cone_dim, num_cones, layout, dim, rotated):
    if rotated:
        return rcolu(x, cone_dim, num_cones, scaling="exact", dim=dim)
    return colu(x, cone_dim, num_cones, scaling="exact", dim=dim, layout=layout)
