"""The cap-rotation demo of the JAX package (jax-colu 0.3.0, ``benchmarks/train_cap_rotation.py``), in PyTorch.

A one-hidden-layer network 3 -> 64 -> 3 with biases learns a fixed rotation
of a spherical cap, a cousin of the paper's hemisphere experiment (Section
5.1, Figure 6) set up the way the package's authors ran it:

* data: 2048 training points drawn uniformly on the cap of polar angle up to
  85° (z uniform in [cos 85°, 1], longitude uniform in [0, 2π), both from a
  NumPy ``default_rng(data_seed)``, z drawn first), evaluated on a 28 x 48
  polar grid of the cap (28 polar angles from 0 to 85° inclusive times 48
  longitudes; the first ring is the pole, so the grid holds it 48 times, as
  the original's does), targets y = R x with R the rotation by 55° about the
  axis (0.35, 0.8, 0.45) normalised (Rodrigues' formula);
* model: ``fc_in`` 3 -> 64 and ``fc_out`` 64 -> 3 with biases; weights drawn
  from a NumPy ``default_rng(seed + 1000 + k)`` with k = 11 (relu), 17 (silu),
  23 (gelu), 31 (colu), 37 (rcolu) and 0 otherwise: first ``w1`` (3 x 64)
  ~ N(0, 2/3), then ``w2`` (64 x 3) ~ N(0, 2/64); biases zero, except 0.05 on
  the first quarter of the hidden units for CoLU and RCoLU ("a slightly
  positive apex bias"), which with the axes-first layout are exactly the 16
  cone axes;
* activation: S = 4 (G = 16 cones of width 64); CoLU in the JAX package's
  axes-first layout (the 16 axes, then 16 blocks of 3 section channels) and,
  for CoLU and RCoLU alike, the package's axis activation: ReLU for hard and
  firm scaling, SiLU for soft (a ``colu`` spec's explicit ``axis=`` wins);
* training: full batch (all 2048 points each step), mean squared error over
  all coordinates, Adam (β = 0.9, 0.999, ε = 1e-8) at lr 2e-3, constant; 400
  steps by default (the README's table), ``--preset long`` for the script's
  default 2000.

The reference numbers are the package README's "local CPU result after 400
steps" for one run (seed 0): eval MSE ReLU 1.48e-3, CoLU 7.26e-4, rCoLU
8.59e-4. They are shown in the report's "paper" columns; they come from one
seed of the JAX package, not from the paper. Our reading where the original
cannot be confirmed: the README numbers are for the script's default seed 0
and its defaults above; the data seed is fixed (``data_seed``, default 0, the
original's seed 0), so our seeds vary only the initialisation, where the
original's ``--seed`` moves both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Optional

import numpy as np
import torch
import torch.nn.functional as F

import colu
from colu_lab.framework import data as data_mod
from colu_lab.framework.config import TrainConfig
from colu_lab.framework.contract import Experiment, Preset, permutation_batch
from colu_lab.framework.nets import TwoLayer
from colu_lab.framework.paper import Cited, Claim, PaperReference
from colu_lab.framework.readings import Reading

ROTATION_AXIS = (0.35, 0.8, 0.45)  # normalised before use
INIT_SEED_OFFSETS = {"relu": 11, "silu": 17, "gelu": 23, "colu": 31, "rcolu": 37}

metrics = {"eval_mse": False, "train_mse": False}


@dataclass
class Config(TrainConfig):
    activations: list = field(default_factory=list)
    dataset: str = "cap"
    seeds: int = 5
    width: int = 64
    train_points: int = 2048
    cap_deg: float = 85.0
    eval_theta: int = 28
    eval_phi: int = 48
    rotation_deg: float = 55.0
    data_seed: int = 0
    apex_bias: float = 0.05
    layout: str = "axes_first"
    epochs: Optional[int] = None
    steps: Optional[int] = 400
    batch_size: int = 2048
    lr: float = 2e-3

    LIMITS: ClassVar[dict] = {**TrainConfig.LIMITS, "width": (">=", 1), "train_points": (">=", 1),
                              "cap_deg": (">", 0.0), "eval_theta": (">=", 1), "eval_phi": (">=", 1),
                              "data_seed": (">=", 0)}
    CHOICES: ClassVar[dict] = {**TrainConfig.CHOICES, "layout": ("grouped", "axes_first")}

    def __post_init__(self):
        super().__post_init__()
        if self.cap_deg > 180:
            raise ValueError(f"cap_deg {self.cap_deg!r} is out of range: a cap's polar angle is at most 180 degrees")


_SOURCE = "jax-colu 0.3.0 README, seed 0, 400 steps"
# The settings behind the README's numbers; a run that differs in one of them is labelled "not comparable".
REFERENCE_SETTINGS = {"steps": 400, "lr": 2e-3, "batch_size": 2048, "optimizer": "adam", "schedule": "constant",
                      "weight_decay": 0.0, "warmup_steps": 0, "grad_clip": 0.0, "width": 64, "train_points": 2048,
                      "cap_deg": 85.0, "eval_theta": 28, "eval_phi": 48, "rotation_deg": 55.0, "apex_bias": 0.05,
                      "layout": "axes_first"}

paper = PaperReference(
    values={
        ("relu", 64): {"eval_mse": Cited(1.48e-3, None, _SOURCE)},
        ("colu:S=4", 64): {"eval_mse": Cited(7.26e-4, None, _SOURCE)},
        ("rcolu:S=4", 64): {"eval_mse": Cited(8.59e-4, None, _SOURCE)},
    },
    claims=(
        Claim("CoLU (S=4) learns the cap rotation with a lower eval MSE than ReLU (the JAX package's README, one "
              "seed: 7.26e-4 vs 1.48e-3; judged by eval_mse on the cap grid, as there)", _SOURCE, "eval_mse",
              "colu:S=4", ("relu",), False),
        Claim("RCoLU (S=4) likewise beats ReLU on eval MSE (README: 8.59e-4 vs 1.48e-3)", _SOURCE, "eval_mse",
              "rcolu:S=4", ("relu",), False),
    ),
    settings=REFERENCE_SETTINGS,
)

report_note = (
    "The \"paper\" columns of this experiment hold the jax-colu 0.3.0 README's numbers for its cap-rotation demo "
    "(one run, seed 0, 400 steps), not numbers from the paper; the paper's own version of this experiment is "
    "`hemisphere` (Figure 6). Our seeds vary the initialisation only; the training points are those of the "
    "README's seed 0 (data_seed). CoLU runs in the JAX package's axes-first layout with a ReLU axis (SiLU for soft "
    "scaling), RCoLU with the same axis activation, and both start with a 0.05 bias on the first quarter of the "
    "hidden units.")

# Where the original (jax-colu's script and README, not the paper) cannot be confirmed
READINGS = (
    Reading("data_seed", "0",
            "the jax-colu 0.3.0 README's \"local CPU result after 400 steps\" (no seed named; the script's "
            "--seed defaults to 0 and draws the data and the weights alike)",
            {"1": "another draw of the 2048 training points (the original's --seed 1 would move the weights "
                  "too: pass --seed-offset 1 as well)"},
            "the README's numbers are the script's default seed 0; keeping the data fixed lets our seeds vary "
            "only the initialisation, so their spread is the initialisation's."),
)

presets = {
    "long": Preset({"steps": 2000}, "the original script's default 2000 steps, 5 seeds; about 3 min on a 2-core "
                                    "CPU"),
    "cpu": Preset({}, "the defaults: 400 steps (the README's table), 3 activations x 5 seeds; under a minute on a "
                      "2-core CPU"),
    "quick": Preset({"steps": 60, "seeds": 2}, "a smoke test; seconds on a 2-core CPU"),
}


def default_activations(cfg):
    return ["relu", "colu:S=4", "rcolu:S=4"]


def sweep_grid(cfg):
    return ["relu", "silu", "gelu", "colu:S=4", "colu:S=4,soft", "rcolu:S=4", "rcolu:S=4,soft"]


def rotation_matrix(axis=ROTATION_AXIS, degrees: float = 55.0) -> torch.Tensor:
    """The rotation by ``degrees`` about ``axis`` (normalised here), float64, by Rodrigues' formula.

    Args:
        axis: three numbers, not all zero. Default: ``(0.35, 0.8, 0.45)``.
        degrees: the angle, counter-clockwise looking down the axis. Default: ``55.0``.
    """
    k = torch.tensor(axis, dtype=torch.float64)
    if k.shape != (3,) or float(k.norm()) == 0.0:
        raise ValueError(f"rotation axis {tuple(axis)!r} must be three numbers, not all zero")
    k = k / k.norm()
    cross = torch.tensor([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]], dtype=torch.float64)
    t = math.radians(degrees)
    return torch.eye(3, dtype=torch.float64) + math.sin(t) * cross + (1 - math.cos(t)) * (cross @ cross)


def random_cap(n: int, cap_deg: float, seed: int) -> torch.Tensor:
    """``n`` points uniform on the unit-sphere cap of polar angle <= ``cap_deg``, float32, shape ``(n, 3)``.

    z is uniform in [cos cap, 1] (uniform in area, Archimedes) and the longitude uniform in [0, 2π), drawn in
    that order from ``numpy.random.default_rng(seed)``.
    """
    rng = np.random.default_rng(seed)
    z = rng.uniform(math.cos(math.radians(cap_deg)), 1.0, size=n)
    phi = rng.uniform(0.0, 2.0 * math.pi, size=n)
    radius = np.sqrt(np.maximum(1.0 - z * z, 0.0))
    return torch.from_numpy(np.stack([radius * np.cos(phi), radius * np.sin(phi), z], axis=1)).float()


def grid_cap(n_theta: int, n_phi: int, cap_deg: float) -> torch.Tensor:
    """``n_theta`` polar angles from 0 to ``cap_deg`` inclusive times ``n_phi`` longitudes, float32, ``(n, 3)``.

    The first ring is at polar angle 0, so the pole appears ``n_phi`` times (as in the original evaluation grid).
    """
    theta = torch.linspace(0.0, math.radians(cap_deg), n_theta, dtype=torch.float64)
    phi = torch.arange(n_phi, dtype=torch.float64) * (2 * math.pi / n_phi)
    t, p = torch.meshgrid(theta, phi, indexing="ij")
    return torch.stack([t.sin() * p.cos(), t.sin() * p.sin(), t.cos()], -1).reshape(-1, 3).float()


def load_data(cfg):
    if cfg.dataset not in ("digits", "cap"):
        raise ValueError(f"cap-rotation generates its own data; --dataset {cfg.dataset!r} does not apply")
    rot = rotation_matrix(ROTATION_AXIS, cfg.rotation_deg).float()
    x_train = random_cap(cfg.train_points, cfg.cap_deg, cfg.data_seed)
    x_eval = grid_cap(cfg.eval_theta, cfg.eval_phi, cfg.cap_deg)
    return data_mod.Data(
        "cap", x_train, x_train @ rot.T, x_eval, x_eval @ rot.T,
        f"{cfg.train_points} random points on the {cfg.cap_deg:g}° spherical cap (data seed {cfg.data_seed}) and "
        f"their rotation by {cfg.rotation_deg:g}° about {ROTATION_AXIS} (normalised); evaluated on a "
        f"{cfg.eval_theta} x {cfg.eval_phi} polar grid of the cap (the pole repeated {cfg.eval_phi} times, as in "
        "the jax-colu demo)")


def axis_activation(act) -> str:
    """The axis activation the JAX package uses: ReLU for hard and firm scaling, SiLU for soft.

    A ``colu`` spec that names ``axis=relu|silu`` keeps its own.
    """
    if act.axis_activation != "identity":
        return act.axis_activation
    return "silu" if act.scaling == "soft" else "relu"


def build_activation(cfg, act, width: int):
    """The activation module of spec ``act`` for ``width`` hidden units, in the JAX package's conventions."""
    if not act.conic:
        return act.build(width)
    act.check_width(width)
    if act.name == "colu":
        return colu.CoLU(act.cone_dim, act.num_cones, share_axis=act.share_axis, scaling=act.scaling,
                         layout=cfg.layout, axis_activation=axis_activation(act))
    return colu.RCoLU(act.cone_dim, act.num_cones, scaling=act.scaling, axis_activation=axis_activation(act))


