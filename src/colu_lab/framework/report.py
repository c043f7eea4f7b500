"""Summaries, learning-curve plots and report.md, all computed from the run records.

Nothing here types a number in: ours come from ``results.json``, the paper's
from the experiment's :class:`colu_lab.framework.paper.PaperReference`. Nothing
here names an experiment either: what to compare, plot and note comes from its
:class:`colu_lab.framework.contract.Experiment`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import shlex
import statistics

from colu.files import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json_object
from colu_lab.framework.ablation_tables import report_section
from colu_lab.framework.config import optimizer_description
from colu_lab.framework.paper import MIN_SEEDS, format_number


def summarize(runs, metrics) -> dict:
    """activation -> metric -> {mean, std (sample, 0 for one run), n (finite runs), diverged}.

    A metric a run does not report (its key is absent, e.g. a level its curve never reached) counts in
    neither ``n`` nor ``diverged``; ``None`` or a non-finite value counts as diverged.
    """
    out = {}
    for act in dict.fromkeys(r["activation"] for r in runs):
        rows = [r for r in runs if r["activation"] == act]
        out[act] = {}
        for m in metrics:
            values = [r["metrics"][m] for r in rows if m in r["metrics"]]
            finite = [v for v in values if v is not None and math.isfinite(v)]
            out[act][m] = {
                "mean": statistics.fmean(finite) if finite else None,
                "std": statistics.stdev(finite) if len(finite) > 1 else (0.0 if finite else None),
                "n": len(finite),
                "diverged": len(values) - len(finite),
            }
    return out


def _fmt(stats) -> str:
    if stats is None or stats["mean"] is None:
        return "diverged" if stats and stats["diverged"] else "—"
    mean, std = stats["mean"], stats["std"]
    # one seed has no spread to show: "± 0.0000" would claim a precision nobody measured
    text = (f"{format_number(mean)} (n=1)" if stats["n"] == 1
            else f"{format_number(mean)} ± {format_number(std, like=mean)}")
    if stats.get("diverged"):
        text += f" ({stats['diverged']} diverged)"
    return text


def _widths(results) -> dict:
    return {r["activation"]: r.get("width") for r in results["runs"]}


def _steps_per_run(results):
    steps = {r.get("steps") for r in results.get("runs", [])}
    return steps.pop() if len(steps) == 1 else None


def budget_line(results) -> str:
    """'590 optimizer steps per run (batch 1024; 295 epochs of the 1438 training examples, 2 steps each)'.

    An epoch is ``ceil(n / batch)`` steps, as the runner counts it (the last batch of an epoch may be smaller),
    not ``n / batch``."""
    steps = _steps_per_run(results)
    if steps is None:
        return "optimizer steps per run: " + ", ".join(
            f"{r['activation']} seed {r['seed']}: {r.get('steps')}" for r in results["runs"])
    run = results["runs"][0]
    batch, n = run.get("batch_size"), run.get("train_examples")
    if not batch or not n:
        return f"{steps} optimizer steps per run"
    per_epoch = math.ceil(n / min(batch, n))
    return (f"{steps} optimizer steps per run (batch {batch}; {steps / per_epoch:.3g} epochs of the {n} training "
            f"examples, {per_epoch} step{'s' if per_epoch > 1 else ''} each)")


# ------------------------------------------------------------- comparability
def comparability(exp, results) -> list[str]:
    """Why these numbers cannot be set beside the paper's (empty list: they can)."""
    cfg = results["config"]
    readings = {r.setting for r in getattr(exp, "readings", ())}
    defaults = {f.name: f for f in dataclasses.fields(exp.Config)}
    reasons = []
    for key, want in exp.paper.settings.items():
        if key in cfg:
            have = cfg[key]
        elif key in defaults and defaults[key].default is not dataclasses.MISSING:
            have = defaults[key].default  # a setting added after this run was saved: the run had its default
        else:
            have = None
        if key == "steps":  # the budget actually trained, however it was asked for (--epochs or --steps)
            have = _steps_per_run(results) or have
        if key == "weight_decay_mode" and not cfg.get("weight_decay"):
            continue  # no decay: how it would have been applied changes nothing
        if have != want:
            # a reading is ours, not the paper's: say so, so that the line is not read as a quote
            source = "our reading of the paper" if key in readings else "paper"
            reasons.append(f"{key} = {have!r} ({source}: {want!r})")
    if cfg.get("split_from_test"):
        reasons.append(f"trained on {results['data']['train_examples']} examples carved from the test set "
                       "(--split-from-test), not the full training set")
    # what the data loader found to differ from the paper's data (e.g. another text corpus)
    reasons += [str(r) for r in results.get("data", {}).get("differs_from_paper", [])]
    return reasons


