"""The commands the experiment suite adds to ``colu`` (the ``colu.commands`` entry point in pyproject.toml).

The framework's commands are listed here; each experiment's own commands
(``colu sample``, ``colu palettes``, ``colu finetune-diffusers``) come from
the registry, declared by the experiment that owns them.
"""

from __future__ import annotations

from colu.tools.cli import Command
from colu_lab.registry import experiment_commands

# import names of what pyproject's `experiments` extra installs (pyyaml is `yaml`, scikit-learn `sklearn`)
EXPERIMENTS_NEEDS = ("scipy", "matplotlib", "tqdm", "yaml", "sklearn")


def _plot_needs(options) -> tuple:
    """``colu plot --from DIR`` draws a run folder's figures, which loads the experiment and its data."""
    if any(a == "--from" or a.startswith("--from=") for a in options):
        return "experiments", EXPERIMENTS_NEEDS
    return "tools", ("matplotlib",)


COMMANDS = {
    "demo": Command("colu_lab.commands.demo:main", "train small networks with ReLU vs CoLU on built-in data",
                    "experiments", EXPERIMENTS_NEEDS),
    "run": Command("colu_lab.commands.train:run_main", "run a paper experiment (colu run --help lists them)",
                   "experiments", EXPERIMENTS_NEEDS),
    "sweep": Command("colu_lab.commands.train:sweep_main", "run an experiment over its grid of activations x seeds",
                     "experiments", EXPERIMENTS_NEEDS),
    "report": Command("colu_lab.commands.train:report_main", "rebuild report.md and plots of a run directory",
                      "experiments", EXPERIMENTS_NEEDS),
    "align": Command("colu_lab.commands.align:main", "align two trained seeds and measure loss barriers",
                     "experiments", EXPERIMENTS_NEEDS),
    "plot": Command("colu_lab.commands.plot:main",
                    "draw the explanatory figures (conic projection, weightings, symmetry) as PNGs, "
                    "or with --from DIR a run's result figures", needs_for=_plot_needs),
    **experiment_commands(),
}
