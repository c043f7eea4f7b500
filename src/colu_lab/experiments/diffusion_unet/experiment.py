"""Section 5.5, Table 5, Figures 7 and 9, Appendix D.3: a denoising diffusion UNet, ReLU against CoLU S = 4.

The network (:mod:`colu_lab.experiments.diffusion_unet.model`) is diffusers'
``UNet2DModel`` laid out like the Stable Diffusion UNet without its VAE and
with self-attention in place of cross-attention: block widths
``block_channels`` (the paper's 128, 256, 256, 256), ``layers_per_block``
ResNet blocks per level (1 for CIFAR-10, 2 for Flowers), self-attention at
the levels in ``attention_levels`` (0, 1, 2: every level but the coarsest,
where Stable Diffusion has its cross-attention) and in the mid block, 32
GroupNorm groups, 32 channels per attention head (the paper does not give
the heads). Every activation of the network is the one under test:
diffusers builds the time embedding's activation and the one before the
output convolution as ``nn.SiLU`` whatever its ``act_fn`` says, so every
activation module is replaced after the network is built, a cone
activation through :func:`colu.convert` (feature maps ``(N, C, H, W)`` get
their cones on the channel axis, ``dim=1``; the time embedding on its last
axis). The sites it replaced and any functional activation calls it could
not replace are kept in ``results.json`` (the first seed's ``probe``).

Training: the DDPM noise-prediction loss, the mean squared error between
the noise added to a clean image ``x0`` (scaled to [-1, 1]) at a uniformly
drawn timestep and the network's prediction of it, with diffusers'
``DDPMScheduler`` (1000 timesteps, linear betas 1e-4 to 0.02, its default).
The images of batch ``k``, their timesteps and their noise are a function
of the seed and ``k``, so a resumed run is bit-identical on the CPU. Adam,
learning rate 1e-4 (constant), batch 128 (CIFAR-10) or 16 (Flowers),
100 000 steps; weight decay 1e-2 is read as decoupled (AdamW), as in
diffusers' own training scripts, where ``torch.optim.AdamW`` takes the
paper's "Adam ... weight decay coefficient 1e-2" (``--set
weight_decay_mode=l2`` for the other reading). The Stable Diffusion
fine-tune (``colu finetune-diffusers``), whose "training details are the
same as above", reads the sentence the same way: both list the one shared
reading :data:`colu_lab.framework.readings.DIFFUSION_WEIGHT_DECAY`, so they
cannot drift apart. Its strongest support is the fine-tune's: the paper takes
the pretrained model and the Pokémon data from diffusers, whose text-to-image
script trains with ``torch.optim.AdamW`` and ``--adam_weight_decay 1e-2`` by
default; nothing in Table 5 speaks for the L2 reading.

The readings (:data:`READINGS`; ``colu run diffusion-unet --show-config``
prints them under their settings): the weight decay above; the constant
learning rate (the paper names one rate; diffusers' text-to-image script
keeps its rate constant too); self-attention at every level but the coarsest
(``attention_levels``, where Stable Diffusion has its cross-attention) and
32 channels per head (``attention_head_dim``; the paper gives neither); the
smoothing of Table 5's training loss (``loss_smoothing``) and no moving
average of the weights (``ema_decay``), both described below.

Metrics, at every evaluation point:

* ``train_loss``: the training loss smoothed as a training log shows it,
  the bias-corrected exponential moving average of the per-step losses
  with coefficient ``loss_smoothing`` (default 0.99, about the last 100
  steps). The paper does not say how Table 5's training loss is smoothed;
  this is our reading.
* ``heldout_loss``: the same loss on ``heldout_examples`` fixed held-out
  triples (test image, timestep, noise): test images in order (repeated if
  there are fewer), timesteps evenly spread over the 1000, noise from a
  fixed generator, the same for every run, so the points of every curve
  are comparable.

``--preset palettes`` sets up Appendix D.5's Figure 15 as far as this UNet
allows: the paper's palette run is "based on (Salimans & Ho, 2022)", whose
network it does not describe further, with "the activation function ...
conic with G = 32 without axis sharing", "a global batch size of 128 and a
learning rate of 10^-4", and images "perceptually visible" after "around
5K steps"; its palettes are the last convolution, "of dimension 256 x 3 x 3
x 3". The preset keeps Appendix D.3's UNet with every level 256 wide
(``PALETTES_WIDTHS``; the last convolution then reads 256 channels at 3 x 3
into 3 colours), trains SiLU against soft CoLU G = 32 (``colu:G=32,soft``:
cones of 8 channels on the feature maps, of 32 on the time embedding) for
5000 steps at batch 128, lr 1e-4, two seeds each (the figure shows two
initialisations per activation), on CIFAR-10; the weight decay, which D.5
does not mention, stays D.3's. ``colu palettes DIR`` then draws and matches
the two seeds' palettes.

With ``ema_decay > 0`` an exponential moving average of the weights is kept
(decay ``min(ema_decay, (1 + k) / (10 + k))`` at step ``k``, diffusers'
warm-up): the curve points then also hold ``heldout_loss_ema``, and the
sample grids are drawn with the averaged weights; ``train_loss`` and
``heldout_loss`` are always those of the trained weights. The default is 0
(no average): the paper mentions none.

Sample grids: at every evaluation point ``samples_RUN_stepSTEP.png`` holds
``samples`` images drawn with DDIM (``sample_steps`` = 50 steps, eta 0)
from the same initial noise (seed ``sample_seed``) for every run and point,
so grids of ReLU and CoLU runs show the same starting noise (Figure 9).

Data: ``cifar10`` (the official python batches), ``folder`` (every image
under ``--data DIR`` resized and centre-cropped to ``image_size``,
:mod:`colu_lab.framework.image_folder`; Oxford Flowers for the paper's second
data set), ``mnist`` (the real MNIST t10k digits padded to 32 x 32, one
channel, a CPU-sized stand-in, not comparable) and ``digits`` (the built-in
8 x 8 digits, for smoke tests). ``colu palettes DIR`` compares the output
convolutions of two seeds of a run.
"""

