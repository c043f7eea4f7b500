"""Renderers of the generated tables in docs/performance.md (see docs/generate.py)."""

from __future__ import annotations

RENDERERS = {}
