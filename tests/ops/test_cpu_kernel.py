"""Fused CPU kernel and dispatch: exact to the reference, NaN confinement, overrides, compile, fallback."""

import ctypes
import itertools
import platform
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

import colu
from colu import reference
from colu.ops import autograd, cpu, dispatch

pytestmark = pytest.mark.skipif(cpu.load() is None, reason="no C compiler: the CPU kernel cannot be built")

TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.float64: dict(atol=1e-10, rtol=1e-10)}


def _inputs(shape, dim, dtype, channels_last=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=dtype) * 2
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.requires_grad_(True), torch.randn(shape, generator=gen, dtype=dtype)


def _check(fn, ref, x, g, dtype):
    before = dispatch.calls["cpu"]
    y = fn(x)
    (gx,) = torch.autograd.grad(y, x, g)
    assert dispatch.calls["cpu"] == before + 2, "forward and backward must both run the CPU kernel"
    xr = x.detach().clone().requires_grad_(True)
    yr = ref(xr)
    (gr,) = torch.autograd.grad(yr, xr, g)
    torch.testing.assert_close(y, yr, **TOL[dtype])
    torch.testing.assert_close(gx, gr, **TOL[dtype])
    assert y.stride() == x.stride()


COLU_GRID = list(
    itertools.product(
        ["grouped", "axes_first"], [False, True], [3, 4, 8], ["hard", "soft", "firm"], ["identity", "relu", "silu"]
    )
)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout,share,S,scaling,act", COLU_GRID)
def test_colu_rows_matches_reference(dtype, layout, share, S, scaling, act):
    G = 5
    C = 1 + G * (S - 1) if share else G * S
    x, g = _inputs((6, C), -1, dtype, seed=S)
    kw = dict(cone_dim=S, share_axis=share, scaling=scaling, layout=layout, axis_activation=act)
    _check(lambda t: colu.colu(t, **kw), lambda t: reference.colu(t, **kw), x, g, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("S,scaling,act", list(itertools.product([3, 4, 8], ["hard", "soft", "firm"], ["identity", "relu", "silu"])))
def test_rcolu_rows_matches_reference(dtype, S, scaling, act):
    x, g = _inputs((6, 7 * S), -1, dtype, seed=S)
    kw = dict(cone_dim=S, scaling=scaling, axis_activation=act)
    _check(lambda t: colu.rcolu(t, **kw), lambda t: reference.rcolu(t, **kw), x, g, dtype)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("kind,layout,share", [("colu", "grouped", False), ("colu", "axes_first", False), ("colu", "grouped", True), ("rcolu", "grouped", False)])
@pytest.mark.parametrize("scaling,act", [("hard", "identity"), ("soft", "silu"), ("firm", "relu")])
def test_nchw_dim1(channels_last, kind, layout, share, scaling, act):
    S, G = 4, 3
    C = 1 + G * (S - 1) if share else G * S
    x, g = _inputs((2, C, 5, 7), 1, torch.float64, channels_last=channels_last)
    if kind == "colu":
        kw = dict(num_cones=G, share_axis=share, scaling=scaling, layout=layout, axis_activation=act, dim=1)
        fn, ref = (lambda t: colu.colu(t, **kw)), (lambda t: reference.colu(t, **kw))
    else:
        kw = dict(num_cones=G, scaling=scaling, axis_activation=act, dim=1)
        fn, ref = (lambda t: colu.rcolu(t, **kw)), (lambda t: reference.rcolu(t, **kw))
    _check(fn, ref, x, g, torch.float64)


@pytest.mark.parametrize("scaling", ["hard", "soft", "firm"])
@pytest.mark.parametrize("S", [3, 4, 8, 16, 24])
def test_large_rows_many_threads_and_constant_s_paths(S, scaling):
    # big enough to run multithreaded; every float32 loop specialised for (S, kind, scaling), the
    # AVX-512 blocks of 16 cones for S = 4, 8, 16 and the AVX2 blocks of 8 for S = 4, 8, 16, 24 (603 * 71 cones:
    # remainders of 13 and 5 after the last block)
    x, g = _inputs((603, S * 71), -1, torch.float32, seed=S)
    _check(lambda t: colu.colu(t, S, scaling=scaling), lambda t: reference.colu(t, S, scaling=scaling), x, g, torch.float32)
    _check(lambda t: colu.rcolu(t, S, scaling=scaling), lambda t: reference.rcolu(t, S, scaling=scaling), x, g, torch.float32)


@pytest.mark.parametrize("S", [4, 8, 16])
@pytest.mark.parametrize("blocks", [1, 3, 4, 5, 9])
def test_forward_chunks_of_blocks_and_their_remainders(S, blocks):
    # the float32 forward runs blocks of 16 cones four at a time: whole chunks, a last partial chunk and
    # 3 cones after the last block, with one thread (one span) and two
    x, g = _inputs((2, S * (16 * blocks + 3)), -1, torch.float32, seed=blocks)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            for scaling in ("hard", "soft"):
                for fn, ref in ((colu.colu, reference.colu), (colu.rcolu, reference.rcolu)):
                    _check(lambda t: fn(t, S, scaling=scaling), lambda t: ref(t, S, scaling=scaling), x, g, torch.float32)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize(
    "path,shape,dim,kw",
    [
        ("flat", (301, 8 * 13), -1, dict(cone_dim=8)),
        ("rows", (301, 1 + 13 * 7), -1, dict(cone_dim=8, share_axis=True)),
        ("rows", (301, 8 * 13), -1, dict(cone_dim=8, layout="axes_first")),
        ("lanes", (7, 12, 31, 29), 1, dict(cone_dim=4)),
    ],
)
def test_one_and_two_threads_agree(path, shape, dim, kw):
    # every parallel loop runs in per-thread spans with two threads and outside OpenMP with one; both
    # must give the reference's result (sizes give uneven spans)
    x, g = _inputs(shape, dim, torch.float32, seed=len(shape))
    ref = reference.colu(x.detach(), dim=dim, **kw)
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            y = colu.colu(x, dim=dim, backend="cpu", **kw)
            (gx,) = torch.autograd.grad(y, x, g)
            results.append((y.detach(), gx))
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(results[0][0], ref, **TOL[torch.float32])
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=0, atol=0)


