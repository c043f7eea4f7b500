"""What the ``colu`` command is made of, apart from the library: the command line (``cli``), the benchmark
(``bench``), the explanatory figures (``plots``), the convert-and-fine-tune check (``convert_check``) and the
fine-tuning of a pretrained diffusers pipeline (``finetune``).

Nothing in the core imports this package, apart from ``colu.load_converted``, which is ``finetune``'s and is
imported only when it is first used.
"""

import importlib

_TOOLS = ("bench", "cli", "convert_check", "finetune", "plots")


def __getattr__(name):
    # each tool is imported on first use, so `colu.tools.bench` never pays for matplotlib
    if name in _TOOLS:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_TOOLS))
