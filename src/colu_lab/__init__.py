"""The experiment suite of ``colu``: every experiment of the CoLU paper, runnable with one command.

* ``framework/``: what every experiment shares: the contract an experiment
  satisfies (``contract``), settings and presets (``config``), the training
  loop and checkpoints (``runner``, ``rundir``), reports and verdicts
  (``report``), data loaders (``data``, ``image_folder``), batches and the
  small shared networks. It never imports an experiment.
* ``experiments/NAME/``: one folder per experiment: its contract object
  (``experiment.py``), its model, its figures and its own commands.
* ``registry``: the experiments by name. ``commands/``: ``colu run``, ``sweep``,
  ``report``, ``align``, ``demo`` and ``plot``, which look experiments up there.

The library (``colu``) never imports this package; the ``colu`` command
finds the suite's commands through the ``colu.commands`` entry point
(``colu_lab.cli``).
"""
