"""The two-dimensional cone: ``cone_dim=2`` with ``componentwise=False``.

By default CoLU with S = 2 is the paper's component-wise activation (ReLU, SiLU, x*sigmoid(4x)); with
``componentwise=False`` each pair of one axis channel a and one section channel s is a cone like any other,
with |s| for the section norm (the JAX package's ``dim=2``). The oracle here computes it, and its Jacobian,
with the math module from the formula, independently of the library's spec, reference and backends.
"""

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import colu
from colu import reference, symmetry
from colu.groups import group_of
from colu.ops import cpu, dispatch
from colu.spec import ConeSpec

EPS = 1e-7
SCALINGS = ("hard", "soft", "firm", "sqrt", "log", "exact")
LAYOUTS = [("grouped", False), ("axes_first", False), ("grouped", True), ("axes_first", True)]

needs_kernel = pytest.mark.skipif(cpu.load() is None, reason="no C compiler: the CPU kernel cannot be built")


# --------------------------------------------------------------------------------------------- the oracle
def _sigmoid(t):
    if t >= 0:
        return 1.0 / (1.0 + math.exp(-t))
    e = math.exp(t)  # no overflow for very negative t
    return e / (1.0 + e)


def _weight(r, scaling):
    """``(w(r), w'(r))``; the slope of sqrt and log at r <= 0 is taken as 0, as the library documents."""
    if scaling == "hard":
        return min(max(r, 0.0), 1.0), (1.0 if 0.0 < r < 1.0 else 0.0)
    if scaling == "soft":
        s = _sigmoid(r - 0.5)
        return s, s * (1.0 - s)
    if scaling == "firm":
        s = _sigmoid(4.0 * r - 2.0)
        return s, 4.0 * s * (1.0 - s)
    if scaling == "sqrt":
        return (math.sqrt(r), 0.5 / math.sqrt(r)) if r > 0 else (0.0, 0.0)
    if scaling == "log":
        return (math.log1p(r), 1.0 / (1.0 + r)) if r > 0 else (0.0, 0.0)
    raise AssertionError(scaling)


def _phi(a, act):
    """``(phi(a), phi'(a))`` of the axis activation."""
    if act == "identity":
        return a, 1.0
    if act == "relu":
        return max(a, 0.0), (1.0 if a > 0 else 0.0)
    s = _sigmoid(a)
    return a * s, s * (1.0 + a * (1.0 - s))


def _pairs(C, layout, share):
    """(axis channel, section channel) of every cone, written out from the layout rules."""
    if share:  # channel 0 is the axis of every cone, in either layout
        return [(0, 1 + g) for g in range(C - 1)]
    G = C // 2
    if layout == "grouped":
        return [(2 * g, 2 * g + 1) for g in range(G)]
    return [(g, G + g) for g in range(G)]


def _cone2d(v, layout, share, scaling, act, c=1.0):
    """Output and Jacobian ``J[i][j] = d out_i / d v_j`` of two-dimensional-cone CoLU on one vector ``v`` (a
    list of floats), ``c`` the cone-angle factor multiplying ``r``."""
    C = len(v)
    out = [0.0] * C
    J = [[0.0] * C for _ in range(C)]
    for ai, si in _pairs(C, layout, share):
        a, s = v[ai], v[si]
        ap, dphi = _phi(a, act)
        n, sign = abs(s), math.copysign(1.0, s)
        if scaling == "exact":  # the metric projection onto {|s| <= a}
            if n <= ap:
                ya, ys, daa, das, dsa, dss = ap, s, 1.0, 0.0, 0.0, 1.0
            elif n <= -ap:
                ya, ys, daa, das, dsa, dss = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
            else:
                m = 0.5 * (ap + n)
                ya, ys, daa, das, dsa, dss = m, m * sign, 0.5, 0.5 * sign, 0.5 * sign, 0.5
        else:
            d = n + EPS
            r = c * ap / d
            w, dw = _weight(r, scaling)
            # d r / d a' = c / d and d r / d s = -r sign(s) / d
            ya, ys, daa, das, dsa, dss = ap, w * s, 1.0, 0.0, s * dw * c / d, w - dw * r * n / d
        out[ai], out[si] = ya, ys
        J[ai][ai], J[ai][si] = daa * dphi, das
        J[si][ai], J[si][si] = dsa * dphi, dss
    return out, J