from __future__ import annotations

import io
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import ClassVar, Optional

import torch
import torch.nn.functional as F
from torch import nn

from colu.files import atomic_write_bytes
from colu.tools.cli import Command
from colu_lab.experiments.diffusion_unet.model import import_diffusers, set_activation, unet2d
from colu_lab.framework import data as data_mod
from colu_lab.framework.batches import batch_indices, derived_seed
from colu_lab.framework.config import TrainConfig
from colu_lab.framework.contract import Experiment, Preset
from colu_lab.framework.image_folder import load_image_folder
from colu_lab.framework.paper import Cited, Claim, PaperReference
from colu_lab.framework.readings import DIFFUSION_WEIGHT_DECAY, PAPER_SILENT, Reading
from colu_lab.framework.runner import run_slug

NAME = "diffusion-unet"
metrics = {"train_loss": False, "heldout_loss": False}
PALETTE_KEY = "unet.conv_out.weight"  # the last convolution (after the last activation) in a checkpoint's model
PAPER_WIDTHS = [128, 256, 256, 256]
# Appendix D.5's palettes are 256 x 3 x 3 x 3: the last convolution reads 256 channels, the first level's width
PALETTES_WIDTHS = [256, 256, 256, 256]
# streams of derived_seed; batches.py uses 1-4 for its own draws
_NOISE_STREAM, _HELDOUT_STREAM = 21, 22
EVAL_CHUNK = {"cpu": 250, "cuda": 1000}  # held-out triples per forward pass