def init_parameters(model, act, seed: int, apex_bias: float) -> None:
    """Set ``model`` 's weights and biases to the JAX demo's initialisation (see the module documentation)."""
    fc_in, fc_out = model.fc_in, model.fc_out
    rng = np.random.default_rng(seed + 1000 + INIT_SEED_OFFSETS.get(act.name, 0))
    w1 = rng.normal(size=(fc_in.in_features, fc_in.out_features)) * math.sqrt(2.0 / fc_in.in_features)
    w2 = rng.normal(size=(fc_out.in_features, fc_out.out_features)) * math.sqrt(2.0 / fc_out.in_features)
    b1 = np.zeros(fc_in.out_features)
    if act.conic:
        b1[: fc_in.out_features // 4] = apex_bias  # keeps early cones out of the all-inactive branch
    with torch.no_grad():
        fc_in.weight.copy_(torch.from_numpy(w1.T.astype(np.float32)))
        fc_out.weight.copy_(torch.from_numpy(w2.T.astype(np.float32)))
        fc_in.bias.copy_(torch.from_numpy(b1.astype(np.float32)))
        fc_out.bias.zero_()


def check_activation(cfg, act, data):
    act.check_width(act.width or cfg.width)


def build_model(cfg, act, data):
    width = act.width or cfg.width
    model = TwoLayer(3, width, 3, build_activation(cfg, act, width), bias=True)
    # the runner seeds torch with the run seed just before this call; the recipe draws from NumPy with it
    init_parameters(model, act, seed=torch.initial_seed(), apex_bias=cfg.apex_bias)
    return model, width


def full_batches(data, cfg, seed: int, step: int):
    """All training points every step (in their stored order) when the batch holds them, else minibatches."""
    if cfg.batch_size >= data.x_train.shape[0]:
        return data.x_train, data.y_train
    return permutation_batch(data, cfg, seed, step)


def train_loss(net, x, y, cfg, *, global_batch, world):
    # the mean over all coordinates (the original's jnp.mean), scaled so DDP's average is the global mean
    return F.mse_loss(net(x), y, reduction="sum") * (world / (global_batch * y.shape[1]))


def evaluate(model, data, cfg, device):
    eval_mse = F.mse_loss(model(data.x_test.to(device)).float(), data.y_test.to(device))
    train_mse = F.mse_loss(model(data.x_train.to(device)).float(), data.y_train.to(device))
    return {"eval_mse": eval_mse.item(), "train_mse": train_mse.item()}


EXPERIMENT = Experiment(
    name="cap-rotation",
    summary="jax-colu's cap-rotation demo: 3->64->3 net with biases learns a 55-degree rotation of an 85-degree "
            "spherical cap",
    Config=Config, metrics=metrics, default_activations=default_activations, load_data=load_data,
    build_model=build_model, train_loss=train_loss, evaluate=evaluate,
    log_metrics=("eval_mse", "train_mse"), curve_x="step", sweep_grid=sweep_grid,
    check_activation=check_activation, datasets=(), presets=presets, paper=paper, readings=READINGS,
    report_note=report_note,
    batches=full_batches, data_on_device=True,
)
