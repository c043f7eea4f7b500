"""The sqrt and log weightings in the fused kernels: the CPU kernel on each of its paths (flat, rows, planes, the
float16/bfloat16 conversion) and the Triton kernels under the interpreter, forward and backward, against the
reference; NaN confinement; gradcheck of the kernel's backward against its forward."""

import ctypes
import itertools
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import colu
from colu import reference
from colu.ops import cpu, dispatch
from colu.spec import ConeSpec

SCALINGS = ("sqrt", "log")
ACTS = ("identity", "relu", "silu")
TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.float64: dict(atol=1e-10, rtol=1e-10)}
LAYOUTS = [("grouped", False), ("axes_first", False), ("grouped", True)]

needs_kernel = pytest.mark.skipif(cpu.load() is None, reason="no C compiler: the CPU kernel cannot be built")


def _spec(kind, S, G, layout="grouped", share=False):
    C = 1 + G * (S - 1) if share else G * S
    return ConeSpec.resolve(C, S, None, share_axis=share, layout=layout, kind=kind)


def _values(spec, rows, seed, zero_perp=True):
    """``(rows, C)`` float64 values, channels last, with every case sqrt and log treat apart: positive and
    negative axes (r <= 0, which a relu axis makes exactly 0), zero axes and zero sections.

    RCoLU's axis value t is a sum over the group, whose rounding differs between the kernel and the reference;
    near r = 0 sqrt magnifies that without bound, so t is kept at least 0.2 |perp| away from 0 (or exactly 0:
    groups whose sums are exact). A group with perp = 0 has w = sqrt(t / eps), thousands, and its gradient
    w (g - mean(g)) loses that many times float32's rounding of g - mean(g) (``zero_perp=False`` leaves it
    out)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, spec.channels, generator=gen, dtype=torch.float64) * 2
    G, S = spec.num_cones, spec.cone_dim
    if spec.kind == "rcolu":
        groups = x.view(rows, G, S)
        mean = groups.mean(2, keepdim=True)
        norm = (groups - mean).norm(dim=2, keepdim=True)
        t = mean * S**0.5
        shift = torch.where(t.abs() < 0.2 * norm, (torch.where(t < 0, -1.0, 1.0) * 0.2 * norm - t) / S**0.5, 0.0)
        groups += shift
        if S == 4:  # sums of these are exact in any order: the reference's e = 1/2 too
            if zero_perp:
                groups[1::5, 0] = 1.5
            groups[2::5, 1] = torch.tensor([1.5, -1.5, 0.5, -0.5], dtype=torch.float64)  # t = 0
        return x
    sections = spec.section_channels()
    x[1::5, sections[0]] = 0.0
    x[2::5, spec.axis_channels()[G - 1]] = 0.0
    x[3::5, sections[G // 2]] = 0.0
    x[3::5, spec.axis_channels()[G // 2]] = 0.0
    return x


def _shaped(values, form):
    """``values`` as the input of a call: ``(N, C)``, or NCHW (odd H*W, dim=1) contiguous or channels_last."""
    if form == "flat":
        return values, -1
    rows, C = values.shape
    x = values.view(rows // 15, 3, 5, C).permute(0, 3, 1, 2)
    return (x.contiguous() if form == "nchw" else x.contiguous(memory_format=torch.channels_last)), 1


def _call(kind, spec, x, dim, scaling, act, backend):
    kw = dict(cone_dim=spec.cone_dim, scaling=scaling, axis_activation=act, dim=dim)
    if kind == "rcolu":
        return colu.rcolu(x, backend=backend, **kw) if backend else reference.rcolu(x, **kw)
    kw.update(share_axis=spec.share_axis, layout=spec.layout)
    return colu.colu(x, backend=backend, **kw) if backend else reference.colu(x, **kw)


def _check(kind, spec, values, form, dtype, scaling, act, seed=0):
    x, dim = _shaped(values.to(dtype), form)
    x = x.detach().requires_grad_(True)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)
    before = dispatch.calls["cpu"]
    y = _call(kind, spec, x, dim, scaling, act, "cpu")
    (gx,) = torch.autograd.grad(y, x, g)
    assert dispatch.calls["cpu"] == before + 2, "forward and backward must both run the CPU kernel"
    assert y.dtype == dtype and gx.dtype == dtype and y.stride() == x.stride()
    assert torch.isfinite(y).all() and torch.isfinite(gx).all()
    half = dtype not in TOL
    xr = (x.detach().float() if half else x.detach().clone()).requires_grad_(True)
    yr = _call(kind, spec, xr, dim, scaling, act, None)
    (gr,) = torch.autograd.grad(yr, xr, g.to(xr.dtype))
    if half:
        # one rounding of a float32 result that may differ from the reference's in its last bits
        tol = dict(atol=1e-3, rtol=torch.finfo(dtype).eps)
        torch.testing.assert_close(y.float(), yr.detach().to(dtype).float(), **tol)
        torch.testing.assert_close(gx.float(), gr.to(dtype).float(), **tol)
    else:
        torch.testing.assert_close(y, yr, **TOL[dtype])
        torch.testing.assert_close(gx, gr, **TOL[dtype])


@needs_kernel
@pytest.mark.parametrize("S", [3, 4, 8, 16])
@pytest.mark.parametrize("layout,share", LAYOUTS)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("scaling", SCALINGS)
def test_colu_matches_reference(scaling, act, layout, share, S):
    """Grouped cones take the flat path, axes_first and a shared axis the rows path (S = 3, 4, 8, 16 are the S
    whose rows loops are specialised for the other scalings), NCHW the planes path; channels_last NCHW is
    flat or rows again."""
    spec = _spec("colu", S, 5, layout, share)
    values = _values(spec, 30, seed=S)
    for dtype, form in itertools.product((torch.float32, torch.float64), ("flat", "nchw", "channels_last")):
        _check("colu", spec, values, form, dtype, scaling, act)


@needs_kernel
@pytest.mark.parametrize("S", [3, 4, 8, 16])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("scaling", SCALINGS)
def test_rcolu_matches_reference(scaling, act, S):
    spec = _spec("rcolu", S, 5)
    for dtype, form in itertools.product((torch.float32, torch.float64), ("flat", "nchw", "channels_last")):
        values = _values(spec, 30, seed=S, zero_perp=dtype is torch.float64)
        _check("rcolu", spec, values, form, dtype, scaling, act)


@needs_kernel
@pytest.mark.parametrize("S", [3, 8])
@pytest.mark.parametrize("kind,layout,share", [("colu", *LAYOUTS[0]), ("colu", *LAYOUTS[1]), ("colu", *LAYOUTS[2]),
                                               ("rcolu", "grouped", False)])
@pytest.mark.parametrize("scaling", SCALINGS)
def test_bfloat16(scaling, kind, layout, share, S):
    """bfloat16 is converted in the kernel a chunk of cones (flat) or of rows (axes_first, shared axis) at a
    time, and upcast around it for planes; every axis activation in turn."""
    spec = _spec(kind, S, 5, layout, share)
    values = _values(spec, 30, seed=S)
    for act, form in zip(ACTS, ("flat", "channels_last", "nchw")):
        _check(kind, spec, values, form, torch.bfloat16, scaling, act)


@needs_kernel
@pytest.mark.parametrize("scaling", SCALINGS)
def test_bfloat16_runs_in_the_kernel(scaling):
    """The half-precision entry takes sqrt and log itself (no upcast in torch) wherever it takes the others."""
    lib = cpu.load()
    for kind, layout, share in [("colu", "grouped", False), ("colu", "axes_first", False), ("colu", "grouped", True),
                                ("rcolu", "grouped", False)]:
        spec = _spec(kind, 4, 6, layout, share)
        x = _values(spec, 7, seed=1).float()
        cfg = cpu.config(spec, scaling, 1e-7, "relu")
        xh = x.to(torch.bfloat16)
        y = torch.empty_like(xh)
        assert cpu.run(lib, 0, xh, None, y, 7, spec.channels, 1, cfg)
        expected = getattr(reference, kind)(xh.float(), 4, scaling=scaling, axis_activation="relu",
                                            **({} if kind == "rcolu" else dict(layout=layout, share_axis=share)))
        torch.testing.assert_close(y.float(), expected.to(torch.bfloat16).float(), atol=1e-3,
                                   rtol=torch.finfo(torch.bfloat16).eps)


@needs_kernel
@pytest.mark.parametrize("scaling", SCALINGS)
@pytest.mark.parametrize(
    "kind,layout,share,S,G,form",
    [
        ("colu", "grouped", False, 4, 48, "flat"),  # float32 S = 4 has vector blocks for the other scalings
        ("colu", "grouped", False, 16, 48, "flat"),
        ("rcolu", "grouped", False, 8, 48, "flat"),
        ("colu", "axes_first", False, 4, 150, "flat"),  # rows of more than one block of 64 cones
        ("colu", "grouped", True, 8, 150, "flat"),
        ("colu", "grouped", False, 8, 6, "nchw"),  # planes S = 8 is specialised for the other scalings
        ("rcolu", "grouped", False, 4, 6, "nchw"),
    ],
)
def test_larger_tensors_on_several_threads(scaling, kind, layout, share, S, G, form):
    spec = _spec(kind, S, G, layout, share)
    values = _values(spec, 15 * 41, seed=G, zero_perp=False)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(max(2, threads))
        for act in ("identity", "silu"):
            _check(kind, spec, values, form, torch.float32, scaling, act, seed=G)
    finally:
        torch.set_num_threads(threads)


@needs_kernel
@pytest.mark.parametrize("S", [3, 8])
@pytest.mark.parametrize("fn,where", [("colu", "section"), ("colu", "axis"), ("rcolu", "section"),
                                      ("shared", "section"), ("axes_first", "section"), ("axes_first", "axis")])
@pytest.mark.parametrize("scaling", SCALINGS)
def test_nan_stays_in_its_cone(scaling, fn, where, S):
    """A NaN makes r NaN (a NaN norm, or a NaN axis): w(NaN) is NaN, as the reference gives, not the 0 of r <= 0,
    and it stays in its cone, forward and backward. (A shared axis belongs to every cone.)"""
    kind = "rcolu" if fn == "rcolu" else "colu"
    spec = _spec(kind, S, 16, "axes_first" if fn == "axes_first" else "grouped", fn == "shared")
    cone = spec.cone_channels()[1]
    x = torch.randn(3, spec.channels, generator=torch.Generator().manual_seed(S))
    x[1, cone[0] if where == "axis" else cone[-1]] = float("nan")
    x.requires_grad_(True)
    y = _call(kind, spec, x, -1, scaling, "identity", "cpu")
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(y, _call(kind, spec, x.detach(), -1, scaling, "identity", None), equal_nan=True,
                               **TOL[torch.float32])
    nan_y = torch.isnan(y)
    sections = cone if kind == "rcolu" else cone[1:]
    assert nan_y[1, sections].all()
    others = torch.ones(spec.channels, dtype=torch.bool)
    others[cone] = False
    if fn == "shared":
        others[0] = False  # the shared axis' gradient sums over all cones
    assert not nan_y[0].any() and not nan_y[2].any() and not nan_y[1, others].any()
    assert not torch.isnan(x.grad[0]).any() and not torch.isnan(x.grad[2]).any()
    assert not torch.isnan(x.grad[1, others]).any()


def _gradcheck_input(spec, shape, seed):
    """Away from the kinks (r = 0, where sqrt's slope is infinite; relu's at 0) by more than gradcheck's step."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    x = torch.where(x < 0, x - 0.3, x + 0.3)
    if spec.kind == "rcolu":
        groups = x.movedim(1, -1).reshape(-1, spec.num_cones, spec.cone_dim)
        groups += torch.where(torch.arange(groups.shape[1]) % 2 == 0, 1.5, -1.5)[:, None]
        x = groups.reshape(x.movedim(1, -1).shape).movedim(-1, 1).contiguous()
    return x.requires_grad_(True)


