"""colu.colu / colu.rcolu against the reference, special cases, dtypes, layouts of memory."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import colu
from colu import reference

SCALINGS = ["hard", "soft", "firm"]
AXIS_ACTS = ["identity", "relu", "silu"]


def _width(S, G, share):
    return 1 + G * (S - 1) if share else G * S


GRID = [
    (S, G, share, layout, scaling, act)
    for S, G in [(3, 1), (3, 4), (4, 2), (4, 5), (8, 3)]
    for share in (False, True)
    for layout in ("grouped", "axes_first")
    for scaling in SCALINGS
    for act in AXIS_ACTS
]


@pytest.mark.parametrize("S,G,share,layout,scaling,act", GRID)
def test_colu_matches_reference_grid(S, G, share, layout, scaling, act):
    C = _width(S, G, share)
    gen = torch.Generator().manual_seed(S * 100 + G)
    x = torch.randn(6, C, dtype=torch.float64, generator=gen)
    kw = dict(share_axis=share, layout=layout, scaling=scaling, axis_activation=act)
    want = reference.colu(x, cone_dim=S, **kw)
    torch.testing.assert_close(colu.colu(x, cone_dim=S, **kw), want, rtol=1e-12, atol=1e-12)
    # the num_cones spelling describes the same activation
    torch.testing.assert_close(colu.colu(x, num_cones=G, **kw), want, rtol=1e-12, atol=1e-12)
    # channel axis in the middle: NCHW-like
    img = x.T.reshape(1, C, 2, 3)
    want_img = want.T.reshape(1, C, 2, 3)
    torch.testing.assert_close(colu.colu(img, cone_dim=S, dim=1, **kw), want_img, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("S,G", [(3, 2), (4, 3), (8, 2)])
@pytest.mark.parametrize("scaling", SCALINGS)
@pytest.mark.parametrize("act", AXIS_ACTS)
def test_rcolu_matches_reference(S, G, scaling, act):
    x = torch.randn(5, S * G, dtype=torch.float64, generator=torch.Generator().manual_seed(S + G))
    kw = dict(scaling=scaling, axis_activation=act)
    want = reference.rcolu(x, cone_dim=S, **kw)
    torch.testing.assert_close(colu.rcolu(x, cone_dim=S, **kw), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(colu.rcolu(x, num_cones=G, **kw), want, rtol=1e-12, atol=1e-12)
    img = x.T.reshape(1, S * G, 5, 1)
    torch.testing.assert_close(colu.rcolu(img, cone_dim=S, dim=1, **kw), want.T.reshape(1, S * G, 5, 1))


def test_hard_colu_by_hand():
    # one cone (a=1, s=(3, 4)): |s| = 5 > a, so the section shrinks by 1/5
    x = torch.tensor([[1.0, 3.0, 4.0], [-2.0, 3.0, 4.0], [10.0, 3.0, 4.0]], dtype=torch.float64)
    y = colu.colu(x, cone_dim=3, eps=0.0)
    want = torch.tensor([[1.0, 0.6, 0.8], [-2.0, 0.0, 0.0], [10.0, 3.0, 4.0]], dtype=torch.float64)
    torch.testing.assert_close(y, want)


def test_soft_and_firm_by_hand():
    x = torch.tensor([[2.0, 3.0, 4.0]], dtype=torch.float64)  # r = 2/5
    r = 0.4
    soft = colu.colu(x, cone_dim=3, scaling="soft", eps=0.0)
    firm = colu.colu(x, cone_dim=3, scaling="firm", eps=0.0)
    sig = lambda v: 1 / (1 + math.exp(-v))
    torch.testing.assert_close(soft, torch.tensor([[2.0, 3 * sig(r - 0.5), 4 * sig(r - 0.5)]], dtype=torch.float64))
    torch.testing.assert_close(firm, torch.tensor([[2.0, 3 * sig(4 * r - 2), 4 * sig(4 * r - 2)]], dtype=torch.float64))


def test_rcolu_by_hand():
    # group (3, 1): t = 4/sqrt2, x_perp = (1, -1), |x_perp| = sqrt2, r = 2 > 1: unchanged
    x = torch.tensor([[3.0, 1.0, -1.0, 0.5]], dtype=torch.float64)
    y = colu.rcolu(x, cone_dim=2, eps=0.0)
    # second group (-1, 0.5): t < 0, so it collapses onto the axis: mean (-0.25, -0.25)
    torch.testing.assert_close(y, torch.tensor([[3.0, 1.0, -0.25, -0.25]], dtype=torch.float64))


def test_shared_axis_layout():
    # C = 7, S = 4: channel 0 is the axis of both cones, sections 1..3 and 4..6
    x = torch.tensor([[1.0, 3.0, 4.0, 0.0, 0.0, 0.3, 0.4]], dtype=torch.float64)
    y = colu.colu(x, cone_dim=4, share_axis=True, eps=0.0)
    torch.testing.assert_close(y, torch.tensor([[1.0, 0.6, 0.8, 0.0, 0.0, 0.3, 0.4]], dtype=torch.float64))
    for layout in ("grouped", "axes_first"):
        torch.testing.assert_close(colu.colu(x, cone_dim=4, share_axis=True, layout=layout, eps=0.0), y)


def test_axes_first_is_a_channel_permutation_of_grouped():
    G, S = 3, 4
    x = torch.randn(10, G * S, dtype=torch.float64)
    spec = colu.ConeSpec.resolve(G * S, cone_dim=S, layout="axes_first")
    order = spec.cone_channels().flatten()  # axes_first channel of each grouped position
    grouped = colu.colu(x[:, order], cone_dim=S)
    torch.testing.assert_close(colu.colu(x, cone_dim=S, layout="axes_first")[:, order], grouped)
    assert spec.axis_channels().tolist() == [0, 1, 2]
    assert spec.section_channels()[1].tolist() == [6, 7, 8]


@pytest.mark.parametrize("scaling,fn", [("hard", torch.relu), ("soft", F.silu), ("firm", lambda x: x * torch.sigmoid(4 * x))])
def test_cone_dim_two_is_componentwise(scaling, fn):
    x = torch.randn(4, 10)
    torch.testing.assert_close(colu.colu(x, cone_dim=2, scaling=scaling), fn(x))
    torch.testing.assert_close(colu.colu(x, num_cones=5, scaling=scaling), fn(x))


def test_num_cones_zero_is_identity():
    x = torch.randn(3, 9)
    assert torch.equal(colu.colu(x, num_cones=0), x)
    assert torch.equal(colu.colu(x, num_cones=0, share_axis=True), x)
    assert torch.equal(colu.rcolu(x, num_cones=0), x)


def test_default_cone_dim_is_four():
    x = torch.randn(3, 8)
    torch.testing.assert_close(colu.colu(x), colu.colu(x, cone_dim=4))
    torch.testing.assert_close(colu.rcolu(x), colu.rcolu(x, cone_dim=4))


def test_leading_and_trailing_dims():
    x = torch.randn(2, 3, 12, 4, 5, dtype=torch.float64)
    for dim in (2, -3):
        y = colu.colu(x, cone_dim=4, dim=dim)
        want = reference.colu(x, cone_dim=4, dim=2)
        torch.testing.assert_close(y, want)
    y = colu.colu(x.transpose(2, 4), cone_dim=4, dim=4)
    torch.testing.assert_close(y, reference.colu(x, cone_dim=4, dim=2).transpose(2, 4))


def test_noncontiguous_and_channels_last():
    x = torch.randn(2, 12, 5, 6)
    want = reference.colu(x, cone_dim=3, dim=1, share_axis=False)
    cl = x.contiguous(memory_format=torch.channels_last)
    y = colu.colu(cl, cone_dim=3, dim=1)
    torch.testing.assert_close(y, want)
    assert y.is_contiguous(memory_format=torch.channels_last)
    y = colu.colu(x, cone_dim=3, dim=1)
    assert y.is_contiguous()
    sliced = torch.randn(2, 24, 5, 6)[:, ::2]
    torch.testing.assert_close(colu.colu(sliced, cone_dim=3, dim=1), reference.colu(sliced.contiguous(), cone_dim=3, dim=1))
    rows = torch.randn(12, 7).T  # channels last but with stride 1 between rows
    torch.testing.assert_close(colu.colu(rows, cone_dim=4), reference.colu(rows.contiguous(), cone_dim=4))
    torch.testing.assert_close(colu.rcolu(rows, cone_dim=4), reference.rcolu(rows.contiguous(), cone_dim=4))


@pytest.mark.parametrize("shape,dim", [((0, 12), -1), ((3, 12, 0), 1), ((0, 12, 2, 2), 1)])
def test_empty_tensors(shape, dim):
    x = torch.randn(shape, requires_grad=True)
    for fn in (colu.colu, colu.rcolu):
        y = fn(x, cone_dim=4, dim=dim)
        assert y.shape == x.shape
        y.sum().backward()
        assert x.grad.shape == x.shape


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_dtypes_keep_dtype(dtype):
    x = torch.randn(5, 12, dtype=torch.float64)
    for fn, ref in ((colu.colu, reference.colu), (colu.rcolu, reference.rcolu)):
        y = fn(x.to(dtype), cone_dim=4, scaling="soft")
        assert y.dtype == dtype
        tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
        torch.testing.assert_close(y.double(), ref(x.to(dtype).double(), cone_dim=4, scaling="soft"), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_large_inputs_stay_finite(dtype):
    # 3000^2 overflows float16; computing in float32 keeps the result finite and right
    x = torch.tensor([[3000.0, 3000.0, -3000.0, 2000.0], [-3000.0, 3000.0, 3000.0, 1000.0]])
    y = colu.colu(x.to(dtype), cone_dim=4)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.float(), reference.colu(x.to(dtype).float(), cone_dim=4), rtol=1e-2, atol=1.0)
    x.requires_grad_()
    xh = x.detach().to(dtype).requires_grad_()
    colu.colu(xh, cone_dim=4).sum().backward()
    assert torch.isfinite(xh.grad).all()
    yr = colu.rcolu(x.detach().to(dtype), cone_dim=4)
    assert torch.isfinite(yr).all()


@pytest.mark.parametrize("share", [False, True])
@pytest.mark.parametrize("layout", ["grouped", "axes_first"])
@pytest.mark.parametrize("where", ["axis", "section"])
def test_nan_stays_in_its_cone(share, layout, where):
    S, G = 4, 3
    C = _width(S, G, share)
    spec = colu.ConeSpec.resolve(C, S, share_axis=share, layout=layout)
    x = torch.randn(2, C)
    cone = 1
    channel = spec.section_channels()[cone, 1] if where == "section" or share else spec.axis_channels()[cone]
    x[0, channel] = float("nan")
    y = colu.colu(x, cone_dim=S, share_axis=share, layout=layout)
    nan = torch.isnan(y)
    assert not nan[1].any()  # other rows untouched
    own = set(spec.section_channels()[cone].tolist())
    assert set(torch.nonzero(nan[0]).flatten().tolist()) - set(spec.axis_channels()[cone:cone + 1].tolist()) == own
    assert nan[0, sorted(own)].all()


def test_nan_in_shared_axis_poisons_all_cones_only():
    x = torch.randn(2, 7)
    x[0, 0] = float("nan")
    y = colu.colu(x, cone_dim=4, share_axis=True)
    assert torch.isnan(y[0]).all() and not torch.isnan(y[1]).any()


def test_nan_rcolu_stays_in_group():
    x = torch.randn(2, 12)
    x[0, 5] = float("nan")
    y = colu.rcolu(x, cone_dim=4)
    assert torch.isnan(y[0, 4:8]).all()
    assert not torch.isnan(y[0, :4]).any() and not torch.isnan(y[0, 8:]).any() and not torch.isnan(y[1]).any()


def test_infinite_axis_keeps_section():
    x = torch.tensor([[float("inf"), 1.0, 2.0]])
    assert torch.equal(colu.colu(x, cone_dim=3), x)


def test_zero_section_is_exact():
    x = torch.tensor([[2.0, 0.0, 0.0], [-1.0, 0.0, 0.0]], requires_grad=True)
    y = colu.colu(x, cone_dim=3)
    assert torch.equal(y, x.detach())
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_modules_wrap_functionals():
    x = torch.randn(4, 13, dtype=torch.float64)
    m = colu.CoLU(cone_dim=4, share_axis=True, scaling="soft")
    torch.testing.assert_close(m(x), colu.colu(x, cone_dim=4, share_axis=True, scaling="soft"))
    assert repr(m) == "CoLU(cone_dim=4, share_axis=True, scaling='soft', dim=-1)"
    r = colu.RCoLU(num_cones=3, axis_activation="relu")
    torch.testing.assert_close(r(x[:, :12]), colu.rcolu(x[:, :12], num_cones=3, axis_activation="relu"))
    assert repr(r) == "RCoLU(num_cones=3, scaling='hard', dim=-1, axis_activation='relu')"
    assert repr(colu.CoLU(num_cones=2, layout="axes_first", dim=1)) == "CoLU(num_cones=2, scaling='hard', dim=1, layout='axes_first')"
    assert list(m.state_dict()) == []


def test_configuration_grid_is_covered():
    # guard against the grid above silently shrinking
    combos = {(share, layout, scaling, act) for _, _, share, layout, scaling, act in GRID}
    assert len(combos) == 2 * 2 * 3 * 3
    assert {S for S, *_ in GRID} == {3, 4, 8}
    assert set(itertools.chain.from_iterable([[G] for _, G, *_ in GRID])) >= {1, 2, 3}


def test_modules_check_their_arguments_once(monkeypatch):
    """A module's arguments are checked when it is built; its calls check only the input."""
    from colu import functional

    checked = []
    check_options = functional.check_options
    monkeypatch.setattr(functional, "check_options", lambda *a: checked.append(a) or check_options(*a))
    m, r = colu.CoLU(cone_dim=4, scaling="soft"), colu.RCoLU(cone_dim=3, dim=1)
    assert len(checked) == 2
    x = torch.randn(3, 24, dtype=torch.float64)
    for _ in range(2):
        torch.testing.assert_close(m(x), reference.colu(x, 4, scaling="soft"))
        torch.testing.assert_close(m(x.t().contiguous().t()), m(x))  # a call no plan covers
        torch.testing.assert_close(r(x.view(3, 6, 4)), reference.rcolu(x.view(3, 6, 4), 3, dim=1))
    assert len(checked) == 2, "calls should not check the module's arguments again"
    colu.colu(x.t().contiguous().t(), 4)
    assert len(checked) == 3, "a functional call no plan covers checks its arguments"


@pytest.mark.parametrize("obj", [colu.colu, colu.rcolu, colu.CoLU, colu.RCoLU])
def test_every_argument_documents_its_default(obj):
    import ast
    import inspect
    import re

    doc = inspect.getdoc(obj)
    args = doc.split("Args:\n", 1)[1].split("\n\n", 1)[0]
    entries = dict(re.findall(r"^    (\w+): (.*?)(?=^    \w+: |\Z)", args, re.S | re.M))
    for name, param in inspect.signature(obj).parameters.items():
        assert name in entries, f"{obj.__name__}: argument {name} is not documented"
        if param.default is inspect.Parameter.empty:
            continue
        found = re.search(r"Default: ``(.+?)``", entries[name].replace("\n", " "))
        assert found, f"{obj.__name__}: the docs of {name} do not state its default"
        assert ast.literal_eval(found.group(1)) == param.default, f"{obj.__name__}: {name}'s documented default"