@dataclass
class Config(TrainConfig):
    """The paper's CIFAR-10 settings (Appendix D.3) by default, on the built-in digits until ``--data`` is given.

    Own keys: ``image_size`` (the side images are trained at), the network's
    ``block_channels``, ``layers_per_block``, ``attention_levels``,
    ``norm_groups`` and ``attention_head_dim``; ``train_timesteps`` of the
    DDPM schedule; ``heldout_examples`` (held-out triples); ``loss_smoothing``
    (of ``train_loss``); ``ema_decay`` (0: no average of the weights);
    ``samples`` per grid (0: no grids), ``sample_steps`` (DDIM) and
    ``sample_seed`` (the grids' initial noise).
    """

    activations: list = field(default_factory=list)
    image_size: int = 32
    block_channels: list[int] = field(default_factory=lambda: list(PAPER_WIDTHS))

    @classmethod
    def dataset_specific(cls, dataset: str) -> tuple:
        # MNIST and CIFAR-10 are 32x32 here; the digits and a folder are resized to any size, a preset's included
        return (*TrainConfig.DATASET_SPECIFIC, *(("image_size",) if dataset in ("mnist", "cifar10") else ()))
    layers_per_block: int = 1
    attention_levels: list[int] = field(default_factory=lambda: [0, 1, 2])
    norm_groups: int = 32
    attention_head_dim: int = 32
    train_timesteps: int = 1000
    heldout_examples: int = 1000
    loss_smoothing: float = 0.99
    ema_decay: float = 0.0
    samples: int = 16
    sample_steps: int = 50
    sample_seed: int = 0
    epochs: Optional[int] = None
    steps: Optional[int] = 100_000
    batch_size: int = 128
    lr: float = 1e-4
    weight_decay: float = 1e-2
    eval_every: int = 5000

    LIMITS: ClassVar[dict] = {**TrainConfig.LIMITS, "image_size": (">=", 4), "layers_per_block": (">=", 1),
                              "norm_groups": (">=", 1), "attention_head_dim": (">=", 1),
                              "train_timesteps": (">=", 2), "heldout_examples": (">=", 1),
                              "loss_smoothing": (">=", 0.0), "ema_decay": (">=", 0.0), "samples": (">=", 0),
                              "sample_steps": (">=", 1), "sample_seed": (">=", 0)}

    def __post_init__(self):
        # Adam's decay is read as decoupled (module docstring); fixing it as the field default would make
        # --optimizer sgd an error
        if self.weight_decay_mode is None and self.optimizer == "adam":
            self.weight_decay_mode = "decoupled"
        super().__post_init__()
        widths = list(self.block_channels)
        if not widths or any(c < 1 for c in widths):
            raise ValueError(f"block_channels={widths!r}: give one positive width per level, e.g. "
                             "block_channels=128,256,256,256")
        bad = [c for c in widths if c % self.norm_groups]
        if bad:
            raise ValueError(f"norm_groups={self.norm_groups} does not divide the width(s) {bad} of block_channels="
                             f"{widths}; GroupNorm needs it to (e.g. norm_groups=8)")
        levels = len(widths)
        if any(not 0 <= a < levels for a in self.attention_levels):
            raise ValueError(f"attention_levels={list(self.attention_levels)!r}: levels are 0..{levels - 1} for "
                             f"{levels} block widths (an empty list: attention in the mid block only)")
        if self.image_size % 2 ** (levels - 1):
            raise ValueError(f"image_size={self.image_size} must be divisible by 2^{levels - 1} = {2 ** (levels - 1)}"
                             f" (the image is halved between the {levels} levels); change image_size or "
                             "block_channels")
        for key in ("loss_smoothing", "ema_decay"):
            if getattr(self, key) >= 1:
                raise ValueError(f"{key}={getattr(self, key)!r} must be < 1 (a moving-average coefficient)")
        if self.sample_steps > self.train_timesteps:
            raise ValueError(f"sample_steps={self.sample_steps} exceeds train_timesteps={self.train_timesteps}; "
                             "DDIM visits at most every timestep once")


# What Appendix D.3 states for CIFAR-10, and the readings it needs (attention levels, decoupled decay, constant lr)
PAPER_SETTINGS = {"dataset": "cifar10", "image_size": 32, "block_channels": PAPER_WIDTHS, "layers_per_block": 1,
                  "attention_levels": [0, 1, 2], "train_timesteps": 1000, "steps": 100_000, "batch_size": 128,
                  "optimizer": "adam", "lr": 1e-4, "weight_decay": 1e-2, "weight_decay_mode": "decoupled",
                  "schedule": "constant", "warmup_steps": 0, "grad_clip": 0.0}

