"""Functional interface: :func:`colu` and :func:`rcolu`.

This module holds the public functions, their documentation and their
argument checks. How a checked call is computed (the backends, the autograd
Functions, the cache that lets a repeated call skip all of this) is in
:mod:`colu.ops`: :mod:`colu.ops.plans` is the entry point.
"""

from __future__ import annotations

import torch

from . import reference
from .ops import plans
from .spec import AXIS_ACTIVATIONS, SCALINGS, ConeSpec, check_choice, check_eps

__all__ = ["colu", "rcolu"]


def _check_input(x, name):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} expects a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(
            f"{name} expects a floating-point tensor, got dtype={x.dtype}; convert it first, e.g. x.float()"
        )
    if x.dim() == 0:
        raise ValueError(f"{name} needs a channel axis, got a 0-dim tensor; reshape it to (1,) or (N, C)")


def _check_dim(dim) -> None:
    """``dim`` must be an int (not a bool); its range is checked against each input."""
    if not isinstance(dim, int) or isinstance(dim, bool):
        raise TypeError(f"dim must be an int, got {dim!r}")


def _channel_dim(x, dim):
    _check_dim(dim)
    ndim = x.dim()
    if not -ndim <= dim < ndim:
        raise IndexError(f"Dimension out of range (expected to be in range of [{-ndim}, {ndim - 1}], but got {dim})")
    return dim % ndim


def _check_options(scaling, eps, axis_activation):
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
        cone_dim: S, channels per cone including the axis, at least 2. Give
            this or ``num_cones``, not both. Default: ``None`` (``cone_dim=4``
            when ``num_cones`` is not given either).
        num_cones: G, the number of cones; ``0`` gives the identity.
            Default: ``None`` (follows from ``cone_dim`` and C).
        share_axis: share one axis (channel 0) among all cones; then
            :math:`C - 1 = G (S - 1)`, otherwise :math:`C = G S`.
            Default: ``False``.
        scaling: ``"hard"``, ``"soft"`` or ``"firm"``. Default: ``"hard"``.
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
        backend: ``"auto"`` or a backend name from
            :mod:`colu.ops.dispatch` to force one (``COLU_BACKEND`` does the
            same from the environment). Default: ``"auto"``.

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
    y, key = plans.replay(x, backend, call)
    if y is not None:
        return y
    _check_input(x, "colu")
    _check_options(scaling, eps, axis_activation)
    return _colu_checked(x, key, cone_dim, num_cones, share_axis, scaling, dim, eps, layout, axis_activation, backend)


def _colu_validated(x, call, cone_dim, num_cones, share_axis, scaling, dim, eps, layout, axis_activation):
    """:func:`colu` with ``backend="auto"`` for argument values validated beforehand (a :class:`~colu.CoLU`
    checks its own at construction): only what depends on ``x`` is checked.

    ``call`` names these arguments in plan keys (see :func:`colu.ops.plans.replay`). Unlike :func:`colu`'s
    own, it needs no argument types: valid values that compare equal (``eps=1`` and ``eps=1.0``) compute
    the same, and no call that the checks would reject gets here."""
    y, key = plans.replay(x, "auto", call)
    if y is not None:
        return y
    _check_input(x, "colu")
    return _colu_checked(x, key, cone_dim, num_cones, share_axis, scaling, dim, eps, layout, axis_activation, "auto")


def _colu_checked(x, key, cone_dim, num_cones, share_axis, scaling, dim, eps, layout, axis_activation, backend):
    """The rest of a cache miss once ``x`` and the option values are valid: the channel axis and the
    cone spec, which depend on ``x``'s shape."""
    dim = _channel_dim(x, dim)
    spec = ConeSpec.resolve(x.shape[dim], cone_dim, num_cones, share_axis=share_axis, layout=layout)
    if spec.is_identity:
        return x
    if spec.componentwise:
        return reference.componentwise(x, scaling)
    return plans.run(key, x, dim, spec, scaling, eps, axis_activation, backend)


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
        cone_dim: S, channels per group, at least 2. Give this or
            ``num_cones``, not both. Default: ``None`` (``cone_dim=4`` when
            ``num_cones`` is not given either).
        num_cones: G, the number of groups; ``0`` gives the identity. A single
            cone over all channels (``num_cones=1``) is the paper's axis
            sharing for RCoLU (:math:`e = (1, \dots, 1)/\sqrt{C}`).
            Default: ``None`` (follows from ``cone_dim`` and C).
        scaling: ``"hard"``, ``"soft"`` or ``"firm"``. Default: ``"hard"``.
        dim: the channel axis. Default: ``-1``.
        eps: numerical-stability constant, a finite number >= 0.
            Default: ``1e-7``.
        axis_activation: ``"identity"``, ``"relu"`` or ``"silu"`` applied to
            :math:`t`. Default: ``"identity"``.
        backend: force a backend (see :func:`colu`). Default: ``"auto"``.

    Shape:
        - Input: :math:`(*, C, *)` with :math:`C = G S` at ``dim``.
        - Output: same shape, dtype and memory format as the input.

    Examples::

        >>> x = torch.randn(8, 12)
        >>> y = colu.rcolu(x, cone_dim=3)
    """
    call = ("rcolu", cone_dim, num_cones, scaling, dim, eps, axis_activation, type(cone_dim), type(num_cones), type(dim), type(eps))
    y, key = plans.replay(x, backend, call)
    if y is not None:
        return y
    _check_input(x, "rcolu")
    _check_options(scaling, eps, axis_activation)
    return _rcolu_checked(x, key, cone_dim, num_cones, scaling, dim, eps, axis_activation, backend)


def _rcolu_validated(x, call, cone_dim, num_cones, scaling, dim, eps, axis_activation):
    """:func:`rcolu` for validated argument values and their key (see :func:`_colu_validated`)."""
    y, key = plans.replay(x, "auto", call)
    if y is not None:
        return y
    _check_input(x, "rcolu")
    return _rcolu_checked(x, key, cone_dim, num_cones, scaling, dim, eps, axis_activation, "auto")


def _rcolu_checked(x, key, cone_dim, num_cones, scaling, dim, eps, axis_activation, backend):
    dim = _channel_dim(x, dim)
    spec = ConeSpec.resolve(x.shape[dim], cone_dim, num_cones, kind="rcolu")
    if spec.is_identity:
        return x
    return plans.run(key, x, dim, spec, scaling, eps, axis_activation, backend)
