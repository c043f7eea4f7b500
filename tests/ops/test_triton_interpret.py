"""Triton kernels run in Triton's CPU interpreter against the reference.

TRITON_INTERPRET must be set before triton is imported, so the checks run in
a fresh interpreter process (the interpreter is slow: shapes are small).
"""

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

SCRIPT = textwrap.dedent(
    """
    import itertools, torch, colu
    from colu import reference
    from colu.ops import dispatch
    torch.manual_seed(0)
    tol = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.float64: dict(atol=1e-10, rtol=1e-10)}
    n = 0
    def check(fn, ref, x, dtype):
        global n
        x = x.to(dtype).requires_grad_(True)
        g = torch.randn_like(x)
        before = dispatch.calls["triton"]
        y = fn(x)
        (gx,) = torch.autograd.grad(y, x, g)
        assert dispatch.calls["triton"] == before + 2, dispatch.calls
        xr = x.detach().clone().requires_grad_(True)
        yr = ref(xr)
        (gr,) = torch.autograd.grad(yr, xr, g)
        torch.testing.assert_close(y, yr, **tol[dtype])
        torch.testing.assert_close(gx, gr, **tol[dtype])
        n += 1
    combos = [("hard", "identity"), ("soft", "relu"), ("firm", "silu")]
    for dtype in (torch.float32, torch.float64):
        for (layout, share), S, (sc, act) in itertools.product(
            [("grouped", False), ("axes_first", False), ("grouped", True)], (3, 4), combos
        ):
            G = 3
            C = 1 + G * (S - 1) if share else G * S
            kw = dict(cone_dim=S, share_axis=share, layout=layout, scaling=sc, axis_activation=act, backend="triton")
            rk = {k: v for k, v in kw.items() if k != "backend"}
            check(lambda t: colu.colu(t, **kw), lambda t: reference.colu(t, **rk), torch.randn(5, C) * 2, dtype)
            check(lambda t: colu.colu(t, dim=1, **kw), lambda t: reference.colu(t, dim=1, **rk), torch.randn(2, C, 3, 2) * 2, dtype)
        # a single cone is contiguous channels in every layout, so it takes the LINEAR channel indices
        for (layout, share), (sc, act) in itertools.product([("axes_first", False), ("grouped", True)], combos):
            kw = dict(num_cones=1, share_axis=share, layout=layout, scaling=sc, axis_activation=act)
            check(lambda t: colu.colu(t, backend="triton", **kw), lambda t: reference.colu(t, **kw), torch.randn(5, 4) * 2, dtype)
            check(lambda t: colu.colu(t, dim=1, backend="triton", **kw), lambda t: reference.colu(t, dim=1, **kw), torch.randn(2, 4, 3, 2) * 2, dtype)
        for S, (sc, act) in itertools.product((3, 4), combos):
            kw = dict(cone_dim=S, scaling=sc, axis_activation=act)
            check(lambda t: colu.rcolu(t, backend="triton", **kw), lambda t: reference.rcolu(t, **kw), torch.randn(5, 3 * S) * 2, dtype)
            check(lambda t: colu.rcolu(t, dim=1, backend="triton", **kw), lambda t: reference.rcolu(t, dim=1, **kw), torch.randn(2, 3 * S, 3, 2) * 2, dtype)
    # half types: loaded as they are, computed in float32, returned in their own dtype
    for dtype in (torch.float16, torch.bfloat16):
        cases = [
            (lambda t: colu.colu(t, 4, backend="triton"), lambda t: reference.colu(t, 4), (5, 12)),
            (lambda t: colu.colu(t, 4, share_axis=True, backend="triton"), lambda t: reference.colu(t, 4, share_axis=True), (5, 10)),
            (lambda t: colu.rcolu(t, 4, scaling="soft", backend="triton"), lambda t: reference.rcolu(t, 4, scaling="soft"), (5, 12)),
            (lambda t: colu.colu(t, 4, dim=1, backend="triton"), lambda t: reference.colu(t, 4, dim=1), (2, 8, 3, 2)),
        ]
        for fn, ref, shape in cases:
            x = (torch.randn(shape) * 2).to(dtype).requires_grad_(True)
            g = torch.randn(shape).to(dtype)
            before = dispatch.calls["triton"]
            y = fn(x)
            (gx,) = torch.autograd.grad(y, x, g)
            assert dispatch.calls["triton"] == before + 2, dispatch.calls
            assert y.dtype == dtype and gx.dtype == dtype
            xr = x.detach().float().requires_grad_(True)
            yr = ref(xr)
            (gr,) = torch.autograd.grad(yr, xr, g.float())
            torch.testing.assert_close(y.float(), yr, atol=3e-2, rtol=2e-2)
            torch.testing.assert_close(gx.float(), gr, atol=3e-2, rtol=2e-2)
            n += 1
    # repeated calls replay a cached Triton plan (launch parameters worked out once), with and without grad
    from colu.ops import plans
    x = torch.randn(6, 16) * 2
    g = torch.randn(6, 16)
    xr = x.clone().requires_grad_(True)
    yr = reference.rcolu(xr, 4, scaling="soft")
    (gr,) = torch.autograd.grad(yr, xr, g)
    for _ in range(3):
        before = dispatch.calls["triton"]
        xg = x.clone().requires_grad_(True)
        y = colu.rcolu(xg, 4, scaling="soft", backend="triton")
        (gx,) = torch.autograd.grad(y, xg, g)
        with torch.no_grad():
            y2 = colu.rcolu(x, 4, scaling="soft", backend="triton")
        assert dispatch.calls["triton"] == before + 3, dispatch.calls
        torch.testing.assert_close(y, yr, **tol[torch.float32])
        torch.testing.assert_close(y2, yr, **tol[torch.float32])
        torch.testing.assert_close(gx, gr, **tol[torch.float32])
    assert any(isinstance(p, plans.TritonPlan) for p in plans.cache.values()), "the Triton path should have cached a plan"
    # NaN stays in its cone
    x = torch.randn(2, 12)
    x[0, 5] = float("nan")
    y = colu.colu(x, 4, backend="triton")
    assert torch.isnan(y[0, 5:8]).all() and not torch.isnan(y[0, :4]).any() and not torch.isnan(y[0, 8:]).any()
    assert not torch.isnan(y[1]).any()
    # sections whose squares overflow float32 (values 1e20..3e37) take the rescaled norm: as float64
    for fn, kw in ((colu.colu, {}), (colu.colu, dict(layout="axes_first")), (colu.colu, dict(share_axis=True)), (colu.rcolu, {})):
        C = 13 if kw.get("share_axis") else 16
        x = torch.randn(3, C, dtype=torch.float64)
        x[0, :C // 2] *= 1e20
        x[1] *= 3e37
        x = x.float().requires_grad_(True)
        g = torch.randn(3, C)
        y = fn(x, 4, backend="triton", **kw)
        (gx,) = torch.autograd.grad(y, x, g)
        x64 = x.detach().double().requires_grad_(True)
        y64 = fn(x64, 4, backend="triton", **kw)
        (g64,) = torch.autograd.grad(y64, x64, g.double())
        assert torch.isfinite(y).all(), (fn, kw, y)
        torch.testing.assert_close(y, y64.float(), rtol=1e-5, atol=0)
        scale = g64.abs().amax(-1, keepdim=True)
        torch.testing.assert_close(gx.double() / scale, g64 / scale, rtol=1e-5, atol=1e-4)
    print("TRITON-OK", n)
    """
)