def claim_verdicts(exp, results) -> list[str]:
    reference, summary = exp.paper, results["summary"]
    reasons = comparability(exp, results)
    qualitative = reference.figure_only
    lines = []
    for claim in reference.claims:
        present = claim.better in summary and all(t in summary for t in claim.than)
        head = f"- **{claim.text}** ({claim.source}): "
        if not present:
            missing = [a for a in (claim.better, *claim.than) if a not in summary]
            lines.append(head + f"not tested (no runs for {', '.join(missing)}).")
            continue
        stats = [summary[a].get(claim.metric) for a in (claim.better, *claim.than)]
        if any(s is None or (s["n"] == 0 and not s["diverged"]) for s in stats):
            lines.append(head + f"not measured (no run here reports `{claim.metric}`; see the metric's "
                                "definition in the experiment's documentation).")
            continue
        b = summary[claim.better][claim.metric]
        observed, holds, clear, seeds = [], True, True, [b["n"]]
        for other in claim.than:
            o = summary[other][claim.metric]
            seeds.append(o["n"])
            if b["mean"] is None or o["mean"] is None:
                holds, clear = False, False
                observed.append(f"{other}: a run diverged")
                continue
            diff = b["mean"] - o["mean"]
            better = diff > 0 if claim.higher_is_better else diff < 0
            se = math.sqrt((b["std"] ** 2) / max(b["n"], 1) + (o["std"] ** 2) / max(o["n"], 1))
            holds &= better
            clear &= abs(diff) > 2 * se
            observed.append(f"{claim.better} {b['mean']:.4g} vs {other} {o['mean']:.4g} (Δ={diff:+.3g}, "
                            f"2·SE={2 * se:.2g})")
        seen = "; ".join(observed)
        if min(seeds) < MIN_SEEDS:
            also = " Settings also differ from the paper's (see above)." if reasons else ""
            lines.append(head + f"too few seeds for a verdict ({' vs '.join(map(str, seeds))} finished seeds; "
                                f"{MIN_SEEDS} per activation needed, --seeds {MIN_SEEDS}). Observed here: {seen}.{also}")
        elif reasons:
            direction = "same direction" if holds else "opposite direction or tie"
            lines.append(head + f"not comparable (settings differ from the paper's, see above). "
                                f"Observed here ({direction}): {seen}.")
        elif holds and clear:
            note = " Paper shows this as a figure; no numbers to match." if qualitative else ""
            lines.append(head + f"reproduced: {seen}.{note}")
        elif holds:
            lines.append(head + f"not reproduced: same direction but within noise (|Δ| ≤ 2·SE): {seen}.")
        else:
            lines.append(head + f"not reproduced: {seen}.")
    return lines


