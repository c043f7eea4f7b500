"""Section 5.6, Appendix D.4, Table 7: the MLP of a small GPT on character-level tiny Shakespeare.

The model is :class:`colu_lab.experiments.gpt_shakespeare.model.GPT`: 6 pre-LayerNorm blocks,
embedding 256, 8 heads of 32, context (block) 64, no dropout, the output head
tied to the token embedding. Only the activation of each block's MLP
(``Linear(256 -> 1024)``, activation, ``Linear(1024 -> 256)``) changes:
ReLU against CoLU S = 4 (hard projection, separate axes), acting on the last
axis of ``(B, T, 1024)``.

Three of those choices are readings (:data:`READINGS`, printed by ``colu run
gpt-shakespeare --show-config``): Appendix D.4 gives the sizes and says "The
Transformer follows Vaswani et al. (2017)", while Section 5.6 and Table 7
call the model GPT2, and the two layouts differ.

* ``norm_placement`` (``pre``, default; ``post``): GPT-2 normalises each
  sub-layer's input (``x + f(LN(x))``, a final LayerNorm), Vaswani et al.
  its output (``LN(x + f(x))``). We keep pre-norm: the paper names the model
  GPT2, and a post-norm stack trained at a constant rate with no warm-up (the
  paper's 1e-4, no schedule) is the setting in which post-norm is known to
  train badly (Xiong et al. 2020), which Table 7's losses give no sign of.
* ``tie_weights`` (``true``, default; ``false``): both sources share the
  token embedding with the output head, so this reading is the safest of the
  three; the switch is there to measure it.
* ``dropout`` (0, default; Vaswani et al.'s base model uses 0.1): the
  appendix lists the sizes and the optimiser's settings, weight decay
  included, and no dropout, and the text reports overfitting within 20K steps
  ("slower overfitting"), which an unregularised model of this size shows on
  a 1 MB corpus. The losses (train 1.26, eval 1.48) do not pin a rate.

All three defaults are the model the earlier runs trained, so their numbers
stay comparable; ``--set norm_placement=post tie_weights=false dropout=0.1``
(one ``--set`` each) switches them.

Data: the text file ``--data PATH/input.txt`` as a character corpus
(:func:`colu_lab.framework.data.load_char_corpus`): first 90 % of the text for
training, the last 10 % for validation, vocabulary = the distinct characters
(65 for tiny Shakespeare). Each optimizer step trains on ``batch_size``
random windows of ``block_size`` characters of the training text
(:func:`colu_lab.framework.batches.token_window_batch`, a function of seed and
step alone) and predicts every next character; the loss is the mean
cross-entropy over all positions of the global batch. ``train_examples`` (for
epochs and the report) is the number of distinct training windows.

Training (Appendix D.4): 20 000 steps, batch 512, Adam, learning rate 1e-4,
weight decay 1e-2, constant rate, no clipping. "Adam ... with a weight decay
coefficient of 1e-2" is read as *decoupled* decay (``torch.optim.AdamW``,
weights shrink by ``lr * 1e-2`` each step), for two reasons: 1e-2 is exactly
``AdamW``'s default ``weight_decay``, and the GPT code this kind of experiment
is usually built on trains with AdamW. The decay applies to every parameter
(the plain ``AdamW(model.parameters())`` the sentence describes).
``--set weight_decay_mode=l2`` switches to ``torch.optim.Adam``'s L2 decay
instead; since the paper's words fit both, the report does not count the
mode as a setting that must match.

Evaluation, every ``eval_every`` steps (500 in the paper preset: 40 points):
``train_loss`` and ``eval_loss``, the mean per-character cross-entropy over a
fixed set of ``eval_batches`` x ``eval_batch_size`` windows of the training
and of the validation text. The windows depend on nothing but the data
(:func:`colu_lab.framework.batches.fixed_token_batches`, seed 0), so every
evaluation point, seed and activation is measured on the same text.

Final metrics, all from the evaluation curve:

* ``train_loss``, ``eval_loss``: at the last evaluation (Table 7's columns;
  the paper does not say whether its eval loss is the last or the best, we
  read it as the last);
* ``best_eval_loss`` and ``best_eval_step``: the lowest eval loss and the
  step it was reached at (the earliest, on a tie);
* ``early_eval_loss``: the mean eval loss over the first quarter of the
  evaluation points (``ceil(points / 4)`` of them; steps 500 to 5000 in the
  paper preset). Lower means the eval loss dropped faster, the paper's
  "faster drop in the test loss";
* ``eval_rise``: the last eval loss minus the best, i.e. how far the eval
  loss climbed back after its minimum. Lower means slower overfitting, the
  paper's "slower overfitting" (0: it never rose).
* ``eval_at_train_loss``: the eval loss where the train loss first falls to
  ``matched_train_loss`` (interpolated between evaluation points), the
  paper's "lower test loss with the same training loss"; read only when
  ``matched_train_loss`` is set and the run reaches it.

``train_chars`` (default: all) trains on the first N characters of the
training text only, the validation text unchanged. The ``claim`` preset uses
it to create the condition the text's claims are about: a model that
overfits within the budget (the cpu preset's 300 steps on the whole text
never do).

The paper reports one number per row of Table 7 without a spread, so its
values are quoted with no std and it counts as one seed per configuration.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
from dataclasses import dataclass, field
from typing import ClassVar, Optional

import torch
import torch.nn.functional as F

from colu.tools.cli import Command
from colu_lab.experiments.gpt_shakespeare.model import GPT, GPTConfig
from colu_lab.framework import data as data_mod
from colu_lab.framework.batches import fixed_token_batches, token_window_batch
from colu_lab.framework.config import TrainConfig
from colu_lab.framework.contract import Experiment, Preset
from colu_lab.framework.paper import Cited, Claim, PaperReference
from colu_lab.framework.readings import Reading

NAME = "gpt-shakespeare"
# tiny Shakespeare's input.txt, as the paper's corpus: its length in characters and its vocabulary
TINY_SHAKESPEARE_CHARS = 1115394
TINY_SHAKESPEARE_VOCAB = 65

# final metric -> higher is better. A later best step and a smaller rise both mean slower overfitting.
metrics = {"train_loss": False, "eval_loss": False, "best_eval_loss": False, "best_eval_step": True,
           "early_eval_loss": False, "eval_rise": False, "eval_at_train_loss": False}


@dataclass
class Config(TrainConfig):
    activations: list = field(default_factory=list)
    dataset: str = "text"  # a label only: the corpus is the one file --data names
    n_layer: int = 6
    n_head: int = 8
    n_embd: int = 256
    block_size: int = 64
    train_chars: Optional[int] = None  # train on the first N characters of the training text; None: all of it
    dropout: float = 0.0  # after the embeddings, the attention weights and each sub-layer's output
    tie_weights: bool = True  # the output head shares the token embedding
    norm_placement: str = "pre"  # pre: x + f(LN(x)) and a final LN (GPT-2); post: LN(x + f(x)) (Vaswani et al.)
    epochs: Optional[int] = None
    steps: Optional[int] = 20000
    batch_size: int = 512
    lr: float = 1e-4
    weight_decay: float = 1e-2
    weight_decay_mode: Optional[str] = "decoupled"  # AdamW; see the module documentation
    seeds: int = 1
    eval_every: int = 500
    eval_batches: int = 20  # fixed windows per evaluation set: eval_batches x eval_batch_size
    eval_batch_size: int = 512
    matched_train_loss: Optional[float] = None  # the train loss at which eval_at_train_loss is read; None: not read

    LIMITS: ClassVar[dict] = {**TrainConfig.LIMITS, "n_layer": (">=", 1), "n_head": (">=", 1), "n_embd": (">=", 1),
                              "block_size": (">=", 1), "train_chars": (">=", 2), "dropout": (">=", 0.0),
                              "eval_batches": (">=", 1), "eval_batch_size": (">=", 1),
                              "matched_train_loss": (">", 0.0)}
    CHOICES: ClassVar[dict] = {**TrainConfig.CHOICES, "norm_placement": GPTConfig.NORM_PLACEMENTS}

    def __post_init__(self):
        super().__post_init__()
        if self.dropout >= 1:
            raise ValueError(f"dropout {self.dropout!r} is out of range: it must be < 1 (a probability; 0: none)")


# What Appendix D.4 states (the schedule, warm-up and clipping it does not mention: none); a run is
# comparable to Table 7 only with all of these. weight_decay_mode is left out on purpose: the paper's
# "Adam ... weight decay" fits both readings.
PAPER_SETTINGS = {"n_layer": 6, "n_head": 8, "n_embd": 256, "block_size": 64, "dropout": 0.0, "tie_weights": True,
                  "norm_placement": "pre", "steps": 20000, "batch_size": 512, "optimizer": "adam", "lr": 1e-4,
                  "weight_decay": 1e-2, "schedule": "constant", "warmup_steps": 0, "grad_clip": 0.0}

_FOLLOWS = ('App. D.4: "The Transformer follows Vaswani et al. (2017) with the block size of 64, an embedding size '
            'of 256, a number of heads 8, head size 32 and number of layers 6"; Sec. 5.6 and Table 7 call it GPT2')
READINGS = (
    Reading("norm_placement", "pre", _FOLLOWS,
            {"post": "Vaswani et al.'s LN(x + sublayer(x)) after each sub-layer, and no final LayerNorm"},
            "GPT-2's layout, the model the paper names; post-norm at a constant rate without warm-up (the "
            "paper's) is where post-norm is known to train badly, which Table 7 shows no sign of."),
    Reading("tie_weights", "true", _FOLLOWS,
            {"false": "a separate output head, Linear(n_embd -> vocabulary)"},
            "Vaswani et al. and GPT-2 both share the token embedding with the output head."),
    Reading("dropout", "0.0",
            "App. D.4 lists the sizes, steps, Adam, batch, learning rate and weight decay, and no dropout; "
            "Vaswani et al.'s base model, which it cites, uses P_drop = 0.1",
            {"0.1": "Vaswani et al.'s rate, after the embeddings, the attention weights and each sub-layer",
             "0.2": "nanoGPT's character-level Shakespeare setting"},
            "the paper lists its regulariser (weight decay) and no dropout, and reports overfitting within 20K "
            "steps, as an unregularised model shows; its losses do not pin a rate."),
    Reading("schedule", "constant", 'App. D.4: "Each run lasts 20K steps and uses the Adam optimizer with a batch '
            'size of 512, a learning rate of 10^-4" (no schedule named)',
            {"cosine": "from 1e-4 down to lr * min_lr_ratio along half a cosine (nanoGPT's decay; it warms up "
                       "first: add --set warmup_steps=100)"},
            "the paper names one rate and no schedule or warm-up; a decay would also blunt the late rise of the "
            "eval loss that the paper's 'slower overfitting' is about."),
    Reading("weight_decay_mode", "decoupled", 'App. D.4: "uses the Adam optimizer with ... a weight decay '
            'coefficient of 10^-2"',
            {"l2": "torch.optim.Adam(weight_decay=1e-2): 1e-2 x w added to the gradient"},
            "1e-2 is exactly AdamW's default weight_decay, and the GPT code such experiments are built on trains "
            "with AdamW; the words fit both, so the report does not count the mode as a setting that must match."),
)

presets = {
    "paper": Preset({**PAPER_SETTINGS, "weight_decay_mode": "decoupled", "eval_every": 500, "eval_batches": 20,
                     "eval_batch_size": 512, "seeds": 3},
                    "Appendix D.4 exactly: 6 layers x 256, 20000 steps at batch 512, Adam lr 1e-4, weight decay "
                    "1e-2 (decoupled), 40 evaluations; 3 seeds (the paper states none: the fewest that allow a "
                    "verdict) (meant for a GPU)"),
    "cpu": Preset({"n_layer": 4, "n_embd": 128, "n_head": 4, "batch_size": 32, "lr": 1e-3, "steps": 300,
                   "eval_every": 30, "eval_batches": 4, "eval_batch_size": 64, "seeds": 2},
                  "a smaller GPT (4 layers x 128, 4 heads of 32, block 64), batch 32, lr 1e-3, 300 steps, "
                  "10 evaluations on 256 fixed windows, 2 seeds; about 11 min on a 2-core CPU (with "
                  "OMP_NUM_THREADS=1: on a busy machine two threads are several times slower)"),
    "claim": Preset({"n_layer": 4, "n_embd": 128, "n_head": 4, "batch_size": 32, "lr": 1e-3, "steps": 800,
                     "train_chars": 20000, "eval_every": 20, "eval_batches": 4, "eval_batch_size": 64, "seeds": 5,
                     "matched_train_loss": 1.5},
                    "the text's claims under the condition they are about: the cpu preset's GPT trained on only the "
                    "first 20000 characters of the training text, so that both activations overfit within 800 "
                    "steps (40 evaluations, as the paper's 20K steps have); eval loss read at train loss 1.5; "
                    "5 seeds; about 40 min of one core"),
    "quick": Preset({"n_layer": 1, "n_embd": 32, "n_head": 2, "block_size": 16, "batch_size": 8, "lr": 1e-3,
                     "steps": 12, "eval_every": 4, "eval_batches": 2, "eval_batch_size": 8, "seeds": 2},
                    "a smoke test (1 layer x 32, 12 steps); seconds on a 2-core CPU"),
}

paper = PaperReference(
    values={
        ("relu", 1024): {"train_loss": Cited(1.256, None, "Table 7"), "eval_loss": Cited(1.482, None, "Table 7")},
        ("colu:S=4", 1024): {"train_loss": Cited(1.263, None, "Table 7"),
                             "eval_loss": Cited(1.481, None, "Table 7")},
    },
    claims=(
        Claim("CoLU S=4 ends with a lower eval loss than ReLU", "Table 7", "eval_loss", "colu:S=4", ("relu",),
              False),
        Claim("CoLU S=4's eval loss drops faster than ReLU's (lower mean eval loss over the first quarter of "
              "the evaluations)", "Sec. 5.6, App. D.4 text", "early_eval_loss", "colu:S=4", ("relu",), False),
        Claim("CoLU S=4 overfits more slowly than ReLU (its eval loss climbs back less from its minimum)",
              "Sec. 5.6, App. D.4 text", "eval_rise", "colu:S=4", ("relu",), False),
        Claim("CoLU S=4 has a lower eval loss than ReLU at the same train loss (read at matched_train_loss)",
              "Sec. 5.6 text", "eval_at_train_loss", "colu:S=4", ("relu",), False),
    ),
    settings=PAPER_SETTINGS,
    seeds=1,  # one number per row of Table 7, no spread
)

report_note = (
    "How the curves are read: `train_loss` and `eval_loss` are mean per-character cross-entropies over a fixed "
    "set of windows of the training and the validation text, the same at every evaluation point. "
    "`early_eval_loss` is the mean eval loss over the first quarter of the evaluation points (lower: the eval "
    "loss dropped faster); `eval_rise` is the last eval loss minus the best one (lower: slower overfitting, 0: "
    "no rise); `best_eval_step` is the step of the lowest eval loss. Table 7's eval loss is read as the last "
    "evaluation's. The model is GPT-2's pre-LayerNorm layout with the output head tied to the token embedding and "
    "no dropout (readings of \"follows Vaswani et al.\"; `--set norm_placement=post`, `tie_weights=false`, "
    "`dropout=0.1` switch them). \"Adam with weight decay 1e-2\" is read as decoupled decay (AdamW; 1e-2 is AdamW's "
    "default), over all parameters; `--set weight_decay_mode=l2` runs the L2 reading. The paper gives one number "
    "per row and no spread.")


def default_activations(cfg):
    return ["relu", "colu:S=4"]


def sweep_grid(cfg):
    return ["relu", "gelu", "silu", "colu:S=4", "colu:S=4,soft", "colu:S=8", "colu:S=4,share"]


# ------------------------------------------------------------------ data
class TextData:
    """A :class:`colu_lab.framework.data.CharCorpus` with the fixed evaluation windows and the contract's summary.

    Attributes:
        corpus: the corpus (token tensors and vocabulary).
        train, val: its token ids (int64, on the CPU).
        block: the window length.
        eval_sets: ``{"train_loss": batches, "eval_loss": batches}``, each a
            list of ``(x, y)`` windows from the training or the validation
            text, fixed for the whole run.
    """

    def __init__(self, corpus: data_mod.CharCorpus, block: int, eval_batches: int, eval_batch_size: int,
                 full_train_tokens: Optional[int] = None):
        # the whole training text's length, where train_chars cut the corpus's training text
        self.full_train_tokens = int(corpus.train.numel()) if full_train_tokens is None else full_train_tokens
        self.corpus = corpus
        self.train, self.val, self.block = corpus.train, corpus.val, block
        self.eval_sets = {
            "train_loss": fixed_token_batches(corpus.train, block, eval_batch_size, eval_batches, seed=0),
            "eval_loss": fixed_token_batches(corpus.val, block, eval_batch_size, eval_batches, seed=0),
        }
        self._moved: dict = {}

    @property
    def vocab_size(self) -> int:
        return self.corpus.vocab_size

    def windows(self, tokens: torch.Tensor) -> int:
        """Distinct windows of ``block`` characters with a next-character target in ``tokens``."""
        return int(tokens.numel()) - self.block

    def eval_sets_on(self, device) -> dict:
        """:attr:`eval_sets` on ``device`` (moved once, then reused at every evaluation point)."""
        key = str(device)
        if key not in self._moved:
            self._moved = {key: {name: [(x.to(device), y.to(device)) for x, y in batches]
                                 for name, batches in self.eval_sets.items()}}
        return self._moved[key]

    def summary(self) -> dict:
        """The corpus summary (vocabulary string included, for ``colu sample``) plus the contract's keys."""
        base = self.corpus.summary()
        chars = self.full_train_tokens + base["val_tokens"]
        cut = base["train_tokens"] < self.full_train_tokens
        n_eval = sum(int(x.shape[0]) for x, _ in self.eval_sets["eval_loss"])
        differs = []
        if (chars, self.vocab_size) != (TINY_SHAKESPEARE_CHARS, TINY_SHAKESPEARE_VOCAB):
            differs.append(f"the corpus ({chars} characters, vocabulary {self.vocab_size}) is not tiny Shakespeare "
                           f"({TINY_SHAKESPEARE_CHARS} characters, vocabulary {TINY_SHAKESPEARE_VOCAB})")
        notes = [f"train_loss and eval_loss are means over {n_eval} fixed windows of {self.block} characters of "
                 "the training and of the validation text, the same at every evaluation point"]
        if cut:
            differs.append(f"only the first {base['train_tokens']} of the {self.full_train_tokens} characters of "
                           "the training text are trained on (train_chars)")
        notes += [d[0].upper() + d[1:] for d in differs]
        train_part = f", of which the first {base['train_tokens']} are trained on" if cut else ""
        return {**base, "block_size": self.block,
                "description": (f"character-level corpus {os.path.basename(self.corpus.path)} ({chars} characters, "
                                f"vocabulary {self.vocab_size}): the first 90% ({self.full_train_tokens}) for "
                                f"training{train_part}, the last 10% ({base['val_tokens']}) for validation, in "
                                f"windows of {self.block} characters"),
                "train_examples": self.windows(self.train), "test_examples": self.windows(self.val),
                "input_dim": self.vocab_size, "notes": notes, "differs_from_paper": differs}


