"""The symmetry group of an activation and its action on network weights.

CoLU with G cones of dimension S commutes with every matrix of
Perm(G) x O(S-1)^G acting on the channels (paper Theorem 4.7): permute whole
cones, rotate or reflect each section. RCoLU commutes with permutations of its
groups and rotations fixing each group's all-ones axis; a component-wise
activation only with permutations (Corollary 4.6).

A hidden state ``h = act(W_in x + b_in)`` feeding ``W_out h`` can be moved by
any such ``P`` without changing the network: ``W_in <- P W_in``,
``b_in <- P b_in``, ``W_out <- W_out P^T`` (:func:`transform_hidden`).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .spec import ConeSpec

__all__ = ["group_element", "random_orthogonal", "transform_hidden"]

_KINDS = ("colu", "rcolu", "relu")


def random_orthogonal(n: int, *, generator: Optional[torch.Generator] = None, dtype=torch.float64) -> torch.Tensor:
    """A Haar-random ``n x n`` orthogonal matrix (QR of a Gaussian with the sign fix)."""
    if n == 0:
        return torch.zeros(0, 0, dtype=dtype)
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    # without the sign fix QR is not Haar-distributed
    q = q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones(n, dtype=torch.float64))
    return q.to(dtype)


def _homogeneous_basis(S: int) -> torch.Tensor:
    """Orthonormal basis of R^S whose first column is e = (1, ..., 1)/sqrt(S)."""
    m = torch.eye(S, dtype=torch.float64)
    m[:, 0] = 1.0
    q, _ = torch.linalg.qr(m)
    return q * torch.sign(q[0, 0])


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
) -> torch.Tensor:
    """A random ``C x C`` orthogonal matrix from the activation's isometric symmetry group.

    ``P`` satisfies ``act(x @ P.T) == act(x) @ P.T`` for the activation
    described by the arguments (the same cone arguments as :func:`colu.colu`):

    * ``kind="colu"``: a random permutation of the cones and a Haar-random
      orthogonal matrix on each section (Perm(G) x O(S-1)^G). With a shared
      axis the axis stays fixed. ``cone_dim=2`` is component-wise, so its
      group is the permutations of all channels.
    * ``kind="rcolu"``: a random permutation of the groups and, inside each,
      a random orthogonal matrix fixing the all-ones axis.
    * ``kind="relu"``: a random permutation matrix.

    ``num_cones=0`` (the identity activation) gives a Haar-random element of O(C).
    """
    if kind not in _KINDS:
        raise ValueError(f"unknown kind={kind!r}; expected one of {', '.join(map(repr, _KINDS))}")
    if kind == "relu":
        perm = torch.randperm(C, generator=generator)
        return torch.eye(C, dtype=dtype)[perm]
    spec = ConeSpec.resolve(
        C, cone_dim, num_cones, share_axis=share_axis, layout=layout, kind="rcolu" if kind == "rcolu" else "colu"
    )
    if spec.is_identity:
        return random_orthogonal(C, generator=generator, dtype=dtype)
    if kind == "colu" and spec.cone_dim == 2:
        return group_element(C, kind="relu", generator=generator, dtype=dtype)
    G, S = spec.num_cones, spec.cone_dim
    P = torch.zeros(C, C, dtype=torch.float64)
    perm = torch.randperm(G, generator=generator)
    if kind == "rcolu":
        basis = _homogeneous_basis(S)
        groups = spec.cone_channels()
        for g in range(G):
            inner = torch.eye(S, dtype=torch.float64)
            inner[1:, 1:] = random_orthogonal(S - 1, generator=generator)
            rows, cols = groups[perm[g]], groups[g]
            P[rows[:, None], cols] = basis @ inner @ basis.T
        return P.to(dtype)
    axes, sections = spec.axis_channels(), spec.section_channels()
    if share_axis:
        P[0, 0] = 1.0
    for g in range(G):
        if not share_axis:
            P[axes[perm[g]], axes[g]] = 1.0
        P[sections[perm[g]][:, None], sections[g]] = random_orthogonal(S - 1, generator=generator)
    return P.to(dtype)


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
