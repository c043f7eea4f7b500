"""Symmetry toolkit: group elements, equivariance checks, invariant sets, Lemma 4.8, weight moves."""

import math

import pytest
import torch
from torch import nn

import colu
from colu import align, groups
from colu import symmetry as sym

F64 = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _width(G, S, share_axis):
    return 1 + G * (S - 1) if share_axis else G * S


# ------------------------------------------------------------ group elements
@pytest.mark.parametrize("S", [3, 4, 8])
@pytest.mark.parametrize("layout", ["grouped", "axes_first"])
@pytest.mark.parametrize("share_axis", [False, True])
@pytest.mark.parametrize("scaling", ["hard", "soft", "firm"])
def test_colu_group_elements_are_orthogonal_and_commute(S, layout, share_axis, scaling):
    G = 3
    C = _width(G, S, share_axis)
    g = _gen(S)
    x = torch.randn(64, C, generator=g, dtype=F64)
    # some cones with a negative axis and some clipped sections
    x[:, 0] = x[:, 0] * 3

    def act(t):
        return colu.colu(t, cone_dim=S, share_axis=share_axis, layout=layout, scaling=scaling)

    for _ in range(3):
        P = sym.group_element(C, cone_dim=S, share_axis=share_axis, layout=layout, generator=g)
        assert torch.allclose(P @ P.T, torch.eye(C, dtype=F64), atol=1e-12)
        # a genuine rotation, not just a permutation of channels
        assert ((P.abs() > 1e-6) & (P.abs() < 1 - 1e-6)).any()
        assert sym.equivariance_error(act, x, P) < 1e-12
    # a Haar-random O(C) element is not in the group
    assert sym.equivariance_error(act, x, sym.random_orthogonal(C, generator=g)) > 1e-2


@pytest.mark.parametrize("S", [3, 4, 8])
@pytest.mark.parametrize("scaling", ["hard", "soft"])
def test_rcolu_group_elements_commute(S, scaling):
    C = 2 * S
    g = _gen(10 + S)
    x = torch.randn(64, C, generator=g, dtype=F64)
    P = sym.group_element(C, cone_dim=S, kind="rcolu", generator=g)
    assert torch.allclose(P @ P.T, torch.eye(C, dtype=F64), atol=1e-12)
    act = lambda t: colu.rcolu(t, cone_dim=S, scaling=scaling)  # noqa: E731
    assert sym.equivariance_error(act, x, P) < 1e-12
    # the all-ones direction of each group is fixed up to the group permutation
    ones = torch.ones(C, dtype=F64)
    assert torch.allclose(P @ ones, ones, atol=1e-12)
    assert sym.equivariance_error(act, x, sym.random_orthogonal(C, generator=g)) > 1e-2


def test_relu_group_is_permutations_and_rotations_break_relu():
    g = _gen(1)
    C = 12
    x = torch.randn(64, C, generator=g, dtype=F64)
    P = sym.group_element(C, kind="relu", generator=g)
    assert torch.equal(P.abs().sum(0), torch.ones(C, dtype=F64)) and set(P.unique().tolist()) == {0.0, 1.0}
    assert sym.equivariance_error(torch.relu, x, P) == 0.0
    for _ in range(3):
        R = sym.random_orthogonal(C, generator=g)
        assert sym.equivariance_error(torch.relu, x, R) > 0.1
    # the CoLU group element at the same width breaks ReLU too
    Q = sym.group_element(C, cone_dim=4, generator=g)
    assert sym.equivariance_error(torch.relu, x, Q) > 0.1


def test_special_cases_identity_and_componentwise():
    g = _gen(2)
    x = torch.randn(32, 8, generator=g, dtype=F64)
    P = sym.group_element(8, cone_dim=2, generator=g)
    assert set(P.unique().tolist()) == {0.0, 1.0}
    assert sym.equivariance_error(lambda t: colu.colu(t, cone_dim=2), x, P) == 0.0
    O = sym.group_element(8, num_cones=0, generator=g)
    assert not set(O.unique().tolist()) <= {0.0, 1.0}
    assert sym.equivariance_error(lambda t: colu.colu(t, num_cones=0), x, O) < 1e-12


def test_group_element_is_reproducible_and_checks_kind():
    a = sym.group_element(12, cone_dim=4, generator=_gen(5))
    b = sym.group_element(12, cone_dim=4, generator=_gen(5))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="kind='bogus'"):
        sym.group_element(12, kind="bogus")


@pytest.mark.parametrize("name,kind", [("relu", "permutation"), ("Componentwise", "permutation"),
                                       ("perm", "permutation"), ("identity", "orthogonal"), ("RCoLU", "rcolu")])