def oracle(x, g, layout, share, scaling, act, dim=-1, c=1.0):
    """The output and the input gradient for the upstream ``g`` (float64 tensors shaped like ``x``)."""
    xs = x.detach().double().movedim(dim, -1)
    gs = g.detach().double().movedim(dim, -1)
    shape = xs.shape
    outs, grads = [], []
    for v, u in zip(xs.reshape(-1, shape[-1]).tolist(), gs.reshape(-1, shape[-1]).tolist()):
        y, J = _cone2d(v, layout, share, scaling, act, c)
        outs.append(y)
        grads.append([sum(u[i] * J[i][j] for i in range(len(v))) for j in range(len(v))])
    back = lambda rows: torch.tensor(rows, dtype=torch.float64).reshape(shape).movedim(-1, dim)  # noqa: E731
    return back(outs), back(grads)


# cones (a, s) with r = a/|s| away from hard's kinks at 0 and 1 and from a = 0: inside, outside and polar to
# {|s| <= a}, both signs of s
PAIRS = [(1.0, 3.0), (2.0, -0.5), (-1.5, 0.7), (0.8, -1.9), (-0.4, -2.5), (1.2, 1.0), (0.3, -0.2), (0.5, -0.9)]


def rows(layout, share):
    """A (3, C) float64 input with the cones of PAIRS (scaled per row) placed by the layout."""
    if share:
        sections = [s for _, s in PAIRS]
        data = [[a] + [s * k for s in sections] for k, a in ((1.0, 1.3), (0.7, 2.2), (1.6, 0.6))]
        return torch.tensor(data, dtype=torch.float64)
    C = 2 * len(PAIRS)
    data = []
    for k in (1.0, 0.7, -1.3):
        v = [0.0] * C
        for (ai, si), (a, s) in zip(_pairs(C, layout, share), PAIRS):
            v[ai], v[si] = a * k, s * k
        data.append(v)
    return torch.tensor(data, dtype=torch.float64)


def images(layout, share):
    """A random NCHW float64 input (channels at dim=1)."""
    C = 7 if share else 8
    return torch.randn(2, C, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2


def _cases(scaling, layout, share):
    """(input, dim) pairs, acts and backends for one configuration."""
    acts = ("identity", "relu", "silu") if layout == "grouped" and not share else ("identity", "relu")
    backends = [("closed_form", torch.float64)]
    if scaling == "exact":
        backends.append(("auto", torch.float64))  # the kernels refuse exact: auto runs it on the closed form
    elif cpu.load() is not None:
        backends += [("cpu", torch.float64), ("cpu", torch.float32)]
    return [(rows(layout, share), -1), (images(layout, share), 1)], acts, backends


TOL = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=2e-5, atol=2e-5)}


def _check_against_oracle(y, gx, x, g, layout, share, scaling, act, dim, dtype, what):
    want_y, want_g = oracle(x, g, layout, share, scaling, act, dim)
    tol = TOL[dtype]
    torch.testing.assert_close(y.double(), want_y, **tol, msg=lambda m: f"{what} forward: {m}")
    scale = max(1.0, float(want_g.abs().max()))
    torch.testing.assert_close(gx.double() / scale, want_g / scale, **tol, msg=lambda m: f"{what} gradient: {m}")


CONFIGS = [(sc, lay, sh) for sc in SCALINGS for lay, sh in LAYOUTS if not (sc == "exact" and sh)]


