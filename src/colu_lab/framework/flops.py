"""Forward FLOPs per example, by ``torch.utils.flop_counter``, with CoLU's own arithmetic counted.

How things are counted:

* ``FlopCounterMode`` counts matrix products and convolutions at 2 FLOPs per
  multiply-add, and nothing for element-wise work: ReLU, BatchNorm,
  LayerNorm, residual sums, pooling and softmax all count 0. This is the
  convention behind the usual "ResNet-56: 0.25 GFLOPs" figures.
* Attention: PyTorch's formula for ``scaled_dot_product_attention`` covers the
  CUDA kernels only; here the CPU kernel gets the same formula (the two
  products ``Q K^T`` and ``A V``, causal masking not discounted, as
  PyTorch's formula does not discount it either).
* CoLU: in eager mode a :class:`colu.CoLU` runs either a compiled kernel
  the counter cannot see into or element-wise torch ops it does not count,
  so on its own it would count 0, like ReLU. While counting, each
  ``colu.CoLU``/``colu.RCoLU`` module runs through the library's custom op
  ``colu::cone_forward`` (same result), and that op is given the formula
  :func:`cone_flops`: the arithmetic per cone of the projection. For a cone
  of dimension ``S`` with hard scaling and identity axis activation that is
  ``(S - 1)`` squares and ``S - 2`` additions for the section's squared norm,
  a square root, ``+ eps``, the division ``r = a / (n + eps)``, a clamp to
  [0, 1] (2) and ``S - 1`` multiplications of the section by ``w(r)``:
  ``3 S + 1`` FLOPs, i.e. 13 per 4 channels (3.25 per activation value).
  Comparisons count as FLOPs, so ReLU would be 1 per value if element-wise
  work were counted; it is not, so the CoLU figure is CoLU's whole cost and
  the difference between a CoLU and a ReLU model slightly overstates CoLU's
  extra arithmetic (by one FLOP per value).

A cone dimension of 2 read component-wise (ReLU/SiLU) and 0 cones (identity) stay
with their element-wise ops and count 0, like ReLU; two-dimensional cones
(``componentwise=False``) are counted as cones.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

import colu
from colu.spec import ConeSpec

# a sigmoid as exp, add, divide; SiLU one more multiply
_WEIGHT_COST = {"hard": 2, "soft": 1 + 3, "firm": 2 + 3}
_AXIS_COST = {"identity": 0, "relu": 1, "silu": 4}


def cone_flops(channels: int, num_cones: int, cone_dim: int, share_axis: bool, kind: str, scaling: str,
               axis_activation: str) -> int:
    """FLOPs of one cone activation over ``channels`` values (one pixel or one token), counted by hand.

    Args:
        channels: C, the channel count.
        num_cones: G.
        cone_dim: S, channels per cone including its axis (for RCoLU, per group).
        share_axis: one axis shared by all cones (its activation is computed once).
        kind: ``"colu"`` or ``"rcolu"``.
        scaling: ``"hard"``, ``"soft"`` or ``"firm"`` (the weight ``w(r)``).
        axis_activation: ``"identity"``, ``"relu"`` or ``"silu"``.

    Per cone, with ``d = S - 1`` section channels: squared norm ``2d - 1``,
    square root, ``+ eps`` and division 3, weight ``w(r)`` (hard 2, soft 4,
    firm 5) and the section's rescaling ``d``. RCoLU first rotates each group
    of ``S`` into axis and section (``t = x . e``: ``2S - 1``; ``x - t e``:
    ``2S``) and back (``t' e + w x_perp``: ``3S``), and its section has ``S``
    channels.
    """
    if num_cones == 0:
        return 0
    weight = _WEIGHT_COST[scaling]
    axis = _AXIS_COST[axis_activation]
    if kind == "rcolu":
        S = cone_dim
        per = (2 * S - 1) + 2 * S + (2 * S - 1) + 3 + weight + 3 * S + axis
        return num_cones * per
    d = cone_dim - 1
    per = (2 * d - 1) + 3 + weight + d
    axes = 1 if share_axis else num_cones
    return num_cones * per + axes * axis


def _cone_forward_flops(x_shape, dim, channels, num_cones, cone_dim, share_axis, layout, kind, scaling, eps,
                        axis_activation, *args, out_shape=None, **kwargs) -> int:
    positions = math.prod(x_shape) // x_shape[dim]
    return positions * cone_flops(channels, num_cones, cone_dim, share_axis, kind, scaling, axis_activation)


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _custom_mapping() -> dict:
    mapping = {torch.ops.colu.cone_forward: _cone_forward_flops}
    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_sdpa is not None:
        mapping[cpu_sdpa] = _cpu_sdpa_flops
    return mapping


def _as_custom_op(module: nn.Module, kind: str):
    """A forward for ``module`` that computes the same activation through ``colu::cone_forward``."""
    original = module.forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        dim = module.dim % x.dim()
        C = x.shape[dim]
        spec = ConeSpec.resolve(C, module.cone_dim, module.num_cones,
                                share_axis=getattr(module, "share_axis", False),
                                layout=getattr(module, "layout", "grouped"), kind=kind,
                                componentwise=getattr(module, "componentwise", True))
        if spec.is_identity or spec.componentwise:
            return original(x)  # identity or component-wise: element-wise ops, counted like ReLU
        return torch.ops.colu.cone_forward(
            x, dim, spec.channels, spec.num_cones, spec.cone_dim, spec.share_axis, spec.layout, spec.kind,
            module.scaling, float(module.eps), module.axis_activation)

    return forward


@contextmanager
def _colu_through_custom_op(model: nn.Module):
    swapped = []
    try:
        for m in model.modules():
            kind = "rcolu" if isinstance(m, colu.RCoLU) else "colu" if isinstance(m, colu.CoLU) else None
            if kind is not None:
                m.forward = _as_custom_op(m, kind)  # an instance attribute shadows the class's forward
                swapped.append(m)
        yield
    finally:
        for m in swapped:
            del m.forward


def flop_counts(model: nn.Module, example_input: torch.Tensor) -> dict:
    """Forward FLOPs of ``model`` on ``example_input``, per operator (whole batch).

    Returns:
        ``{operator name: FLOPs}``, e.g. ``{"aten.convolution": ...,
        "colu.cone_forward": ...}``. See the module docstring for what is
        counted.
    """
    was_training = model.training
    model.eval()  # a counting pass must not move BatchNorm's running statistics
    try:
        counter = FlopCounterMode(display=False, custom_mapping=_custom_mapping())
        with torch.no_grad(), _colu_through_custom_op(model), counter:
            model(example_input)
    finally:
        model.train(was_training)
    return {str(op): int(n) for op, n in counter.get_flop_counts()["Global"].items()}


def forward_flops_per_example(model: nn.Module, example_input: torch.Tensor) -> int:
    """Forward FLOPs per example: the count for ``example_input`` divided by its batch size (dim 0).

    Matrix products and convolutions count 2 FLOPs per multiply-add,
    element-wise ops (ReLU, normalisation, residual sums) 0, and CoLU its
    projection's arithmetic (:func:`cone_flops`); the model's state
    (training flag, BatchNorm statistics) is left as it was.

    Args:
        model: any module; ``colu.CoLU``/``colu.RCoLU`` submodules are counted.
        example_input: a batch of inputs, e.g. ``torch.zeros(1, 3, 32, 32)``
            or a ``(1, T)`` tensor of token ids.
    """
    total = sum(flop_counts(model, example_input).values())
    return total // example_input.shape[0]
