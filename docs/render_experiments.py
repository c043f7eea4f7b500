"""Renderers of the generated tables in docs/experiments.md (see docs/generate.py).

Every number these print comes from a file under ``results/experiments/`` (the ``results.json`` a ``colu run``
wrote, the ``ablation.json`` of ``colu sweep --ablation``, the ``results.json`` of ``colu align``); the paper's
numbers come from the experiment's own :class:`colu_lab.framework.paper.PaperReference`, and the verdicts from
the same rule the run reports use (:func:`colu_lab.framework.report.claim_verdicts`). Arguments are paths
relative to the repository root, then metric names; a metric may be written ``NAME@STEP`` in ``curve-at``.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import statistics
import sys

_SRC = pathlib.Path(__file__).resolve().parent.parent / "src"
if str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))

from colu_lab.framework.config import optimizer_description  # noqa: E402
from colu_lab.framework.paper import MIN_SEEDS, format_number  # noqa: E402
from colu_lab.framework.report import claim_verdicts, comparability, summarize  # noqa: E402
from colu_lab.registry import EXPERIMENTS  # noqa: E402


# ------------------------------------------------------------------ helpers
def _load(root, path) -> dict:
    return json.loads((pathlib.Path(root) / path).read_text(encoding="utf-8"))


def _experiment(results: dict):
    return EXPERIMENTS[results["experiment"]]


def _num(value, like=None) -> str:
    """A metric value: 3 significant digits in exponent form below 0.01 (an MSE), else as the run reports print."""
    scale = abs(value if like is None else like)
    if 0 < scale < 1e-2:
        return f"{value:.2e}"
    return format_number(value, like=like)


def _cited(cited) -> str:
    """A number the paper (or the experiment's reference) gives, as it gives it."""
    if cited.mean is None:
        return "unstable"
    if cited.std is None or (cited.std == 0 and cited.mean != 0):  # a count (FLOPs) quoted without a spread
        return _num(cited.mean)
    return f"{_num(cited.mean)} ± {_num(cited.std, like=cited.mean)}"


def _pm(stats, metric: str = "") -> str:
    """``mean ± std`` as the run reports print it; one seed prints its value alone; a step count as a count."""
    if stats is None or stats.get("mean") is None:
        return "diverged" if stats and stats.get("diverged") else "—"
    mean, std = stats["mean"], stats["std"]
    if metric.endswith("_step"):
        return f"{mean:g}" if stats["n"] == 1 else f"{mean:g} ± {std:.3g}"
    if stats["n"] == 1:
        return _num(mean)
    return f"{_num(mean)} ± {_num(std, like=mean)}"


def _stats(values) -> dict:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return {"mean": statistics.fmean(finite) if finite else None,
            "std": statistics.stdev(finite) if len(finite) > 1 else (0.0 if finite else None),
            "n": len(finite), "diverged": len(values) - len(finite)}


def _widths(results) -> dict:
    return {r["activation"]: r.get("width") for r in results["runs"]}


def _seeds(results, act) -> int:
    return sum(1 for r in results["runs"] if r["activation"] == act)


def _table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------ renderers
def run_table(root, path, *args) -> str:
    """One row per activation: C, seeds, mean ± std of each metric (default: all the experiment's metrics).

    A final argument ``+paper`` adds, for each metric, the paper's number for the same activation and width
    (as the experiment quotes it; "—" where the paper has no such row).
    """
    results = _load(root, path)
    exp = _experiment(results)
    with_paper = "+paper" in args
    metrics = [a for a in args if a != "+paper"] or list(exp.metrics)
    summary = summarize(results["runs"], metrics)
    widths = _widths(results)
    header = ["activation", "C", "seeds"]
    for m in metrics:
        header += [f"`{m}`"] + ([f"paper `{m}`"] if with_paper else [])
    rows = []
    for act, per_metric in summary.items():
        row = [f"`{act}`", widths.get(act), _seeds(results, act)]
        cited = exp.paper.values.get((act, widths.get(act)), {})
        for m in metrics:
            row.append(_pm(per_metric[m], m))
            if with_paper:
                row.append(_cited(cited[m]) if m in cited else "—")
        rows.append(row)
    return _table(header, rows)


def run_settings(root, path) -> str:
    """What the run folder says it ran: data, budget, optimiser, preset, device and wall time."""
    results = _load(root, path)
    exp = _experiment(results)
    cfg, data = results["config"], results["data"]
    seeds = sorted({r["seed"] for r in results["runs"]})
    steps = sorted({r.get("steps") for r in results["runs"]})
    budget = (f"{steps[0]} optimizer steps per run" if len(steps) == 1
              else "optimizer steps per run: " + ", ".join(f"`{r['activation']}` seed {r['seed']}: {r.get('steps')}"
                                                          for r in results["runs"]))
    world = results["world_size"]
    lines = [f"- data: {data['description']}",
             f"- {budget}, batch {cfg['batch_size']}, {data['train_examples']} training examples; seeds "
             f"{', '.join(map(str, seeds))} per activation",
             f"- {optimizer_description(cfg)}",
             f"- preset: {cfg.get('preset') or 'none (the defaults and the options given)'}; "
             f"device {results['device']}, {results.get('precision', 'float32')}, {world} "
             f"process{'es' if world > 1 else ''}; {results['wall_seconds'] / 60:.1f} min wall for the whole folder"]
    reasons = comparability(exp, results)
    if reasons:
        lines.append(f"- differs from the reference settings: {'; '.join(reasons)}")
    return "\n".join(lines)


def run_claims(root, path) -> str:
    """The run report's verdict on each of the experiment's claims, from the folder's numbers."""
    results = _load(root, path)
    return "\n".join(claim_verdicts(_experiment(results), results)) or "- (no claims for this experiment)"


def run_seeds(root, path, *metrics) -> str:
    """One row per run (activation, seed): the steps it trained and its final metrics."""
    results = _load(root, path)
    exp = _experiment(results)
    metrics = list(metrics) or list(exp.metrics)
    rows = [[f"`{r['activation']}`", r["seed"], r.get("steps")] + [_num(r["metrics"][m]) for m in metrics]
            for r in results["runs"]]
    return _table(["activation", "seed", "steps"] + [f"`{m}`" for m in metrics], rows)


def difference(root, path, better, other, *metrics) -> str:
    """Δ = mean(``better``) − mean(``other``) on each metric, with 2·SE over seeds (the reports' rule)."""
    results = _load(root, path)
    summary = summarize(results["runs"], metrics)
    rows = []
    for m in metrics:
        a, b = summary[better][m], summary[other][m]
        diff = a["mean"] - b["mean"]
        two_se = 2 * math.sqrt(a["std"] ** 2 / a["n"] + b["std"] ** 2 / b["n"])
        judged = "beyond 2·SE" if abs(diff) > two_se else "within 2·SE"
        if min(a["n"], b["n"]) < MIN_SEEDS:
            judged += f" (too few seeds for a verdict: {a['n']} vs {b['n']})"
        places = 2 if abs(b["mean"]) >= 10 else 4  # losses near 1 (the GPT's) need more than two decimals
        rows.append([f"`{m}`", _pm(a), _pm(b), f"{diff:+.{places}f}", f"{two_se:.{places}f}", judged])
    return _table(["metric", f"`{better}`", f"`{other}`", "Δ", "2·SE", "Δ against 2·SE"], rows)


def _curve_rows(root, path, metric, steps) -> list:
    """Per activation of a run folder: its label, its seed count and ``metric`` (mean ± std) at each step."""
    results = _load(root, path)
    rows = []
    for act in dict.fromkeys(r["activation"] for r in results["runs"]):
        runs = [r for r in results["runs"] if r["activation"] == act]
        row = [f"`{act}`", len(runs)]
        for step in steps:
            values = []
            for r in runs:
                point = [p for p in r["curve"] if p["step"] == step]
                if not point:
                    raise ValueError(f"{path}: {act} seed {r['seed']} has no evaluation at step {step}")
                values.append(point[0][metric])
            row.append(_pm(_stats(values)))
        rows.append(row)
    return rows


def curve_at(root, path, metric, *steps) -> str:
    """Mean ± std over seeds of ``metric`` at the evaluation points of the given steps, per activation."""
    steps = [int(s) for s in steps]
    return _table(["activation", "seeds"] + [f"`{metric}` at step {s}" for s in steps],
                  _curve_rows(root, path, metric, steps))


def curve_by_folder(root, metric, steps, *paths) -> str:
    """``metric`` (mean ± std over seeds) at the comma-separated ``steps``, one row per folder and activation,
    each folder labelled by its name: runs that differ in one setting, side by side."""
    steps = [int(s) for s in steps.split(",")]
    rows = []
    for path in paths:
        folder = os.path.basename(os.path.dirname(path))  # .../FOLDER/results.json
        rows += [[f"`{folder}`", *row] for row in _curve_rows(root, path, metric, steps)]
    return _table(["folder", "activation", "seeds"] + [f"`{metric}` at step {s}" for s in steps], rows)


def _quantiles(stats, what) -> str:
    return " / ".join(f"{stats[f'{what}_q{q}']:.3f}" for q in (10, 50, 90))


def vae_cones(root, path) -> str:
    """``mnist_vae.diagnose cones``: per gain and seed, r = a/|s| and the soft weight w(r) at initialisation."""
    data = _load(root, path)
    rows = []
    for row in data["rows"]:
        for part in ("encoder", "decoder"):
            stats = row[part]
            rows.append([f"{row['axis_init_gain']:g}", row["seed"], part, _quantiles(stats, "r"),
                         _quantiles(stats, "w"), f"{stats['inside']:.3f}", f"{stats['nonpositive']:.3f}"])
    return _table(["`axis_init_gain`", "seed", "activation", "r 10% / 50% / 90%", "w(r) 10% / 50% / 90%",
                   "share r ≥ 1", "share r ≤ 0"], rows)


def kl_batches(root, path) -> str:
    """``mnist_vae.diagnose kl-batches``: mean ± std over seeds of the test loss per KL chunk size."""
    data = _load(root, path)
    sizes = [k for k in data["rows"][0] if k.startswith("test_loss_chunks_")]
    rows = []
    for act in dict.fromkeys(r["activation"] for r in data["rows"]):
        runs = [r for r in data["rows"] if r["activation"] == act]
        rows.append([f"`{act}`", len(runs)] + [_pm(_stats([r[k] for r in runs])) for k in sizes])
    return _table(["activation", "seeds"] + [f"chunks of {k.rsplit('_', 1)[1]}" for k in sizes], rows)


def palettes(root, path) -> str:
    """``colu palettes``: per activation and seed pair, the residual unaligned, after the best permutation and
    after the best group element, beside what each alignment achieves on unrelated filters (chance)."""
    data = _load(root, path)
    rows = []
    for act, entry in data["activations"].items():
        for pair in entry["pairs"]:
            rows.append([f"`{act}`", f"{entry['channels']}", " & ".join(map(str, pair["seeds"])),
                         f"{pair['residual_identity']:.4f}", f"{pair['residual_permutation']:.4f}",
                         f"{pair['residual_group']:.4f}",
                         f"{pair['chance_permutation']:.4f} / {pair['chance_group']:.4f}"])
    return _table(["activation", "C", "seeds", "unaligned", "best permutation", "best group element",
                   "chance (permutation / group)"], rows)


def by_setting(root, key, *args) -> str:
    """One row per run folder, labelled by its config value of ``key``: every activation's final metrics.

    A final ``+paper`` adds the paper's number for each activation and metric, as in ``run-table``.
    """
    with_paper = "+paper" in args
    rows, metrics = [], None
    for path in (a for a in args if a != "+paper"):
        results = _load(root, path)
        exp = _experiment(results)
        metrics = metrics or list(exp.metrics)
        summary = summarize(results["runs"], metrics)
        widths = _widths(results)
        for act, per_metric in summary.items():
            cited = exp.paper.values.get((act, widths.get(act)), {})
            value = results["config"].get(key)  # runs saved before the setting existed: its default
            row = [f"`{value}`" if value is not None else "(default)", f"`{act}`", _seeds(results, act)]
            for m in metrics:
                row.append(_pm(per_metric[m]))
                if with_paper:
                    row.append(_cited(cited[m]) if m in cited else "—")
            rows.append(row)
    header = [f"`{key}`", "activation", "seeds"]
    for m in metrics:
        header += [f"`{m}`"] + ([f"paper `{m}`"] if with_paper else [])
    return _table(header, rows)


def cap_rotation(root, short, long) -> str:
    """Eval MSE of the 400-step and 2000-step runs beside the jax-colu README's one run (seed 0, 400 steps)."""
    a, b = _load(root, short), _load(root, long)
    exp = _experiment(a)
    sa, sb = summarize(a["runs"], ["eval_mse"]), summarize(b["runs"], ["eval_mse"])
    widths = _widths(a)
    rows = []
    for act in sa:
        seed0 = [r for r in a["runs"] if r["activation"] == act and r["seed"] == 0]
        cited = exp.paper.values.get((act, widths.get(act)), {}).get("eval_mse")
        rows.append([f"`{act}`", f"{_pm(sa[act]['eval_mse'])} (n={sa[act]['eval_mse']['n']})",
                     _num(seed0[0]["metrics"]["eval_mse"]) if seed0 else "—",
                     _cited(cited) if cited else "—",
                     f"{_pm(sb[act]['eval_mse'])} (n={sb[act]['eval_mse']['n']})" if act in sb else "—"])
    return _table(["activation", "400 steps, all seeds", "400 steps, seed 0", "jax-colu README (seed 0, 400 steps)",
                   "2000 steps, all seeds"], rows)


def ablation(root, path) -> str:
    """``colu sweep --ablation``: per variant, train / test loss of each activation; Table 1's row last."""
    record = _load(root, path)
    exp = EXPERIMENTS[record["experiment"]]
    variants = record["variants"]
    acts = list(dict.fromkeys(a for v in variants.values() for a in v["summary"]))
    metrics = list(exp.metrics)
    base = next(iter(variants))
    rows = []
    for name, v in variants.items():
        label = f"`{name}`" + (" (default)" if name == base else "")
        rows.append([label] + [" / ".join(_pm(v["summary"][a][m]) for m in metrics) if a in v["summary"] else "—"
                               for a in acts])
    widths = variants[base]["widths"]
    paper_row = ["paper (Table 1)"]
    for a in acts:
        cited = exp.paper.values.get((a, widths.get(a)), {})
        paper_row.append(" / ".join(_cited(cited[m]) if m in cited else "—"
                                    for m in metrics))
    rows.append(paper_row)
    seeds = record["base_config"].get("seeds")
    return _table(["variant"] + [f"`{a}` {' / '.join(metrics)} ({seeds} seeds)" for a in acts], rows)


def ablation_comparison(root, path) -> str:
    """The ablation's scale and direction tables (``ablation.md``'s), their rows recomputed from the variants'
    summaries in ``ablation.json`` under the current verdict rule."""
    from colu_lab.framework.ablation import with_current_verdicts
    from colu_lab.framework.ablation_tables import comparison_tables

    exp = EXPERIMENTS[_load(root, path)["experiment"]]
    record = with_current_verdicts(exp, _load(root, path))
    return "\n".join(comparison_tables(exp, record, level="####")).strip("\n")


def align_barriers(root, *paths) -> str:
    """``colu align``: per folder and activation, the barrier naive -> weight-matched -> state-matched."""
    rows = []
    for path in paths:
        results = _load(root, path)
        cfg, data = results["config"], results["data"]
        label = f"{results['experiment'].removeprefix('align-')} on {data['name']} ({data['train_examples']} train)"
        for i, r in enumerate(results["runs"]):
            m = r["metrics"]
            cell = " → ".join(f"{m[f'barrier_{k}']:.3f}" for k in ("naive", "weights", "states"))
            extra = [name.removesuffix("_barrier_naive") for name in m if name.endswith("_barrier_naive")]
            for name in extra:
                cell += f" ({name.upper()}: " + " → ".join(f"{m[f'{name}_barrier_{k}']:.2f}"
                                                         for k in ("naive", "weights", "states")) + ")"
            rows.append([label if i == 0 else "", f"`{r['activation']}`", f"{r['seed']} / {r['seed_b']}", cell])
    return _table(["models", "activation", "seeds", "barrier naive → weight-matched → state-matched"], rows)


def align_verdicts(root, path) -> str:
    """The ``colu align`` report's verdicts (alignment lowers the barrier; weights flatter than states)."""
    from colu_lab.commands.align import verdict_lines

    return "\n".join(verdict_lines(_load(root, path)))


def readings(root, name) -> str:
    """The readings an experiment declares (its ``READINGS``, what ``--show-config`` prints), as a list: the setting
    and our value, the paper's sentence, why, and how to switch. ``name``: an experiment of the registry, or
    ``finetune-diffusers`` (the Stable Diffusion fine-tune, a command without a run contract)."""
    from colu_lab.framework.readings import readings_markdown

    if name == "finetune-diffusers":
        from colu_lab.experiments.sd_finetune.command import READINGS

        return readings_markdown(READINGS)
    return readings_markdown(EXPERIMENTS[name].readings, EXPERIMENTS[name].Config)


RENDERERS = {
    "readings": readings,
    "run-table": run_table,
    "run-settings": run_settings,
    "run-claims": run_claims,
    "run-seeds": run_seeds,
    "curve-at": curve_at,
    "difference": difference,
    "by-setting": by_setting,
    "curve-by-folder": curve_by_folder,
    "vae-cones": vae_cones,
    "kl-batches": kl_batches,
    "palettes": palettes,
    "cap-rotation": cap_rotation,
    "ablation": ablation,
    "ablation-comparison": ablation_comparison,
    "align-barriers": align_barriers,
    "align-verdicts": align_verdicts,
}
