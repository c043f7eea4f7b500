"""The experiments ``colu run``, ``colu sweep``, ``colu report`` and ``colu align`` know, by name.

Each is an :class:`colu.experiments.contract.Experiment` built by its own
module (``EXPERIMENT``); nothing else in the package names one. To add an
experiment, write its module and list it here (or :func:`register` it).
"""

from __future__ import annotations

from . import cap_rotation, diffusion_unet, gpt_shakespeare, hemisphere, mnist_mlp, mnist_vae, resnet_cifar
from .contract import Experiment

EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (hemisphere.EXPERIMENT, mnist_mlp.EXPERIMENT,
                                                          mnist_vae.EXPERIMENT, gpt_shakespeare.EXPERIMENT,
                                                          resnet_cifar.EXPERIMENT,
                                                          cap_rotation.EXPERIMENT, diffusion_unet.EXPERIMENT)}


def register(experiment: Experiment) -> Experiment:
    """Add ``experiment`` under its name; a name already taken by another experiment is an error."""
    if not isinstance(experiment, Experiment):
        raise TypeError(f"register() takes an Experiment, not {type(experiment).__name__}")
    known = EXPERIMENTS.get(experiment.name)
    if known is not None and known is not experiment:
        raise ValueError(f"an experiment named {experiment.name!r} is already registered; choose another name")
    EXPERIMENTS[experiment.name] = experiment
    return experiment
