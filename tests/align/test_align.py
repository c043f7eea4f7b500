"""colu.align: weight/state matching under the activation's group, interpolation and loss barriers."""

import copy
import subprocess
import sys

import pytest
import torch
from torch import nn

import colu
from colu import align
from colu.align import HiddenState
from colu.spec import ConeSpec
from colu.symmetry import group_element, random_orthogonal, transform_hidden

D_IN, D_OUT = 20, 8

# (id, activation factory, hidden width, group_element kwargs)
CASES = [
    ("relu", nn.ReLU, 12, dict(kind="relu")),
    ("gelu", nn.GELU, 12, dict(kind="relu")),
    ("colu-grouped", lambda: colu.CoLU(cone_dim=4), 12, dict(cone_dim=4)),
    ("colu-axes-first", lambda: colu.CoLU(cone_dim=3, layout="axes_first"), 12, dict(cone_dim=3, layout="axes_first")),
    ("colu-shared", lambda: colu.CoLU(cone_dim=4, share_axis=True, scaling="soft"), 13,
     dict(cone_dim=4, share_axis=True)),
    ("rcolu", lambda: colu.RCoLU(cone_dim=4), 12, dict(cone_dim=4, kind="rcolu")),
    ("colu-s2", lambda: colu.CoLU(cone_dim=2), 12, dict(cone_dim=2)),
    ("identity", nn.Identity, 12, dict(num_cones=0)),
]
IDS = [c[0] for c in CASES]


def mlp(act, C, seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(D_IN, C), act(), nn.Linear(C, C), act(), nn.Linear(C, D_OUT))


def moved_copy(model, C, group_kwargs, seed=1):
    """model with every hidden state moved by a random element of its activation's group."""
    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    for i, j in [(0, 2), (2, 4)]:
        transform_hidden(out[i], out[j], group_element(C, generator=gen, **group_kwargs))
    return out


