"""The one place that chooses how a cone activation is computed.

``forward``/``backward`` take contiguous ``(outer, C, inner)`` tensors and
return a tensor of the same shape and dtype. float16/bfloat16 are computed
in float32: the Triton kernel loads half values as they are and upcasts in
registers, the C kernel converts a chunk of cones at a time into float32
buffers where cones are contiguous channels (one read and one write of the
half tensor either way), and the closed form (and the C kernel on other
layouts) upcasts around itself. Backends:

* ``"closed_form"``: torch ops (:mod:`colu.ops.closed_form`), any device and
  dtype, differentiable (used for double backward).
* ``"cpu"``: the fused C kernel (:mod:`colu.ops.cpu`), CPU tensors.
* ``"triton"``: the fused Triton kernel (:mod:`colu.ops.triton_kernels`),
  CUDA tensors (or CPU tensors under ``TRITON_INTERPRET=1``, for testing).
* ``"fusible"``: torch ops written for ``torch.compile`` (:mod:`colu.ops.fusible`),
  any device; compiled, Inductor fuses them with the neighbouring ops. Only when forced:
  ``"auto"`` keeps the kernels, measured faster on CPU (``docs/kernels.md``).

``"auto"`` (the default) picks ``"cpu"`` for CPU tensors when the C kernel
builds, ``"triton"`` for CUDA tensors when triton is installed, and
``"closed_form"`` otherwise, and always while ``torch.export`` (and so
``torch.onnx.export(dynamo=True)``) traces, so exported graphs contain only
aten ops. Under ``torch.compile`` the kernels run as the custom ops
``colu::cone_forward``/``colu::cone_backward`` (:mod:`colu.ops.custom`, through
:class:`colu.ops.autograd.CompiledKernelFunction`).

Set ``COLU_BACKEND`` (or pass ``backend=`` to :func:`colu.colu`) to force a
backend; a forced kernel that cannot run raises ``RuntimeError`` naming why.
:data:`calls` counts, per backend, the eager forward/backward calls that ran.
"""

from __future__ import annotations

import collections
import importlib.util
import os

import torch

from colu.ops import closed_form, cpu, fusible
from colu.spec import KERNEL_SCALINGS

BACKENDS = ("auto", "closed_form", "cpu", "triton", "fusible")
HALF_DTYPES = cpu.HALF_DTYPES
KERNEL_DTYPES = (torch.float32, torch.float64, *HALF_DTYPES)

calls: collections.Counter = collections.Counter()
"""``calls["cpu"]`` etc.: how many eager forward/backward calls each backend ran (for tests and debugging)."""

_triton = {"checked": False, "ok": False}


def _triton_installed() -> bool:
    if not _triton["checked"]:
        _triton.update(checked=True, ok=importlib.util.find_spec("triton") is not None)
    return _triton["ok"]


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _exporting() -> bool:
    return torch.compiler.is_exporting()


# os.environ encodes the key on every lookup, about half a microsecond: a real
# share of a small tensor's call. CPython's os.environ reads from (and its
# setters update) an encoded dict, _data; a lookup there sees the same value.
_ENV_DATA = getattr(os.environ, "_data", None)
_ENV_KEY = os.environ.encodekey("COLU_BACKEND") if _ENV_DATA is not None else None


def env_token():
    """``COLU_BACKEND``'s current value in a cheap, comparable form (for cache keys), ``None`` when unset."""
    if _ENV_DATA is None:
        return os.environ.get("COLU_BACKEND")
    return _ENV_DATA.get(_ENV_KEY)


