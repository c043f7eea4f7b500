"""The C kernel on cones of strided channels (NCHW with dim=1, any dim with inner size > 1) against the reference.

Covers the planes path's specialised float32 loops (S in {4, 8}: one per kind and scaling, the axis activation
read at run time) and its run-time loops (other S such as 3 and 16, and float64): forward and backward, every
layout, inner sizes that are not a multiple of the vector width or the tile, and NaN staying in its cone.
"""

import itertools

import pytest
import torch

import colu
from colu import reference
from colu.ops import cpu

pytestmark = pytest.mark.skipif(cpu.load() is None, reason="the C kernel could not be built here")

LAYOUTS = [("colu", "grouped", False), ("colu", "axes_first", False), ("colu", "grouped", True), ("rcolu", "grouped", False)]


def _call(kind, layout, share, S, x, **kw):
    if kind == "colu":
        return colu.colu(x, S, layout=layout, share_axis=share, **kw), reference.colu(
            x.detach().double().requires_grad_(), S, layout=layout, share_axis=share, **kw)
    return colu.rcolu(x, S, **kw), reference.rcolu(x.detach().double().requires_grad_(), S, **kw)


def _leaves(t):
    """The leaf tensors a result was computed from (the reference's float64 copy of the input)."""
    seen, stack, out = set(), [t.grad_fn], []
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if hasattr(fn, "variable"):
            out.append(fn.variable)
        stack.extend(f for f, _ in fn.next_functions)
    return out


def _channels(kind, share, S, G=3):
    return 1 + G * (S - 1) if share else G * S


@pytest.mark.parametrize("S", [3, 4, 5, 8, 16])
@pytest.mark.parametrize("kind,layout,share", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_strided_cones_match_the_reference(S, kind, layout, share, dtype):
    torch.manual_seed(S)
    C = _channels(kind, share, S)
    # inner 7*13 = 91 and 130: neither a multiple of the vector width nor of the 64-pixel tile
    for inner_shape, scaling, act in itertools.product([(7, 13), (130,)], ["hard", "soft", "firm"],
                                                       ["identity", "relu", "silu"]):
        x = (torch.randn(2, C, *inner_shape, dtype=dtype) * 2).requires_grad_()
        y, want = _call(kind, layout, share, S, x, scaling=scaling, axis_activation=act, dim=1)
        g = torch.randn_like(y)
        y.backward(g)
        (ref_input,) = _leaves(want)  # the reference's float64 copy of x
        want.backward(g.double())
        f32 = dtype == torch.float32
        torch.testing.assert_close(y.double(), want.detach(), **(dict(atol=2e-5, rtol=1e-4) if f32
                                                                  else dict(atol=1e-10, rtol=1e-9)))
        torch.testing.assert_close(x.grad.double(), ref_input.grad, **(dict(atol=1e-4, rtol=1e-3) if f32
                                                                       else dict(atol=1e-9, rtol=1e-8)))


@pytest.mark.parametrize("dim", [1, 2])
def test_a_middle_dim_and_channels_last_match_the_reference(dim):
    torch.manual_seed(0)
    x = torch.randn(3, 8, 8, 5) if dim == 1 else torch.randn(3, 5, 8, 6)
    for scaling in ("hard", "soft"):
        torch.testing.assert_close(colu.colu(x, 4, dim=dim, scaling=scaling),
                                   reference.colu(x, 4, dim=dim, scaling=scaling), atol=2e-6, rtol=1e-5)
    nchw = torch.randn(4, 16, 9, 11)
    channels_last = nchw.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(colu.colu(channels_last, 4, dim=1), reference.colu(nchw, 4, dim=1),
                               atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("kind,layout,share", LAYOUTS)
@pytest.mark.parametrize("S,pixel", [(4, 65), (4, 5), (8, 21)])
def test_nan_stays_in_its_cone(kind, layout, share, S, pixel):
    # pixel 65: the second 64-pixel tile's scalar tail; 5 and 21: inside the vector chunks of the first tile
    G = 3
    C = _channels(kind, share, S, G)
    x = torch.randn(2, C, 70).requires_grad_()
    with torch.no_grad():
        x[1, C - 1, pixel] = float("nan")  # a section channel of the last cone
    y, _ = _call(kind, layout, share, S, x, dim=1)
    y.backward(torch.ones_like(y))
    bad = y.isnan()
    spec = colu.ConeSpec.resolve(C, S, share_axis=share, layout=layout, kind=kind)
    last_cone = set(spec.cone_channels()[-1].tolist())
    assert bad.any()
    # only sample 1, pixel 65, and only channels of the cone holding the NaN (a shared axis belongs to all cones)
    where = bad.nonzero().tolist()
    assert {(n, p) for n, _, p in where} == {(1, pixel)}
    assert {ch for _, ch, _ in where} <= last_cone
    grad_bad = x.grad.isnan()
    assert grad_bad.any() and {(n, p) for n, _, p in grad_bad.nonzero().tolist()} == {(1, pixel)}
