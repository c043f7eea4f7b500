"""The CPU kernel's build cache: private directories, a recorded digest, and rebuilding what does not match it.

One real compile serves the whole module: the processes here are pointed at a
compiler wrapper that runs the real compiler the first time it sees a command
line and afterwards copies that build's output. A rebuild is then a fast copy
that still goes through the loader's whole build path, and the wrapper's log
shows whether the loader asked for one.
"""

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from colu.ops import cpu

pytestmark = pytest.mark.skipif(cpu.compiler() is None, reason="no C compiler: the CPU kernel cannot be built")

WRAPPER = """\
#!{python}
import hashlib, os, shutil, subprocess, sys
real, stash = {real!r}, {stash!r}
args = sys.argv[1:]
if "--version" in args:
    sys.exit(subprocess.run([real, *args]).returncode)
out = args[args.index("-o") + 1]
line = [a for i, a in enumerate(args) if a != "-o" and (i == 0 or args[i - 1] != "-o")]
log = os.environ.get("COLU_TEST_CC_LOG")
if log:
    with open(log, "a") as f:
        f.write(" ".join(args) + "\\n")
kept = os.path.join(stash, hashlib.sha256("\\0".join(line).encode()).hexdigest() + ".so")
if os.path.exists(kept):
    shutil.copyfile(kept, out)
    sys.exit(0)
rc = subprocess.run([real, *args, "-O0"]).returncode  # unoptimised: these tests are about the cache
if rc == 0:
    shutil.copyfile(out, kept + ".part")
    os.replace(kept + ".part", kept)
sys.exit(rc)
"""

PROBE = textwrap.dedent(
    """
    import json, warnings, torch, colu
    from colu import reference
    from colu.ops import cpu, dispatch
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x = torch.randn(6, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2
        try:
            y = colu.colu(x, cone_dim=4, backend="cpu")
            torch.testing.assert_close(y, reference.colu(x, cone_dim=4), atol=1e-10, rtol=1e-10)
            matches = True
        except (RuntimeError, AssertionError) as err:
            matches = repr(err)
    print(json.dumps({"matches": matches, "cpu_calls": dispatch.calls["cpu"],
                      "warnings": [str(w.message) for w in caught]}))
    """
)

MARKER_SOURCE = """\
#include <stdio.h>
__attribute__((constructor)) static void planted(void) {
    FILE *f = fopen(MARKER, "w");
    if (f) { fputs("the planted library ran\\n", f); fclose(f); }
}
int colu_abi_version(void) { return -1; }
"""

LIBRARY = "colu_cpu.so"
DIGEST = "colu_cpu.so.sha256"


class Built:
    def __init__(self, root: Path, wrapper: Path, stderr: str):
        self.root, self.wrapper, self.stderr = root, wrapper, stderr
        (self.key_dir,) = [d for d in root.iterdir() if (d / LIBRARY).exists()]
        self.library = (self.key_dir / LIBRARY).read_bytes()

    def copy(self, dest: Path) -> Path:
        """A copy of the built cache at ``dest``, modes kept; returns its key directory."""
        shutil.copytree(self.root, dest)
        return dest / self.key_dir.name


def _env(cache: Path, wrapper: Path, log: Path | None = None, **extra) -> dict:
    env = {**os.environ, "COLU_CACHE_DIR": str(cache), "CC": str(wrapper), **extra}
    env.pop("COLU_BACKEND", None)
    env.pop("COLU_TEST_CC_LOG", None)
    if log is not None:
        env["COLU_TEST_CC_LOG"] = str(log)
    return env


