"""The experiment contract: all the runner, the report and the command line know about an experiment.

An experiment is one module that builds an :class:`Experiment` and names it
``EXPERIMENT``; :mod:`colu.experiments.registry` lists them. Nothing outside
the experiment's module mentions it by name: ``colu run``'s choices and
``--help``, the training loop, the report, the paper's numbers and claims it
is compared with, and ``colu align`` all read these fields.

Required fields
---------------
``name``
    the command-line name (``colu run NAME``).
``summary``
    one line for ``--help`` and the report ("Sec. 5.3, Table 3: ...").
``Config``
    a dataclass subclassing :class:`colu.experiments.config.TrainConfig`,
    with the experiment's own keys and its defaults.
``metrics``
    final metric name -> True when higher is better, in table order.
``default_activations(cfg) -> list[str]``
    the activation specs ``colu run`` trains when none are given.
``load_data(cfg) -> data``
    the data object: ``data.summary()`` must return a dict with
    ``description``, ``train_examples``, ``test_examples``, ``input_dim`` and
    ``notes`` (see :class:`colu.experiments.data.Data`), and may add
    ``differs_from_paper``, a list of reasons the data is not the paper's
    (the report then calls the numbers not comparable).
``build_model(cfg, act, data) -> (model, width)``
    the network for activation spec ``act``
    (:class:`colu.experiments.activations.ActivationSpec`) and the width it
    gave the activation. Called after ``torch.manual_seed(seed)``.
``train_loss(net, x, y, cfg, *, global_batch, world) -> loss``
    the loss of a process's share ``x, y`` of a global batch of
    ``global_batch`` examples, scaled so that the average of the ``world``
    processes' gradients (what DDP computes) is the gradient of the mean loss
    over the global batch.
``evaluate(model, data, cfg, device) -> dict``
    metric name -> float, at every evaluation point (under ``torch.no_grad``,
    model in eval mode).

Optional fields (defaults in brackets)
--------------------------------------
``curve_metrics``
    metrics plotted over training [all of ``metrics``].
``log_metrics``
    curve metrics plotted on a log scale when all their values are positive [none].
``curve_x``
    ``"epoch"`` or ``"step"``: the x axis of the curve plots ["epoch"].
``final_metrics(curve) -> dict``
    the run's final metrics from its evaluation points [the last point's
    values of ``metrics``].
``sweep_grid(cfg) -> list[str]``
    the activations ``colu sweep`` runs [``default_activations``].
``check_activation(cfg, act, data)``
    raise ValueError if ``act`` cannot be trained, before any training
    starts [build the model once and drop it].
``datasets``
    the ``--dataset`` names ``--data`` may hold for this experiment; empty
    when it generates its own data [()].
``data_help``
    a sentence for ``--data``'s help naming the files read [""].
``data_is_file``
    ``--data`` names one file that ``load_data`` reads itself (a text
    corpus), not a folder whose dataset is recognised from its files; there
    is then no ``--dataset`` to give [False].
``presets``
    preset name -> :class:`Preset`. ``--preset NAME`` applies the settings
    (``--quick`` is ``--preset quick``); explicit options win. By
    convention ``paper`` holds exactly the paper's settings, ``cpu`` a budget
    for a 2-core CPU and ``quick`` a smoke test [none].
``paper``
    :class:`colu.experiments.paper.PaperReference`: the paper's numbers,
    claims and settings the report compares with [nothing to compare].
``report_note``
    a paragraph added to the report [""].
``batches(data, cfg, seed, step) -> tuple of tensors``
    the global batch of optimizer step ``step`` (0-based) for run seed
    ``seed``: ``(x, y)``, examples along dimension 0. It must be a function
    of its arguments alone (data order and augmentation draws included), so
    that a resumed run sees exactly the batches an uninterrupted one does.
    The runner gives each process rows ``rank::world`` and moves them to the
    device [:func:`permutation_batch`: the training set in the order of a
    per-epoch permutation].
``train_examples(data) -> int``
    the number of training examples one epoch visits, for ``--epochs`` and
    the report [``len(data.x_train)``].
``data_on_device``
    move ``data.x_train`` and ``data.y_train`` to the device once before
    training (small data sets; batches are then cut there); otherwise only
    each batch is moved [False].
``parameter_groups(model, cfg) -> list[dict]``
    optimizer parameter groups (e.g. no weight decay on norms); every group's
    ``lr`` follows the schedule in proportion to its starting value [one group
    of all parameters].
``probe(model, data, cfg, device) -> dict``
    extra JSON kept in the record of the first seed's runs [none].
``extra_plots(results, out_dir) -> list[str]``
    PNG paths to add to the report [none].
``align``
    :class:`AlignHooks` when ``colu align`` applies to this experiment [None].
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .paper import PaperReference


@dataclass(frozen=True)
class Preset:
    """Named settings of an experiment (``--preset NAME``).

    ``settings``: config key -> value, as on the command line or in YAML
    (checked like them). ``about``: what the preset is and how long it takes
    where, shown in ``colu run --help`` ("about 2 min on a 2-core CPU").
    """

    settings: dict
    about: str


@dataclass(frozen=True)
class AlignHooks:
    """What ``colu align`` needs from an experiment.

    ``activations``: the default pair of specs. ``losses(cfg)``: loss name ->
    ``fn(model, (x_test, y_test)) -> float`` on the CPU; ``"loss"`` is the
    one whose barrier is reported as ``barrier_*``, every other name ``N``
    adds ``N_barrier_*`` metrics and must be described in ``extra_losses``
    (name -> (axis label, report paragraph)). ``loss_description`` names the
    main loss in the report ("cross-entropy"). ``flatter_claimed``: the paper
    states that weight matching gives a flatter barrier than state matching
    for this experiment (otherwise that claim is shown for information).
    """

    activations: tuple
    losses: Callable
    loss_description: str
    extra_losses: dict = field(default_factory=dict)
    flatter_claimed: bool = False


def permutation_batch(data, cfg, seed: int, step: int):
    """The default batch source: epoch ``e`` visits the training set in the order ``randperm(n)``.

    The permutation is drawn from a generator seeded with ``(seed, e)``, so the
    batch of any step is a pure function of ``seed`` and ``step``. The last
    batch of an epoch may be smaller. Indexing happens where ``data.x_train``
    lives (the device, with ``data_on_device``).
    """
    n = int(data.x_train.shape[0])
    batch = min(cfg.batch_size, n)
    epoch, pos = divmod(step, math.ceil(n / batch))
    idx = _epoch_order(seed, epoch, n, data.x_train.device)[pos * batch:(pos + 1) * batch]
    return data.x_train[idx], data.y_train[idx]


_ORDER_CACHE: dict = {}


def _epoch_order(seed: int, epoch: int, n: int, device) -> torch.Tensor:
    # one permutation kept: consecutive steps of an epoch reuse it instead of redrawing it
    key = (seed, epoch, n, str(device))
    if key not in _ORDER_CACHE:
        _ORDER_CACHE.clear()
        _ORDER_CACHE[key] = epoch_order(seed, epoch, n).to(device)
    return _ORDER_CACHE[key]


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The order in which epoch ``epoch`` of run seed ``seed`` visits ``n`` examples."""
    gen = torch.Generator().manual_seed(1_000_003 * (seed + 1) + epoch)
    return torch.randperm(n, generator=gen)


