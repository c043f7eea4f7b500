"""Fused CPU backend: ``cpu_kernel.c`` built on first use, called through ctypes or its CPython entry.

The C file includes no torch headers, so it builds with the
system C compiler (``$CC``, else ``cc``/``gcc``). Where the Python headers are
installed, ``cpu_entry.c`` is built into the same library: a CPython function
through which planned calls (:mod:`colu.ops.plans`) skip ctypes, about half a
microsecond a call; without the headers everything goes through ctypes.

The shared library is cached under :func:`cache_dir` (``$COLU_CACHE_DIR``,
else ``$XDG_CACHE_HOME/colu``, else ``~/.cache/colu``) in a directory named by
a hash of the sources and the headers they include, the flags, the compiler's
identity and the CPU (the build uses ``-march=native``), so an edit, another
compiler or another machine gets its own build. A build is written under a temporary name, fsynced and
renamed, its SHA-256 digest is recorded next to it (``colu_cpu.so.sha256``,
in ``sha256sum`` format), and one process at a time builds or loads in a
directory (an flock on its ``lock`` file).

Loading a library runs its code, so it is loaded only from directories that
belong to the user and that no one else can write; colu creates them with
mode 0700. A cache directory failing that check is left untouched: a warning
names it and says why, and the kernel is built in a fresh private temporary
directory for the process instead (the fast kernel, at the cost of a compile
in every process until the directory is fixed). A cached library that does
not match its recorded digest (truncated, emptied, replaced, or built by an
older colu) is rebuilt, with a one-line notice on stderr.

Where no compiler works the package still runs: :func:`load` returns ``None``
after one warning and dispatch uses the closed-form backend.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import importlib.util
import os
import platform
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
import warnings
from pathlib import Path

import torch

from colu.ops import abi

try:
    import fcntl
except ImportError:  # not POSIX: concurrent first uses each build (still written atomically)
    fcntl = None

# the C sources include headers from their own directory (colu_abi.h, kernel_*.h): see headers()
SOURCE = Path(__file__).with_name("cpu_kernel.c")
ENTRY_SOURCE = Path(__file__).with_name("cpu_entry.c")
ENTRY_MODULE = "_colu_cpu"  # cpu_entry.c's module name (its PyInit__colu_cpu)
# -fno-math-errno lets sqrt compile to one instruction; -fno-trapping-math lets
# the compiler turn a clamp's branches into selects (the kernels never read the
# floating-point exception flags), without which the loops over pixels of the
# planes path, and every loop through the exponential, stay scalar. No
# -ffast-math: the kernels rely on NaN and infinity behaving as IEEE says.
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fopenmp", "-fPIC", "-shared",
         "-std=gnu11")
ABI_VERSION = abi.VERSION
LIBRARY = "colu_cpu.so"
DIGEST_FILE = LIBRARY + ".sha256"
BUILD_TIME = "usually 30-70 s on a 2-core machine"  # measured with gcc 12, AVX2 and AVX-512 builds
LOCK_FILE = "lock"

_KIND, _SCALING = abi.KINDS, abi.SCALINGS
# colu_run and colu_run_half compute a call whose float32 squared section norms overflowed (section values
# above about 1e19) again in float64, in buffers of a few hundred KB; this is what a failed allocation says
OVERFLOW_NO_MEMORY = (
    "colu: no memory to compute this call again in float64 (its float32 section norms overflowed: values "
    "above about 1e19); free some memory, or pass float64 tensors"
)
HALF_DTYPES = (torch.float16, torch.bfloat16)  # the kernel converts these itself where it can (colu_run_half)
_ACT = abi.AXIS_ACTIVATIONS


class _Config(ctypes.Structure):
    # colu_cfg in colu_abi.h
    _fields_ = [(name, {"int64": ctypes.c_int64, "double": ctypes.c_double}[ctype]) for name, ctype in abi.CONFIG_FIELDS]


class KernelUnavailable(RuntimeError):
    """The CPU kernel could not be built or loaded (the reason is in the message)."""


class _BuildFailed(KernelUnavailable):
    """The compiler failed on the sources."""


class _NotPrivate(KernelUnavailable):
    """A cache directory that others could write into, so nothing in it is loaded."""

    def __init__(self, path: Path, reason: str, fix: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason, self.fix = path, reason, fix


_state = {"lib": None, "error": None, "warned": False}


def compiler() -> str | None:
    """Path of the C compiler to use, or ``None``."""
    cc = os.environ.get("CC")
    if cc:
        return shutil.which(cc)
    return shutil.which("cc") or shutil.which("gcc")


def cache_dir() -> Path:
    """Where builds are cached: ``$COLU_CACHE_DIR``, else ``$XDG_CACHE_HOME/colu`` (only an absolute
    ``XDG_CACHE_HOME`` counts, as the XDG spec says), else ``~/.cache/colu``; always an absolute path."""
    env = os.environ.get("COLU_CACHE_DIR")
    if env:
        return Path(os.path.abspath(os.path.expanduser(env)))
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "colu"


def _uid() -> int | None:
    return os.geteuid() if hasattr(os, "geteuid") else None


def _dir_problem(st: os.stat_result, uid: int | None) -> str | None:
    """Why a directory with this ``stat`` is no place to load code from for user ``uid``; ``None`` if it is."""
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a directory"
    if uid is not None and st.st_uid != uid:
        return f"it is owned by uid {st.st_uid}, not by you (uid {uid})"
    if mode & stat.S_IWOTH:
        return f"it is writable by other users (mode {mode:o})"
    if mode & stat.S_IWGRP:
        return f"it is writable by its group (mode {mode:o})"
    return None


def _private_dir(path: Path) -> None:
    """Create ``path`` with mode 0700 unless it exists; raise :class:`_NotPrivate` if others could write into it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    else:
        os.chmod(path, 0o700)  # whatever the umask
    st, uid = os.stat(path), _uid()
    problem = _dir_problem(st, uid)
    if problem is not None:
        if stat.S_ISDIR(st.st_mode) and st.st_uid == uid:
            fix = f"run `chmod go-w {path}`, or set COLU_CACHE_DIR to a directory only you can write"
        else:
            fix = "set COLU_CACHE_DIR to a directory of your own that only you can write"
        raise _NotPrivate(path, problem, fix)


