"""colu.align: one activation module object used at several positions, and the function check of apply."""

import copy

import pytest
import torch
from torch import nn

import colu
from colu import align
from colu.align import HiddenState
from colu.symmetry import random_orthogonal, transform_hidden
from test_align import max_weight_gap, moved_copy, weight_distance  # the same helpers, for the same models

D_IN, C, D_OUT = 8, 16, 4

# (id, shared activation factory, group_element kwargs)
SHARED = [
    ("colu", lambda: colu.CoLU(cone_dim=4), dict(cone_dim=4)),
    ("relu", nn.ReLU, dict(kind="relu")),
]
SHARED_IDS = [s[0] for s in SHARED]


def shared_mlp(make_act, seed):
    torch.manual_seed(seed)
    act = make_act()
    return nn.Sequential(nn.Linear(D_IN, C), act, nn.Linear(C, C), act, nn.Linear(C, D_OUT))


@pytest.fixture(scope="module")
def x():
    return torch.randn(256, D_IN, generator=torch.Generator().manual_seed(11))


def _match(method, a, b, x):
    if method == "weights":
        return align.match_weights(a, b)
    if method == "states-pre":
        return align.match_states(a, b, x, where="pre")
    return align.match_states(a, b, x, where="post")


METHODS = ["weights", "states-pre", "states-post"]


# ------------------------------------------------------------ spec inference
@pytest.mark.parametrize("name,make_act,group_kwargs", SHARED, ids=SHARED_IDS)
def test_each_occurrence_of_a_shared_activation_is_a_hidden_state(name, make_act, group_kwargs):
    model = shared_mlp(make_act, 0)
    assert model[1] is model[3]
    states = align.resolve_spec(model)
    assert [s.name for s in states] == ["1", "3"]
    expected = align.group_of(model[1], C)
    assert [s.group for s in states] == [expected, expected]
    assert states[1].tensors == (("2.weight", 0), ("2.bias", 0), ("4.weight", 1))
    assert (states[1].pre, states[1].post) == ("2", "3")


def test_shared_activation_inside_nested_sequentials():
    act = colu.CoLU(cone_dim=4)
    block = nn.Sequential(act)
    model = nn.Sequential(nn.Linear(D_IN, C), block, nn.Linear(C, C), block, nn.Linear(C, D_OUT))
    states = align.resolve_spec(model)
    assert [(s.name, s.group.kind) for s in states] == [("1.0", "colu"), ("3.0", "colu")]


# ----------------------------------------------------- alignment correctness
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name,make_act,group_kwargs", SHARED, ids=SHARED_IDS)
def test_shared_activation_keeps_function_and_moves_towards_a(method, name, make_act, group_kwargs, x):
    a, b = shared_mlp(make_act, 0), shared_mlp(make_act, 7)
    aligned = _match(method, a, b, x).apply(b)
    probe = torch.randn(64, D_IN)
    assert (aligned(probe) - b(probe)).abs().max().item() < 1e-5
    assert max_weight_gap(b, aligned) > 1e-3  # it did move B
    assert aligned[1] is aligned[3]  # the copy keeps the shared module shared
    if method == "weights":
        assert weight_distance(a, aligned) < weight_distance(a, b)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name,make_act,group_kwargs", SHARED, ids=SHARED_IDS)
def test_shared_activation_recovers_group_transformed_copy(method, name, make_act, group_kwargs, x):
    a = shared_mlp(make_act, 0)
    b = moved_copy(a, C, group_kwargs)
    assert max_weight_gap(a, b) > 0.1
    alignment = _match(method, a, b, x)
    assert set(alignment.transforms) == {"1", "3"}
    aligned = alignment.apply(b)
    assert max_weight_gap(a, aligned) < 1e-5
    assert weight_distance(a, aligned) < 1e-4 < weight_distance(a, b)


# ---------------------------------------------------------- apply verifies
def _model_and_alignment(seed_b=7):
    a, b = shared_mlp(lambda: colu.CoLU(cone_dim=4), 0), shared_mlp(lambda: colu.CoLU(cone_dim=4), seed_b)
    return a, b, align.match_weights(a, b)


def test_apply_rejects_a_transform_outside_the_group():
    _, b, alignment = _model_and_alignment()
    alignment.transforms["3"] = random_orthogonal(C, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"does not compute the same function.*largest \|difference\|.*probe"):
        alignment.apply(b)


def test_apply_rejects_a_spec_that_misses_the_second_occurrence():
    # what reading the Sequential once per module object used to give: the second hidden state, between
    # the linear layers 2 and 4, with no activation of its own, hence rotated freely
    a, b = shared_mlp(lambda: colu.CoLU(cone_dim=4), 0), shared_mlp(lambda: colu.CoLU(cone_dim=4), 7)
    spec = [
        HiddenState("1", group="1", producers=["0.weight", "0.bias"], consumers=["2.weight"], pre="0", post="1"),
        HiddenState("2->4", group="orthogonal", producers=["2.weight", "2.bias"], consumers=["4.weight"],
                    pre="2", post="2"),
    ]
    alignment = align.match_weights(a, b, spec)
    with pytest.raises(ValueError, match="does not compute the same function") as info:
        alignment.apply(b)
    message = str(info.value)
    assert "random probe" in message and "8 inputs" in message
    assert "spec=" in message


