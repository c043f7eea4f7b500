"""Sections whose squared norm overflows float32 while their values do not.

A section value above about 1.8e19 / sqrt(S - 1) squares past float32's
largest value: the norm comes out infinite and the weight, the output and the
gradient wrong (``[1e20, 5e19, 0, 0]``, inside the cone, came back as
``[1e20, 0, 0, 0]``). The C kernel notices the overflow in the loop that
computes the norms and computes the call again in float64; the closed form,
the Triton kernels and the reference rescale those cones' norms. Every case
here compares with the same op on the float64 copy of the input, which has no
overflow below 1e154.
"""

import itertools

import pytest
import torch

import colu
from colu import reference
from colu.ops import cpu
from colu.spec import ConeSpec

pytestmark = pytest.mark.skipif(cpu.load() is None, reason="no C compiler: the CPU kernel cannot be built")


def _huge_inputs(shape, cone_axis, S, seed, scales=(1e19, 1e20, 1e30, 3e37)):
    """Normal values, with every third cone along ``cone_axis`` scaled by one of ``scales``: some cones overflow,
    their neighbours (ordinary values in the same vector blocks) must come out as before."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    cones = x.shape[cone_axis] // S
    view = x.movedim(cone_axis, -1)
    for g in range(0, cones, 3):
        view[..., g * S : (g + 1) * S] *= scales[(g // 3) % len(scales)]
    return x.float(), torch.randn(shape, generator=gen)


def _per_cone(t, spec, axis):
    """``t`` with each entry divided by the largest magnitude in its cone (in any of its cones, for a shared
    axis); ``axis`` is the channel dimension."""
    v = t.movedim(axis, -1)
    idx = spec.cone_channels()  # (G, S)
    cone_max = v.abs()[..., idx].amax(-1, keepdim=True).expand(*v.shape[:-1], *idx.shape)
    index = idx.flatten().expand(*v.shape[:-1], idx.numel())
    scale = torch.zeros_like(v).scatter_reduce(-1, index, cone_max.flatten(-2), "amax")
    return (v / scale.clamp_min(1e-30)).movedim(-1, axis)


def _check(fn, x, g, spec, axis=-1, dtype=torch.float32, rtol=1e-5):
    """``fn`` on ``x`` against ``fn`` on its float64 copy. CoLU's values are compared entry by entry. RCoLU
    centres each cone, so its float32 entries are only as exact as the cone's largest, and so is every
    gradient entry: those are compared relative to the largest entry of their cone."""
    x = x.to(dtype).requires_grad_(True)
    g = g.to(dtype)
    y = fn(x)
    (gx,) = torch.autograd.grad(y, x, g)
    x64 = x.detach().double().requires_grad_(True)
    y64 = fn(x64)
    (gx64,) = torch.autograd.grad(y64, x64, g.double())
    assert torch.isfinite(y).all() and torch.isfinite(gx).all()
    if spec.kind == "colu":
        torch.testing.assert_close(y, y64.to(dtype), rtol=rtol, atol=0)
    else:
        torch.testing.assert_close(_per_cone(y.double(), spec, axis), _per_cone(y64, spec, axis), rtol=rtol, atol=10 * rtol)
    torch.testing.assert_close(_per_cone(gx.double(), spec, axis), _per_cone(gx64, spec, axis), rtol=rtol, atol=10 * rtol)


def test_the_reported_cone_comes_back_unchanged():
    x = torch.tensor([[1e20, 5e19, 0.0, 0.0]])
    for backend in ("auto", "cpu", "closed_form"):
        torch.testing.assert_close(colu.colu(x, 4, backend=backend), x, rtol=0, atol=0)
    torch.testing.assert_close(reference.colu(x, 4), x, rtol=0, atol=0)
    # near float32's largest value: the values fit, their squares are 1e76
    x = torch.tensor([[3e38, 1e38, -1e38, 0.0]])
    torch.testing.assert_close(colu.colu(x, 4), x, rtol=0, atol=0)
    # outside the cone the section is scaled, not zeroed: w = a / |s| = 1/3
    y = colu.colu(torch.tensor([[1e20, 3e20, 0.0, 0.0]]), 4)
    torch.testing.assert_close(y, torch.tensor([[1e20, 1e20, 0.0, 0.0]]), rtol=1e-6, atol=0)


FLAT_CASES = list(
    itertools.product(
        ["colu", "rcolu"],
        [3, 4, 5, 8, 16, 24],
        [("hard", "identity"), ("soft", "identity"), ("firm", "relu"), ("sqrt", "identity"), ("hard", "silu")],
    )
)


@pytest.mark.parametrize("kind,S,combo", FLAT_CASES)
def test_flat_path(kind, S, combo):
    # 37 rows of 19 cones: the vector blocks, their remainders and the loops specialised per S all see
    # overflowing cones
    scaling, act = combo
    fn = colu.colu if kind == "colu" else colu.rcolu
    x, g = _huge_inputs((37, 19 * S), -1, S, seed=S)
    _check(lambda t: fn(t, S, scaling=scaling, axis_activation=act), x, g, ConeSpec.resolve(19 * S, S, kind=kind))


@pytest.mark.parametrize("S", [3, 4, 5, 8, 16])
@pytest.mark.parametrize("layout,share", [("axes_first", False), ("grouped", True)])
@pytest.mark.parametrize("scaling", ["hard", "soft", "log"])
def test_rows_path(S, layout, share, scaling):
    G = 19
    C = 1 + G * (S - 1) if share else G * S
    gen = torch.Generator().manual_seed(S)
    x = torch.randn(37, C, generator=gen)
    x[:, 1::7] *= 1e20  # section channels (and, for axes_first, some axes) of some cones
    x[::5, 0] *= 1e21
    g = torch.randn(37, C, generator=gen)
    spec = ConeSpec.resolve(C, S, share_axis=share, layout=layout)
    _check(lambda t: colu.colu(t, S, layout=layout, share_axis=share, scaling=scaling), x, g, spec)


@pytest.mark.parametrize("S", [3, 4, 8])
@pytest.mark.parametrize("kind", ["colu", "rcolu"])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_planes_and_channels_last(S, kind, memory_format):
    fn = colu.colu if kind == "colu" else colu.rcolu
    x, g = _huge_inputs((3, 5 * S, 9, 7), 1, S, seed=S)
    x = x.contiguous(memory_format=memory_format)
    _check(lambda t: fn(t, S, dim=1, scaling="soft"), x, g, ConeSpec.resolve(5 * S, S, kind=kind), axis=1)


@pytest.mark.parametrize("kind,layout", [("colu", "grouped"), ("colu", "axes_first"), ("rcolu", "grouped")])
def test_bfloat16(kind, layout):
    # bfloat16 has float32's range: the kernel's own bfloat16 path (float32 loops on converted chunks)
    # computes overflowing calls again in float64 too; compare with float64 on the same bfloat16 values
    S = 4
    x, g = _huge_inputs((41, 17 * S), -1, S, seed=7)
    x = x.bfloat16().float()
    kw = {} if kind == "rcolu" else {"layout": layout}
    fn = colu.colu if kind == "colu" else colu.rcolu
    _check(lambda t: fn(t, S, **kw), x, g, ConeSpec.resolve(17 * S, S, kind=kind, **kw), dtype=torch.bfloat16, rtol=1e-2)


@pytest.mark.parametrize("backend", ["closed_form"])
@pytest.mark.parametrize("kind", ["colu", "rcolu"])
def test_closed_form(backend, kind):
    fn = colu.colu if kind == "colu" else colu.rcolu
    x, g = _huge_inputs((11, 7 * 4), -1, 4, seed=3)
    _check(lambda t: fn(t, 4, scaling="soft", backend=backend), x, g, ConeSpec.resolve(7 * 4, 4, kind=kind))
    x, g = _huge_inputs((2, 3 * 4, 5, 3), 1, 4, seed=4)
    _check(lambda t: fn(t, 4, dim=1, scaling="hard", backend=backend), x, g, ConeSpec.resolve(3 * 4, 4, kind=kind), axis=1)


def test_reference_and_exact_scaling():
    x, _ = _huge_inputs((5, 6 * 4), -1, 4, seed=5)
    for fn in (reference.colu, reference.rcolu):
        for scaling in ("hard", "exact"):
            torch.testing.assert_close(fn(x, 4, scaling=scaling), fn(x.double(), 4, scaling=scaling).float(), rtol=1e-5, atol=0)


def test_only_overflowing_calls_are_computed_again():
    # an ordinary call keeps the float32 loops' result (which differs from float64's rounded in some
    # elements); a call with one overflowing cone is computed again whole, every row then float64's rounded
    x = torch.randn(64, 512)
    y64 = colu.colu(x.double(), 4, scaling="soft").float()
    assert not torch.equal(colu.colu(x, 4, scaling="soft"), y64)
    x[0, :4] = torch.tensor([1e20, 5e19, 0.0, 0.0])
    y, y64 = colu.colu(x, 4, scaling="soft"), colu.colu(x.double(), 4, scaling="soft").float()
    assert torch.equal(y, y64)