READINGS = (
    DIFFUSION_WEIGHT_DECAY,
    Reading("schedule", "constant",
            'App. D.3: "All runs last 100K steps and use the Adam optimizer with ... a learning rate of 10^-4" '
            '(no schedule named)',
            {"cosine": "from 1e-4 down to lr * min_lr_ratio along half a cosine (diffusers' "
                       "train_unconditional.py default, after 500 warm-up steps: add --set warmup_steps=500)"},
            "the paper names one rate and no schedule, and diffusers' text-to-image script, whose optimiser the "
            "fine-tune's reading follows, keeps its rate constant by default."),
    Reading("attention_levels", "0,1,2",
            'App. D.3: "The UNet structure follows the Stable Diffusion model (LDM) ... For unconditional '
            'generation, the cross-attention function is replaced with the self-attention function."',
            {"1,2": "self-attention at 16x16 and 8x8 only (on CIFAR-10), not at the full 32x32",
             "": "no attention in the levels, only in the mid block"},
            "Stable Diffusion's UNet has cross-attention at every level but the coarsest; self-attention takes "
            "its place there."),
    Reading("attention_head_dim", "32", PAPER_SILENT + " (Stable Diffusion 1.x uses 8 heads per layer)",
            {"64": "64 channels per head (2 to 4 heads at these widths)",
             "8": "8 channels per head (16 to 32 heads)"},
            "32 channels per head gives 4 heads at width 128 and 8 at 256; the paper gives no head count."),
    Reading("loss_smoothing", "0.99",
            'Table 5: "Train Loss (CIFAR10) ... ReLU 0.1606, CoLU 0.1593" (how it is smoothed is not stated)',
            {"0.9": "about the last 10 steps' losses", "0.999": "about the last 1000 steps' losses"},
            "a bias-corrected moving average over about the last 100 steps, as a training log shows a loss; a "
            "single step's loss at batch 128 varies more than Table 5's difference."),
    Reading("ema_decay", "0.0", PAPER_SILENT + " (no moving average of the weights is mentioned)",
            {"0.9999": "diffusers' train_unconditional.py default; the sample grids and heldout_loss_ema use it",
             "0.999": "a shorter average, for runs of a few thousand steps"},
            "the paper mentions no average of the weights, and Table 5 reports a training loss, which an average "
            "would not change."),
)

presets = {
    "paper": Preset({**PAPER_SETTINGS, "eval_every": 5000, "seeds": 3, "activations": ["relu", "colu:S=4"]},
                    "Appendix D.3, CIFAR-10 (needs --data DIR): UNet 128-256-256-256, 1 ResNet block per level, "
                    "100K steps at batch 128, Adam lr 1e-4, decoupled weight decay 1e-2, ReLU and CoLU S=4, "
                    "3 seeds (the paper states none: the fewest that allow a verdict; the palettes use two of "
                    "them); meant for a GPU"),
    "paper-flowers": Preset({**PAPER_SETTINGS, "dataset": "folder", "image_size": 64, "layers_per_block": 2,
                             "batch_size": 16, "eval_every": 5000, "seeds": 3, "activations": ["relu", "colu:S=4"]},
                            "Appendix D.3, Flowers (--dataset folder --data DIR of the images): as paper with 2 "
                            "ResNet blocks per level and batch 16, images at 64x64 (the paper gives no size); "
                            "meant for a GPU"),
    "palettes": Preset({"dataset": "cifar10", "image_size": 32, "block_channels": PALETTES_WIDTHS,
                        "layers_per_block": 1, "attention_levels": [0, 1, 2], "steps": 5000, "batch_size": 128,
                        "lr": 1e-4, "eval_every": 1000, "seeds": 2, "activations": ["silu", "colu:G=32,soft"]},
                       "Appendix D.5, Figure 15 (needs --data DIR with CIFAR-10): the UNet 256 wide at every "
                       "level, so that the last convolution is 256 -> 3 at 3x3, SiLU and soft CoLU "
                       "G=32 without a shared axis, 2 seeds each, 5000 steps at batch 128, Adam lr 1e-4; then "
                       "colu palettes DIR. Meant for a GPU"),
    "cpu": Preset({"dataset": "mnist", "split_from_test": 2000, "block_channels": [16, 32, 64],
                   "attention_levels": [2], "norm_groups": 8, "attention_head_dim": 16, "steps": 300,
                   "batch_size": 32, "eval_every": 100, "heldout_examples": 256, "seeds": 2,
                   "activations": ["relu", "colu:S=4"]},
                  "the MNIST stand-in (needs --data DIR with the t10k IDX files), a UNet 16-32-64 with attention "
                  "at 8x8, 300 steps at batch 32, ReLU and CoLU S=4, 2 seeds; about 30 min on one free CPU core"),
    "quick": Preset({"dataset": "digits", "image_size": 8, "block_channels": [8, 16], "attention_levels": [1],
                     "norm_groups": 4, "attention_head_dim": 8, "steps": 6, "batch_size": 16, "eval_every": 3,
                     "heldout_examples": 32, "samples": 4, "sample_steps": 10, "seeds": 1},
                    "a smoke test: the built-in digits at 8x8, a UNet 8-16, 6 steps; under 30 s on a 2-core CPU, most of it "
                    "importing diffusers"),
}

