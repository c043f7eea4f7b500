"""Every bad input gets a clear error naming the offending value and a way out."""

import re

import pytest
import torch

import colu


def _raises(match, fn, *args, exc=ValueError, **kw):
    with pytest.raises(exc, match=match):
        fn(*args, **kw)


def test_both_cone_dim_and_num_cones():
    x = torch.randn(2, 8)
    _raises(r"exactly one of cone_dim and num_cones.*cone_dim=4.*num_cones=2", colu.colu, x, cone_dim=4, num_cones=2)
    _raises(r"exactly one", colu.CoLU, cone_dim=4, num_cones=2)
    _raises(r"exactly one", colu.rcolu, x, cone_dim=4, num_cones=2)


@pytest.mark.parametrize("bad", [1, 0, -3])
def test_cone_dim_too_small(bad):
    _raises(rf"cone_dim={bad} is too small.*>= 2", colu.colu, torch.randn(2, 8), cone_dim=bad)
    _raises(rf"cone_dim={bad}", colu.RCoLU, cone_dim=bad)


def test_non_int_cone_args():
    _raises(r"cone_dim must be an int, got 2.5", colu.colu, torch.randn(2, 8), cone_dim=2.5)
    _raises(r"num_cones must be an int, got True", colu.colu, torch.randn(2, 8), num_cones=True)
    _raises(r"num_cones=-1 is negative", colu.colu, torch.randn(2, 8), num_cones=-1)


@pytest.mark.parametrize(
    "name,value,fn",
    [("scaling", "smooth", colu.colu), ("layout", "interleaved", colu.colu), ("axis_activation", "gelu", colu.colu),
     ("scaling", "Hard", colu.rcolu), ("axis_activation", "tanh", colu.rcolu)],
)
def test_unknown_choices(name, value, fn):
    msg = rf"unknown {name}='{value}'; expected one of"
    _raises(msg, fn, torch.randn(2, 8), **{name: value})
    module = colu.CoLU if fn is colu.colu else colu.RCoLU
    _raises(msg, module, **{name: value})


def test_width_not_divisible_by_cone_dim():
    err = re.escape("C=10 is not divisible by cone_dim=4; use C=8 or C=12, or share_axis=True with C = 1 + G*(S-1) (e.g. C=7)")
    _raises(err, colu.colu, torch.randn(2, 10), cone_dim=4)
    _raises(r"C=10 is not divisible by cone_dim=4; use C=8 or C=12$", colu.rcolu, torch.randn(2, 10), cone_dim=4)


def test_width_not_fitting_shared_axis():
    _raises(r"C=12 does not fit shared-axis cones of cone_dim=4.*C=10 or C=13", colu.colu, torch.randn(2, 12), cone_dim=4, share_axis=True)
    _raises(r"C=12 does not fit 3 shared-axis cones.*C=10 or C=13", colu.colu, torch.randn(2, 12), num_cones=3, share_axis=True)


def test_width_not_fitting_num_cones():
    _raises(r"C=10 does not split into num_cones=4 cones.*use C=12", colu.colu, torch.randn(2, 10), num_cones=4)
    _raises(r"C=3 does not split into num_cones=2 cones.*use C=4", colu.colu, torch.randn(2, 3), num_cones=2)


def test_module_reports_width_errors_at_call():
    m = colu.CoLU(cone_dim=4)
    _raises(r"C=6 is not divisible by cone_dim=4", m, torch.randn(2, 6))


def test_rcolu_has_no_shared_axis():
    _raises(r"RCoLU has no axis channel to share", colu.ConeSpec.resolve, 8, 4, kind="rcolu", share_axis=True)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.uint8])
def test_integer_tensors(dtype):
    x = torch.ones(2, 8, dtype=dtype)
    _raises(rf"floating-point tensor, got dtype={re.escape(str(dtype))}; convert it first, e.g. x.float\(\)", colu.colu, x)
    _raises(r"floating-point tensor", colu.rcolu, x)


def test_non_tensor_and_scalar():
    _raises(r"expects a torch.Tensor, got list", colu.colu, [1.0, 2.0], exc=TypeError)
    _raises(r"0-dim tensor", colu.colu, torch.tensor(1.0))


@pytest.mark.parametrize("dim", [2, -3, 7])
def test_dim_out_of_range(dim):
    _raises(r"Dimension out of range \(expected to be in range of \[-2, 1\], but got", colu.colu, torch.randn(2, 8), dim=dim, exc=IndexError)


@pytest.mark.parametrize("eps", [-1e-7, float("nan"), float("inf"), "1e-7"])
def test_bad_eps(eps):
    _raises(r"eps must be a finite number >= 0", colu.colu, torch.randn(2, 8), eps=eps)


def test_unknown_backend():
    _raises(r"unknown backend='gpu'", colu.colu, torch.randn(2, 8), backend="gpu")


@pytest.mark.parametrize(
    "module,kw,match,exc",
    [
        (colu.CoLU, dict(dim=1.0), r"dim must be an int, got 1.0", TypeError),
        (colu.RCoLU, dict(dim=True), r"dim must be an int, got True", TypeError),
        (colu.CoLU, dict(share_axis="no"), r"share_axis must be True or False \(or 1/0\), got share_axis='no'", ValueError),
        (colu.CoLU, dict(eps=-1e-7), r"eps must be a finite number >= 0, got eps=-1e-07", ValueError),
        (colu.RCoLU, dict(eps=float("nan")), r"eps must be a finite number >= 0, got eps=nan", ValueError),
    ],
)
def test_modules_check_their_arguments_when_built(module, kw, match, exc):
    _raises(match, module, exc=exc, **kw)


def test_assigning_a_module_argument_checks_it():
    x = torch.randn(3, 8, dtype=torch.float64)
    m = colu.CoLU(cone_dim=4)
    _raises(r"unknown scaling='smooth'", setattr, m, "scaling", "smooth")
    assert m.scaling == "hard", "a rejected value should leave the module as it was"
    m.scaling = "soft"
    torch.testing.assert_close(m(x), colu.colu(x, 4, scaling="soft"))
    _raises(r"exactly one of cone_dim and num_cones", setattr, m, "num_cones", 2)
    m.cone_dim = None
    m.num_cones = 1
    torch.testing.assert_close(m(x), colu.colu(x, num_cones=1, scaling="soft"))
    r = colu.RCoLU(cone_dim=4)
    _raises(r"dim must be an int, got 0.0", setattr, r, "dim", 0.0, exc=TypeError)
    r.dim = 0
    torch.testing.assert_close(r(x.t()), colu.rcolu(x.t(), 4, dim=0))


def test_modules_check_each_input():
    m = colu.CoLU(cone_dim=4)
    _raises(r"colu expects a floating-point tensor, got dtype=torch.int64", m, torch.ones(2, 8, dtype=torch.int64))
    _raises(r"colu expects a torch.Tensor, got list", m, [1.0] * 8, exc=TypeError)
    _raises(r"Dimension out of range", colu.RCoLU(cone_dim=4, dim=2), torch.randn(2, 8), exc=IndexError)
    _raises(r"rcolu needs a channel axis, got a 0-dim tensor", colu.RCoLU(), torch.tensor(1.0))