def load_data(cfg) -> TextData:
    """The corpus ``cfg.data`` names, cut for ``cfg.block_size``; a clear error naming the file to get otherwise."""
    if cfg.data is None:
        raise data_mod.DataError(f"{NAME} trains on a character corpus and has no built-in data: "
                                 + data_mod.CHAR_CORPUS_SOURCE)
    if os.path.isdir(cfg.data):
        inside = os.path.join(cfg.data, "input.txt")
        hint = (f"pass the file, e.g. --data {inside}" if os.path.isfile(inside)
                else data_mod.CHAR_CORPUS_SOURCE)
        raise data_mod.DataError(f"--data {cfg.data!r} is a directory; {NAME} reads one text file: {hint}")
    corpus = data_mod.load_char_corpus(cfg.data, block_size=cfg.block_size)
    have = int(corpus.train.numel())
    if cfg.train_chars is not None:
        if not cfg.block_size < cfg.train_chars <= have:
            raise ValueError(f"train_chars={cfg.train_chars} does not fit: the training text of {cfg.data} holds "
                             f"{have} characters and a window needs block_size + 1 = {cfg.block_size + 1}; use "
                             f"--set train_chars=N with {cfg.block_size} < N <= {have}, or drop it to train on all")
        corpus = dataclasses.replace(corpus, train=corpus.train[:cfg.train_chars])
    check_batch_sizes(cfg, corpus)
    return TextData(corpus, cfg.block_size, cfg.eval_batches, cfg.eval_batch_size, full_train_tokens=have)


