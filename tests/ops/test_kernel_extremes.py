"""The C kernel on extreme and non-finite inputs gives what the closed form (plain torch math) gives.

Each cone of the input carries one of +-inf, +-1e38 and NaN in one of its
positions (the axis or a section channel; for RCoLU any channel), the rest
ordinary values; the forward and the input gradient must agree with the
closed-form backend, NaN where it has NaN and nowhere else. Shapes reach every
loop: the flat path (the loops specialised per S, and the vector blocks where
the machine has them: S = 16 takes the AVX2 blocks, and with AVX-512 S = 4,
8, 16 take the 16-cone blocks), the rows path (shared axis, axes_first) and
the lanes path (channels in dim 1 with spatial positions after them).
"""

import itertools

import pytest
import torch

import colu
from colu.ops import cpu, dispatch

pytestmark = pytest.mark.skipif(cpu.load() is None, reason="no C compiler: the CPU kernel cannot be built")

EXTREMES = (float("inf"), -float("inf"), 1e38, -1e38, float("nan"))
TOL = {torch.float32: dict(rtol=2e-5, atol=2e-5), torch.float64: dict(rtol=1e-10, atol=1e-10)}

# (name, kind, cone_dim, extra keyword arguments, channels in dim 1 with spatial positions)
SHAPES = [
    ("flat S=4", "colu", 4, {}, False),
    ("flat S=8", "colu", 8, {}, False),
    ("flat S=16", "colu", 16, {}, False),
    ("flat S=3", "colu", 3, {}, False),
    ("rows shared axis", "colu", 4, dict(share_axis=True), False),
    ("rows axes_first", "colu", 4, dict(layout="axes_first"), False),
    ("lanes", "colu", 4, {}, True),
    ("flat S=4", "rcolu", 4, {}, False),
    ("flat S=8", "rcolu", 8, {}, False),
    ("flat S=16", "rcolu", 16, {}, False),
    ("lanes", "rcolu", 4, {}, True),
]


def _channels(kind, S, kw, cones):
    return 1 + cones * (S - 1) if kw.get("share_axis") else cones * S


def _positions(kind, S, kw, cones):
    """For each cone, the channels where it may hold an extreme value: axis first, then its section."""
    if kw.get("share_axis"):
        return [[0] + [1 + g * (S - 1) + k for k in range(S - 1)] for g in range(cones)]
    if kw.get("layout") == "axes_first":
        return [[g] + [cones + g * (S - 1) + k for k in range(S - 1)] for g in range(cones)]
    return [[g * S + k for k in range(S)] for g in range(cones)]


def _input(kind, S, kw, lanes, dtype, seed):
    """Every (position, extreme value) pair once per cone slot, cycling over the rows; 40 cones per row
    so that the 8- and 16-cone vector blocks each see some of them (and a remainder after the last)."""
    cones = 40
    C = _channels(kind, S, kw, cones)
    positions = _positions(kind, S, kw, cones)
    pairs = list(itertools.product(range(S), EXTREMES))
    rows = -(-len(pairs) // 8) * 3
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, C, generator=gen, dtype=torch.float64) * 2
    for r in range(rows):
        for g in range(0, cones, 3):  # most cones keep ordinary values, whose results must stay finite
            pos, value = pairs[(r * 7 + g) % len(pairs)]
            x[r, positions[g][pos]] = value
    if lanes:
        x = x.reshape(rows // 3, 3, C).transpose(1, 2).contiguous().reshape(rows // 3, C, 3, 1)
    return x.to(dtype), torch.randn(x.shape, generator=gen, dtype=torch.float64).to(dtype)


def _run(fn, backend, x, g, **kw):
    xg = x.clone().requires_grad_(True)
    y = fn(xg, backend=backend, **kw)
    (gx,) = torch.autograd.grad(y, xg, g)
    return y.detach(), gx


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("act", ["identity", "relu", "silu"])
@pytest.mark.parametrize("scaling", ["hard", "soft", "firm"])
@pytest.mark.parametrize("name,kind,S,kw,lanes", SHAPES, ids=[f"{s[1]} {s[0]}" for s in SHAPES])
def test_extremes_match_closed_form(name, kind, S, kw, lanes, scaling, act, dtype):
    x, g = _input(kind, S, kw, lanes, dtype, seed=S)
    fn = colu.colu if kind == "colu" else colu.rcolu
    args = dict(cone_dim=S, scaling=scaling, axis_activation=act, dim=1 if lanes else -1, **kw)
    before = dispatch.calls["cpu"]
    y, gx = _run(fn, "cpu", x, g, **args)
    assert dispatch.calls["cpu"] == before + 2, "forward and backward must both run the CPU kernel"
    y_ref, gx_ref = _run(fn, "closed_form", x, g, **args)
    torch.testing.assert_close(y, y_ref, equal_nan=True, **TOL[dtype], msg=lambda m: f"forward: {m}")
    torch.testing.assert_close(gx, gx_ref, equal_nan=True, **TOL[dtype], msg=lambda m: f"backward: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_silu_axis_of_huge_negative_values_is_zero(dtype):
    """silu(a) = a sigmoid(a) -> -0 as a -> -inf; an exponential clamped to a finite range left it at -0.61
    for a = -1e38 (float32)."""
    x = torch.tensor([[-1e38, 1.0, 2.0, 3.0], [-1e30, 1.0, 2.0, 3.0], [-1e5, 1.0, 2.0, 3.0]], dtype=dtype)
    y = colu.colu(x, 4, axis_activation="silu", backend="cpu")
    assert (y[:, 0] == 0).all(), y[:, 0]
