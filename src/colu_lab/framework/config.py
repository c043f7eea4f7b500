"""Plain-dataclass configs, loadable from YAML, and the ``colu run/sweep/report`` command lines.

Precedence, lowest first: dataclass defaults, the preset's settings
(``--preset NAME``; ``--quick`` is ``--preset quick``), the YAML file,
explicit command-line options (``--set`` included). The resulting config is
saved with the results (``config.json`` and inside ``results.json``), the
preset's name with it.

Every value is checked where it is parsed (type, range and choices, see
``TrainConfig.LIMITS`` and ``TrainConfig.CHOICES``), whether it came from the
command line, ``--set``, YAML or a preset, so a bad value stops the run with
a message naming it instead of failing somewhere inside training.

The training budget is ``steps`` or ``epochs``: whichever the highest layer
that mentions either of them sets wins (``--epochs 5`` on the command line
replaces an experiment's default step budget; ``--steps`` wins over
``--epochs`` given beside it).

:func:`result_settings` is the part of a config that decides what a single
(activation, seed) run computes, and :func:`fingerprint` its hash: each run
record and checkpoint carries both, so results of different settings are
never mixed in one folder. A preset takes part only through the settings it
produces: its name is a label, not a setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import shlex
import sys
import typing
from dataclasses import dataclass, field
from typing import ClassVar, Optional

from colu_lab.framework.data import DataError, data_digest, recognise_dataset


@dataclass
class TrainConfig:
    """Settings every experiment shares (experiments subclass this and add their own).

    Optimiser: ``optimizer`` adam (default; ``torch.optim.Adam``), adamw
    (``torch.optim.AdamW``) or sgd (``torch.optim.SGD`` with ``momentum``,
    default 0.9, no Nesterov). ``weight_decay`` (default 0) is applied as
    ``weight_decay_mode``: ``l2`` adds ``weight_decay * w`` to the gradient
    (what Adam's and SGD's own ``weight_decay`` do), ``decoupled`` shrinks the
    weights by ``lr * weight_decay`` each step apart from the gradient
    (AdamW); adam with decoupled decay is AdamW. Unset, the mode is the
    optimiser's own: l2 for adam and sgd, decoupled for adamw.

    Schedule (a function of the global step, so a resumed run follows it
    exactly): ``schedule`` constant (default), cosine (from ``lr`` down to
    ``lr * min_lr_ratio`` at the last step, default ratio 0) or step
    (``lr`` times ``step_gamma``, default 0.1, at each step in
    ``step_milestones``, or where none are given at each fraction in
    ``step_fractions`` of the run's total steps: ``0.5,0.75`` is He et al.'s
    CIFAR schedule whatever the budget); ``warmup_steps`` (default 0) ramps
    the learning rate linearly up to ``lr`` first. An experiment may give
    ``step_fractions`` a default of its own (the shape its step schedule
    takes); any other value needs ``schedule=step``. ``grad_clip`` (default
    0: off) clips the global gradient norm.

    ``autocast``: off (default, float32), bf16 (bfloat16 autocast for the
    training forward pass; CUDA only) or auto (bf16 on CUDA, off on CPU).
    """

    seeds: int = 3
    seed_offset: int = 0
    activations: list = field(default_factory=list)  # empty: the experiment's default list
    dataset: str = "digits"
    data: Optional[str] = None
    split_from_test: Optional[int] = None
    epochs: Optional[int] = 10
    steps: Optional[int] = None  # total optimizer steps; overrides epochs when set
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0
    weight_decay_mode: Optional[str] = None  # None: the optimiser's own (l2 for adam/sgd, decoupled for adamw)
    schedule: str = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # cosine: the last step's lr as a fraction of lr
    step_milestones: list[int] = field(default_factory=list)  # step: global steps at which lr is multiplied
    step_fractions: list[float] = field(default_factory=list)  # step, without milestones: fractions of the run
    step_gamma: float = 0.1  # step: the factor applied at each milestone
    grad_clip: float = 0.0  # max global gradient norm; 0: no clipping
    eval_every: int = 0  # optimizer steps between evaluations; 0: once per epoch (at most MAX_EVALS per run)
    ckpt_every: int = 500
    device: str = "auto"
    autocast: str = "off"
    preset: Optional[str] = None  # the name of the preset the settings started from (a label only)
    halt_after: Optional[int] = None  # stop (checkpointed) after this many steps, as if interrupted

    # settings that describe one dataset: a preset's values for them apply only when the preset's own dataset is
    # the one trained on (an explicit --dataset, or the files of --data, that names another drops them)
    DATASET_SPECIFIC: ClassVar[tuple] = ("split_from_test",)

    @classmethod
    def dataset_specific(cls, dataset: str) -> tuple:
        """The settings a preset made for another dataset that do not carry over to ``dataset``."""
        return cls.DATASET_SPECIFIC
    # key -> (comparison, bound): the allowed range of each number. Subclasses add their own keys with
    # ``LIMITS = {**TrainConfig.LIMITS, "width": (">=", 1)}``. ``None`` passes where the type is Optional.
    LIMITS: ClassVar[dict] = {
        "seeds": (">=", 1), "seed_offset": (">=", 0), "epochs": (">=", 1), "steps": (">=", 1),
        "batch_size": (">=", 1), "lr": (">", 0.0), "weight_decay": (">=", 0.0), "eval_every": (">=", 0),
        "ckpt_every": (">=", 1), "halt_after": (">=", 1), "split_from_test": (">=", 1),
        "momentum": (">=", 0.0), "warmup_steps": (">=", 0), "min_lr_ratio": (">=", 0.0),
        "step_gamma": (">", 0.0), "grad_clip": (">=", 0.0),
    }
    # key -> the values a text setting may take (subclasses extend it like LIMITS)
    CHOICES: ClassVar[dict] = {
        "optimizer": ("adam", "adamw", "sgd"), "weight_decay_mode": ("l2", "decoupled"),
        "schedule": ("constant", "cosine", "step"), "autocast": ("off", "bf16", "auto"),
        "device": ("auto", "cpu", "cuda"),
    }

    def __post_init__(self):
        # settings that are only valid together; each message names both and a way out
        if self.weight_decay_mode is None:
            self.weight_decay_mode = "decoupled" if self.optimizer == "adamw" else "l2"
        if self.optimizer == "adamw" and self.weight_decay_mode == "l2":
            raise ValueError("optimizer=adamw with weight_decay_mode=l2: AdamW's decay is decoupled; use "
                             "optimizer=adam for L2 decay, or drop weight_decay_mode")
        if self.optimizer == "sgd" and self.weight_decay_mode == "decoupled":
            raise ValueError("optimizer=sgd with weight_decay_mode=decoupled: SGD's weight decay is L2 "
                             "(added to the gradient); use weight_decay_mode=l2, or optimizer=adamw")
        if self.min_lr_ratio > 1:
            raise ValueError(f"min_lr_ratio {self.min_lr_ratio!r} is out of range: it must be <= 1 "
                             "(the last step's learning rate as a fraction of lr)")
        milestones = list(self.step_milestones)
        if any(m < 1 for m in milestones) or milestones != sorted(set(milestones)):
            raise ValueError(f"step_milestones {milestones!r}: need increasing steps >= 1, e.g. "
                             "step_milestones=32000,48000")
        fractions = list(self.step_fractions)
        if any(not 0 < f < 1 for f in fractions) or fractions != sorted(set(fractions)):
            raise ValueError(f"step_fractions {fractions!r}: need increasing fractions of the run's steps, each "
                             "strictly between 0 and 1, e.g. step_fractions=0.5,0.75")
        if self.schedule == "step" and not milestones and not fractions:
            raise ValueError("schedule=step needs step_milestones (the global steps at which lr is multiplied "
                             "by step_gamma), e.g. --set step_milestones=32000,48000, or step_fractions (the same "
                             "as fractions of the run's steps), e.g. --set step_fractions=0.5,0.75")
        if milestones and self.schedule != "step":
            raise ValueError(f"step_milestones {milestones!r} apply to schedule=step only (schedule is "
                             f"{self.schedule}); drop them or set schedule=step")
        # the class's own default is the shape this experiment's step schedule takes; another value is a request
        own = type(self).__dataclass_fields__["step_fractions"].default_factory()
        if fractions != own and self.schedule != "step":
            raise ValueError(f"step_fractions {fractions!r} apply to schedule=step only (schedule is "
                             f"{self.schedule}); drop them or set schedule=step")
        if fractions != own and milestones:
            raise ValueError(f"step_milestones {milestones!r} and step_fractions {fractions!r} both place the "
                             "steps of schedule=step; give one of them")


# Settings that may differ between a run and its --resume without changing any number it computes.
# ``preset`` is among them: a preset takes part in the fingerprint only through the settings it produces.
RUNTIME_KEYS = {"device", "halt_after", "ckpt_every", "preset"}
# Settings that choose which (activation, seed) runs a folder holds, not what one of them computes:
# a --resume may change them (to add seeds or activations), finished runs are kept.
SELECTION_KEYS = {"activations", "seeds", "seed_offset"}
MAX_EVALS = 50  # eval_every = 0 evaluates once per epoch, but at most this many times per run


def result_settings(cfg) -> dict:
    """The settings that decide what one (activation, seed) run computes; with ``--data``, the digest of its
    files too (``data_digest``: the same path holding other data is another setting)."""
    settings = {k: v for k, v in config_to_dict(cfg).items() if k not in RUNTIME_KEYS | SELECTION_KEYS}
    if settings.get("data"):
        settings["data_digest"] = data_digest(settings["data"])
    return settings


def fingerprint(settings: dict) -> str:
    """A short stable hash of :func:`result_settings` (canonical JSON, sorted keys)."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def settings_diff(old: dict, new: dict) -> list[str]:
    """``["lr=0.001 (now 0.05)", ...]`` for every setting that differs between two result_settings."""
    keys = sorted(set(old) | set(new))
    return [f"{k}={old.get(k, '(unset)')!r} (now {new.get(k, '(unset)')!r})" for k in keys
            if old.get(k) != new.get(k)]


