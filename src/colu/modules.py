"""``torch.nn.Module`` wrappers: :class:`CoLU` and :class:`RCoLU`.

A module checks its arguments once, when it is built (and again when one of
them is assigned), and its forward calls the functional op through an entry
that checks only the input, so a layer's arguments are not re-validated on
every call.
"""

from __future__ import annotations

import torch
from torch import nn

from colu import functional
from colu.spec import LAYOUTS, ConeSpec, check_choice, check_flag, check_share_axis, validate_cone_args

LEARNABLE_ANGLES = (False, True, "per_cone", "shared")

__all__ = ["CoLU", "RCoLU"]


class _Option:
    """A constructor argument, read and assigned as an attribute; assigning one checks the module's
    arguments again, so the forward can rely on them."""

    def __init__(self, name):
        self.name = name

    def __get__(self, module, owner=None):
        if module is None:
            return self
        return module._options[self.name]

    def __set__(self, module, value):
        module._configure(**{**module._options, self.name: value})


class _ConeActivation(nn.Module):
    """What :class:`CoLU` and :class:`RCoLU` share: their constructor arguments (``_OPTIONS``, in the
    functional op's order) are attributes checked on assignment, and kept with the key that names them
    in the plan cache."""

    _KIND = ""  # names the module type in plan keys
    _OPTIONS: tuple = ()
    # options added after the first release -> the value that keeps what a module pickled without them computed
    _LATER_OPTIONS: dict = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in cls._OPTIONS:
            setattr(cls, name, _Option(name))

    def __setstate__(self, state):
        super().__setstate__(state)
        missing = {name: value for name, value in self._LATER_OPTIONS.items() if name not in self._options}
        if missing:  # a module pickled (torch.save of a whole model) before these options existed
            self._configure(**self._options, **missing)

    def _configure(self, **options):
        """Check every argument (all of ``_OPTIONS``, by name) and keep them."""
        validate_cone_args(options["cone_dim"], options["num_cones"])
        functional.check_options(options["scaling"], options["eps"], options["axis_activation"])
        functional.check_dim(options["dim"])
        functional.check_scaling_fits(self._componentwise(options), bool(options.get("share_axis")),
                                       options["scaling"], angle=getattr(self, "log_angle_scale", None) is not None)
        self._options = {name: options[name] for name in self._OPTIONS}
        self._args = tuple(self._options.values())
        self._call = (self._KIND, *self._args)

    def _componentwise(self, options) -> bool:
        """Whether these options make CoLU's component-wise case (``cone_dim=2`` without
        ``componentwise=False``; a ``num_cones`` split is known only with the input)."""
        return self._KIND == "CoLU" and options["cone_dim"] == 2 and bool(options.get("componentwise", True))

    def _init_angle(self, learnable_angle, channels) -> None:
        """The learnable cone angle: ``log_angle_scale`` (theta, one per cone or one shared), or ``None``."""
        # a bool or a name: 0 and 1 compare equal to False and True but would read as neither
        if not (isinstance(learnable_angle, bool) or learnable_angle in ("per_cone", "shared")):
            raise ValueError(f"learnable_angle={learnable_angle!r}; expected one of "
                             f"{', '.join(map(repr, LEARNABLE_ANGLES))}")
        if channels is not None and (not isinstance(channels, int) or isinstance(channels, bool) or channels < 1):
            raise ValueError(f"channels must be a positive int, got channels={channels!r}")
        if learnable_angle is False:
            self.register_parameter("log_angle_scale", None)
            return
        functional.check_scaling_fits(self._componentwise(self._options), False, self.scaling, angle=True)
        if learnable_angle == "shared":
            self.log_angle_scale = nn.Parameter(torch.zeros(()))
            return
        if channels is not None:
            kind = "rcolu" if self._KIND == "RCoLU" else "colu"
            extra = {} if kind == "rcolu" else {"share_axis": self.share_axis, "layout": self.layout,
                                                "componentwise": self.componentwise}
            num_cones = ConeSpec.resolve(channels, self.cone_dim, self.num_cones, kind=kind, **extra).num_cones
        elif self.num_cones is not None:
            num_cones = self.num_cones
        else:
            raise ValueError(
                f"learnable_angle={learnable_angle!r} holds one angle per cone, so the number of cones must be "
                f"known when the module is built: give num_cones=G, or channels=C with cone_dim, or use "
                f"learnable_angle='shared' for one angle"
            )
        self.log_angle_scale = nn.Parameter(torch.zeros(num_cones))

    @property
    def cone_angle(self) -> torch.Tensor | None:
        """Each cone's half-angle in degrees, ``atan(exp(theta))`` (45 for the paper's cone); ``None``
        without a learnable angle."""
        if self.log_angle_scale is None:
            return None
        return torch.rad2deg(torch.atan(self.log_angle_scale.detach().exp()))

    def _angle_repr(self) -> list:
        if self.log_angle_scale is None:
            return []
        shape = tuple(self.log_angle_scale.shape)
        return [f"learnable_angle={'shared' if not shape else 'per_cone'}"]


