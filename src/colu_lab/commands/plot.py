"""``colu plot``: the paper's explanatory figures, drawn from the library's own ops.

* ``conic_projection.png`` (Figure 1): a Lorentz cone in 3-D, inputs and
  their CoLU images; the projection stays in the plane of constant axis value.
* ``weightings.png`` (Figures 3-4): ReLU vs SiLU weighting against ``x`` and
  the hard, firm and soft conic weightings against ``r = a / |s|``.
* ``symmetry.png``: circles of inputs around the cone axis through ReLU and
  CoLU (and around the all-ones axis through ReLU and RCoLU); CoLU keeps
  the circles, ReLU folds them onto the orthant.

``colu plot --from DIR [--figure NAME]`` draws instead the figures an
experiment defines (its ``figures``: the paper's result figures) from the
results and checkpoints of a run or sweep folder.

matplotlib (Agg backend) is imported only here, so ``import colu`` never
pays for it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import List

import torch

from colu.functional import colu, rcolu
from colu.symmetry import equivariance_error, group_element
from colu_lab.registry import EXPERIMENTS


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def conic_projection(path: str) -> str:
    """Figure 1: the cone V, inputs x, their projections CoLU(x) and the section planes."""
    plt = _pyplot()
    fig = plt.figure(figsize=(6.4, 5.6))
    ax = fig.add_subplot(projection="3d")
    # cone surface a = |s| drawn with the axis vertical
    t = torch.linspace(0, 2 * math.pi, 60)
    h = torch.linspace(0, 1.6, 12)
    T, H = torch.meshgrid(t, h, indexing="ij")
    ax.plot_surface((H * T.cos()).numpy(), (H * T.sin()).numpy(), H.numpy(), alpha=0.18, color="tab:blue", linewidth=0)
    ax.plot([0, 0], [0, 0], [-1.0, 1.7], color="k", lw=1)
    ax.text(0, 0, 1.75, "axis $x_1$", ha="center")
    # inputs (axis, s1, s2): outside the cone, inside it, and below it
    x = torch.tensor([[1.0, 1.6, 0.6], [1.3, -0.4, 0.5], [-0.7, 0.9, -0.8], [0.6, -1.2, -1.1]], dtype=torch.float64)
    y = colu(x, num_cones=1)
    for xi, yi in zip(x, y):
        a = float(xi[0])
        if a > 0:  # the section disk H(x) ∩ V the point is projected onto
            ax.plot((a * t.cos()).numpy(), (a * t.sin()).numpy(), a, color="tab:blue", lw=0.8, alpha=0.6)
        ax.scatter(xi[1], xi[2], xi[0], color="tab:gray", s=25)
        ax.scatter(yi[1], yi[2], yi[0], color="tab:red", s=25)
        if torch.allclose(xi, yi):
            continue
        ax.quiver(xi[1], xi[2], xi[0], *(yi - xi)[[1, 2, 0]].tolist(), color="tab:red", arrow_length_ratio=0.15)
    ax.scatter([], [], [], color="tab:gray", label="input $x$")
    ax.scatter([], [], [], color="tab:red", label=r"CoLU$(x)$")
    ax.set_xlabel("$s_1$")
    ax.set_ylabel("$s_2$")
    ax.set_zlabel("$x_1$")
    ax.set_title("Conic projection: onto the cone within the plane $y_1 = x_1$\n"
                 "(below the apex: onto the negative axis)", fontsize=10)
    ax.legend(loc="upper left")
    ax.view_init(elev=18, azim=-60)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def weightings(path: str) -> str:
    """Figures 3-4: component-wise weightings against x and conic weightings against r."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    x = torch.linspace(-6, 6, 601)
    left.plot(x, (x >= 0).float(), label=r"ReLU: $\mathbb{1}[x \geq 0]$", lw=2)
    left.plot(x, torch.sigmoid(x), label=r"SiLU: sigmoid$(x)$", lw=2)
    left.set_xlabel("$x$")
    left.set_ylabel(r"weight $w$ in $\lambda(x) = w\,x$")
    left.set_title("Component-wise (paper Fig. 3)")
    r = torch.linspace(-3, 4, 701)
    right.plot(r, r.clamp(0, 1), label=r"hard: $\min\{\max\{r,0\},1\}$", lw=2)
    right.plot(r, torch.sigmoid(4 * r - 2), label=r"firm: sigmoid$(4r-2)$", lw=2)
    right.plot(r, torch.sigmoid(r - 0.5), label=r"soft: sigmoid$(r-1/2)$", lw=2)
    right.set_xlabel(r"$r = x_1 / (|x_\perp| + \varepsilon)$")
    right.set_ylabel(r"weight $w$ on the section $x_\perp$")
    right.set_title("Conic (paper Fig. 4)")
    for ax in (left, right):
        ax.axhline(0, color="k", lw=0.5)
        ax.axvline(0, color="k", lw=0.5)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _circles(axis: torch.Tensor, u: torch.Tensor, v: torch.Tensor, n: int = 240):
    """Points a*axis + rho*(cos t u + sin t v) for two radii; returns points and angles."""
    t = torch.linspace(0, 2 * math.pi, n + 1, dtype=torch.float64)[:-1]
    pts = [axis + rho * (t.cos()[:, None] * u + t.sin()[:, None] * v) for rho in (0.6, 2.0)]
    return torch.cat(pts), torch.cat([t, t])