def optimizer_description(cfg: dict) -> str:
    """Plain words for a saved config's optimiser, decay, schedule, clipping and precision (for reports)."""
    name = cfg.get("optimizer", "adam")
    mode = cfg.get("weight_decay_mode") or ("decoupled" if name == "adamw" else "l2")
    torch_name = {"sgd": "SGD", "adamw": "AdamW"}.get(name, "AdamW" if mode == "decoupled" else "Adam")
    text = f"{torch_name} (torch.optim.{torch_name}"
    if name == "sgd":
        text += f", momentum {cfg.get('momentum', 0.9)}, no Nesterov"
    text += f"), lr {cfg.get('lr')}"
    decay = cfg.get("weight_decay", 0.0)
    if decay:
        how = ("decoupled: weights shrink by lr × weight_decay each step" if mode == "decoupled"
               else "L2: weight_decay × w added to the gradient")
        text += f", weight decay {decay} ({how})"
    else:
        text += ", no weight decay"
    schedule = cfg.get("schedule", "constant")
    warmup = cfg.get("warmup_steps", 0)
    if schedule == "cosine":
        text += f"; cosine schedule down to {cfg.get('min_lr_ratio', 0.0)} × lr"
    elif schedule == "step" and cfg.get("step_milestones"):
        text += (f"; lr × {cfg.get('step_gamma')} at steps "
                 f"{', '.join(str(m) for m in cfg.get('step_milestones', []))}")
    elif schedule == "step":
        text += (f"; lr × {cfg.get('step_gamma')} at "
                 f"{', '.join(f'{f:.0%}' for f in cfg.get('step_fractions', []))} of the steps")
    else:
        text += "; constant learning rate"
    if warmup:
        text += f" after {warmup} linear warm-up steps"
    clip = cfg.get("grad_clip", 0.0)
    text += f"; gradient norm clipped at {clip}" if clip else "; no gradient clipping"
    return text


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def _field_types(cls) -> dict:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def option_name(key: str, source: str) -> str:
    """How the user wrote ``key``: ``--batch-size`` on the command line, ``batch_size`` in YAML or --set."""
    return "--" + key.replace("_", "-") if source == "command line" else key


