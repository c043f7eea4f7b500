"""Section 5.4, Tables 4 and 6: ResNet-56 on CIFAR-10, ReLU against CoLU S = 4.

The network is the CIFAR ResNet of He et al. (2016)
(:func:`colu_lab.experiments.resnet_cifar.model.resnet_cifar`): depth ``6n + 2``
(``depth``, default 56; ``--set depth=20/32/44/110`` for the rest of the
family), three stages of basic blocks at 16, 32 and 64 channels,
parameter-free zero-padding shortcuts, BatchNorm, global average pooling.
Every activation is the one under test, applied to the channel axis of the
``NCHW`` feature maps (``dim=1``): a CoLU's cones group channels of one
pixel, so its spec must tile 16, 32 and 64 channels.

Data (``augment``, default on): the training images are zero-padded by 4
pixels, cropped back to 32 x 32 at a random offset and mirrored left-right
with probability 1/2 (the augmentation of He et al.); every image, for
training and evaluation alike, is then normalised per channel with the mean
and standard deviation of the training split. ``--set augment=false`` keeps
the normalisation and drops crops and flips. Batch ``k`` of a run, its
order and its augmentation draws are a function of the seed and ``k``
(:func:`colu_lab.framework.batches.augmented_image_batch`), so a resumed run
sees the batches an uninterrupted one does. An epoch is ``n // batch`` full
batches; the runner counts ``ceil(n / batch)`` steps per epoch, so 180
epochs of CIFAR-10's 50000 images at batch 128 are 180 x 391 = 70380 steps.

Training, the paper's settings: Adam, learning rate 1e-3, batch 128, 180
epochs, 10 seeds, weight decay 1e-2. Two of them need a reading (declared in
:data:`READINGS`; ``colu run resnet-cifar --show-config`` prints them):

* How "weight decay" is read: decoupled, AdamW-style
  (``weight_decay_mode="decoupled"``, the default here for Adam; it applies to
  every parameter, as AdamW does). An L2 term of 1e-2 added to Adam's gradient
  would dominate the gradient of a loss near 0.007 and hold the weights near
  zero, so it could not give the train losses of Tables 4 and 6.
  ``--set weight_decay_mode=l2`` (or ``--weight-decay-mode l2``) trains with
  ``torch.optim.Adam(weight_decay=1e-2)`` instead.
* The learning-rate schedule (``schedule``): the paper names one rate and no
  schedule, but says that "the training recipe follow[s] He et al. (2016)",
  whose recipe divides the rate by 10 at 32k and 48k of 64k iterations, i.e.
  at 50 % and 75 % of training. We read the schedule from that recipe, as the
  augmentation is read from it: ``schedule="step"`` with ``step_fractions``
  0.5, 0.75 and ``step_gamma`` 0.1 (at 180 epochs, steps 35190 and 52785).
  The paper's numbers point the same way: Tables 4 and 6 give ResNet-56
  93.6-93.7 % test accuracy, above the 93.03 % He et al. report for ResNet-56
  with SGD and that schedule, and a train loss of 0.007 at 99.8 % train
  accuracy; Adam at one constant rate usually ends CIFAR ResNets near
  90-91 % with a noisy last epoch, which is what the poster's 90.65 ± 1.00 %
  looks like, not the tables. ``--set schedule=constant`` trains at one rate
  (the literal reading, and the default before this reading was declared:
  runs saved earlier used it), ``--set schedule=cosine`` decays along a
  cosine to ``lr * min_lr_ratio`` (0 by default).

Metrics, at every evaluation point, in eval mode, in chunks:
``train_loss`` and ``train_accuracy`` over the whole training split without
augmentation, ``test_loss`` and ``test_accuracy`` over the test split, and
``flops``, the forward FLOPs per image
(:func:`colu_lab.framework.flops.forward_flops_per_example`: convolutions
and the classifier at 2 FLOPs per multiply-add, CoLU's projection counted,
element-wise ops free), computed once per architecture.

Datasets: ``cifar10`` (``--data DIR`` with the official python batches),
``mnist`` (real MNIST digits zero-padded to 32 x 32 on three channels, a
CPU-sized stand-in; ``--split-from-test K`` carves train and test out of the
two t10k files) and ``digits`` (the built-in 8 x 8 digits enlarged to
32 x 32, or to ``digits_size``, for smoke tests: ``--quick`` keeps them 8 x 8).
Only ``cifar10`` is comparable to the paper.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import ClassVar, Optional

import torch
import torch.nn.functional as F

from colu_lab.experiments.resnet_cifar.model import DEPTHS, resnet_cifar
from colu_lab.framework import data as data_mod
from colu_lab.framework.batches import augmented_image_batch
from colu_lab.framework.config import TrainConfig
from colu_lab.framework.contract import Experiment, Preset
from colu_lab.framework.flops import forward_flops_per_example
from colu_lab.framework.paper import Cited, Claim, PaperReference
from colu_lab.framework.readings import Reading

metrics = {"train_loss": False, "train_accuracy": True, "test_loss": False, "test_accuracy": True,
           "flops": False}
STAGE_WIDTHS = (16, 32, 64)  # the channels of the three stages; a CoLU spec must tile each of them
# images per evaluation forward pass, so memory stays bounded whatever the split's size; on a CPU, chunks whose
# feature maps stay under the allocator's mmap threshold cost a third less time than 1000-image chunks
EVAL_CHUNK = {"cpu": 250, "cuda": 1000}
CIFAR_EPOCH_STEPS = 391  # ceil(50000 / 128): the runner's steps per epoch of CIFAR-10 at batch 128
HE_STEP_FRACTIONS = (0.5, 0.75)  # He et al.: lr / 10 at 32k and 48k of 64k iterations


@dataclass
class Config(TrainConfig):
    """The paper's settings (Section 5.4) and our readings by default; ``depth``, ``augment`` and
    ``digits_size`` are this experiment's own. Adam's weight decay defaults to decoupled (AdamW); SGD keeps its
    L2 decay. The schedule is He et al.'s step schedule (the rate divided by 10 at 50 % and 75 % of the run's
    steps), whatever the budget."""

    activations: list = field(default_factory=list)
    depth: int = 56
    augment: bool = True
    digits_size: int = 32  # --dataset digits only: the side the 8x8 digits are enlarged to (8: as they are)
    DATASET_SPECIFIC: ClassVar[tuple] = (*TrainConfig.DATASET_SPECIFIC, "digits_size")
    epochs: Optional[int] = 180
    steps: Optional[int] = None
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-2
    schedule: str = "step"
    step_fractions: list[float] = field(default_factory=lambda: list(HE_STEP_FRACTIONS))

    LIMITS: ClassVar[dict] = {**TrainConfig.LIMITS, "depth": (">=", 8), "digits_size": (">=", 8)}

    def __post_init__(self):
        # Adam's decay is read as decoupled (see the module docstring); the base class would pick L2 for
        # adam, and fixing "decoupled" as the field default would make --optimizer sgd an error
        if self.weight_decay_mode is None and self.optimizer == "adam":
            self.weight_decay_mode = "decoupled"
        super().__post_init__()
        if (self.depth - 2) % 6:
            raise ValueError(f"depth={self.depth}: a CIFAR ResNet has depth 6n + 2, e.g. "
                             f"{', '.join(map(str, DEPTHS))} (--set depth=20)")


# What the paper states (Section 5.4); a run is comparable to its numbers only with all of these. The step
# schedule, the decoupled reading of the decay and the augmentation (He et al.'s) are our readings (READINGS).
PAPER_SETTINGS = {"dataset": "cifar10", "depth": 56, "augment": True, "steps": 180 * CIFAR_EPOCH_STEPS,
                  "batch_size": 128, "optimizer": "adam", "lr": 1e-3, "weight_decay": 1e-2,
                  "weight_decay_mode": "decoupled", "schedule": "step", "warmup_steps": 0, "grad_clip": 0.0}

_RECIPE = 'Sec. 5.4: "The ResNet architecture and the training recipe follow He et al. (2016)."'
READINGS = (
    Reading("schedule", "step",
            'Sec. 5.4: "The ResNet architecture and the training recipe follow He et al. (2016). ... use the Adam '
            'optimizer with a batch size of 128, a learning rate of 10^-3, and a weight decay coefficient of '
            '10^-2. Finer training settings will achieve better baselines" (no schedule named)',
            {"constant": "one rate throughout, the literal reading, since the paper names one rate; the "
                         "poster's 90.65 ± 1.00 % looks like it, and runs saved before this reading was declared "
                         "used it",
             "cosine": "from lr down to lr * min_lr_ratio, 0 by default, along half a cosine: the other common "
                       "CIFAR decay"},
            "He et al.'s recipe, which the paper follows where it names nothing else, divides the rate by 10 at "
            "50 % and 75 % of training (step_fractions=0.5,0.75); Tables 4/6's 93.6-93.7 % test accuracy is above "
            "He et al.'s own 93.03 % for ResNet-56 with SGD and that schedule (not measured here with Adam)."),
    Reading("weight_decay_mode", "decoupled",
            'Sec. 5.4: "use the Adam optimizer with ... a weight decay coefficient of 10^-2"',
            {"l2": "torch.optim.Adam(weight_decay=1e-2): 1e-2 x w added to the gradient"},
            "an L2 term of 1e-2 inside Adam would dominate the gradient of a loss near 0.007 and hold the weights "
            "near zero, so it could not give the train losses of Tables 4 and 6."),
    Reading("augment", "true", _RECIPE,
            {"false": "no crops or flips; every image is still normalised per channel"},
            "He et al.'s recipe pads by 4, crops 32 x 32 at random and flips left-right; without augmentation a "
            "ResNet-56 overfits CIFAR-10 well below the tables' 93 %."),
)

presets = {
    "paper": Preset({**PAPER_SETTINGS, "seeds": 10},
                    "Section 5.4: CIFAR-10 (needs --data DIR), ResNet-56, 180 epochs (70380 steps) at batch 128, "
                    "Adam lr 1e-3 divided by 10 at 50% and 75% (He et al.'s schedule), decoupled weight decay "
                    "1e-2, 10 seeds (meant for a GPU)"),
    "cpu": Preset({"dataset": "mnist", "split_from_test": 2000, "depth": 20, "steps": 250, "batch_size": 64,
                   "eval_every": 50, "seeds": 3, "activations": ["relu", "colu:S=4"]},
                  "the MNIST stand-in (needs --data DIR with the t10k IDX files), ResNet-20, 250 steps at "
                  "batch 64 (2 epochs of its 8000 images), ReLU and CoLU S=4, 3 seeds; about 15 min of one core"),
    "quick": Preset({"dataset": "digits", "digits_size": 8, "depth": 8, "steps": 6, "batch_size": 32,
                     "eval_every": 3, "seeds": 1},
                    "a smoke test: the built-in digits at 8x8, ResNet-8, 6 steps; under 20 s on a 2-core CPU"),
}


def _accuracy(percent, sd, source):
    return Cited(percent / 100, sd / 100, source)


paper = PaperReference(
    values={
        ("relu", STAGE_WIDTHS[0]): {
            "train_loss": Cited(0.0072, 0.0003, "Table 6"),
            "train_accuracy": _accuracy(99.8351, 0.0194, "Table 6"),
            "test_loss": Cited(0.2672, 0.0161, "Table 6"),
            "test_accuracy": _accuracy(93.7359, 0.3474, "Table 6"),
            "flops": Cited(0.252e9, 0.0, "Table 4"),
        },
        ("colu:S=4", STAGE_WIDTHS[0]): {
            "train_loss": Cited(0.0066, 0.0002, "Table 6"),
            "train_accuracy": _accuracy(99.8817, 0.0159, "Table 6"),
            "test_loss": Cited(0.3176, 0.0175, "Table 6"),
            "test_accuracy": _accuracy(92.7705, 0.3388, "Table 6"),
            "flops": Cited(0.257e9, 0.0, "Table 4"),
        },
    },
    claims=(
        Claim("CoLU S=4 reaches a lower train loss than ReLU", "Tables 4 and 6; poster", "train_loss",
              "colu:S=4", ("relu",), False),
        Claim("CoLU S=4 beats ReLU on test accuracy", "poster: 91.01 ± 0.39 % vs 90.65 ± 1.00 %",
              "test_accuracy", "colu:S=4", ("relu",), True),
        Claim("ReLU beats CoLU S=4 on test accuracy", "Tables 4 and 6: 93.59 vs 92.73 %, 93.74 vs 92.77 %",
              "test_accuracy", "relu", ("colu:S=4",), True),
    ),
    settings=PAPER_SETTINGS,
    seeds=10,
)

report_note = (
    "How to read this: the paper's Table 4 (ResNet-56 on CIFAR-10) gives ReLU a train loss of 0.0071097 ± "
    "0.00039 and a test accuracy of 93.5851 ± 0.442 %, CoLU S=4 0.0067262 ± 0.00032 and 92.7282 ± 0.357 %, with "
    "0.252 B and 0.257 B forward FLOPs; Table 6 (quoted in the table above) has nearly the same numbers. The "
    "poster reports, for the same network, ReLU 0.0051 ± 0.0014 train loss and 90.65 ± 1.00 % test accuracy, "
    "CoLU 0.0032 ± 0.0001 and 91.01 ± 0.39 %. Paper and poster agree that CoLU reaches the lower train loss but "
    "disagree on test accuracy (the tables favour ReLU, the poster CoLU), so both test-accuracy claims are listed "
    "above and judged on this run's numbers; at most one of them can hold. Weight decay 1e-2 is read as "
    "decoupled (AdamW-style): an L2 term that large inside Adam would dominate the gradient and could not give "
    "the paper's train loss of about 0.007; --set weight_decay_mode=l2 trains with L2 instead. The learning rate "
    "follows He et al.'s recipe, which the paper says it follows: divided by 10 at 50% and 75% of the steps "
    "(--set schedule=constant for the one rate the paper names, schedule=cosine for a cosine decay). FLOPs count convolutions and the classifier at 2 per "
    "multiply-add and CoLU's projection, element-wise work (ReLU, BatchNorm, sums) as free; the C column is the "
    "first stage's width (the stages have 16, 32 and 64 channels).")


def default_activations(cfg):
    # Section 5.4: hard scaling and no axis sharing, "for clean comparisons with ReLU"
    return ["relu", "colu:S=4"]


def sweep_grid(cfg):
    # specs that tile all of 16, 32 and 64 channels (a shared axis needs C - 1 divisible by S - 1, which fails)
    return ["relu", "silu", "colu:S=4", "colu:S=4,soft", "colu:S=8", "rcolu:S=4"]


def load_data(cfg) -> data_mod.ImageData:
    """The images of ``cfg.dataset``: ``(N, C, 32, 32)`` in [0, 1] with the training split's channel statistics."""
    if cfg.split_from_test and cfg.dataset != "mnist":
        raise data_mod.DataError(f"--split-from-test applies to --dataset mnist only (the dataset is "
                                 f"{cfg.dataset}); drop it")
    if cfg.dataset == "digits":
        if cfg.data is not None:
            raise data_mod.DataError(f"--dataset digits is built in and reads no files, but --data {cfg.data!r} "
                                     "was given; use --dataset mnist or cifar10 to read that folder, or drop --data")
        return data_mod.load_digits_images(size=cfg.digits_size, channels=3)
    if cfg.digits_size != 32:
        raise data_mod.DataError(f"digits_size={cfg.digits_size} applies to --dataset digits only (the dataset is "
                                 f"{cfg.dataset}, whose images are 32x32); drop it")
    if cfg.dataset == "mnist":
        if cfg.data is None:
            pair = "t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz]"
            need = (f"the two t10k IDX files ({pair})" if cfg.split_from_test else
                    f"the four MNIST IDX files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], {pair})")
            raise data_mod.DataError(f"--dataset mnist (the padded MNIST stand-in) needs --data DIR holding {need}; "
                                     "nothing is downloaded. Or use --quick / --dataset digits (built in)")
        return data_mod.load_mnist_padded(cfg.data, split_from_test=cfg.split_from_test, channels=3)
    if cfg.dataset == "cifar10":
        if cfg.data is None:
            raise data_mod.DataError("--dataset cifar10 needs --data DIR; " + data_mod.CIFAR_SOURCE)
        return data_mod.load_cifar10(cfg.data)
    raise data_mod.DataError(f"--dataset {cfg.dataset!r}: resnet-cifar reads {', '.join(EXPERIMENT.datasets)}")


