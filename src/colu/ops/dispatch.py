"""The one place that chooses how a cone activation is computed.

``forward``/``backward`` take ``(outer, C, inner)`` tensors in float32 or
float64 and return a tensor of the same shape. Backends:

* ``"closed_form"``: torch ops (:mod:`colu.ops.closed_form`), any device.

Set ``COLU_BACKEND=closed_form`` (or pass ``backend=`` to
:func:`colu.colu`) to force a backend; ``"auto"`` picks the fastest one
available for the tensor.
"""

from __future__ import annotations

import os

from . import closed_form

BACKENDS = ("auto", "closed_form")


def select(x, backend: str = "auto") -> str:
    """Name of the backend that will run ``x``."""
    if backend == "auto":
        backend = os.environ.get("COLU_BACKEND", "auto")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend={backend!r}; expected one of {', '.join(map(repr, BACKENDS))}")
    return "closed_form"


def forward(x, spec, scaling, eps, axis_activation, backend="closed_form"):
    return closed_form.cone_forward(x, spec, scaling, eps, axis_activation)


def backward(x, grad, spec, scaling, eps, axis_activation, backend="closed_form"):
    return closed_form.cone_backward(x, grad, spec, scaling, eps, axis_activation)