def _check_range(cls, key: str, value, source: str) -> None:
    name = option_name(key, source)
    choices = getattr(cls, "CHOICES", {}).get(key)
    if choices is not None and value is not None and value not in choices:
        raise ValueError(f"{source}: {name} {value!r} is not one of {', '.join(choices)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{source}: {name} {value!r} is not a finite number")
    limit = getattr(cls, "LIMITS", {}).get(key)
    if limit is None or value is None:
        return
    op, bound = limit
    ok = value >= bound if op == ">=" else value > bound
    if not ok:
        raise ValueError(f"{source}: {name} {value!r} is out of range: it must be {op} {bound}")


def coerce(cls, key: str, value, source: str):
    """Convert ``value`` to the type of ``cls.key`` and check its range, with an error naming key and source."""
    types = _field_types(cls)
    if key not in types:
        raise ValueError(f"{source}: unknown config key {key!r}; valid keys: {', '.join(sorted(types))}")
    value = _convert(types[key], key, value, source)
    _check_range(cls, key, value, source)
    return value


def _convert(kind, key: str, value, source: str):
    optional = typing.get_origin(kind) is typing.Union and type(None) in typing.get_args(kind)
    if optional:
        kind = next(t for t in typing.get_args(kind) if t is not type(None))
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and optional):
        if optional:
            return None
        raise ValueError(f"{source}: {key} cannot be null")
    if isinstance(value, bool) and kind in (int, float):
        # YAML reads `seeds: true` as a bool, and int(True) would quietly be 1
        raise ValueError(f"{source}: {key}={value!r} is a yes/no value; {key} takes a number")
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if typing.get_args(kind) in ((int,), (float,)) and typing.get_origin(kind) is list:
            items = value.replace(";", ",").split(",") if isinstance(value, str) else value
            items = [v.strip() if isinstance(v, str) else v for v in items]
            return [_convert(typing.get_args(kind)[0], key, v, source) for v in items if v != ""]
        if kind in (list, typing.List) or typing.get_origin(kind) is list:
            if isinstance(value, str):
                return [v for v in (s.strip() for s in value.split(";")) if v]
            return [str(v) for v in value]
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return kind(value)
    except (TypeError, ValueError):
        if kind is bool:
            raise ValueError(f"{source}: {key}={value!r} is not one of true, false (or yes/no, on/off, 1/0)"
                             ) from None
        raise ValueError(f"{source}: {key}={value!r} is not a valid {getattr(kind, '__name__', kind)}") from None


