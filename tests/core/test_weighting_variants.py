"""The variants beside the paper's weightings: the JAX package's sqrt/log, the exact Lorentz-cone projection
with its potential, and the learnable cone angle (the Python layer: reference, closed form, modules, groups,
alignment, activation specs; the fused kernels' sqrt/log are in test_weighting_variants_kernels.py)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import colu
from colu import reference, symmetry
from colu_lab.framework.activations import parse_activation
from colu.groups import Group, angle_classes, group_of
from colu.ops import dispatch
from colu.spec import ConeSpec

EPS = 1e-7


# ------------------------------------------------------------------------------------------ sqrt and log
def _jax_convention(x, weight):
    """jax-colu's axes-first CoLU with a ReLU axis, computed with the math module from the formula
    (a' = max(a, 0), r = a'/(||s|| + eps), output (a', w(max(r, 0)) s)), for a list of channels."""
    G = 2
    axes, sections = x[:G], [x[G:G + 2], x[G + 2:G + 4]]
    out_axes, out_sections = [], []
    for a, s in zip(axes, sections):
        a = max(a, 0.0)
        r = a / (math.hypot(*s) + EPS)
        w = weight(max(r, 0.0))
        out_axes.append(a)
        out_sections += [w * v for v in s]
    return out_axes + out_sections


@pytest.mark.parametrize("scaling,weight", [("sqrt", math.sqrt), ("log", math.log1p)])
def test_sqrt_and_log_match_the_jax_convention(scaling, weight):
    rows = [
        [4.0, -1.0, 3.0, 4.0, 0.5, 0.0],  # r = 0.8 (inside sqrt's bulge), and a negative axis (r = 0)
        [0.5, 10.0, 1.0, -1.0, 2.0, 2.0],  # r < 1 and r > 1 (the section grows under sqrt)
        [0.0, 2.0, 0.0, 0.0, -3.0, 0.25],  # a zero cone, and r just below 1
    ]
    x = torch.tensor(rows, dtype=torch.float64)
    expected = torch.tensor([_jax_convention(r, weight) for r in rows], dtype=torch.float64)
    for fn in (colu.colu, reference.colu):
        y = fn(x, 3, scaling=scaling, layout="axes_first", axis_activation="relu")
        torch.testing.assert_close(y, expected, rtol=1e-14, atol=1e-14)


def test_sqrt_is_not_a_projection():
    x = torch.tensor([[1.0, 3.0, 4.0]], dtype=torch.float64)  # r = 0.2: sqrt(0.2) * 5 > 1, out of the cone
    y = colu.colu(x, 3, scaling="sqrt")
    assert y[0, 1:].norm() > y[0, 0]
    assert not torch.allclose(colu.colu(y, 3, scaling="sqrt"), y)  # and not idempotent
    big = torch.tensor([[9.0, 0.6, 0.8]], dtype=torch.float64)  # r = 9: the section grows by 3
    torch.testing.assert_close(colu.colu(big, 3, scaling="sqrt")[0, 1:].norm().item(), 3.0 / math.sqrt(1 + EPS), rtol=1e-12, atol=0)


# every (layout, axis activation) pair once, the weighting alternating so that each weighting meets each layout
# and each activation: the pairs are what reaches different code in the closed form (a gradcheck and a
# gradgradcheck cost ~2 s each, so the full product, 18 cases, was twice this for no further code)
_GRADIENT_CASES = [("sqrt", "grouped", False, "identity"), ("log", "grouped", False, "relu"),
                   ("sqrt", "grouped", False, "silu"), ("log", "axes_first", False, "identity"),
                   ("sqrt", "axes_first", False, "relu"), ("log", "axes_first", False, "silu"),
                   ("sqrt", "grouped", True, "identity"), ("log", "grouped", True, "relu"),
                   ("log", "grouped", True, "silu"), ("sqrt", "grouped", True, "silu")]


@pytest.mark.parametrize("scaling,layout,share,act", _GRADIENT_CASES)
def test_sqrt_log_closed_form_gradients(scaling, layout, share, act):
    torch.manual_seed(0)
    C = 13 if share else 12
    x = (torch.randn(5, C, 3, dtype=torch.float64) * 2).requires_grad_()
    kw = dict(scaling=scaling, layout=layout, share_axis=share, axis_activation=act, dim=1, backend="closed_form")
    torch.autograd.gradcheck(lambda t: colu.colu(t, 4, **kw), (x,))
    torch.autograd.gradgradcheck(lambda t: colu.colu(t, 4, **kw), (x,))


@pytest.mark.parametrize("scaling", ["sqrt", "log"])
def test_sqrt_log_rcolu_gradients(scaling):
    torch.manual_seed(1)
    x = torch.randn(6, 8, dtype=torch.float64, requires_grad=True)
    fn = lambda t: colu.rcolu(t, 4, scaling=scaling, axis_activation="relu", backend="closed_form")  # noqa: E731
    torch.autograd.gradcheck(fn, (x,))
    torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("scaling", ["sqrt", "log"])
def test_a_relu_axis_gives_finite_gradients_where_r_is_zero(scaling):
    # a' = 0 for every negative axis, where sqrt's slope is infinite: the slope is taken as 0, no NaN
    x = torch.tensor([[-1.0, 0.3, 0.4], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    for backend in ("closed_form", "auto"):
        x.grad = None
        colu.colu(x, 3, scaling=scaling, axis_activation="relu", backend=backend).sum().backward()
        assert torch.isfinite(x.grad).all(), backend
        assert (x.grad[:, 0] == 0).all()


def test_componentwise_cone_dim_is_refused_for_the_new_weightings():
    for scaling in ("sqrt", "log", "exact"):
        with pytest.raises(ValueError, match=r"cone_dim=2 is the component-wise.*cone_dim >= 3"):
            colu.colu(torch.randn(3, 4), 2, scaling=scaling)
        with pytest.raises(ValueError, match="cone_dim >= 3"):
            colu.CoLU(2, scaling=scaling)


# ------------------------------------------------------------------------------------ exact projection
def test_exact_projection_hand_values():
    x = torch.tensor(
        [
            [5.0, 3.0, 4.0],  # inside: unchanged
            [-5.0, 3.0, 4.0],  # in the polar cone: 0
            [3.0, 4.0, 0.0],  # between: m = (3 + 4)/2 = 3.5 -> (3.5, 3.5, 0)
            [0.0, 0.0, 2.0],  # on the axis' plane: m = 1 -> (1, 0, 1)
            [0.0, 0.0, 0.0],
        ],
        dtype=torch.float64,
    )
    expected = torch.tensor(
        [[5.0, 3.0, 4.0], [0.0, 0.0, 0.0], [3.5, 3.5, 0.0], [1.0, 0.0, 1.0], [0.0, 0.0, 0.0]], dtype=torch.float64
    )
    for fn in (colu.colu, reference.colu):
        torch.testing.assert_close(fn(x, 3, scaling="exact"), expected, rtol=0, atol=1e-15)


def _in_cone(y, S):
    cones = y.reshape(*y.shape[:-1], -1, S)
    return (cones[..., 1:].norm(dim=-1) <= cones[..., 0] * (1 + 1e-12) + 1e-12).all()


vectors = st.lists(st.floats(-10, 10, allow_nan=False, width=64), min_size=8, max_size=8)


@settings(max_examples=80, deadline=None)
@given(vectors, vectors, vectors)
def test_exact_projection_properties(xs, ys, vs):
    x, y = torch.tensor([xs], dtype=torch.float64), torch.tensor([ys], dtype=torch.float64)
    px, py = colu.colu(x, 4, scaling="exact"), colu.colu(y, 4, scaling="exact")
    assert _in_cone(px, 4)
    torch.testing.assert_close(colu.colu(px, 4, scaling="exact"), px, rtol=1e-12, atol=1e-12)  # idempotent
    # firmly non-expansive: ||p(x) - p(y)||^2 <= <p(x) - p(y), x - y> (so non-expansive too)
    d = px - py
    assert (d * d).sum() <= (d * (x - y)).sum() + 1e-9
    assert d.norm() <= (x - y).norm() + 1e-9
    # the variational inequality of a projection: <x - p(x), p(x) - v> >= 0 for v in the cone
    v = colu.colu(torch.tensor([vs], dtype=torch.float64), 4, scaling="exact")
    assert ((x - px) * (px - v)).sum() >= -1e-9


@settings(max_examples=40, deadline=None)
@given(vectors)
def test_exact_rcolu_projects_onto_the_rotated_cone(xs):
    x = torch.tensor([xs], dtype=torch.float64)
    p = colu.rcolu(x, 4, scaling="exact")
    basis = ConeSpec.resolve(8, 4, kind="rcolu").homogeneous_basis()
    assert _in_cone(p.reshape(2, 4) @ basis, 4)
    torch.testing.assert_close(colu.rcolu(p, 4, scaling="exact"), p, rtol=1e-12, atol=1e-12)
    # the same projection as CoLU's in the rotated coordinates
    coords = x.reshape(2, 4) @ basis
    torch.testing.assert_close(p.reshape(2, 4), colu.colu(coords, 4, scaling="exact") @ basis.T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind,layout", [("colu", "grouped"), ("colu", "axes_first"), ("rcolu", "grouped")])
@pytest.mark.parametrize("act", ["identity", "silu"])
def test_exact_gradients(kind, layout, act):
    torch.manual_seed(2)
    x = (torch.randn(6, 12, 2, dtype=torch.float64) * 2).requires_grad_()
    if kind == "colu":
        fn = lambda t: colu.colu(t, 4, scaling="exact", layout=layout, axis_activation=act, dim=1)  # noqa: E731
    else:
        fn = lambda t: colu.rcolu(t, 4, scaling="exact", axis_activation=act, dim=1)  # noqa: E731
    torch.autograd.gradcheck(fn, (x,))
    torch.autograd.gradgradcheck(fn, (x,))
    g = torch.randn(6, 12, 2, dtype=torch.float64)
    (mine,) = torch.autograd.grad(fn(x), x, g)
    ref = reference.colu if kind == "colu" else reference.rcolu
    kw = {"layout": layout} if kind == "colu" else {}
    (oracle,) = torch.autograd.grad(ref(x, 4, scaling="exact", axis_activation=act, dim=1, **kw), x, g)
    torch.testing.assert_close(mine, oracle, rtol=1e-12, atol=1e-12)


def test_exact_runs_on_the_closed_form_and_refuses_shared_axes_and_forced_kernels():
    x = torch.randn(4, 12)
    dispatch.calls.clear()
    colu.colu(x, 4, scaling="exact")
    assert dispatch.calls["closed_form"] == 1 and dispatch.calls["cpu"] == 0
    with pytest.raises(RuntimeError, match=r"backend='cpu' does not compute scaling='exact'.*'auto'"):
        colu.colu(x, 4, scaling="exact", backend="cpu")
    with pytest.raises(ValueError, match="share_axis=False"):
        colu.colu(x[:, :10], 4, scaling="exact", share_axis=True)
    with pytest.raises(ValueError, match="share_axis=False"):
        colu.CoLU(4, scaling="exact", share_axis=True)


def test_exact_is_equivariant_under_the_cone_group():
    torch.manual_seed(3)
    x = torch.randn(16, 12, dtype=torch.float64)
    for kind in ("colu", "rcolu"):
        P = symmetry.group_element(12, 4, kind=kind, generator=torch.Generator().manual_seed(4))
        fn = colu.colu if kind == "colu" else colu.rcolu
        assert symmetry.equivariance_error(lambda t: fn(t, 4, scaling="exact"), x, P) < 1e-12
    assert group_of(colu.CoLU(4, scaling="exact"), 12) == group_of(colu.CoLU(4), 12)


# ----------------------------------------------------------------------------------------- potential
@pytest.mark.parametrize("rotated", [False, True])
def test_potential_gradient_is_the_projection(rotated):
    torch.manual_seed(5)
    x = (torch.randn(10, 12, 5, dtype=torch.float64) * 3).requires_grad_()
    F = colu.potential(x, 4, dim=1, rotated=rotated)
    assert F.shape == (10, 5)
    (grad,) = torch.autograd.grad(F.sum(), x)
    project = colu.rcolu if rotated else colu.colu
    p = project(x.detach(), 4, scaling="exact", dim=1)
    torch.testing.assert_close(grad, p, rtol=1e-12, atol=1e-12)
    # F = |x|^2/2 - dist(x, V)^2/2, the form, agrees with |p(x)|^2/2 (Moreau)
    xd = x.detach()
    torch.testing.assert_close(F.detach(), 0.5 * (xd * xd).sum(1) - 0.5 * ((xd - p) ** 2).sum(1), rtol=1e-12, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(vectors, vectors)
def test_bregman_divergence_is_nonnegative(xs, ys):
    x, y = torch.tensor([xs], dtype=torch.float64), torch.tensor([ys], dtype=torch.float64)
    for layout in ("grouped", "axes_first"):
        assert colu.bregman_divergence(x, y, 4, layout=layout).item() >= -1e-9
    assert colu.bregman_divergence(x, x, 4).abs().item() < 1e-9


def test_potential_is_convex_along_a_line():
    torch.manual_seed(6)
    x, y = torch.randn(2, 1, 12, dtype=torch.float64) * 3
    ts = torch.linspace(0, 1, 11, dtype=torch.float64)
    values = torch.stack([colu.potential((1 - t) * x + t * y, 4) for t in ts]).squeeze()
    chord = (1 - ts) * values[0] + ts * values[-1]
    assert (values <= chord + 1e-9).all()


# ---------------------------------------------------------------------------------- learnable angle
def test_angle_scale_matches_the_reference_and_has_gradients():
    torch.manual_seed(7)
    x = torch.randn(5, 12, 3, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64, requires_grad=True)
    for scaling in ("hard", "soft", "sqrt"):
        y = colu.colu(x, 4, dim=1, scaling=scaling, angle_scale=scale)
        torch.testing.assert_close(y, reference.colu(x, 4, dim=1, scaling=scaling, angle_scale=scale))
        torch.autograd.gradcheck(lambda t, c: colu.colu(t, 4, dim=1, scaling=scaling, angle_scale=c), (x, scale))
        torch.autograd.gradgradcheck(lambda t, c: colu.colu(t, 4, dim=1, scaling=scaling, angle_scale=c), (x, scale))
    shared = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda t, c: colu.rcolu(t, 4, dim=1, angle_scale=c), (x, shared))
    torch.autograd.gradcheck(lambda t, c: colu.colu(t[:, :10], 4, dim=1, share_axis=True, angle_scale=c), (x, scale))
    # scale 1 is the paper's cone
    torch.testing.assert_close(colu.colu(x, 4, dim=1, angle_scale=torch.ones(3, dtype=torch.float64)), colu.colu(x, 4, dim=1))


def test_angle_scale_arguments_are_checked():
    x = torch.randn(4, 12)
    with pytest.raises(ValueError, match=r"shape \(2,\); expected \(3,\)"):
        colu.colu(x, 4, angle_scale=torch.ones(2))
    with pytest.raises(TypeError, match="floating-point tensor"):
        colu.colu(x, 4, angle_scale=2.0)
    with pytest.raises(ValueError, match="scaling='exact' has none"):
        colu.colu(x, 4, scaling="exact", angle_scale=torch.ones(3))
    with pytest.raises(RuntimeError, match="closed form"):
        colu.colu(x, 4, angle_scale=torch.ones(3), backend="cpu")
    with pytest.raises(ValueError, match="num_cones=G, or channels=C"):
        colu.CoLU(4, learnable_angle=True)
    with pytest.raises(ValueError, match="learnable_angle='sideways'"):
        colu.CoLU(4, learnable_angle="sideways")
    with pytest.raises(ValueError, match="learnable_angle=0"):
        colu.CoLU(4, channels=8, learnable_angle=0)
    with pytest.raises(ValueError, match="no cone angle"):
        colu.CoLU(2, learnable_angle="shared")
    with pytest.raises(ValueError, match="exact"):
        colu.CoLU(4, scaling="exact", learnable_angle="shared")


def test_learnable_angle_module():
    m = colu.CoLU(4, learnable_angle=True, channels=16)
    assert m.log_angle_scale.shape == (4,) and "log_angle_scale" in dict(m.named_parameters())
    torch.testing.assert_close(m.cone_angle, torch.full((4,), 45.0))
    x = torch.randn(3, 16)
    torch.testing.assert_close(m(x), colu.colu(x, 4))
    m(x).square().sum().backward()
    assert m.log_angle_scale.grad is not None and m.log_angle_scale.grad.abs().sum() > 0
    assert colu.RCoLU(num_cones=2, learnable_angle="shared").log_angle_scale.shape == ()
    assert "learnable_angle=per_cone" in repr(m)
    state = m.state_dict()
    fresh = colu.CoLU(4, learnable_angle=True, channels=16)
    fresh.load_state_dict(state)


def _fit(student, teacher, steps=150):
    torch.manual_seed(0)
    opt = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=0.03)
    for _ in range(steps):
        x = torch.randn(128, 16)
        loss = (student(x) - teacher(x)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        x = torch.randn(4096, 16, generator=torch.Generator().manual_seed(99))
        return (student(x) - teacher(x)).square().mean().item()


def test_the_learnable_angle_learns_a_narrower_cone():
    # The target is CoLU on cones of half-angle atan(0.3) (17 degrees) after a fixed map. The map before the
    # activation stays fixed in the student: a trainable one could absorb the angle into the axis rows (CoLU
    # with an identity axis is homogeneous in a), which a fixed input scale (a normalisation, a given
    # embedding) rules out.
    torch.manual_seed(8)
    mix = nn.Linear(16, 16).requires_grad_(False)
    narrow = torch.full((4,), 0.3)
    teacher = lambda x: colu.colu(mix(x), 4, angle_scale=narrow)  # noqa: E731

    def student(learnable):
        readout = nn.Linear(16, 16)
        with torch.no_grad():
            readout.weight.copy_(torch.eye(16))
            readout.bias.zero_()
        return nn.Sequential(mix, colu.CoLU(4, learnable_angle=learnable, channels=16), readout)

    with_angle = student(True)
    loss_with = _fit(with_angle, teacher)
    loss_without = _fit(student(False), teacher)
    assert loss_with < 0.2 * loss_without, (loss_with, loss_without)
    assert (with_angle[1].cone_angle < 30).all()  # the cones narrowed from 45 degrees towards 17


def test_symmetry_respects_cone_angles():
    m = colu.CoLU(4, learnable_angle=True, channels=16).double()
    with torch.no_grad():
        m.log_angle_scale.copy_(torch.tensor([0.0, 0.3, 0.0, 0.3]))
    group = group_of(m, 16)
    assert group.cone_classes == (0, 1, 0, 1) and angle_classes(m.log_angle_scale) == (0, 1, 0, 1)
    x = torch.randn(32, 16, dtype=torch.float64)
    for seed in range(5):
        P = group.sample(torch.Generator().manual_seed(seed))
        assert symmetry.equivariance_error(m, x, P) < 1e-12
        Q = symmetry.group_element(16, 4, angles=m.log_angle_scale, generator=torch.Generator().manual_seed(seed))
        assert symmetry.equivariance_error(m, x, Q) < 1e-12
    # an element of the full group that swaps cones of different angles changes the function
    swap = Group("colu", 16, ConeSpec.resolve(16, 4))._from_cone_blocks(
        [(1, 0, torch.eye(3, dtype=torch.float64)), (0, 1, torch.eye(3, dtype=torch.float64)),
         (2, 2, torch.eye(3, dtype=torch.float64)), (3, 3, torch.eye(3, dtype=torch.float64))]
    )
    assert symmetry.equivariance_error(m, x, swap) > 1e-3
    # a shared angle keeps the full group
    assert group_of(colu.CoLU(4, learnable_angle="shared"), 16) == group_of(colu.CoLU(4), 16)


def test_alignment_respects_cone_angles():
    from colu import align

    def make(seed, angles):
        torch.manual_seed(seed)
        act = colu.CoLU(4, learnable_angle=True, channels=16)
        with torch.no_grad():
            act.log_angle_scale.copy_(torch.tensor(angles))
        return nn.Sequential(nn.Linear(5, 16), act, nn.Linear(16, 3)).double()

    a, b = make(0, [0.0, 0.3, 0.0, 0.3]), make(1, [0.1, 0.2, 0.1, 0.2])
    moved = align.match_weights(a, b).apply(b)
    x = torch.randn(9, 5, dtype=torch.float64)
    torch.testing.assert_close(moved(x), b(x), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="angle classes"):
        align.match_weights(a, make(2, [0.0, 0.1, 0.2, 0.3]))


# ------------------------------------------------------------------------------------ activation specs
@pytest.mark.parametrize(
    "text,scaling,learnable",
    [("colu:S=4,sqrt", "sqrt", False), ("colu:S=4,log", "log", False), ("colu:S=4,exact", "exact", False),
     ("colu:S=4,learnable", "hard", True), ("rcolu:S=4,soft,learnable=shared", "soft", "shared")],
)
def test_activation_specs_for_the_variants(text, scaling, learnable):
    spec = parse_activation(text)
    assert (spec.scaling, spec.learnable_angle) == (scaling, learnable)
    assert parse_activation(spec.label()) == spec
    module = spec.build(spec.fit_width(16))
    assert module.scaling == scaling
    assert (module.log_angle_scale is not None) == bool(learnable)
    module(torch.randn(2, 16)).sum().backward() if learnable else module(torch.randn(2, 16))


@pytest.mark.parametrize("text", ["colu:S=4,exact,share", "colu:S=4,exact,learnable", "colu:S=2,log", "colu:S=4,learnable=x"])
def test_bad_variant_specs(text):
    with pytest.raises(ValueError, match=text.split(",")[-1].split("=")[0]):
        parse_activation(text)


def test_groups_is_reachable_from_the_package():
    # the README points at colu.groups.group_of after a bare `import colu`
    assert colu.groups.group_of is group_of


def test_where_sqrt_and_log_leave_the_cone():
    """The output is in the cone where w(r) <= r: log never leaves it and grows the section only past r = e - 1;
    sqrt leaves it for 0 < r < 1 and grows the section for r > 1."""
    r = torch.tensor([0.05, 0.5, 0.9, 1.5, math.e - 1.01, math.e - 0.99, 4.0], dtype=torch.float64)
    s = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64).expand(len(r), 3)
    x = torch.cat([r[:, None], s], dim=1)  # axis r, section of norm 1, so the cone ratio is r
    for scaling, leaves, grows in [("log", [False] * 7, [False, False, False, False, False, True, True]),
                                   ("sqrt", [True, True, True, False, False, False, False], [False] * 3 + [True] * 4)]:
        y = colu.colu(x, 4, scaling=scaling, backend="closed_form")
        section = y[:, 1:].norm(dim=1)
        assert (section > y[:, 0] + 1e-12).tolist() == leaves, scaling
        assert (section > 1 + 1e-12).tolist() == grows, scaling
