"""Conic Linear Units (CoLU) for PyTorch.

``colu.colu``/``colu.rcolu`` are the functional ops, ``colu.CoLU``/``colu.RCoLU``
their modules, ``colu.ConeSpec`` the channel layout they share and
``colu.reference`` the plain-torch oracle every faster path is tested against.
``colu.convert(model, ...)`` swaps a model's activations for CoLU; the same
name is the module :mod:`colu.convert` (``colu.convert.ConversionReport``).
"""

import importlib

from . import convert, reference
from .functional import bregman_divergence, colu, potential, rcolu
from .modules import CoLU, RCoLU
from .spec import ConeSpec

__version__ = "0.1.0"

__all__ = [
    "colu", "rcolu", "CoLU", "RCoLU", "ConeSpec", "potential", "bregman_divergence", "reference", "convert",
    "__version__",
]

# Submodules imported on first attribute access (PEP 562): `colu.align.match_weights` works after a bare
# `import colu`, while `import colu` itself stays free of scipy, matplotlib and the experiments package.
_LAZY_SUBMODULES = ("align", "experiments", "files", "groups", "ops", "symmetry", "tools")
# functions imported on first access, from the submodule named: `colu.load_converted` needs diffusers only when used
_LAZY_FUNCTIONS = {"load_converted": "tools.finetune"}


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        # import_module also binds the submodule on this package, so later lookups skip this function
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY_FUNCTIONS:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY_FUNCTIONS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_SUBMODULES) | set(_LAZY_FUNCTIONS))