@needs_kernel
@pytest.mark.parametrize("scaling", SCALINGS)
@pytest.mark.parametrize(
    "kind,layout,share,S,act,shape",
    [
        ("colu", "grouped", False, 4, "identity", (3, 12)),
        ("colu", "axes_first", False, 3, "relu", (3, 12)),
        ("colu", "grouped", True, 4, "silu", (2, 10, 3)),
        ("colu", "grouped", False, 5, "silu", (2, 10, 3)),
        ("rcolu", "grouped", False, 4, "relu", (3, 12)),
        ("rcolu", "grouped", False, 3, "silu", (2, 9, 3)),
    ],
)
def test_gradcheck(scaling, kind, layout, share, S, act, shape):
    """The kernel's backward is the derivative of its forward (float64, flat, rows and planes paths)."""
    spec = _spec(kind, S, (shape[1] - 1) // (S - 1) if share else shape[1] // S, layout, share)
    x = _gradcheck_input(spec, shape, seed=S)
    before = dispatch.calls["cpu"]
    assert torch.autograd.gradcheck(lambda t: _call(kind, spec, t, 1, scaling, act, "cpu"), (x,))
    assert dispatch.calls["cpu"] > before


# ------------------------------------------------------------------ Triton

TRITON_SCRIPT = textwrap.dedent(
    """
    import sys, torch, colu
    from colu import reference
    from colu.ops import dispatch
    torch.manual_seed(0)
    tol = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.float64: dict(atol=1e-10, rtol=1e-10)}
    cases = {
        "quick": [
            ("colu", dict(cone_dim=4), "identity", (5, 12), -1),
            ("colu", dict(cone_dim=3, share_axis=True), "relu", (2, 7, 3, 2), 1),
            ("rcolu", dict(cone_dim=4), "silu", (5, 12), -1),
        ],
        "more": [
            ("colu", dict(cone_dim=3, layout="axes_first"), "silu", (5, 9), -1),
            ("colu", dict(cone_dim=4, layout="axes_first"), "relu", (2, 12, 3, 2), 1),
            ("colu", dict(cone_dim=4, share_axis=True), "identity", (5, 10), -1),
            ("colu", dict(cone_dim=3), "relu", (2, 9, 3, 2), 1),
            ("rcolu", dict(cone_dim=3), "relu", (2, 9, 3, 2), 1),
            ("rcolu", dict(cone_dim=8), "identity", (5, 16), -1),
        ],
    }[sys.argv[1]]
    n = 0
    for dtype in (torch.float32, torch.float64):
        for (kind, kw, act, shape, dim), scaling in [(c, s) for c in cases for s in ("sqrt", "log")]:
            kw = dict(kw, scaling=scaling, axis_activation=act, dim=dim)
            x = torch.randn(shape, dtype=torch.float64) * 2
            xl = x.movedim(dim, -1)
            if kind == "colu":
                # a zero section and a zero axis (r = 0); relu makes every negative axis r = 0 too
                S = kw["cone_dim"]
                sec = slice(1, S) if not kw.get("share_axis") and "layout" not in kw else slice(xl.shape[-1] - S + 1, None)
                xl[0, ..., sec] = 0.0
                xl[1, ..., 0] = 0.0
            else:
                # t kept off 0, where sqrt magnifies the rounding of the group's sum
                g = xl.unflatten(-1, (-1, kw["cone_dim"]))
                t = g.mean(-1, keepdim=True)
                g += torch.where(t < 0, -1.0, 1.0)
            x = x.to(dtype).requires_grad_(True)
            g = torch.randn_like(x)
            before = dispatch.calls["triton"]
            y = getattr(colu, kind)(x, backend="triton", **kw)
            (gx,) = torch.autograd.grad(y, x, g)
            assert dispatch.calls["triton"] == before + 2, dispatch.calls
            assert torch.isfinite(y).all() and torch.isfinite(gx).all()
            xr = x.detach().clone().requires_grad_(True)
            yr = getattr(reference, kind)(xr, **kw)
            (gr,) = torch.autograd.grad(yr, xr, g)
            torch.testing.assert_close(y, yr, **tol[dtype])
            torch.testing.assert_close(gx, gr, **tol[dtype])
            n += 1
    # NaN r gives NaN w (not the 0 of r <= 0), in its cone only
    for scaling in ("sqrt", "log"):
        x = torch.randn(2, 12)
        x[0, 4] = float("nan")  # the axis of cone 1
        y = colu.colu(x, 4, scaling=scaling, backend="triton")
        assert torch.isnan(y[0, 4:8]).all() and not torch.isnan(y[0, :4]).any() and not torch.isnan(y[0, 8:]).any()
        assert not torch.isnan(y[1]).any()
    print("TRITON-OK", n)
    """
)


def _run_interpreter(which):
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    env.pop("COLU_BACKEND", None)
    proc = subprocess.run([sys.executable, "-c", TRITON_SCRIPT, which], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout


def test_triton_sqrt_log_under_interpreter():
    """A grouped, a shared-axis NCHW and an RCoLU configuration; float32 and float64."""
    assert "TRITON-OK 12" in _run_interpreter("quick")


@pytest.mark.slow
def test_triton_sqrt_log_under_interpreter_more_layouts():
    assert "TRITON-OK 24" in _run_interpreter("more")


def test_triton_sqrt_log_compile_for_a_gpu_target():
    """The new branches compile for sm_90 (the interpreter does not compile): log1p from libdevice, in float32,
    float64 and bfloat16, forward and backward; the grouped layout keeps its 128-bit accesses."""
    import re

    pytest.importorskip("triton")
    pytest.importorskip("triton.backends.nvidia", reason="triton has no CUDA backend here")
    from colu.ops import triton_kernels

    cases = [  # (kind, layout, share, S, scaling, act, dtype, inner)
        ("colu", "grouped", False, 4, "sqrt", "relu", torch.float32, 1),
        ("rcolu", "grouped", False, 4, "log", "identity", torch.float32, 1),
        ("colu", "axes_first", False, 3, "log", "silu", torch.float64, 49),
        ("colu", "grouped", True, 8, "sqrt", "identity", torch.bfloat16, 1),
    ]
    for kind, layout, share, S, scaling, act, dtype, inner in cases:
        spec = _spec(kind, S, 16, layout, share)  # C a multiple of 16, which the alignment proof needs
        for backward in (False, True):
            ptx = triton_kernels.compile_ptx(spec, scaling, act, (64, spec.channels, inner), dtype=dtype,
                                             backward=backward)
            assert ".entry" in ptx
            if dtype is torch.float32 and not share and layout == "grouped":
                widths = set(re.findall(r"\b(?:ld|st)\.global(?:\.v(\d))?\.[bfu](\d+)", ptx))
                assert widths == {("4", "32")}, widths
