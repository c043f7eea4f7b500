"""``colu align EXPERIMENT``: loss barriers between two seeds, before and after alignment.

Section 5.7 and Appendix D.5 of the paper: two networks trained from different
seeds are joined by the straight line ``(1 - s) θ_A + s θ_B``; its loss
barrier (eq. 11) is measured three ways for each activation:

* ``naive``: B as trained;
* ``weights``: B moved by weight matching (Algorithm 1), ``match_weights(A, B)``;
* ``states``: B moved by state matching (Algorithm 2) on the training set,
  ``match_states(A, B, train batches)``.

The loss is the experiment's own test loss on the whole test set, and any
further losses it names (each with its own barrier), all from the ``align``
hooks of its :class:`colu_lab.framework.contract.Experiment`; only experiments
that have them can be aligned. The moved copies must compute B's function;
the largest output difference on the test set is recorded.

The two models are trained here with the runner (seeds 0 and 1, or
``--seed-pair``), or loaded with ``--from DIR`` from the final checkpoints a
``colu run`` left in ``DIR/checkpoints``. Alignment and barriers are computed
on the CPU in the models' dtype (the group elements themselves in float64).
Writes results.json (the runner's format, experiment ``align-EXPERIMENT``),
metrics.jsonl (training log, when trained here), barriers.png and report.md;
for an experiment with a ``path_samples`` hook (a generator), also
``path_samples_<activation>.png``: what the models along each path generate
from the same fixed inputs (the paper's Figure 12 for the toy VAE).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

from colu import align
from colu.files import atomic_write_json, atomic_write_text
from colu_lab.framework import paper, report
from colu_lab.framework.activations import parse_activations
from colu_lab.framework.config import (
    build_config,
    changed_settings,
    cli_values,
    command_error,
    config_to_dict,
    load_yaml,
    parse_set_options,
    preset_table,
    resolve_dataset,
)
from colu_lab.framework.rundir import RunFolder
from colu_lab.framework.runner import (
    DistInfo,
    Interrupted,
    checkpoint_path,
    clean,
    load_final,
    prepare_folder,
    resolve_device,
    run_slug,
    train_run,
)
from colu_lab.registry import EXPERIMENTS

METHODS = ("naive", "weights", "states")
METHOD_NAMES = {"naive": "naive (as trained)", "weights": "weight matching", "states": "state matching"}
STATE_BATCH = 2048  # rows per forward pass while accumulating state correlations (bounds memory, not results)
# With --from, training and data options come from the saved config; these may still be given.
FROM_OVERRIDABLE = {"data", "device"}


# ------------------------------------------------------------------ the CLI
def alignable() -> dict:
    """name -> experiment, for the experiments with ``align`` hooks."""
    return {name: exp for name, exp in EXPERIMENTS.items() if exp.align is not None}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="colu align", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", choices=sorted(alignable()), help="which experiment's models to align")
    p.add_argument("--from", dest="from_dir", metavar="DIR",
                   help="load the final checkpoints of a finished `colu run EXPERIMENT --out DIR` instead of "
                        "training (its saved config decides the data and the model)")
    p.add_argument("--seed-pair", type=int, nargs=2, metavar=("A", "B"),
                   help="the two seeds (default 0 1); A stays fixed, B is aligned to it")
    p.add_argument("--activations", nargs="+", metavar="SPEC",
                   help="activation specs (default: " + "; ".join(
                       f"{name}: {' '.join(e.align.activations)}" for name, e in alignable().items()) + ")")
    p.add_argument("--out", help="output directory (default runs/align-EXPERIMENT); must hold no earlier results "
                                 "unless --overwrite is given")
    p.add_argument("--overwrite", action="store_true",
                   help="delete the results of an earlier run in --out first (other files are left alone)")
    p.add_argument("--num-points", type=int, default=11, help="points s on the path, ends included (default 11)")
    p.add_argument("--max-iter", type=int, default=100, help="weight matching: at most this many sweeps (default 100)")
    p.add_argument("--dataset", help="which data set --data holds (" + "; ".join(
        f"{name}: {', '.join(e.datasets)}" for name, e in alignable().items() if e.datasets) + ")")
    p.add_argument("--data", help=" ".join(dict.fromkeys(e.data_help for e in alignable().values() if e.data_help))
                   + " The dataset is recognised from the files unless --dataset is given; never downloaded")
    p.add_argument("--split-from-test", type=int, metavar="K",
                   help="carve K test examples (rest train) out of the test files alone (for data sets that "
                        "allow it, see colu run --help)")
    p.add_argument("--quick", action="store_const", const="quick", dest="quick_preset",
                   help="the experiment's quick preset (small settings)")
    p.add_argument("--epochs", type=int, help="training epochs")
    p.add_argument("--steps", type=int, help="total optimizer steps (overrides --epochs)")
    p.add_argument("--batch-size", type=int, help="training batch size")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="for training; alignment runs on the CPU")
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file of training config keys")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="set any training config key, e.g. --set hidden=400 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-activation lines")
    return p


_TRAIN_KEYS = ["dataset", "data", "split_from_test", "epochs", "steps", "batch_size", "device"]


def parse_args(argv):
    """-> (experiment module, training config, options dict)."""
    args = _parser().parse_args(argv)
    exp = alignable()[args.experiment]
    cli = cli_values(args, _TRAIN_KEYS)
    set_values, sources = parse_set_options(args.set)
    cli.update(set_values)
    for key in ("seeds", "seed_offset", "activations"):
        if key in cli:
            raise ValueError(f"--set {key}=...: use --seed-pair / --activations; colu align always takes two seeds")
    if not (isinstance(args.num_points, int) and args.num_points >= 2):
        raise ValueError(f"--num-points {args.num_points}: need at least 2 (the two ends)")
    if args.max_iter < 1:
        raise ValueError(f"--max-iter {args.max_iter}: need at least one sweep")
    seed_a, seed_b = args.seed_pair or (0, 1)
    if seed_a == seed_b:
        raise ValueError(f"--seed-pair {seed_a} {seed_b}: the two seeds must differ")
    out = args.out or os.path.join("runs", "align-" + exp.name)

    if args.from_dir:
        if args.config:
            raise ValueError("--config with --from: the saved config of the run in --from decides training options")
        if os.path.abspath(out) == os.path.abspath(args.from_dir):
            raise ValueError(f"--out {out!r} is the --from directory; choose another --out so the run's own "
                             "results.json and report.md are kept")
        saved_path = os.path.join(args.from_dir, "config.json")
        if not os.path.exists(saved_path):
            raise ValueError(f"--from {args.from_dir!r}: no config.json there; point it at a `colu run` --out")
        with open(saved_path, encoding="utf-8") as f:
            saved = json.load(f)
        if saved.get("experiment") != exp.name:
            raise ValueError(f"--from {args.from_dir!r} holds a {saved.get('experiment')!r} run, not {exp.name!r}")
        cfg, _ = build_config(exp.Config, None, saved["config"], {}, saved_path)
        wanted, _ = build_config(exp.Config, None, saved["config"], cli, saved_path, sources)
        changed = changed_settings(wanted, cfg, FROM_OVERRIDABLE)
        if changed:
            raise ValueError(f"--from {args.from_dir!r}: {'; '.join(changed)}, so these are not the models it "
                             "trained; drop these options (the saved config is used)")
        cfg = wanted
    else:
        yaml_values = load_yaml(args.config) if args.config else {}
        cfg, explicit = build_config(exp.Config, preset_table(exp), yaml_values, cli, args.config or "config",
                                     sources)
        resolve_dataset(exp, cfg, explicit)
    cfg.seeds, cfg.seed_offset = 2, seed_a
    cfg.activations = [a.label() for a in parse_activations(args.activations or exp.align.activations)]
    options = {"seed_pair": [seed_a, seed_b], "num_points": args.num_points, "max_iter": args.max_iter,
               "from": args.from_dir, "out": out, "quiet": args.quiet, "overwrite": args.overwrite}
    return exp, cfg, options


def _outputs(model, x):
    with torch.no_grad():
        out = model(x)
    return out if isinstance(out, tuple) else (out,)


def max_output_diff(model, moved, x) -> float:
    """Largest |f_B(x) - f_moved(x)| over the test set and every output (all of a tuple output)."""
    model.eval()
    moved.eval()
    return max(float((a - b).abs().max()) for a, b in zip(_outputs(model, x), _outputs(moved, x)))


# ------------------------------------------------------------ barriers
def measure(exp, cfg, model_a, model_b, data, *, num_points: int, max_iter: int, seed: int) -> dict:
    """Barriers of the three paths A-B, A-weights(B), A-states(B), and function checks of the moved Bs."""
    x_test, y_test = data.x_test, data.y_test
    test = [(x_test, y_test)]
    train_batches = [data.x_train[i:i + STATE_BATCH] for i in range(0, data.x_train.shape[0], STATE_BATCH)]
    t0 = time.time()
    by_weights = align.match_weights(model_a, model_b, max_iter=max_iter, seed=seed)
    t1 = time.time()
    by_states = align.match_states(model_a, model_b, train_batches, where="pre", seed=seed)
    t2 = time.time()
    ends = {"naive": model_b, "weights": by_weights.apply(model_b), "states": by_states.apply(model_b)}
    metrics = {f"max_output_diff_{m}": max_output_diff(model_b, ends[m], x_test) for m in ("weights", "states")}
    losses = exp.align.losses(cfg)
    points = [{"s": i / (num_points - 1)} for i in range(num_points)]
    for loss_name, loss_fn in losses.items():
        prefix = "" if loss_name == "loss" else loss_name + "_"
        for m in METHODS:
            result = align.loss_barrier(model_a, ends[m], loss_fn, test, num_points)
            metrics[f"{prefix}barrier_{m}"] = result["barrier"]
            for point, (s, value), (_, rel) in zip(points, result["curve"], result["relative"]):
                point[f"{loss_name}_{m}"] = value
                point[f"{loss_name}_relative_{m}"] = rel
    alignment = {"weights": {**by_weights.summary(), "seconds": round(t1 - t0, 3)},
                 "states": {**by_states.summary(), "seconds": round(t2 - t1, 3), "where": "pre",
                            "examples": int(data.x_train.shape[0])}}
    out = {"metrics": metrics, "curve": points, "alignment": alignment}
    if exp.align.path_samples is not None:
        out["samples"] = path_samples(exp, cfg, model_a, ends)
    return out


SAMPLE_POINTS = (0.0, 0.25, 0.5, 0.75, 1.0)  # where along each path the generated samples are drawn


def path_samples(exp, cfg, model_a, ends: dict) -> dict:
    """method -> [(s, (N, H, W) images)]: what the model at ``(1 - s) θ_A + s θ_B`` generates from fixed inputs.

    The inputs are fixed inside the experiment's ``path_samples`` hook, so
    every column shows the same inputs through a different model.
    """
    with torch.no_grad():
        return {m: [(s, exp.align.path_samples(align.interpolate(model_a, end, s).eval(), cfg).float().cpu())
                    for s in SAMPLE_POINTS] for m, end in ends.items()}


def plot_path_samples(run: dict, samples: dict, out_dir: str) -> str:
    """path_samples_<activation>.png: rows are the paths (as trained, weight- and state-matched), columns s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in METHODS if m in samples]
    fig, axes = plt.subplots(len(methods), len(SAMPLE_POINTS), figsize=(1.9 * len(SAMPLE_POINTS),
                                                                         2.0 * len(methods)), squeeze=False)
    for row, m in enumerate(methods):
        for col, (s, images) in enumerate(samples[m]):
            n, h, w = images.shape
            per_row = math.ceil(math.sqrt(n))
            rows = math.ceil(n / per_row)
            # tile the N images into one mosaic, one pixel of white between them
            mosaic = torch.ones(rows * (h + 1) - 1, per_row * (w + 1) - 1)
            for k in range(n):
                r, c = divmod(k, per_row)
                mosaic[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = images[k]
            ax = axes[row][col]
            ax.imshow(mosaic.numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"s = {s:g}", fontsize=9)
            if col == 0:
                ax.set_ylabel(METHOD_NAMES[m], fontsize=8)
    fig.suptitle(f"{run['activation']}: samples along (1-s)θ_A + sθ_B with fixed inputs "
                 f"(seed {run['seed']} → {run['seed_b']})", fontsize=9)
    fig.tight_layout()
    path = report.save_figure(fig, out_dir, f"path_samples_{run_slug(run['activation'])}.png")
    plt.close(fig)
    return path


def metric_names(exp) -> list:
    names = [f"barrier_{m}" for m in METHODS]
    for loss_name in exp.align.extra_losses:
        names += [f"{loss_name}_barrier_{m}" for m in METHODS]
    return names + ["max_output_diff_weights", "max_output_diff_states"]


def run_align(exp, cfg, options) -> dict:
    started = time.time()
    out, quiet = options["out"], options["quiet"]
    seed_a, seed_b = options["seed_pair"]
    acts = parse_activations(cfg.activations)
    data = exp.load_data(cfg)
    for act in acts:
        exp.check_activation(cfg, act, data)  # fail before training anything
    os.makedirs(out, exist_ok=True)
    cfg_dict = config_to_dict(cfg)
    source = options["from"]
    train_device = None
    if source is None:
        # a config.json like the runner's makes this directory usable as --from later
        atomic_write_json(os.path.join(out, "config.json"),
                          {"experiment": exp.name, "config": cfg_dict, "data": data.summary()})
        info = DistInfo()
        device = resolve_device(cfg.device, info)
        train_device = str(device)
        log_path = os.path.join(out, "metrics.jsonl")
        if os.path.exists(log_path):
            os.unlink(log_path)  # every model is retrained from scratch, so an older log would only mislead
        show = not quiet and sys.stderr.isatty()
        for act in acts:
            for seed in (seed_a, seed_b):
                train_run(exp, cfg, act, seed, data, device=device, info=info,
                          ckpt_path=checkpoint_path(out, act.label(), seed), log_path=log_path, resume=False,
                          show_progress=show, show_lines=not quiet and not show)
    ckpt_dir = source or out
    runs, sample_plots = [], []
    for act in acts:
        label = act.label()
        model_a, width, metrics_a = load_final(exp, cfg, act, data, checkpoint_path(ckpt_dir, label, seed_a), seed_a)
        model_b, _, metrics_b = load_final(exp, cfg, act, data, checkpoint_path(ckpt_dir, label, seed_b), seed_b)
        t0 = time.time()
        measured = measure(exp, cfg, model_a, model_b, data, num_points=options["num_points"],
                           max_iter=options["max_iter"], seed=seed_a)
        metrics = {**measured["metrics"],
                   **{f"a_{k}": v for k, v in metrics_a.items()}, **{f"b_{k}": v for k, v in metrics_b.items()}}
        # "seed" is model A's, the fixed end of every path; B is "seed_b"
        run = {"activation": label, "seed": seed_a, "seed_b": seed_b, "width": width,
               "checkpoints": [checkpoint_path(ckpt_dir, label, s) for s in (seed_a, seed_b)],
               "metrics": clean(metrics), "curve": clean(measured["curve"]),
               "alignment": clean(measured["alignment"]), "seconds": round(time.time() - t0, 3)}
        runs.append(run)
        if "samples" in measured:
            sample_plots.append(plot_path_samples(run, measured["samples"], out))
        if not quiet:
            shown = ", ".join(f"{k}={run['metrics'][k]:.4g}" for k in metric_names(exp))
            print(f"[align {exp.name}] {label} (C={width}) seeds {seed_a}/{seed_b}: {shown}", flush=True)
    config = {**cfg_dict, "seed_pair": [seed_a, seed_b], "num_points": options["num_points"],
              "max_iter": options["max_iter"], "state_matching": "pre-activation states on the training set",
              "from": source}
    results = {"experiment": "align-" + exp.name, "base_experiment": exp.name, "config": config,
               "data": data.summary(), "device": "cpu", "train_device": train_device, "world_size": 1, "runs": runs,
               "summary": report.summarize(runs, metric_names(exp)), "wall_seconds": round(time.time() - started, 3)}
    atomic_write_json(os.path.join(out, "results.json"), results)
    plots = [plot_barriers(results, out)] + sample_plots
    atomic_write_text(os.path.join(out, "report.md"), render_report(results, plots))
    return results


# ------------------------------------------------------------ plot and report
def plot_barriers(results, out_dir: str) -> str:
    """barriers.png: one column per activation; rows: test loss (and each further loss) along s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["runs"]
    extra = alignable()[results["base_experiment"]].align.extra_losses
    rows = [("loss", "test loss", "barrier")] + [(name, label, f"{name}_barrier") for name, (label, _) in
                                                 extra.items()]
    fig, axes = plt.subplots(len(rows), len(runs), figsize=(4.2 * len(runs), 3.4 * len(rows)), squeeze=False,
                             sharey="row")
    for col, run in enumerate(runs):
        xs = [p["s"] for p in run["curve"]]
        for row, (key, ylabel, metric) in enumerate(rows):
            ax = axes[row][col]
            for m in METHODS:
                value = run["metrics"].get(f"{metric}_{m}")
                shown = "n/a" if value is None else f"{value:.3g}"
                ax.plot(xs, [p.get(f"{key}_{m}") for p in run["curve"]], marker="o", markersize=3,
                        label=f"{METHOD_NAMES[m]}: B={shown}")
            ax.set_xlabel("s (0: seed %d, 1: seed %d)" % (run["seed"], run["seed_b"]))
            if col == 0:
                ax.set_ylabel(ylabel)
            ax.set_title(f"{run['activation']} (C={run['width']})", fontsize=9)
            ax.legend(fontsize=7)
    fig.suptitle(f"{results['experiment']}: loss along (1-s)θ_A + sθ_B; B = barrier of eq. 11", fontsize=10)
    fig.tight_layout()
    path = report.save_figure(fig, out_dir, "barriers.png")
    plt.close(fig)
    return path


def _num(value, digits=4) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


def verdict_lines(results) -> list:
    runs = results["runs"]
    text, source = paper.ALIGN_CLAIMS["lowers"]
    lines = []
    per_act, holds_all = [], True
    for run in runs:
        m = run["metrics"]
        naive = m["barrier_naive"]
        parts = []
        for method in ("weights", "states"):
            value = m[f"barrier_{method}"]
            lower = naive is not None and value is not None and value < naive
            holds_all &= lower
            parts.append(f"{METHOD_NAMES[method]} {_num(value)} ({'lower' if lower else 'not lower'})")
        per_act.append(f"`{run['activation']}`: naive {_num(naive)} → " + ", ".join(parts))
    verdict = "holds here" if holds_all else "does not hold for every activation and method here"
    lines.append(f"- **{text}** ({source}; {paper.ALIGN_NO_NUMBER}): {verdict}. " + "; ".join(per_act) + ".")
    text, source = paper.ALIGN_CLAIMS["weights_flatter"]
    flatter = []
    for run in runs:
        w, s = run["metrics"]["barrier_weights"], run["metrics"]["barrier_states"]
        if w is not None and s is not None:
            flatter.append((run["activation"], w <= s, w, s))
    seen = "; ".join(f"`{a}`: weights {_num(w)} vs states {_num(s)} ({'flatter' if ok else 'not flatter'})"
                     for a, ok, w, s in flatter)
    scope = ("" if alignable()[results["base_experiment"]].align.flatter_claimed
             else " The paper states this for another experiment; shown for information.")
    holds = flatter and all(ok for _, ok, _, _ in flatter)
    state = "holds here" if holds else "does not hold for every activation here"
    lines.append(f"- **{text}** ({source}; {paper.ALIGN_NO_NUMBER}): {state}. {seen}.{scope}")
    lines.append("- One pair of seeds per activation, so there is no spread to judge these differences against; "
                 "rerun with other `--seed-pair`s before reading much into small gaps.")
    return lines


def render_report(results, plots) -> str:
    cfg, data, runs = results["config"], results["data"], results["runs"]
    base = results["base_experiment"]
    hooks = alignable()[base].align
    a, b = cfg["seed_pair"]
    lines = [f"# {results['experiment']}: loss barriers between two seeds", "",
             f"Linear mode connectivity of `{base}` (paper Section 5.7, Appendix C eq. 11, Appendix D.5, "
             f"Algorithms 1-2 of Appendix F): model A (seed {a}) is fixed and model B (seed {b}) is taken as "
             "trained, moved by weight matching, or moved by state matching (pre-activation states on the "
             "training set). Every moved B computes B's function.", ""]
    lines += ["## Data actually used", "", f"- {data['description']}",
              f"- {data['train_examples']} train / {data['test_examples']} test examples, input dimension "
              f"{data['input_dim']}"]
    lines += [f"- **{note}**" for note in data.get("notes", [])]
    if cfg.get("from"):
        lines.append(f"- models loaded from the final checkpoints in `{cfg['from']}`")
    else:
        lines.append("- models trained here with the experiment's runner (checkpoints in `checkpoints/`)")
    lines += [f"- {results['wall_seconds']:.1f} s wall; alignment and barriers on the CPU", ""]
    loss_name = hooks.loss_description
    lines += ["## Barriers", "",
              f"Relative barrier of eq. (11), max over {cfg['num_points']} evenly spaced s, on the test-set "
              f"{loss_name}. 0.1 means the path's loss rises 10% above the straight line between its ends.", ""]
    header = ["activation", "C"] + [METHOD_NAMES[m] for m in METHODS] + ["paper"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        m = run["metrics"]
        lines.append("| " + " | ".join([f"`{run['activation']}`", str(run["width"])]
                                       + [_num(m[f"barrier_{k}"]) for k in METHODS] + [paper.ALIGN_NO_NUMBER]) + " |")
    for extra_name, (_, paragraph) in hooks.extra_losses.items():
        lines += ["", paragraph, ""]
        header = ["activation"] + [METHOD_NAMES[m] for m in METHODS] + ["paper"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for run in runs:
            m = run["metrics"]
            lines.append("| " + " | ".join([f"`{run['activation']}`"]
                                           + [_num(m[f"{extra_name}_barrier_{k}"]) for k in METHODS]
                                           + [paper.ALIGN_NO_NUMBER]) + " |")
    lines += ["", "## The models and the alignments", "",
              "| activation | end metrics A | end metrics B | max abs output diff, weights / states | "
              "weight-matching sweeps |", "|---|---|---|---|---|"]
    for run in runs:
        m = run["metrics"]
        ends = [", ".join(f"{k[2:]}={_num(v)}" for k, v in m.items() if k.startswith(p)) for p in ("a_", "b_")]
        lines.append(f"| `{run['activation']}` | {ends[0]} | {ends[1]} | {m['max_output_diff_weights']:.2e} / "
                     f"{m['max_output_diff_states']:.2e} | {run['alignment']['weights']['iterations']} |")
    reasons = report.comparability(alignable()[base], {"experiment": base, "config": cfg, "data": data})
    lines += ["", "## Claims", ""]
    if reasons:
        lines += [f"The models were not trained with the paper's settings ({'; '.join(reasons)}); the paper gives "
                  "no barrier numbers either way, so only the direction of each effect is compared.", ""]
    lines += verdict_lines(results)
    lines += ["", "## Plots", ""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots]
    lines += ["", "## Config", "", "```json", json.dumps(cfg, indent=1), "```", "",
              "Raw numbers (curves, objective traces of both matchings) are in results.json.", ""]
    return "\n".join(lines)


def summary_table(results) -> str:
    names = [k for k in results["summary"][next(iter(results["summary"]))]] if results["summary"] else []
    rows = [["activation"] + names]
    for act, per_metric in results["summary"].items():
        rows.append([act] + [_num(per_metric[k]["mean"]) for k in names])
    cols = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, cols)) for r in rows)


def main(argv=None) -> int:
    try:
        exp, cfg, options = parse_args(argv)
        with RunFolder(options["out"]) as folder:
            folder.lock("colu align " + " ".join(argv if argv is not None else sys.argv[2:]))
            prepare_folder(folder, resume=False, overwrite=options["overwrite"])
            results = run_align(exp, cfg, options)
    except (Interrupted, KeyboardInterrupt):
        print("\ncolu align: interrupted; rerun the command with --overwrite to start over", file=sys.stderr)
        return 130
    except (ValueError, OSError) as exc:
        return command_error(exc, "colu align")
    print(f"\n{results['experiment']} ({results['data']['description']})")
    print(summary_table(results))
    print(f"results, barriers.png and report.md in {options['out']}")
    return 0