def max_weight_gap(a, b):
    return max((p - q).abs().max().item() for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def weight_distance(a, b):
    return sum(((p - q) ** 2).sum() for p, q in zip(a.state_dict().values(), b.state_dict().values())).sqrt().item()


def mse_loss(model, batch):
    x, y = batch
    return ((model(x) - y) ** 2).mean()


@pytest.fixture(scope="module")
def data():
    gen = torch.Generator().manual_seed(123)
    return torch.randn(512, D_IN, generator=gen), torch.randn(512, D_OUT, generator=gen)


def _match(method, a, b, data, **kw):
    if method == "weights":
        return align.match_weights(a, b, **kw)
    return align.match_states(a, b, data, **kw)


# ------------------------------------------------------------------ recovery
@pytest.mark.parametrize("method", ["weights", "states"])
@pytest.mark.parametrize("name,act,C,group_kwargs", CASES, ids=IDS)
def test_recovers_group_transformed_copy(method, name, act, C, group_kwargs, data):
    a = mlp(act, C, seed=0)
    b = moved_copy(a, C, group_kwargs)
    assert max_weight_gap(a, b) > 0.1  # the group element really moved the weights
    alignment = _match(method, a, b, data)
    aligned = alignment.apply(b)
    assert max_weight_gap(a, aligned) < 1e-5
    for P in alignment.transforms.values():
        assert torch.allclose(P @ P.T, torch.eye(C, dtype=P.dtype), atol=1e-10)
    result = align.loss_barrier(a, aligned, mse_loss, data, num_points=5)
    assert abs(result["barrier"]) < 1e-6
    assert max(abs(b_s) for _, b_s in result["relative"]) < 1e-6
    # the aligned path stays on A's function; the unaligned one leaves it halfway
    x = data[0][:64]
    assert torch.allclose(align.interpolate(a, aligned, 0.5)(x), a(x), atol=1e-5)
    assert (align.interpolate(a, b, 0.5)(x) - a(x)).abs().max() > 1e-2


@pytest.mark.parametrize("act,C,group_kwargs", [
    (nn.ReLU, 12, dict(kind="relu")),
    (lambda: colu.CoLU(cone_dim=4, scaling="soft"), 12, dict(cone_dim=4)),
    (lambda: colu.RCoLU(cone_dim=3, scaling="soft"), 12, dict(cone_dim=3, kind="rcolu")),
], ids=["relu", "soft-colu", "soft-rcolu"])
def test_state_matching_after_activation_recovers(act, C, group_kwargs, data):
    a = mlp(act, C, seed=3)
    b = moved_copy(a, C, group_kwargs, seed=4)
    aligned = align.match_states(a, b, data, where="post").apply(b)
    assert max_weight_gap(a, aligned) < 1e-5


# ------------------------------------------------------- function invariance
@pytest.mark.parametrize("method", ["weights", "states"])
@pytest.mark.parametrize("name,act,C,group_kwargs", CASES, ids=IDS)
def test_alignment_keeps_function_of_independent_models(method, name, act, C, group_kwargs, data):
    a, b = mlp(act, C, seed=0), mlp(act, C, seed=7)
    aligned = _match(method, a, b, data).apply(b)
    x = torch.randn(64, D_IN)
    assert torch.allclose(aligned(x), b(x), atol=1e-5)
    assert max_weight_gap(b, aligned) > 1e-3  # it did move B
    if method == "weights":
        # weight matching minimises the distance to A
        assert weight_distance(a, aligned) < weight_distance(a, b)


def test_apply_returns_a_copy(data):
    a, b = mlp(nn.ReLU, 12, 0), mlp(nn.ReLU, 12, 1)
    before = copy.deepcopy(b.state_dict())
    aligned = align.match_weights(a, b).apply(b)
    assert aligned is not b
    assert all(torch.equal(before[k], v) for k, v in b.state_dict().items())


# ------------------------------------------------------------------- barrier
def test_barrier_of_model_with_itself_is_zero(data):
    a = mlp(lambda: colu.CoLU(cone_dim=4), 12, 0)
    result = align.loss_barrier(a, a, mse_loss, data, num_points=5)
    assert result["barrier"] == 0.0
    assert [s for s, _ in result["curve"]] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert len({loss for _, loss in result["curve"]}) == 1


def test_barrier_matches_eq_11_on_an_iterable_of_batches(data):
    a, b = mlp(nn.ReLU, 12, 0), mlp(nn.ReLU, 12, 1)
    x, y = data
    batches = [(x[:256], y[:256]), (x[256:], y[256:])]
    result = align.loss_barrier(a, b, mse_loss, iter(batches), num_points=3)
    losses = []
    for s in (0.0, 0.5, 1.0):
        m = align.interpolate(a, b, s)
        with torch.no_grad():
            losses.append(sum(mse_loss(m, bt).item() for bt in batches) / 2)
    assert [l for _, l in result["curve"]] == pytest.approx(losses, rel=1e-6)
    expected = losses[1] / (0.5 * losses[0] + 0.5 * losses[2]) - 1
    assert result["barrier"] == pytest.approx(max(expected, 0.0), rel=1e-6, abs=1e-12)


def test_interpolate_endpoints_and_midpoint():
    a, b = mlp(nn.ReLU, 12, 0), mlp(nn.ReLU, 12, 1)
    assert max_weight_gap(align.interpolate(a, b, 0.0), a) == 0
    assert max_weight_gap(align.interpolate(a, b, 1.0), b) < 1e-7
    mid = align.interpolate(a, b, 0.5)
    assert torch.allclose(mid[0].weight, (a[0].weight + b[0].weight) / 2)


def test_barrier_rejects_non_positive_loss(data):
    a = mlp(nn.ReLU, 12, 0)
    with pytest.raises(ValueError, match="positive end losses"):
        align.loss_barrier(a, a, lambda m, batch: torch.tensor(0.0), data)
    with pytest.raises(ValueError, match="scalar"):
        align.loss_barrier(a, a, lambda m, batch: m(batch[0]), data)


def test_kl_standard_normal():
    assert align.kl_standard_normal(torch.zeros(5, 3), torch.zeros(5, 3)).item() == 0.0
    mu, logvar = torch.randn(4, 3), torch.randn(4, 3)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, (0.5 * logvar).exp()), torch.distributions.Normal(0.0, 1.0)
    ).sum(-1).mean()
    assert align.kl_standard_normal(mu, logvar).item() == pytest.approx(ref.item(), rel=1e-6)


# ------------------------------------------------------------------- solvers
def test_procrustes_is_orthogonal_and_optimal():
    gen = torch.Generator().manual_seed(0)
    corr = torch.randn(5, 5, generator=gen, dtype=torch.float64)
    R, value = align.procrustes(corr)
    assert torch.allclose(R @ R.T, torch.eye(5, dtype=torch.float64), atol=1e-12)
    assert value == pytest.approx((R * corr).sum().item())
    assert value == pytest.approx(torch.linalg.matrix_norm(corr, "nuc").item())
    for _ in range(200):
        Q = random_orthogonal(5, generator=gen)
        assert (Q * corr).sum().item() <= value + 1e-12