def select(x: torch.Tensor, backend: str = "auto", scaling: str = "hard") -> str:
    """Name of the backend that will run ``x`` with ``scaling``, after ``COLU_BACKEND`` and the checks above.

    The kernels compute the weightings of :data:`colu.spec.KERNEL_SCALINGS`; the exact projection runs on the
    closed form (``"auto"``), and a forced kernel refuses it."""
    if backend == "auto":
        backend = os.environ.get("COLU_BACKEND") or "auto"
        where = "COLU_BACKEND"
    else:
        where = "backend"
    if backend not in BACKENDS:
        raise ValueError(f"unknown {where}={backend!r}; expected one of {', '.join(map(repr, BACKENDS))}")
    if backend == "closed_form" or _exporting():
        return "closed_form"
    if backend == "fusible":
        return "fusible" if scaling in KERNEL_SCALINGS else "closed_form"
    if scaling not in KERNEL_SCALINGS:
        if backend != "auto":
            raise RuntimeError(
                f"{where}={backend!r} does not compute scaling={scaling!r}, which runs on the closed form only; "
                "use backend='auto' or 'closed_form'"
            )
        return "closed_form"
    compiling = torch.compiler.is_compiling()
    device = x.device.type
    if backend == "auto":
        if x.dtype not in KERNEL_DTYPES:
            return "closed_form"
        if device == "cpu":
            usable = not cpu.failed() if compiling else cpu.load() is not None
            return "cpu" if usable else "closed_form"
        if device == "cuda" and _triton_installed():
            return "triton"
        return "closed_form"
    # a forced kernel
    if x.dtype not in KERNEL_DTYPES:
        raise RuntimeError(f"{where}={backend!r} supports float16/bfloat16/float32/float64, got dtype={x.dtype}")
    if backend == "cpu":
        if device != "cpu":
            raise RuntimeError(f"{where}='cpu' needs a CPU tensor, got device={x.device}; use 'auto' or 'triton'")
        if not compiling and cpu.load() is None:
            raise RuntimeError(f"{where}='cpu' was requested but the CPU kernel is unavailable: {cpu._state['error']}")
        return "cpu"
    if not _triton_installed():
        raise RuntimeError(f"{where}='triton' was requested but triton is not installed (pip install triton)")
    if device != "cuda" and not (device == "cpu" and _interpreting()):
        raise RuntimeError(
            f"{where}='triton' needs a CUDA tensor (or TRITON_INTERPRET=1 for CPU tensors), got device={x.device}"
        )
    return "triton"


def kernel_forward(x, spec, scaling, eps, axis_activation, backend):
    if backend == "cpu":
        return cpu.forward(x, spec, scaling, eps, axis_activation)
    from colu.ops import triton_kernels

    return triton_kernels.forward(x, spec, scaling, eps, axis_activation)


def kernel_backward(x, grad, spec, scaling, eps, axis_activation, backend):
    if backend == "cpu":
        return cpu.backward(x, grad, spec, scaling, eps, axis_activation)
    from colu.ops import triton_kernels

    return triton_kernels.backward(x, grad, spec, scaling, eps, axis_activation)


def forward(x, spec, scaling, eps, axis_activation, backend="closed_form"):
    if backend == "fusible":
        if not torch.compiler.is_compiling():
            calls["fusible"] += 1
        return fusible.cone_forward(x, spec, scaling, eps, axis_activation)
    if backend == "closed_form":
        if x.dtype in HALF_DTYPES:
            return forward(x.float(), spec, scaling, eps, axis_activation).to(x.dtype)
        if not torch.compiler.is_compiling():
            calls["closed_form"] += 1
        return closed_form.cone_forward(x, spec, scaling, eps, axis_activation)
    calls[backend] += 1
    return kernel_forward(x, spec, scaling, eps, axis_activation, backend)


def backward(x, grad, spec, scaling, eps, axis_activation, backend="closed_form"):
    if backend == "fusible":
        if not torch.compiler.is_compiling():
            calls["fusible"] += 1
        return fusible.cone_backward(x, grad, spec, scaling, eps, axis_activation)
    if backend == "closed_form":
        if x.dtype in HALF_DTYPES:
            return backward(x.float(), grad.float(), spec, scaling, eps, axis_activation).to(x.dtype)
        if not torch.compiler.is_compiling():
            calls["closed_form"] += 1
        return closed_form.cone_backward(x, grad, spec, scaling, eps, axis_activation)
    calls[backend] += 1
    return kernel_backward(x, grad.contiguous(), spec, scaling, eps, axis_activation, backend)
