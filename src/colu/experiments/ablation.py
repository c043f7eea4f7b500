"""``colu sweep NAME --ablation``: an experiment's alternative grid of settings, side by side.

The experiment's :class:`colu.experiments.contract.Ablation` names variants
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
import math
import os

from ..files import atomic_write_json, atomic_write_text
from .config import _coerce, config_to_dict, optimizer_description


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
        values = {k: _coerce(type(cfg), k, v, f"ablation variant {name}") for k, v in settings.items()}
        out[name] = dataclasses.replace(cfg, **values, activations=list(activations))
    return out


def _stats(summary, act, metric):
    stats = summary.get(act, {}).get(metric)
    return None if stats is None or stats["mean"] is None else stats


def _pm(stats) -> str:
    if stats is None:
        return "—"
    if stats["n"] < 2:
        return f"{stats['mean']:.2f} (n={stats['n']})"
    return f"{stats['mean']:.2f} ± {stats['std']:.2f}"


def scale_rows(exp, variants: dict) -> list[dict]:
    """Per variant: the scale activation's mean of each metric beside the paper's, with the relative difference."""
    ablation, metrics = exp.ablation, list(exp.metrics)
    rows = []
    for name, v in variants.items():
        width = v["widths"].get(ablation.scale)
        cited = exp.paper.values.get((ablation.scale, width), {})
        row = {"variant": name}
        for m in metrics:
            ours = _stats(v["summary"], ablation.scale, m)
            paper = cited.get(m)
            rel = (None if ours is None or paper is None or paper.mean in (None, 0)
                   else (ours["mean"] - paper.mean) / abs(paper.mean))
            row[m] = {"ours": None if ours is None else ours["mean"],
                      "se": None if ours is None else ours["std"] / math.sqrt(max(ours["n"], 1)),
                      "paper": None if paper is None else paper.mean, "relative": rel}
        rels = [row[m]["relative"] for m in metrics if row[m]["relative"] is not None]
        row["mean_abs_relative"] = sum(abs(r) for r in rels) / len(rels) if rels else None
        rows.append(row)
    return rows


def direction_rows(exp, variants: dict) -> list[dict]:
    """Per variant, pair and metric: our ``a - b`` and 2·SE beside the paper's ``a - b``."""
    rows = []
    for name, v in variants.items():
        summary, widths = v["summary"], v["widths"]
        for a, b in exp.ablation.pairs:
            for m in exp.metrics:
                sa, sb = _stats(summary, a, m), _stats(summary, b, m)
                pa = exp.paper.values.get((a, widths.get(a)), {}).get(m)
                pb = exp.paper.values.get((b, widths.get(b)), {}).get(m)
                paper = None if pa is None or pb is None or None in (pa.mean, pb.mean) else pa.mean - pb.mean
                row = {"variant": name, "pair": [a, b], "metric": m, "paper": paper, "ours": None, "two_se": None,
                       "verdict": "not run"}
                if sa is not None and sb is not None:
                    diff = sa["mean"] - sb["mean"]
                    se = math.sqrt(sa["std"] ** 2 / max(sa["n"], 1) + sb["std"] ** 2 / max(sb["n"], 1))
                    row.update(ours=diff, two_se=2 * se)
                    if paper is None:
                        row["verdict"] = "no paper value"
                    elif (diff > 0) != (paper > 0) or diff == 0:
                        row["verdict"] = "opposite" + ("" if abs(diff) > 2 * se else " (within noise)")
                    else:
                        row["verdict"] = "same" + (" (clear)" if abs(diff) > 2 * se else " (within noise)")
                rows.append(row)
    return rows


def _describe(settings: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items()) or "(base settings)"


