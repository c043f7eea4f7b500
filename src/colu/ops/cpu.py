"""Fused CPU backend: ``cpu_kernel.c`` built on first use, called through ctypes or its CPython entry.

The C file includes no torch headers, so it builds in about a second with the
system C compiler (``$CC``, else ``cc``/``gcc``). Where the Python headers are
installed, ``cpu_entry.c`` is built into the same library: a CPython function
through which planned calls (:mod:`colu.functional`) skip ctypes, about half a
microsecond a call; without the headers everything goes through ctypes.

The shared library is cached under ``$COLU_CACHE_DIR`` (default
``~/.cache/colu``) in a directory named by a hash of the sources, the flags,
the compiler's identity and the CPU (the build uses ``-march=native``), so an
edit, another compiler or another machine gets its own build and concurrent
first uses cannot see a half-written file (it is written under a temporary
name and renamed).

Where no compiler works the package still runs: :func:`load` returns ``None``
after one warning and dispatch uses the closed-form backend.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("cpu_kernel.c")
ENTRY_SOURCE = Path(__file__).with_name("cpu_entry.c")
ENTRY_MODULE = "_colu_cpu"  # cpu_entry.c's module name (its PyInit__colu_cpu)
# -fno-math-errno lets sqrt compile to one instruction; no -ffast-math: the
# kernels rely on NaN comparisons behaving as IEEE says.
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-fPIC", "-shared", "-std=gnu11")
ABI_VERSION = 3

_SCALING = {"hard": 0, "soft": 1, "firm": 2}
HALF_DTYPES = (torch.float16, torch.bfloat16)  # the kernel converts these itself where it can (colu_run_half)
_ACT = {"identity": 0, "relu": 1, "silu": 2}


class _Config(ctypes.Structure):
    # mirrors colu_cfg in cpu_kernel.c
    _fields_ = [
        (name, ctypes.c_int64)
        for name in ("G", "S", "axis_base", "axis_step", "sec_base", "sec_step", "kind", "shared", "scaling", "act")
    ] + [("eps", ctypes.c_double)]


class KernelUnavailable(RuntimeError):
    """The CPU kernel could not be built or loaded (the reason is in the message)."""


_state = {"lib": None, "error": None, "warned": False}


def compiler() -> str | None:
    """Path of the C compiler to use, or ``None``."""
    cc = os.environ.get("CC")
    if cc:
        return shutil.which(cc)
    return shutil.which("cc") or shutil.which("gcc")


def cache_dir() -> Path:
    env = os.environ.get("COLU_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "colu"


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


def _build(cc: str, python_include: str | None = None) -> Path:
    """Build (or find in the cache) the kernel library, with cpu_entry.c when given the Python headers' directory."""
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    sources, extra = [SOURCE], []
    if python_include is not None:
        sources.append(ENTRY_SOURCE)
        extra = [f"-I{python_include}"]
    key = hashlib.sha256(
        "\0".join(
            [*(src.read_text() for src in sources), " ".join([*FLAGS, *extra]), cc, version, _cpu_identity(), platform.machine()]
        ).encode()
    ).hexdigest()[:16]
    target_dir = cache_dir() / key
    target = target_dir / "colu_cpu.so"
    if target.exists():
        return target
    target_dir.mkdir(parents=True, exist_ok=True)
    # the first call would otherwise stall for 10-40 s without a word
    print(f"colu: compiling the CPU kernel once with {cc} (cached in {target_dir})", file=sys.stderr, flush=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target_dir)
    os.close(fd)
    try:
        cmd = [cc, *FLAGS, *extra, *map(str, sources), "-o", tmp, "-lm"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            names = " and ".join(src.name for src in sources)
            raise KernelUnavailable(f"{cc} failed to build {names} (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _open(path: Path):
    lib = ctypes.CDLL(str(path))
    if lib.colu_abi_version() != ABI_VERSION:
        raise KernelUnavailable(f"{path} has ABI {lib.colu_abi_version()}, expected {ABI_VERSION}")
    ptr = ctypes.c_void_p
    lib.colu_run.argtypes = [ptr]
    lib.colu_run.restype = None
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
        buf = _tls.buf = (ctypes.c_int64 * 10)()
        _tls.addr = ctypes.addressof(buf)
    return buf


# positions in colu_run's argument block
ARG_X, ARG_OUT, ARG_THREADS = 2, 4, 9


def _dtype_flag(dtype: torch.dtype) -> bool:
    # slot 1 of the argument block: float64 for colu_run, bfloat16 for colu_run_half
    return dtype is torch.bfloat16 if dtype in HALF_DTYPES else dtype is torch.float64


def forward_args(x: torch.Tensor, outer: int, C: int, inner: int, cfg: int):
    """A forward argument block for colu_run (colu_run_half for half types) with the per-call slots
    (ARG_X, ARG_OUT, ARG_THREADS) left to fill."""
    return (ctypes.c_int64 * 10)(0, _dtype_flag(x.dtype), 0, 0, 0, outer, C, inner, cfg, 1)


def runs_half(lib, cfg: int, dtype: torch.dtype, inner: int) -> bool:
    """Whether the kernel itself takes a float16/bfloat16 tensor of this configuration (no upcast)."""
    return inner == 1 and bool(lib["half_ok"](cfg, dtype is torch.bfloat16))


def run(lib, backward: int, x: torch.Tensor, grad, out: torch.Tensor, outer: int, C: int, inner: int, cfg: int) -> bool:
    """Call the kernel on contiguous tensors through colu_run (one ctypes argument instead of eight).

    ``grad`` is ``None`` for the forward; ``cfg`` is the address of a
    :func:`config`. float16/bfloat16 go to colu_run_half; False where it
    leaves them to an upcast (see :func:`runs_half`).
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
        cfg,
        torch.get_num_threads(),
    )
    if x.dtype in HALF_DTYPES:
        return bool(lib["run_half"](_tls.addr))
    lib["run"](_tls.addr)
    return True


def _build_any(cc: str) -> Path:
    """The library with the CPython entry where the headers are there and it builds, else the kernel alone."""
    include = _python_include()
    if include is not None:
        try:
            return _build(cc, include)
        except KernelUnavailable:
            pass  # the kernel alone reports its own error if it fails too
    return _build(cc)


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
        _state["lib"] = _open(_build_any(cc))
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
    maps = (0, 0, 0, 0) if spec.kind == "rcolu" else spec.channel_map()  # RCoLU cones are g*S ... g*S+S-1
    return _Config(G, S, *maps, int(spec.kind == "rcolu"), int(spec.share_axis), _SCALING[scaling], _ACT[axis_activation], float(eps))


def _cfg_ptr(spec, scaling, eps, axis_activation) -> int:
    return ctypes.addressof(config(spec, scaling, eps, axis_activation))


def forward(x: torch.Tensor, spec, scaling: str, eps: float, axis_activation: str) -> torch.Tensor:
    """Forward on a contiguous ``(outer, C, inner)`` CPU tensor.

    float16/bfloat16 are computed in float32: inside the kernel, a chunk at a
    time, where the cones are contiguous channels; by an upcast around it
    otherwise.
    """
    lib = _state["lib"] or load()
    x = x.contiguous()
    y = torch.empty_like(x)
    if run(lib, 0, x, None, y, *x.shape, _cfg_ptr(spec, scaling, eps, axis_activation)):
        return y
    return forward(x.float(), spec, scaling, eps, axis_activation).to(x.dtype)


def backward(x: torch.Tensor, grad: torch.Tensor, spec, scaling: str, eps: float, axis_activation: str) -> torch.Tensor:
    """Gradient w.r.t. the input, from the saved input and the upstream gradient (half types as in :func:`forward`)."""
    lib = _state["lib"] or load()
    x = x.contiguous()
    grad = grad.to(x.dtype).contiguous()
    out = torch.empty_like(x)
    if run(lib, 1, x, grad, out, *x.shape, _cfg_ptr(spec, scaling, eps, axis_activation)):
        return out
    return backward(x.float(), grad.float(), spec, scaling, eps, axis_activation).to(x.dtype)
