"""Section 4 / 5.1, Figure 6: a 3 -> 3 -> 3 network without biases learns a 3D rotation of a hemisphere.

ReLU cuts the hemisphere with the positive orthant, so near the equator its
outputs trace a triangle; a single 3D cone (CoLU S=3, or RCoLU S=3) can keep
the circles round. The paper gives a figure, not numbers, and does not state
the training settings: ours are in :class:`Config`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Optional

import torch
import torch.nn.functional as F

from . import data as data_mod
from .config import TrainConfig
from .contract import Experiment, Preset
from .models import TwoLayer
from .paper import Claim, PaperReference

metrics = {"test_mse": False, "max_test_error": False}  # metric -> higher is better
PROBE_LATITUDES = (60.0, 75.0, 85.0, 90.0)  # polar angles in degrees; 90 is the equator


@dataclass
class Config(TrainConfig):
    activations: list = field(default_factory=list)
    dataset: str = "hemisphere"
    n_lat: int = 200
    n_lon: int = 200
    width: int = 3
    epochs: Optional[int] = 40
    batch_size: int = 1024
    lr: float = 1e-2
    eval_every: int = 0

    LIMITS: ClassVar[dict] = {**TrainConfig.LIMITS, "n_lat": (">=", 2), "n_lon": (">=", 1), "width": (">=", 1)}


report_note = (
    "Reading the max test error: the grid includes the equator itself (polar angle 90°). Without biases, a hard "
    "cone whose axis points at the pole sees axis value 0 there and collapses the point to the origin (error 1), "
    "so max_test_error can stay near 1 for CoLU/RCoLU even when the circles just above the equator are round; "
    "see latitudes.png for the shape of the outputs per latitude.")

# The paper states no training settings for Figure 6, so there is no "paper" preset: the defaults are ours.
presets = {
    "cpu": Preset({}, "the defaults: 3 activations x 3 seeds x 40 epochs; under 5 min on a 2-core CPU"),
    "quick": Preset({"epochs": 10, "seeds": 2, "n_lat": 100, "n_lon": 100, "batch_size": 256},
                    "a smoke test; under a minute on a 2-core CPU"),
}

paper = PaperReference(
    claims=(
        Claim("CoLU (S=3) keeps rotational symmetry near the equator where ReLU cuts a triangle: "
              "lower max test error", "Section 4, Figure 6", "max_test_error", "colu:S=3", ("relu",), False),
        Claim("RCoLU (S=3) likewise beats ReLU on max test error", "Section 4, Figure 6", "max_test_error",
              "rcolu:S=3", ("relu",), False),
    ),
    figure_only=True,  # Figure 6 gives no numbers and no training settings
)


def default_activations(cfg):
    return ["relu", "colu:S=3", "rcolu:S=3"]


def sweep_grid(cfg):
    return ["relu", "silu", "colu:S=3", "colu:S=3,soft", "rcolu:S=3", "rcolu:S=3,soft", "identity"]


def load_data(cfg):
    if cfg.dataset not in ("digits", "hemisphere"):
        raise ValueError(f"hemisphere generates its own data; --dataset {cfg.dataset!r} does not apply")
    return data_mod.hemisphere(cfg.n_lat, cfg.n_lon)


def check_activation(cfg, act, data):
    act.fit_width(cfg.width)


def build_model(cfg, act, data):
    width = act.fit_width(cfg.width)
    return TwoLayer(3, width, 3, act.build(width), bias=False), width


def train_loss(net, x, y, cfg, *, global_batch, world):
    # sum over the local shard, scaled so DDP's average is the mean over the global batch
    return F.mse_loss(net(x), y, reduction="sum") * (world / (global_batch * y.shape[1]))


def evaluate(model, data, cfg, device):
    err = model(data.x_test.to(device)).float() - data.y_test.to(device)
    return {"test_mse": err.pow(2).mean().item(), "max_test_error": err.norm(dim=1).max().item()}


def probe(model, data, cfg, device):
    """Outputs on latitude circles near the equator, rotated back by R^T (ideal: circles of radius sin θ)."""
    rot = data_mod.rotation_45().float().to(device)
    phi = torch.linspace(0, 2 * math.pi, 181, device=device)
    circles = {}
    for deg in PROBE_LATITUDES:
        t = math.radians(deg)
        x = torch.stack([math.sin(t) * phi.cos(), math.sin(t) * phi.sin(), math.cos(t) * torch.ones_like(phi)], 1)
        back = model(x).float() @ rot  # R^T applied to each row
        circles[str(deg)] = {"x": back[:, 0].tolist(), "y": back[:, 1].tolist()}
    return {"latitudes": circles}


def extra_plots(results, out_dir):
    """One panel per activation: the seed-0 outputs on each latitude circle, beside the ideal circles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probes = [(r["activation"], r["seed"], r["probe"]) for r in results["runs"] if "probe" in r]
    if not probes:
        return []
    fig, axes = plt.subplots(1, len(probes), figsize=(4 * len(probes), 4.4), squeeze=False)
    phi = [2 * math.pi * i / 180 for i in range(181)]
    for ax, (label, seed, probe_data) in zip(axes[0], probes):
        for deg, pts in probe_data["latitudes"].items():
            r = math.sin(math.radians(float(deg)))
            ax.plot([r * math.cos(p) for p in phi], [r * math.sin(p) for p in phi], color="0.8", lw=1)
            ax.plot(pts["x"], pts["y"], lw=1.5, label=f"θ={float(deg):.0f}°")
        ax.set_aspect("equal")
        ax.set_title(f"{label} (seed {seed})")
        ax.set_xlabel("x of $R^T$ output")
        ax.set_ylabel("y of $R^T$ output")
    axes[0][0].legend(fontsize=7, loc="lower left")
    seeds = sorted({seed for _, seed, _ in probes})
    fig.suptitle("outputs on latitude circles (polar angle θ), rotated back by $R^T$; grey: ideal circles; "
                 f"one trained model per panel (seed {', '.join(map(str, seeds))})", fontsize=9)
    fig.tight_layout()
    from .report import save_figure

    path = save_figure(fig, out_dir, "latitudes.png")
    plt.close(fig)
    return [path]


EXPERIMENT = Experiment(
    name="hemisphere",
    summary="Sec. 4/5.1, Fig. 6: 3->3->3 net learns a 45-degree rotation of a hemisphere",
    Config=Config, metrics=metrics, default_activations=default_activations, load_data=load_data,
    build_model=build_model, train_loss=train_loss, evaluate=evaluate,
    curve_metrics=("test_mse", "max_test_error"), log_metrics=("test_mse", "max_test_error"),
    sweep_grid=sweep_grid, check_activation=check_activation,
    datasets=(),  # generates its own points; --data does not apply
    presets=presets, paper=paper, report_note=report_note, data_on_device=True, probe=probe,
    extra_plots=extra_plots,
)