def test_half_inputs_use_kernel():
    x = torch.randn(8, 16).to(torch.bfloat16).requires_grad_(True)
    before = dispatch.calls["cpu"]
    y = colu.colu(x, 4)
    y.float().sum().backward()
    assert dispatch.calls["cpu"] == before + 2
    assert y.dtype == torch.bfloat16 and x.grad.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), reference.colu(x.detach(), 4).float(), atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("S", [4, 8, 16])
@pytest.mark.parametrize("fn", ["colu", "rcolu", "shared"])
@pytest.mark.parametrize("scaling", ["hard", "soft"])
def test_nan_stays_in_its_cone(fn, scaling, S):
    G = 16  # 48 cones: whole blocks of the AVX-512/AVX2 paths, not only their remainder loop
    C = 1 + G * (S - 1) if fn == "shared" else G * S
    x = torch.randn(3, C, dtype=torch.float32)
    bad = 1 + 1 * (S - 1) if fn == "shared" else S + 1  # a section channel of cone 1
    x[1, bad] = float("nan")
    x.requires_grad_(True)
    if fn == "rcolu":
        y = colu.rcolu(x, S, scaling=scaling, backend="cpu")
        cone = torch.arange(S, 2 * S)
    else:
        y = colu.colu(x, S, share_axis=fn == "shared", scaling=scaling, backend="cpu")
        cone = torch.arange(1 + (S - 1), 1 + 2 * (S - 1)) if fn == "shared" else torch.arange(S, 2 * S)
    y.backward(torch.ones_like(y))
    nan_y = torch.isnan(y)
    assert nan_y[1, cone[1:] if fn != "rcolu" else cone].all()
    others = torch.ones(C, dtype=torch.bool)
    others[cone] = False
    if fn == "shared":
        others[0] = False  # the shared axis' gradient sums over all cones
    assert not nan_y[0].any() and not nan_y[2].any() and not nan_y[1, others].any()
    assert not torch.isnan(x.grad[0]).any() and not torch.isnan(x.grad[1, others]).any()


def test_select_and_overrides(monkeypatch):
    x = torch.randn(4, 8)
    monkeypatch.delenv("COLU_BACKEND", raising=False)
    assert dispatch.select(x) == "cpu"
    assert dispatch.select(x, "closed_form") == "closed_form"
    monkeypatch.setenv("COLU_BACKEND", "closed_form")
    assert dispatch.select(x) == "closed_form"
    before = dict(dispatch.calls)
    y = colu.colu(x.requires_grad_(True), 4)
    y.sum().backward()
    assert dispatch.calls["closed_form"] == before.get("closed_form", 0) + 2
    assert dispatch.calls["cpu"] == before.get("cpu", 0)
    # the argument wins over the environment
    y2 = colu.colu(x, 4, backend="cpu")
    assert dispatch.calls["cpu"] == before.get("cpu", 0) + 1
    torch.testing.assert_close(y, y2)
    monkeypatch.setenv("COLU_BACKEND", "fastest")
    with pytest.raises(ValueError, match="COLU_BACKEND='fastest'"):
        colu.colu(x, 4)
    with pytest.raises(ValueError, match="backend='gpu'"):
        colu.colu(x, 4, backend="gpu")
    monkeypatch.delenv("COLU_BACKEND")
    # without triton the request fails earlier, on the missing package
    expected = "needs a CUDA tensor" if dispatch._triton_installed() else "triton is not installed"
    with pytest.raises(RuntimeError, match=expected):
        colu.colu(x, 4, backend="triton")
    monkeypatch.setattr(dispatch, "_triton_installed", lambda: False)
    with pytest.raises(RuntimeError, match="triton is not installed"):
        colu.colu(x, 4, backend="triton")