def load_yaml(path: str) -> dict:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            loaded = yaml.safe_load(f)
    except OSError as exc:
        raise ValueError(f"--config {path!r}: cannot read ({exc})") from exc
    except yaml.YAMLError as exc:
        raise ValueError(f"--config {path!r}: not valid YAML ({exc})") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ValueError(f"--config {path!r}: expected a mapping of config keys, got {type(loaded).__name__}")
    # a saved config.json/results.json nests the fields under "config"
    return loaded.get("config", loaded) if "experiment" in loaded else loaded


def build_config(cls, presets, yaml_values: dict, cli_values: dict, source: str = "config",
                 cli_sources: dict | None = None):
    """defaults < preset < YAML < CLI; returns (config, explicitly set keys).

    ``presets`` maps preset names to their settings; the ``preset`` key of the
    YAML or CLI values picks one (CLI wins). ``presets=None`` applies none and
    keeps ``preset`` as a label only (a saved config already holds what its
    preset produced). ``cli_sources`` maps CLI keys that were not given as
    their own option to how they were written (``{"lr": "--set lr=-1"}``), so
    that an error names what the user typed.
    """
    yaml_values = {k: coerce(cls, k, v, source) for k, v in yaml_values.items()}
    cli_values = {k: coerce(cls, k, v, (cli_sources or {}).get(k, "command line")) for k, v in cli_values.items()}
    chosen = {**yaml_values, **cli_values}.get("preset")
    preset_values = {}
    if chosen is not None and presets is not None:
        if chosen not in presets:
            raise ValueError(f"--preset {chosen}: no such preset here (presets: {', '.join(presets) or 'none'})")
        preset_values = {k: coerce(cls, k, v, f"preset {chosen}") for k, v in presets[chosen].items()}
        wanted = {**yaml_values, **cli_values}.get("dataset")
        if wanted is not None and preset_values.get("dataset") not in (None, wanted):
            # the preset's settings for its own dataset (e.g. an image size) do not carry over to another one
            preset_values = {k: v for k, v in preset_values.items() if k not in cls.dataset_specific(wanted)}
    layers = [preset_values, yaml_values, cli_values]  # lowest first
    values = {}
    for layer in layers:
        values.update(layer)
    # the budget: the highest layer that names epochs or steps decides which of the two counts
    for layer in reversed(layers):
        if "steps" in layer or "epochs" in layer:
            if layer.get("steps") is None:
                values["steps"] = None
            break
    cfg = cls(**values)
    if cfg.steps is None and cfg.epochs is None:
        raise ValueError(f"{source}: no training budget: set --epochs or --steps")
    return cfg, set(yaml_values) | set(cli_values)


