"""Plain-dataclass configs, loadable from YAML, and the ``colu run/sweep/report`` command lines.

Precedence, lowest first: dataclass defaults, ``--quick`` settings, the YAML
file, explicit command-line options. The resulting config is saved with the
results (``config.json`` and inside ``results.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing
from dataclasses import dataclass, field
from typing import Optional


@dataclass
class TrainConfig:
    """Settings every experiment shares (experiments subclass this and add their own)."""

    seeds: int = 3
    seed_offset: int = 0
    activations: list = field(default_factory=list)  # empty: the experiment's default list
    dataset: str = "digits"
    data: Optional[str] = None
    split_from_test: Optional[int] = None
    epochs: int = 10
    steps: Optional[int] = None  # total optimizer steps; overrides epochs when set
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    eval_every: int = 0  # optimizer steps between evaluations; 0: once per epoch
    ckpt_every: int = 500
    device: str = "auto"
    bf16: bool = False
    quick: bool = False
    halt_after: Optional[int] = None  # stop (checkpointed) after this many steps, as if interrupted


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def _field_types(cls) -> dict:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(cls, key: str, value, source: str):
    """Convert ``value`` to the type of ``cls.key``, with an error naming the key and the source."""
    types = _field_types(cls)
    if key not in types:
        raise ValueError(f"{source}: unknown config key {key!r}; valid keys: {', '.join(sorted(types))}")
    kind = types[key]
    optional = typing.get_origin(kind) is typing.Union and type(None) in typing.get_args(kind)
    if optional:
        kind = next(t for t in typing.get_args(kind) if t is not type(None))
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and optional):
        if optional:
            return None
        raise ValueError(f"{source}: {key} cannot be null")
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if kind in (list, typing.List) or typing.get_origin(kind) is list:
            if isinstance(value, str):
                return [v for v in (s.strip() for s in value.split(";")) if v]
            return [str(v) for v in value]
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return kind(value)
    except (TypeError, ValueError):
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


def build_config(cls, quick_settings: dict, yaml_values: dict, cli_values: dict, source: str = "config"):
    """defaults < quick settings (if quick) < YAML < CLI; returns (config, explicitly set keys)."""
    values, explicit = {}, set()
    for key, value in yaml_values.items():
        values[key] = _coerce(cls, key, value, source)
        explicit.add(key)
    for key, value in cli_values.items():
        values[key] = _coerce(cls, key, value, "command line")
        explicit.add(key)
    quick = values.get("quick", False)
    if quick:
        for key, value in quick_settings.items():
            if key not in explicit:
                values[key] = value
    cfg = cls(**values)
    return cfg, explicit


# ---------------------------------------------------------------- CLI
RUNTIME_KEYS = {"device", "halt_after"}  # may differ on --resume without changing the results


def _parser(prog: str, description: str, experiments) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Experiments:\n" + "\n".join(f"  {e.name:<11} {e.summary}"
                                                                   for e in experiments.values()))
    p.add_argument("experiment", choices=sorted(experiments), help="which experiment to run")
    p.add_argument("--seeds", type=int, help="number of seeds per activation (default 3)")
    p.add_argument("--seed-offset", type=int, help="first seed (default 0)")
    p.add_argument("--out", help="output directory (default runs/EXPERIMENT)")
    p.add_argument("--data", help="directory with dataset files (MNIST IDX or CIFAR-10 batches); never downloaded")
    p.add_argument("--dataset", help="mnist-mlp/mnist-vae: digits (built in, default) or mnist (needs --data); "
                                        "hemisphere generates its own points")
    p.add_argument("--split-from-test", type=int, metavar="K",
                   help="MNIST only: carve K test examples (rest train) out of the t10k files alone")
    p.add_argument("--epochs", type=int, help="training epochs")
    p.add_argument("--steps", type=int, help="total optimizer steps (overrides --epochs)")
    p.add_argument("--batch-size", type=int, help="global batch size (split across processes under torchrun)")
    p.add_argument("--lr", type=float, help="Adam learning rate")
    p.add_argument("--weight-decay", type=float, help="Adam weight decay (torch.optim.Adam, L2 added to grads)")
    p.add_argument("--eval-every", type=int, help="steps between evaluations (default: once per epoch)")
    p.add_argument("--ckpt-every", type=int, help="steps between checkpoints (also written at the end)")
    p.add_argument("--activations", nargs="+", metavar="SPEC",
                   help="activation specs, e.g. relu silu colu:S=4 colu:S=4,soft,share colu:G=50,soft rcolu:S=3")
    p.add_argument("--quick", action="store_true", default=None,
                   help="small settings that finish in under a minute on a laptop CPU")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="auto (default) uses CUDA when present")
    p.add_argument("--bf16", action="store_true", default=None, help="bfloat16 autocast for training (CUDA only)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in --out from its checkpoints (uses the saved config)")
    p.add_argument("--halt-after", type=int, metavar="STEPS",
                   help="stop each run after STEPS steps with a checkpoint, as if interrupted (to test --resume)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-run lines")
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file of config keys (command-line options win)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="set any config key, e.g. --set width=256 (repeatable; see the config dataclass)")
    return p


_CLI_KEYS = ["seeds", "seed_offset", "data", "dataset", "split_from_test", "epochs", "steps", "batch_size", "lr",
             "weight_decay", "eval_every", "ckpt_every", "activations", "quick", "device", "bf16", "halt_after"]


def parse_set_items(items) -> dict:
    """``--set KEY=VALUE`` options as a dict (dashes in keys read as underscores)."""
    values = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        values[key.strip().replace("-", "_")] = value
    return values


def parse_cli(argv, prog: str, description: str, sweep: bool = False):
    """Parse ``colu run``/``colu sweep`` arguments into (experiment, config, out_dir, resume, quiet)."""
    from .registry import EXPERIMENTS

    args = _parser(prog, description, EXPERIMENTS).parse_args(argv)
    exp = EXPERIMENTS[args.experiment]
    cli = {k: getattr(args, k) for k in _CLI_KEYS if getattr(args, k) is not None}
    cli.update(parse_set_items(args.set))
    out = args.out or os.path.join("runs", exp.name + ("-sweep" if sweep else ""))
    yaml_values = load_yaml(args.config) if args.config else {}
    saved_path = os.path.join(out, "config.json")
    if args.resume and os.path.exists(saved_path):
        with open(saved_path, encoding="utf-8") as f:
            saved = json.load(f)
        if saved.get("experiment") != exp.name:
            raise ValueError(f"--resume: {out} holds a {saved.get('experiment')!r} run, not {exp.name!r}")
        base, _ = build_config(exp.Config, {}, saved["config"], {}, saved_path)
        cfg, _ = build_config(exp.Config, {}, {**saved["config"], **yaml_values}, cli, saved_path)
        changed = [k for k in dataclasses.asdict(cfg)
                   if k not in RUNTIME_KEYS and getattr(cfg, k) != getattr(base, k)]
        if changed:
            raise ValueError(f"--resume: options {', '.join(changed)} differ from the saved config in {saved_path}; "
                             "resume with the same options, or start a fresh run in another --out")
        cfg = dataclasses.replace(cfg, halt_after=cli.get("halt_after"))
    else:
        cfg, explicit = build_config(exp.Config, exp.quick_settings, yaml_values, cli,
                                     args.config or "config")
        if sweep and "activations" not in explicit:
            cfg.activations = exp.sweep_grid(cfg)
    return exp, cfg, out, args.resume, args.quiet


def _fail(exc: Exception, prog: str) -> int:
    print(f"{prog}: error: {exc}", file=sys.stderr)
    return 2