@pytest.mark.parametrize("scaling,layout,share", CONFIGS)
def test_forward_and_gradient_match_the_formula_on_every_backend(scaling, layout, share):
    inputs, acts, backends = _cases(scaling, layout, share)
    for x64, dim in inputs:
        for act in acts:
            kw = dict(scaling=scaling, layout=layout, share_axis=share, axis_activation=act, dim=dim)
            for backend, dtype in backends:
                x = x64.to(dtype).requires_grad_()
                g = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).to(dtype)
                before = dict(dispatch.calls)
                y = colu.colu(x, 2, componentwise=False, backend=backend, **kw)
                (gx,) = torch.autograd.grad(y, x, g)
                if backend == "cpu":
                    assert dispatch.calls["cpu"] == before.get("cpu", 0) + 2, "the C kernel should run both passes"
                what = f"{backend} {dtype} act={act} dim={dim}"
                _check_against_oracle(y, gx, x.detach(), g, layout, share, scaling, act, dim, dtype, what)
            # the reference is the formula too
            xr = x64.clone().requires_grad_()
            g = torch.randn(xr.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
            yr = reference.colu(xr, 2, componentwise=False, **kw)
            (gr,) = torch.autograd.grad(yr, xr, g)
            _check_against_oracle(yr, gr, x64, g, layout, share, scaling, act, dim, torch.float64, "reference")


def test_num_cones_split_into_pairs_and_the_module_are_the_same_cones():
    x = images("axes_first", False)
    want = colu.colu(x, 2, componentwise=False, scaling="sqrt", layout="axes_first", dim=1)
    torch.testing.assert_close(colu.colu(x, num_cones=4, componentwise=False, scaling="sqrt", layout="axes_first",
                                         dim=1), want, rtol=0, atol=0)
    m = colu.CoLU(cone_dim=2, componentwise=False, scaling="sqrt", layout="axes_first", dim=1)
    for _ in range(2):  # the second call replays a plan
        torch.testing.assert_close(m(x), want, rtol=0, atol=0)
        torch.testing.assert_close(m(x.to(memory_format=torch.channels_last)), want, rtol=0, atol=0)
    assert repr(m) == "CoLU(cone_dim=2, componentwise=False, scaling='sqrt', dim=1, layout='axes_first')"
    assert repr(colu.CoLU(num_cones=4, componentwise=False)) == (
        "CoLU(num_cones=4, componentwise=False, scaling='hard', dim=-1)"
    )
    assert "componentwise" not in repr(colu.CoLU(cone_dim=2))


def test_a_zero_cone_stays_zero_and_half_types_round_once():
    x = torch.zeros(2, 6)
    assert torch.equal(colu.colu(x, 2, componentwise=False), x)
    h = (torch.randn(4, 8, generator=torch.Generator().manual_seed(3)) * 2).to(torch.bfloat16)
    want = reference.colu(h.float(), 2, componentwise=False, scaling="soft").to(torch.bfloat16)
    torch.testing.assert_close(colu.colu(h, 2, componentwise=False, scaling="soft"), want, rtol=0, atol=0)


# --------------------------------------------------------------------------------------- the default stays
def test_the_default_is_still_componentwise():
    x = torch.randn(5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) * 2
    firm = lambda t: t * torch.sigmoid(4 * t)  # noqa: E731
    for scaling, fn in (("hard", torch.relu), ("soft", nn.functional.silu), ("firm", firm)):
        for kw in (dict(cone_dim=2), dict(num_cones=4), dict(cone_dim=2, componentwise=True)):
            torch.testing.assert_close(colu.colu(x, scaling=scaling, **kw), fn(x), rtol=0, atol=0)
            torch.testing.assert_close(reference.colu(x, scaling=scaling, **kw), fn(x), rtol=0, atol=0)
        torch.testing.assert_close(colu.CoLU(cone_dim=2, scaling=scaling)(x), fn(x), rtol=0, atol=0)
    assert ConeSpec.resolve(8, 2).componentwise and not ConeSpec.resolve(8, 2).pair_cones
    with pytest.raises(ValueError, match=r"scaling='sqrt' needs cone_dim >= 3, or componentwise=False"):
        colu.colu(x, 2, scaling="sqrt")
    with pytest.raises(ValueError, match=r"scaling='exact' needs cone_dim >= 3, or componentwise=False"):
        colu.CoLU(cone_dim=2, scaling="exact")
    with pytest.raises(ValueError, match=r"no cone angle.*componentwise=False"):
        colu.CoLU(cone_dim=2, learnable_angle="shared")


def test_the_two_readings_never_share_a_plan():
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(5))
    relu, cones = torch.relu(x), reference.colu(x, 2, componentwise=False)
    assert not torch.allclose(relu, cones)
    m_relu, m_cones = colu.CoLU(cone_dim=2), colu.CoLU(cone_dim=2, componentwise=False)
    for _ in range(3):
        assert torch.equal(colu.colu(x, 2), relu)
        assert torch.equal(colu.colu(x, 2, componentwise=False), cones)
        assert torch.equal(colu.colu(x, 2, componentwise=0), cones)  # 0 reads as False
        assert torch.equal(m_relu(x), relu) and torch.equal(m_cones(x), cones)
    # equal to True as a key, but refused by the check: the key holds the type
    for bad in (1.0, "no", None):
        message = rf"componentwise must be True or False \(or 1/0\), got componentwise={bad!r}"
        with pytest.raises(ValueError, match=message):
            colu.colu(x, 2, componentwise=bad)
        with pytest.raises(ValueError, match="componentwise must be True or False"):
            colu.CoLU(cone_dim=2, componentwise=bad)
    m_relu.componentwise = False  # assigning an option checks it and takes effect
    assert torch.equal(m_relu(x), cones) and m_relu.componentwise is False