def _cone_structure(P, spec):
    """Cone of B matched to each cone of A, read off a group element."""
    cones = spec.cone_channels()
    return [int(torch.argmax(torch.stack([P[cones[g]][:, cones[h]].abs().sum() for h in range(len(cones))])))
            for g in range(len(cones))]


def test_colu_hungarian_matches_cones_through_rotated_sections():
    # true alignment: cones (0, 1, 2) of A <- cones (1, 2, 0) of B, each section rotated by 45 degrees;
    # decoys give single channel pairs of the wrong cones a larger entry than any rotated section entry
    spec = ConeSpec.resolve(9, cone_dim=3)
    c, s = 2 ** -0.5, 2 ** -0.5
    rot = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    truth = torch.zeros(9, 9, dtype=torch.float64)
    ax, sec = spec.axis_channels(), spec.section_channels()
    for g, h in enumerate([1, 2, 0]):
        truth[ax[g], ax[h]] = 1.0
        truth[sec[g][:, None], sec[h]] = rot
    corr = truth.clone()
    for g, h in enumerate([2, 0, 1]):
        corr[sec[g][0], sec[h][0]] = 0.9
    P, value = align.group_of(colu.CoLU(cone_dim=3), 9).solve(corr)
    assert torch.allclose(P, truth, atol=1e-12)
    assert _cone_structure(P, spec) == [1, 2, 0]
    perm, perm_value = align.Group("permutation", 9).solve(corr)
    assert perm_value < value
    # matching channels one by one pairs a section channel with a channel of the wrong cone
    cones = spec.cone_channels()
    wrong = [g for g, h in enumerate([1, 2, 0]) if perm[cones[g]][:, cones[h]].sum() < 3]
    assert wrong == [0, 1, 2]


def test_permutation_only_alignment_fails_for_rotated_colu(data):
    C = 12
    a = mlp(lambda: colu.CoLU(cone_dim=4), C, seed=0)
    b = moved_copy(a, C, dict(cone_dim=4))
    spec = [dict(s.__dict__, group="permutation") for s in align.infer_spec(a)]
    assert max_weight_gap(a, align.match_weights(a, b, spec).apply(b)) > 0.1
    assert max_weight_gap(a, align.match_weights(a, b).apply(b)) < 1e-5


@pytest.mark.parametrize("group_kwargs,act", [
    (dict(cone_dim=4), lambda: colu.CoLU(cone_dim=4)),
    (dict(cone_dim=4, share_axis=True), lambda: colu.CoLU(cone_dim=4, share_axis=True)),
    (dict(cone_dim=3, kind="rcolu"), lambda: colu.RCoLU(cone_dim=3)),
    (dict(kind="relu"), nn.ReLU),
], ids=["colu", "shared", "rcolu", "relu"])
def test_solution_is_in_the_group_and_beats_random_elements(group_kwargs, act):
    C = 13 if group_kwargs.get("share_axis") else 12
    group = align.group_of(act(), C)
    gen = torch.Generator().manual_seed(5)
    corr = torch.randn(C, C, generator=gen, dtype=torch.float64)
    P, value = group.solve(corr)
    assert value == pytest.approx((P * corr).sum().item())
    # P commutes with the activation: it is in its group
    x = torch.randn(50, C, dtype=torch.float64)
    module = act()
    assert torch.allclose(module(x @ P.T), module(x) @ P.T, atol=1e-9)
    for _ in range(100):
        Q = group_element(C, generator=gen, **group_kwargs)
        assert (Q * corr).sum().item() <= value + 1e-9


def test_weight_matching_objective_never_decreases():
    a = mlp(lambda: colu.CoLU(cone_dim=4), 16, seed=0)
    b = mlp(lambda: colu.CoLU(cone_dim=4), 16, seed=1)
    for seed, init in [(0, "forward"), (1, "forward"), (0, "identity"), (1, "identity")]:
        alignment = align.match_weights(a, b, seed=seed, init=init)
        trace = alignment.objective
        assert len(trace) >= 3  # at least one improving sweep and the final check
        assert trace[-1] > trace[0]
        assert all(later >= earlier - 1e-9 * abs(earlier) for earlier, later in zip(trace, trace[1:]))
        summary = alignment.summary()
        assert summary["method"] == "weights" and summary["iterations"] == len(trace) - 1


