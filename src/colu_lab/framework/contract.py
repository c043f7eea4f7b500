"""The experiment contract: all the runner, the report and the command line know about an experiment.

An experiment is one module that builds an :class:`Experiment` and names it
``EXPERIMENT``; :mod:`colu_lab.registry` lists them. Nothing outside
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
    a dataclass subclassing :class:`colu_lab.framework.config.TrainConfig`,
    with the experiment's own keys and its defaults.
``metrics``
    final metric name -> True when higher is better, in table order.
``default_activations(cfg) -> list[str]``
    the activation specs ``colu run`` trains when none are given.
``load_data(cfg) -> data``
    the data object: ``data.summary()`` must return a dict with
    ``description``, ``train_examples``, ``test_examples``, ``input_dim`` and
    ``notes`` (see :class:`colu_lab.framework.data.Data`), and may add
    ``differs_from_paper``, a list of reasons the data is not the paper's
    (the report then calls the numbers not comparable).
``build_model(cfg, act, data) -> (model, width)``
    the network for activation spec ``act``
    (:class:`colu_lab.framework.activations.ActivationSpec`) and the width it
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
``final_metrics(curve, cfg) -> dict``
    the run's final metrics from its evaluation points and its config [the
    last point's values of ``metrics``].
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
    :class:`colu_lab.framework.paper.PaperReference`: the paper's numbers,
    claims and settings the report compares with [nothing to compare].
``readings``
    :class:`colu_lab.framework.readings.Reading` s: the settings whose value
    interprets the paper where it is silent or ambiguous, each with the
    sentence it reads, our value, why, and the values a user may switch to.
    ``colu run NAME --show-config`` prints them under their settings, the
    report marks a reading apart from the paper's own settings, and an
    experiment whose reading names a setting its ``Config`` lacks (or a value
    the setting does not take) is refused when it is built [none].
``report_note``
    a paragraph added to the report [""].
``batches(data, cfg, seed, step) -> tuple of tensors``
    the global batch of optimizer step ``step`` (0-based) for run seed
    ``seed``: ``(x, y)``, examples along dimension 0. It must be a function
    of its arguments alone (data order and augmentation draws included), so
    that a resumed run sees exactly the batches an uninterrupted one does.
    The runner gives each process rows ``rank::world`` and moves them to the
    device [:func:`permutation_batch`: the training set in the order of a
    per-epoch permutation]. A batch may hold more than two tensors (e.g.
    images, noise levels and noise): each is split alike and ``train_loss``
    receives them in order in place of ``x, y``.
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
``ablation``
    :class:`Ablation`: a named alternative sweep grid of configs, trained by
    ``colu sweep NAME --ablation``. Each variant (a set of config settings
    over the base config) trains the ablation's activations in its own run
    folder ``OUT/VARIANT``; ``OUT/ablation.md`` sets the variants side by
    side with the paper's scale and direction [None: no ``--ablation``].
``figures``
    figure name -> :class:`RunFigure`, drawn by ``colu plot --from DIR``
    from the results and checkpoints a run or sweep left in ``DIR`` [none].
``after_step(model, loss, cfg, step)``
    called after every optimizer step, on every process, under
    ``torch.no_grad``, with the model (not its DDP wrapper), the step's loss
    (detached; this process's share, as ``train_loss`` returned it) and the
    number of steps done. State it keeps (a moving average of the weights or
    of the loss) belongs in the model's buffers: checkpoints then carry it
    and a resumed run continues it exactly [none].
``evaluation_files(model, data, cfg, device, out_dir, run, step)``
    called on the main process at every evaluation point, right after
    ``evaluate`` and in the same mode, to write that point's files (sample
    images) into the run's output folder ``out_dir``; ``run`` names the
    (activation, seed) run (``colu-S4-seed0``) and belongs in every file
    name, so that runs do not overwrite each other's files. PNG files are
    among what ``--overwrite`` deletes. It must not draw from torch's global
    random generator, or a resumed run would continue differently [none].
``stop_when(point, cfg) -> bool``
    called at every evaluation point, on every process, with the point the
    curve keeps (``step``, ``epoch``, ``lr`` and the metrics); True ends the
    run there, after a checkpoint, as if its budget were spent (e.g. "the
    training loss is below 1e-4"). The step budget is then a cap: the record's
    ``steps`` are the steps trained, ``budget_steps`` the cap. It must be a
    function of its arguments, so that a resumed run stops where an
    uninterrupted one does [none: every run trains its whole budget].
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from colu.tools.cli import Command
from colu_lab.framework.config import TrainConfig, coerce
from colu_lab.framework.paper import PaperReference
from colu_lab.framework.readings import check_readings


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
    ``path_samples(model, cfg) -> (N, H, W)``: for a generator, images in
    [0, 1] that ``model`` makes from inputs fixed inside the hook (the same
    for every model); ``colu align`` then draws them at points along each
    path (``path_samples_<activation>.png``) [None].
    """

    activations: tuple
    losses: Callable
    loss_description: str
    extra_losses: dict = field(default_factory=dict)
    flatter_claimed: bool = False
    path_samples: Optional[Callable] = None


