"""Conic Linear Units (CoLU) for PyTorch.

``colu.colu``/``colu.rcolu`` are the functional ops, ``colu.CoLU``/``colu.RCoLU``
their modules, ``colu.ConeSpec`` the channel layout they share and
``colu.reference`` the plain-torch oracle every faster path is tested against.
``colu.convert(model, ...)`` swaps a model's activations for CoLU; the same
name is the module :mod:`colu.convert` (``colu.convert.ConversionReport``).
"""

import importlib

from colu import convert, reference
from colu.functional import bregman_divergence, colu, potential, rcolu
from colu.modules import CoLU, RCoLU
from colu.spec import ConeSpec

__version__ = "0.1.0"

__all__ = [
    "colu", "rcolu", "CoLU", "RCoLU", "ConeSpec", "potential", "bregman_divergence", "reference", "convert",
    "__version__",
]

# Submodules imported on first attribute access (PEP 562): `colu.align.match_weights` works after a bare
# `import colu`, while `import colu` itself stays free of scipy and matplotlib.
_LAZY_SUBMODULES = ("align", "files", "groups", "ops", "symmetry", "tools")


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        # import_module also binds the submodule on this package, so later lookups skip this function
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))