def check_batch_sizes(cfg, corpus: data_mod.CharCorpus) -> None:
    """Refuse batches of more windows than the text holds (before anything is allocated for them).

    Windows are drawn with replacement, so a larger batch would only repeat windows; an absurd one (``1e11``)
    would otherwise end in the memory allocator. The evaluation sets draw ``eval_batch_size`` windows from the
    training and from the validation text alike.
    """
    block = cfg.block_size
    train, val = int(corpus.train.numel()) - block, int(corpus.val.numel()) - block
    if cfg.batch_size > train:
        raise ValueError(f"--batch-size {cfg.batch_size} is more than the {train} windows of {block} characters "
                         f"that the training text of {cfg.data} holds; use --batch-size <= {train}")
    if cfg.eval_batch_size > min(train, val):
        part, limit = ("validation", val) if val < train else ("training", train)
        raise ValueError(f"eval_batch_size {cfg.eval_batch_size} is more than the {limit} windows of {block} "
                         f"characters that the {part} text of {cfg.data} holds; use --set eval_batch_size <= {limit}")


def train_examples(data: TextData) -> int:
    return data.windows(data.train)


def batches(data: TextData, cfg, seed: int, step: int):
    return token_window_batch(data.train, cfg.block_size, cfg.batch_size, seed, step)