def test_one_vocabulary_of_kinds(name, kind):
    assert groups.group_kind(name) == kind
    # symmetry and align read the same names
    P = sym.group_element(12, cone_dim=3, kind=name, generator=_gen(6))
    Q = groups.group_of(colu.ConeSpec.resolve(12, cone_dim=3, kind=kind), 12) if kind in ("colu", "rcolu") \
        else groups.group_of(name, 12)
    assert torch.equal(P, Q.sample(_gen(6)))
    with pytest.raises(ValueError, match="cone group needs its cones"):
        groups.group_of("colu", 12)


def test_one_list_of_componentwise_modules():
    x = torch.randn(16, 6, generator=_gen(7), dtype=F64)
    for cls in groups.COMPONENTWISE:
        act = cls() if cls is not nn.Threshold else cls(0.1, -1.0)
        P = sym.group_element_for(act, 6, generator=_gen(8))
        assert sym.equivariance_error(act, x, P) < 1e-12, cls.__name__
        assert align.group_of(act, 6) == groups.Group("permutation", 6)


def test_dropout_has_a_group_only_in_evaluation_mode():
    # alignment compares models in evaluation mode, where dropout is the identity
    assert align.group_of(nn.Dropout(), 6).kind == "orthogonal"
    # an element applied to weights must keep the function in training mode too
    with pytest.raises(TypeError, match="Dropout is random in training mode"):
        sym.group_element_for(nn.Dropout(), 6)
    assert sym.group_element_for(nn.Identity(), 6, generator=_gen(9)).shape == (6, 6)


def test_unknown_group_error_is_a_type_and_a_value_error():
    for error in (TypeError, ValueError):
        with pytest.raises(error, match="Softmax"):
            groups.group_of(nn.Softmax(-1), 4)
    with pytest.raises(ValueError, match="cone spec exactly when"):
        groups.Group("colu", 4)


def test_equivariance_error_along_channel_dim_of_images():
    g = _gen(3)
    x = torch.randn(2, 16, 5, 5, generator=g, dtype=F64)
    P = sym.group_element(16, num_cones=4, generator=g)
    act = colu.CoLU(num_cones=4, dim=1)
    assert sym.equivariance_error(act, x, P, dim=1) < 1e-12
    assert sym.equivariance_error(act, x, sym.random_orthogonal(16, generator=g), dim=1) > 1e-2
    with pytest.raises(ValueError, match="16 channels"):
        sym.equivariance_error(act, x, torch.eye(15, dtype=F64), dim=1)


# ------------------------------------------------------------- invariant set
@pytest.mark.parametrize("share_axis", [False, True])
@pytest.mark.parametrize("layout", ["grouped", "axes_first"])
def test_hard_colu_outputs_are_in_the_cone(share_axis, layout):
    C = _width(4, 4, share_axis)
    x = torch.randn(200, C, generator=_gen(4), dtype=F64) * 2
    kw = dict(cone_dim=4, share_axis=share_axis, layout=layout)
    assert not sym.in_cone(x, **kw).all()
    y = colu.colu(x, **kw)
    inside = sym.in_cone(y, **kw)
    assert inside.shape == (200,) and inside.all()
    # inputs already inside are fixed points (the invariant set), up to the eps of eq. (1)
    assert torch.allclose(colu.colu(y, **kw), y, atol=1e-6)
    # soft scaling leaves a section at a non-positive axis, so it leaves the cone
    assert not sym.in_cone(colu.colu(x, scaling="soft", **kw), **kw).all()