def symmetry(path: str) -> str:
    """ReLU vs CoLU (top) and ReLU vs RCoLU (bottom) on circles of inputs around the cone axis."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(10, 6.6))
    g = torch.Generator().manual_seed(0)
    e1, e2, e3 = torch.eye(3, dtype=torch.float64)
    ones = torch.ones(3, dtype=torch.float64) / math.sqrt(3)
    # an orthonormal basis of the plane orthogonal to the all-ones axis
    u = torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64) / math.sqrt(2)
    v = torch.cross(ones, u, dim=0)
    rows = [
        ("cone axis $e_1$", e1, e2, e3, lambda z: colu(z, num_cones=1), "CoLU",
         group_element(3, num_cones=1, generator=g)),
        ("all-ones axis", ones, u, v, lambda z: rcolu(z, num_cones=1), "RCoLU",
         group_element(3, num_cones=1, kind="rcolu", generator=g)),
    ]
    for row, (label, axis, a, b, cone_act, name, P) in zip(axes, rows):
        x, t = _circles(axis, a, b)
        outputs = [("input: circles around the " + label, x), ("ReLU", torch.relu(x)), (name, cone_act(x))]
        errors = {"ReLU": equivariance_error(torch.relu, x, P), name: equivariance_error(cone_act, x, P)}
        for ax, (title, y) in zip(row, outputs):
            # coordinates in the plane orthogonal to the axis, where the rotations act
            ax.scatter((y @ a).numpy(), (y @ b).numpy(), c=t.numpy(), cmap="hsv", s=6)
            ax.set_aspect("equal")
            ax.set_xlim(-2.3, 2.3)
            ax.set_ylim(-2.3, 2.3)
            ax.grid(alpha=0.3)
            if title in errors:
                title += f"\nmax |f(Px) - Pf(x)| = {errors[title]:.2g}"
            ax.set_title(title, fontsize=9)
        row[0].set_ylabel("section coordinates")
    fig.suptitle("Rotations about the cone axis commute with CoLU/RCoLU, not with ReLU "
                 "(colour: angle on the input circle)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


FIGURES = {"conic_projection.png": conic_projection, "weightings.png": weightings, "symmetry.png": symmetry}


def make_all(out: str) -> List[str]:
    """Write every figure into ``out`` (created if needed); returns the paths."""
    os.makedirs(out, exist_ok=True)
    return [draw(os.path.join(out, name)) for name, draw in FIGURES.items()]


def run_figures(run_dir: str, out: str, names=None) -> List[str]:
    """Draw the figures the experiment of ``run_dir`` defines (its ``figures``) into ``out``; returns the paths.

    ``names`` (default: all of them) picks figures by name; a figure that
    cannot be drawn from this folder raises ValueError when it was named,
    and is skipped with a line on stderr when it was not (a sweep folder
    makes some figures, a single run others).
    """
    config = os.path.join(run_dir, "config.json")
    try:
        with open(config, encoding="utf-8") as f:
            name = json.load(f).get("experiment")
    except (OSError, ValueError) as exc:
        raise ValueError(f"--from {run_dir!r}: cannot read {config} ({exc}); point it at a colu run/sweep --out")
    exp = EXPERIMENTS.get(name)
    if exp is None or not exp.figures:
        have = ", ".join(sorted(n for n, e in EXPERIMENTS.items() if e.figures)) or "none"
        raise ValueError(f"--from {run_dir!r}: a {name!r} run has no figures to draw (experiments with some: {have})")
    unknown = [n for n in names or () if n not in exp.figures]
    if unknown:
        raise ValueError(f"--figure {', '.join(unknown)}: {name} draws {', '.join(exp.figures)}")
    os.makedirs(out, exist_ok=True)
    paths = []
    for key in names or exp.figures:
        try:
            paths.append(exp.figures[key].draw(exp, run_dir, os.path.join(out, f"{key}.png")))
        except ValueError as exc:
            if names:
                raise
            print(f"colu plot: skipped {key}: {exc}", file=sys.stderr)
    if not paths:
        raise ValueError(f"--from {run_dir!r}: none of {name}'s figures could be drawn from it (see above)")
    return paths


def _figure_list() -> str:
    """'Figures: EXPERIMENT: NAME (about); ...' for --figure's help."""
    items = [f"{exp_name}: {name} ({figure.about})" for exp_name, exp in EXPERIMENTS.items()
             for name, figure in exp.figures.items()]
    return "Figures: " + "; ".join(items) if items else "No experiment defines figures."


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="colu plot", description="draw the explanatory figures as PNGs, or with --from the figures an "
                                      "experiment draws from a run folder")
    parser.add_argument("--out", help="output folder (default docs/figures, or the --from folder)")
    parser.add_argument("--from", dest="from_dir", metavar="DIR",
                        help="a colu run/sweep --out folder: draw its experiment's figures from its results and "
                             "checkpoints instead of the explanatory ones")
    parser.add_argument("--figure", action="append", metavar="NAME",
                        help="with --from: only this figure (repeatable; default all that the folder allows). "
                             + _figure_list())
    args = parser.parse_args(argv)
    if args.from_dir is None:
        if args.figure:
            print("colu plot: error: --figure needs --from DIR (a run folder to draw it from)", file=sys.stderr)
            return 2
        paths = make_all(args.out or os.path.join("docs", "figures"))
    else:
        try:
            paths = run_figures(args.from_dir, args.out or args.from_dir, args.figure)
        except (ValueError, OSError) as exc:
            print(f"colu plot: error: {exc}", file=sys.stderr)
            return 2
    for path in paths:
        print(path)
    return 0
