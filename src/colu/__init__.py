"""Conic Linear Units (CoLU) for PyTorch.

``colu.colu``/``colu.rcolu`` are the functional ops, ``colu.CoLU``/``colu.RCoLU``
their modules, ``colu.ConeSpec`` the channel layout they share and
``colu.reference`` the plain-torch oracle every faster path is tested against.
"""

from . import reference
from .convert import convert
from .functional import colu, rcolu
from .modules import CoLU, RCoLU
from .spec import ConeSpec

__version__ = "0.1.0"

__all__ = ["colu", "rcolu", "CoLU", "RCoLU", "ConeSpec", "reference", "convert", "__version__"]