paper = PaperReference(
    values={
        ("relu", PAPER_WIDTHS[0]): {"train_loss": Cited(0.1606, None, "Table 5, CIFAR-10")},
        ("colu:S=4", PAPER_WIDTHS[0]): {"train_loss": Cited(0.1593, None, "Table 5, CIFAR-10")},
    },
    claims=(
        Claim("CoLU S=4 reaches a lower (smoothed) training loss than ReLU", "Table 5, Figure 7", "train_loss",
              "colu:S=4", ("relu",), False),
        Claim("CoLU S=4 reaches a lower held-out denoising loss than ReLU",
              "abstract: CoLU 'improves diffusion models' training and performance'; the paper reports no held-out "
              "loss", "heldout_loss", "colu:S=4", ("relu",), False),
    ),
    settings=PAPER_SETTINGS,
)

report_note = (
    "How to read this: Table 5 gives the training loss of ReLU 0.1606 and CoLU S=4 0.1593 on CIFAR-10, and "
    "0.01653 and 0.01458 on Flowers (quoted here only: the comparison above is against the CIFAR-10 row), without "
    "a spread or a number of seeds; Figure 7 shows the learning curves. `train_loss` is the bias-corrected "
    "exponential moving average of the per-step training losses (coefficient `loss_smoothing`), our reading of "
    "the smoothed loss a training log shows; `heldout_loss` is the same DDPM loss on fixed held-out (image, "
    "timestep, noise) triples, which the paper does not report. Every activation of the UNet is the one under "
    "test, including the time embedding's and the one before the output convolution that diffusers builds as SiLU; "
    "results.json's `probe` lists each site replaced and any functional activation left. Weight decay 1e-2 is "
    "decoupled (AdamW, as diffusers' training scripts apply it). Samples are drawn with DDIM (eta 0) from the same "
    "initial noise for every run; with ema_decay > 0 they use the averaged weights.")


def default_activations(cfg):
    return ["relu", "colu:S=4"]


def sweep_grid(cfg):
    return ["relu", "silu", "colu:S=4", "colu:S=4,soft", "colu:G=32,soft"]


