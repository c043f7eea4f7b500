"""Symmetry groups of activations: which group, a random element, the best element for alignment.

An activation ``act`` on C channels commutes with every matrix ``P`` of its
isometric symmetry group, ``act(x @ P.T) == act(x) @ P.T``. The groups, named
by their ``kind``:

* ``"colu"``: Perm(G) x O(S-1)^G (paper Theorem 4.7): permute whole cones,
  rotate or reflect each section; with a shared axis the axis stays fixed.
* ``"rcolu"``: permutations of the groups of S channels times, inside each,
  the rotations fixing its all-ones axis (``ConeSpec.homogeneous_basis``).
* ``"permutation"``: Perm(C), the group of every component-wise activation
  (paper Corollary 4.6), CoLU with S = 2 included (``ConeSpec.componentwise``).
  Also named ``"relu"``, ``"componentwise"`` or ``"perm"``. CoLU with S = 2
  and ``componentwise=False`` (two-dimensional cones, ``ConeSpec.pair_cones``)
  has the ``"colu"`` group with S - 1 = 1: Perm(G) x O(1)^G, permutations of
  the cones and a sign flip of each one-channel section.
* ``"orthogonal"``: O(C), the group of the identity (no activation,
  ``nn.Identity``, ``num_cones=0``). Also named ``"identity"``.

:func:`group_of` finds the :class:`Group` of an activation module (or a
:class:`~colu.ConeSpec`, or a name) at a width; :meth:`Group.sample` draws a
random element (:mod:`colu.symmetry` uses it) and :meth:`Group.solve` the
element best aligning two models (:mod:`colu.align` uses it).

scipy (for the Hungarian algorithm) is imported only when a permutation is solved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from colu.modules import CoLU, RCoLU
from colu.spec import KINDS as CONE_KINDS
from colu.spec import ConeSpec

__all__ = [
    "COMPONENTWISE",
    "EVAL_IDENTITY",
    "KINDS",
    "Group",
    "UnknownGroupError",
    "angle_classes",
    "canonical_classes",
    "group_kind",
    "group_of",
    "is_group_name",
    "procrustes",
    "random_orthogonal",
]

KINDS = CONE_KINDS + ("permutation", "orthogonal")

# Names of the groups that need no cone configuration (lower case) -> their kind.
_NAMES = {
    "permutation": "permutation", "perm": "permutation", "componentwise": "permutation", "relu": "permutation",
    "orthogonal": "orthogonal", "identity": "orthogonal",
}

# Torch modules that act channel by channel with the same function on every channel: their isometric
# symmetry group is Perm(C) (paper Corollary 4.6). nn.PReLU qualifies only with one shared slope, so
# group_of checks it apart.
COMPONENTWISE = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softsign, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid,
    nn.Hardshrink, nn.Softshrink, nn.Tanhshrink, nn.LogSigmoid, nn.Threshold,
)
# Modules that are the identity in evaluation mode, where models are compared, so their group is O(C);
# nn.Dropout is random in training mode, where no group element keeps its output.
EVAL_IDENTITY = (nn.Identity, nn.Dropout)
_RANDOM_IN_TRAINING = (nn.Dropout,)


class UnknownGroupError(TypeError, ValueError):
    """The symmetry group of an activation is not known here.

    A ``TypeError`` (the activation's type is the problem) and, like every
    other bad argument of the alignment functions, a ``ValueError``.
    """


def group_kind(name: str) -> str:
    """The kind (one of :data:`KINDS`) that ``name`` stands for; case does not matter.

    Args:
        name: a kind or another name of one (``"relu"``, ``"componentwise"``,
            ``"perm"``, ``"identity"``).

    Raises:
        ValueError: naming ``name`` and the valid names.
    """
    key = name.lower() if isinstance(name, str) else None
    if key in CONE_KINDS:
        return key
    if key in _NAMES:
        return _NAMES[key]
    raise ValueError(f"unknown kind={name!r}; expected one of {', '.join(map(repr, CONE_KINDS + tuple(_NAMES)))}")


def is_group_name(name: Any) -> bool:
    """Whether ``name`` is a string that names a group on its own: ``"permutation"``, ``"orthogonal"``
    or another name of theirs (a cone group needs its cones as well)."""
    return isinstance(name, str) and name.lower() in _NAMES


def random_orthogonal(n: int, *, generator: Optional[torch.Generator] = None, dtype=torch.float64) -> torch.Tensor:
    """A Haar-random ``n x n`` orthogonal matrix (QR of a Gaussian with the sign fix).

    Args:
        n: the size.
        generator: the random source (default: torch's global one).
        dtype: of the result (default float64; it is drawn in float64).
    """
    if n == 0:
        return torch.zeros(0, 0, dtype=dtype)
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    # without the sign fix QR is not Haar-distributed
    q = q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones(n, dtype=torch.float64))
    return q.to(dtype)


def procrustes(corr: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The orthogonal ``R`` maximising ``<R, corr> = tr(R^T corr)`` and that maximum.

    ``corr = U diag(s) V^T`` gives ``R = U V^T`` with value ``sum(s)`` (the
    nuclear norm): the orthogonal Procrustes solution.
    """
    if corr.shape[0] == 0:
        return corr.new_zeros(0, 0), 0.0
    u, s, vh = torch.linalg.svd(corr.double())
    return u @ vh, float(s.sum())


def _hungarian(score: torch.Tensor) -> torch.Tensor:
    """Column matched to each row by a maximum-weight perfect matching."""
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError as err:  # pragma: no cover - scipy is in the tools extra
        raise ImportError(
            "solving a permutation needs scipy for the Hungarian algorithm; install it with "
            "pip install scipy (or pip install 'colu[tools]')"
        ) from err
    rows, cols = linear_sum_assignment(score.detach().cpu().double().numpy(), maximize=True)
    match = torch.empty(score.shape[0], dtype=torch.long)
    match[torch.as_tensor(rows)] = torch.as_tensor(cols)
    return match


@dataclass(frozen=True)
class Group:
    """The isometric symmetry group of an activation on ``channels`` channels.

    Build one with :func:`group_of`. Its elements are ``C x C`` orthogonal
    matrices ``P`` with ``act(x @ P.T) == act(x) @ P.T``.

    Attributes:
        kind: one of :data:`KINDS`.
        channels: C.
        cone: the :class:`~colu.ConeSpec` of a ``"colu"`` or ``"rcolu"`` group
            (default ``None``, for the other kinds).
        cone_classes: for cones of unequal angles (a learnable angle per
            cone), a class label per cone, numbered in order of first
            appearance: only cones of one class may be permuted, so the group
            is the product over classes of Perm(class) x O(S-1)^class. Default
            ``None``: one class, every permutation of the cones.
    """

    kind: str
    channels: int
    cone: Optional[ConeSpec] = None
    cone_classes: Optional[tuple] = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind={self.kind!r}; expected one of {', '.join(map(repr, KINDS))}")
        if (self.cone is not None) != (self.kind in CONE_KINDS):
            raise ValueError(f"a {self.kind!r} group needs a cone spec exactly when its kind is 'colu' or 'rcolu'; "
                             f"got cone={self.cone}")
        if self.cone_classes is not None:
            if self.cone is None or len(self.cone_classes) != self.cone.num_cones:
                raise ValueError(f"cone_classes needs one label per cone of a cone group; got {self.cone_classes} "
                                 f"for {self.cone}")
            if tuple(self.cone_classes) != canonical_classes(self.cone_classes):
                raise ValueError(f"cone_classes must be numbered in order of first appearance (see "
                                 f"canonical_classes), got {self.cone_classes}")

    def _class_members(self) -> list:
        """The cone indices of each class (all cones in one when there are no classes)."""
        G = self.cone.num_cones
        if self.cone_classes is None:
            return [list(range(G))]
        members: dict = {}
        for g, label in enumerate(self.cone_classes):
            members.setdefault(label, []).append(g)
        return list(members.values())

    def sample(self, generator: Optional[torch.Generator] = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """A random element: random permutations and Haar-random orthogonal blocks.

        Args:
            generator: the random source (default: torch's global one).
            dtype: of the ``C x C`` result (default float64).
        """
        C = self.channels
        if self.kind == "orthogonal":
            return random_orthogonal(C, generator=generator, dtype=dtype)
        if self.kind == "permutation":
            return torch.eye(C, dtype=dtype)[torch.randperm(C, generator=generator)]
        G, S = self.cone.num_cones, self.cone.cone_dim
        perm = list(range(G))
        for members in self._class_members():  # cones move only within their class
            for g, k in zip(members, torch.randperm(len(members), generator=generator).tolist()):
                perm[g] = members[k]
        blocks = [(perm[g], g, random_orthogonal(S - 1, generator=generator)) for g in range(G)]
        return self._from_cone_blocks(blocks).to(dtype)

    def solve(self, corr: torch.Tensor) -> tuple[torch.Tensor, float]:
        """``argmax_P <P, corr>`` over the group and its value.

        ``corr[i, j]`` is the correlation of channel ``i`` of model A with
        channel ``j`` of model B; ``P`` (float64, ``C x C``) moves B onto A:
        ``P @ x_B`` is compared with ``x_A``.

        Permutations by the Hungarian algorithm; O(C) by orthogonal
        Procrustes; for cones the score of matching cone ``g`` of A to cone
        ``h`` of B is their axis correlation plus the value of the best
        section rotation (Procrustes), and the Hungarian algorithm on these
        ``G x G`` scores picks the cone permutation (within each class of
        ``cone_classes``).
        """
        C = self.channels
        corr = corr.double()
        if corr.shape != (C, C):
            raise ValueError(f"{self}: expected a {C}x{C} cross-correlation, got shape {tuple(corr.shape)}")
        if self.kind == "orthogonal":
            return procrustes(corr)
        if self.kind == "permutation":
            match = _hungarian(corr)
            P = torch.zeros(C, C, dtype=torch.float64)
            P[torch.arange(C), match] = 1.0
            return P, float(corr[torch.arange(C), match].sum())
        return self._solve_cones(corr)

    def _cone_blocks(self, corr: torch.Tensor):
        """For cones ``g`` of A and ``h`` of B: ``(axis correlation, section cross-correlation)``,
        and the correlation of what no element moves (the shared axis)."""
        spec = self.cone
        if spec.kind == "rcolu":
            basis, cones = spec.homogeneous_basis(), spec.cone_channels()

            def blocks(g, h):
                # in the basis (e, e_perp) the group acts as diag(1, R), R in O(S-1)
                block = basis.T @ corr[cones[g][:, None], cones[h]] @ basis
                return block[0, 0], block[1:, 1:]

            return blocks, 0.0
        axes, sections = spec.axis_channels(), spec.section_channels()

        def blocks(g, h):
            axis = 0.0 if spec.share_axis else corr[axes[g], axes[h]]
            return axis, corr[sections[g][:, None], sections[h]]

        return blocks, float(corr[0, 0]) if spec.share_axis else 0.0

    def _solve_cones(self, corr: torch.Tensor) -> tuple[torch.Tensor, float]:
        G = self.cone.num_cones
        blocks, total = self._cone_blocks(corr)
        # score[g, h]: value of matching cone g of A to cone h of B with the best section rotation
        score = torch.zeros(G, G, dtype=torch.float64)
        rotations = {}
        for g in range(G):
            for h in range(G):
                axis, section = blocks(g, h)
                rotations[g, h], value = procrustes(section)
                score[g, h] = value + axis
        match = list(range(G))
        for members in self._class_members():
            if len(members) > 1:
                idx = torch.tensor(members)
                for g, k in zip(members, _hungarian(score[idx[:, None], idx]).tolist()):
                    match[g] = members[k]
        for g in range(G):
            total += float(score[g, match[g]])
        return self._from_cone_blocks([(g, match[g], rotations[g, match[g]]) for g in range(G)]), total

    def _from_cone_blocks(self, blocks) -> torch.Tensor:
        """The float64 element sending cone ``h`` to cone ``g`` with section rotation ``R``, for each
        ``(g, h, R)`` of ``blocks`` (one per cone)."""
        spec, C = self.cone, self.channels
        P = torch.zeros(C, C, dtype=torch.float64)
        if spec.kind == "rcolu":
            basis, cones = spec.homogeneous_basis(), spec.cone_channels()
            for g, h, R in blocks:
                inner = torch.eye(spec.cone_dim, dtype=torch.float64)
                inner[1:, 1:] = R
                P[cones[g][:, None], cones[h]] = basis @ inner @ basis.T
            return P
        axes, sections = spec.axis_channels(), spec.section_channels()
        if spec.share_axis:
            P[0, 0] = 1.0
        for g, h, R in blocks:
            if not spec.share_axis:
                P[axes[g], axes[h]] = 1.0
            P[sections[g][:, None], sections[h]] = R
        return P

    def __str__(self) -> str:
        if self.cone is not None:
            classes = "" if self.cone_classes is None else f", {len(set(self.cone_classes))} angle classes"
            return f"Group({self.cone}{classes})"
        return f"Group({self.kind}, C={self.channels})"


def canonical_classes(labels) -> tuple:
    """Class labels renumbered in order of first appearance: ``(7, 3, 7) -> (0, 1, 0)``."""
    seen: dict = {}
    return tuple(seen.setdefault(label, len(seen)) for label in labels)


def angle_classes(angles) -> Optional[tuple]:
    """:attr:`Group.cone_classes` for per-cone angles (any values, e.g. ``log_angle_scale``): cones share a
    class when their angles are exactly equal; ``None`` when all are (the full group)."""
    values = torch.as_tensor(angles).detach().flatten().tolist()
    classes = canonical_classes(values)
    return None if len(set(classes)) <= 1 else classes


def group_of(activation: Any, channels: int, *, training: bool = False) -> Group:
    """The :class:`Group` of ``activation`` on ``channels`` channels.

    Args:
        activation: a module (:class:`colu.CoLU`, :class:`colu.RCoLU`, a
            component-wise torch activation (:data:`COMPONENTWISE`,
            ``nn.PReLU`` with one slope), ``nn.Identity``, ``nn.Dropout``),
            ``None`` (no activation: the identity), a
            :class:`~colu.ConeSpec`, a :class:`Group`, or the name of a group
            that needs no cones (``"permutation"``, ``"orthogonal"`` or
            another name of theirs, see :func:`group_kind`).
        channels: C, the width of the hidden state.
        training: read the module as in training mode, where ``nn.Dropout``
            is random and has no group (default ``False``: evaluation mode,
            where it is the identity).

    Raises:
        UnknownGroupError: for an activation whose group is not known.
        ValueError: when the activation does not fit ``channels`` channels,
            or for an unknown name.
    """
    if isinstance(activation, Group):
        if activation.channels != channels:
            raise ValueError(f"{activation} was given for a hidden state of {channels} channels")
        return activation
    if isinstance(activation, str):
        if not is_group_name(activation):
            raise ValueError(
                f"unknown group {activation!r}; use 'permutation', 'orthogonal', an activation module, "
                f"the name of an activation module in the model, or a colu.ConeSpec"
                + (" (a cone group needs its cones)" if activation.lower() in CONE_KINDS else "")
            )
        return Group(_NAMES[activation.lower()], channels)
    if isinstance(activation, ConeSpec):
        if activation.channels != channels:
            raise ValueError(
                f"{activation} describes {activation.channels} channels but the hidden state has {channels}"
            )
        if activation.is_identity:
            return Group("orthogonal", channels)
        if activation.componentwise:
            return Group("permutation", channels)
        return Group(activation.kind, channels, activation)
    if training and isinstance(activation, _RANDOM_IN_TRAINING):
        raise UnknownGroupError(
            f"{type(activation).__name__} is random in training mode, so no group element keeps its output; "
            f"it is the identity in evaluation mode (group 'orthogonal')"
        )
    if activation is None or isinstance(activation, EVAL_IDENTITY):
        return Group("orthogonal", channels)
    if isinstance(activation, (CoLU, RCoLU)):
        try:
            if isinstance(activation, CoLU):
                cone = ConeSpec.resolve(channels, activation.cone_dim, activation.num_cones,
                                        share_axis=activation.share_axis, layout=activation.layout,
                                        componentwise=activation.componentwise)
            else:
                cone = ConeSpec.resolve(channels, activation.cone_dim, activation.num_cones, kind="rcolu")
        except ValueError as err:
            raise ValueError(f"{activation!r} does not fit a hidden state of {channels} channels: {err}") from err
        angles = activation.log_angle_scale
        if angles is not None and angles.dim() and not cone.is_identity:
            if angles.numel() != cone.num_cones:
                raise ValueError(f"{activation!r} holds {angles.numel()} cone angles but a hidden state of "
                                 f"{channels} channels has {cone.num_cones} cones")
            # cones of unequal angles compute different functions: only equal ones may be permuted
            return Group(cone.kind, channels, cone, angle_classes(angles))
        return group_of(cone, channels)
    if isinstance(activation, nn.PReLU):
        if activation.num_parameters != 1:
            raise ValueError(
                f"nn.PReLU(num_parameters={activation.num_parameters}) has a slope per channel, so it does "
                f"not commute with permutations; use nn.PReLU() with one shared slope"
            )
        return Group("permutation", channels)
    if isinstance(activation, COMPONENTWISE):
        return Group("permutation", channels)
    raise UnknownGroupError(
        f"cannot tell the symmetry group of {type(activation).__name__} ({activation!r}); known are colu.CoLU, "
        f"colu.RCoLU, nn.Identity, nn.Dropout, nn.PReLU with one slope and the component-wise torch "
        f"activations; one that acts channel by channel with one function has the group 'permutation'"
    )