def test_apply_error_reports_the_difference_for_an_explicit_probe():
    _, b, alignment = _model_and_alignment()
    alignment.transforms["1"] = alignment.transforms["1"].flip(0)  # reverses the channel order: no cone symmetry
    probe = torch.randn(5, D_IN)
    with pytest.raises(ValueError, match=r"the probe you passed \(shape \(5, 8\)") as info:
        alignment.apply(b, probe=probe)
    reported = float(str(info.value).split("largest |difference| ")[1].split(",")[0])
    moved = copy.deepcopy(b)
    transform_hidden(moved[0], moved[2], alignment.transforms["1"].float())
    transform_hidden(moved[2], moved[4], alignment.transforms["3"].float())
    with torch.no_grad():
        actual = (moved(probe) - b(probe)).abs().max().item()
    assert reported == pytest.approx(actual, rel=2e-3)


def test_overriding_an_activation_group_warns_instead_of_raising():
    # a permutation-only baseline for CoLU changes the function on purpose
    a, b = shared_mlp(lambda: colu.CoLU(cone_dim=4), 0), shared_mlp(lambda: colu.CoLU(cone_dim=4), 7)
    spec = [dict(s.__dict__, group="permutation") for s in align.infer_spec(a)]
    alignment = align.match_weights(a, b, spec)
    with pytest.warns(UserWarning, match="does not compute the same function.*group"):
        aligned = alignment.apply(b)
    probe = torch.randn(16, D_IN)
    assert (aligned(probe) - b(probe)).abs().max().item() > 1e-3


def test_apply_checks_float64_models_tightly():
    a, b, _ = _model_and_alignment()
    a, b = a.double(), b.double()
    alignment = align.match_weights(a, b)
    probe = torch.randn(32, D_IN, dtype=torch.float64)
    assert (alignment.apply(b)(probe) - b(probe)).abs().max().item() < 1e-12
    # a perturbation far below float32's tolerance is still caught in float64
    alignment.transforms["1"] = alignment.transforms["1"] @ torch.linalg.matrix_exp(
        1e-6 * (lambda m: m - m.T)(torch.randn(C, C, dtype=torch.float64)))
    with pytest.raises(ValueError, match="does not compute the same function"):
        alignment.apply(b)


def test_apply_uses_the_state_matching_data_as_probe(x):
    # the first layer is not a linear map of the input, so no random probe can be built from its width
    def make(seed):
        torch.manual_seed(seed)
        act = nn.ReLU()
        return nn.Sequential(nn.Embedding(10, D_IN), nn.Flatten(), nn.Linear(2 * D_IN, C), act,
                             nn.Linear(C, C), act, nn.Linear(C, D_OUT))

    a, b = make(0), make(1)
    tokens = torch.randint(0, 10, (64, 2), generator=torch.Generator().manual_seed(0))
    by_states = align.match_states(a, b, tokens)
    by_states.transforms["5"] = random_orthogonal(C, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match=r"rows of the data given to match_states"):
        by_states.apply(b)
    # weight matching has no data and the input width is unknown: the check needs a probe from the caller
    by_weights = align.match_weights(a, b)
    aligned = by_weights.apply(b)
    assert torch.allclose(aligned(tokens), b(tokens), atol=1e-5)
    by_weights.transforms["5"] = by_states.transforms["5"]
    by_weights.apply(b)  # nothing to probe with: not verified
    with pytest.raises(ValueError, match="does not compute the same function"):
        by_weights.apply(b, probe=tokens[:8])


def test_apply_restores_training_mode_and_rng():
    _, b, alignment = _model_and_alignment()
    b.train()
    torch.manual_seed(42)
    expected = torch.rand(3)
    torch.manual_seed(42)
    aligned = alignment.apply(b)
    assert torch.equal(torch.rand(3), expected)
    assert b.training and aligned.training


# ------------------------------------------------------- shared weights
def test_shared_linear_layer_is_rejected_with_its_positions():
    lin = nn.Linear(C, C)
    model = nn.Sequential(nn.Linear(D_IN, C), nn.ReLU(), lin, nn.ReLU(), lin, nn.ReLU(), nn.Linear(C, D_OUT))
    with pytest.raises(ValueError, match=r"'2\.weight' and '4\.weight' are the same tensor.*separate"):
        align.match_weights(model, copy.deepcopy(model))


def test_state_matching_on_a_data_loader_keeps_its_first_rows_as_probe(x):
    a, b = shared_mlp(nn.ReLU, 0), shared_mlp(nn.ReLU, 3)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x[:, :D_OUT]), batch_size=64)
    alignment = align.match_states(a, b, loader, where="post")
    aligned = alignment.apply(b)
    assert torch.allclose(aligned(x), b(x), atol=1e-5)
    alignment.transforms["3"] = random_orthogonal(C, generator=torch.Generator().manual_seed(2))
    with pytest.raises(ValueError, match=r"data given to match_states \(a list of shape \(8, 8\), shape \(8, 4\)\)"):
        alignment.apply(b)


def test_two_states_reading_one_module_are_rejected(x):
    a = shared_mlp(nn.ReLU, 0)
    spec = [dict(s.__dict__, post="1") for s in align.infer_spec(a)]
    with pytest.raises(ValueError, match=r"'1' and '3' both read the output of module '1' \(where='post'\)"):
        align.match_states(a, copy.deepcopy(a), x, spec, where="post")
