"""The symmetry group of an activation and its action on network weights.

CoLU with G cones of dimension S commutes with every matrix of
Perm(G) x O(S-1)^G acting on the channels (paper Theorem 4.7): permute whole
cones, rotate or reflect each section. RCoLU commutes with permutations of its
groups and rotations fixing each group's all-ones axis; a component-wise
activation only with permutations (Corollary 4.6). The groups themselves
(which one an activation has, drawing an element) live in :mod:`colu.groups`.

A hidden state ``h = act(W_in x + b_in)`` feeding ``W_out h`` can be moved by
any such ``P`` without changing the network: ``W_in <- P W_in``,
``b_in <- P b_in``, ``W_out <- W_out P^T`` (:func:`transform_hidden`,
:func:`transform_sequential`, :func:`apply_random_symmetry`).

Checks: :func:`equivariance_error` measures ``act(x P^T) - act(x) P^T``;
:func:`in_cone` tests membership of the invariant set of hard CoLU/RCoLU.

Lemma 4.8 (an O(2) acting on the first two input coordinates):
:func:`lemma_4_8_network` builds the exactly equivariant two-layer CoLU
network of part (2); :func:`find_relu_witness` looks for a witness
``(x, P)`` against the equivariance of a two-layer ReLU network, and its
docstring states which part of part (1) is true.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from colu.groups import Group, angle_classes, group_kind, group_of, random_orthogonal
from colu.spec import KINDS as CONE_KINDS
from colu.spec import ConeSpec, check_choice

__all__ = [
    "group_element",
    "random_orthogonal",
    "transform_hidden",
    "transform_sequential",
    "group_element_for",
    "apply_random_symmetry",
    "apply_along",
    "equivariance_error",
    "in_cone",
    "plane_group_element",
    "lemma_4_8_network",
    "find_relu_witness",
    "Witness",
]


def group_element(
    C: int,
    cone_dim: Optional[int] = None,
    num_cones: Optional[int] = None,
    *,
    share_axis: bool = False,
    layout: str = "grouped",
    generator: Optional[torch.Generator] = None,
    kind: str = "colu",
    dtype: torch.dtype = torch.float64,
    angles=None,
    componentwise: bool = True,
) -> torch.Tensor:
    """A random ``C x C`` orthogonal matrix from the activation's isometric symmetry group.

    ``P`` satisfies ``act(x @ P.T) == act(x) @ P.T`` for the activation
    described by the arguments (the same cone arguments as :func:`colu.colu`):

    * ``kind="colu"`` (default): a random permutation of the cones and a
      Haar-random orthogonal matrix on each section (Perm(G) x O(S-1)^G).
      With a shared axis the axis stays fixed. ``cone_dim=2`` is
      component-wise, so its group is the permutations of all channels;
      with ``componentwise=False`` it is the two-dimensional cone, whose
      group is Perm(G) x O(1)^G (permute the cones, flip section signs).
    * ``kind="rcolu"``: a random permutation of the groups and, inside each,
      a random orthogonal matrix fixing the all-ones axis.
    * ``kind="permutation"`` (or ``"relu"``): a random permutation matrix;
      ``kind="orthogonal"`` (or ``"identity"``): a Haar-random element of
      O(C). Both ignore the cone arguments.

    ``num_cones=0`` (the identity activation) gives a Haar-random element of O(C).

    Args:
        C: the number of channels.
        cone_dim, num_cones, share_axis, layout: the cone arguments (defaults
            as for :func:`colu.colu`: ``cone_dim=4``, grouped, no shared axis).
        generator: the random source (default: torch's global one).
        kind: the group's kind, see :mod:`colu.groups` (default ``"colu"``).
        dtype: of the result (default float64).
        angles: per-cone angles (e.g. a learnable angle's ``log_angle_scale``,
            shape ``(G,)``): only cones of equal angle are permuted. Default
            ``None``: all cones alike.
        componentwise: how CoLU cones of dimension 2 are read, as in
            :func:`colu.colu`. Default: ``True``.
    """
    kind = group_kind(kind)
    if kind in CONE_KINDS:
        spec = ConeSpec.resolve(C, cone_dim, num_cones, share_axis=share_axis, layout=layout, kind=kind,
                                componentwise=componentwise)
        group = group_of(spec, C)
        if angles is not None and not spec.is_identity and group.cone is not None:
            if torch.as_tensor(angles).numel() != spec.num_cones:
                raise ValueError(f"angles has {torch.as_tensor(angles).numel()} values for {spec.num_cones} cones")
            group = Group(group.kind, C, group.cone, angle_classes(angles))
    elif angles is not None:
        raise ValueError(f"angles are per-cone; the group {kind!r} has no cones")
    else:
        group = Group(kind, C)
    return group.sample(generator, dtype)


@torch.no_grad()
def transform_hidden(layer_in: nn.Module, layer_out: nn.Module, P: torch.Tensor) -> None:
    """Move the hidden state between ``layer_in`` and ``layer_out`` by ``P``, in place.

    ``layer_in`` produces the hidden state along its output dimension (dim 0
    of ``weight``, as for ``nn.Linear`` and ``nn.ConvNd``) and ``layer_out``
    consumes it along its input dimension (dim 1 of ``weight``). Applies
    ``W_in <- P W_in``, ``b_in <- P b_in``, ``W_out <- W_out P^T``; when ``P``
    is in the activation's symmetry group the network function is unchanged.
    """
    C = layer_in.weight.shape[0]
    if P.shape != (C, C) or layer_out.weight.shape[1] != C:
        raise ValueError(
            f"P must be {C}x{C} to match layer_in's {C} output channels and layer_out's "
            f"{layer_out.weight.shape[1]} input channels; got P of shape {tuple(P.shape)}"
        )
    w_in = layer_in.weight
    P_in = P.to(w_in)
    w_in.copy_(torch.tensordot(P_in, w_in, dims=([1], [0])))
    if getattr(layer_in, "bias", None) is not None:
        layer_in.bias.copy_(P_in @ layer_in.bias)
    w_out = layer_out.weight
    w_out.copy_(torch.tensordot(w_out, P.to(w_out).T, dims=([1], [0])).movedim(-1, 1))


# ---------------------------------------------------------------- checks
def apply_along(x: torch.Tensor, P: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``x`` with ``P`` applied to the channel axis ``dim`` (``x @ P.T`` for ``dim=-1``)."""
    moved = x.movedim(dim, -1)
    if P.shape != (moved.shape[-1], moved.shape[-1]):
        raise ValueError(
            f"P has shape {tuple(P.shape)} but x has {moved.shape[-1]} channels along dim={dim}; "
            f"build P for C={moved.shape[-1]} (e.g. with group_element)"
        )
    return (moved @ P.to(x).T).movedim(-1, dim)


def equivariance_error(act: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, P: torch.Tensor, dim: int = -1) -> float:
    """``max |act(P x) - P act(x)|`` with ``P`` acting on the channel axis ``dim``.

    Zero (up to rounding) exactly when ``P`` is in the equivariance group of
    ``act`` on the samples ``x``; ``P`` is cast to ``x``'s dtype.
    """
    with torch.no_grad():
        diff = act(apply_along(x, P, dim)) - apply_along(act(x), P, dim)
    return float(diff.abs().max()) if diff.numel() else 0.0


def in_cone(
    y: torch.Tensor,
    cone_dim: Optional[int] = None,
    num_cones: Optional[int] = None,
    *,
    share_axis: bool = False,
    layout: str = "grouped",
    dim: int = -1,
    tol: Optional[float] = None,
    kind: str = "colu",
) -> torch.Tensor:
    """Whether each vector of ``y`` lies in the invariant set of hard CoLU (or RCoLU).

    The invariant set (paper Theorem 4.7) is a product of extended Lorentz
    cones: every cone's section norm is at most its axis value, and a cone with
    a negative axis has a zero section. Per vector along ``dim`` this tests,
    for every cone, ``|section| <= max(axis, 0) * (1 + tol) + tol``. For
    ``kind="rcolu"`` the axis value of a group ``x`` is ``t = x . e`` with
    ``e = (1, ..., 1)/sqrt(S)`` and the section is ``x - t e``
    (:meth:`colu.ConeSpec.homogeneous_basis`).

    Hard-scaled outputs satisfy this (the soft and firm weightings leave some
    section behind at a zero axis, so their outputs generally do not).

    Args:
        y: tensor with channels along ``dim``; the cone arguments are those
            of :func:`colu.colu` / :func:`colu.rcolu`.
        tol: relative and absolute slack; default ``16 * finfo(y.dtype).eps``.

    Returns:
        A bool tensor of ``y``'s shape without ``dim``; ``.all()`` for one answer.
    """
    check_choice("kind", kind, CONE_KINDS)
    if tol is None:
        tol = 16 * torch.finfo(y.dtype).eps
    moved = y.movedim(dim, -1)
    spec = ConeSpec.resolve(moved.shape[-1], cone_dim, num_cones, share_axis=share_axis, layout=layout, kind=kind)
    if spec.is_identity:
        # the identity's invariant set is all of R^C
        return torch.ones(moved.shape[:-1], dtype=torch.bool, device=y.device)
    if kind == "rcolu":
        groups = moved.reshape(*moved.shape[:-1], spec.num_cones, spec.cone_dim)
        # coordinates in the basis (e, e_perp): the first is the axis value, the others the section
        coords = groups @ spec.homogeneous_basis(groups.dtype, groups.device)
        axis, section = coords[..., 0], coords[..., 1:]
    else:
        axes, section = spec.split(moved.contiguous())
        # with a shared axis every cone is measured against channel 0
        axis = axes.expand(*section.shape[:-1]) if share_axis else axes
    norm = torch.linalg.vector_norm(section, dim=-1)
    return (norm <= axis.clamp(min=0) * (1 + tol) + tol).all(-1)


# ------------------------------------------------- weights of whole models
def group_element_for(
    act: nn.Module, C: int, *, generator: Optional[torch.Generator] = None, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """A random element of the symmetry group of the activation module ``act`` at width ``C``.

    :class:`colu.CoLU`/:class:`colu.RCoLU` use their own cone arguments,
    ``nn.Identity`` gives a Haar-random O(C) element, and the component-wise
    torch activations (:data:`colu.groups.COMPONENTWISE`) a random
    permutation. The element keeps the function in training mode too, so
    ``nn.Dropout`` (random there) has none. Other modules raise
    :class:`colu.groups.UnknownGroupError`, a ``TypeError``: build ``P``
    yourself and call :func:`transform_hidden`.

    Args:
        act: the activation module.
        C: the width of the hidden state it acts on.
        generator: the random source (default: torch's global one).
        dtype: of the result (default float64).
    """
    if not isinstance(act, nn.Module):
        raise TypeError(f"act must be an activation module, got {type(act).__name__} ({act!r}); for a group "
                        f"named by its kind use group_element(C, kind=...)")
    return group_of(act, C, training=True).sample(generator, dtype)


def _has_weight(module) -> bool:
    return isinstance(getattr(module, "weight", None), torch.Tensor) and module.weight.dim() >= 2


def transform_sequential(model: nn.Sequential, index: int, P: torch.Tensor) -> None:
    """Move the hidden state at activation ``model[index]`` by ``P``, in place.

    ``model[index - 1]`` must produce the hidden state and ``model[index + 1]``
    consume it (``nn.Linear`` or ``nn.ConvNd``), e.g. ``index=1`` in
    ``Sequential(Linear, CoLU, Linear)``. With ``P`` from the activation's
    group (:func:`group_element_for`) the model computes the same function.
    """
    n = len(model)
    if isinstance(index, bool) or not isinstance(index, int) or not 1 <= index <= n - 2:
        raise ValueError(
            f"index={index!r} must point at an activation with a layer on each side "
            f"(1 <= index <= {n - 2} for this Sequential of {n} modules)"
        )
    before, after = model[index - 1], model[index + 1]
    for where, layer in (("before", before), ("after", after)):
        if not _has_weight(layer):
            raise ValueError(
                f"model[{index}] ({type(model[index]).__name__}) needs a Linear/Conv layer {where} it, "
                f"found {type(layer).__name__}; call transform_hidden with the two layers directly"
            )
    transform_hidden(before, after, P)


def apply_random_symmetry(
    model: nn.Sequential, *, generator: Optional[torch.Generator] = None
) -> dict:
    """Apply a random group element at every activation between two weighted layers.

    Returns ``{index: P}``. The function computed by ``model`` is unchanged
    (up to rounding) while its weights are mixed by each activation's group:
    only permutations for ReLU, rotations of sections for CoLU.
    """
    applied = {}
    for i in range(1, len(model) - 1):
        if _has_weight(model[i]) or not (_has_weight(model[i - 1]) and _has_weight(model[i + 1])):
            continue
        P = group_element_for(model[i], model[i - 1].weight.shape[0], generator=generator)
        transform_sequential(model, i, P)
        applied[i] = P
    return applied


# ------------------------------------------------------------- Lemma 4.8
def plane_group_element(
    C: int,
    *,
    angle: Optional[float] = None,
    reflect: Optional[bool] = None,
    generator: Optional[torch.Generator] = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """An element of the group G ~ O(2) of Lemma 4.8: O(2) on coordinates 0, 1, identity elsewhere.

    ``angle`` (radians) and ``reflect`` are drawn at random when not given;
    with ``reflect=True`` the block is a reflection (determinant -1).
    """
    if C < 2:
        raise ValueError(f"G acts on the first two coordinates, so C >= 2 is needed; got C={C}")
    if angle is None:
        angle = float(torch.rand((), generator=generator, dtype=torch.float64)) * 2 * math.pi
    if reflect is None:
        reflect = bool(torch.rand((), generator=generator) < 0.5)
    c, s = math.cos(angle), math.sin(angle)
    P = torch.eye(C, dtype=torch.float64)
    P[:2, :2] = torch.tensor([[c, s], [s, -c]] if reflect else [[c, -s], [s, c]], dtype=torch.float64)
    return P.to(dtype)


def lemma_4_8_network(
    C: int,
    cone_dim: Optional[int] = None,
    *,
    scaling: str = "hard",
    share_axis: bool = False,
    layout: str = "grouped",
    dtype: torch.dtype = torch.float64,
) -> nn.Sequential:
    r"""The two-layer CoLU network :math:`\theta^\dagger` of Lemma 4.8(2), exactly O(2)-equivariant.

    Returns ``Sequential(Linear(C, C), CoLU, Linear(C, C))`` (no biases) with
    ``w' = Q`` and ``w = Q^T`` for a permutation ``Q`` that sends the two
    rotating coordinates ``x_0, x_1`` to the last two section channels of
    cone 0 and the ``C - 2`` fixed coordinates, in order, to the remaining
    channels (so every axis sees only fixed coordinates). With one cone
    (``cone_dim=None``, the default) these are exactly the paper's
    :math:`w'^\dagger` and :math:`w^\dagger`.

    Why it is equivariant: for ``P`` in G, ``Q P Q^T`` rotates or reflects two
    channels of one section and fixes every other channel, so it lies in
    Perm(G) x O(S-1)^G, which commutes with CoLU for every scaling (the
    weighting sees only the axis and the section norm; Theorem 4.7). Hence
    ``f(P x) = Q^T CoLU(Q P Q^T Q x) = Q^T Q P Q^T CoLU(Q x) = P f(x)``.
    The network is not linear in the rotating pair: for a positive axis
    ``a`` its response is ``min(a / |s|, 1) (x_0, x_1)`` with ``|s|``
    growing with ``|(x_0, x_1)|`` (hard scaling), a radial nonlinearity no
    ReLU network of this form can have (see :func:`find_relu_witness`).

    Args:
        C: width of input, hidden state and output (C >= 3).
        cone_dim: S; each cone needs ``S >= 3`` so a section can hold the
            rotating pair. ``None``: one cone over all channels.
        scaling, share_axis, layout: passed to :class:`colu.CoLU`.
    """
    from colu.modules import CoLU

    if not isinstance(C, int) or C < 3:
        raise ValueError(
            f"Lemma 4.8(2) needs C >= 3 (an axis plus a section holding the rotating pair); got C={C!r}"
        )
    num_cones = 1 if cone_dim is None and not share_axis else None
    if cone_dim is None and share_axis:
        cone_dim = C
    spec = ConeSpec.resolve(C, cone_dim, num_cones, share_axis=share_axis, layout=layout)
    if spec.cone_dim < 3:
        raise ValueError(
            f"cone_dim={spec.cone_dim} leaves a section of {spec.section_dim} channel, too small for the "
            f"rotating pair; use cone_dim >= 3"
        )
    pair = spec.section_channels()[0, -2:].tolist()
    rest = [c for c in range(C) if c not in pair]
    Q = torch.zeros(C, C, dtype=torch.float64)
    Q[pair[0], 0] = Q[pair[1], 1] = 1.0
    for i, c in enumerate(rest):
        Q[c, i + 2] = 1.0
    first, last = nn.Linear(C, C, bias=False, dtype=dtype), nn.Linear(C, C, bias=False, dtype=dtype)
    with torch.no_grad():
        first.weight.copy_(Q)
        last.weight.copy_(Q.T)
    act = CoLU(cone_dim if num_cones is None else None, num_cones, share_axis=share_axis, scaling=scaling, layout=layout)
    return nn.Sequential(first, act, last)


@dataclass
class Witness:
    """A counterexample to equivariance: ``P f(x) != f(P x)`` by ``error`` (max abs)."""

    x: torch.Tensor
    P: torch.Tensor
    error: float


def find_relu_witness(
    w: torch.Tensor,
    w_prime: torch.Tensor,
    *,
    activation: Callable[[torch.Tensor], torch.Tensor] = torch.relu,
    num_angles: int = 256,
    num_offsets: int = 4,
    tol: float = 1e-9,
    generator: Optional[torch.Generator] = None,
) -> Optional[Witness]:
    r"""Look for ``(x, P)``, ``P`` in G ~ O(2) (first two coordinates), with ``P f(x) != f(P x)``.

    ``f(x) = w act(w' x)`` with ``w`` of shape ``(C, H)`` and ``w'`` of
    shape ``(H, C)``; the hidden width ``H`` may differ from ``C``. Returns
    the worst :class:`Witness` found, or ``None`` when every tested pair
    agrees to ``tol * (1 + max|f|)``.

    What is true of Lemma 4.8(1). Read literally ("every nonzero ReLU
    network has a witness") it is false, and this function returns ``None``
    on the two kinds of exception:

    * networks blind to the rotating pair: ``w'`` zero on columns 0, 1 and
      ``w`` zero on rows 0, 1 give ``f(P x) = f(x) = P f(x)``;
    * networks linear in the pair: ReLU makes the identity from
      ``relu(t) - relu(-t) = t``, e.g. hidden units ``±x_0, ±x_1`` read out
      as ``x_0, x_1``, and a multiple of the identity on the plane commutes
      with O(2).

    What does hold, for any continuous piecewise-linear component-wise
    ``act`` (ReLU, leaky ReLU): write ``x = (z, y)``, ``z`` the rotating
    pair. If ``f`` is G-equivariant then for every fixed ``y``,
    ``f(z, y) = (alpha(y) z, beta(y))``. Sketch: the fixed outputs satisfy
    ``f_k(R z, y) = f_k(z, y)``, so they are radial in ``z``; a radial
    function that is affine on each polygon of a finite partition of the
    plane is constant. Reflecting across the line through ``z`` fixes ``z``,
    so ``f_{01}(z, y)`` is parallel to ``z``; an affine map ``A z + b`` that
    is everywhere parallel to ``z`` with a length depending only on ``|z|``
    has ``A = alpha I`` and ``b = 0``, and continuity across the polygons
    makes ``alpha`` one number. So an equivariant ReLU network of this form
    can only scale the rotating pair linearly; the CoLU network of
    :func:`lemma_4_8_network` responds to it nonlinearly.

    Search (why it finds witnesses): by the statement above it suffices to
    probe, for a few values of ``y`` (zero and Gaussian ones), points ``z``
    on circles of several radii, ``num_angles`` directions each, against
    rotations (including 45 degrees, the paper's witness) and reflections. A
    network that is not of the form above differs from it on an open set,
    which a dense enough set of directions meets. Float64 throughout.
    """
    w = torch.as_tensor(w, dtype=torch.float64)
    w_prime = torch.as_tensor(w_prime, dtype=torch.float64)
    if w.dim() != 2 or w_prime.dim() != 2 or w.shape[1] != w_prime.shape[0] or w.shape[0] != w_prime.shape[1]:
        raise ValueError(
            f"expected w of shape (C, H) and w' of shape (H, C); got {tuple(w.shape)} and {tuple(w_prime.shape)}"
        )
    C = w_prime.shape[1]
    if C < 2:
        raise ValueError(f"G acts on the first two coordinates, so C >= 2 is needed; got C={C}")

    def f(x):
        return activation(x @ w_prime.T) @ w.T

    scale = float(w_prime.abs().max()) or 1.0
    ys = [torch.zeros(C - 2, dtype=torch.float64)]
    ys += [torch.randn(C - 2, generator=generator, dtype=torch.float64) / scale for _ in range(num_offsets)]
    radii = torch.tensor([0.5, 1.0, 3.0], dtype=torch.float64) / scale
    theta = torch.arange(num_angles, dtype=torch.float64) * (2 * math.pi / num_angles)
    theta = theta + float(torch.rand((), generator=generator, dtype=torch.float64)) * 2 * math.pi / num_angles
    circle = torch.stack([theta.cos(), theta.sin()], -1)
    points = []
    for y in ys:
        for r in radii:
            points.append(torch.cat([r * circle, y.expand(num_angles, C - 2)], -1))
    X = torch.cat(points)
    angles = [math.pi / 4, math.pi / 2, 2 * math.pi / num_angles, 1.0, 2.5]
    group = [plane_group_element(C, angle=a, reflect=False) for a in angles]
    group += [plane_group_element(C, angle=a, reflect=True) for a in (0.0, 0.7, math.pi / 3)]
    fx = f(X)
    threshold = tol * (1.0 + float(fx.abs().max()))
    best = None
    for P in group:
        err = (f(X @ P.T) - fx @ P.T).abs().amax(-1)
        i = int(err.argmax())
        if float(err[i]) > threshold and (best is None or float(err[i]) > best.error):
            best = Witness(X[i].clone(), P, float(err[i]))
    return best