def render(exp, record: dict) -> str:
    """ablation.md from an ablation record (see :func:`run_ablation`)."""
    from .report import budget_line, comparability

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
    reasons = comparability(first["results"])
    if reasons:
        lines.append(f"- differs from the paper's settings (first variant): {'; '.join(reasons)}")
    lines += ["", "## Results (mean ± std over seeds)", ""]
    acts = list(dict.fromkeys(a for v in variants.values() for a in v["summary"]))
    header = ["variant", "settings"] + [f"`{a}` {m}" for a in acts for m in metrics]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, v in variants.items():
        cells = [f"`{name}`", _describe(v["settings"])]
        cells += [_pm(_stats(v["summary"], a, m)) for a in acts for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    lines += comparison_tables(exp, record)
    lines += ["", "Each variant's own report (claims, curves, config) is `VARIANT/report.md`; raw numbers are in "
              "ablation.json and each variant's results.json.", ""]
    return "\n".join(lines)


def comparison_tables(exp, record: dict, level: str = "##") -> list[str]:
    """The scale and direction tables of an ablation record, as markdown lines under ``level`` headings."""
    ablation, metrics, variants = exp.ablation, list(exp.metrics), record["variants"]
    lines = []
    if ablation.scale:
        lines += ["", f"{level} Scale: `{ablation.scale}` beside the paper", "",
                  "Relative difference (ours - paper) / paper; the closest variant has the smallest mean of its "
                  "absolute values.", ""]
        header = ["variant"] + [h for m in metrics for h in (f"{m} ours", f"{m} paper", "rel. diff.")]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in record["scale"]:
            cells = [f"`{row['variant']}`"]
            for m in metrics:
                c = row[m]
                cells += ["—" if c["ours"] is None else f"{c['ours']:.2f}",
                          "—" if c["paper"] is None else f"{c['paper']:.2f}",
                          "—" if c["relative"] is None else f"{c['relative']:+.1%}"]
            lines.append("| " + " | ".join(cells) + " |")
        ranked = [r for r in record["scale"] if r["mean_abs_relative"] is not None]
        if ranked:
            best = min(ranked, key=lambda r: r["mean_abs_relative"])
            ties = [r["variant"] for r in ranked if r is not best and _tied(r, best, metrics)]
            lines += ["", f"Closest to the paper's scale: `{best['variant']}` (mean |relative difference| "
                          f"{best['mean_abs_relative']:.1%}); within 2·SE of it on every metric: "
                          + (", ".join(f"`{t}`" for t in ties) if ties else "none") + "."]
    if ablation.pairs:
        lines += ["", f"{level} Direction: differences beside the paper's", "",
                  "Δ = mean of the first activation minus mean of the second; *same (clear)* when the sign "
                  "matches the paper's and |Δ| > 2·SE over seeds.", ""]
        lines += ["| variant | pair | metric | Δ ours (2·SE) | Δ paper | verdict |", "|---|---|---|---|---|---|"]
        for row in record["direction"]:
            ours = "—" if row["ours"] is None else f"{row['ours']:+.2f} ({row['two_se']:.2f})"
            paper = "—" if row["paper"] is None else f"{row['paper']:+.2f}"
            lines.append(f"| `{row['variant']}` | `{row['pair'][0]}` − `{row['pair'][1]}` | {row['metric']} | "
                         f"{ours} | {paper} | {row['verdict']} |")
        full = [name for name in variants
                if all(r["verdict"].startswith("same") for r in record["direction"] if r["variant"] == name)]
        lines += ["", "Variants with the paper's direction on every pair and metric: "
                  + (", ".join(f"`{n}`" for n in full) if full else "none") + "."]
    return lines


def _tied(row: dict, best: dict, metrics) -> bool:
    """Every metric of ``row`` within 2·SE (over seeds, both rows' errors combined) of ``best``'s."""
    for m in metrics:
        a, b = row[m], best[m]
        if a["ours"] is None or b["ours"] is None:
            return False
        se = math.sqrt((a.get("se") or 0.0) ** 2 + (b.get("se") or 0.0) ** 2)
        if abs(a["ours"] - b["ours"]) > 2 * se:
            return False
    return True


def report_section(exp, out_dir: str) -> list[str]:
    """For the report of a run folder that is a variant of an ablation: the other readings tried beside it.

    Empty unless ``out_dir``'s parent holds this experiment's ablation.json
    naming ``out_dir`` as a variant, so a claim the run does not reproduce
    is shown with the ablation rows that were tried (a diagnosis, not just
    a verdict).
    """
    parent, name = os.path.split(os.path.normpath(out_dir))
    path = os.path.join(parent, "ablation.json")
    if exp.ablation is None or not os.path.exists(path):
        return []
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return []  # a damaged ablation record only loses this section; the run's own report stands
    if record.get("experiment") != exp.name or name not in record.get("variants", {}):
        return []
    return (["", "## Other readings tried (ablation)", "",
             f"This run is variant `{name}` of `{record.get('command') or 'an ablation'}` (see ../ablation.md); "
             "the claims above are judged under this variant's settings alone."]
            + comparison_tables(exp, record, level="###"))


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
    record["scale"] = scale_rows(exp, variants) if exp.ablation.scale else []
    record["direction"] = direction_rows(exp, variants)
    return record


def run_ablation(exp, cfg, out: str, *, explicit=frozenset(), resume: bool = False, overwrite: bool = False,
                 quiet: bool = False, command: str = "") -> dict:
    """Train every variant of ``exp``'s ablation (each in ``out/VARIANT``), then write ablation.json/.md.

    A fresh ablation refuses an ``out`` whose variant folders hold results
    (``overwrite=True`` deletes them first, folder by folder); ``resume=True``
    continues each variant folder that has started and starts the others.
    """
    from .rundir import RunFolder
    from .runner import run_all

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
            print(f"[ablation {exp.name}] variant {name}: {_describe(exp.ablation.variants(cfg)[name])}", flush=True)
        results[name] = run_all(exp, vcfg, folder, resume=resume and started, overwrite=overwrite,
                                quiet=quiet, command=f"{command} (variant {name})")
    record = collect(exp, results, command=command, base_cfg=cfg)
    atomic_write_json(os.path.join(out, "ablation.json"), record)
    atomic_write_text(os.path.join(out, "ablation.md"), render(exp, record))
    # each variant's report was written before the others had run: rewrite it with the ablation beside it
    from .report import write_report

    for name, res in results.items():
        write_report(res, os.path.join(out, name))
    return record


def rebuild(exp, out: str) -> dict:
    """Rewrite ablation.md from ablation.json (after the experiment's paper values or wording change)."""
    with open(os.path.join(out, "ablation.json"), encoding="utf-8") as f:
        record = json.load(f)
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
