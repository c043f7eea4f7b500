"""The cone spec: how C channels split into cones.

Everything that needs to know which channel is an axis and which belongs to a
section (the reference, the kernels, the symmetry tools, the alignment code)
reads it from :class:`ConeSpec`, so the layout rules live here and nowhere else.

Layouts (``S`` = cone dimension, ``G`` = number of cones):

* ``"grouped"`` (paper eq. 3): cone ``g`` is channels ``g*S ... g*S+S-1``; its
  first channel is the axis, the other ``S-1`` its section.
* ``"axes_first"`` (the layout of the authors' JAX package): channels
  ``0 ... G-1`` are the axes, followed by ``G`` blocks of ``S-1`` section
  channels.
* ``share_axis=True`` (paper eq. 4), either layout: channel 0 is the one shared
  axis and cone ``g``'s section is channels ``1+g*(S-1) ... (g+1)*(S-1)``, so
  ``C - 1 = G*(S-1)``.

``kind="rcolu"`` (paper Section 3.4) has no axis channel: cone ``g`` is the
``S`` contiguous channels ``g*S ... g*S+S-1`` and its axis is the all-ones
direction inside them.

CoLU with ``S = 2`` has two readings: the paper's component-wise activation
(Section 3.2, the default; :attr:`ConeSpec.componentwise`) or, with
``componentwise=False`` (:attr:`ConeSpec.pair_cones`), two-dimensional cones
``{|s| <= a}`` over pairs of one axis and one section channel, as every other
cone (the JAX package's ``dim=2``).
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

SCALINGS = ("hard", "soft", "firm", "sqrt", "log", "exact")
"""Every weighting the op accepts: the paper's three, the JAX package's two non-projections and the exact
Lorentz-cone projection (see :func:`colu.colu`)."""
KERNEL_SCALINGS = ("hard", "soft", "firm", "sqrt", "log")
"""The weightings the fused kernels compute; the others run on the closed form on every device."""
LAYOUTS = ("grouped", "axes_first")
AXIS_ACTIVATIONS = ("identity", "relu", "silu")
KINDS = ("colu", "rcolu")
DEFAULT_CONE_DIM = 4


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_choice(name: str, value, choices) -> None:
    """Raise a ValueError naming ``value`` and the valid ``choices``."""
    if value not in choices:
        raise ValueError(f"unknown {name}={value!r}; expected one of {', '.join(map(repr, choices))}")


def check_eps(eps) -> None:
    """``eps`` must be a finite number >= 0 (it is added to a norm)."""
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not (0 <= eps < math.inf):
        raise ValueError(f"eps must be a finite number >= 0, got eps={eps!r}")


def check_flag(name: str, value) -> None:
    """A yes/no argument ``name`` must be a bool (numpy's too) or the int 1 or 0."""
    if not (isinstance(value, (bool, np.bool_)) or (_is_int(value) and value in (0, 1))):
        # a truthiness check would read share_axis="no" as True
        raise ValueError(f"{name} must be True or False (or 1/0), got {name}={value!r}")


def check_share_axis(share_axis) -> None:
    """``share_axis`` must be a bool (numpy's too) or the int 1 or 0."""
    check_flag("share_axis", share_axis)


def _nearby_widths(channels: int, step: int, offset: int = 0) -> str:
    """Valid widths of the form offset + k*step just below and above ``channels``."""
    below = offset + ((channels - offset) // step) * step
    above = below + step
    options = [c for c in (below, above) if c > offset and c != channels]
    return " or ".join(f"C={c}" for c in options) or f"C={offset + step}"


@dataclass(frozen=True)
class ConeSpec:
    """How ``channels`` channels split into ``num_cones`` cones of dimension ``cone_dim``.

    Build one with :meth:`ConeSpec.resolve`, which validates the arguments and
    fills in whichever of ``cone_dim``/``num_cones`` was not given.

    Attributes:
        channels: C, the size of the channel axis.
        num_cones: G; 0 means the activation is the identity.
        cone_dim: S, channels per cone including its axis (``None`` when G = 0).
        share_axis: one axis (channel 0) shared by all cones.
        layout: ``"grouped"`` or ``"axes_first"``.
        kind: ``"colu"`` (axis is a channel) or ``"rcolu"`` (axis is the
            all-ones direction of each group).
        pair_cones: CoLU with ``S = 2`` computed as two-dimensional cones
            (pairs of one axis and one section channel) instead of the
            component-wise activation. :meth:`resolve` sets it only for CoLU
            with ``S = 2`` and ``componentwise=False``; it is ``False`` for
            every other spec, where it would change nothing.
    """

    channels: int
    num_cones: int
    cone_dim: Optional[int]
    share_axis: bool = False
    layout: str = "grouped"
    kind: str = "colu"
    pair_cones: bool = False

    # ------------------------------------------------------------------ build
    @staticmethod
    def resolve(
        channels: int,
        cone_dim: Optional[int] = None,
        num_cones: Optional[int] = None,
        *,
        share_axis: bool = False,
        layout: str = "grouped",
        kind: str = "colu",
        componentwise: bool = True,
    ) -> "ConeSpec":
        """Validate a cone configuration for ``channels`` channels.

        Exactly one of ``cone_dim`` and ``num_cones`` may be given; with neither,
        ``cone_dim=4``. ``componentwise`` chooses the reading of CoLU cones with
        ``S = 2``: the paper's component-wise activation (``True``) or
        two-dimensional cones (``False``, :attr:`pair_cones`); it has no effect
        for ``S >= 3`` and for RCoLU. Raises ``ValueError`` naming the offending
        values and a valid alternative.
        """
        check_share_axis(share_axis)
        check_flag("componentwise", componentwise)
        args = (channels, cone_dim, num_cones, bool(share_axis), layout, kind, bool(componentwise))
        # torch.compile traces the plain function (the cache would only draw a warning there)
        return _resolve(*args) if torch.compiler.is_compiling() else _resolve_cached(*args)

    # ------------------------------------------------------------ properties
    @property
    def is_identity(self) -> bool:
        return self.num_cones == 0

    @property
    def section_dim(self) -> int:
        """S - 1, the number of section channels per cone."""
        return 0 if self.cone_dim is None else self.cone_dim - 1

    @property
    def num_axes(self) -> int:
        """Number of axis channels: G, or 1 with a shared axis, or 0 for RCoLU."""
        if self.kind == "rcolu":
            return 0
        return 1 if self.share_axis else self.num_cones

    @property
    def componentwise(self) -> bool:
        """CoLU with S = 2, which the paper (Section 3.2) defines as the component-wise activation
        (ReLU for hard, SiLU for soft scaling): every path computes it channel by channel and its
        symmetry group is Perm(C), not Perm(G) x O(1)^G. ``False`` for :attr:`pair_cones`, the
        two-dimensional cones that ``componentwise=False`` asks for."""
        return self.kind == "colu" and self.cone_dim == 2 and not self.pair_cones

    @property
    def contiguous(self) -> bool:
        """Cone ``g`` is the ``S`` consecutive channels ``g*S ... g*S+S-1``, axis first (always for
        RCoLU; for CoLU the grouped layout without a shared axis, or a single cone in any layout).
        The kernels' flat fast paths and RCoLU's group blocks rely on it."""
        if self.is_identity:
            return False
        if self.kind == "rcolu" or self.num_cones == 1:
            return True
        return self.layout == "grouped" and not self.share_axis

    def homogeneous_basis(self, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
        """RCoLU's cone geometry: an ``S x S`` orthonormal basis (columns) of one group whose first
        column is the homogeneous axis ``(1, ..., 1)/sqrt(S)``; the others span the section.

        RCoLU's output in these coordinates is CoLU's on ``x @ basis``, and its symmetry group acts as
        ``basis @ diag(1, Q) @ basis.T`` with ``Q`` in O(S-1).
        """
        if self.kind != "rcolu" or self.is_identity:
            raise ValueError(f"homogeneous_basis is RCoLU's geometry; {self} has none")
        return _homogeneous_basis(self.cone_dim).to(dtype=dtype, device=device)

    def channel_map(self):
        """``(axis_base, axis_step, section_base, section_step)``: every layout is affine in the cone index.

        Cone ``g``'s axis is channel ``axis_base + g * axis_step`` and its
        section channels are ``section_base + g * section_step + k`` for
        ``k < S - 1``. The kernels take these four numbers; the index helpers
        below are built from them.
        """
        self._require_axes()
        G, S = self.num_cones, self.cone_dim
        if self.share_axis:
            return 0, 0, 1, S - 1
        if self.layout == "grouped":
            return 0, S, 1, S
        return 0, 1, G, S - 1

    def axis_channels(self) -> torch.Tensor:
        """Channel index of each cone's axis, shape ``(G,)`` (all 0 with a shared axis)."""
        axis_base, axis_step, _, _ = self.channel_map()
        return axis_base + torch.arange(self.num_cones) * axis_step

    def section_channels(self) -> torch.Tensor:
        """Channel indices of each cone's section, shape ``(G, S-1)``."""
        _, _, section_base, section_step = self.channel_map()
        g = torch.arange(self.num_cones)[:, None]
        return section_base + g * section_step + torch.arange(self.cone_dim - 1)

    def cone_channels(self) -> torch.Tensor:
        """All channels of each cone, axis first, shape ``(G, S)``."""
        if self.kind == "rcolu":
            return torch.arange(self.num_cones * self.cone_dim).view(self.num_cones, self.cone_dim)
        return torch.cat([self.axis_channels()[:, None], self.section_channels()], dim=1)

    def _require_axes(self) -> None:
        if self.kind == "rcolu":
            raise ValueError("an RCoLU cone has no axis channel: its axis is the all-ones direction of each group")

    # ------------------------------------------------ split/merge (zero-copy)
    def split(self, x: torch.Tensor):
        """Split ``x`` with channels last into ``(axes, sections)``.

        ``axes`` has shape ``(..., num_axes)`` and ``sections`` shape
        ``(..., G, S-1)``; both are views whenever ``x`` is contiguous.
        """
        self._require_axes()
        lead = x.shape[:-1]
        G, S = self.num_cones, self.cone_dim
        if self.share_axis:
            return x[..., :1], x[..., 1:].reshape(*lead, G, S - 1)
        if self.layout == "grouped":
            cones = x.reshape(*lead, G, S)
            return cones[..., 0], cones[..., 1:]
        return x[..., :G], x[..., G:].reshape(*lead, G, S - 1)

    def merge(self, axes: torch.Tensor, sections: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`split`: a channels-last tensor of width C."""
        lead = sections.shape[:-2]
        if self.layout == "grouped" and not self.share_axis:
            return torch.cat([axes.unsqueeze(-1), sections], dim=-1).reshape(*lead, self.channels)
        return torch.cat([axes, sections.reshape(*lead, -1)], dim=-1)

    def __str__(self) -> str:
        if self.is_identity:
            return f"ConeSpec(C={self.channels}, identity)"
        extra = (", shared axis" if self.share_axis else "") + (", 2-D cones" if self.pair_cones else "")
        layout = "" if self.kind == "rcolu" else f", {self.layout}"
        return f"ConeSpec({self.kind}: C={self.channels}, G={self.num_cones}, S={self.cone_dim}{layout}{extra})"


@functools.lru_cache(maxsize=64)
def _homogeneous_basis_cached(S: int) -> torch.Tensor:
    m = torch.eye(S, dtype=torch.float64)
    m[:, 0] = 1.0
    q, _ = torch.linalg.qr(m)
    return q * torch.sign(q[0, 0])  # first column (1, ..., 1)/sqrt(S), not its negative


def _homogeneous_basis(S: int) -> torch.Tensor:
    return _homogeneous_basis_cached(S).clone()  # callers may write into it; the cached one stays intact


def validate_cone_args(cone_dim, num_cones) -> None:
    """Checks on ``cone_dim``/``num_cones`` that do not depend on the width C."""
    if cone_dim is not None and num_cones is not None:
        raise ValueError(
            f"give exactly one of cone_dim and num_cones, got cone_dim={cone_dim!r} and "
            f"num_cones={num_cones!r}; drop one (the other follows from the number of channels)"
        )
    if cone_dim is not None:
        if not _is_int(cone_dim):
            raise ValueError(f"cone_dim must be an int, got {cone_dim!r}")
        if cone_dim < 2:
            raise ValueError(
                f"cone_dim={cone_dim} is too small: a cone needs an axis and at least one section "
                f"channel, so cone_dim >= 2 (cone_dim=2 is the component-wise activation, or the "
                f"two-dimensional cone with componentwise=False; use num_cones=0 for the identity)"
            )
    if num_cones is not None:
        if not _is_int(num_cones):
            raise ValueError(f"num_cones must be an int, got {num_cones!r}")
        if num_cones < 0:
            raise ValueError(f"num_cones={num_cones} is negative; use num_cones >= 0 (0 is the identity)")


def _resolve(channels, cone_dim, num_cones, share_axis, layout, kind, componentwise=True) -> ConeSpec:
    check_choice("kind", kind, KINDS)
    check_choice("layout", layout, LAYOUTS)
    validate_cone_args(cone_dim, num_cones)
    if not _is_int(channels) or channels < 0:
        raise ValueError(f"the number of channels must be a non-negative int, got {channels!r}")
    if kind == "rcolu" and share_axis:
        raise ValueError(
            "RCoLU has no axis channel to share; for one cone over all C channels use num_cones=1"
        )
    if cone_dim is None and num_cones is None:
        cone_dim = DEFAULT_CONE_DIM

    def make(G, S):
        # pair_cones only where it changes something, so equal activations have equal specs
        pairs = not componentwise and kind == "colu" and G > 0 and S == 2
        return ConeSpec(channels, G, S if G > 0 else None, share_axis, layout, kind, pairs)

    if num_cones == 0:
        return make(0, None)

    if share_axis:
        sections = channels - 1
        if cone_dim is not None:
            if channels == 0 or sections % (cone_dim - 1):
                raise ValueError(
                    f"C={channels} does not fit shared-axis cones of cone_dim={cone_dim}: "
                    f"C - 1 must be divisible by cone_dim - 1 = {cone_dim - 1} "
                    f"(C = 1 + G*(S-1)); use {_nearby_widths(channels, cone_dim - 1, 1)}, "
                    f"or share_axis=False with C divisible by {cone_dim}"
                )
            return make(sections // (cone_dim - 1), cone_dim)
        if channels < 2 or sections % num_cones:
            raise ValueError(
                f"C={channels} does not fit {num_cones} shared-axis cones: C - 1 must be divisible by "
                f"num_cones={num_cones} (C = 1 + G*(S-1)); use "
                f"{_nearby_widths(channels, num_cones, 1)}, or give cone_dim instead"
            )
        return make(num_cones, sections // num_cones + 1)

    if cone_dim is not None:
        if channels % cone_dim:
            raise ValueError(
                f"C={channels} is not divisible by cone_dim={cone_dim}; use "
                f"{_nearby_widths(channels, cone_dim)}"
                + (
                    f", or share_axis=True with C = 1 + G*(S-1) (e.g. C={1 + (cone_dim - 1) * max(1, channels // cone_dim)})"
                    if kind == "colu"
                    else ""
                )
            )
        return make(channels // cone_dim, cone_dim)
    if channels % num_cones or channels // num_cones < 2:
        raise ValueError(
            f"C={channels} does not split into num_cones={num_cones} cones of at least 2 channels: "
            f"C must be a multiple of num_cones with C >= 2*num_cones; use "
            f"C={2 * num_cones if channels < 2 * num_cones else (channels // num_cones + 1) * num_cones}, "
            f"or give cone_dim instead"
        )
    return make(num_cones, channels // num_cones)


# typed: 4, 4.0, True and numpy's 4 are equal keys to a plain cache, so an accepted
# cone_dim=4 would let cone_dim=4.0 (or num_cones=True after num_cones=1) through
# unchecked; with the types in the key every new type goes through the checks.
_resolve_cached = functools.lru_cache(maxsize=1024, typed=True)(_resolve)