@pytest.mark.slow
def test_triton_kernels_under_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    env.pop("COLU_BACKEND", None)
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "TRITON-OK 128" in proc.stdout, proc.stdout


@pytest.mark.slow
def test_core_import_does_not_import_triton():
    code = "import sys, torch, colu; x = torch.randn(4, 8); colu.colu(x, 4); print('triton' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    "kind,S,shape,dtype",
    [
        ("colu", 4, (4096, 1024, 1), "float32"),
        ("colu", 16, (4096, 1024, 1), "float32"),
        ("rcolu", 8, (4096, 1024, 1), "float32"),
        ("colu", 8, (32, 256, 4096), "float32"),
        ("colu", 8, (4096, 1024, 1), "bfloat16"),
        ("rcolu", 4, (4096, 1024, 1), "float16"),
    ],
)
def test_triton_tiles_compile_to_128_bit_accesses(kind, S, shape, dtype):
    """The bandwidth design, checked without a GPU: compiled for sm_90, the grouped layout and RCoLU move
    every tile through 128-bit loads and stores (64-bit for S = 4 in half types: a vector stays within a
    cone), one load per element in forward (two in backward: x and the gradient) and one store, channels
    last and NCHW alike, half types included (no upcast copies)."""
    import collections
    import re

    import torch

    pytest.importorskip("triton.backends.nvidia", reason="triton has no CUDA backend here")
    from colu.ops import triton_kernels
    from colu.spec import ConeSpec

    spec = ConeSpec.resolve(shape[1], S, None, kind=kind)
    for backward in (False, True):
        ptx = triton_kernels.compile_ptx(spec, "hard", "identity", shape, dtype=getattr(torch, dtype), backward=backward)
        ops = collections.Counter(re.findall(r"\b(ld|st)\.global(?:\.v(\d))?\.[bfu](\d+)", ptx))
        widths = {(op, int(v or 1) * int(bits)) for op, v, bits in ops}
        # a vector spans at most one cone's run of channels: 4 float16 values are 64 bits
        width = 128 if shape[2] > 1 else min(128, S * getattr(torch, dtype).itemsize * 8)
        assert widths == {("ld", width), ("st", width)}, f"accesses narrower than {width} bits: {dict(ops)}"
        loads = sum(c for (op, _, _), c in ops.items() if op == "ld")
        stores = sum(c for (op, _, _), c in ops.items() if op == "st")
        assert loads == (2 if backward else 1) * stores, dict(ops)


