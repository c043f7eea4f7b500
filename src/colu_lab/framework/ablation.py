"""``colu sweep NAME --ablation``: an experiment's alternative grid of settings, side by side.

The experiment's :class:`colu_lab.framework.contract.Ablation` names variants
(settings over the base config) and the activations each trains. Every
variant is an ordinary run folder ``OUT/VARIANT`` (results.json, report.md,
checkpoints; ``--resume`` continues each where it stopped), so nothing here
trains or evaluates by itself. ``OUT/ablation.json`` and ``OUT/ablation.md``
set the variants beside each other and beside the paper:

* **scale**: the ``scale`` activation's metrics next to the paper's row,
  with the relative difference (is the loss on the paper's scale?);
* **direction**: for each ``(a, b)`` pair, the difference ``a - b`` of each
  metric next to the paper's, called the same direction when the signs
  agree and clear when ``|Δ| > 2·SE`` (the rule of the run reports).

Nothing here names an experiment.
"""

from __future__ import annotations

import dataclasses
import json
import os

from colu.files import atomic_write_json, atomic_write_text
from colu_lab.framework.ablation_tables import (
    comparison_tables,
    describe_settings,
    direction_rows,
    metric_stats,
    plus_minus,
    scale_rows,
)
from colu_lab.framework.config import coerce, config_to_dict, optimizer_description
from colu_lab.framework.report import budget_line, comparability, write_report
from colu_lab.framework.rundir import RunFolder
from colu_lab.framework.runner import run_all


def variant_configs(exp, cfg, explicit=frozenset()) -> dict:
    """variant name -> the config it trains: the base ``cfg`` with the variant's settings and activations.

    Args:
        exp: the experiment (its ``ablation`` must be set).
        cfg: the base config.
        explicit: config keys given on the command line or in YAML (default
            none); a variant may not change one of them, since the command
            would then not say what ran.
    """
    ablation = exp.ablation
    if ablation is None:
        raise ValueError(f"{exp.name} has no ablation grid")
    variants = ablation.variants(cfg)
    if not variants:
        raise ValueError(f"{exp.name}: the ablation grid is empty")
    varied = sorted({k for settings in variants.values() for k in settings} & set(explicit))
    if varied:
        raise ValueError(f"--ablation varies {', '.join(varied)}, which the command also sets; drop "
                         f"{', '.join(varied)} from the options (each variant sets its own)")
    activations = list(cfg.activations) if "activations" in explicit else list(ablation.activations)
    out = {}
    for name, settings in variants.items():
        if not name or any(not (c.isalnum() or c in "-_.") for c in name):
            raise ValueError(f"{exp.name}: ablation variant {name!r} must be a folder name (letters, digits, - _ .)")
        values = {k: coerce(type(cfg), k, v, f"ablation variant {name}") for k, v in settings.items()}
        out[name] = dataclasses.replace(cfg, **values, activations=list(activations))
    return out