# ------------------------------------------------------------------- plots
def save_figure(fig, out_dir: str, filename: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    path = os.path.join(out_dir, filename)
    atomic_write_bytes(path, buf.getvalue())
    return path


def plot_curves(results, out_dir: str, metrics, log_metrics=(), x: str = "epoch") -> list[str]:
    """One PNG per metric: mean ± std over seeds against training epochs (or steps), one line per activation.

    Metrics in ``log_metrics`` get a log scale when every value is positive.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for metric in metrics:
        fig, ax = plt.subplots(figsize=(6, 4))
        for act in dict.fromkeys(r["activation"] for r in results["runs"]):
            mine = [r for r in results["runs"] if r["activation"] == act]
            # a diverged run's curve ends where it stopped: it would cut the others' short
            curves = [r["curve"] for r in mine if not r.get("diverged")] or [r["curve"] for r in mine]
            length = min(len(c) for c in curves)
            xs = [p[x] for p in curves[0][:length]]
            means, stds = [], []
            for i in range(length):
                vals = [c[i][metric] for c in curves if c[i].get(metric) is not None]
                means.append(statistics.fmean(vals) if vals else float("nan"))
                stds.append(statistics.stdev(vals) if len(vals) > 1 else 0.0)
            line, = ax.plot(xs, means, label=f"{act} (n={len(curves)})")
            ax.fill_between(xs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                            color=line.get_color(), alpha=0.2)
        ax.set_xlabel("optimizer step" if x == "step" else "epoch")
        ax.set_ylabel(metric)
        shown = [p[metric] for r in results["runs"] for p in r["curve"] if p.get(metric) is not None]
        if metric in log_metrics and shown and all(v > 0 for v in shown):  # nothing to show: no log scale
            ax.set_yscale("log")
        ax.set_title(f"{results['experiment']}: {metric} (mean ± std over seeds)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(save_figure(fig, out_dir, f"curve_{metric}.png"))
        plt.close(fig)
    return paths


# ------------------------------------------------------------------ report
def preset_line(exp, cfg) -> str:
    """Which preset the settings started from, in words."""
    name = cfg.get("preset")
    if name is None:
        return "preset: none (the experiment's defaults and the options given)"
    about = exp.presets[name].about if name in exp.presets else "not a preset of this experiment any more"
    return f"preset `{name}` ({about}); options given explicitly override it"


def render_report(exp, results, plots, out_dir: str) -> str:
    name, summary, widths = results["experiment"], results["summary"], _widths(results)
    cited = exp.paper.values
    metrics = list(exp.metrics)
    lines = [f"# {name}: results", "", exp.summary + ".", ""]
    data = results["data"]
    lines += ["## Data actually used", "", f"- {data['description']}",
              f"- {data['train_examples']} train / {data['test_examples']} test examples, input dimension "
              f"{data['input_dim']}"]
    lines += [f"- **{note}**" for note in data.get("notes", [])]
    cfg = results["config"]
    lines += ["", "## Settings", "", f"- {preset_line(exp, cfg)}"]
    if results["runs"]:
        lines.append(f"- {budget_line(results)}")
    lines.append(f"- {optimizer_description(cfg)}")
    precision = f", {results['precision']}" if results.get("precision") else ""
    lines += [f"- device {results['device']}{precision}, {results['world_size']} process(es), "
              f"{results['wall_seconds']:.1f} s wall", ""]
    lines += ["## Results (mean ± std over seeds)", ""]
    header = ["activation", "C", "seeds"] + [h for m in metrics for h in (m, f"paper {m}")]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for act, per_metric in summary.items():
        row_paper = cited.get((act, widths.get(act)), {})
        n = max(v["n"] + v["diverged"] for v in per_metric.values())
        cells = [f"`{act}`", str(widths.get(act)), str(n)]
        for m in metrics:
            cells += [_fmt(per_metric[m]), row_paper[m].text() if m in row_paper else "—"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Paper values are quoted from the paper (see the `{exp.name}` folder under `colu_lab/experiments/`); a row "
              "shows one only when activation and width match the paper's row."]
    if exp.paper.seeds:
        lines.append(f"The paper uses {exp.paper.seeds} seeds per configuration; this run used {cfg['seeds']}.")
    reasons = comparability(exp, results)
    lines += ["", "## Claims", ""]
    if reasons:
        lines += [f"Settings differ from the paper's: {'; '.join(reasons)}. Numbers are therefore **not comparable** "
                  "to the paper's; the direction of each effect is shown for information.", ""]
    lines += claim_verdicts(exp, results) or ["- (no claims listed for this experiment)"]
    lines += report_section(exp, out_dir)  # a variant of an ablation: the other readings tried beside it
    if exp.report_note:
        lines += ["", exp.report_note]
    lines += ["", "## Plots", ""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots]
    lines += ["", "## Config", "", "```json", json.dumps(cfg, indent=1), "```", "",
              f"Regenerate this report with `colu report {shlex.quote(out_dir)}`; raw numbers are in results.json "
              "and metrics.jsonl.", ""]
    return "\n".join(lines)


def write_report(exp, results, out_dir: str) -> str:
    plots = plot_curves(results, out_dir, exp.curve_metrics, exp.log_metrics, exp.curve_x)
    if exp.extra_plots is not None:
        plots += exp.extra_plots(results, out_dir)
    path = os.path.join(out_dir, "report.md")
    atomic_write_text(path, render_report(exp, results, plots, out_dir))
    return path


def summary_table(exp, results) -> str:
    """Plain-text summary for the terminal."""
    metrics = list(exp.metrics)
    widths = _widths(results)
    rows = [["activation", "C"] + metrics]
    for act, per_metric in results["summary"].items():
        rows.append([act, str(widths.get(act))] + [_fmt(per_metric[m]) for m in metrics])
    cols = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, cols)) for r in rows)


def _read_json(path: str) -> dict:
    try:
        return read_json_object(path)
    except ValueError as exc:
        raise ValueError(f"{path}: damaged or truncated ({exc}); rerun the experiment (--resume, or --overwrite "
                         "to start over)") from None


def load_results(out_dir: str) -> dict:
    """A run folder's results: results.json, or assembled from runs/*.json if the run did not finish."""
    results_path = os.path.join(out_dir, "results.json")
    if os.path.exists(results_path):
        return _read_json(results_path)
    cfg_path = os.path.join(out_dir, "config.json")
    if not os.path.exists(cfg_path):
        raise ValueError(f"{out_dir}: no results.json or config.json here; point colu report at a run's --out")
    saved = _read_json(cfg_path)
    for key, kind in (("experiment", str), ("config", dict)):
        if not isinstance(saved.get(key), kind):
            raise ValueError(f"{cfg_path}: {_missing(saved, key, kind)}, so it is not a colu run's config.json; "
                             "point colu report at a run's --out")
    runs_dir = os.path.join(out_dir, "runs")
    runs = []
    for fn in sorted(os.listdir(runs_dir)) if os.path.isdir(runs_dir) else []:
        if not fn.endswith(".json"):
            continue  # e.g. the temporary file of a write that was killed
        path = os.path.join(runs_dir, fn)
        record = _read_json(path)
        problem = _record_problem(record)
        if problem:
            raise ValueError(f"{path}: {problem}, so it is not a run record colu wrote; delete it to train that run "
                             f"again with colu run {saved['experiment']} --out {out_dir} --resume")
        runs.append(record)
    if not runs:
        raise ValueError(f"{out_dir}: no finished runs yet (runs/ is empty); continue it with --resume")
    return {"experiment": saved["experiment"], "config": saved["config"], "data": saved.get("data", {
        "description": "(unknown: run did not finish)", "train_examples": 0, "test_examples": 0,
        "input_dim": 0, "notes": []}), "device": "?", "world_size": 1, "runs": runs, "wall_seconds": 0.0}


def unknown_experiment(out_dir: str, name, known) -> ValueError:
    """The error for a run folder whose results name no experiment in ``known``."""
    hint = (" (colu align writes its own report.md; regenerate it with colu align ... --from DIR_OF_THE_RUN)"
            if str(name).startswith("align-") else "")
    return ValueError(f"{os.path.join(out_dir, 'results.json')}: experiment {name!r} is not one colu report "
                      f"rebuilds; expected one of {', '.join(sorted(known))}{hint}")


def _missing(obj: dict, key: str, kind: type) -> str:
    """'\'runs\' is missing' or '\'runs\' is a dict, not a list'."""
    if key not in obj:
        return f"{key!r} is missing"
    names = {str: "text", dict: "dict", list: "list", int: "whole number"}
    return f"{key!r} is a {type(obj[key]).__name__}, not a {names.get(kind, kind.__name__)}"


def _record_problem(record, where: str = "the record") -> str | None:
    """What keeps ``record`` from being a run record the report can use (``None``: nothing)."""
    if not isinstance(record, dict):
        return f"{where} is a {type(record).__name__}, not a run record"
    for key, kind in (("activation", str), ("seed", int), ("metrics", dict), ("curve", list)):
        if key not in record:
            return f"{where} has no {key!r}"
        if not isinstance(record[key], kind):
            return f"{where}: {_missing(record, key, kind)}"
    for name, value in record["metrics"].items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return f"{where}: metric {name!r} is {value!r}, not a number"
    for j, point in enumerate(record["curve"]):
        if not isinstance(point, dict) or not {"step", "epoch"} <= set(point):
            return f"{where}: curve point {j} is not an evaluation point (with 'step' and 'epoch')"
    return None


def check_results(path: str, results: dict, exp_name: str, out_dir: str) -> None:
    """Refuse (ValueError naming ``path`` and the key) results that lack what the summary and report read."""
    problem = None
    for key, kind in (("config", dict), ("runs", list), ("data", dict), ("device", str), ("world_size", int),
                      ("wall_seconds", (int, float))):
        if not isinstance(results.get(key), kind):
            problem = _missing(results, key, kind if isinstance(kind, type) else float)
            break
    if problem is None:
        missing = [k for k in ("description", "train_examples", "test_examples", "input_dim")
                   if k not in results["data"]]
        if missing:
            problem = f"'data' has no {', '.join(map(repr, missing))}"
    if problem is None:
        problem = next(filter(None, (_record_problem(r, f"runs[{i}]") for i, r in enumerate(results["runs"]))), None)
    if problem:
        raise ValueError(f"{path}: {problem}, so it is not a complete colu results file; rebuild it with colu run "
                         f"{exp_name} --out {out_dir} --resume (finished runs in runs/ are reused, not retrained)")


def rebuild(exp, out_dir: str, results: dict) -> dict:
    """Re-summarize ``results`` (see :func:`load_results`) of experiment ``exp`` and re-render the folder's report.

    Results that lack a key the report reads are refused, naming the file and the key, before anything is written.
    """
    check_results(os.path.join(out_dir, "results.json"), results, exp.name, out_dir)
    results["summary"] = summarize(results["runs"], exp.metrics)
    atomic_write_json(os.path.join(out_dir, "results.json"), results)
    write_report(exp, results, out_dir)
    return results