def test_a_module_pickled_before_the_option_loads_as_componentwise():
    import pickle

    m = colu.CoLU(cone_dim=2, scaling="soft", dim=1)
    # what a CoLU pickled before the option existed holds: its options, arguments and key without it
    m._options.pop("componentwise")
    m._args, m._call = m._args[:-1], m._call[:-1]
    loaded = pickle.loads(pickle.dumps(m))
    assert loaded.componentwise is True and repr(loaded) == "CoLU(cone_dim=2, scaling='soft', dim=1)"
    x = torch.randn(2, 4, 3)
    torch.testing.assert_close(loaded(x), nn.functional.silu(x))
    assert group_of(loaded, 4).kind == "permutation"


# ----------------------------------------------------------------------------- what the 2-D cone now allows
def test_the_spec_states_the_reading():
    spec = ConeSpec.resolve(8, 2, componentwise=False)
    assert spec.pair_cones and not spec.componentwise and spec.section_dim == 1
    assert str(spec) == "ConeSpec(colu: C=8, G=4, S=2, grouped, 2-D cones)"
    assert str(ConeSpec.resolve(5, 2, share_axis=True, componentwise=False)) == (
        "ConeSpec(colu: C=5, G=4, S=2, grouped, shared axis, 2-D cones)"
    )
    # where it changes nothing the spec is the default one
    assert ConeSpec.resolve(8, 4, componentwise=False) == ConeSpec.resolve(8, 4)
    assert ConeSpec.resolve(8, 2, kind="rcolu", componentwise=False) == ConeSpec.resolve(8, 2, kind="rcolu")
    assert ConeSpec.resolve(8, num_cones=0, componentwise=False).is_identity
    assert ConeSpec.resolve(8, num_cones=4, componentwise=False) == spec
    with pytest.raises(ValueError, match="componentwise must be True or False"):
        ConeSpec.resolve(8, 2, componentwise="yes")