class CoLU(_ConeActivation):
    r"""Applies the Conic Linear Unit over the channel axis ``dim``.

    For each cone with axis value :math:`a` and section :math:`s`:

    .. math::
        a' = \phi(a), \quad r = \frac{a'}{\lVert s\rVert + \varepsilon}, \quad
        \mathrm{CoLU}(a, s) = (a',\; w(r)\, s)

    with :math:`w(r) = \min\{\max\{r, 0\}, 1\}` (``"hard"``),
    :math:`\mathrm{sigmoid}(r - 1/2)` (``"soft"``) or
    :math:`\mathrm{sigmoid}(4r - 2)` (``"firm"``), the JAX package's
    ``"sqrt"``/``"log"``, or the exact Lorentz-cone projection (``"exact"``).
    See :func:`colu.colu` for the layouts, axis sharing and the special cases
    (``cone_dim=2`` is component-wise unless ``componentwise=False``).

    The arguments are checked here; those that depend on the input (``dim``
    against its number of dimensions, the cone split against its width) are
    checked at the first call with each input shape.

    Args:
        cone_dim: S, channels per cone including its axis, at least 2. Give
            this or ``num_cones``, not both. Default: ``None`` (``cone_dim=4``
            when ``num_cones`` is not given either).
        num_cones: G, the number of cones (0: identity). Default: ``None``
            (follows from ``cone_dim`` and C).
        share_axis: all cones share channel 0 as their axis
            (:math:`C - 1 = G(S-1)`). Default: ``False``.
        scaling: ``"hard"``, ``"soft"``, ``"firm"``, ``"sqrt"``, ``"log"`` or
            ``"exact"`` (see :func:`colu.colu`). Default: ``"hard"``.
        dim: channel axis (``-1`` for ``(N, *, C)``, ``1`` for ``NCHW``).
            Default: ``-1``.
        eps: numerical-stability constant, a finite number >= 0.
            Default: ``1e-7``.
        layout: ``"grouped"`` or ``"axes_first"``. Default: ``"grouped"``.
        axis_activation: ``"identity"``, ``"relu"`` or ``"silu"``.
            Default: ``"identity"``.
        componentwise: ``True``: ``cone_dim=2`` is the paper's component-wise
            activation (ReLU, SiLU, :math:`x\,\mathrm{sigmoid}(4x)`);
            ``False``: it is the two-dimensional cone over pairs of one axis
            and one section channel, which takes every scaling and a learnable
            angle. No effect when :math:`S \ge 3`. Default: ``True``.
        learnable_angle: ``False``; ``True`` (or ``"per_cone"``): a parameter
            :math:`\theta_g` per cone, ``log_angle_scale``, that scales each
            cone's :math:`r` by :math:`e^{\theta_g}` (the cone's half-angle
            becomes :math:`\arctan e^{\theta_g}`; 0 is the paper's 45 degree
            cone; :attr:`cone_angle` reads them in degrees), trained with the
            network; ``"shared"``: one :math:`\theta` for all cones. Such a
            layer runs on the closed form. Only cones of equal angle may be
            permuted by its symmetries (:func:`colu.groups.group_of`).
            Not with ``"exact"``. Default: ``False``.
        channels: C, needed with a per-cone angle when ``num_cones`` is not
            given (to size the parameter). Default: ``None``.

    Shape:
        - Input: :math:`(*, C, *)`, :math:`C` at ``dim``.
        - Output: same shape as the input.

    Examples::

        >>> m = colu.CoLU(cone_dim=4)
        >>> y = m(torch.randn(32, 512))
        >>> conv_act = colu.CoLU(num_cones=8, scaling="soft", dim=1)
        >>> y = conv_act(torch.randn(2, 64, 8, 8))
        >>> pairs = colu.CoLU(cone_dim=2, componentwise=False)  # 256 two-dimensional cones
        >>> y = pairs(torch.randn(32, 512))
    """

    _KIND = "CoLU"
    _OPTIONS = ("cone_dim", "num_cones", "share_axis", "scaling", "dim", "eps", "layout", "axis_activation",
                "componentwise")
    _LATER_OPTIONS = {"componentwise": True}

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
        componentwise: bool = True,
        learnable_angle: bool | str = False,
        channels: int | None = None,
    ):
        super().__init__()
        self._configure(
            cone_dim=cone_dim, num_cones=num_cones, share_axis=share_axis, scaling=scaling, dim=dim, eps=eps,
            layout=layout, axis_activation=axis_activation, componentwise=componentwise,
        )
        self._init_angle(learnable_angle, channels)

    def _configure(self, **options):
        check_share_axis(options["share_axis"])
        check_flag("componentwise", options["componentwise"])
        check_choice("layout", options["layout"], LAYOUTS)
        super()._configure(**{**options, "share_axis": bool(options["share_axis"]),
                              "componentwise": bool(options["componentwise"])})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.log_angle_scale is not None:
            return functional.colu(x, **self._options, angle_scale=self.log_angle_scale.exp())
        return functional.colu_for_module(x, self._call, *self._args)

    def extra_repr(self) -> str:
        parts = []
        if self.num_cones is not None:
            parts.append(f"num_cones={self.num_cones}")
        else:
            parts.append(f"cone_dim={self.cone_dim if self.cone_dim is not None else 4}")
        if not self.componentwise:
            parts.append("componentwise=False")
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
        return ", ".join(parts + self._angle_repr())


