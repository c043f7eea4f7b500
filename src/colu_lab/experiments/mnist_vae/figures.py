"""The toy VAE's figures drawn from run folders (``colu plot --from DIR``).

* :func:`test_loss_curves` (Figure 8, Appendix D.1): test-loss curves,
  mean ± std over seeds, for G ∈ {0, 1, 4, 800, 2400}; panels hard/soft
  (rows) × shared/separate axes (columns). G = 2400 (S = 2) is the
  component-wise activation: ReLU for hard, SiLU for soft projection. Drawn
  from a sweep's results.
* :func:`covariances` (Figure 5, Section 3.3): absolute correlations between
  the columns of w′ (the encoder's first layer) and between the hidden
  states x′ = w′x on the test set, with the cone axes permuted to the
  top-left, for a trained conic encoder (the paper's C = 500, G = 100:
  ``colu run mnist-vae --activations colu:G=100 --set hidden=400``).

matplotlib (Agg backend) is imported only when a figure is drawn.
"""

from __future__ import annotations

import json
import os
import shlex
import statistics
import sys

import torch

from colu.spec import ConeSpec
from colu_lab.framework.activations import parse_activations
from colu_lab.framework.config import build_config
from colu_lab.framework.runner import checkpoint_path, load_final

FIGURE8_GROUPS = (0, 1, 4, 800)  # conic G of Figure 8; G = 2400 (S = 2) is component-wise (ReLU or SiLU)
COMPONENTWISE = {"hard": "relu", "soft": "silu"}