def test_weight_matching_respects_max_iter_and_init():
    a, b = mlp(nn.ReLU, 16, 0), mlp(nn.ReLU, 16, 1)
    assert len(align.match_weights(a, b, max_iter=1).objective) == 2
    # Algorithm 1 as written starts at the identity: the first recorded objective is <theta_A, theta_B>
    # (over the tensors around hidden states: the output bias never moves and is left out)
    sa, sb = a.state_dict(), b.state_dict()
    start = sum((sa[k] * sb[k]).sum() for k in sa if k != "4.bias").item()
    assert align.match_weights(a, b, init="identity").objective[0] == pytest.approx(start, rel=1e-6)
    with pytest.raises(ValueError, match="init='random'"):
        align.match_weights(a, b, init="random")


# ----------------------------------------------------- spec for other models
class TwoLayer(nn.Module):
    HIDDEN_STATES = {"act": ("fc_in", "fc_out")}

    def __init__(self, act):
        super().__init__()
        self.fc_in = nn.Linear(D_IN, 12)
        self.act = act
        self.fc_out = nn.Linear(12, D_OUT)

    def forward(self, x):
        return self.fc_out(self.act(self.fc_in(x)))


class ToyVAE(nn.Module):
    """Same attribute names as the project's VAE; forward returns (logits, z)."""

    def __init__(self, enc_act, dec_act, width=13, latent=4):
        super().__init__()
        self.enc_in = nn.Linear(D_IN, width)
        self.enc_act = enc_act
        self.enc_out = nn.Linear(width, latent)
        self.dec_in = nn.Linear(latent, width)
        self.dec_act = dec_act
        self.dec_out = nn.Linear(width, D_IN)

    def encode(self, x):
        return self.enc_out(self.enc_act(self.enc_in(x)))

    def forward(self, x):
        z = self.encode(x)
        return self.dec_out(self.dec_act(self.dec_in(z))), z


VAE_SPEC = [
    HiddenState("enc", group="enc_act", producers=["enc_in.weight", "enc_in.bias"],
                consumers=["enc_out.weight"], pre="enc_in", post="enc_act"),
    HiddenState("dec", group="dec_act", producers=["dec_in.weight", "dec_in.bias"],
                consumers=[("dec_out.weight", 1)], pre="dec_in", post="dec_act"),
]


def _vae(seed):
    torch.manual_seed(seed)
    return ToyVAE(colu.CoLU(cone_dim=4, share_axis=True), colu.CoLU(cone_dim=4, share_axis=True, scaling="soft"))


@pytest.mark.parametrize("method", ["weights", "states"])
def test_vae_spec_recovers_and_keeps_function(method, data):
    a = _vae(0)
    b = copy.deepcopy(a)
    gen = torch.Generator().manual_seed(2)
    transform_hidden(b.enc_in, b.enc_out, group_element(13, 4, share_axis=True, generator=gen))
    transform_hidden(b.dec_in, b.dec_out, group_element(13, 4, share_axis=True, generator=gen))
    x = data[0]
    alignment = _match(method, a, b, x, spec=VAE_SPEC)
    assert set(alignment.transforms) == {"enc", "dec"}
    assert max_weight_gap(a, alignment.apply(b)) < 1e-5

    def kl_loss(model, batch):
        z = model.encode(batch)
        return align.kl_standard_normal(z.mean(0), z.var(0).log())

    assert abs(align.loss_barrier(a, alignment.apply(b), kl_loss, x)["barrier"]) < 1e-6
    independent = _vae(5)
    moved = _match(method, a, independent, x, spec=VAE_SPEC).apply(independent)
    for out_moved, out_orig in zip(moved(x), independent(x)):
        assert torch.allclose(out_moved, out_orig, atol=1e-5)


def test_hidden_states_attribute_and_dict_specs(data):
    a, b = TwoLayer(nn.ReLU()), TwoLayer(nn.ReLU())
    with torch.no_grad():
        b.load_state_dict(a.state_dict())
    perm = group_element(12, kind="relu", generator=torch.Generator().manual_seed(0))
    transform_hidden(b.fc_in, b.fc_out, perm)
    for spec in (None, {"act": ("fc_in", "fc_out")},
                 [{"name": "h", "group": "permutation", "producers": ["fc_in.weight", "fc_in.bias"],
                   "consumers": ["fc_out.weight"]}]):
        for alignment in (align.match_weights(a, b, spec), align.match_states(a, b, data[0], spec)):
            assert max_weight_gap(a, alignment.apply(b)) < 1e-6