def check_activation(cfg, act, data):
    """Raise ValueError unless ``act`` can sit in every stage (16, 32 and 64 channels, cones on the channel axis)."""
    if act.width is not None:
        raise ValueError(f"activation {act.label()!r}: the ResNet's widths are fixed by its stages "
                         f"({', '.join(map(str, STAGE_WIDTHS))} channels); drop C={act.width}")
    for channels in STAGE_WIDTHS:
        try:
            act.check_width(channels)
        except ValueError as exc:
            raise ValueError(f"activation {act.label()!r} cannot act on the ResNet's {channels}-channel stage "
                             f"({exc}); choose a spec that tiles 16, 32 and 64 channels, e.g. colu:S=4") from None


def build_model(cfg, act, data):
    """ResNet-``cfg.depth`` with ``act`` on the channel axis (``dim=1``) of every feature map.

    Returns the model and the first stage's width (16), the width the
    report's C column shows.
    """
    check_activation(cfg, act, data)
    model = resnet_cifar(cfg.depth, act=lambda channels: act.build(channels, dim=1),
                         in_channels=int(data.x_train.shape[1]))
    return model, STAGE_WIDTHS[0]


def batches(data, cfg, seed, step):
    """Batch ``step``: crops and flips with ``augment``, always normalised by the training split's statistics."""
    pad, flip = (4, True) if cfg.augment else (0, False)
    batch = min(cfg.batch_size, int(data.x_train.shape[0]))
    return augmented_image_batch(data.x_train, data.y_train, batch, seed, step, pad=pad, flip=flip,
                                 mean=data.mean, std=data.std)