def figure8_activations(hidden: int = 2400) -> list[str]:
    """The activation specs Figure 8 needs at ``hidden`` non-axis channels (G must divide ``hidden``).

    Args:
        hidden: G(S - 1), the experiment's ``hidden`` (default 2400, the paper's).
    """
    specs = ["colu:G=0"]
    for soft in (False, True):
        for share in (True, False):
            specs += [f"colu:G={g}" + (",soft" if soft else "") + (",share" if share else "")
                      for g in FIGURE8_GROUPS[1:] if hidden % g == 0]
    return specs + ["relu", "silu"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _read(path: str, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read {what} ({exc})") from None


def _runs(run_dir: str) -> list[dict]:
    """The run records of a folder: results.json's, or runs/*.json of a sweep still under way."""
    path = os.path.join(run_dir, "results.json")
    if os.path.exists(path):
        return _read(path, "the results")["runs"]
    runs_dir = os.path.join(run_dir, "runs")
    names = sorted(n for n in os.listdir(runs_dir) if n.endswith(".json")) if os.path.isdir(runs_dir) else []
    if not names:
        raise ValueError(f"{run_dir}: no results.json or runs/*.json; point --from at a colu run/sweep --out")
    return [_read(os.path.join(runs_dir, n), "a run record") for n in names]


def _hidden(exp, run_dir: str) -> int:
    """The run's ``hidden`` (the non-axis channels Figure 8's G must divide), from its config; the default else."""
    for name in ("config.json", "results.json"):
        path = os.path.join(run_dir, name)
        try:
            with open(path, encoding="utf-8") as f:
                hidden = (json.load(f).get("config") or {}).get("hidden")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(hidden, int) and hidden > 0:
            return hidden
    return getattr(exp.Config, "hidden", 2400)


def _panel_curves(runs, soft: bool, share: bool) -> list[tuple[str, str]]:
    """(label in the legend, activation label) of the Figure-8 curves one panel shows, in G order."""
    scaling = ",soft" if soft else ""
    wanted = [("G=0 (identity)", "colu:G=0")]
    wanted += [(f"G={g}", f"colu:G={g}{scaling}{',share' if share else ''}") for g in FIGURE8_GROUPS[1:]]
    comp = COMPONENTWISE["soft" if soft else "hard"]
    wanted.append((f"S=2 ({comp})", comp))
    have = {r["activation"] for r in runs}
    return [(name, act) for name, act in wanted if act in have]


def test_loss_curves(exp, run_dir: str, path: str) -> str:
    """Figure 8: test-loss curves (mean ± std over seeds) of a sweep, hard/soft × shared/separate panels.

    Args:
        exp: the mnist-vae experiment.
        run_dir: a ``colu sweep mnist-vae`` (or ``colu run``) folder whose runs
            include some of :func:`figure8_activations`.
        path: the PNG to write.

    Returns:
        ``path``.
    """
    runs = _runs(run_dir)
    panels = {(soft, share): _panel_curves(runs, soft, share) for soft in (False, True) for share in (True, False)}
    if not any(len(curves) > 1 or (curves and curves[0][1] != "colu:G=0") for curves in panels.values()):
        raise ValueError(f"{run_dir}: none of Figure 8's activations were trained there; make them with colu "
                         f"sweep mnist-vae --activations {' '.join(figure8_activations())}")
    wanted = figure8_activations(_hidden(exp, run_dir))
    have = {r["activation"] for r in runs}
    missing = [a for a in wanted if a not in have]
    if missing:  # drawn all the same, from what there is
        print(f"colu plot: warning: figure8 lacks {len(missing)} of Figure 8's activations ({', '.join(missing)}); "
              f"it shows the others. Train them (finished runs are kept) with: colu sweep mnist-vae --out "
              f"{shlex.quote(run_dir)} --resume --activations {' '.join(wanted)}", file=sys.stderr, flush=True)
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.2), sharex=True)
    colours = {}
    for (soft, share), curves in panels.items():
        ax = axes[int(soft)][0 if share else 1]
        for name, act in curves:
            mine = [r["curve"] for r in runs if r["activation"] == act]
            length = min(len(c) for c in mine)
            xs = [p["step"] for p in mine[0][:length]]
            values = [[c[i]["test_loss"] for c in mine if c[i].get("test_loss") is not None] for i in range(length)]
            means = [statistics.fmean(v) if v else float("nan") for v in values]
            stds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
            colour = colours.setdefault(name.split(" ")[0], f"C{len(colours)}")
            ax.plot(xs, means, color=colour, label=f"{name} (n={len(mine)})")
            ax.fill_between(xs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                            color=colour, alpha=0.2)
        ax.set_title(f"{'soft' if soft else 'hard'} projection, {'shared' if share else 'separate'} axes",
                     fontsize=10)
        if not curves:
            ax.text(0.5, 0.5, "no runs", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        if soft:
            ax.set_xlabel("optimizer step")
        if share:
            ax.set_ylabel("test loss (BCE + KL, nats per image)")
    fig.suptitle(f"Figure 8: VAE test loss, mean ± std over seeds ({run_dir})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _abs_corr(columns: torch.Tensor) -> torch.Tensor:
    """|Pearson correlation| between the columns of ``columns`` (samples along dimension 0), float64."""
    x = columns.double() - columns.double().mean(0)
    cov = x.T @ x / (x.shape[0] - 1)
    sd = cov.diagonal().clamp_min(1e-300).sqrt()
    return (cov / sd[:, None] / sd[None, :]).abs()


def axis_order(act, width: int) -> tuple[torch.Tensor, int]:
    """``(order, number of axes)``: the channel order that puts the cone axes first, then the other channels."""
    spec = ConeSpec.resolve(width, act.cone_dim, act.num_cones, share_axis=act.share_axis, kind=act.name)
    axes = list(dict.fromkeys(spec.axis_channels().tolist()))  # a shared axis is listed once per cone
    taken = set(axes)
    return torch.tensor(axes + [c for c in range(width) if c not in taken]), len(axes)


def covariance_stats(corr: torch.Tensor, n_axes: int) -> dict:
    """Mean |correlation| off the diagonal among the axes, among the other channels, and between the two."""
    off = ~torch.eye(corr.shape[0], dtype=torch.bool)
    a = torch.zeros_like(off)
    a[:n_axes, :n_axes] = True
    s = torch.zeros_like(off)
    s[n_axes:, n_axes:] = True
    return {"axes": float(corr[a & off].mean()), "sections": float(corr[s & off].mean()),
            "between": float(corr[~(a | s)].mean())}


def covariances(exp, run_dir: str, path: str) -> str:
    """Figure 5: |correlation| of w′'s columns and of the hidden states x′ = w′x, cone axes first.

    Uses the first conic activation of the run (the paper's is G = 100 cones
    with separate axes at C = 500) and its first seed's final checkpoint;
    the states are those of the run's test set.

    Args:
        exp: the mnist-vae experiment.
        run_dir: a finished ``colu run mnist-vae`` folder.
        path: the PNG to write.

    Returns:
        ``path``.
    """
    saved = _read(os.path.join(run_dir, "config.json"), "the run's config")
    cfg, _ = build_config(exp.Config, None, saved["config"], {}, os.path.join(run_dir, "config.json"))
    conic = [a for a in parse_activations(cfg.activations) if a.conic]
    if not conic:
        raise ValueError(f"{run_dir}: no conic activation was trained there; Figure 5 needs one, e.g. colu run "
                         "mnist-vae --activations colu:G=100 --set hidden=400 (C = 500, G = 100)")
    act = conic[0]
    data = exp.load_data(cfg)
    model, width, _ = load_final(exp, cfg, act, data, checkpoint_path(run_dir, act.label(), cfg.seed_offset),
                                 cfg.seed_offset)
    order, n_axes = axis_order(act, width)
    with torch.no_grad():
        w = model.enc_in.weight.detach()  # (C, input): row c is column c of the paper's w′
        states = model.enc_in(data.x_test)
    w_corr = _abs_corr(w.T)[order][:, order]
    x_corr = _abs_corr(states)[order][:, order]
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.8))
    for ax, corr, name in ((axes[0], w_corr, "weights w′"), (axes[1], x_corr, "states x′ = w′x (test set)")):
        stats = covariance_stats(corr, n_axes)
        image = ax.imshow(corr.numpy(), cmap="magma", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"|corr| of {name}\nmean off-diagonal: axes {stats['axes']:.2f}, "
                     f"sections {stats['sections']:.2f}, between {stats['between']:.2f}", fontsize=9)
        ax.set_xlabel(f"channel ({n_axes} cone axes first)")
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.suptitle(f"Figure 5: {act.label()} encoder, C = {width} ({run_dir})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
