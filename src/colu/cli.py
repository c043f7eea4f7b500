"""The ``colu`` command line.

Each subcommand lives in its own module and is imported only when it is run,
so ``colu bench`` never pays for matplotlib and ``colu --help`` stays fast.
A command is ``"module:function"`` where ``function(argv) -> int`` parses its
own arguments.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "demo": ("colu.experiments.demo:main", "train small networks with ReLU vs CoLU on built-in data"),
    "bench": ("colu.bench:main", "time CoLU/RCoLU against ReLU/SiLU/GELU"),
    "plot": ("colu.plots:main", "draw the explanatory figures (conic projection, weightings, symmetry) as PNGs"),
    "convert-check": ("colu.convert_check:main", "convert a trained ReLU/SiLU model to CoLU and fine-tune the loss back"),
    "run": ("colu.experiments.commands:run_main", "run a paper experiment (hemisphere, mnist-mlp, mnist-vae)"),
    "sweep": ("colu.experiments.commands:sweep_main", "run an experiment over its grid of activations x seeds"),
    "report": ("colu.experiments.commands:report_main", "rebuild report.md and plots of a run directory"),
    "align": ("colu.experiments.align_cmd:main", "align two trained seeds and measure loss barriers"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: colu COMMAND [options]   (colu COMMAND --help for a command's options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"colu: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module, function = COMMANDS[name][0].split(":")
    return int(getattr(importlib.import_module(module), function)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