def test_triton_kernels_compile_for_a_gpu_target():
    """The interpreter does not compile; this does, for sm_90, every layout, scaling, axis activation, dtype and
    tensor form at least once (forward and backward), so a kernel that only a real GPU would reject fails here."""
    import torch

    pytest.importorskip("triton.backends.nvidia", reason="triton has no CUDA backend here")
    from colu.ops import triton_kernels
    from colu.spec import ConeSpec

    cases = [  # (kind, layout, share, S, scaling, act, dtype, inner)
        ("colu", "grouped", False, 3, "hard", "identity", torch.float32, 1),
        ("colu", "axes_first", False, 8, "soft", "relu", torch.float64, 49),
        ("colu", "grouped", True, 8, "firm", "silu", torch.bfloat16, 1),
        ("rcolu", "grouped", False, 3, "soft", "silu", torch.float16, 49),
        ("colu", "grouped", True, 3, "hard", "relu", torch.float16, 49),
        ("rcolu", "grouped", False, 8, "firm", "identity", torch.bfloat16, 1),
    ]
    for kind, layout, share, S, scaling, act, dtype, inner in cases:
        C = 1 + 6 * (S - 1) if share else 6 * S
        spec = ConeSpec.resolve(C, S, None, share_axis=share, layout=layout, kind=kind)
        for backward in (False, True):
            ptx = triton_kernels.compile_ptx(spec, scaling, act, (64, C, inner), dtype=dtype, backward=backward)
            assert ".entry" in ptx
    # a single cone takes the LINEAR channel indices in every layout, a shared axis included
    for layout, share in (("axes_first", False), ("grouped", True)):
        spec = ConeSpec.resolve(8, None, 1, share_axis=share, layout=layout)
        for backward in (False, True):
            ptx = triton_kernels.compile_ptx(spec, "soft", "silu", (64, 8, 1), dtype=torch.float32, backward=backward)
            assert ".entry" in ptx
