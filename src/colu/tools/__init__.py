"""What the ``colu`` command is made of in the library: the command line (``cli``), the benchmark
(``bench``) and the convert-and-fine-tune check (``convert_check``). The experiment suite's commands come from
the ``colu_lab`` package, through the ``colu.commands`` entry point (see ``cli``).

Nothing in the core imports this package.
"""

import importlib

_TOOLS = ("bench", "cli", "convert_check")


def __getattr__(name):
    # each tool is imported on first use
    if name in _TOOLS:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_TOOLS))