def test_backend_is_selected_once_per_cache_miss(monkeypatch):
    """dispatch.select is the one place that picks a backend: once for a call no plan covers, never for a
    replayed one (forward or backward), and once for each run of the compiled graphs' custom op."""
    from colu.ops import plans

    monkeypatch.delenv("COLU_BACKEND", raising=False)
    seen = []
    select = dispatch.select
    monkeypatch.setattr(dispatch, "select",
                        lambda x, backend="auto", scaling="hard": seen.append(backend) or select(x, backend, scaling))
    plans.clear()
    x = torch.randn(3, 20, requires_grad=True)
    m = colu.CoLU(cone_dim=5)
    colu.colu(x, 5).sum().backward()
    m(x).sum().backward()
    assert seen == ["auto", "auto"]
    for _ in range(2):
        colu.colu(x, 5).sum().backward()
        m(x.detach())
    assert seen == ["auto", "auto"], "replayed calls should not select again"
    colu.rcolu(x, 4, backend="cpu")
    assert seen == ["auto", "auto", "cpu"]
    xt = torch.randn(20, 3).t()  # no plan covers a non-contiguous input: each call selects once
    colu.colu(xt, 5)
    colu.colu(xt, 5)
    assert seen == ["auto", "auto", "cpu", "auto", "auto"]
    spec = colu.ConeSpec.resolve(20, 5)
    y = torch.ops.colu.cone_forward(x.detach(), 1, *autograd._op_args(spec, "hard", 1e-7, "identity"))
    assert seen == ["auto", "auto", "cpu", "auto", "auto", "auto"]
    torch.testing.assert_close(y, reference.colu(x.detach(), 5))


@pytest.mark.parametrize("layout,share", [("axes_first", False), ("grouped", True)])
def test_a_single_cone_runs_as_contiguous_channels(layout, share):
    """One cone is channels 0 ... S-1 in every layout (spec.contiguous), so the kernel gets the grouped map and
    runs it on its flat path (half types converted in the kernel where there is no shared axis)."""
    spec = colu.ConeSpec.resolve(5, None, 1, layout=layout, share_axis=share)
    assert spec.contiguous
    cfg = cpu.config(spec, "soft", 1e-7, "identity")
    assert (cfg.axis_base, cfg.axis_step, cfg.sec_base, cfg.sec_step) == (0, 5, 1, 5)
    assert cpu.runs_half(cpu.load(), cfg, torch.bfloat16, 1)
    kw = dict(num_cones=1, layout=layout, share_axis=share, scaling="soft", axis_activation="silu")
    for shape, dim, dtype in [((9, 5), -1, torch.float64), ((2, 5, 3, 3), 1, torch.float64), ((9, 5), -1, torch.bfloat16)]:
        x, g = _inputs(shape, dim, torch.float64, seed=len(shape))
        x = x.detach().to(dtype).requires_grad_(True)
        before = dispatch.calls["cpu"]
        y = colu.colu(x, dim=dim, **kw)
        (gx,) = torch.autograd.grad(y, x, g.to(dtype))
        assert dispatch.calls["cpu"] == before + 2
        xr = x.detach().double().requires_grad_(True)
        yr = reference.colu(xr, dim=dim, **kw)
        (gr,) = torch.autograd.grad(yr, xr, g.to(dtype).double())
        tol = TOL[dtype] if dtype in TOL else dict(atol=2e-2, rtol=2e-2)
        torch.testing.assert_close(y, yr.to(dtype), **tol)
        torch.testing.assert_close(gx, gr.to(dtype), **tol)


def test_double_backward_uses_closed_form():
    x = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    y = colu.colu(x, 4, scaling="soft")
    (g,) = torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.sum(), x)
    xr = x.detach().clone().requires_grad_(True)
    (gr,) = torch.autograd.grad(reference.colu(xr, 4, scaling="soft").pow(2).sum(), xr, create_graph=True)
    (ggr,) = torch.autograd.grad(gr.sum(), xr)
    torch.testing.assert_close(gg, ggr)