def test_in_cone_boundary_float32_and_rcolu():
    # exactly on the boundary: |s| = a
    y = torch.tensor([[1.0, 0.6, 0.8], [0.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [-1.0, 0.1, 0.0], [1.0, 0.61, 0.8]])
    assert sym.in_cone(y, cone_dim=3).tolist() == [True, True, True, False, False]
    x = torch.randn(3, 24, 4, generator=_gen(6))
    assert sym.in_cone(colu.colu(x, cone_dim=6, dim=1), cone_dim=6, dim=1).all()
    xr = torch.randn(100, 9, generator=_gen(7), dtype=F64)
    assert not sym.in_cone(xr, cone_dim=3, kind="rcolu").all()
    assert sym.in_cone(colu.rcolu(xr, cone_dim=3), cone_dim=3, kind="rcolu").all()
    with pytest.raises(ValueError, match="kind='relu'"):
        sym.in_cone(xr, cone_dim=3, kind="relu")


# --------------------------------------------------------------- Lemma 4.8
def _random_plane_elements(C, n, g):
    return [sym.plane_group_element(C, reflect=k % 2 == 1, generator=g) for k in range(n)]


@pytest.mark.parametrize(
    "C, kwargs",
    [(3, {}), (5, {}), (8, {}), (8, {"cone_dim": 4}), (12, {"cone_dim": 3, "layout": "axes_first"}),
     (7, {"cone_dim": 4, "share_axis": True}), (6, {"scaling": "soft"}), (6, {"scaling": "firm"})],
)
def test_lemma_4_8_network_is_exactly_o2_equivariant(C, kwargs):
    g = _gen(C)
    net = sym.lemma_4_8_network(C, **kwargs)
    x = torch.randn(256, C, generator=g, dtype=F64) * 2
    Ps = _random_plane_elements(C, 8, g)
    assert any(torch.det(P) < 0 for P in Ps) and any(torch.det(P) > 0 for P in Ps)
    for P in Ps:
        assert sym.equivariance_error(net, x, P) < 1e-12
    # the same weights with ReLU in place of CoLU are not equivariant
    relu_net = nn.Sequential(net[0], nn.ReLU(), net[2])
    assert max(sym.equivariance_error(relu_net, x, P) for P in Ps) > 0.1


def test_lemma_4_8_network_matches_the_paper_and_is_nonlinear_in_the_pair():
    C = 6
    net = sym.lemma_4_8_network(C)
    eye = torch.eye
    w_prime = torch.zeros(C, C, dtype=F64)
    w_prime[: C - 2, 2:] = eye(C - 2, dtype=F64)
    w_prime[C - 2 :, :2] = eye(2, dtype=F64)
    assert torch.equal(net[0].weight.detach(), w_prime)
    assert torch.equal(net[2].weight.detach(), w_prime.T)
    # fixed coordinates give a positive axis; growing the pair shrinks its relative response
    x = torch.tensor([[0.3, 0.4, 1.0, 0.1, 0.0, 0.0]], dtype=F64)
    small, big = net(x)[0, :2], net(4 * x * torch.tensor([1, 1, 0, 0, 0, 0]) + x * torch.tensor([0, 0, 1, 1, 1, 1]))[0, :2]
    assert torch.allclose(small, x[0, :2], atol=1e-12)
    assert not torch.allclose(big, 4 * small, atol=1e-3)
    assert sym.find_relu_witness(
        net[2].weight.detach(), net[0].weight.detach(), activation=lambda h: colu.colu(h, num_cones=1)
    ) is None


def test_lemma_4_8_network_rejects_too_small_sections():
    with pytest.raises(ValueError, match="C >= 3"):
        sym.lemma_4_8_network(2)
    with pytest.raises(ValueError, match="cone_dim >= 3"):
        sym.lemma_4_8_network(8, cone_dim=2)


def _check_witness(w, w_prime, witness, activation=torch.relu):
    # recompute independently of the search code
    f = lambda x: w @ activation(w_prime @ x)  # noqa: E731
    err = (witness.P @ f(witness.x) - f(witness.P @ witness.x)).abs().max()
    assert float(err) > 1e-9
    assert math.isclose(float(err), witness.error, rel_tol=1e-6)
    assert torch.allclose(witness.P[2:, 2:], torch.eye(len(witness.x) - 2, dtype=F64))


@pytest.mark.parametrize("seed", range(6))
def test_relu_networks_with_random_weights_have_a_witness(seed):
    g = _gen(100 + seed)
    C, H = 4 + seed % 3, 3 + 2 * seed
    w, w_prime = torch.randn(C, H, generator=g, dtype=F64), torch.randn(H, C, generator=g, dtype=F64)
    witness = sym.find_relu_witness(w, w_prime, generator=g)
    assert witness is not None
    _check_witness(w, w_prime, witness)


def test_adversarial_nearly_equivariant_relu_networks_have_a_witness():
    g = _gen(9)
    # hidden units evenly spread over the circle, no antipodal pairs: as close to
    # rotation-invariant as a ReLU layer gets, yet not exactly
    n, C = 101, 4
    ang = torch.arange(n, dtype=F64) * 2 * math.pi / n
    U = torch.zeros(n, C, dtype=F64)
    U[:, 0], U[:, 1] = ang.cos(), ang.sin()
    witness = sym.find_relu_witness(U.T.clone(), U, generator=g)
    assert witness is not None
    _check_witness(U.T.clone(), U, witness)
    # sparse weights touching only one rotating coordinate
    w_prime = torch.zeros(3, C, dtype=F64)
    w_prime[0, 0], w_prime[1, 2], w_prime[2, 3] = 1.0, 1.0, -1.0
    w = torch.zeros(C, 3, dtype=F64)
    w[2, 0] = 1.0
    witness = sym.find_relu_witness(w, w_prime, generator=g)
    assert witness is not None
    _check_witness(w, w_prime, witness)
    # leaky ReLU is piecewise linear too
    lrelu = torch.nn.functional.leaky_relu
    w, w_prime = torch.randn(C, 8, generator=g, dtype=F64), torch.randn(8, C, generator=g, dtype=F64)
    witness = sym.find_relu_witness(w, w_prime, activation=lrelu, generator=g)
    assert witness is not None
    _check_witness(w, w_prime, witness, lrelu)


def test_the_exceptions_to_lemma_4_8_part_1_are_truly_equivariant():
    g = _gen(11)
    C = 5
    x = torch.randn(200, C, generator=g, dtype=F64)
    Ps = _random_plane_elements(C, 6, g)
    # blind to the pair
    w_prime = torch.randn(7, C, generator=g, dtype=F64)
    w_prime[:, :2] = 0
    w = torch.randn(C, 7, generator=g, dtype=F64)
    w[:2] = 0
    # linear in the pair: relu(t) - relu(-t) = t, plus an unrelated fixed part
    n = 10
    ang = torch.arange(n, dtype=F64) * 2 * math.pi / n
    U = torch.zeros(n, C, dtype=F64)
    U[:, 0], U[:, 1] = ang.cos(), ang.sin()
    w_lin, wp_lin = torch.cat([U.T, w], 1), torch.cat([U, w_prime], 0)
    for a, b in ((w, w_prime), (w_lin, wp_lin)):
        f = lambda t: torch.relu(t @ b.T) @ a.T  # noqa: E731
        assert max(sym.equivariance_error(f, x, P) for P in Ps) < 1e-12
        assert sym.find_relu_witness(a, b, generator=g) is None
    # and the linear one does respond to the pair
    f = lambda t: torch.relu(t @ wp_lin.T) @ w_lin.T  # noqa: E731
    # n/2 antipodal pairs, each adding u u^T z, and sum over a half circle of u u^T = n/4 I
    assert torch.allclose(f(x)[:, :2], x[:, :2] * n / 4, atol=1e-12)


def test_find_relu_witness_checks_shapes():
    with pytest.raises(ValueError, match=r"\(C, H\)"):
        sym.find_relu_witness(torch.randn(4, 3), torch.randn(4, 4))


# ------------------------------------------------------------ weight moves
def _mlp(act_factory, widths=(6, 12, 12, 3)):
    layers = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1], dtype=F64))
        if i < len(widths) - 2:
            layers.append(act_factory())
    return nn.Sequential(*layers)


