"""Installation promises: the demo's smaller pinned set, and a wheel and sdist that work outside the source tree."""

import importlib.metadata
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = pathlib.Path(__file__).resolve().parents[2]
FULL = ROOT / "requirements.txt"
DEMO = ROOT / "requirements-demo.txt"
# what `colu demo` imports beyond the standard library
DEMO_NEEDS = ("torch", "numpy", "scipy", "matplotlib", "tqdm", "pyyaml", "scikit-learn")
TEST_ONLY = ("triton", "transformers", "diffusers", "onnxruntime", "onnx", "pytest", "hypothesis")
# every C source and header the kernel build reads must ship in both the wheel and the sdist
C_SOURCES = tuple(sorted(f"colu/ops/{p.name}" for p in (ROOT / "src" / "colu" / "ops").iterdir() if p.suffix in (".c", ".h")))


def _pins(path: pathlib.Path) -> dict:
    """{canonical name: version} of a requirements file made only of ``name==version`` lines."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
        assert match, f"{path.name}: {line!r} is not a name==version pin"
        name = canonicalize_name(match[1])
        assert name not in pins, f"{path.name} pins {name} twice"
        pins[name] = match[2]
    return pins


def test_demo_pins_are_requirements_pins():
    full, demo = _pins(FULL), _pins(DEMO)
    assert not set(demo) - set(full), "requirements-demo.txt pins packages requirements.txt lacks"
    assert {name: full[name] for name in demo} == demo


def test_demo_set_is_the_demo_and_not_the_tests():
    demo = _pins(DEMO)
    assert demo["torch"] == "2.13.0"
    assert not [n for n in DEMO_NEEDS if canonicalize_name(n) not in demo]
    assert not [n for n in TEST_ONLY if n in demo]


def test_demo_set_is_closed_under_dependencies():
    # every dependency of a pinned package is pinned too, so that `pip install -r requirements-demo.txt`
    # fetches nothing unpinned; read from the metadata of the installed packages (same versions)
    demo = _pins(DEMO)
    environment = {**default_environment(), "extra": ""}
    unpinned = {}
    for name, version in demo.items():
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            pytest.skip(f"{name} is not installed here")
        assert dist.version.split("+")[0] == version, f"installed {name} {dist.version}, pinned {version}"
        for spec in dist.requires or ():
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate(environment):
                continue
            if canonicalize_name(req.name) not in demo:
                unpinned.setdefault(name, []).append(req.name)
    assert not unpinned, f"dependencies missing from requirements-demo.txt: {unpinned}"


def _dry_run(target: str) -> str:
    """The commands ``make TARGET`` runs on a fresh checkout (``-B``: as if nothing were installed)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    proc = subprocess.run(["make", "-n", "-B", "-C", str(ROOT), target], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_make_demo_installs_the_demo_set():
    commands = _dry_run("demo")
    assert "-r requirements-demo.txt" in commands
    assert "-r requirements.txt" not in commands
    assert re.search(r"colu demo$", commands, re.M)


def test_make_test_installs_the_full_set():
    commands = _dry_run("test")
    assert "-r requirements.txt" in commands
    assert re.search(r"-m pytest -q$", commands, re.M)


def _run(cmd, **kwargs):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


SMOKE = r"""
import importlib.util, os, sys
import torch, colu

venv = os.path.realpath(sys.argv[1])
assert os.path.realpath(colu.__file__).startswith(venv + os.sep), colu.__file__
assert importlib.util.find_spec("scipy") is None, "the core install brought scipy"
torch.manual_seed(0)
x = torch.randn(8, 16)
got = colu.colu(x, cone_dim=4, backend="cpu")
want = colu.reference.colu(x, cone_dim=4)
err = (got - want).abs().max().item()
assert err <= 1e-5, err
print("ok", colu.__file__)
"""


@pytest.mark.slow
def test_wheel_and_sdist_install_into_a_clean_venv(tmp_path, quick_compiler):
    # build artifacts land in tmp_path; the sdist step writes src/colu.egg-info, removed again if it was not there
    created = [p for p in (ROOT / "build", ROOT / "dist", ROOT / "src" / "colu.egg-info") if not p.exists()]
    dist = tmp_path / "dist"
    try:
        # sdist first, then the wheel built from the unpacked sdist (so the sdist must be complete)
        _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(ROOT)], cwd=ROOT)
    finally:
        for path in created:
            shutil.rmtree(path, ignore_errors=True)
    (wheel,) = dist.glob("colu-*.whl")
    (sdist,) = dist.glob("colu-*.tar.gz")
    with zipfile.ZipFile(wheel) as zf:
        wheel_names = zf.namelist()
    with tarfile.open(sdist) as tf:
        sdist_names = tf.getnames()
    for source in C_SOURCES:
        assert source in wheel_names, f"{wheel.name} lacks {source}"
        assert any(n.endswith("/src/" + source) for n in sdist_names), f"{sdist.name} lacks {source}"

    # a venv with torch and the wheel only (the core install); this interpreter's pip fills it
    # (--without-pip skips ensurepip; --no-compile: Python compiles what is imported as it goes)
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-compile",
          "-c", str(FULL), "torch==2.13.0", str(wheel)])

    # run from outside the repository, so that the source tree cannot be imported
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    cache = tmp_path / "kernel-cache"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["COLU_CACHE_DIR"] = str(cache)
    env["CC"] = str(quick_compiler)  # the build from the installed sources, unoptimised: this is not about speed
    proc = _run([str(python), "-c", SMOKE, str(venv)], cwd=outside, env=env)
    assert proc.stdout.startswith("ok"), proc.stdout
    assert list(cache.glob("*/colu_cpu.so")), "the C kernel was not built from the installed sources"

    cli = subprocess.run([str(venv / "bin" / "colu"), "run", "mnist-mlp", "--quick"],
                         capture_output=True, text=True, cwd=outside, env=env)
    assert cli.returncode == 2, (cli.returncode, cli.stdout, cli.stderr)
    assert "pip install 'colu[experiments]'" in cli.stderr, cli.stderr