# ------------------------------------------------------------------ model
def gpt_config(cfg, vocab_size: int) -> GPTConfig:
    """The GPT sizes of config ``cfg`` (a ValueError naming the setting when they do not fit together)."""
    return GPTConfig(vocab_size=vocab_size, block_size=cfg.block_size, n_layer=cfg.n_layer, n_head=cfg.n_head,
                     n_embd=cfg.n_embd, dropout=cfg.dropout, tie_weights=cfg.tie_weights,
                     norm_placement=cfg.norm_placement)


def mlp_width(cfg) -> int:
    """The MLP's hidden width, where the activation acts: 4 x n_embd."""
    return GPTConfig.mlp_ratio * cfg.n_embd


def check_activation(cfg, act, data) -> None:
    width = mlp_width(cfg)
    if act.width is not None and act.width != width:
        raise ValueError(f"activation {act.label()!r} pins the width C={act.width}, but the MLP's hidden width is "
                         f"4 x n_embd = {width}; drop C= (or change n_embd)")
    act.check_width(width)
    gpt_config(cfg, data.vocab_size)


def make_model(cfg, act, vocab_size: int):
    """``(GPT, MLP width)`` for config ``cfg``, activation spec ``act`` and a vocabulary of ``vocab_size``."""
    width = mlp_width(cfg)
    return GPT(gpt_config(cfg, vocab_size), act=lambda hidden: act.build(hidden, dim=-1)), width