@dataclass(frozen=True)
class Ablation:
    """A named alternative sweep grid of configs (``colu sweep NAME --ablation``).

    ``variants(cfg) -> dict``: variant name -> settings (config key -> value,
    as ``--set`` takes them) applied over the base config ``cfg``; the
    settings a variant changes may not be given on the command line.
    ``activations``: the activation specs every variant trains (``--activations``
    overrides). ``scale``: the activation whose metrics are set beside the
    paper's row (the loss scale); ``pairs``: ``(a, b)`` activation pairs
    whose difference ``a - b`` on each metric is set beside the paper's
    (the direction). ``about``: a paragraph for ``ablation.md`` (what the
    switches are and why they are varied).
    """

    variants: Callable
    activations: tuple
    scale: str = ""
    pairs: tuple = ()
    about: str = ""


@dataclass(frozen=True)
class RunFigure:
    """A figure ``colu plot --from DIR`` draws from a finished run or sweep folder.

    ``draw(exp, run_dir, path) -> path`` writes one PNG to ``path`` (``exp``:
    the experiment the folder belongs to) and raises
    ValueError naming what ``run_dir`` lacks (and the command that makes it)
    when it cannot. ``about``: one line for ``colu plot --help``.
    """

    draw: Callable
    about: str


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
    readings: tuple = ()
    report_note: str = ""
    batches: Callable = permutation_batch
    train_examples: Callable = _all_examples
    data_on_device: bool = False
    parameter_groups: Optional[Callable] = None
    probe: Optional[Callable] = None
    extra_plots: Optional[Callable] = None
    align: Optional[AlignHooks] = None
    ablation: Optional[Ablation] = None
    figures: dict = field(default_factory=dict)
    after_step: Optional[Callable] = None
    evaluation_files: Optional[Callable] = None
    stop_when: Optional[Callable] = None
    commands: dict = field(default_factory=dict)

    def __post_init__(self):

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
        check_readings(self.Config, self.readings, where)
        for reading in self.readings:
            if "paper" in self.presets and reading.setting in self.presets["paper"].settings:
                preset = coerce(self.Config, reading.setting, self.presets["paper"].settings[reading.setting],
                                f"{where}: preset 'paper'")
                if preset != coerce(self.Config, reading.setting, reading.value, where):
                    raise ValueError(f"{where}: preset 'paper' sets {reading.setting}={preset!r}, but the "
                                     f"reading of {reading.setting} is {reading.value!r}; the paper preset holds "
                                     "our readings: change one of them")
        if self.ablation is not None and not isinstance(self.ablation, Ablation):
            raise ValueError(f"{where}: ablation must be an Ablation(variants, activations, ...)")
        for key, command in self.commands.items():
            if not isinstance(command, Command):
                raise ValueError(f"{where}: command {key!r} must be a colu.tools.cli.Command(target, summary, ...)")
        for key, figure in self.figures.items():
            if not isinstance(figure, RunFigure):
                raise ValueError(f"{where}: figure {key!r} must be a RunFigure(draw, about)")
        fill = object.__setattr__  # frozen: defaults that depend on other fields are set once, here
        if not self.curve_metrics:
            fill(self, "curve_metrics", tuple(self.metrics))
        if self.final_metrics is None:
            names = tuple(self.metrics)
            fill(self, "final_metrics", lambda curve, cfg: {k: curve[-1][k] for k in names})
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
