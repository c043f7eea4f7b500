"""The fusible backend (colu.ops.fusible): the cone activation in torch ops that torch.compile fuses.

Eagerly it must equal the reference over the core grid (values and gradients); compiled, with either the
fusible formulation or the kernels' custom ops, it must equal the eager op, with no graph break. Most
compiled checks use the ``aot_eager`` backend (AOTAutograd's forward and backward graphs, run by torch
without generating code), which is what decides the graphs; a few run Inductor itself.
"""

import itertools

import pytest
import torch
from torch import nn

import colu
from colu import reference
from colu.ops import dispatch

LAYOUTS = [("grouped", False), ("axes_first", False), ("grouped", True)]
COMBOS = [("hard", "identity"), ("soft", "relu"), ("firm", "silu"), ("sqrt", "relu"), ("log", "identity")]


def _grad(fn, x, g):
    x = x.detach().requires_grad_(True)
    y = fn(x)
    (gx,) = torch.autograd.grad(y, x, g)
    return y.detach(), gx


def _cases():
    """(name, fn(t, backend), reference fn, input shape): CoLU in every layout and RCoLU, rows and NCHW."""
    for (layout, share), S, (sc, act) in itertools.product(LAYOUTS, (3, 4), COMBOS):
        C = 1 + 3 * (S - 1) if share else 3 * S
        kw = dict(share_axis=share, layout=layout, scaling=sc, axis_activation=act)
        for dim, shape in ((-1, (5, C)), (1, (2, C, 3, 4))):
            yield (f"colu-{layout}-{share}-S{S}-{sc}-{act}-dim{dim}",
                   lambda t, b, S=S, kw=kw, dim=dim: colu.colu(t, S, dim=dim, backend=b, **kw),
                   lambda t, S=S, kw=kw, dim=dim: reference.colu(t, S, dim=dim, **kw), shape)
    for S, (sc, act) in itertools.product((3, 4), COMBOS):
        kw = dict(scaling=sc, axis_activation=act)
        for dim, shape in ((-1, (5, 3 * S)), (1, (2, 3 * S, 3, 4))):
            yield (f"rcolu-S{S}-{sc}-{act}-dim{dim}",
                   lambda t, b, S=S, kw=kw, dim=dim: colu.rcolu(t, S, dim=dim, backend=b, **kw),
                   lambda t, S=S, kw=kw, dim=dim: reference.rcolu(t, S, dim=dim, **kw), shape)


CASES = list(_cases())


@pytest.mark.parametrize("name,fn,ref,shape", CASES, ids=[c[0] for c in CASES])
def test_eager_matches_reference(name, fn, ref, shape):
    gen = torch.Generator().manual_seed(len(name))
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 2
    g = torch.randn(shape, generator=gen, dtype=torch.float64)
    before = dispatch.calls["fusible"]
    y, gx = _grad(lambda t: fn(t, "fusible"), x, g)
    assert dispatch.calls["fusible"] == before + 2  # the forward and the backward ran on it
    yr, gr = _grad(ref, x, g)
    torch.testing.assert_close(y, yr, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gx, gr, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtypes_come_back_in_their_own(dtype):
    x = torch.randn(4, 16, 3, 3)
    g = torch.randn(4, 16, 3, 3)
    y, gx = _grad(lambda t: colu.colu(t, 4, dim=1, scaling="soft", backend="fusible"), x.to(dtype), g.to(dtype))
    yr, gr = _grad(lambda t: reference.colu(t, 4, dim=1, scaling="soft"), x.to(dtype).double(), g.to(dtype).double())
    assert y.dtype == dtype and gx.dtype == dtype
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(y.double(), yr, **tol)
    torch.testing.assert_close(gx.double(), gr, **tol)


def test_zero_sections_and_overflow():
    # an all-zero section has a finite gradient (w g_s: its norm's slope is never taken at 0), and
    # sections whose squares overflow float32 take the rescaled norm
    x = torch.tensor([[2.0, 0.0, 0.0, 0.0, 1e20, 5e19, 0.0, 0.0, 1e20, 3e20, 0.0, 0.0]])
    g = torch.ones_like(x)
    y, gx = _grad(lambda t: colu.colu(t, 4, backend="fusible"), x, g)
    y64, g64 = _grad(lambda t: colu.colu(t, 4, backend="closed_form"), x.double(), g.double())
    assert torch.isfinite(gx).all()
    torch.testing.assert_close(y, y64.float(), rtol=1e-6, atol=0)
    torch.testing.assert_close(gx, g64.float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["fusible", "auto"])
def test_compiled_matches_eager_without_graph_breaks(backend):
    # AOTAutograd's graphs, run without Inductor's code generation (fast); fullgraph: no graph break
    for name, fn, _, shape in CASES[::9]:
        torch._dynamo.reset()  # one code object compiled for every case: start each afresh
        gen = torch.Generator().manual_seed(len(name))
        x = torch.randn(shape, generator=gen) * 2
        g = torch.randn(shape, generator=gen)
        compiled = torch.compile(lambda t, fn=fn: fn(t, backend), backend="aot_eager", fullgraph=True)
        y, gx = _grad(compiled, x, g)
        ye, ge = _grad(lambda t, fn=fn: fn(t, backend), x, g)
        torch.testing.assert_close(y, ye, rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(gx, ge, rtol=1e-5, atol=1e-6, msg=name)


def _resnet_block(act):
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.act1, self.act2 = act(), act()

        def forward(self, x):
            return self.act2(x + self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x))))))

    return Block()


class _Cone(nn.Module):
    def __init__(self, backend, dim, **kw):
        super().__init__()
        self.backend, self.dim, self.kw = backend, dim, kw

    def forward(self, x):
        return colu.colu(x, 4, dim=self.dim, backend=self.backend, **self.kw)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["fusible", "auto"])
def test_inductor_resnet_block_and_gpt_mlp(backend):
    # Inductor itself, fullgraph=True (any graph break raises), against the eager module
    torch._dynamo.reset()
    torch.manual_seed(0)
    blocks = [
        (_resnet_block(lambda: _Cone(backend, 1)), torch.randn(2, 8, 6, 6)),
        (nn.Sequential(nn.Linear(16, 32), _Cone(backend, -1, scaling="soft"), nn.Linear(32, 16)), torch.randn(3, 5, 16)),
    ]
    for model, x in blocks:
        compiled = torch.compile(model, fullgraph=True, dynamic=False)
        y = compiled(x)
        grads = torch.autograd.grad(y.square().sum(), list(model.parameters()))
        ye = model(x)
        grads_e = torch.autograd.grad(ye.square().sum(), list(model.parameters()))
        torch.testing.assert_close(y, ye, rtol=1e-4, atol=1e-5)
        for a, b in zip(grads, grads_e):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_compiled_kernels_keep_the_layout_they_are_given(memory_format):
    # the custom ops take the activation's own tensor in any layout and return it in the same one
    torch._dynamo.reset()
    x = torch.randn(2, 8, 5, 3).contiguous(memory_format=memory_format)
    g = torch.randn(2, 8, 5, 3)
    fn = lambda t: colu.colu(t, 4, dim=1, scaling="soft")  # noqa: E731
    y, gx = _grad(torch.compile(fn, backend="aot_eager", fullgraph=True), x, g)
    ye, ge = _grad(fn, x, g)
    assert y.stride() == ye.stride() == x.stride()
    torch.testing.assert_close(y, ye, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gx, ge, rtol=1e-6, atol=1e-6)
