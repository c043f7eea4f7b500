"""Packaging promises: a light import, the spec's channel bookkeeping, the README's commands."""

import pathlib
import re
import subprocess
import sys

import pytest
import torch

import colu

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_import_stays_light():
    # compare with what torch itself loads (torch imports tqdm when it is installed)
    code = (
        "import sys, torch; before = set(sys.modules); import colu, colu.symmetry; "
        "heavy = [m for m in ('matplotlib', 'scipy', 'sklearn', 'tqdm', 'yaml', 'triton', 'diffusers', 'transformers', 'colu_lab') "
        "if m in sys.modules and m not in before]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"import colu pulled in {out}"


@pytest.mark.parametrize("layout", ["grouped", "axes_first"])
@pytest.mark.parametrize("share", [False, True])
def test_spec_partitions_channels(layout, share):
    C = 13 if share else 12
    spec = colu.ConeSpec.resolve(C, cone_dim=4, share_axis=share, layout=layout)
    assert (spec.num_cones, spec.cone_dim) == ((4, 4) if share else (3, 4))
    axes = spec.axis_channels().unique().tolist()
    sections = spec.section_channels().flatten().tolist()
    assert sorted(axes + sections) == list(range(C))  # every channel exactly once
    x = torch.arange(C, dtype=torch.float64).expand(2, C)
    a, s = spec.split(x)
    assert a[0].tolist() == (axes if share else spec.axis_channels().tolist())
    assert s[0].tolist() == spec.section_channels().tolist()
    assert torch.equal(spec.merge(a, s), x)


def test_spec_layouts_by_hand():
    grouped = colu.ConeSpec.resolve(8, cone_dim=4)
    assert grouped.axis_channels().tolist() == [0, 4]
    assert grouped.section_channels().tolist() == [[1, 2, 3], [5, 6, 7]]
    jax_layout = colu.ConeSpec.resolve(8, num_cones=2, layout="axes_first")
    assert jax_layout.axis_channels().tolist() == [0, 1]
    assert jax_layout.section_channels().tolist() == [[2, 3, 4], [5, 6, 7]]
    shared = colu.ConeSpec.resolve(7, cone_dim=4, share_axis=True)
    assert shared.axis_channels().tolist() == [0, 0]
    assert shared.section_channels().tolist() == [[1, 2, 3], [4, 5, 6]]
    assert str(shared) == "ConeSpec(colu: C=7, G=2, S=4, grouped, shared axis)"
    assert colu.ConeSpec.resolve(9, num_cones=0).is_identity


def test_readme_quick_start_and_ci_agree():
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("```", 2)[1]
    commands = [line.split("#")[0].strip() for line in quick.splitlines()[1:] if line.strip()]
    assert commands == ["make demo", "make test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)


def _readme_python_blocks():
    readme = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", readme, re.S)


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(_readme_python_blocks())))
def test_readme_python_examples_run(index, capsys):
    pytest.importorskip("scipy")
    block = _readme_python_blocks()[index]
    exec(compile(block, f"README.md python block {index}", "exec"), {"__name__": "readme_example"})


def _sources_outside_ops():
    src = ROOT / "src" / "colu"
    return [p for p in src.rglob("*.py") if (src / "ops") not in p.parents]


def test_functional_holds_only_the_public_functions():
    """The autograd Functions and the plan cache live in colu.ops; functional.py defines no class (which ops it
    may import is tests/test_layering.py's business)."""
    import ast

    tree = ast.parse((ROOT / "src" / "colu" / "functional.py").read_text())
    assert [n.name for n in tree.body if isinstance(n, ast.ClassDef)] == []


def test_only_ops_reaches_into_the_kernels():
    """Kernel state (cpu._state), argument-block slots and the backend choice are colu.ops' business alone."""
    pattern = re.compile(r"cpu\._state|\bARG_(X|OUT|THREADS)\b|forward_args\(|dispatch\.select\(")
    offenders = [
        f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
        for p in _sources_outside_ops()
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []
