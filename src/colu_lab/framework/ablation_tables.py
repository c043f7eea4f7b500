"""The tables that set an ablation's variants beside each other and beside the paper.

Pure functions of an ablation record (``ablation.json``): the ablation command
writes them into ``ablation.md``, and a run's report shows them when the run
is one variant of an ablation. See :mod:`colu_lab.framework.ablation`.
"""

from __future__ import annotations

import json
import math
import os

from colu_lab.framework.paper import MIN_SEEDS


def metric_stats(summary, act, metric):
    stats = summary.get(act, {}).get(metric)
    return None if stats is None or stats["mean"] is None else stats


def plus_minus(stats) -> str:
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
            ours = metric_stats(v["summary"], ablation.scale, m)
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
                sa, sb = metric_stats(summary, a, m), metric_stats(summary, b, m)
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
                    elif min(sa["n"], sb["n"]) < MIN_SEEDS:
                        row["verdict"] = ("same" if (diff > 0) == (paper > 0) and diff != 0 else "opposite") + \
                            " (too few seeds)"
                    elif (diff > 0) != (paper > 0) or diff == 0:
                        row["verdict"] = "opposite" + ("" if abs(diff) > 2 * se else " (within noise)")
                    else:
                        row["verdict"] = "same" + (" (clear)" if abs(diff) > 2 * se else " (within noise)")
                rows.append(row)
    return rows


def describe_settings(settings: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items()) or "(base settings)"


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
                  "Δ = mean of the first activation minus mean of the second; *(too few seeds)* with fewer than "
                  f"{MIN_SEEDS} seeds on either side, else *same (clear)* when the sign "
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
