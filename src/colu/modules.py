"""``torch.nn.Module`` wrappers: :class:`CoLU` and :class:`RCoLU`."""

from __future__ import annotations

import torch
from torch import nn

from . import functional
from .spec import AXIS_ACTIVATIONS, LAYOUTS, SCALINGS, check_choice, check_eps, validate_cone_args

__all__ = ["CoLU", "RCoLU"]


def _check_common(cone_dim, num_cones, scaling, eps, axis_activation):
    validate_cone_args(cone_dim, num_cones)
    check_choice("scaling", scaling, SCALINGS)
    check_choice("axis_activation", axis_activation, AXIS_ACTIVATIONS)
    check_eps(eps)


class CoLU(nn.Module):
    r"""Applies the Conic Linear Unit over the channel axis ``dim``.

    For each cone with axis value :math:`a` and section :math:`s`:

    .. math::
        a' = \phi(a), \quad r = \frac{a'}{\lVert s\rVert + \varepsilon}, \quad
        \mathrm{CoLU}(a, s) = (a',\; w(r)\, s)

    with :math:`w(r) = \min\{\max\{r, 0\}, 1\}` (``"hard"``),
    :math:`\mathrm{sigmoid}(r - 1/2)` (``"soft"``) or
    :math:`\mathrm{sigmoid}(4r - 2)` (``"firm"``). See :func:`colu.colu` for
    the layouts, axis sharing and the special cases.

    Args:
        cone_dim: S, channels per cone including its axis (default 4 when
            ``num_cones`` is not given either).
        num_cones: G, the number of cones (0: identity). Give one of the two.
        share_axis: all cones share channel 0 as their axis
            (:math:`C - 1 = G(S-1)`).
        scaling: ``"hard"``, ``"soft"`` or ``"firm"``.
        dim: channel axis (``-1`` for ``(N, *, C)``, ``1`` for ``NCHW``).
        eps: numerical-stability constant.
        layout: ``"grouped"`` or ``"axes_first"``.
        axis_activation: ``"identity"``, ``"relu"`` or ``"silu"``.

    Shape:
        - Input: :math:`(*, C, *)`, :math:`C` at ``dim``.
        - Output: same shape as the input.

    Examples::

        >>> m = colu.CoLU(cone_dim=4)
        >>> y = m(torch.randn(32, 512))
        >>> conv_act = colu.CoLU(num_cones=8, scaling="soft", dim=1)
        >>> y = conv_act(torch.randn(2, 64, 8, 8))
    """

    def __init__(
        self,
        cone_dim: int | None = None,
        num_cones: int | None = None,
        *,
        share_axis: bool = False,
        scaling: str = "hard",
        dim: int = -1,
        eps: float = 1e-7,
        layout: str = "grouped",
        axis_activation: str = "identity",
    ):
        super().__init__()
        _check_common(cone_dim, num_cones, scaling, eps, axis_activation)
        check_choice("layout", layout, LAYOUTS)
        self.cone_dim = cone_dim
        self.num_cones = num_cones
        self.share_axis = bool(share_axis)
        self.scaling = scaling
        self.dim = dim
        self.eps = eps
        self.layout = layout
        self.axis_activation = axis_activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional.colu(
            x,
            self.cone_dim,
            self.num_cones,
            share_axis=self.share_axis,
            scaling=self.scaling,
            dim=self.dim,
            eps=self.eps,
            layout=self.layout,
            axis_activation=self.axis_activation,
        )

    def extra_repr(self) -> str:
        parts = []
        if self.num_cones is not None:
            parts.append(f"num_cones={self.num_cones}")
        else:
            parts.append(f"cone_dim={self.cone_dim if self.cone_dim is not None else 4}")
        if self.share_axis:
            parts.append("share_axis=True")
        parts.append(f"scaling={self.scaling!r}")
        parts.append(f"dim={self.dim}")
        if self.layout != "grouped":
            parts.append(f"layout={self.layout!r}")
        if self.axis_activation != "identity":
            parts.append(f"axis_activation={self.axis_activation!r}")
        if self.eps != 1e-7:
            parts.append(f"eps={self.eps}")
        return ", ".join(parts)


class RCoLU(nn.Module):
    r"""Applies the rotated Conic Linear Unit (cones around the all-ones axis).

    For each group :math:`x` of :math:`S` contiguous channels, with
    :math:`e = (1,\dots,1)/\sqrt{S}`, :math:`t = x\cdot e`,
    :math:`x_\perp = x - t e` and :math:`t' = \phi(t)`:

    .. math::
        \mathrm{RCoLU}(x) = t' e + w\!\left(\frac{t'}{\lVert x_\perp\rVert + \varepsilon}\right) x_\perp

    See :func:`colu.rcolu` (including the note on the paper's eq. 5).

    Args:
        cone_dim: S, channels per group (default 4 when ``num_cones`` is not
            given either).
        num_cones: G, the number of groups (0: identity). Give one of the two.
        scaling: ``"hard"``, ``"soft"`` or ``"firm"``.
        dim: channel axis.
        eps: numerical-stability constant.
        axis_activation: ``"identity"``, ``"relu"`` or ``"silu"``.

    Shape:
        - Input: :math:`(*, C, *)`, :math:`C = GS` at ``dim``.
        - Output: same shape as the input.

    Examples::

        >>> m = colu.RCoLU(cone_dim=3)
        >>> y = m(torch.randn(32, 3))
    """

    def __init__(
        self,
        cone_dim: int | None = None,
        num_cones: int | None = None,
        *,
        scaling: str = "hard",
        dim: int = -1,
        eps: float = 1e-7,
        axis_activation: str = "identity",
    ):
        super().__init__()
        _check_common(cone_dim, num_cones, scaling, eps, axis_activation)
        self.cone_dim = cone_dim
        self.num_cones = num_cones
        self.scaling = scaling
        self.dim = dim
        self.eps = eps
        self.axis_activation = axis_activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional.rcolu(
            x,
            self.cone_dim,
            self.num_cones,
            scaling=self.scaling,
            dim=self.dim,
            eps=self.eps,
            axis_activation=self.axis_activation,
        )

    def extra_repr(self) -> str:
        size = f"num_cones={self.num_cones}" if self.num_cones is not None else f"cone_dim={self.cone_dim or 4}"
        parts = [size, f"scaling={self.scaling!r}", f"dim={self.dim}"]
        if self.axis_activation != "identity":
            parts.append(f"axis_activation={self.axis_activation!r}")
        if self.eps != 1e-7:
            parts.append(f"eps={self.eps}")
        return ", ".join(parts)
