"""Property-based tests: invariant set, idempotence, equivariance (paper Section 4)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import colu

settings.register_profile("colu", max_examples=40, deadline=None, derandomize=True)
settings.load_profile("colu")


@st.composite
def cone_configs(draw, kind="colu"):
    S = draw(st.integers(3, 6))
    G = draw(st.integers(1, 4))
    share = draw(st.booleans()) if kind == "colu" else False
    layout = draw(st.sampled_from(["grouped", "axes_first"]))
    C = 1 + G * (S - 1) if share else G * S
    lead = draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))
    pos = draw(st.integers(0, len(lead)))
    shape = lead[:pos] + [C] + lead[pos:]
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * scale
    return dict(S=S, G=G, share=share, layout=layout, C=C, dim=pos, x=x, seed=seed)


def _random_orthogonal(n, gen):
    q, r = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=gen))
    return q * torch.sign(torch.diagonal(r))


def _colu_group_element(spec, gen):
    """Permute cones and rotate sections: an element of Perm(G) x O(S-1)^G built from the spec."""
    C = spec.channels
    P = torch.zeros(C, C, dtype=torch.float64)
    perm = torch.randperm(spec.num_cones, generator=gen)
    axes, sections = spec.axis_channels(), spec.section_channels()
    if spec.share_axis:
        P[0, 0] = 1
    for g in range(spec.num_cones):
        if not spec.share_axis:
            P[axes[perm[g]], axes[g]] = 1
        P[sections[perm[g]][:, None], sections[g]] = _random_orthogonal(spec.cone_dim - 1, gen)
    return P


def _apply(P, x, dim):
    return torch.movedim(torch.movedim(x, dim, -1) @ P.T, -1, dim)


def _cone_parts(y, cfg):
    spec = colu.ConeSpec.resolve(cfg["C"], cfg["S"], share_axis=cfg["share"], layout=cfg["layout"])
    yl = torch.movedim(y, cfg["dim"], -1)
    return yl[..., spec.axis_channels()], yl[..., spec.section_channels()]


@pytest.mark.slow
@given(cone_configs())
def test_hard_output_in_cone(cfg):
    y = colu.colu(cfg["x"], cone_dim=cfg["S"], share_axis=cfg["share"], layout=cfg["layout"], dim=cfg["dim"])
    axes, sections = _cone_parts(y, cfg)
    norms = torch.linalg.vector_norm(sections, dim=-1)
    assert (norms <= axes.clamp(min=0) * (1 + 1e-9) + 1e-12).all()


@given(cone_configs(), st.sampled_from(["soft", "firm"]))
def test_soft_output_shrinks_sections(cfg, scaling):
    kw = dict(cone_dim=cfg["S"], share_axis=cfg["share"], layout=cfg["layout"], dim=cfg["dim"])
    y = colu.colu(cfg["x"], scaling=scaling, **kw)
    ax_in, sec_in = _cone_parts(cfg["x"], cfg)
    ax_out, sec_out = _cone_parts(y, cfg)
    torch.testing.assert_close(ax_out, ax_in)
    # sigmoid weights lie in (0, 1): sections keep direction and shrink
    assert (torch.linalg.vector_norm(sec_out, dim=-1) <= torch.linalg.vector_norm(sec_in, dim=-1) * (1 + 1e-12)).all()


@given(cone_configs())
def test_hard_colu_is_idempotent(cfg):
    kw = dict(cone_dim=cfg["S"], share_axis=cfg["share"], layout=cfg["layout"], dim=cfg["dim"], eps=0.0)
    y = colu.colu(cfg["x"], **kw)
    torch.testing.assert_close(colu.colu(y, **kw), y, rtol=1e-12, atol=1e-12)


@given(cone_configs(kind="rcolu"))
def test_hard_rcolu_is_idempotent(cfg):
    kw = dict(cone_dim=cfg["S"], dim=cfg["dim"], eps=0.0)
    y = colu.rcolu(cfg["x"], **kw)
    torch.testing.assert_close(colu.rcolu(y, **kw), y, rtol=1e-9, atol=1e-9 * cfg["x"].abs().max().item())


@pytest.mark.slow
@given(cone_configs(), st.sampled_from(["hard", "soft", "firm"]), st.sampled_from(["identity", "relu", "silu"]))
def test_colu_equivariant_under_cone_group(cfg, scaling, act):
    spec = colu.ConeSpec.resolve(cfg["C"], cfg["S"], share_axis=cfg["share"], layout=cfg["layout"])
    P = _colu_group_element(spec, torch.Generator().manual_seed(cfg["seed"]))
    kw = dict(cone_dim=cfg["S"], share_axis=cfg["share"], layout=cfg["layout"], dim=cfg["dim"], scaling=scaling, axis_activation=act)
    x = cfg["x"]
    lhs = colu.colu(_apply(P, x, cfg["dim"]), **kw)
    rhs = _apply(P, colu.colu(x, **kw), cfg["dim"])
    torch.testing.assert_close(lhs, rhs, rtol=1e-9, atol=1e-9 * x.abs().max().item())


@pytest.mark.slow
@given(cone_configs(kind="rcolu"), st.sampled_from(["hard", "soft", "firm"]))
def test_rcolu_equivariant_under_rotations_fixing_e(cfg, scaling):
    S, G = cfg["S"], cfg["G"]
    gen = torch.Generator().manual_seed(cfg["seed"])
    # basis with e first: rotate only the complement of e in each group
    basis, _ = torch.linalg.qr(torch.cat([torch.ones(S, 1), torch.eye(S)[:, 1:]], dim=1).double())
    P = torch.zeros(G * S, G * S, dtype=torch.float64)
    perm = torch.randperm(G, generator=gen)
    for g in range(G):
        inner = torch.eye(S, dtype=torch.float64)
        inner[1:, 1:] = _random_orthogonal(S - 1, gen)
        block = basis @ inner @ basis.T
        P[perm[g] * S:(perm[g] + 1) * S, g * S:(g + 1) * S] = block
    e = torch.full((S,), 1 / math.sqrt(S), dtype=torch.float64)
    torch.testing.assert_close(block @ e, e)
    kw = dict(cone_dim=S, dim=cfg["dim"], scaling=scaling)
    x = cfg["x"]
    torch.testing.assert_close(
        colu.rcolu(_apply(P, x, cfg["dim"]), **kw), _apply(P, colu.rcolu(x, **kw), cfg["dim"]),
        rtol=1e-9, atol=1e-9 * x.abs().max().item(),
    )


@pytest.mark.slow
@given(st.integers(0, 2**31 - 1))
def test_relu_is_not_rotation_equivariant(seed):
    """Lemma 4.8(1): a rotation of a section breaks ReLU, which CoLU absorbs."""
    gen = torch.Generator().manual_seed(seed)
    spec = colu.ConeSpec.resolve(8, 4)
    P = _colu_group_element(spec, gen)
    x = torch.randn(64, 8, dtype=torch.float64, generator=gen)
    relu_err = (torch.relu(x @ P.T) - torch.relu(x) @ P.T).abs().max()
    colu_err = (colu.colu(x @ P.T, cone_dim=4) - colu.colu(x, cone_dim=4) @ P.T).abs().max()
    assert relu_err > 1e-3
    assert colu_err < 1e-12


def test_relu_commutes_with_permutations_only():
    x = torch.randn(32, 6, dtype=torch.float64)
    perm = torch.eye(6, dtype=torch.float64)[torch.randperm(6)]
    torch.testing.assert_close(torch.relu(x @ perm.T), torch.relu(x) @ perm.T)
    c, s = math.cos(0.3), math.sin(0.3)
    rot = torch.eye(6, dtype=torch.float64)
    rot[1:3, 1:3] = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    assert (torch.relu(x @ rot.T) - torch.relu(x) @ rot.T).abs().max() > 1e-3