# ------------------------------------------------------------------ data
def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] (float) or 0..255 (``uint8``) as float32 in [-1, 1], the DDPM convention."""
    if images.dtype == torch.uint8:
        return images.float() / 127.5 - 1
    return images.float() * 2 - 1


def load_data(cfg) -> data_mod.ImageData:
    """The images of ``cfg.dataset`` and the fixed held-out triples (``data.heldout``: ``(x0, t, noise)``)."""
    if cfg.split_from_test and cfg.dataset != "mnist":
        raise data_mod.DataError(f"--split-from-test applies to --dataset mnist only (the dataset is "
                                 f"{cfg.dataset}); drop it")
    if cfg.dataset in ("mnist", "cifar10") and cfg.image_size != 32:
        raise data_mod.DataError(f"image_size={cfg.image_size}: {cfg.dataset}'s images are 32x32 here; drop "
                                 "image_size (or use --dataset folder, whose images are resized)")
    if cfg.dataset == "digits":
        if cfg.data is not None:
            raise data_mod.DataError(f"--dataset digits is built in and reads no files, but --data {cfg.data!r} "
                                     "was given; use --dataset cifar10, folder or mnist to read it, or drop --data")
        data = data_mod.load_digits_images(size=cfg.image_size, channels=1)
    elif cfg.dataset == "mnist":
        if cfg.data is None:
            raise data_mod.DataError("--dataset mnist (the padded MNIST stand-in) needs --data DIR holding the MNIST "
                                     "IDX files (with --split-from-test K, only the t10k pair); nothing is "
                                     "downloaded. Or use --quick / --dataset digits (built in)")
        data = data_mod.load_mnist_padded(cfg.data, split_from_test=cfg.split_from_test, channels=1)
    elif cfg.dataset == "cifar10":
        if cfg.data is None:
            raise data_mod.DataError("--dataset cifar10 needs --data DIR; " + data_mod.CIFAR_SOURCE)
        data = data_mod.load_cifar10(cfg.data)
    elif cfg.dataset == "folder":
        if cfg.data is None:
            raise data_mod.DataError("--dataset folder needs --data DIR, a folder of image files (searched "
                                     "recursively; e.g. Oxford Flowers' jpg/ folder); nothing is downloaded")

        data = load_image_folder(cfg.data, cfg.image_size, channels=3)
    else:
        raise data_mod.DataError(f"--dataset {cfg.dataset!r}: {NAME} reads {', '.join(EXPERIMENT.datasets)}")
    # attached to the data object so that every evaluation point of every run sees the same triples
    data.heldout = heldout_triples(data.x_test, cfg.heldout_examples, cfg.train_timesteps)
    return data


def heldout_triples(images: torch.Tensor, count: int, timesteps: int):
    """``count`` fixed (clean image, timestep, noise) triples from ``images``, independent of any run seed.

    Images are taken in order (cycling when there are fewer than
    ``count``), timesteps spread evenly over ``0 .. timesteps - 1`` and
    shuffled, noise drawn from a generator of fixed seed.
    """
    if images.shape[0] == 0:
        raise data_mod.DataError("the held-out split is empty: the held-out loss needs at least one test image")
    g = torch.Generator().manual_seed(derived_seed(0, _HELDOUT_STREAM, 0))
    x0 = to_model_range(images[torch.arange(count) % images.shape[0]])
    t = ((torch.arange(count, dtype=torch.float64) + 0.5) * timesteps / count).long()
    t = t[torch.randperm(count, generator=g)]
    noise = torch.randn(x0.shape, generator=g)
    return x0, t, noise


def batches(data, cfg, seed: int, step: int):
    """Batch ``step``: clean images in [-1, 1] (an epoch is a permutation), their timesteps and their noise."""
    n = int(data.x_train.shape[0])
    batch = min(cfg.batch_size, n)
    x0 = to_model_range(data.x_train[batch_indices(n, batch, seed, step)])
    g = torch.Generator().manual_seed(derived_seed(seed, _NOISE_STREAM, step))
    t = torch.randint(0, cfg.train_timesteps, (batch,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    return x0, t, noise


# ------------------------------------------------------------------ model
class DiffusionModel(nn.Module):
    """A UNet that predicts noise, with the running averages its training keeps as buffers.

    ``forward(sample, timesteps)`` returns the predicted noise. The buffers
    ``loss_average``/``loss_weight`` hold the bias-corrected moving average
    of the training loss (:meth:`smoothed_loss`) and, with ``ema_decay > 0``,
    ``ema.p0, ema.p1, ...`` the moving average of the UNet's parameters (in
    ``parameters()`` order); as buffers they are saved in checkpoints and
    restored on resume.
    """

    def __init__(self, unet: nn.Module, *, loss_smoothing: float, ema_decay: float, conversion: dict):
        super().__init__()
        self.unet = unet
        self.loss_smoothing = loss_smoothing
        self.ema_decay = ema_decay
        self.conversion = conversion
        self.register_buffer("loss_average", torch.zeros((), dtype=torch.float64))
        self.register_buffer("loss_weight", torch.zeros((), dtype=torch.float64))
        self.ema = nn.Module()
        if ema_decay > 0:
            for i, p in enumerate(unet.parameters()):
                self.ema.register_buffer(f"p{i}", p.detach().clone())

    def forward(self, sample: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, timesteps).sample

    def record_loss(self, loss: torch.Tensor) -> None:
        """Fold one step's loss into the moving average (on the device: no synchronisation)."""
        b = self.loss_smoothing
        self.loss_average.mul_(b).add_(loss.detach().double(), alpha=1 - b)
        self.loss_weight.mul_(b).add_(1 - b)

    def smoothed_loss(self) -> float:
        """The bias-corrected moving average of the training losses so far (NaN before the first step)."""
        weight = float(self.loss_weight)
        return float(self.loss_average) / weight if weight > 0 else math.nan

    def update_ema(self, step: int) -> None:
        """Move the averaged weights towards the current ones after optimizer step ``step`` (1-based)."""
        decay = min(self.ema_decay, (1 + step) / (10 + step))
        for avg, p in zip(self.ema.buffers(), self.unet.parameters()):
            avg.lerp_(p.detach(), 1 - decay)

    @contextmanager
    def ema_weights(self):
        """Within the block the UNet holds the averaged weights (a no-op without ``ema_decay``)."""
        if self.ema_decay <= 0:
            yield self
            return
        params = list(self.unet.parameters())
        kept = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, avg in zip(params, self.ema.buffers()):
                p.copy_(avg)
        try:
            yield self
        finally:
            with torch.no_grad():
                for p, old in zip(params, kept):
                    p.copy_(old)