def train_loss(net, x, y, cfg, *, global_batch, world):
    return F.cross_entropy(net(x), y, reduction="sum") * (world / global_batch)


def _loss_and_accuracy(model, images, labels, mean, std, device) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over ``images`` (unnormalised), in chunks of :data:`EVAL_CHUNK` images."""
    chunk = EVAL_CHUNK.get(device.type, EVAL_CHUNK["cpu"])
    total = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    mean = mean.to(device)[:, None, None]
    std = std.to(device)[:, None, None]
    for start in range(0, images.shape[0], chunk):
        x = (images[start:start + chunk].to(device) - mean) / std
        y = labels[start:start + chunk].to(device)
        logits = model(x).float()
        total += F.cross_entropy(logits, y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
    n = images.shape[0]
    return total.item() / n, correct.item() / n


_FLOPS: dict = {}


def image_flops(model, image_shape) -> int:
    """Forward FLOPs per image of ``model``, counted once per architecture and image shape.

    The module tree's printout (every layer with its sizes and the
    activation's options) stands for the architecture, so seeds and
    evaluation points of one configuration share one count. The count runs
    on a CPU copy: the model, wherever it lives, is not touched.
    """
    key = (repr(model), tuple(image_shape))
    if key not in _FLOPS:
        _FLOPS[key] = forward_flops_per_example(copy.deepcopy(model).cpu(), torch.zeros(1, *image_shape))
    return _FLOPS[key]


def evaluate(model, data, cfg, device):
    with torch.no_grad():
        train_loss_value, train_acc = _loss_and_accuracy(model, data.x_train, data.y_train, data.mean, data.std,
                                                         device)
        test_loss_value, test_acc = _loss_and_accuracy(model, data.x_test, data.y_test, data.mean, data.std, device)
    return {"train_loss": train_loss_value, "train_accuracy": train_acc, "test_loss": test_loss_value,
            "test_accuracy": test_acc, "flops": float(image_flops(model, data.x_train.shape[1:]))}


EXPERIMENT = Experiment(
    name="resnet-cifar",
    summary="Sec. 5.4, Tables 4 and 6: ResNet-56 on CIFAR-10, ReLU vs CoLU S=4 (losses, accuracies, FLOPs)",
    Config=Config, metrics=metrics, default_activations=default_activations, load_data=load_data,
    build_model=build_model, train_loss=train_loss, evaluate=evaluate,
    curve_metrics=("train_loss", "test_loss", "train_accuracy", "test_accuracy"), log_metrics=("train_loss",),
    sweep_grid=sweep_grid, check_activation=check_activation,
    datasets=("digits", "mnist", "cifar10"),
    data_help="CIFAR-10 (resnet-cifar): the folder holding the official python batches data_batch_1 .. "
              "data_batch_5 and test_batch (or the cifar-10-batches-py folder above them); resnet-cifar also "
              "reads the MNIST IDX files, padded to 32x32.",
    presets=presets, paper=paper, readings=READINGS, report_note=report_note, batches=batches,
    data_on_device=True,
)
