"""The vector rows for the axes_first layout (CoLU, float32): whole blocks of 8 cones whose sections are read
and written with vectors that run into the next cone, the row's last cone through a mask, the cones after
the last whole block, against the reference."""

import pytest
import torch

import colu
from colu import reference
from colu.ops import cpu, dispatch

pytestmark = pytest.mark.skipif(cpu.load() is None, reason="no C compiler: the CPU kernel cannot be built")

TOL = dict(atol=2e-5, rtol=2e-5)


def _kernel_and_reference(x, g, S, scaling, act, dtype=torch.float32):
    kw = dict(cone_dim=S, scaling=scaling, layout="axes_first", axis_activation=act)
    before = dispatch.calls["cpu"]
    xk = x.to(dtype).requires_grad_(True)
    y = colu.colu(xk, backend="cpu", **kw)
    (gx,) = torch.autograd.grad(y, xk, g.to(dtype))
    assert dispatch.calls["cpu"] == before + 2, "forward and backward must both run the CPU kernel"
    xr = x.double().requires_grad_(True)
    yr = reference.colu(xr, **kw)
    (gr,) = torch.autograd.grad(yr, xr, g.double())
    return (y.detach(), gx), (yr.detach(), gr)


@pytest.mark.parametrize("S", [4, 8, 16, 24])
@pytest.mark.parametrize("scaling", ["hard", "soft", "firm"])
@pytest.mark.parametrize("act", ["identity", "relu", "silu"])
@pytest.mark.parametrize("G", [3, 8, 13, 64, 8 * 9 + 7])
def test_axes_first_rows_match_reference(S, scaling, act, G):
    # fewer cones than a block, exactly one (its last cone masked), a block and a remainder, whole chunks of
    # blocks (the last cone masked), more than a chunk with a remainder; 5 rows so that a row's spill into
    # the next would show
    gen = torch.Generator().manual_seed(S * 1000 + G)
    x = torch.randn(5, S * G, generator=gen) * 2
    g = torch.randn(x.shape, generator=gen)
    (y, gx), (yr, gr) = _kernel_and_reference(x, g, S, scaling, act)
    torch.testing.assert_close(y, yr.float(), **TOL)
    torch.testing.assert_close(gx, gr.float(), **TOL)


@pytest.mark.parametrize("S", [4, 8, 16])
def test_axes_first_rows_in_bfloat16(S):
    gen = torch.Generator().manual_seed(S)
    x = torch.randn(6, S * 40, generator=gen)
    g = torch.randn(x.shape, generator=gen)
    (y, gx), (yr, gr) = _kernel_and_reference(x, g, S, "soft", "silu", torch.bfloat16)
    torch.testing.assert_close(y.float(), yr.float(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(gx.float(), gr.float(), atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("S", [4, 8, 16])
@pytest.mark.parametrize("threads", [1, 2])
def test_axes_first_rows_split_between_threads(S, threads):
    # rows split between threads: a row's last cone is written through a mask, never into the next row
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        gen = torch.Generator().manual_seed(S + threads)
        x = torch.randn(301, S * 32, generator=gen)
        g = torch.randn(x.shape, generator=gen)
        (y, gx), (yr, gr) = _kernel_and_reference(x, g, S, "hard", "relu")
        torch.testing.assert_close(y, yr.float(), **TOL)
        torch.testing.assert_close(gx, gr.float(), **TOL)
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("S", [4, 8, 16])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_axes_first_nonfinite_stays_in_its_cone(S, bad):
    # a non-finite entry in one cone's axis or section (first or last channel, where the vectors run into
    # the neighbours): only that cone's outputs and input gradients may be non-finite
    G = 8 * 3
    for cone in (0, 6, 7, 8, G - 1):
        for where in ("axis", "first", "last"):
            x = torch.randn(3, S * G, generator=torch.Generator().manual_seed(cone))
            col = {"axis": cone, "first": G + cone * (S - 1), "last": G + cone * (S - 1) + S - 2}[where]
            x[1, col] = bad
            xk = x.requires_grad_(True)
            y = colu.colu(xk, cone_dim=S, layout="axes_first", scaling="soft", backend="cpu")
            (gx,) = torch.autograd.grad(y, xk, torch.ones_like(y))
            mine = torch.zeros(x.shape, dtype=torch.bool)
            mine[1, cone] = True
            mine[1, G + cone * (S - 1) : G + (cone + 1) * (S - 1)] = True
            for out in (y.detach(), gx):
                assert torch.isfinite(out[~mine]).all(), (cone, where)
                assert not torch.isfinite(out[mine]).all(), (cone, where)