def check_activation(cfg, act, data):
    """Raise ValueError unless ``act`` can replace every activation of the UNet (builds it once)."""
    build_model(cfg, act, data)


def build_model(cfg, act, data):
    """The UNet of ``cfg`` with every activation ``act``; returns it and its first level's width."""
    channels, size = int(data.x_train.shape[1]), int(data.x_train.shape[-1])
    if size != cfg.image_size:
        raise ValueError(f"image_size={cfg.image_size} but the data's images are {size}x{size}; set "
                         f"image_size={size}")
    unet = unet2d(cfg.block_channels, cfg.layers_per_block, cfg.attention_levels, cfg.image_size, channels,
                  cfg.norm_groups, cfg.attention_head_dim)
    # one forward pass finds each activation's width and channel axis; zeros draw nothing from the seeded RNG
    example = (torch.zeros(2, channels, size, size), torch.tensor([1, cfg.train_timesteps // 2]))
    try:
        conversion = set_activation(unet, act, example)
    except ValueError as exc:
        raise ValueError(f"activation {act.label()!r} does not fit this UNet (block_channels="
                         f"{list(cfg.block_channels)}): {exc}") from None
    model = DiffusionModel(unet, loss_smoothing=cfg.loss_smoothing, ema_decay=cfg.ema_decay, conversion=conversion)
    return model, int(cfg.block_channels[0])


_SCHEDULERS: dict = {}


def ddpm_scheduler(timesteps: int):
    """diffusers' ``DDPMScheduler`` with ``timesteps`` steps and its default linear betas (one per size)."""
    if timesteps not in _SCHEDULERS:

        _SCHEDULERS[timesteps] = import_diffusers().DDPMScheduler(num_train_timesteps=timesteps)
    return _SCHEDULERS[timesteps]


def _noise_loss_sum(net, x0, t, noise, cfg) -> torch.Tensor:
    noisy = ddpm_scheduler(cfg.train_timesteps).add_noise(x0, noise, t)
    return F.mse_loss(net(noisy, t).float(), noise.float(), reduction="sum")


def train_loss(net, x0, t, noise, cfg, *, global_batch, world):
    # the mean over the global batch's pixels once DDP averages the processes' gradients
    return _noise_loss_sum(net, x0, t, noise, cfg) * (world / (global_batch * noise[0].numel()))


def after_step(model, loss, cfg, step):
    model.record_loss(loss)
    if model.ema_decay > 0:
        model.update_ema(step)


def heldout_loss(model, data, cfg, device) -> float:
    """The mean noise-prediction error over the fixed held-out triples, in chunks."""
    x0, t, noise = data.heldout
    chunk = EVAL_CHUNK.get(device.type, EVAL_CHUNK["cpu"])
    total = torch.zeros((), dtype=torch.float64, device=device)
    for start in range(0, x0.shape[0], chunk):
        part = [v[start:start + chunk].to(device) for v in (x0, t, noise)]
        total += _noise_loss_sum(model, *part, cfg).double()
    return total.item() / noise.numel()


def evaluate(model, data, cfg, device) -> dict:
    out = {"train_loss": model.smoothed_loss(), "heldout_loss": heldout_loss(model, data, cfg, device)}
    if cfg.ema_decay > 0:
        with model.ema_weights():
            out["heldout_loss_ema"] = heldout_loss(model, data, cfg, device)
    return out


def probe(model, data, cfg, device) -> dict:
    """What replacing the activations did (sites, functional calls left), kept in the first seed's records."""
    return {"conversion": model.conversion}


# ------------------------------------------------------------------ samples
@torch.no_grad()
def sample_images(model, cfg, count: int, shape, device) -> torch.Tensor:
    """``count`` images ``(count, C, H, W)`` in [0, 1] drawn with DDIM (eta 0) from seed ``cfg.sample_seed``.

    The initial noise comes from a generator of its own, so sampling draws
    nothing from torch's global generator and every run starts from the same
    noise.
    """

    ddpm = ddpm_scheduler(cfg.train_timesteps).config
    ddim = import_diffusers().DDIMScheduler(num_train_timesteps=ddpm.num_train_timesteps, beta_start=ddpm.beta_start,
                                            beta_end=ddpm.beta_end, beta_schedule=ddpm.beta_schedule,
                                            clip_sample=ddpm.clip_sample)
    ddim.set_timesteps(cfg.sample_steps)
    gen = torch.Generator().manual_seed(cfg.sample_seed)
    x = torch.randn((count, *shape), generator=gen).to(device)
    for t in ddim.timesteps:
        eps = model(x, t.to(device).expand(count))
        x = ddim.step(eps, t, x, eta=0.0).prev_sample
    return ((x.clamp(-1, 1) + 1) / 2).cpu()


def image_grid_png(images: torch.Tensor, scale: int = 1, pad: int = 2) -> bytes:
    """``(N, C, H, W)`` images in [0, 1] (C = 1 or 3) as one PNG grid, ``ceil(sqrt(N))`` images a row."""
    from PIL import Image

    n, c, h, w = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = torch.ones(3, pad + rows * (h * scale + pad), pad + cols * (w * scale + pad))
    big = images.expand(-1, 3, -1, -1) if c == 1 else images[:, :3]
    big = big.repeat_interleave(scale, 2).repeat_interleave(scale, 3)
    for i in range(n):
        r, q = divmod(i, cols)
        top, left = pad + r * (h * scale + pad), pad + q * (w * scale + pad)
        canvas[:, top:top + h * scale, left:left + w * scale] = big[i]
    arr = (canvas.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def sample_file(run: str, step: int) -> str:
    """The sample grid's file name for run ``run`` (``relu-seed0``) at step ``step``."""
    return f"samples_{run}_step{step:06d}.png"


def evaluation_files(model, data, cfg, device, *, out_dir, run, step):
    """Write this evaluation point's sample grid (with the averaged weights when ``ema_decay > 0``)."""
    if cfg.samples == 0:
        return
    with model.ema_weights():
        images = sample_images(model, cfg, cfg.samples, tuple(data.x_train.shape[1:]), device)
    scale = max(1, 64 // images.shape[-1])  # tiny images are enlarged so that a grid can be looked at
    atomic_write_bytes(os.path.join(out_dir, sample_file(run, step)), image_grid_png(images, scale=scale))


def extra_plots(results, out_dir: str) -> list[str]:
    """The last sample grid of each activation's first seed, for the report."""
    paths = []
    for act in dict.fromkeys(r["activation"] for r in results["runs"]):
        run = min((r for r in results["runs"] if r["activation"] == act), key=lambda r: r["seed"])
        path = os.path.join(out_dir, sample_file(f"{run_slug(act)}-seed{run['seed']}", run["steps"]))
        if os.path.exists(path):
            paths.append(path)
    return paths


EXPERIMENT = Experiment(
    name=NAME,
    # checkpoints, the Hungarian solver and Pillow; no diffusers
    commands={"palettes": Command("colu_lab.experiments.diffusion_unet.palettes:main",
                                  "draw and match the last convolution's filters (palettes) of two seeds of a "
                                  "diffusion UNet run", "experiments", ("scipy", "PIL"))},
    summary="Sec. 5.5, App. D.3, Table 5: denoising diffusion UNet (diffusers UNet2DModel), ReLU vs CoLU S=4",
    Config=Config, metrics=metrics, default_activations=default_activations, load_data=load_data,
    build_model=build_model, train_loss=train_loss, evaluate=evaluate,
    curve_metrics=("train_loss", "heldout_loss"), log_metrics=("train_loss", "heldout_loss"), curve_x="step",
    sweep_grid=sweep_grid, check_activation=check_activation, datasets=("cifar10", "folder", "mnist", "digits"),
    data_help="Images (diffusion-unet): CIFAR-10's python batches, a folder of images of any size (--dataset folder), or "
              "the MNIST t10k files (--dataset mnist --split-from-test K).",
    presets=presets, paper=paper, readings=READINGS, report_note=report_note, batches=batches, probe=probe,
    extra_plots=extra_plots,
    after_step=after_step, evaluation_files=evaluation_files,
)