def _cpu_identity() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags"))][:2]
        return "".join(lines)
    except OSError:
        return platform.processor()


def _python_include() -> str | None:
    """The directory holding ``Python.h`` for this interpreter, or ``None`` (no headers installed)."""
    include = sysconfig.get_paths().get("include")
    return include if include and os.path.isfile(os.path.join(include, "Python.h")) else None


def _sha256(fd: int) -> str:
    digest = hashlib.sha256()
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, 1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


# What the recorded digest is for. Other users are kept out by the directory
# check, not by the digest: only the owner of a directory that no one else can
# write (and root) can create, replace or rename files in it, so a library and
# the digest beside it there can only come from the user's own processes. A
# digest kept anywhere else, or keyed with a secret, would rest on the same
# permissions of the user's own files and add nothing against other users. What
# the digest catches is what the user's processes and the machine leave behind:
# a library truncated or emptied by a full disk or a crash (loading a truncated
# one crashes the process with SIGBUS on its first call; an empty one fails to
# load), one copied over by hand, one from an older colu that recorded none.
# Directories above the cache directory are not checked: whoever can rename
# entries there could swap the cache directory between the check and the load,
# so COLU_CACHE_DIR belongs in a directory where others cannot rename the
# user's entries (the user's own, or a sticky one like /tmp).
_ABSENT = "is missing"


