"""The kernels' interface in numbers and names, for every Python module that calls a kernel.

``colu_abi.h`` states the same for the C kernel; ``tests/test_abi.py``
parses it and checks it against this module, so the two cannot drift apart.
The Triton kernels take the same enum values as constexpr arguments.

Changing a value, a slot or a field means changing :data:`VERSION` and
``COLU_ABI_VERSION`` together: the loader refuses a library whose version
differs, which a cached build of older sources would otherwise misread.
"""

from __future__ import annotations

VERSION = 5
"""``COLU_ABI_VERSION``: what ``colu_abi_version()`` of a matching library returns."""

KINDS = {"colu": 0, "rcolu": 1}
"""``enum colu_kind``: ``colu_cfg.kind``."""

SCALINGS = {"hard": 0, "soft": 1, "firm": 2, "sqrt": 3, "log": 4}
"""``enum colu_scaling``: the weight of the section, ``colu_cfg.scaling`` (the Triton kernels' ``SCALING``): the
weightings of :data:`colu.spec.KERNEL_SCALINGS`, in that order."""

AXIS_ACTIVATIONS = {"identity": 0, "relu": 1, "silu": 2}
"""``enum colu_act``: the axis activation, ``colu_cfg.act`` (the Triton kernels' ``ACT``)."""

ARG_SLOTS = ("backward", "dtype", "x", "grad", "out", "outer", "c", "inner", "cfg", "threads")
"""The int64 argument block of ``colu_run``/``colu_run_half``, in order: slot ``i`` is
``COLU_ARG_<NAME>`` in ``enum colu_arg``. ``dtype`` is 1 for float64 (``colu_run``) or
bfloat16 (``colu_run_half``), 0 for float32 or float16; pointers and ``cfg`` (the address
of a ``colu_cfg``) are stored as integers."""

ARG_COUNT = len(ARG_SLOTS)
ARG_BACKWARD, ARG_DTYPE, ARG_X, ARG_GRAD, ARG_OUT, ARG_OUTER, ARG_C, ARG_INNER, ARG_CFG, ARG_THREADS = range(ARG_COUNT)

CONFIG_FIELDS = (
    ("G", "int64"),
    ("S", "int64"),
    ("axis_base", "int64"),
    ("axis_step", "int64"),
    ("sec_base", "int64"),
    ("sec_step", "int64"),
    ("kind", "int64"),
    ("shared", "int64"),
    ("scaling", "int64"),
    ("act", "int64"),
    ("eps", "double"),
)
"""The fields of ``colu_cfg``, in order, with their C types."""