def test_sequential_inference():
    model = nn.Sequential(nn.Flatten(), nn.Linear(20, 12), nn.Dropout(0.1), colu.CoLU(cone_dim=4),
                          nn.Sequential(nn.Linear(12, 9), nn.Linear(9, 4)))
    spec = align.resolve_spec(model)
    assert [s.group.kind for s in spec] == ["colu", "orthogonal"]
    assert spec[0].tensors == (("1.weight", 0), ("1.bias", 0), ("4.0.weight", 1))
    assert (spec[0].pre, spec[0].post) == ("1", "3")
    assert spec[0].group.cone == ConeSpec.resolve(12, 4)


# -------------------------------------------------------------------- errors
class NotSequential(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


@pytest.mark.parametrize("model,error,pattern", [
    (NotSequential(), TypeError, "spec="),
    (nn.Sequential(nn.Linear(4, 6), nn.Softmax(-1), nn.Linear(6, 2)), ValueError, "Softmax"),
    (nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.ReLU(), nn.Linear(6, 2)), ValueError, "LayerNorm"),
    (nn.Sequential(nn.Linear(4, 6), nn.ReLU(), colu.CoLU(cone_dim=3), nn.Linear(6, 2)), ValueError,
     "several activations"),
    (nn.Sequential(nn.Linear(4, 6), colu.CoLU(cone_dim=3, dim=1), nn.Linear(6, 2)), ValueError, "dim=-1"),
    (nn.Sequential(nn.Linear(4, 6), colu.CoLU(cone_dim=4), nn.Linear(6, 2)), ValueError, "C=6"),
    (nn.Sequential(nn.Linear(4, 6), nn.PReLU(6), nn.Linear(6, 2)), ValueError, "PReLU"),
    (nn.Sequential(nn.Linear(4, 6), nn.ReLU()), ValueError, "at least two linear layers"),
], ids=["not-sequential", "softmax", "layernorm", "two-activations", "channel-dim", "bad-width", "prelu",
        "one-linear"])
def test_unsupported_models_raise_clear_errors(model, error, pattern):
    with pytest.raises(error, match=pattern):
        align.match_weights(model, copy.deepcopy(model))


def test_spec_errors():
    a = TwoLayer(nn.ReLU())
    with pytest.raises(ValueError, match="fc_in.wieght"):
        align.match_weights(a, a, [HiddenState("h", "permutation", producers=["fc_in.wieght"])])
    with pytest.raises(ValueError, match="unknown group 'rotation'"):
        align.match_weights(a, a, [HiddenState("h", "rotation", producers=["fc_in.weight"])])
    with pytest.raises(ValueError, match="disagree"):
        align.match_weights(a, a, [HiddenState("h", "permutation", producers=["fc_in.weight"],
                                               consumers=[("fc_out.weight", 0)])])
    no_post = [HiddenState("h", "permutation", producers=["fc_in.weight"], consumers=["fc_out.weight"])]
    with pytest.raises(ValueError, match="post="):
        align.match_states(a, a, torch.randn(4, D_IN), no_post, where="post")
    with pytest.raises(ValueError, match="different parameters.*one architecture"):
        align.match_weights(a, mlp(nn.ReLU, 12, 0))


def test_mismatched_widths_are_reported():
    a, b = mlp(nn.ReLU, 12, 0), mlp(nn.ReLU, 16, 0)
    with pytest.raises(ValueError, match=r"shape \(12, 20\) in model_a but \(16, 20\)"):
        align.match_weights(a, b)
    with pytest.raises(ValueError, match="same architecture|one architecture"):
        align.interpolate(a, b, 0.5)


@pytest.mark.slow
def test_importing_align_does_not_import_scipy():
    code = "import sys, colu, colu.align; assert 'scipy' not in sys.modules, 'scipy imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_models_with_different_activation_configs_are_rejected():
    a = mlp(lambda: colu.CoLU(cone_dim=4), 12, 0)
    b = mlp(lambda: colu.CoLU(cone_dim=3), 12, 1)
    with pytest.raises(ValueError, match="same activation configuration"):
        align.match_weights(a, b)


def test_matching_leaves_the_global_rng_alone(data):
    a, b = mlp(nn.ReLU, 12, 0), mlp(nn.ReLU, 12, 1)
    torch.manual_seed(42)
    expected = torch.rand(3)
    torch.manual_seed(42)
    align.match_states(a, b, data)
    align.loss_barrier(a, b, mse_loss, data, num_points=3)
    assert torch.equal(torch.rand(3), expected)
