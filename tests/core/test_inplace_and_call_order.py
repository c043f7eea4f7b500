"""In-place ops on the output behave the same on every backend; argument checks do not depend on earlier calls."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import colu
from colu import ConeSpec, reference
from colu.ops import cpu, dispatch


def _backends():
    names = ["closed_form"]
    if cpu.load() is not None:
        names.append("cpu")
    if importlib.util.find_spec("triton") is not None and torch.cuda.is_available():
        names.append("triton")
    return names


BACKENDS = _backends()


def _device(backend):
    return "cuda" if backend == "triton" else "cpu"


# ---------------------------------------------------------------- in-place ops on the output

LAYOUTS = [
    ("colu", dict(cone_dim=4), (8, 16)),
    ("colu", dict(cone_dim=4, scaling="soft", axis_activation="silu"), (3, 5, 16)),
    ("colu", dict(cone_dim=4, dim=1), (2, 16, 3, 3)),
    ("colu", dict(cone_dim=4, dim=1, scaling="firm"), (2, 16, 1, 1)),
    ("colu", dict(cone_dim=4, share_axis=True), (8, 13)),
    ("colu", dict(cone_dim=4, layout="axes_first"), (8, 16)),
    ("colu", dict(num_cones=3, share_axis=True, layout="axes_first", axis_activation="relu", dim=1), (2, 13, 4)),
    ("rcolu", dict(cone_dim=4), (8, 16)),
    ("rcolu", dict(cone_dim=3, scaling="firm", axis_activation="relu"), (3, 5, 12)),
    ("rcolu", dict(cone_dim=4, dim=1), (2, 16, 3, 3)),
]
LAYOUT_IDS = [f"{fn}-{'-'.join(f'{k}={v}' for k, v in kw.items())}-{'x'.join(map(str, shape))}" for fn, kw, shape in LAYOUTS]

SEED = 1234


def _dropout_inplace(y):
    torch.manual_seed(SEED)
    return nn.Dropout(p=0.5, inplace=True).train()(y)


def _dropout(y):
    torch.manual_seed(SEED)
    return F.dropout(y, p=0.5, training=True)


# name: (in-place op on CoLU's output, the same op out of place for the reference)
INPLACE = {
    "mul_": (lambda y: y.mul_(2.0), lambda y: y * 2.0),
    "add_": (lambda y: y.add_(0.5), lambda y: y + 0.5),
    "relu_": (lambda y: y.relu_(), torch.relu),
    "dropout": (_dropout_inplace, _dropout),
}


def _input(shape, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, dtype=torch.float64, generator=gen) * 1.5).to(device)


@pytest.mark.parametrize("op", list(INPLACE))
@pytest.mark.parametrize("fn,kw,shape", LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_inplace_on_output_matches_reference(backend, fn, kw, shape, op):
    inplace, outofplace = INPLACE[op]
    device = _device(backend)
    x0 = _input(shape, device)
    g = _input(shape, device, seed=1)

    x = x0.clone().requires_grad_()
    y = getattr(colu, fn)(x, backend=backend, **kw)
    out = inplace(y)
    assert out is y  # the op really ran in place
    (out * g).sum().backward()

    xr = x0.clone().requires_grad_()
    ref = outofplace(getattr(reference, fn)(xr, **kw).contiguous())
    (ref * g).sum().backward()

    torch.testing.assert_close(out.detach(), ref.detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("fn,kw,shape", LAYOUTS, ids=LAYOUT_IDS)
def test_inplace_results_agree_across_backends(fn, kw, shape):
    results = []
    for backend in BACKENDS:
        device = _device(backend)
        x = _input(shape, device).requires_grad_()
        y = getattr(colu, fn)(x, backend=backend, **kw)
        y.mul_(2.0).add_(0.25)
        _dropout_inplace(y).relu_()
        (y * _input(shape, device, seed=2)).sum().backward()
        results.append((y.detach().cpu(), x.grad.cpu()))
    for y, grad in results[1:]:
        torch.testing.assert_close(y, results[0][0], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(grad, results[0][1], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inplace_dropout_module_after_colu_float32(backend, monkeypatch):
    monkeypatch.setenv("COLU_BACKEND", backend)
    device = _device(backend)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), colu.CoLU(cone_dim=4), nn.Dropout(p=0.5, inplace=True), nn.Linear(16, 3))
    model = model.to(device).train()
    x = torch.randn(32, 12, device=device)
    torch.manual_seed(SEED)
    model(x).square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]

    model.zero_grad()
    monkeypatch.delenv("COLU_BACKEND")
    torch.manual_seed(SEED)
    h = reference.colu(model[0](x), cone_dim=4).contiguous()
    model[3](F.dropout(h, p=0.5, training=True)).square().sum().backward()
    for got, want in zip(grads, [p.grad for p in model.parameters()]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inplace_without_autograd(backend):
    device = _device(backend)
    x = _input((8, 16), device)
    want = reference.colu(x, cone_dim=4) * 3.0
    torch.testing.assert_close(colu.colu(x, cone_dim=4, backend=backend).mul_(3.0), want)
    with torch.no_grad():
        xg = x.clone().requires_grad_()
        torch.testing.assert_close(colu.colu(xg, cone_dim=4, backend=backend).mul_(3.0), want)


@pytest.mark.parametrize(
    "fn,kw,C",
    [("colu", dict(cone_dim=4), 12), ("colu", dict(cone_dim=4, share_axis=True), 13),
     ("colu", dict(cone_dim=3, layout="axes_first", scaling="soft"), 12), ("rcolu", dict(cone_dim=4, axis_activation="silu"), 12)],
)
@pytest.mark.parametrize("inner", [1, 3])
def test_closed_form_forward_does_not_return_a_view(fn, kw, C, inner):
    spec = colu.ConeSpec.resolve(C, kw["cone_dim"], share_axis=kw.get("share_axis", False),
                                 layout=kw.get("layout", "grouped"), kind=fn)
    x = torch.randn(5, C, inner)
    y = dispatch.forward(x, spec, kw.get("scaling", "hard"), 1e-7, kw.get("axis_activation", "identity"), "closed_form")
    assert not y._is_view() and y._base is None
    assert y.shape == x.shape and y.is_contiguous()


@pytest.mark.parametrize("op", ["mul_", "add_"])
@pytest.mark.parametrize("fn,kw,shape", [LAYOUTS[i] for i in (0, 2, 4, 5, 7, 9)], ids=[LAYOUT_IDS[i] for i in (0, 2, 4, 5, 7, 9)])
def test_gradcheck_and_gradgradcheck_through_inplace_closed_form(fn, kw, shape, op):
    inplace = INPLACE[op][0]
    small = (2, *shape[1:2], *(min(s, 2) for s in shape[2:])) if len(shape) > 2 else (3, shape[1])
    x = _input(small, "cpu", seed=3).requires_grad_()

    def f(t):
        return inplace(getattr(colu, fn)(t, backend="closed_form", **kw))

    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


@pytest.mark.parametrize("backend", ["closed_form", "auto"])
def test_compile_with_inplace_after_colu(backend):
    torch._dynamo.reset()

    def f(t):
        y = colu.colu(t, cone_dim=4, scaling="soft", backend=backend)
        y.mul_(2.0)
        return y.relu_()

    x0 = torch.randn(6, 16)
    x1, x2 = x0.clone().requires_grad_(), x0.clone().requires_grad_()
    y1 = torch.compile(f, fullgraph=True)(x1)
    y2 = f(x2)
    torch.testing.assert_close(y1, y2, rtol=1e-5, atol=1e-6)
    y1.square().sum().backward()
    y2.square().sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-6)


def test_export_with_inplace_after_colu():
    class M(nn.Module):
        def forward(self, t):
            y = colu.colu(t, cone_dim=4, layout="axes_first")
            y.add_(1.0)
            return colu.rcolu(y, cone_dim=4).mul_(0.5)

    x = torch.randn(5, 16)
    program = torch.export.export(M(), (x,))
    torch.testing.assert_close(program.module()(x), M()(x))


# ---------------------------------------------------------------- argument checks and call history

# (function, input shape, calls that are valid and equal (==, same hash) to the candidate, candidate, expected)
# expected: None where the candidate is accepted, else (exception name, pattern of its message)
HISTORY_CASES = [
    ("colu", (4, 16), ["dict(cone_dim=4)"], "dict(cone_dim=4.0)", ("ValueError", "cone_dim must be an int, got 4.0")),
    ("colu", (4, 16), ["dict(cone_dim=2)"], "dict(cone_dim=2.0)", ("ValueError", "cone_dim must be an int, got 2.0")),
    ("colu", (4, 16), ["dict(cone_dim=4)"], "dict(cone_dim=np.int64(4))", ("ValueError", "cone_dim must be an int")),
    ("colu", (4, 13), ["dict(cone_dim=4, share_axis=True)"], "dict(cone_dim=4.0, share_axis=True)",
     ("ValueError", "cone_dim must be an int, got 4.0")),
    ("colu", (4, 16), ["dict(num_cones=4)"], "dict(num_cones=4.0)", ("ValueError", "num_cones must be an int, got 4.0")),
    ("colu", (4, 16), ["dict(num_cones=1)"], "dict(num_cones=True)", ("ValueError", "num_cones must be an int, got True")),
    ("colu", (4, 16), ["dict(num_cones=0)"], "dict(num_cones=False)", ("ValueError", "num_cones must be an int, got False")),
    ("colu", (4, 16), ["dict(eps=1)", "dict(eps=1.0)"], "dict(eps=True)", ("ValueError", "eps must be a finite number")),
    ("colu", (4, 16), ["dict(eps=1.0)"], "dict(eps=1)", None),
    ("colu", (4, 16), ["dict(dim=1)"], "dict(dim=True)", ("TypeError", "dim must be an int, got True")),
    ("colu", (4, 16), ["dict(dim=1)"], "dict(dim=1.0)", ("TypeError", "dim must be an int, got 1.0")),
    ("colu", (4, 13), ["dict(share_axis=True)"], "dict(share_axis=1)", None),
    ("colu", (4, 16), ["dict(share_axis=False)"], "dict(share_axis=0)", None),
    ("rcolu", (4, 12), ["dict(cone_dim=3)"], "dict(cone_dim=3.0)", ("ValueError", "cone_dim must be an int, got 3.0")),
    ("rcolu", (4, 12), ["dict(num_cones=1)"], "dict(num_cones=True)", ("ValueError", "num_cones must be an int, got True")),
    ("rcolu", (4, 12), ["dict(eps=1)"], "dict(eps=True)", ("ValueError", "eps must be a finite number")),
]
HISTORY_IDS = [f"{fn}-{cand}" for fn, _, _, cand, _ in HISTORY_CASES]

# run both in this process and in the fresh processes, so that the two compare like with like
_OUTCOME_SRC = '''
import numpy as np
import torch
import colu


def outcome(fn, shape, kwargs_src, backend="auto", requires_grad=False):
    kwargs = eval(kwargs_src, {"np": np})
    x = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x.requires_grad_(requires_grad)
    try:
        y = getattr(colu, fn)(x, backend=backend, **kwargs)
    except Exception as e:
        return {"error": type(e).__name__, "message": str(e)}
    return {"values": y.detach().flatten().tolist()}
'''

# Each case runs in a child forked from an interpreter that imported colu and made no call: a process
# with no call history (and far cheaper than starting Python and torch once per case).
_DRIVER_SRC = _OUTCOME_SRC + '''
import json, os, sys

results = []
for fn, shape, kwargs_src in json.loads(sys.stdin.read()):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            data = json.dumps(outcome(fn, shape, kwargs_src)).encode()
        except BaseException as e:
            data = json.dumps({"crash": repr(e)}).encode()
        with os.fdopen(w, "wb") as f:
            f.write(data)
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    results.append(json.loads(data))
print(json.dumps(results))
'''

_namespace: dict = {}
exec(_OUTCOME_SRC, _namespace)
_outcome = _namespace["outcome"]


@pytest.fixture(scope="module")
def fresh_outcomes():
    """Outcome of each case's candidate call as the first colu call of a process."""
    if not hasattr(os, "fork"):
        pytest.skip("needs os.fork")
    cases = [(fn, shape, cand) for fn, shape, _, cand, _ in HISTORY_CASES]
    proc = subprocess.run(
        [sys.executable, "-c", _DRIVER_SRC], input=json.dumps(cases), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    return dict(zip(HISTORY_IDS, results))


def _assert_same(got, want):
    if "values" in want:
        assert "values" in got, got
        torch.testing.assert_close(torch.tensor(got["values"]), torch.tensor(want["values"]), rtol=1e-10, atol=1e-10)
    else:
        assert got == want


def _check_expected(result, expected):
    assert "crash" not in result, result
    if expected is None:
        assert "values" in result, result
    else:
        name, pattern = expected
        assert result.get("error") == name, result
        assert pattern in result["message"], result


@pytest.mark.slow
@pytest.mark.parametrize("fn,shape,primers,candidate,expected", HISTORY_CASES, ids=HISTORY_IDS)
def test_first_call_of_a_process(fresh_outcomes, fn, shape, primers, candidate, expected):
    _check_expected(fresh_outcomes[f"{fn}-{candidate}"], expected)


@pytest.mark.parametrize("fn,shape,primers,candidate,expected", HISTORY_CASES, ids=HISTORY_IDS)
def test_same_outcome_after_equal_valid_calls(fresh_outcomes, fn, shape, primers, candidate, expected):
    want = fresh_outcomes[f"{fn}-{candidate}"]
    backends = ["auto", *BACKENDS]
    for primer in primers:
        for backend in backends:
            for requires_grad in (False, True):
                assert "values" in _outcome(fn, shape, primer, backend, requires_grad)
    # the resolved cone layout on its own, as the symmetry and alignment tools ask for it
    for primer in primers:
        kw = eval(primer)
        if "cone_dim" in kw or "num_cones" in kw:
            colu.ConeSpec.resolve(shape[-1], kw.get("cone_dim"), kw.get("num_cones"),
                                  share_axis=kw.get("share_axis", False), kind=fn)
    for backend in backends:
        for requires_grad in (False, True):
            got = _outcome(fn, shape, candidate, backend, requires_grad)
            _check_expected(got, expected)
            _assert_same(got, want)


def test_cone_spec_resolve_checks_types_after_equal_values():
    colu.ConeSpec.resolve(16, 4)
    colu.ConeSpec.resolve(16, None, 1)
    with pytest.raises(ValueError, match="cone_dim must be an int, got 4.0"):
        colu.ConeSpec.resolve(16, 4.0)
    with pytest.raises(ValueError, match="num_cones must be an int, got True"):
        colu.ConeSpec.resolve(16, None, True)
    reference.colu(torch.randn(2, 12), cone_dim=3)
    with pytest.raises(ValueError, match="cone_dim must be an int, got 3.0"):
        reference.colu(torch.randn(2, 12), cone_dim=3.0)


def test_share_axis_flag_values_give_the_same_result():
    x = torch.randn(4, 13, dtype=torch.float64)
    want = colu.colu(x, cone_dim=4, share_axis=True)
    for flag in (True, 1, torch.tensor(1).item()):
        torch.testing.assert_close(colu.colu(x, cone_dim=4, share_axis=flag), want)
    assert colu.CoLU(cone_dim=4, share_axis=1).share_axis is True


@pytest.mark.parametrize("value", ["no", 2, 0.0, None])
def test_share_axis_must_be_a_bool(value):
    # a truthiness check read share_axis="no" as True
    with pytest.raises(ValueError, match=r"share_axis must be True or False \(or 1/0\), got share_axis="):
        colu.colu(torch.randn(2, 7), 4, share_axis=value)


def test_the_spec_states_its_geometry():
    assert ConeSpec.resolve(8, 2).componentwise and not ConeSpec.resolve(8, 2, kind="rcolu").componentwise
    assert ConeSpec.resolve(8, 4).contiguous and ConeSpec.resolve(8, 4, kind="rcolu").contiguous
    assert not ConeSpec.resolve(8, 4, layout="axes_first").contiguous
    assert not ConeSpec.resolve(7, 4, share_axis=True).contiguous
    assert ConeSpec.resolve(4, 4, layout="axes_first").contiguous  # one cone: axis 0, section 1..3
    basis = ConeSpec.resolve(8, 4, kind="rcolu").homogeneous_basis()
    torch.testing.assert_close(basis[:, 0], torch.full((4,), 0.5, dtype=torch.float64))
    torch.testing.assert_close(basis.T @ basis, torch.eye(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="RCoLU's geometry"):
        ConeSpec.resolve(8, 4).homogeneous_basis()
