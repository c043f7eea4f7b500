"""Activation specs: the one place where a string like ``colu:S=4,soft,share`` becomes a module.

Grammar: ``NAME`` or ``NAME:OPT,OPT,...``.

* ``relu``, ``silu``, ``gelu``, ``tanh``, ``identity``: component-wise, no options
  (except ``C=``).
* ``colu``: options ``S=int`` (cone dimension) or ``G=int`` (number of cones;
  ``G=0`` is the identity), ``hard`` (default) / ``soft`` / ``firm`` / ``sqrt`` /
  ``log`` (the JAX package's weightings) / ``exact`` (the exact Lorentz-cone
  projection), ``share`` (one shared axis, C - 1 = G(S - 1)),
  ``axis=relu|silu`` (activation on the axis; identity by default, as in the
  paper), ``learnable`` (a learnable cone angle per cone; ``learnable=shared``:
  one for all cones).
* ``rcolu``: ``S=`` or ``G=``, the scalings, ``learnable``.
* any of them: ``C=int`` pins the hidden width, overriding the experiment's.

A spec does not know the width of the layer it will sit in; experiments pick
the width (:meth:`ActivationSpec.fit_width` or
:meth:`ActivationSpec.paper_width`) and then call :meth:`ActivationSpec.build`
with it and the channel axis (``dim=1`` for ``NCHW`` images).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import nn

import colu
from colu.spec import ConeSpec

COMPONENTWISE = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU, "tanh": nn.Tanh, "identity": nn.Identity}
CONIC = ("colu", "rcolu")
NAMES = tuple(COMPONENTWISE) + CONIC
SCALING_FLAGS = ("hard", "soft", "firm", "sqrt", "log", "exact")
EXAMPLES = ("relu, silu, gelu, identity, colu:S=4, colu:S=4,soft,share, colu:G=50,soft, rcolu:S=3, "
            "colu:S=4,exact, colu:S=4,learnable")


def _options_for(name: str) -> str:
    if name == "colu":
        return ("S=<int>, G=<int>, hard, soft, firm, sqrt, log, exact, share, axis=relu|silu, learnable, "
                "learnable=shared, C=<int>")
    if name == "rcolu":
        return "S=<int>, G=<int>, hard, soft, firm, sqrt, log, exact, learnable, learnable=shared, C=<int>"
    return "C=<int>"


@dataclass(frozen=True)
class ActivationSpec:
    """A parsed activation spec; :meth:`label` is its canonical string form."""

    name: str
    cone_dim: Optional[int] = None
    num_cones: Optional[int] = None
    scaling: str = "hard"
    share_axis: bool = False
    axis_activation: str = "identity"
    width: Optional[int] = None
    learnable_angle: object = False  # False, True (one angle per cone) or "shared"

    @property
    def conic(self) -> bool:
        return self.name in CONIC and self.num_cones != 0

    def label(self) -> str:
        """Canonical spec string: parse(spec.label()) == spec, and equal specs print equally."""
        opts = []
        if self.cone_dim is not None:
            opts.append(f"S={self.cone_dim}")
        if self.num_cones is not None:
            opts.append(f"G={self.num_cones}")
        if self.name in CONIC and self.scaling != "hard":
            opts.append(self.scaling)
        if self.share_axis:
            opts.append("share")
        if self.axis_activation != "identity":
            opts.append(f"axis={self.axis_activation}")
        if self.learnable_angle:
            opts.append("learnable" if self.learnable_angle is True else f"learnable={self.learnable_angle}")
        if self.width is not None:
            opts.append(f"C={self.width}")
        return self.name + (":" + ",".join(opts) if opts else "")

    __str__ = label

    # -------------------------------------------------------------- widths
    def check_width(self, channels: int) -> None:
        """Raise ValueError (from :class:`colu.ConeSpec`) if the cones do not tile ``channels``."""
        if self.name in CONIC:
            ConeSpec.resolve(
                channels, self.cone_dim, self.num_cones, share_axis=self.share_axis,
                kind=self.name,
            )

    def fit_width(self, base: int) -> int:
        """The pinned width ``C=`` if given, else the largest valid width <= ``base``.

        For example ``colu:S=4,share`` at base 512 gives 511 (511 - 1 = 170 * 3),
        the paper's Table 3 width.
        """
        if self.width is not None:
            self.check_width(self.width)
            return self.width
        for channels in range(base, 0, -1):
            try:
                self.check_width(channels)
                return channels
            except ValueError:
                continue
        raise ValueError(f"activation {self.label()!r}: no valid width <= {base}; pin one with C=<int>")

    def paper_width(self, sections: int) -> int:
        """The VAE width rule of Appendix D.1 for ``sections`` = G(S - 1) non-axis channels.

        Shared axis (and component-wise activations): C = sections + 1 (2401 for
        2400). Separate axes: C = sections + G (2400 + G), so S is the same as with
        a shared axis. ``C=`` overrides.
        """
        if self.width is not None:
            self.check_width(self.width)
            return self.width
        if not self.conic or self.share_axis:
            channels = sections + 1
        else:
            groups = self.num_cones
            if groups is None:
                if sections % (self.cone_dim - 1):
                    raise ValueError(
                        f"activation {self.label()!r}: S-1={self.cone_dim - 1} does not divide {sections}; "
                        "give G=<int> or C=<int> instead"
                    )
                groups = sections // (self.cone_dim - 1)
            channels = sections + groups
        self.check_width(channels)
        return channels

    # --------------------------------------------------------------- build
    def build(self, channels: int, dim: int = -1) -> nn.Module:
        """The activation module for a hidden layer of width ``channels`` (validated first).

        ``dim`` is the channel axis the cones tile: -1 (default) for ``(N, *, C)``
        features, 1 for ``NCHW`` images. Component-wise activations ignore it.
        """
        self.check_width(channels)
        if self.name in COMPONENTWISE:
            return COMPONENTWISE[self.name]()
        angle = {"learnable_angle": self.learnable_angle, "channels": channels} if self.learnable_angle else {}
        if self.name == "colu":
            return colu.CoLU(
                self.cone_dim, self.num_cones, share_axis=self.share_axis, scaling=self.scaling,
                axis_activation=self.axis_activation, dim=dim, **angle,
            )
        return colu.RCoLU(self.cone_dim, self.num_cones, scaling=self.scaling, dim=dim, **angle)

    def factory(self, base: int, dim: int = -1):
        """``(C, make)``: the fitted width and a zero-argument module constructor (channel axis ``dim``)."""
        channels = self.fit_width(base)
        return channels, lambda: self.build(channels, dim=dim)


def _positive_int(token: str, key: str, value: str, spec: str, allow_zero: bool = False) -> int:
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or number < (0 if allow_zero else 1):
        bound = ">= 0" if allow_zero else ">= 1"
        raise ValueError(f"activation spec {spec!r}: {token!r} needs an integer {bound}, e.g. {key}=4")
    return number


def parse_activation(spec) -> ActivationSpec:
    """Parse a spec string (or pass an :class:`ActivationSpec` through).

    Raises ValueError naming the bad token and listing the valid names or
    options.
    """
    if isinstance(spec, ActivationSpec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"activation spec must be a non-empty string like {EXAMPLES}; got {spec!r}")
    text = spec.strip()
    name, _, rest = text.partition(":")
    name = name.strip().lower()
    if name not in NAMES:
        raise ValueError(f"activation spec {spec!r}: unknown name {name!r}; valid names: {', '.join(NAMES)} "
                         f"(examples: {EXAMPLES})")
    fields = {}
    scalings = []
    if rest.strip() == "" and ":" in text:
        raise ValueError(f"activation spec {spec!r}: empty option list after ':'; options for {name}: "
                         f"{_options_for(name)}")
    for raw in rest.split(",") if rest.strip() else []:
        token = raw.strip()
        key, eq, value = token.partition("=")
        key_l = key.strip()
        if not token:
            raise ValueError(f"activation spec {spec!r}: empty option (stray comma?); options for {name}: "
                             f"{_options_for(name)}")
        allowed = name in CONIC or key_l == "C"
        if eq and key_l in ("S", "G", "C") and allowed and (key_l == "C" or name in CONIC):
            if key_l in fields:
                raise ValueError(f"activation spec {spec!r}: option {key_l} given twice")
            fields[key_l] = _positive_int(token, key_l, value.strip(), spec, allow_zero=(key_l == "G"))
        elif eq and key_l == "axis" and name == "colu":
            if value.strip() not in ("relu", "silu", "identity"):
                raise ValueError(f"activation spec {spec!r}: {token!r}; axis must be relu, silu or identity")
            fields["axis"] = value.strip()
        elif not eq and token in SCALING_FLAGS and name in CONIC:
            scalings.append(token)
        elif not eq and token == "share" and name == "colu":
            fields["share"] = True
        elif key_l == "learnable" and name in CONIC and (not eq or value.strip() in ("shared", "per_cone")):
            if "learnable" in fields:
                raise ValueError(f"activation spec {spec!r}: option learnable given twice")
            fields["learnable"] = True if not eq or value.strip() == "per_cone" else "shared"
        else:
            raise ValueError(f"activation spec {spec!r}: unknown option {token!r} for {name}; "
                             f"valid options: {_options_for(name)}")
    if len(scalings) > 1:
        raise ValueError(f"activation spec {spec!r}: conflicting scalings {', '.join(scalings)}; pick one of "
                         f"{', '.join(SCALING_FLAGS)}")
    if "S" in fields and "G" in fields:
        raise ValueError(f"activation spec {spec!r}: give S=<int> or G=<int>, not both "
                         "(the other follows from the width)")
    if name in CONIC and "S" not in fields and "G" not in fields:
        raise ValueError(f"activation spec {spec!r}: {name} needs S=<int> (cone dimension) or G=<int> "
                         f"(number of cones), e.g. {name}:S=4")
    if fields.get("S") == 1:
        raise ValueError(f"activation spec {spec!r}: S=1 is not a cone; use S>=2")
    scaling = scalings[0] if scalings else "hard"
    if name == "colu" and fields.get("S") == 2 and (scaling not in ("hard", "soft", "firm") or "learnable" in fields):
        raise ValueError(f"activation spec {spec!r}: S=2 is the component-wise activation (hard, soft or firm, "
                         f"no cone angle); use S>=3")
    if scaling == "exact" and (fields.get("share") or "learnable" in fields):
        raise ValueError(f"activation spec {spec!r}: exact moves each cone's axis and has no weighting to "
                         f"scale, so it takes neither share nor learnable")
    return ActivationSpec(
        name=name,
        cone_dim=fields.get("S"),
        num_cones=fields.get("G"),
        scaling=scaling,
        share_axis=fields.get("share", False),
        axis_activation=fields.get("axis", "identity"),
        width=fields.get("C"),
        learnable_angle=fields.get("learnable", False),
    )


def parse_activations(specs) -> list[ActivationSpec]:
    """Parse a list of specs, rejecting duplicates (same canonical label)."""
    parsed = [parse_activation(s) for s in specs]
    labels = [p.label() for p in parsed]
    dupes = sorted({lab for lab in labels if labels.count(lab) > 1})
    if dupes:
        raise ValueError(f"activation specs repeat {', '.join(dupes)}; list each once")
    return parsed