def _library_problem(path: Path) -> str | None:
    """Why the library at ``path`` is not the build recorded beside it (:data:`_ABSENT` when there is
    none); ``None`` when it is."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return _ABSENT
    except OSError as err:
        return f"cannot be opened ({err.strerror})"
    try:
        st, uid = os.fstat(fd), _uid()
        mode = stat.S_IMODE(st.st_mode)
        if not stat.S_ISREG(st.st_mode):
            return "is not a regular file"
        if uid is not None and st.st_uid != uid:
            return f"is owned by uid {st.st_uid}, not by you (uid {uid})"
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            return f"is writable by others than its owner (mode {mode:o})"
        if st.st_size == 0:
            return "is empty"
        try:
            recorded = (path.parent / DIGEST_FILE).read_text().split()[0]
        except (OSError, UnicodeDecodeError, IndexError):
            return f"has no recorded SHA-256 digest ({DIGEST_FILE}; built by an older colu, or not by colu)"
        if _sha256(fd) != recorded:
            return f"does not match the SHA-256 digest recorded when it was built ({st.st_size} bytes: truncated or replaced)"
        return None
    finally:
        os.close(fd)


def _sync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # not every file system syncs directories
    finally:
        os.close(fd)


def _write_file(path: Path, text: str) -> None:
    """Write ``path`` read-only, through a synced temporary file renamed over it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o400)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def _locked(directory: Path):
    """Hold ``directory``'s lock: one process at a time checks, builds and loads there."""
    if fcntl is None:
        yield
        return
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _compile(cc: str, sources: list[Path], extra: list[str], target: Path, cached: bool) -> None:
    """Compile into ``target`` (synced, read-only, renamed into place) and record its digest beside it."""
    # the first call would otherwise stall for half a minute or more without a word
    if cached:
        print(f"colu: compiling the CPU kernel once with {cc} ({BUILD_TIME}; cached in {target.parent})",
              file=sys.stderr, flush=True)
    else:
        print(f"colu: compiling the CPU kernel with {cc} for this process only ({BUILD_TIME}; in {target.parent})",
              file=sys.stderr, flush=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        cmd = [cc, *FLAGS, *extra, *map(str, sources), "-o", tmp, "-lm"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            names = " and ".join(src.name for src in sources)
            raise _BuildFailed(f"{cc} failed to build {names} (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        fd = os.open(tmp, os.O_RDWR)
        try:
            os.fsync(fd)
            digest = _sha256(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o500)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _write_file(target.parent / DIGEST_FILE, f"{digest}  {LIBRARY}\n")
    _sync_dir(target.parent)


def headers() -> list[Path]:
    """The headers the kernel sources include: every ``.h`` beside them (``#include "..."`` finds them there)."""
    return sorted(SOURCE.parent.glob("*.h"))


def _cache_key(cc: str, version: str, sources: list[Path], extra: list[str]) -> str:
    """The name of the cache directory for a build: a hash of everything the compiler reads (the sources
    and :func:`headers`, by name and content), the flags, the compiler and the CPU."""
    texts = [f"{path.name}\n{path.read_text()}" for path in [*sources, *headers()]]
    parts = [*texts, " ".join([*FLAGS, *extra]), cc, version, _cpu_identity(), platform.machine()]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _build_and_open(cc: str, root: Path, python_include: str | None, cached: bool):
    """Open the library under ``root`` (with cpu_entry.c when given the Python headers' directory),
    building it first where it is missing or does not match its recorded digest."""
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    sources, extra = [SOURCE], []
    if python_include is not None:
        sources.append(ENTRY_SOURCE)
        extra = [f"-I{python_include}"]
    target_dir = root / _cache_key(cc, version, sources, extra)
    _private_dir(target_dir)
    target = target_dir / LIBRARY
    with _locked(target_dir):
        problem = _library_problem(target)
        if problem is not None:
            if problem is not _ABSENT:
                print(f"colu: the cached CPU kernel {target} {problem}; rebuilding it", file=sys.stderr, flush=True)
            _compile(cc, sources, extra, target, cached)
            problem = _library_problem(target)
            if problem is not None:
                raise KernelUnavailable(f"{target} {problem} right after it was built")
        return _open(target)


def _load_in(cc: str, root: Path, cached: bool):
    """The library with the CPython entry where the headers are there and it builds, else the kernel alone."""
    _private_dir(root)
    include = _python_include()
    if include is not None:
        try:
            return _build_and_open(cc, root, include, cached)
        except _BuildFailed:
            pass  # the kernel alone reports its own error if it fails too
    return _build_and_open(cc, root, None, cached)


def _load_built(cc: str):
    """The opened library from the cache; from a private temporary directory, removed once it is loaded,
    where the cache directory is not private."""
    try:
        return _load_in(cc, cache_dir(), cached=True)
    except _NotPrivate as err:
        warnings.warn(
            f"colu: not loading the CPU kernel from {err.path}: {err.reason}, so others could put code there that "
            f"would run as you. Building it in a private temporary directory for this process instead (a compile "
            f"in every process). To cache it again, {err.fix}.",
            RuntimeWarning,
            stacklevel=3,
        )
    tmp = tempfile.mkdtemp(prefix="colu-kernel-")
    try:
        return _load_in(cc, Path(tmp), cached=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _open(path: Path):
    lib = ctypes.CDLL(str(path))
    if lib.colu_abi_version() != ABI_VERSION:
        raise KernelUnavailable(f"{path} has ABI {lib.colu_abi_version()}, expected {ABI_VERSION}")
    ptr = ctypes.c_void_p
    lib.colu_run.argtypes = [ptr]
    lib.colu_run.restype = ctypes.c_int
    lib.colu_run_half.argtypes = [ptr]
    lib.colu_run_half.restype = ctypes.c_int
    lib.colu_half_ok.argtypes = [ptr, ctypes.c_int]
    lib.colu_half_ok.restype = ctypes.c_int
    return {"run": lib.colu_run, "run_half": lib.colu_run_half, "half_ok": lib.colu_half_ok, "call": _entry(lib, path)}


def _entry(lib, path: Path):
    """cpu_entry.c's ``call`` where the library has it, else ``None``."""
    if not hasattr(lib, "PyInit_" + ENTRY_MODULE):
        return None
    try:
        spec = importlib.util.spec_from_file_location(ENTRY_MODULE, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except (ImportError, OSError):
        return None  # ctypes still reaches the kernel
    module.init(torch.empty_like, torch.get_num_threads)
    return module.call


# colu_run's argument buffer, one per thread: ctypes releases the GIL during
# the call, so a buffer shared between threads could be overwritten under it.
_tls = threading.local()


def _args_buffer():
    buf = getattr(_tls, "buf", None)
    if buf is None:
        buf = _tls.buf = (ctypes.c_int64 * abi.ARG_COUNT)()
        _tls.addr = ctypes.addressof(buf)
    return buf


# positions in colu_run's argument block (abi.ARG_SLOTS gives the order the tuples below follow)
ARG_X, ARG_OUT, ARG_THREADS = abi.ARG_X, abi.ARG_OUT, abi.ARG_THREADS


def _dtype_flag(dtype: torch.dtype) -> bool:
    # slot 1 of the argument block: float64 for colu_run, bfloat16 for colu_run_half
    return dtype is torch.bfloat16 if dtype in HALF_DTYPES else dtype is torch.float64


def forward_args(x: torch.Tensor, outer: int, C: int, inner: int, cfg: int):
    """A forward argument block for colu_run (colu_run_half for half types) with the per-call slots
    (ARG_X, ARG_OUT, ARG_THREADS) left to fill."""
    return (ctypes.c_int64 * abi.ARG_COUNT)(0, _dtype_flag(x.dtype), 0, 0, 0, outer, C, inner, cfg, 1)


def runs_half(lib, cfg: "_Config", dtype: torch.dtype, inner: int) -> bool:
    """Whether the kernel itself takes a float16/bfloat16 tensor of this configuration (no upcast)."""
    return inner == 1 and bool(lib["half_ok"](ctypes.addressof(cfg), dtype is torch.bfloat16))


def run(lib, backward: int, x: torch.Tensor, grad, out: torch.Tensor, outer: int, C: int, inner: int, cfg: "_Config") -> bool:
    """Call the kernel on contiguous tensors through colu_run (one ctypes argument instead of eight).

    ``grad`` is ``None`` for the forward; ``cfg`` is a :func:`config` struct,
    passed as the object, not its address, so that this frame keeps it alive
    while the kernel runs without the GIL (the cache may evict it meanwhile).
    float16/bfloat16 go to colu_run_half; False where it leaves them to an
    upcast (see :func:`runs_half`).
    """
    buf = _args_buffer()
    buf[:] = (
        backward,
        _dtype_flag(x.dtype),
        x.data_ptr(),
        0 if grad is None else grad.data_ptr(),
        out.data_ptr(),
        outer,
        C,
        inner,
        ctypes.addressof(cfg),
        torch.get_num_threads(),
    )
    if x.dtype in HALF_DTYPES:
        return bool(lib["run_half"](_tls.addr))
    if not lib["run"](_tls.addr):
        raise MemoryError(OVERFLOW_NO_MEMORY)
    return True


def load():
    """The kernel's entry points ``{"run", "run_half", "half_ok", "call"}``, building it on first use;
    ``None`` if unavailable. ``call`` is cpu_entry.c's function, ``None`` where it was not built.

    A failure is reported by one ``RuntimeWarning`` per process and remembered,
    so later calls return ``None`` at once.
    """
    if _state["lib"] is not None or _state["error"] is not None:
        return _state["lib"]
    try:
        cc = compiler()
        if cc is None:
            raise KernelUnavailable(
                f"no C compiler found (CC={os.environ.get('CC')!r}; tried cc and gcc on PATH)"
            )
        _state["lib"] = _load_built(cc)
    except (KernelUnavailable, OSError, subprocess.SubprocessError, AttributeError) as err:
        _state["error"] = err
        if not _state["warned"]:
            _state["warned"] = True
            warnings.warn(
                f"colu: the fused CPU kernel is unavailable, using the closed-form torch backend instead "
                f"(slower, same results). Reason: {err}",
                RuntimeWarning,
                stacklevel=2,
            )
    return _state["lib"]


def failed() -> bool:
    """True once building or loading the kernel has failed in this process."""
    return _state["error"] is not None


def reset() -> None:
    """Forget the loaded library and any failure (the next call to :func:`load` tries again)."""
    _state.update(lib=None, error=None, warned=False)


@functools.lru_cache(maxsize=256)
def config(spec, scaling: str, eps: float, axis_activation: str) -> _Config:
    """The C-side description of a cone configuration (cached: built once per configuration)."""
    G, S = spec.num_cones, spec.cone_dim
    # contiguous cones (spec.contiguous) get the grouped map, cone g at channels g*S ... g*S+S-1, which the
    # kernel runs on its flat path; RCoLU has no axis channel, so that map is the only one it has
    maps = (0, S, 1, S) if spec.contiguous else spec.channel_map()
    return _Config(G, S, *maps, _KIND[spec.kind], int(spec.share_axis), _SCALING[scaling], _ACT[axis_activation], float(eps))


def forward(x: torch.Tensor, spec, scaling: str, eps: float, axis_activation: str) -> torch.Tensor:
    """Forward on a contiguous ``(outer, C, inner)`` CPU tensor.

    float16/bfloat16 are computed in float32: inside the kernel, a chunk at a
    time, where the cones are contiguous channels; by an upcast around it
    otherwise.
    """
    lib = _state["lib"] or load()
    x = x.contiguous()
    y = torch.empty_like(x)
    if run(lib, 0, x, None, y, *x.shape, config(spec, scaling, eps, axis_activation)):
        return y
    return forward(x.float(), spec, scaling, eps, axis_activation).to(x.dtype)


def backward(x: torch.Tensor, grad: torch.Tensor, spec, scaling: str, eps: float, axis_activation: str) -> torch.Tensor:
    """Gradient w.r.t. the input, from the saved input and the upstream gradient (half types as in :func:`forward`)."""
    lib = _state["lib"] or load()
    x = x.contiguous()
    grad = grad.to(x.dtype).contiguous()
    out = torch.empty_like(x)
    if run(lib, 1, x, grad, out, *x.shape, config(spec, scaling, eps, axis_activation)):
        return out
    return backward(x.float(), grad.float(), spec, scaling, eps, axis_activation).to(x.dtype)
