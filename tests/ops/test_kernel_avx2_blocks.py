"""The vector blocks of 8 cones (AVX2) and 16 cones (AVX-512) for cones of 4, 8 and 16 contiguous float32
channels: whole blocks, chunks of blocks and the remainder after them, with the identity, relu and silu
axis, against the reference."""

import itertools
import re

import pytest
import torch

import colu
from colu import reference
from colu.ops import cpu, dispatch

pytestmark = pytest.mark.skipif(cpu.load() is None, reason="no C compiler: the CPU kernel cannot be built")

TOL = dict(atol=2e-5, rtol=2e-5)


def _flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            line = next((ln for ln in f if ln.startswith("flags")), "")
    except OSError:
        return set()
    return set(line.split())


def _loaded_library() -> str | None:
    """The path of the kernel library this process has mapped."""
    cpu.load()
    with open("/proc/self/maps") as f:
        for ln in f:
            m = re.search(r"(/\S*colu_cpu\S*\.so)\s*$", ln)
            if m:
                return m.group(1)
    return None


def _run(fn, S, scaling, x, g, act="identity"):
    before = dispatch.calls["cpu"]
    xk = x.clone().requires_grad_(True)
    y = fn(xk, S, scaling=scaling, axis_activation=act, backend="cpu")
    (gx,) = torch.autograd.grad(y, xk, g)
    assert dispatch.calls["cpu"] == before + 2, "forward and backward must both run the CPU kernel"
    return y.detach(), gx


def _ref(ref, S, scaling, x, g, act="identity"):
    xr = x.clone().requires_grad_(True)
    y = ref(xr, S, scaling=scaling, axis_activation=act)
    (gx,) = torch.autograd.grad(y, xr, g)
    return y.detach(), gx


def _assert_matches_reference(fn, ref, S, scaling, x, g, act="identity"):
    """The kernel's output and input gradient (both run on the CPU kernel) against the reference's;
    returns the kernel's."""
    y, gx = _run(fn, S, scaling, x, g, act)
    yr, gr = _ref(ref, S, scaling, x, g, act)
    torch.testing.assert_close(y, yr, **TOL)
    torch.testing.assert_close(gx, gr, **TOL)
    return y, gx


KINDS = [(colu.colu, reference.colu), (colu.rcolu, reference.rcolu)]


@pytest.mark.parametrize("S", [4, 8])
@pytest.mark.parametrize("scaling", ["hard", "soft", "firm"])
@pytest.mark.parametrize("kind", [0, 1], ids=["colu", "rcolu"])
@pytest.mark.parametrize("cones", [8, 13, 16 * 3 + 5, 8 * 9 + 7, 8 * 64 + 3])
def test_blocks_match_reference(S, scaling, kind, cones):
    # cones per row: one block, a block and a remainder, several blocks of 16 (AVX-512) or 8 (AVX2)
    # with a remainder, more than a chunk of blocks; 7 rows so that the flat tensor's cone count also
    # has a remainder
    fn, ref = KINDS[kind]
    gen = torch.Generator().manual_seed(S * 1000 + cones)
    x = torch.randn(7, S * cones, generator=gen) * 2
    g = torch.randn(x.shape, generator=gen)
    _assert_matches_reference(fn, ref, S, scaling, x, g)


@pytest.mark.parametrize("S", [4, 8, 16])
@pytest.mark.parametrize("scaling", ["hard", "soft", "firm"])
@pytest.mark.parametrize("kind", [0, 1], ids=["colu", "rcolu"])
@pytest.mark.parametrize("act", ["relu", "silu"])
@pytest.mark.parametrize("cones", [8, 8 * 9 + 7, 8 * 64 + 3])
def test_blocks_with_an_axis_activation_match_reference(S, scaling, kind, act, cones):
    # relu and silu axes run in the same blocks (their per-cone scalars and the axis lanes change)
    fn, ref = KINDS[kind]
    gen = torch.Generator().manual_seed(S * 1000 + cones + 7)
    x = torch.randn(7, S * cones, generator=gen) * 2
    g = torch.randn(x.shape, generator=gen)
    _assert_matches_reference(fn, ref, S, scaling, x, g, act)


@pytest.mark.parametrize("S", [4, 8, 16])
def test_rcolu_relu_axis_gives_exact_zeros(S):
    # a cone whose mean is negative has a relu axis of 0, hence weight 0 (hard) and output exactly 0 with
    # a zero gradient, inside the blocks as in the reference; a shifted input's recomputed mean would not
    cones = 8 * 5 + 3
    x = torch.randn(4, S * cones, generator=torch.Generator().manual_seed(S))
    cone_means = x.view(4, cones, S).mean(-1)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(S + 1))
    y, gx = _assert_matches_reference(colu.rcolu, reference.rcolu, S, "hard", x, g, "relu")
    negative = (cone_means < 0).unsqueeze(-1).expand(4, cones, S).reshape(x.shape)
    assert negative.any() and (~negative).any()
    assert torch.equal(y[negative], torch.zeros(int(negative.sum())))
    assert torch.equal(gx[negative], torch.zeros(int(negative.sum())))