def preset_table(exp) -> dict:
    """preset name -> settings, the form :func:`build_config` takes."""
    return {name: preset.settings for name, preset in exp.presets.items()}


# ---------------------------------------------------------------- CLI

def _epilog(experiments) -> str:
    lines = ["Experiments and their presets (--preset NAME; --quick is --preset quick):"]
    for e in experiments.values():
        lines.append(f"  {e.name:<11} {e.summary}")
        lines += [f"      {name}: {preset.about}" for name, preset in e.presets.items()]
    return "\n".join(lines)


def _parser(prog: str, description: str, experiments) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=_epilog(experiments))
    data_help = " ".join(dict.fromkeys(e.data_help for e in experiments.values() if e.data_help))
    datasets = [f"{e.name}: {', '.join(e.datasets)}" for e in experiments.values() if e.datasets]
    files = [e.name for e in experiments.values() if getattr(e, "data_is_file", False)]
    p.add_argument("experiment", choices=sorted(experiments), help="which experiment to run")
    p.add_argument("--preset", metavar="NAME",
                   help="start from the experiment's named settings (listed below with how long they take): "
                        "paper = exactly the paper's settings, cpu = a budget for a 2-core CPU, quick = a smoke "
                        "test; options given explicitly win. The report says which preset ran")
    p.add_argument("--seeds", type=int, help="number of seeds per activation, >= 1 (default 3)")
    p.add_argument("--seed-offset", type=int, help="first seed, >= 0 (default 0)")
    p.add_argument("--out", help="output directory (default runs/EXPERIMENT); must be empty of earlier results "
                                 "unless --resume or --overwrite is given")
    p.add_argument("--data", help=(data_help + " " if data_help else "") + "A folder's dataset is recognised from "
                                  "its files unless --dataset is given. Never downloaded")
    p.add_argument("--dataset", help="which data set --data holds (" + "; ".join(datasets) + "; digits is built "
                                     "in and needs no --data)" + (f"; {', '.join(files)} read(s) the one file "
                                     "--data names" if files else "") + "; experiments not listed generate their "
                                     "own data")
    p.add_argument("--split-from-test", type=int, metavar="K",
                   help="MNIST only: carve K test examples (rest train) out of the t10k files alone "
                        "(1 <= K < the number of t10k images)")
    p.add_argument("--epochs", type=int, help="training epochs, >= 1 (replaces the experiment's default budget)")
    p.add_argument("--steps", type=int, help="total optimizer steps, >= 1 (overrides --epochs)")
    p.add_argument("--batch-size", type=int, help="global batch size, >= 1 (split across processes under torchrun)")
    p.add_argument("--lr", type=float, help="peak learning rate, > 0")
    p.add_argument("--optimizer", help="adam (default), adamw or sgd (momentum: --set momentum=0.9, the default)")
    p.add_argument("--weight-decay", type=float, help="weight decay, >= 0 (default 0; applied as --weight-decay-mode)")
    p.add_argument("--weight-decay-mode",
                   help="l2 (added to the gradient, as torch.optim.Adam/SGD do) or decoupled (AdamW's: weights "
                        "shrink by lr * weight_decay each step); default: the optimizer's own (l2 for adam and "
                        "sgd, decoupled for adamw). adam + decoupled is AdamW")
    p.add_argument("--schedule", help="learning-rate schedule: constant (default), cosine (down to lr * "
                                      "min_lr_ratio, --set min_lr_ratio=0.1) or step (--set step_milestones=A,B "
                                      "step_gamma=0.1); all as a function of the global step")
    p.add_argument("--warmup-steps", type=int, help="linear warm-up to --lr over this many steps, >= 0 (default 0)")
    p.add_argument("--grad-clip", type=float, help="clip the global gradient norm to this, >= 0 (default 0: off)")
    p.add_argument("--eval-every", type=int, help="steps between evaluations, >= 0 (default 0: once per epoch); "
                                                  f"at most {MAX_EVALS} evaluations per run")
    p.add_argument("--ckpt-every", type=int, help="steps between checkpoints, >= 1 (also written at the end)")
    p.add_argument("--activations", nargs="+", metavar="SPEC",
                   help="activation specs, e.g. relu silu colu:S=4 colu:S=4,soft,share colu:G=50,soft rcolu:S=3")
    p.add_argument("--quick", action="store_const", const="quick", dest="quick_preset",
                   help="the quick preset: small settings that finish in under a minute on a laptop CPU")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="auto (default) uses CUDA when present")
    p.add_argument("--autocast", help="off (default: float32), bf16 (bfloat16 autocast for training; CUDA only) "
                                      "or auto (bf16 on CUDA, off on CPU)")
    p.add_argument("--bf16", action="store_const", const="bf16", dest="bf16_autocast",
                   help="the same as --autocast bf16")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in --out from its checkpoints (uses the saved config; "
                        "--seeds, --seed-offset and --activations may change to add runs)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete the results of an earlier run in --out first (its config, runs, checkpoints, "
                        "log, report and plots; other files are left alone)")
    p.add_argument("--halt-after", type=int, metavar="STEPS",
                   help="stop each run after STEPS steps with a checkpoint, as if interrupted (to test --resume)")
    p.add_argument("--quiet", action="store_true", help="no progress bars, progress lines or per-run lines")
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file of config keys (command-line options win)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="set any config key, e.g. --set width=256 (repeatable; see the config dataclass)")
    p.add_argument("--show-config", action="store_true",
                   help="print the resolved settings (after the preset, the dataset's own settings and your "
                        "options), one per line, and stop without training; each setting that reads the paper "
                        "where it is silent or ambiguous is marked, with the sentence it reads and the --set that "
                        "switches it")
    p.add_argument("--ablation", action="store_true",
                   help="colu sweep only: train the experiment's ablation grid (each variant of its settings in "
                        "OUT/VARIANT, over its ablation activations) and write OUT/ablation.md, which sets the "
                        "variants beside the paper's scale and direction")
    return p