def build_model(cfg, act, data):
    return make_model(cfg, act, data.vocab_size)


def train_loss(net, x, y, cfg, *, global_batch, world):
    logits, _ = net(x)
    summed = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1), reduction="sum")
    # per-character mean over the global batch, once DDP averages the processes' gradients
    return summed * (world / (global_batch * y.shape[1]))


def evaluate(model, data: TextData, cfg, device) -> dict:
    out = {}
    for name, sets in data.eval_sets_on(device).items():
        total = torch.zeros((), dtype=torch.float64, device=device)
        count = 0
        for x, y in sets:
            logits, _ = model(x)
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1), reduction="sum")
            count += y.numel()
        out[name] = total.item() / count
    return out


def eval_at_train_loss(curve, level: float) -> Optional[float]:
    """The eval loss where the train loss first falls to ``level``, interpolated linearly in the train loss
    between the two evaluation points around it; ``None`` if it never does (or only at a diverged point)."""
    previous = None
    for p in curve:
        train, held = p["train_loss"], p["eval_loss"]
        if train is None or held is None or not (math.isfinite(train) and math.isfinite(held)):
            return None
        if train <= level:  # the previous point, if any, was above the level
            if previous is None:
                return held
            t = (previous[0] - level) / (previous[0] - train)
            return previous[1] + t * (held - previous[1])
        previous = (train, held)
    return None