class RCoLU(_ConeActivation):
    r"""Applies the rotated Conic Linear Unit (cones around the all-ones axis).

    For each group :math:`x` of :math:`S` contiguous channels, with
    :math:`e = (1,\dots,1)/\sqrt{S}`, :math:`t = x\cdot e`,
    :math:`x_\perp = x - t e` and :math:`t' = \phi(t)`:

    .. math::
        \mathrm{RCoLU}(x) = t' e + w\!\left(\frac{t'}{\lVert x_\perp\rVert + \varepsilon}\right) x_\perp

    See :func:`colu.rcolu` (including the note on the paper's eq. 5). The
    arguments are checked as :class:`CoLU`'s are.

    Args:
        cone_dim: S, channels per group, at least 2. Give this or
            ``num_cones``, not both. Default: ``None`` (``cone_dim=4`` when
            ``num_cones`` is not given either).
        num_cones: G, the number of groups (0: identity). Default: ``None``
            (follows from ``cone_dim`` and C).
        scaling: any of :func:`colu.rcolu`'s. Default: ``"hard"``.
        dim: channel axis. Default: ``-1``.
        eps: numerical-stability constant, a finite number >= 0.
            Default: ``1e-7``.
        axis_activation: ``"identity"``, ``"relu"`` or ``"silu"``.
            Default: ``"identity"``.
        learnable_angle: a learnable cone angle per group (``True`` or
            ``"per_cone"``) or one for all (``"shared"``), as in
            :class:`CoLU`. Default: ``False``.
        channels: C, to size a per-group angle when ``num_cones`` is not
            given. Default: ``None``.

    Shape:
        - Input: :math:`(*, C, *)`, :math:`C = GS` at ``dim``.
        - Output: same shape as the input.

    Examples::

        >>> m = colu.RCoLU(cone_dim=3)
        >>> y = m(torch.randn(32, 3))
    """

    _KIND = "RCoLU"
    _OPTIONS = ("cone_dim", "num_cones", "scaling", "dim", "eps", "axis_activation")

    def __init__(
        self,
        cone_dim: int | None = None,
        num_cones: int | None = None,
        *,
        scaling: str = "hard",
        dim: int = -1,
        eps: float = 1e-7,
        axis_activation: str = "identity",
        learnable_angle: bool | str = False,
        channels: int | None = None,
    ):
        super().__init__()
        self._configure(
            cone_dim=cone_dim, num_cones=num_cones, scaling=scaling, dim=dim, eps=eps, axis_activation=axis_activation
        )
        self._init_angle(learnable_angle, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.log_angle_scale is not None:
            return functional.rcolu(x, **self._options, angle_scale=self.log_angle_scale.exp())
        return functional.rcolu_for_module(x, self._call, *self._args)

    def extra_repr(self) -> str:
        size = f"num_cones={self.num_cones}" if self.num_cones is not None else f"cone_dim={self.cone_dim or 4}"
        parts = [size, f"scaling={self.scaling!r}", f"dim={self.dim}"]
        if self.axis_activation != "identity":
            parts.append(f"axis_activation={self.axis_activation!r}")
        if self.eps != 1e-7:
            parts.append(f"eps={self.eps}")
        return ", ".join(parts + self._angle_repr())