_CLI_KEYS = ["preset", "seeds", "seed_offset", "data", "dataset", "split_from_test", "epochs", "steps", "batch_size",
             "lr", "optimizer", "weight_decay", "weight_decay_mode", "schedule", "warmup_steps", "grad_clip",
             "eval_every", "ckpt_every", "activations", "device", "autocast", "halt_after"]


def cli_values(args, keys) -> dict:
    """The options given on the command line (``--quick`` and ``--bf16`` read as the settings they stand for)."""
    values = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    for flag, key, value in (("--quick", "preset", getattr(args, "quick_preset", None)),
                             ("--bf16", "autocast", getattr(args, "bf16_autocast", None))):
        if value is None:
            continue
        if values.get(key, value) != value:
            raise ValueError(f"{flag} contradicts --{key} {values[key]}; give one of them")
        values[key] = value
    return values


def parse_set_options(items) -> tuple[dict, dict]:
    """``--set KEY=VALUE`` options as ``(values, sources)``: ``{key: value}`` (dashes in keys read as
    underscores) and ``{key: "--set KEY=VALUE"}`` as written (for :func:`build_config`'s ``cli_sources``, so
    that an error names what the user typed)."""
    values, sources = {}, {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        key = key.strip().replace("-", "_")
        values[key], sources[key] = value, f"--set {item}"
    return values, sources


def changed_settings(new, saved, skip=()) -> list[str]:
    """'lr is 0.05 here but the saved run used 0.01' for each field of config ``new`` that differs from ``saved``
    (fields in ``skip`` aside); a field the saved run left unset (``None``) is said to be not set."""
    def shown(value):
        return "not set" if value is None else repr(value)

    out = []
    for key in dataclasses.asdict(new):
        now, then = getattr(new, key), getattr(saved, key)
        if key in skip or now == then:
            continue
        used = "did not set it" if then is None else f"used {shown(then)}"
        out.append(f"{key} is {shown(now)} here but the saved run {used}")
    return out


def resolve_dataset(exp, cfg, explicit: set) -> None:
    """``--data DIR`` without ``--dataset``: name the dataset from the files in DIR, or stop.

    Without this a folder of MNIST files given alone would be ignored and the
    run would quietly train on the built-in digits. An experiment whose
    ``data_is_file`` is set reads the one file ``--data`` names itself: a
    folder or a ``--dataset`` is refused here, the file is checked when loaded.
    """

    readable = tuple(getattr(exp, "datasets", ()))
    if getattr(exp, "data_is_file", False):
        # one file read by the experiment itself (which also explains a missing --data): nothing to recognise
        if "dataset" in explicit:
            raise ValueError(f"--dataset {cfg.dataset} does not apply to {exp.name}: it reads the one file "
                             "--data names; drop --dataset")
        if cfg.data is not None and os.path.isdir(cfg.data):
            raise DataError(f"--data {cfg.data!r} is a directory; {exp.name} reads one file: {exp.data_help} "
                            "Pass the file itself")
        return
    if cfg.data is None:
        return
    if not readable:
        raise ValueError(f"{exp.name} generates its own data; --data {cfg.data!r} does not apply (drop it)")
    if "dataset" in explicit:
        if cfg.dataset not in readable or cfg.dataset == "digits":
            raise ValueError(f"--dataset {cfg.dataset} does not read --data {cfg.data!r}; "
                             f"{exp.name} reads {', '.join(d for d in readable if d != 'digits')} from --data "
                             "(or drop --data for the built-in digits)")
        return
    found = recognise_dataset(cfg.data)
    if found is not None and found != cfg.dataset:
        # a preset's settings for its own dataset do not carry over to the one in --data
        for key in type(cfg).dataset_specific(found):
            if key not in explicit:
                setattr(cfg, key, type(cfg).__dataclass_fields__[key].default)
    if found is None or found not in readable:
        what = f"{found} files" if found else "no dataset files this package reads"
        raise DataError(f"--data {cfg.data!r}: found {what}; {exp.name} reads "
                        f"{', '.join(d for d in readable if d != 'digits')} "
                        "(MNIST: train-images-idx3-ubyte[.gz] and friends, or only the t10k pair with "
                        "--split-from-test K). Give --dataset to say which, or drop --data for the built-in digits")
    cfg.dataset = found


@dataclass
class RunRequest:
    """What ``colu run``/``colu sweep`` were asked to do."""
    exp: object
    cfg: object
    out: str
    resume: bool = False
    overwrite: bool = False
    quiet: bool = False
    resume_command: str = ""  # the exact command that continues this run after an interruption
    ablation: bool = False  # colu sweep --ablation: cfg is the base config of the experiment's ablation grid
    explicit: set = field(default_factory=set)  # the config keys given explicitly (the ablation may not vary them)
    show_config: bool = False  # --show-config: print the resolved settings and stop
    origins: dict = field(default_factory=dict)  # setting -> where its value came from (for --show-config)


def parse_cli(argv, prog: str, description: str, experiments: dict, sweep: bool = False) -> RunRequest:
    """Parse ``colu run``/``colu sweep`` arguments; ``experiments`` maps the names it accepts to experiments."""
    args = _parser(prog, description, experiments).parse_args(argv)
    exp = experiments[args.experiment]
    cli = cli_values(args, _CLI_KEYS)
    set_values, sources = parse_set_options(args.set)  # sources: how each --set value was written
    cli.update(set_values)
    if cli.get("preset") is not None and not args.resume:
        exp.preset_settings(cli["preset"])  # an unknown name: the error lists this experiment's presets
    out = args.out or os.path.join("runs", exp.name + ("-sweep" if sweep else ""))
    if args.resume and args.overwrite:
        raise ValueError("--resume and --overwrite contradict each other: --resume continues the run in "
                         f"{out!r}, --overwrite deletes it; choose one")
    yaml_values = load_yaml(args.config) if args.config else {}
    saved_path = os.path.join(out, "config.json")
    if args.ablation:
        if not sweep:
            raise ValueError("--ablation applies to colu sweep (it trains a grid of settings); use colu sweep "
                             f"{exp.name} --ablation")
        if exp.ablation is None:
            raise ValueError(f"--ablation: {exp.name} has no ablation grid; drop --ablation")
        # every variant folder checks its own saved settings on --resume, so the base config is rebuilt from
        # the same options as the first time
        cfg, explicit = build_config(exp.Config, preset_table(exp), yaml_values, cli, args.config or "config",
                                     sources)
        resolve_dataset(exp, cfg, explicit)
        given = [a for a in (argv if argv is not None else sys.argv[2:]) if a != "--overwrite"]
        resume_command = " ".join(["colu sweep", *map(shlex.quote, given), *([] if args.resume else ["--resume"])])
        return RunRequest(exp, cfg, out, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet,
                          resume_command=resume_command, ablation=True, explicit=explicit,
                          show_config=args.show_config,
                          origins=setting_origins(exp, cfg, yaml_values, cli, sources, args.config))
    if args.resume:
        saved = read_saved_config(saved_path, out)
        if saved.get("experiment") != exp.name:
            raise ValueError(f"--resume: {out} holds a {saved.get('experiment')!r} run, not {exp.name!r}")
        unknown = sorted(set(saved["config"]) - set(_field_types(exp.Config)))
        if unknown:
            raise ValueError(f"--resume: {saved_path} was written by another version of colu (settings "
                             f"{', '.join(unknown)} do not exist here), so its runs cannot be continued: start "
                             "over with --overwrite, or use another --out")
        base, _ = build_config(exp.Config, None, saved["config"], {}, saved_path)
        asked = {**yaml_values, **cli}.get("preset")
        if asked is not None and asked != base.preset:
            raise ValueError(f"--resume: --preset {asked} differs from the preset the saved run started from "
                             f"({base.preset or 'none'}, in {saved_path}); resume without --preset/--quick")
        cfg, _ = build_config(exp.Config, None, {**saved["config"], **yaml_values}, cli, saved_path, sources)
        changed = changed_settings(cfg, base, RUNTIME_KEYS | SELECTION_KEYS)
        if changed:
            raise ValueError(f"--resume: {'; '.join(changed)} (settings in {saved_path}). A run continues with the "
                             "settings it started with: resume without those options, or start a fresh run in "
                             "another --out")
        cfg = dataclasses.replace(cfg, halt_after=cli.get("halt_after"))
        origins = {key: "the saved run (config.json)" for key in saved["config"]}
        given = setting_origins(exp, cfg, yaml_values, cli, sources, args.config, preset=False)
        origins.update({key: where for key, where in given.items() if key in {**yaml_values, **cli}})
    else:
        cfg, explicit = build_config(exp.Config, preset_table(exp), yaml_values, cli, args.config or "config",
                                     sources)
        resolve_dataset(exp, cfg, explicit)
        origins = setting_origins(exp, cfg, yaml_values, cli, sources, args.config)
        if sweep and "activations" not in explicit:
            cfg.activations = exp.sweep_grid(cfg)
            origins["activations"] = "default (the experiment's sweep grid)"
    command = "colu sweep" if sweep else "colu run"
    resume_command = " ".join([command, shlex.quote(exp.name), "--out", shlex.quote(out), "--resume"])
    return RunRequest(exp, cfg, out, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet,
                      resume_command=resume_command, show_config=args.show_config, origins=origins)


def setting_origins(exp, cfg, yaml_values: dict, cli: dict, sources: dict, config_file, preset: bool = True) -> dict:
    """Setting -> where ``cfg``'s value came from, for ``--show-config``: the option or ``--set`` as written,
    the YAML file, the preset (when its value is the one kept) or, for settings left out, nothing (default)."""
    origins = {}
    chosen = {**yaml_values, **cli}.get("preset")
    if preset and chosen is not None and chosen in exp.presets:
        for key, value in exp.presets[chosen].settings.items():
            if getattr(cfg, key, None) == coerce(type(cfg), key, value, f"preset {chosen}"):
                origins[key] = f"preset {chosen}"
    for key in yaml_values:
        origins[key] = f"--config {config_file}"
    for key in cli:
        origins[key] = sources.get(key) or f"{option_name(key, 'command line')} (command line)"
    if cfg.steps is None and "epochs" in {**yaml_values, **cli}:
        origins["steps"] = "unset: --epochs decides the budget"
    if cfg.steps is not None and cfg.epochs is not None:
        origins["epochs"] = origins.get("epochs", "default") + " (unused: steps decides the budget)"
    origins.pop("preset", None)
    if cfg.preset is not None:
        origins["preset"] = "--preset (a label; its settings are marked)"
    return origins


def read_saved_config(path: str, out: str) -> dict:
    """The ``config.json`` of a run folder, for ``--resume``; clear errors when it is missing or damaged."""
    if not os.path.exists(path):
        raise ValueError(f"--resume: {out!r} holds no run to resume (no config.json); start it without --resume")
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
            raise ValueError("no 'config' mapping")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable or damaged ({exc}); start over with --overwrite") from exc
    return saved


def command_error(exc: Exception, prog: str) -> int:
    """Print ``exc`` as a command's one-line error and return the exit status for a usage error (2)."""
    print(f"{prog}: error: {exc}", file=sys.stderr)
    return 2
