"""The ``colu`` command line.

Each subcommand lives in its own module and is imported only when it is run,
so ``colu bench`` never pays for matplotlib and ``colu --help`` stays fast.
A command is ``"module:function"`` where ``function(argv) -> int`` parses its
own arguments.

A plain ``pip install colu`` brings only torch and numpy. Commands that need
more name the modules they import and the extra that installs them, and are
refused up front when one is missing, rather than failing half-way through.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

# import names of what pyproject's `experiments` extra installs (pyyaml is `yaml`, scikit-learn `sklearn`)
EXPERIMENTS_NEEDS = ("scipy", "matplotlib", "tqdm", "yaml", "sklearn")

COMMANDS = {
    "demo": ("colu.experiments.demo:main", "train small networks with ReLU vs CoLU on built-in data"),
    "bench": ("colu.tools.bench:main", "time CoLU/RCoLU against ReLU/SiLU/GELU"),
    "plot": ("colu.tools.plots:main", "draw the explanatory figures (conic projection, weightings, symmetry) as PNGs"),
    "convert-check": ("colu.tools.convert_check:main", "convert a trained ReLU/SiLU model to CoLU and fine-tune the loss back"),
    "run": ("colu.experiments.commands:run_main", "run a paper experiment (colu run --help lists them)"),
    "sweep": ("colu.experiments.commands:sweep_main", "run an experiment over its grid of activations x seeds"),
    "report": ("colu.experiments.commands:report_main", "rebuild report.md and plots of a run directory"),
    "align": ("colu.experiments.align_cmd:main", "align two trained seeds and measure loss barriers"),
}

# command -> (the extra that installs them, the modules it imports beyond torch and numpy); every command is
# listed, so that a new one has to say what it needs
NEEDS = {
    "bench": (None, ()),
    "convert-check": (None, ()),
    "demo": ("experiments", EXPERIMENTS_NEEDS),
    "run": ("experiments", EXPERIMENTS_NEEDS),
    "sweep": ("experiments", EXPERIMENTS_NEEDS),
    "report": ("experiments", EXPERIMENTS_NEEDS),
    "align": ("experiments", EXPERIMENTS_NEEDS),
    "plot": ("tools", ("matplotlib",)),
}


def _version() -> str:
    from .. import __version__

    return __version__


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        "usage: colu COMMAND [options]   (colu COMMAND --help for a command's options)",
        "       colu --version",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    return "\n".join(lines)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        # ValueError: already imported without a spec (e.g. injected into sys.modules), so it is there
        return module in sys.modules


def missing_modules(name: str) -> list:
    """The modules command ``name`` imports that are not installed."""
    _, modules = NEEDS[name]
    return [m for m in modules if not _installed(m)]


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"colu {_version()}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"colu: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    missing = missing_modules(name)
    if missing:
        extra = NEEDS[name][0]
        print(f"colu {name}: needs {', '.join(missing)} (not installed): pip install 'colu[{extra}]'",
              file=sys.stderr)
        return 2
    module, function = COMMANDS[name][0].split(":")
    return int(getattr(importlib.import_module(module), function)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