def _probe(env: dict) -> tuple[dict, str]:
    proc = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"the probe process failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def _builds(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _plant_marker_library(tmp_path: Path, at: Path) -> Path:
    """Replace ``at`` with a shared library whose constructor writes a marker file; returns the marker's path."""
    marker = tmp_path / "planted-library-ran"
    src = tmp_path / "planted.c"
    src.write_text(MARKER_SOURCE)
    so = tmp_path / "planted.so"
    proc = subprocess.run(
        [cpu.compiler(), "-shared", "-fPIC", f'-DMARKER="{marker}"', str(src), "-o", str(so)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    if at.exists():
        at.chmod(0o600)
        at.unlink()
    shutil.copyfile(so, at)
    return marker


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Built:
    """A cache holding one real build, made by a separate process through the compiler wrapper."""
    base = tmp_path_factory.mktemp("kernel-cache")
    wrapper = base / "cc-wrapper"
    stash = base / "stash"
    stash.mkdir()
    wrapper.write_text(WRAPPER.format(python=sys.executable, real=cpu.compiler(), stash=str(stash)))
    wrapper.chmod(0o755)
    result, stderr = _probe(_env(base / "cache", wrapper))
    assert result["matches"] is True and result["cpu_calls"] > 0, (result, stderr)
    return Built(base / "cache", wrapper, stderr)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.slow
def test_build_is_announced_private_and_recorded(built):
    assert "colu: compiling the CPU kernel once with" in built.stderr and str(built.key_dir) in built.stderr
    assert _mode(built.root) == 0o700, oct(_mode(built.root))
    assert _mode(built.key_dir) == 0o700, oct(_mode(built.key_dir))
    library = built.key_dir / LIBRARY
    assert _mode(library) & 0o277 == 0, f"the library should be readable by its owner only: {oct(_mode(library))}"
    recorded = (built.key_dir / DIGEST).read_text().split()
    assert recorded == [_sha256(library), LIBRARY]
    leftovers = sorted(p.name for p in built.key_dir.iterdir() if p.name not in (LIBRARY, DIGEST, "lock"))
    assert not leftovers, leftovers


@pytest.mark.slow
def test_valid_cache_is_loaded_without_a_rebuild(built, tmp_path):
    built.copy(tmp_path / "cache")
    log = tmp_path / "cc.log"
    result, stderr = _probe(_env(tmp_path / "cache", built.wrapper, log))
    assert result["matches"] is True and result["cpu_calls"] > 0, (result, stderr)
    assert _builds(log) == 0 and "colu:" not in stderr, stderr


@pytest.mark.slow
@pytest.mark.parametrize("planted", ["marker_library", "changed_build"])
def test_library_planted_at_the_cache_path_is_not_loaded(built, tmp_path, planted):
    key_dir = built.copy(tmp_path / "cache")
    library = key_dir / LIBRARY
    marker = None
    if planted == "marker_library":
        marker = _plant_marker_library(tmp_path, library)
    else:  # a copy of the real build with one byte of its trailing section data changed
        data = bytearray(built.library)
        data[-100] ^= 0xFF
        library.chmod(0o600)
        library.write_bytes(bytes(data))
    log = tmp_path / "cc.log"
    result, stderr = _probe(_env(tmp_path / "cache", built.wrapper, log))
    assert marker is None or not marker.exists(), "the planted library was loaded"
    assert result["matches"] is True and result["cpu_calls"] > 0, (result, stderr)
    assert _builds(log) == 1, "the planted library should have been replaced by a rebuild"
    notices = [ln for ln in stderr.splitlines() if str(library) in ln and "rebuilding" in ln]
    assert len(notices) == 1, stderr
    assert library.read_bytes() == built.library
    assert (key_dir / DIGEST).read_text().split()[0] == _sha256(library)


@pytest.mark.slow
@pytest.mark.parametrize("size", ["truncated", "empty"])
def test_truncated_or_empty_library_is_rebuilt(built, tmp_path, size):
    key_dir = built.copy(tmp_path / "cache")
    library = key_dir / LIBRARY
    library.chmod(0o600)
    library.write_bytes(built.library[: len(built.library) // 2] if size == "truncated" else b"")
    log = tmp_path / "cc.log"
    result, stderr = _probe(_env(tmp_path / "cache", built.wrapper, log))
    assert result["matches"] is True and result["cpu_calls"] > 0, (result, stderr)
    assert not [w for w in result["warnings"] if "unavailable" in w], result["warnings"]
    assert _builds(log) == 1
    notices = [ln for ln in stderr.splitlines() if str(library) in ln and "rebuilding" in ln]
    assert len(notices) == 1, stderr
    assert "colu: compiling the CPU kernel once with" in stderr
    assert library.read_bytes() == built.library
    # and the next process finds it valid again
    result, stderr = _probe(_env(tmp_path / "cache", built.wrapper, log))
    assert result["cpu_calls"] > 0 and _builds(log) == 1 and "colu:" not in stderr, stderr


def _plant_with_digest(tmp_path, key_dir: Path) -> Path:
    """Plant the marker library and a digest matching it (whoever can write one can write the other)."""
    library = key_dir / LIBRARY
    marker = _plant_marker_library(tmp_path, library)
    if (key_dir / DIGEST).exists():
        (key_dir / DIGEST).chmod(0o600)
    (key_dir / DIGEST).write_text(f"{_sha256(library)}  {LIBRARY}\n")
    return marker


def _check_refused(built, tmp_path, refused: Path, key_dir: Path, marker: Path, why: str):
    """A process given this cache loads nothing from it, says which directory and why, and still runs the kernel."""
    before = {p.name: p.read_bytes() for p in key_dir.iterdir() if p.is_file()}
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    log = tmp_path / "cc.log"
    result, stderr = _probe(_env(tmp_path / "cache", built.wrapper, log, TMPDIR=str(scratch)))
    assert not marker.exists(), "a library from a directory others can write was loaded"
    refusals = [w for w in result["warnings"] if str(refused) in w]
    assert len(refusals) == 1, result["warnings"]
    assert why in refusals[0] and "COLU_CACHE_DIR" in refusals[0], refusals[0]
    # the kernel still runs: built for this process in a private temporary directory, removed afterwards
    assert result["matches"] is True and result["cpu_calls"] > 0, (result, stderr)
    assert _builds(log) == 1
    assert list(scratch.iterdir()) == []
    assert {p.name: p.read_bytes() for p in key_dir.iterdir() if p.is_file()} == before, "the refused cache was changed"


@pytest.mark.slow
@pytest.mark.parametrize("which,mode", [("cache", 0o770), ("key", 0o777)])
def test_cache_dir_writable_by_others_is_refused(built, tmp_path, which, mode):
    key_dir = built.copy(tmp_path / "cache")
    refused = tmp_path / "cache" if which == "cache" else key_dir
    marker = _plant_with_digest(tmp_path, key_dir)
    refused.chmod(mode)
    _check_refused(built, tmp_path, refused, key_dir, marker, "writable by")


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to give a directory to another user")
def test_cache_dir_owned_by_another_user_is_refused(built, tmp_path):
    key_dir = built.copy(tmp_path / "cache")
    marker = _plant_with_digest(tmp_path, key_dir)
    os.chown(tmp_path / "cache", 65534, 65534)
    _check_refused(built, tmp_path, tmp_path / "cache", key_dir, marker, "owned by uid 65534")


def _stat(mode: int, uid: int) -> os.stat_result:
    return os.stat_result((mode, 1, 1, 1, uid, uid, 4096, 0, 0, 0))


def test_private_directory_check():
    uid = 1000
    assert cpu._dir_problem(_stat(stat.S_IFDIR | 0o700, uid), uid) is None
    assert cpu._dir_problem(_stat(stat.S_IFDIR | 0o755, uid), uid) is None
    assert "owned by uid 0" in cpu._dir_problem(_stat(stat.S_IFDIR | 0o700, 0), uid)
    assert "writable by its group" in cpu._dir_problem(_stat(stat.S_IFDIR | 0o770, uid), uid)
    assert "writable by other users" in cpu._dir_problem(_stat(stat.S_IFDIR | 0o757, uid), uid)
    assert "writable by other users" in cpu._dir_problem(_stat(stat.S_IFDIR | 0o1777, uid), uid)
    assert "not a directory" in cpu._dir_problem(_stat(stat.S_IFREG | 0o700, uid), uid)


def test_cache_dir_follows_colu_cache_dir_then_absolute_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("COLU_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cpu.cache_dir() == tmp_path / "home" / ".cache" / "colu"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cpu.cache_dir() == tmp_path / "xdg" / "colu"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # the XDG spec says to ignore relative paths
    assert cpu.cache_dir() == tmp_path / "home" / ".cache" / "colu"
    monkeypatch.setenv("COLU_CACHE_DIR", "~/kernels")
    assert cpu.cache_dir() == tmp_path / "home" / "kernels"
    monkeypatch.setenv("COLU_CACHE_DIR", "kernels")
    monkeypatch.chdir(tmp_path)
    assert cpu.cache_dir() == Path.cwd() / "kernels"


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads which file a descriptor is through /proc")
def test_library_is_synced_before_it_is_renamed_into_place(monkeypatch, tmp_path):
    """The build writes the library under a temporary name, fsyncs it, then renames it (nothing is loaded here)."""
    fake_cc = tmp_path / "fake-cc"
    fake_cc.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = --version ]; then echo fake-cc 1.0; exit 0; fi\n'
        'while [ $# -gt 1 ]; do if [ "$1" = -o ]; then printf "not really ELF" > "$2"; fi; shift; done\n'
    )
    fake_cc.chmod(0o755)
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst, **kw):
        events.append(("replace", str(src), str(dst)))
        return real_replace(src, dst, **kw)

    monkeypatch.setenv("COLU_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(cpu, "_open", lambda path: ("opened", Path(path)))
    monkeypatch.setattr(cpu, "_python_include", lambda: None)
    opened = cpu._load_built(str(fake_cc))
    assert opened[0] == "opened" and opened[1].name == LIBRARY
    renames = [e for e in events if e[0] == "replace" and e[2] == str(opened[1])]
    assert len(renames) == 1, events
    tmp = renames[0][1]
    assert ("fsync", tmp) in events and events.index(("fsync", tmp)) < events.index(renames[0]), events
    assert opened[1].read_bytes() == b"not really ELF"
    assert (opened[1].parent / DIGEST).read_text().split()[0] == _sha256(opened[1])


def _fake_compiler(tmp_path: Path) -> Path:
    """A compiler that logs each build and writes a placeholder library (nothing is loaded with it)."""
    log = tmp_path / "builds.log"
    fake_cc = tmp_path / "fake-cc"
    fake_cc.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = --version ]; then echo fake-cc 1.0; exit 0; fi\n'
        f'echo build >> "{log}"\n'
        'while [ $# -gt 1 ]; do if [ "$1" = -o ]; then printf "not really ELF" > "$2"; fi; shift; done\n'
    )
    fake_cc.chmod(0o755)
    return fake_cc


def test_a_changed_header_gets_its_own_build(monkeypatch, tmp_path):
    """The cache key covers the headers the sources include: editing one builds anew in another directory,
    and an unchanged tree reuses its build."""
    src = tmp_path / "src"
    src.mkdir()
    for path in [cpu.SOURCE, cpu.ENTRY_SOURCE, *cpu.headers()]:
        shutil.copy(path, src / path.name)
    monkeypatch.setattr(cpu, "SOURCE", src / cpu.SOURCE.name)
    monkeypatch.setattr(cpu, "ENTRY_SOURCE", src / cpu.ENTRY_SOURCE.name)
    monkeypatch.setenv("COLU_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cpu, "_open", lambda path: Path(path))
    monkeypatch.setattr(cpu, "_python_include", lambda: None)
    fake_cc = str(_fake_compiler(tmp_path))
    first = cpu._load_built(fake_cc)
    assert cpu._load_built(fake_cc) == first
    assert _builds(tmp_path / "builds.log") == 1
    seen = {first.parent}
    for header in cpu.headers():
        assert header.parent == src
        header.chmod(0o644)
        header.write_text(header.read_text() + "\n/* edited */\n")
        seen.add(cpu._load_built(fake_cc).parent)
    assert len(seen) == 1 + len(cpu.headers()), "every edited header should have led to a build of its own"
    assert _builds(tmp_path / "builds.log") == len(seen)


def test_every_included_header_is_hashed_and_shipped():
    """What the C sources include is among cpu.headers() (so in the cache key), and the package data
    ships every file the build reads."""
    import fnmatch
    import tomllib

    names = {path.name for path in cpu.headers()}
    assert "colu_abi.h" in names
    for path in [cpu.SOURCE, cpu.ENTRY_SOURCE, *cpu.headers()]:
        for included in re.findall(r'^\s*#\s*include\s+"([^"]+)"', path.read_text(), flags=re.M):
            assert included in names, f"{path.name} includes {included}, which is not beside it"
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    globs = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-data"]["colu"]
    package = Path(cpu.__file__).resolve().parents[1]
    for path in [cpu.SOURCE, cpu.ENTRY_SOURCE, *cpu.headers()]:
        relative = path.resolve().relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(relative, g) for g in globs), f"package-data does not ship {relative}"