def _all_examples(data) -> int:
    return int(data.x_train.shape[0])


@dataclass(frozen=True)
class Experiment:
    """One experiment; see the module documentation for every field, its signature and its default."""

    name: str
    summary: str
    Config: type
    metrics: dict
    default_activations: Callable
    load_data: Callable
    build_model: Callable
    train_loss: Callable
    evaluate: Callable
    curve_metrics: tuple = ()
    log_metrics: tuple = ()
    curve_x: str = "epoch"
    final_metrics: Optional[Callable] = None
    sweep_grid: Optional[Callable] = None
    check_activation: Optional[Callable] = None
    datasets: tuple = ()
    data_help: str = ""
    data_is_file: bool = False
    presets: dict = field(default_factory=dict)
    paper: PaperReference = field(default_factory=PaperReference)
    report_note: str = ""
    batches: Callable = permutation_batch
    train_examples: Callable = _all_examples
    data_on_device: bool = False
    parameter_groups: Optional[Callable] = None
    probe: Optional[Callable] = None
    extra_plots: Optional[Callable] = None
    align: Optional[AlignHooks] = None

    def __post_init__(self):
        from .config import TrainConfig

        where = f"experiment {self.name!r}"
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"{where}: name must be a non-empty string")
        if not (isinstance(self.Config, type) and issubclass(self.Config, TrainConfig)
                and dataclasses.is_dataclass(self.Config)):
            raise ValueError(f"{where}: Config must be a dataclass subclassing TrainConfig")
        if not self.metrics:
            raise ValueError(f"{where}: metrics must name at least one metric (name -> higher is better)")
        if self.curve_x not in ("epoch", "step"):
            raise ValueError(f"{where}: curve_x {self.curve_x!r} must be 'epoch' or 'step'")
        for key, preset in self.presets.items():
            if not isinstance(preset, Preset):
                raise ValueError(f"{where}: preset {key!r} must be a Preset(settings, about)")
        fill = object.__setattr__  # frozen: defaults that depend on other fields are set once, here
        if not self.curve_metrics:
            fill(self, "curve_metrics", tuple(self.metrics))
        if self.final_metrics is None:
            names = tuple(self.metrics)
            fill(self, "final_metrics", lambda curve: {k: curve[-1][k] for k in names})
        if self.sweep_grid is None:
            fill(self, "sweep_grid", self.default_activations)
        if self.check_activation is None:
            build = self.build_model

            def check_by_building(cfg, act, data):
                build(cfg, act, data)

            fill(self, "check_activation", check_by_building)

    def preset_settings(self, name: str) -> dict:
        """The settings of preset ``name``, or a ValueError naming the presets there are."""
        if name not in self.presets:
            have = ", ".join(self.presets) or "none"
            raise ValueError(f"--preset {name}: {self.name} has no such preset (its presets: {have})")
        return dict(self.presets[name].settings)
