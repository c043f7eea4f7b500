"""The experiments ``colu run``, ``colu sweep``, ``colu report`` and ``colu align`` know, by name, and their commands.

Each experiment is one folder under ``colu_lab/experiments/`` whose
``experiment.py`` builds its :class:`colu_lab.framework.contract.Experiment`
(``EXPERIMENT``); nothing else in the suite names one. To add an experiment,
write its folder and list it here (or :func:`register` it). The framework
never imports this module: the commands hand it the experiment they run.
"""

from __future__ import annotations

from colu_lab.experiments.cap_rotation.experiment import EXPERIMENT as cap_rotation
from colu_lab.experiments.diffusion_unet.experiment import EXPERIMENT as diffusion_unet
from colu_lab.experiments.gpt_shakespeare.experiment import EXPERIMENT as gpt_shakespeare
from colu_lab.experiments.hemisphere.experiment import EXPERIMENT as hemisphere
from colu_lab.experiments.mnist_mlp.experiment import EXPERIMENT as mnist_mlp
from colu_lab.experiments.mnist_vae.experiment import EXPERIMENT as mnist_vae
from colu_lab.experiments.resnet_cifar.experiment import EXPERIMENT as resnet_cifar
from colu_lab.experiments.sd_finetune.command import COMMANDS as sd_finetune_commands
from colu_lab.framework.contract import Experiment

EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (hemisphere, mnist_mlp, mnist_vae, gpt_shakespeare,
                                                          resnet_cifar, cap_rotation, diffusion_unet)}

# the Stable Diffusion fine-tune is a paper experiment without a run contract (pretrained weights, its own
# loop): its folder contributes only its command
OTHER_COMMANDS = (sd_finetune_commands,)


def register(experiment: Experiment) -> Experiment:
    """Add ``experiment`` under its name; a name already taken by another experiment is an error."""
    if not isinstance(experiment, Experiment):
        raise TypeError(f"register() takes an Experiment, not {type(experiment).__name__}")
    known = EXPERIMENTS.get(experiment.name)
    if known is not None and known is not experiment:
        raise ValueError(f"an experiment named {experiment.name!r} is already registered; choose another name")
    EXPERIMENTS[experiment.name] = experiment
    return experiment


def experiment_commands() -> dict:
    """The commands the experiments declare (``Experiment.commands``), name -> :class:`colu.tools.cli.Command`."""
    found = {}
    for table in [e.commands for e in EXPERIMENTS.values()] + list(OTHER_COMMANDS):
        for name, command in table.items():
            if name in found:
                raise ValueError(f"two experiments declare the command {name!r}; each name is declared once")
            found[name] = command
    return found