def test_torch_compile_fullgraph_uses_kernel():
    torch._dynamo.reset()
    model = torch.nn.Sequential(torch.nn.Linear(12, 24), colu.CoLU(cone_dim=4, scaling="soft"), torch.nn.Linear(24, 3))
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(16, 12)
    before = dispatch.calls["cpu"]
    out = compiled(x)
    out.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    assert dispatch.calls["cpu"] == before + 2, "the compiled graph must call the kernel custom ops"
    model.zero_grad()
    with torch.no_grad():
        ref_out = model(x)
    torch.testing.assert_close(out, ref_out)
    ref = model(x)
    ref.sum().backward()
    for a, p in zip(grads, model.parameters()):
        torch.testing.assert_close(a, p.grad)


def test_export_decomposes_to_aten():
    class M(torch.nn.Module):
        def forward(self, x):
            return colu.colu(x, 4) + colu.rcolu(x, 4)

    x = torch.randn(3, 8)
    ep = torch.export.export(M(), (x,))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert not any("colu" in t for t in targets), targets
    torch.testing.assert_close(ep.module()(x), M()(x))


@pytest.mark.slow
def test_onnx_export(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")

    class M(torch.nn.Module):
        def forward(self, x):
            return colu.colu(x, 4, scaling="soft")

    path = tmp_path / "m.onnx"
    torch.onnx.export(M(), (torch.randn(3, 8),), str(path), dynamo=True)
    assert onnx.load(str(path)).graph.node


@pytest.mark.slow
def test_no_compiler_falls_back_once(tmp_path):
    script = textwrap.dedent(
        """
        import warnings, torch, colu
        from colu import reference
        from colu.ops import dispatch
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            x = torch.randn(4, 8, requires_grad=True)
            for _ in range(3):
                y = colu.colu(x, 4)
                y.sum().backward()
        msgs = [str(w.message) for w in caught if "CPU kernel is unavailable" in str(w.message)]
        assert len(msgs) == 1, msgs
        assert dispatch.calls["cpu"] == 0 and dispatch.calls["closed_form"] == 6, dispatch.calls
        torch.testing.assert_close(y, reference.colu(x.detach(), 4))
        print("FALLBACK-OK")
        """
    )
    env = dict(__import__("os").environ, CC=str(tmp_path / "no-such-cc"), COLU_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("COLU_BACKEND", None)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "FALLBACK-OK" in proc.stdout


def test_cache_dir_holds_the_build():
    assert cpu._state["lib"] is not None
    built = list(cpu.cache_dir().glob("*/colu_cpu.so"))
    assert built, f"no cached build under {cpu.cache_dir()}"


def test_cached_call_plan_matches_checked_path(monkeypatch):
    """Repeated calls replay a cached plan; results, gradients, backend choice and errors stay the same."""
    from colu.ops import plans

    monkeypatch.delenv("COLU_BACKEND", raising=False)
    torch.manual_seed(0)
    x = torch.randn(6, 24, dtype=torch.float64)
    g = torch.randn_like(x)
    for fn, kw in ((colu.colu, dict(cone_dim=4, scaling="soft")), (colu.rcolu, dict(cone_dim=3))):
        expected = fn(x, backend="closed_form", **kw)
        for _ in range(3):  # first call checks and caches, the others replay
            xg = x.clone().requires_grad_(True)
            before = dispatch.calls["cpu"]
            y = fn(xg, **kw)
            y.backward(g)
            assert dispatch.calls["cpu"] == before + 2
            torch.testing.assert_close(y, expected)
            xr = x.clone().requires_grad_(True)
            fn(xr, backend="closed_form", **kw).backward(g)
            torch.testing.assert_close(xg.grad, xr.grad)
    assert plans.cache, "a plan should have been cached"
    # an environment override is honoured on the next call
    monkeypatch.setenv("COLU_BACKEND", "closed_form")
    before = dispatch.calls["cpu"]
    colu.colu(x, cone_dim=4, scaling="soft")
    assert dispatch.calls["cpu"] == before
    monkeypatch.delenv("COLU_BACKEND")
    # equal-but-different-type arguments still go through the checks
    with pytest.raises(ValueError):
        colu.colu(x, cone_dim=4, scaling="soft", eps=float("nan"))
    with pytest.raises(TypeError):
        colu.colu(x, cone_dim=4, scaling="soft", dim=True)
    # non-contiguous input of a cached shape takes the checked path
    xt = torch.randn(24, 6, dtype=torch.float64).t()
    torch.testing.assert_close(colu.colu(xt, cone_dim=4, scaling="soft"), colu.colu(xt.contiguous(), cone_dim=4, scaling="soft"))


@pytest.mark.parametrize("fn,kw", [(colu.colu, dict(cone_dim=4, scaling="soft")), (colu.rcolu, dict(cone_dim=8)),
                                   (colu.colu, dict(cone_dim=4, layout="axes_first", axis_activation="relu"))])
def test_channels_last_calls_replay_a_plan(fn, kw, monkeypatch):
    """Channels-last images with dim=1 (channels innermost in memory) are planned like contiguous tensors: the
    plan runs on the view with the channels last, and results, gradients and memory format match the checked
    path; another non-contiguous layout of the same shape still takes the checked path."""
    from colu.ops import plans

    monkeypatch.delenv("COLU_BACKEND", raising=False)
    plans.clear()
    torch.manual_seed(1)
    x = torch.randn(3, 16, 5, 7).contiguous(memory_format=torch.channels_last)
    g = torch.randn(3, 16, 5, 7).contiguous(memory_format=torch.channels_last)
    expected = fn(x.double(), dim=1, backend="closed_form", **kw)
    xr = x.double().requires_grad_(True)
    fn(xr, dim=1, backend="closed_form", **kw).backward(g.double())
    for i in range(3):  # the first call checks and caches, the others replay
        xg = x.clone().requires_grad_(True)
        assert not xg.is_contiguous() and xg.is_contiguous(memory_format=torch.channels_last)
        y = fn(xg, dim=1, **kw)
        y.backward(g)
        assert y.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(y.double(), expected, **TOL[torch.float32])
        torch.testing.assert_close(xg.grad.double(), xr.grad, **TOL[torch.float32])
        with torch.no_grad():
            torch.testing.assert_close(fn(x, dim=1, **kw).double(), expected, **TOL[torch.float32])
    (plan,) = plans.cache.values()
    assert plan.moved == 1 and (plan.outer, plan.C, plan.inner) == (3 * 5 * 7, 16, 1)
    # replayed: a planned call skips the checked path's apply_cones
    seen = []
    monkeypatch.setattr(plans, "apply_cones", lambda *a: seen.append(a) or pytest.fail("checked path taken"))
    fn(x, dim=1, **kw)
    assert not seen
    monkeypatch.undo()
    # the same shape in another non-contiguous layout (H and W swapped in memory) is not served by that plan
    other = torch.randn(3, 16, 7, 5).transpose(2, 3)
    assert other.shape == x.shape and not other.is_contiguous()
    torch.testing.assert_close(fn(other, dim=1, **kw), fn(other.contiguous(), dim=1, **kw), **TOL[torch.float32])


def test_cached_plans_are_per_thread():
    """Plans are cached per thread: the ctypes route writes a plan's argument block, which the kernel reads after
    ctypes has released the GIL, so threads never share one."""
    import threading

    from colu.ops import plans

    x = torch.randn(8, 48)
    colu.colu(x, 4)
    colu.colu(x, 4)
    results, idents = {}, {}
    # both threads are alive together, so their idents differ (an exited thread's ident can be reused)
    together = threading.Barrier(2)

    def work(i):
        idents[i] = threading.get_ident()
        together.wait()
        xi = torch.randn(8, 48, generator=torch.Generator().manual_seed(i))
        results[i] = [(xi, colu.colu(xi, 4)) for _ in range(50)]
        together.wait()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert idents[0] != idents[1]
    for ident in idents.values():
        theirs = [k for k in plans.cache if k[0][0] == "colu" and k[1] == x.shape and k[-1] == ident]
        assert len(theirs) == 1, "each thread should have cached its own plan"
    for pairs in results.values():
        for xi, y in pairs:
            torch.testing.assert_close(y, reference.colu(xi, 4), **TOL[torch.float32])


# (-march level, symbols the build must have, symbols it must not have, float16 in the kernel)
_ISA_BUILDS = {
    # no AVX2: the plain C loops everywhere; no F16C, so float16 is upcast in torch
    "x86-64": (("flat_4_colu_hard_fwd", "flat_16_rcolu_firm_bwd"), ("avx_16_", "avx_4_", "avx_8_", "avz_", "axf_"),
               False),
    # AVX2 without AVX-512: the AVX2 blocks of 8 cones for S = 4, 8 and 16, and none of gcc's flat loops for them
    "x86-64-v3": (("avx_16_colu_hard_identity_fwd", "avx_4_rcolu_soft_identity_bwd", "avx_8_colu_firm_silu_fwd",
                   "axf_4_fwd"), ("flat_4_colu_hard_fwd", "flat_8_colu_hard_fwd", "avz_"), True),
}


def _half_matches_reference(lib, x, g, S, kind, scaling, dtype, **kw):
    """Run the kernel's float16/bfloat16 entry; if it ran, compare with the float32 reference rounded once.
    ``kw``: layout, share_axis, axis_activation (CoLU)."""
    act = kw.pop("axis_activation", "identity")
    spec = colu.ConeSpec.resolve(x.shape[1], S, None, kind=kind, **kw)
    cfg = cpu.config(spec, scaling, 1e-7, act)
    xh, gh = x.to(dtype), g.to(dtype)
    y, gi = torch.empty_like(xh), torch.empty_like(xh)
    if not cpu.run(lib, 0, xh, None, y, *x.shape, 1, cfg):
        return False
    assert cpu.run(lib, 1, xh, gh, gi, *x.shape, 1, cfg)
    xr = xh.float().requires_grad_(True)
    yr = getattr(reference, kind)(xr, S, scaling=scaling, axis_activation=act, **kw)
    (gr,) = torch.autograd.grad(yr, xr, gh.float())
    # one rounding (to nearest even) of a float32 result that may differ from the reference's in its last
    # bits: within one unit of the last place, and equal but for the rare value on a rounding boundary
    tol = dict(atol=1e-3, rtol=torch.finfo(dtype).eps)
    expected = yr.detach().to(dtype)
    torch.testing.assert_close(y.float(), expected.float(), **tol)
    assert (y != expected).float().mean() < 0.01, "outputs should round like torch's conversion"
    torch.testing.assert_close(gi.float(), gr.to(dtype).float(), **tol)
    return True


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("S,kind,scaling", [(4, "colu", "hard"), (8, "rcolu", "soft"), (3, "colu", "firm"), (16, "colu", "soft")])
def test_half_types_run_in_the_kernel(dtype, S, kind, scaling):
    """float16/bfloat16 with cones of contiguous channels convert in the kernel (chunks of cones, several
    threads) and round once, as upcasting to float32 and back would."""
    if dtype is torch.float16 and "f16c" not in _cpu_flags():
        pytest.skip("no F16C on this CPU: float16 is upcast in torch")
    gen = torch.Generator().manual_seed(S)
    x = torch.randn(257, 48 * S, generator=gen) * 3  # about 6 chunks of 2048 floats per thread
    g = torch.randn(x.shape, generator=gen)
    assert _half_matches_reference(cpu.load(), x, g, S, kind, scaling, dtype)
    # and through the public function, forward and backward
    xh = x.to(dtype).requires_grad_(True)
    fn = getattr(colu, kind)
    y = fn(xh, S, scaling=scaling)
    (gx,) = torch.autograd.grad(y, xh, g.to(dtype))
    assert y.dtype == dtype and gx.dtype == dtype
    torch.testing.assert_close(y.float(), getattr(reference, kind)(xh.detach().float(), S, scaling=scaling).to(dtype).float(),
                               atol=1e-3, rtol=torch.finfo(dtype).eps)


def test_half_type_calls_replay_a_plan():
    """Repeated bfloat16 calls the kernel converts itself are cached like float32 ones, and give the same results."""
    from colu.ops import plans

    x = (torch.randn(16, 96) * 2).to(torch.bfloat16)
    g = torch.randn(16, 96).to(torch.bfloat16)
    results = []
    for _ in range(3):
        xg = x.clone().requires_grad_(True)
        y = colu.rcolu(xg, 8, scaling="soft")
        (gx,) = torch.autograd.grad(y, xg, g)
        results.append((y.detach(), gx, colu.rcolu(x, 8, scaling="soft")))
    cached = [k for k, p in plans.cache.items() if k[2] == torch.bfloat16 and k[1] == x.shape and k[0][0] == "rcolu"]
    assert cached, "a bfloat16 plan should have been cached"
    for y, gx, y_nograd in results[1:]:
        torch.testing.assert_close(y, results[0][0], rtol=0, atol=0)
        torch.testing.assert_close(gx, results[0][1], rtol=0, atol=0)
        torch.testing.assert_close(y_nograd, results[0][0], rtol=0, atol=0)
    expected = reference.rcolu(x.float(), 8, scaling="soft").to(torch.bfloat16)
    assert (results[0][0] != expected).float().mean() < 0.01


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("S,layout,share,act,rows,cones", [
    (4, "axes_first", False, "relu", 257, 48),   # several rows per chunk, several chunks per thread
    (16, "axes_first", False, "silu", 33, 130),  # rows of 2080 channels: longer than a chunk, one at a time
    (3, "grouped", True, "identity", 65, 40),
    (8, "grouped", True, "relu", 9, 300),
])
def test_half_types_in_rows_run_in_the_kernel(dtype, S, layout, share, act, rows, cones):
    """The axes_first layout and a shared axis convert float16/bfloat16 in the kernel too (chunks of whole
    rows), and round once as upcasting to float32 and back would."""
    if dtype is torch.float16 and "f16c" not in _cpu_flags():
        pytest.skip("no F16C on this CPU: float16 is upcast in torch")
    gen = torch.Generator().manual_seed(S + rows)
    C = 1 + cones * (S - 1) if share else cones * S
    x = torch.randn(rows, C, generator=gen) * 3
    g = torch.randn(x.shape, generator=gen)
    kw = dict(layout=layout, share_axis=share, axis_activation=act)
    assert _half_matches_reference(cpu.load(), x, g, S, "colu", "soft", dtype, **dict(kw))
    xh = x.to(dtype).requires_grad_(True)
    y = colu.colu(xh, S, scaling="soft", **kw)
    (gx,) = torch.autograd.grad(y, xh, g.to(dtype))
    assert y.dtype == dtype and gx.dtype == dtype


def test_half_type_planes_are_upcast():
    """Cones across an inner axis (NCHW) leave half types to an upcast around the kernel, with the same results."""
    lib = cpu.load()
    x = torch.randn(2, 8, 3, 3).to(torch.bfloat16)
    spec = colu.ConeSpec.resolve(8, 4, None)
    cfg = cpu.config(spec, "hard", 1e-7, "identity")
    assert not cpu.run(lib, 0, x, None, torch.empty_like(x), 2, 8, 9, cfg)
    y = colu.colu(x, 4, dim=1)
    torch.testing.assert_close(y.float(), reference.colu(x.float(), 4, dim=1).to(torch.bfloat16).float(),
                               atol=1e-3, rtol=torch.finfo(torch.bfloat16).eps)


@pytest.mark.parametrize("S", [4, 16])
@pytest.mark.parametrize("layout,share", [("axes_first", False), ("grouped", True)])
@pytest.mark.parametrize("scaling,act", [("hard", "relu"), ("soft", "silu"), ("firm", "identity")])
def test_rows_over_several_blocks_match_reference(S, layout, share, scaling, act):
    """Rows of more cones than one block of the rows loops (64), float32, in the loops specialised per S."""
    G = 150
    C = 1 + G * (S - 1) if share else G * S
    x, g = _inputs((5, C), -1, torch.float32, seed=S + G)
    kw = dict(cone_dim=S, share_axis=share, scaling=scaling, layout=layout, axis_activation=act)
    _check(lambda t: colu.colu(t, **kw), lambda t: reference.colu(t, **kw), x, g, torch.float32)


def test_bfloat16_nan_stays_in_its_cone():
    x = torch.randn(4, 64).to(torch.bfloat16)
    x[2, 9] = float("nan")  # a section channel of cone 2 (S = 4)
    y = colu.colu(x, 4)
    assert torch.isnan(y[2, 9:12]).all()  # the section; the axis passes through
    y[2, 9:12] = 0
    assert not torch.isnan(y).any()


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((ln for ln in f if ln.startswith("flags")), "")
    except OSError:
        return ""


@pytest.fixture(scope="module")
def isa_builds(tmp_path_factory):
    """The kernel built for each level of _ISA_BUILDS, compiled side by side (a build is one single-threaded
    compiler process, so two of them take about the time of one on a 2-core machine)."""
    base = tmp_path_factory.mktemp("isa-builds")
    flags = [f for f in cpu.FLAGS if not f.startswith(("-march", "-O"))]
    procs = {}
    for march in sorted(_ISA_BUILDS):
        so = base / f"colu_cpu_{march}.so"
        cmd = [cpu.compiler(), "-O2", f"-march={march}", *flags, str(cpu.SOURCE), "-o", str(so), "-lm"]
        procs[march] = (so, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    built = {}
    for march, (so, proc) in procs.items():
        _, err = proc.communicate(timeout=600)
        built[march] = (so, proc.returncode, err)
    return built


@pytest.mark.slow
@pytest.mark.skipif(platform.machine() != "x86_64", reason="builds the kernel for other x86-64 levels")
@pytest.mark.parametrize("march", sorted(_ISA_BUILDS))
def test_builds_for_other_cpus_match_reference(isa_builds, march):
    """The kernel as built for machines with fewer vector extensions than this one still matches the reference."""
    so, returncode, err = isa_builds[march]
    assert returncode == 0, err[-2000:]
    symbols = so.read_bytes().decode("latin-1")
    has, lacks, native_f16 = _ISA_BUILDS[march]
    assert all(name in symbols for name in has) and not any(name in symbols for name in lacks)
    lib = cpu._open(so)
    gen = torch.Generator().manual_seed(3)
    for S, kind, scaling in [(16, "colu", "hard"), (16, "rcolu", "soft"), (24, "colu", "firm"), (4, "colu", "soft"), (4, "rcolu", "hard"), (8, "rcolu", "soft")]:
        x = torch.randn(37, 5 * S, generator=gen) * 2
        g = torch.randn(x.shape, generator=gen)
        spec = colu.ConeSpec.resolve(x.shape[1], S, None, kind=kind)
        cfg = cpu.config(spec, scaling, 1e-7, "identity")
        y, gi = torch.empty_like(x), torch.empty_like(x)
        cpu.run(lib, 0, x, None, y, x.shape[0], x.shape[1], 1, cfg)
        cpu.run(lib, 1, x, g, gi, x.shape[0], x.shape[1], 1, cfg)
        ref = getattr(reference, kind)
        xr = x.clone().requires_grad_(True)
        yr = ref(xr, S, scaling=scaling)
        (gr,) = torch.autograd.grad(yr, xr, g)
        torch.testing.assert_close(y, yr.detach(), **TOL[torch.float32])
        torch.testing.assert_close(gi, gr, **TOL[torch.float32])
        assert _half_matches_reference(lib, x, g, S, kind, scaling, torch.bfloat16)
        assert _half_matches_reference(lib, x, g, S, kind, scaling, torch.float16) == native_f16


def _planned_results(fn, x, g, kw):
    """Forward and input gradient of two calls (the second replays the plan the first cached)."""
    out = []
    for _ in range(2):
        xg = x.clone().requires_grad_(True)
        y = fn(xg, **kw)
        (gx,) = torch.autograd.grad(y, xg, g)
        out.append((y.detach(), gx))
    return out[1]


_ENTRY_CASES = [  # (function, arguments, dtype, channels)
    (colu.colu, dict(cone_dim=4), torch.float32, 96),
    (colu.rcolu, dict(cone_dim=8, scaling="soft"), torch.float32, 96),
    (colu.colu, dict(cone_dim=3, share_axis=True, scaling="firm"), torch.float64, 97),
    (colu.rcolu, dict(cone_dim=16), torch.bfloat16, 96),
]


@pytest.mark.skipif(cpu._python_include() is None, reason="no Python headers: the library is built without its entry")
def test_planned_calls_go_through_the_python_entry(monkeypatch):
    """With the Python headers the library carries cpu_entry.c; replayed calls use it, forward and backward,
    and give bit for bit what the ctypes route gives."""
    from colu.ops import plans

    monkeypatch.delenv("COLU_BACKEND", raising=False)
    lib = cpu.load()
    assert lib["call"] is not None, "the library should have been built with its CPython entry"
    gen = torch.Generator().manual_seed(5)
    for fn, kw, dtype, C in _ENTRY_CASES:
        plans.clear()
        x = (torch.randn(33, C, generator=gen) * 2).to(dtype)
        g = torch.randn(33, C, generator=gen).to(dtype)
        via_entry = _planned_results(fn, x, g, kw)
        (plan,) = plans.cache.values()
        assert plan.call is lib["call"]
        seen = []
        plan.call = lambda *a, _call=lib["call"]: seen.append(len(a)) or _call(*a)
        assert _planned_results(fn, x, g, kw)[0].equal(via_entry[0])
        assert seen == [3, 4, 3, 4], "replayed forwards (3 arguments) and backwards (4) should use the entry"
        plan.call = None  # the ctypes route
        via_ctypes = _planned_results(fn, x, g, kw)
        for a, b in zip(via_entry, via_ctypes):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        ref = getattr(reference, fn.__name__)(x if dtype in TOL else x.float(), **kw).to(dtype)
        torch.testing.assert_close(via_entry[0], ref, **TOL.get(dtype, dict(atol=2e-2, rtol=2e-2)))


@pytest.mark.skipif(cpu._python_include() is None, reason="no Python headers: the library is built without its entry")
def test_python_entry_rejects_bad_calls():
    call = cpu.load()["call"]
    x = torch.randn(4, 8)
    with pytest.raises(TypeError, match="takes 3 or 4 arguments, got 2"):
        call(0, False)
    with pytest.raises(ValueError, match="null address"):
        call(0, False, x)


@pytest.mark.slow
def test_without_python_headers_the_kernel_runs_through_ctypes(tmp_path, monkeypatch, quick_compiler):
    """Where Python.h is missing only the kernel is built; calls, planned ones included, go through ctypes."""
    from colu.ops import plans

    monkeypatch.setenv("COLU_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", str(quick_compiler))
    monkeypatch.delenv("COLU_BACKEND", raising=False)
    monkeypatch.setattr(cpu, "_python_include", lambda: None)
    cpu.reset()
    try:
        lib = cpu.load()
        assert lib is not None and lib["call"] is None
        assert list(tmp_path.glob("*/colu_cpu.so")), "the kernel-only build should be cached"
        x = torch.randn(12, 64) * 2
        g = torch.randn(12, 64)
        before = dispatch.calls["cpu"]
        y, gx = _planned_results(colu.rcolu, x, g, dict(cone_dim=4, scaling="soft"))
        assert dispatch.calls["cpu"] == before + 4
        assert all(p.call is None for p in plans.cache.values() if p.lib is lib)
        xr = x.clone().requires_grad_(True)
        yr = reference.rcolu(xr, 4, scaling="soft")
        (gr,) = torch.autograd.grad(yr, xr, g)
        torch.testing.assert_close(y, yr.detach(), **TOL[torch.float32])
        torch.testing.assert_close(gx, gr, **TOL[torch.float32])
    finally:
        monkeypatch.undo()
        cpu.reset()
        cpu.load()