def final_metrics(curve, cfg) -> dict:
    """The final metrics from the evaluation points (definitions in the module documentation)."""
    evals = [math.nan if p["eval_loss"] is None else p["eval_loss"] for p in curve]  # None: a diverged point
    finite = [(v, p["step"]) for v, p in zip(evals, curve) if math.isfinite(v)]
    best, best_step = min(finite) if finite else (math.nan, math.nan)  # ties: the earliest step
    early = evals[:math.ceil(len(evals) / 4)]
    last = evals[-1]
    out = {"train_loss": curve[-1]["train_loss"], "eval_loss": last, "best_eval_loss": best,
           "best_eval_step": best_step, "early_eval_loss": statistics.fmean(early), "eval_rise": last - best}
    level = getattr(cfg, "matched_train_loss", None)
    matched = None if level is None else eval_at_train_loss(curve, level)
    if matched is not None:  # absent, not NaN: a level the run never reached is no divergence
        out["eval_at_train_loss"] = matched
    return out


EXPERIMENT = Experiment(
    name=NAME,
    commands={"sample": Command("colu_lab.experiments.gpt_shakespeare.sample:main",
                                "print text generated by a trained character-level GPT run")},  # reads only the run folder
    summary="Sec. 5.6, App. D.4, Table 7: char-level GPT (6x256) on tiny Shakespeare, MLP ReLU vs CoLU S=4",
    Config=Config, metrics=metrics, default_activations=default_activations, load_data=load_data,
    build_model=build_model, train_loss=train_loss, evaluate=evaluate,
    curve_metrics=("eval_loss", "train_loss"), curve_x="step", final_metrics=final_metrics, sweep_grid=sweep_grid,
    check_activation=check_activation, data_is_file=True,
    data_help="tiny Shakespeare: the text file input.txt (--data PATH/input.txt; any UTF-8 text works, 90/10 split).",
    presets=presets, paper=paper, readings=READINGS, report_note=report_note, batches=batches,
    train_examples=train_examples,
)
