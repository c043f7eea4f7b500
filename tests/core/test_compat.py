"""torch.compile (no graph breaks), torch.export, ONNX export and torch.func transforms of models using CoLU."""

import pytest
import torch
from torch import nn

import colu


def _model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 12), colu.CoLU(cone_dim=4, scaling="soft"),
        nn.Linear(12, 13), colu.CoLU(cone_dim=4, share_axis=True, layout="axes_first"),
        nn.Linear(13, 12), colu.RCoLU(cone_dim=3, axis_activation="relu"),
        nn.Linear(12, 3),
    )


def _conv_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), colu.CoLU(num_cones=4, dim=1, scaling="firm"), nn.Conv2d(16, 4, 1))


@pytest.mark.slow
def test_compile_fullgraph_matches_eager_forward_and_backward():
    torch._dynamo.reset()
    model = _model()
    x = torch.randn(5, 8)
    compiled = torch.compile(model, fullgraph=True)  # raises on any graph break
    y_c = compiled(x)
    y_e = model(x)
    torch.testing.assert_close(y_c, y_e, rtol=1e-5, atol=1e-6)
    grads_c = torch.autograd.grad(y_c.square().sum(), list(model.parameters()))
    grads_e = torch.autograd.grad(y_e.square().sum(), list(model.parameters()))
    for gc, ge in zip(grads_c, grads_e):
        torch.testing.assert_close(gc, ge, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_compile_conv_channels_dim():
    torch._dynamo.reset()
    model = _conv_model()
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), model(x), rtol=1e-5, atol=1e-6)


def test_export_matches_eager():
    model = _model().eval()
    x = torch.randn(5, 8)
    program = torch.export.export(model, (x,))
    torch.testing.assert_close(program.module()(x), model(x))
    x2 = torch.randn(7, 8)
    torch.testing.assert_close(torch.export.export(model, (x2,)).module()(x2), model(x2))


@pytest.mark.slow
def test_onnx_export_runs_in_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    for name, model, x in [("mlp", _model().eval(), torch.randn(5, 8)), ("conv", _conv_model().eval(), torch.randn(2, 3, 6, 6))]:
        path = tmp_path / f"{name}.onnx"
        torch.onnx.export(model, (x,), str(path), dynamo=True, verbose=False)
        session = ort.InferenceSession(str(path))
        (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        torch.testing.assert_close(torch.from_numpy(out), model(x).detach(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_vmap_and_per_sample_grads_match_the_batched_call(dtype):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 12, generator=gen, dtype=dtype)
    colu.colu(x[0], 4)  # a cached plan for the per-sample shape must not be taken inside vmap
    torch.testing.assert_close(torch.vmap(lambda t: colu.colu(t, 4))(x), colu.colu(x, 4))
    # batch dimension last, channels first inside the vmapped function
    xt = torch.randn(12, 5, 6, generator=gen, dtype=dtype)
    y = torch.vmap(lambda t: colu.colu(t, 4, dim=0, scaling="soft"), in_dims=2)(xt)
    torch.testing.assert_close(y, colu.colu(xt, 4, dim=0, scaling="soft").movedim(2, 0))
    torch.testing.assert_close(torch.vmap(lambda t: colu.rcolu(t, 3))(x), colu.rcolu(x, 3))
    # per-sample gradients: vmap(grad) against autograd on the closed form
    per_sample = torch.vmap(torch.func.grad(lambda t: colu.colu(t, 4, scaling="firm").pow(2).sum()))(x)
    xr = x.clone().requires_grad_(True)
    colu.colu(xr, 4, scaling="firm", backend="closed_form").pow(2).sum().backward()
    torch.testing.assert_close(per_sample, xr.grad)


def test_func_grad_of_a_model_matches_autograd():
    model = _model()
    params = dict(model.named_parameters())
    x = torch.randn(4, 8)

    def loss(p):
        return torch.func.functional_call(model, p, (x,)).pow(2).sum()

    grads = torch.func.grad(loss)(params)
    model.zero_grad()
    model(x).pow(2).sum().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad)