def test_componentwise_false_changes_nothing_from_three_channels_on():
    x = torch.randn(3, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    for S in (3, 4):
        torch.testing.assert_close(colu.colu(x, S, componentwise=False, scaling="sqrt"),
                                   colu.colu(x, S, scaling="sqrt"), rtol=0, atol=0)
    torch.testing.assert_close(colu.CoLU(cone_dim=4, componentwise=False)(x), colu.colu(x, 4), rtol=0, atol=0)


def test_a_cone_angle_scales_r():
    x = rows("grouped", False).requires_grad_()
    g = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    c = 2.5
    y = colu.colu(x, 2, componentwise=False, scaling="soft", angle_scale=torch.tensor(c, dtype=torch.float64))
    (gx,) = torch.autograd.grad(y, x, g)
    want_y, want_g = oracle(x, g, "grouped", False, "soft", "identity", c=c)
    torch.testing.assert_close(y, want_y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gx, want_g, rtol=1e-12, atol=1e-12)
    m = colu.CoLU(cone_dim=2, componentwise=False, scaling="sqrt", learnable_angle=True, channels=16)
    assert m.log_angle_scale.shape == (8,)
    with torch.no_grad():
        m.log_angle_scale.fill_(math.log(c))
    torch.testing.assert_close(m(x), oracle(x, g, "grouped", False, "sqrt", "identity", c=c)[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("scaling,backend", [("hard", "closed_form"), ("soft", "closed_form"), ("sqrt", "closed_form"),
                                             pytest.param("hard", "cpu", marks=needs_kernel),
                                             pytest.param("sqrt", "cpu", marks=needs_kernel)])
def test_gradcheck(scaling, backend):
    # PAIRS keeps r away from hard's kinks (0 and 1) and from sqrt's infinite slope at 0+
    x = rows("grouped", False).requires_grad_()
    torch.autograd.gradcheck(lambda t: colu.colu(t, 2, componentwise=False, scaling=scaling, backend=backend), (x,))
    xs = rows("axes_first", True).requires_grad_()
    torch.autograd.gradcheck(
        lambda t: colu.colu(t, 2, componentwise=False, share_axis=True, layout="axes_first", scaling=scaling,
                            backend=backend), (xs,))


def test_soft_gradgradcheck():
    x = rows("axes_first", False)[:1].requires_grad_()
    torch.autograd.gradgradcheck(lambda t: colu.colu(t, 2, componentwise=False, scaling="soft", layout="axes_first",
                                                     axis_activation="silu"), (x,))


# ------------------------------------------------------------------------------------------- the symmetries
def _flip(C, sections):
    P = torch.eye(C, dtype=torch.float64)
    for s in sections:
        P[s, s] = -1.0
    return P


def _move(C, order):
    """The permutation matrix sending channel order[i] to channel i."""
    return torch.eye(C, dtype=torch.float64)[list(order)]


@pytest.mark.parametrize("layout,share", LAYOUTS)
def test_section_sign_flips_and_cone_permutations_commute(layout, share):
    x = torch.randn(6, 2, 7 if share else 8, dtype=torch.float64, generator=torch.Generator().manual_seed(8)) * 2
    C = x.shape[-1]
    pairs = _pairs(C, layout, share)
    G = len(pairs)
    # a cone permutation: cone g takes cone (g + 1) % G's axis and section (a shared axis stays)
    order = list(range(C))
    for g, (ai, si) in enumerate(pairs):
        aj, sj = pairs[(g + 1) % G]
        order[ai], order[si] = aj, sj
    elements = [_flip(C, [pairs[0][1]]), _flip(C, [s for _, s in pairs[1::2]]), _move(C, order)]
    for scaling in SCALINGS:
        if scaling == "exact" and share:
            continue
        for act in ("identity", "relu"):
            def f(t):
                return colu.colu(t, 2, componentwise=False, scaling=scaling, layout=layout, share_axis=share,
                                 axis_activation=act)

            for P in elements + [symmetry.group_element(C, 2, layout=layout, share_axis=share, componentwise=False,
                                                        generator=torch.Generator().manual_seed(9))]:
                assert symmetry.equivariance_error(f, x, P) < 1e-12, (scaling, act, P)
    if not share:
        # a swap of an axis with a section channel is a symmetry of ReLU, not of the cones
        swap = _move(C, [pairs[0][1], pairs[0][0], *range(2, C)] if layout == "grouped" else
                     [G, *range(1, G), 0, *range(G + 1, C)])
        assert symmetry.equivariance_error(lambda t: colu.colu(t, 2), x, swap) == 0.0
        assert symmetry.equivariance_error(lambda t: colu.colu(t, 2, componentwise=False, layout=layout), x, swap) > 0.1
    # and a sign flip is a symmetry of the cones, not of ReLU
    assert symmetry.equivariance_error(lambda t: colu.colu(t, 2, share_axis=share), x, elements[0]) > 0.1


def test_the_group_is_the_cone_group():
    C = 8
    for act in (colu.CoLU(cone_dim=2, componentwise=False),
                colu.CoLU(num_cones=4, componentwise=False, layout="axes_first"),
                ConeSpec.resolve(C, 2, componentwise=False)):
        group = group_of(act, C)
        assert group.kind == "colu" and group.cone.pair_cones and group.cone.num_cones == 4, group
    assert group_of(colu.CoLU(cone_dim=2), C).kind == "permutation"
    assert group_of(ConeSpec.resolve(C, 2), C).kind == "permutation"
    assert str(group_of(colu.CoLU(cone_dim=2, componentwise=False), C)) == (
        "Group(ConeSpec(colu: C=8, G=4, S=2, grouped, 2-D cones))"
    )
    angled = colu.CoLU(cone_dim=2, componentwise=False, learnable_angle=True, channels=C)
    with torch.no_grad():
        angled.log_angle_scale.copy_(torch.tensor([0.0, 1.0, 0.0, 1.0]))
    assert group_of(angled, C).cone_classes == (0, 1, 0, 1)
    # its elements: a permutation of the pairs and a sign on each section, the axes kept positive
    group = group_of(colu.CoLU(cone_dim=2, componentwise=False), C)
    P = group.sample(torch.Generator().manual_seed(10))
    eye = torch.eye(C, dtype=torch.float64)
    assert torch.equal(P.abs().sum(0), torch.ones(C, dtype=torch.float64)) and torch.equal(P @ P.T, eye)
    assert (P[0::2][:, 0::2] >= 0).all() and (P[0::2][:, 1::2] == 0).all()
    # solve recovers a planted element
    found, value = group.solve(P.clone())
    assert torch.equal(found, P) and value == pytest.approx(C)
    assert symmetry.group_element_for(colu.CoLU(cone_dim=2, componentwise=False), C).shape == (C, C)


# ------------------------------------------------------------------------------------------------ convert
def test_convert_passes_the_option_and_the_record_keeps_it():
    def model():
        return nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))

    converted = model()
    report = colu.convert(converted, cone_dim=2, componentwise=False, scaling="sqrt")
    act = converted[1]
    assert isinstance(act, colu.CoLU) and act.componentwise is False and act.scaling == "sqrt"
    assert "(S=2: two-dimensional cones)" in str(report) and report.replaced[0].config["componentwise"] is False
    record = json.loads(json.dumps(colu.convert.conversion_record(converted, report)))
    fresh = model()
    colu.convert.apply_conversion_record(fresh, record)
    assert repr(fresh[1]) == repr(act)
    x = torch.randn(4, 8)
    torch.testing.assert_close(fresh[1](x), colu.colu(x, 2, componentwise=False, scaling="sqrt"))
    # a record written before the option existed rebuilds the component-wise default
    old = json.loads(json.dumps(record))
    for entry in old["modules"]:
        entry["options"].pop("componentwise")
        entry["options"]["scaling"] = "hard"
    again = model()
    colu.convert.apply_conversion_record(again, old)
    assert again[1].componentwise is True and torch.equal(again[1](x), torch.relu(x))
    assert "component-wise activation" in str(colu.convert(model(), cone_dim=2))
    with pytest.raises(ValueError, match="componentwise must be True or False"):
        colu.convert(model(), cone_dim=2, componentwise="no")


def test_a_multisite_conversion_keeps_the_option():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc, self.act = nn.Conv2d(3, 4, 1), nn.Linear(3, 4), nn.SiLU()

        def forward(self, img, vec):
            return self.act(self.conv(img)).mean((2, 3)) + self.act(self.fc(vec))

    net = Net()
    example = (torch.randn(1, 3, 2, 2), torch.randn(1, 3))
    colu.convert(net, cone_dim=2, componentwise=False, scaling="log", example_input=example)
    assert type(net.act).__name__ == "MultiSiteCoLU" and net.act.componentwise is False
    v = torch.randn(2, 4)
    torch.testing.assert_close(net.act(v), colu.colu(v, 2, componentwise=False, scaling="log"))


# ---------------------------------------------------------------------------------------- triton (slow)
_TRITON_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch, colu
    from colu.ops import dispatch
    cases = json.loads(sys.argv[1])
    results = []
    for x, g, dtype, kw in cases:
        dtype = getattr(torch, dtype)
        x = torch.tensor(x, dtype=torch.float64).to(dtype).requires_grad_(True)
        g = torch.tensor(g, dtype=torch.float64).to(dtype)
        before = dispatch.calls["triton"]
        y = colu.colu(x, 2, componentwise=False, backend="triton", **kw)
        (gx,) = torch.autograd.grad(y, x, g)
        assert dispatch.calls["triton"] == before + 2, dispatch.calls
        results.append([y.double().tolist(), gx.double().tolist()])
    print("TRITON-RESULTS " + json.dumps(results))
    """
)


@pytest.mark.slow
def test_triton_under_its_interpreter_matches_the_formula():
    pytest.importorskip("triton")
    cases = []
    for i, (scaling, (layout, share), act) in enumerate(
        [("hard", LAYOUTS[0], "identity"), ("soft", LAYOUTS[1], "relu"), ("firm", LAYOUTS[2], "silu"),
         ("sqrt", LAYOUTS[3], "relu"), ("log", LAYOUTS[0], "relu"), ("sqrt", LAYOUTS[1], "identity")]
    ):
        for x, dim in ((rows(layout, share), -1), (images(layout, share), 1)):
            dtype = ("float32", "float64")[i % 2]
            g = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(i))
            kw = dict(scaling=scaling, layout=layout, share_axis=share, axis_activation=act, dim=dim)
            cases.append((x.tolist(), g.tolist(), dtype, kw))
    env = dict(os.environ, TRITON_INTERPRET="1")
    env.pop("COLU_BACKEND", None)
    proc = subprocess.run([sys.executable, "-c", _TRITON_SCRIPT, json.dumps(cases)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("TRITON-RESULTS "))
    for (x, g, dtype, kw), (y, gx) in zip(cases, json.loads(line.split(" ", 1)[1]), strict=True):
        dtype = getattr(torch, dtype)
        x = torch.tensor(x, dtype=torch.float64).to(dtype).double()  # the values the kernel saw
        g = torch.tensor(g, dtype=torch.float64).to(dtype).double()
        y, gx = torch.tensor(y, dtype=torch.float64), torch.tensor(gx, dtype=torch.float64)
        what = f"triton {dtype} {kw}"
        kw = dict(kw)
        _check_against_oracle(y, gx, x, g, kw.pop("layout"), kw.pop("share_axis"), kw.pop("scaling"),
                              kw.pop("axis_activation"), kw.pop("dim"), dtype, what)


def test_the_triton_kernels_compile_for_a_gpu_at_two_channels():
    """The interpreter does not compile; this does, for sm_90, the S = 2 cone forward and backward."""
    pytest.importorskip("triton.backends.nvidia", reason="triton has no CUDA backend here")
    from colu.ops import triton_kernels

    for spec, scaling, act, shape, dtype in [
        (ConeSpec.resolve(64, 2, componentwise=False), "hard", "identity", (256, 64, 1), torch.float32),
        (ConeSpec.resolve(33, 2, share_axis=True, layout="axes_first", componentwise=False), "sqrt", "relu",
         (4, 33, 49), torch.bfloat16),
    ]:
        for backward in (False, True):
            ptx = triton_kernels.compile_ptx(spec, scaling, act, shape, dtype=dtype, backward=backward)
            assert "st.global" in ptx