@pytest.mark.parametrize(
    "factory",
    [lambda: colu.CoLU(cone_dim=4), lambda: colu.CoLU(cone_dim=3, layout="axes_first"),
     lambda: colu.RCoLU(cone_dim=4), nn.ReLU, nn.Identity, nn.GELU],
)
def test_random_symmetry_preserves_the_network_function(factory):
    torch.manual_seed(0)
    model = _mlp(factory)
    x = torch.randn(50, 6, dtype=F64)
    before = model(x).detach()
    w_before = model[0].weight.detach().clone()
    applied = sym.apply_random_symmetry(model, generator=_gen(12))
    assert sorted(applied) == [1, 3]
    assert not torch.allclose(model[0].weight.detach(), w_before)
    assert torch.allclose(model(x), before, atol=1e-10)


def test_transform_sequential_on_convs_and_errors():
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, dtype=F64), colu.CoLU(num_cones=4, dim=1), nn.Conv2d(16, 5, 1, dtype=F64)
    )
    x = torch.randn(2, 3, 6, 6, dtype=F64)
    before = model(x).detach()
    P = sym.group_element_for(model[1], 16, generator=_gen(13))
    sym.transform_sequential(model, 1, P)
    assert torch.allclose(model(x), before, atol=1e-10)
    # a rotation outside the group does change the function
    sym.transform_sequential(model, 1, sym.random_orthogonal(16, generator=_gen(14)))
    assert not torch.allclose(model(x), before, atol=1e-3)
    with pytest.raises(ValueError, match="index=0"):
        sym.transform_sequential(model, 0, P)
    bad = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Dropout(), nn.Linear(4, 4))
    with pytest.raises(ValueError, match="Dropout"):
        sym.transform_sequential(bad, 1, torch.eye(4))
    with pytest.raises(TypeError, match="Softmax"):
        sym.group_element_for(nn.Softmax(-1), 4)
    with pytest.raises(ValueError, match="4x4"):
        sym.transform_hidden(nn.Linear(3, 4), nn.Linear(4, 2), torch.eye(5))