@pytest.mark.parametrize("S", [4, 8])
@pytest.mark.parametrize("kind", [0, 1], ids=["colu", "rcolu"])
def test_blocks_on_large_values_and_zero_cones(S, kind):
    # saturated sigmoids, zero sections (the norm's eps) and hard's clamp at both ends, inside whole blocks
    fn, ref = KINDS[kind]
    gen = torch.Generator().manual_seed(S)
    x = torch.randn(5, S * 40, generator=gen) * 50
    x[1, : S * 8] = 0.0
    x[2, S * 8 : S * 16 : S] = 1e4  # axes far past the section's norm
    x[3, S * 16 : S * 24 : S] = -1e4
    g = torch.randn(x.shape, generator=gen)
    for scaling, act in itertools.product(("hard", "soft", "firm"), ("identity", "relu", "silu")):
        _assert_matches_reference(fn, ref, S, scaling, x, g, act)


@pytest.mark.parametrize("S", [4, 8])
@pytest.mark.parametrize("kind", [0, 1], ids=["colu", "rcolu"])
@pytest.mark.parametrize("scaling", ["hard", "soft", "firm"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("act", ["identity", "relu"])
def test_nonfinite_stays_in_its_cone(S, kind, scaling, bad, act):
    # one non-finite entry (axis or section) in a cone inside a whole block: only that cone's outputs and
    # input gradients may be non-finite, whichever channel it sits in and wherever in the block the cone is
    fn, _ = KINDS[kind]
    cones = 8 * 4 + 3
    for cone, channel in itertools.product((0, 5, 8 + 3, 16 + 7), (0, S - 1)):
        x = torch.randn(3, S * cones, generator=torch.Generator().manual_seed(cone))
        x[1, cone * S + channel] = bad
        g = torch.ones_like(x)
        y, gx = _run(fn, S, scaling, x, g, act)
        mine = torch.zeros(x.shape, dtype=torch.bool)
        mine[1, cone * S : (cone + 1) * S] = True
        for out in (y, gx):
            assert torch.isfinite(out[~mine]).all(), (cone, channel)


@pytest.mark.parametrize("threads", [1, 2])
def test_blocks_split_between_threads(threads):
    # spans of whole blocks per thread, chunked (L2-sized) and not (larger tensors run one block a call)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        for S, cones, scaling in ((4, 8 * 1100 + 5, "hard"), (8, 8 * 600 + 1, "soft"), (4, 8 * 70 + 2, "firm")):
            gen = torch.Generator().manual_seed(cones)
            x = torch.randn(9, S * cones, generator=gen)
            g = torch.randn(x.shape, generator=gen)
            for fn, ref in KINDS:
                _assert_matches_reference(fn, ref, S, scaling, x, g)
    finally:
        torch.set_num_threads(old)


@pytest.mark.skipif(not {"avx2", "fma"} <= _flags(), reason="needs AVX2 and FMA")
def test_s4_s8_take_the_vector_blocks():
    # where the kernel is built with AVX2 and FMA, S = 4 and 8 have vector blocks and no loops of gcc's,
    # for the identity axis and (in the AVX2 blocks, on every such machine) relu and silu
    path = _loaded_library()
    if path is None:
        pytest.skip("the kernel library's path is not visible in /proc/self/maps")
    symbols = open(path, "rb").read().decode("latin-1")
    for S in (4, 8):
        for kind in ("colu", "rcolu"):
            for sc in ("hard", "soft", "firm"):
                for act in ("identity", "relu", "silu"):
                    name = f"{S}_{kind}_{sc}_{act}"  # AVX-512 blocks (avz_) take the identity axis where built
                    assert any(f"{isa}_{name}_{way}" in symbols for isa in ("avx", "avz") for way in ("fwd", "bwd"))
                assert f"flat_{S}_{kind}_{sc}_fwd" not in symbols


def _instance_table() -> dict:
    """kernel_instances.h as {family macro: [(forward name, backward name), ...]}, parsed from the header."""
    text = (cpu.SOURCE.parent / "kernel_instances.h").read_text()
    families = {}
    for macro, body in re.findall(r"#define (COLU_\w+_INSTANCES)\(X\)((?:.*\\\n)*.*)", text):
        families[macro] = re.findall(r"X\((\w+), (\w+),", body)
    return families


def test_every_row_of_the_instance_table_is_built():
    """Each row of kernel_instances.h names a forward and a backward function that this machine's build holds (the
    families its ISA builds), and no name appears twice: the table is the list of every specialised kernel."""
    path = _loaded_library()
    if path is None:
        pytest.skip("the kernel library's path is not visible in /proc/self/maps")
    symbols = set(re.findall(rb"[A-Za-z_][A-Za-z0-9_]*", open(path, "rb").read()))
    table = _instance_table()
    names = [name for rows in table.values() for row in rows for name in row]
    assert len(table) == 11 and len(names) == len(set(names))
    flags = _flags()
    avx2 = {"avx2", "fma"} <= flags
    built = {"COLU_MID_INSTANCES", "COLU_SPLIT_INSTANCES", "COLU_FLAT_S3_INSTANCES", "COLU_FLAT_RCOLU_ACT_INSTANCES",
             "COLU_PLANE_INSTANCES"}
    if avx2:
        built |= {"COLU_AXF_INSTANCES", "COLU_AVX2_WIDE_INSTANCES", "COLU_AVX2_ACT_INSTANCES",
                  "COLU_AVX512_IDENTITY_INSTANCES" if "avx512f" in flags else "COLU_AVX2_IDENTITY_INSTANCES"}
    else:
        built.add("COLU_FLAT_PORTABLE_INSTANCES")
    for family, rows in table.items():
        for forward, backward in rows:
            present = forward.encode() in symbols and backward.encode() in symbols
            assert present == (family in built), (family, forward)