def render(exp, record: dict) -> str:
    """ablation.md from an ablation record (see :func:`run_ablation`)."""
    variants, metrics = record["variants"], list(exp.metrics)
    ablation = exp.ablation
    first = next(iter(variants.values()))
    lines = [f"# {exp.name}: ablation", "", exp.summary + ".", ""]
    if ablation.about:
        lines += [ablation.about, ""]
    lines += ["## Settings", "", f"- command: `{record['command']}`" if record.get("command") else "- command: —",
              f"- data: {first['data']['description']} ({first['data']['train_examples']} train / "
              f"{first['data']['test_examples']} test)",
              f"- {budget_line(first['results'])}; seeds per activation: {record['base_config']['seeds']}",
              f"- base optimiser: {optimizer_description(record['base_config'])}"]
    reasons = comparability(exp, first["results"])
    if reasons:
        lines.append(f"- differs from the paper's settings (first variant): {'; '.join(reasons)}")
    lines += ["", "## Results (mean ± std over seeds)", ""]
    acts = list(dict.fromkeys(a for v in variants.values() for a in v["summary"]))
    header = ["variant", "settings"] + [f"`{a}` {m}" for a in acts for m in metrics]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, v in variants.items():
        cells = [f"`{name}`", describe_settings(v["settings"])]
        cells += [plus_minus(metric_stats(v["summary"], a, m)) for a in acts for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    lines += comparison_tables(exp, record)
    lines += ["", "Each variant's own report (claims, curves, config) is `VARIANT/report.md`; raw numbers are in "
              "ablation.json and each variant's results.json.", ""]
    return "\n".join(lines)


def collect(exp, results_by_variant: dict, *, command: str = "", base_cfg=None) -> dict:
    """The ablation record: per variant its settings, summary and widths, then the scale and direction rows."""
    variants = {}
    for name, results in results_by_variant.items():
        settings = exp.ablation.variants(base_cfg)[name] if base_cfg is not None else {}
        variants[name] = {"settings": settings, "summary": results["summary"], "data": results["data"],
                          "widths": {r["activation"]: r.get("width") for r in results["runs"]},
                          "results": {k: results[k] for k in ("experiment", "config", "data", "runs")}}
    record = {"experiment": exp.name, "command": command,
              "base_config": config_to_dict(base_cfg) if base_cfg is not None else {},
              "variants": variants}
    return with_current_verdicts(exp, record)


def run_ablation(exp, cfg, out: str, *, explicit=frozenset(), resume: bool = False, overwrite: bool = False,
                 quiet: bool = False, command: str = "") -> dict:
    """Train every variant of ``exp``'s ablation (each in ``out/VARIANT``), then write ablation.json/.md.

    A fresh ablation refuses an ``out`` whose variant folders hold results
    (``overwrite=True`` deletes them first, folder by folder); ``resume=True``
    continues each variant folder that has started and starts the others.
    """
    cfgs = variant_configs(exp, cfg, explicit)
    if not resume and not overwrite:
        busy = [name for name in cfgs if RunFolder(os.path.join(out, name)).result_entries()]
        if busy:
            raise ValueError(f"--out {out} already holds results of variants {', '.join(busy)}; continue with "
                             "--resume, start over with --overwrite, or choose another --out")
    os.makedirs(out, exist_ok=True)
    results = {}
    for name, vcfg in cfgs.items():
        folder = os.path.join(out, name)
        started = os.path.exists(os.path.join(folder, "config.json"))
        if not quiet:
            print(f"[ablation {exp.name}] variant {name}: {describe_settings(exp.ablation.variants(cfg)[name])}", flush=True)
        results[name] = run_all(exp, vcfg, folder, resume=resume and started, overwrite=overwrite,
                                quiet=quiet, command=f"{command} (variant {name})")
    record = collect(exp, results, command=command, base_cfg=cfg)
    atomic_write_json(os.path.join(out, "ablation.json"), record)
    atomic_write_text(os.path.join(out, "ablation.md"), render(exp, record))
    # each variant's report was written before the others had run: rewrite it with the ablation beside it
    for name, res in results.items():
        write_report(exp, res, os.path.join(out, name))
    return record


def with_current_verdicts(exp, record: dict) -> dict:
    """``record`` with its scale and direction rows recomputed from the variants' summaries, so that a change of
    the paper's values or of the verdict rule reaches an ablation run before it."""
    scale = scale_rows(exp, record["variants"]) if exp.ablation.scale else []
    return {**record, "scale": scale, "direction": direction_rows(exp, record["variants"])}


def rebuild(exp, out: str) -> dict:
    """Rewrite ablation.json's rows and ablation.md (after the experiment's paper values, the verdict rule or the
    wording change)."""
    with open(os.path.join(out, "ablation.json"), encoding="utf-8") as f:
        record = with_current_verdicts(exp, json.load(f))
    atomic_write_json(os.path.join(out, "ablation.json"), record)
    atomic_write_text(os.path.join(out, "ablation.md"), render(exp, record))
    return record


def summary_table(exp, record: dict) -> str:
    """Plain text for the terminal: one line per variant with each activation's mean of each metric."""
    lines = []
    for name, v in record["variants"].items():
        parts = [f"{a} " + "/".join(f"{s[m]['mean']:.2f}" if s[m]["mean"] is not None else "—" for m in exp.metrics)
                 for a, s in v["summary"].items()]
        lines.append(f"{name:<24} " + "; ".join(parts))
    return f"variant: activation {'/'.join(exp.metrics)}\n" + "\n".join(lines)
