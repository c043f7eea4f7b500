"""One training loop for every experiment: batching, optimiser, schedule, checkpoints, resume, DDP, logging.

An experiment (:class:`colu_lab.framework.contract.Experiment`) supplies the
data, the model, the batches, the training loss and the evaluation; this
module owns everything that must be identical across experiments for resume
and multi-process runs to be exact:

* data order: the experiment's ``batches(data, cfg, seed, step)`` is a pure
  function of the run seed and the global step (by default epoch ``e`` visits
  the training set in the order ``randperm(n)`` drawn from a generator seeded
  with ``(seed, e)``), so nothing about it needs saving;
* a global batch is split across processes by striding, and each process's
  loss is scaled so DDP's gradient *average* equals the gradient of the mean
  loss over the global batch;
* the learning rate of every step is :func:`lr_factor` of the global step
  times each parameter group's starting rate, set before each update, so a
  resumed run follows the schedule exactly; gradient clipping acts on the
  averaged gradients, identically on every process;
* checkpoints hold only tensors and plain containers (model, optimizer, RNG
  state, step, curve) and are read back with ``weights_only=True``;
* no results of different settings in one folder: every run record and
  checkpoint carries the fingerprint of the settings that produced it
  (:func:`colu_lab.framework.config.result_settings`), and ``--resume`` reuses
  one only when the fingerprint matches; a fresh run refuses a folder holding
  earlier results unless told to overwrite them; one process writes a folder
  at a time (:mod:`colu_lab.framework.rundir`);
* ``metrics.jsonl`` holds each (activation, seed, step) once: a resumed run
  first drops the rows its killed predecessor logged after the checkpoint.
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist

from colu.files import atomic_write_bytes, atomic_write_json, atomic_write_text, naming
from colu_lab.framework import report
from colu_lab.framework.activations import parse_activations
from colu_lab.framework.config import MAX_EVALS, config_to_dict, fingerprint, result_settings, settings_diff
from colu_lab.framework.rundir import RunFolder


def atomic_torch_save(path: str, obj) -> None:
    with naming(path):  # a full disk (or torch.save failing) names the checkpoint
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        atomic_write_bytes(path, buffer.getvalue())


def append_jsonl(path: str, record: dict) -> None:
    # one write() per line, so an interrupted run leaves whole lines behind
    with naming(path), open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def prune_log(path: str, activation: str, seed: int, keep_through: int) -> None:
    """Drop the log rows of (activation, seed) past step ``keep_through`` (and any torn line).

    A run resumed from its checkpoint at step k re-evaluates the steps after k,
    so rows a killed process wrote after its last checkpoint would otherwise
    appear twice.
    """
    if not os.path.exists(path):
        return
    with open(path, "rb") as f:
        raw = f.read()
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:  # colu writes ASCII JSON: these bytes came from elsewhere
        raise StaleResults(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}), so not a log colu wrote or a "
                           "damaged one; it was left as it is. Delete it to continue with --resume (the training log "
                           "only: results and checkpoints do not depend on it), or start over with --overwrite"
                           ) from None
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue  # half a line from a killed write
        if row.get("activation") == activation and row.get("seed") == seed and row.get("step", 0) > keep_through:
            continue
        kept.append(line)
    if len(kept) != len(lines):
        atomic_write_text(path, "".join(line + "\n" for line in kept))


class StaleResults(ValueError):
    """A record or checkpoint in the folder was produced by other settings, or cannot be read."""


# ------------------------------------------------------------ distributed
@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_kind: str) -> DistInfo:
    """Join the process group torchrun describes in the environment (no-op for a single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def barrier(info: DistInfo) -> None:
    if info.world > 1:
        dist.barrier()


def resolve_device(name: str, info: DistInfo) -> torch.device:
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device {name!r}: choose auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", info.local_rank)
    return torch.device("cpu")


# ------------------------------------------------------------ training
class Halted(Exception):
    """Raised after --halt-after steps (checkpoint already written): the run stops as if interrupted."""


def lr_factor(cfg, step: int, total: int) -> float:
    """The learning rate of update ``step`` (0-based global step) as a fraction of ``cfg.lr``.

    ``warmup_steps`` W: ``(step + 1) / W`` for the first W updates. Then
    ``constant``: 1; ``cosine``: from 1 at step W down to ``min_lr_ratio`` at
    step ``total`` along half a cosine; ``step``: ``step_gamma`` to the power
    of the number of :func:`step_milestones` <= ``step``. A pure function of
    its arguments, so a resumed run sets exactly the rates an uninterrupted
    one does.
    """
    factor = 1.0
    if cfg.schedule == "cosine":
        span = max(1, total - cfg.warmup_steps)
        progress = min(1.0, max(0.0, (step - cfg.warmup_steps) / span))
        factor = cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    elif cfg.schedule == "step":
        factor = cfg.step_gamma ** sum(1 for m in step_milestones(cfg, total) if step >= m)
    if step < cfg.warmup_steps:
        factor *= (step + 1) / cfg.warmup_steps
    return factor


def step_milestones(cfg, total: int) -> list[int]:
    """The global steps at which schedule=step multiplies the rate by ``step_gamma`` in a run of ``total`` steps:
    ``step_milestones`` when given, else each of ``step_fractions`` times ``total``, rounded (at least step 1).
    With fractions 0.5, 0.75 and He et al.'s 64000 steps these are their 32000 and 48000."""
    if cfg.step_milestones:
        return list(cfg.step_milestones)
    return [max(1, round(f * total)) for f in cfg.step_fractions]


def build_optimizer(exp, model, cfg) -> torch.optim.Optimizer:
    """The optimizer ``cfg`` names, over the experiment's parameter groups (default: all parameters).

    adam + l2: ``torch.optim.Adam(weight_decay=...)``; adam + decoupled and
    adamw: ``torch.optim.AdamW``; sgd: ``torch.optim.SGD(momentum=...)`` with
    L2 decay. Each group remembers its starting rate as ``base_lr``, which
    the schedule scales.
    """
    groups = exp.parameter_groups(model, cfg) if exp.parameter_groups is not None else [
        {"params": list(model.parameters())}]
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "adamw" or cfg.weight_decay_mode == "decoupled":
        opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    for group in opt.param_groups:
        group["base_lr"] = group["lr"]
    return opt


def _progress(total, initial, desc, enabled):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)


def budget(cfg, n: int) -> tuple[int, int, int, int]:
    """(batch, steps per epoch, total steps, steps between evaluations) for ``n`` training examples.

    Without ``eval_every`` a run evaluates once per epoch, but at most
    ``MAX_EVALS`` times; an ``eval_every`` that would evaluate more often is
    an error naming the smallest value allowed.
    """

    batch = min(cfg.batch_size, n)
    steps_per_epoch = math.ceil(n / batch)
    total = cfg.steps if cfg.steps is not None else cfg.epochs * steps_per_epoch
    eval_every = cfg.eval_every or max(steps_per_epoch, math.ceil(total / MAX_EVALS))
    if math.ceil(total / eval_every) > MAX_EVALS:
        raise ValueError(f"--eval-every {cfg.eval_every} evaluates {math.ceil(total / eval_every)} times in "
                         f"{total} steps, more than the {MAX_EVALS} a run keeps; use --eval-every >= "
                         f"{math.ceil(total / MAX_EVALS)} (or 0: once per epoch)")
    return batch, steps_per_epoch, total, eval_every


def autocast_context(cfg, device):
    """bfloat16 autocast for the training forward pass when ``cfg.autocast`` asks for it on CUDA."""
    if cfg.autocast == "bf16" and device.type != "cuda":
        raise ValueError("--autocast bf16 (--bf16) is an autocast option for CUDA; this run is on CPU. Drop it, "
                         "use --autocast auto (bf16 on CUDA only), or use a GPU")
    if cfg.autocast in ("bf16", "auto") and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def precision_description(cfg: dict, device) -> str:
    """The arithmetic a run with saved config ``cfg`` used on ``device``, in words (for results and reports)."""
    on_cuda = str(device).startswith("cuda")
    if cfg.get("autocast", "off") in ("bf16", "auto") and on_cuda:
        return "bfloat16 autocast for the training forward pass (evaluation in float32)"
    return "float32"


def load_checkpoint(path: str, fp: str, settings: dict, act_label: str, seed: int) -> dict:
    """A checkpoint's state, checked to be the run of ``act_label`` and ``seed`` under the same settings (a file
    copied over another run's is refused, not loaded); clear errors otherwise."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not {"model", "optimizer", "step", "curve"} <= set(state):
            raise ValueError("not a colu run checkpoint")
    except Exception as exc:  # a truncated zip, a foreign pickle, ...: all mean "cannot use this file"
        raise StaleResults(f"{path}: cannot read this checkpoint ({type(exc).__name__}: {exc}); it is damaged or "
                           "truncated. Delete it to train that run from scratch, or start over with --overwrite"
                           ) from None
    if (state.get("activation"), state.get("seed")) != (act_label, seed):
        if "activation" not in state:
            what = "records no activation and seed (written by an older colu), so which run it holds cannot be checked"
        else:
            what = f"holds the run of {state['activation']} seed {state['seed']}"
        raise StaleResults(f"{path} {what}, not {act_label} seed {seed}. Delete it to train that run from scratch, "
                           "or start over with --overwrite")
    if state.get("fingerprint") != fp:
        raise StaleResults(_mismatch(path, state.get("settings"), settings))
    return state


def _mismatch(path: str, old_settings, settings: dict) -> str:

    if not isinstance(old_settings, dict):
        what = "was written without a settings fingerprint, so what produced it cannot be checked"
    else:
        what = "was produced by other settings: " + ", ".join(settings_diff(old_settings, settings))
    return (f"{path} {what}. --resume only continues runs of the same settings: resume with those settings, "
            "or start over with --overwrite (deletes the folder's results), or use another --out")


def train_run(exp, cfg, act, seed: int, data, *, device, info: DistInfo, ckpt_path: str | None,
              log_path: str | None, resume: bool, show_progress: bool, show_lines: bool = False,
              out_dir: str | None = None, progress: dict | None = None) -> dict:
    """Train one (activation, seed) and return its record: metrics, curve, width, extras.

    ``show_progress`` draws a tqdm bar (for terminals); ``show_lines`` prints one
    line per evaluation to stderr instead (for logs and pipes). ``out_dir``: the
    run's output folder, handed to the experiment's ``evaluation_files`` hook
    (``None``: the hook is not called). ``progress``, when given, is kept up to
    date with ``step``, ``total`` and ``checkpoint`` (the step of the last
    checkpoint, ``None`` before the first), so that an interruption can say
    what it lost.

    A training loss that is not finite raises :class:`Diverged` (carrying the
    run's record, marked diverged) at the next evaluation or checkpoint, where
    the loop waits for the device anyway; no checkpoint of the diverged
    weights is written.
    """

    settings = result_settings(cfg)
    fp = fingerprint(settings)
    torch.manual_seed(seed)  # same init on every process
    model, width = exp.build_model(cfg, act, data)
    model = model.to(device)
    opt = build_optimizer(exp, model, cfg)
    n = exp.train_examples(data)
    batch, steps_per_epoch, total, eval_every = budget(cfg, n)
    curve, step = [], 0

    if resume and ckpt_path and os.path.exists(ckpt_path):
        state = load_checkpoint(ckpt_path, fp, settings, act.label(), seed)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng_cpu"])
        if device.type == "cuda" and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"], device)
        step, curve = int(state["step"]), list(state["curve"])
    track = progress if progress is not None else {}
    track.update(step=step, total=total, checkpoint=step if step else None)
    if info.main and log_path:
        prune_log(log_path, act.label(), seed, keep_through=step)
    # a run checkpointed where the experiment's stop criterion held is finished, whatever budget is left
    stopped = bool(curve) and curve[-1].get("step") == step and _stop_here(exp, curve[-1], cfg)

    def save_checkpoint():
        if info.main and ckpt_path:
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "rng_cpu": torch.get_rng_state(),
                     "step": step, "curve": curve, "total": total, "fingerprint": fp, "settings": settings,
                     "activation": act.label(), "seed": seed}
            if device.type == "cuda":
                state["rng_cuda"] = torch.cuda.get_rng_state(device)
            atomic_torch_save(ckpt_path, state)
        barrier(info)
        track["checkpoint"] = step

    # the first step whose loss was not finite (0: none yet) and that loss. On an accelerator they stay on the
    # device, read only at evaluations and checkpoints: reading the loss every step would make the host wait for
    # the device every step. On the CPU reading it costs nothing.
    on_host = _loss_is_cheap_to_read(device)
    first_bad = 0 if on_host else torch.zeros((), dtype=torch.int64, device=device)
    bad_loss = math.nan if on_host else torch.zeros((), dtype=torch.float32, device=device)

    def diverged(at: int, what: str, value: float) -> Diverged:
        if bar is not None:
            bar.close()
        record = {"activation": act.label(), "seed": seed, "width": width, "steps": step, "budget_steps": total,
                  "batch_size": batch, "train_examples": n, "fingerprint": fp, "settings": settings,
                  "metrics": {m: None for m in exp.metrics}, "curve": clean(curve),
                  "diverged": {"step": at, what: str(value)}}
        return Diverged(diverged_message(record), record)

    def check_finite() -> None:
        mine = int(first_bad) if on_host else int(first_bad.item())
        at = mine
        if info.world > 1:  # every process stops together, at the earliest step any of them saw
            shared = torch.tensor(mine or total + 1, dtype=torch.int64, device=device)
            dist.all_reduce(shared, op=dist.ReduceOp.MIN)
            at = int(shared.item()) if int(shared.item()) <= total else 0
        if at:
            raise diverged(at, "loss", (float(bad_loss) if on_host else float(bad_loss.item())) if mine else math.nan)

    net = model
    if info.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    autocast = autocast_context(cfg, device)
    tag = f"[{exp.name}] {act.label()} seed {seed}"
    bar = _progress(total, step, f"{exp.name} {act.label()} seed {seed}", show_progress and info.main)
    started = time.time()
    model.train()
    while step < total and not stopped:
        global_batch = exp.batches(data, cfg, seed, step)
        size = global_batch[0].shape[0]
        local = [t[info.rank::info.world].to(device, non_blocking=True) for t in global_batch]
        factor = lr_factor(cfg, step, total)
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * factor
        with autocast:
            loss = exp.train_loss(net, *local, cfg, global_batch=size, world=info.world)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        try:
            opt.step()
        except RuntimeError as exc:  # lr so large that the update is no float32 number (Adam: 1e300)
            if "overflow" not in str(exc):
                raise
            raise diverged(step + 1, "update", math.inf) from None
        step += 1
        track["step"] = step
        if on_host:
            if not first_bad:
                value = loss.item()
                if not math.isfinite(value):
                    first_bad, bad_loss = step, value
        else:
            new_bad = ~torch.isfinite(loss.detach()) & (first_bad == 0)
            first_bad = torch.where(new_bad, step, first_bad)
            bad_loss = torch.where(new_bad, loss.detach().float(), bad_loss)
        if exp.after_step is not None:
            with torch.no_grad():
                exp.after_step(model, loss.detach(), cfg, step)
        if bar is not None:
            bar.update(1)
        if step % eval_every == 0 or step % cfg.ckpt_every == 0 or step == total or step == cfg.halt_after:
            check_finite()  # before evaluating or saving diverged weights
        if step % eval_every == 0 or step == total:
            model.eval()
            with torch.no_grad():
                metrics = exp.evaluate(model, data, cfg, device)
                if exp.evaluation_files is not None and info.main and out_dir:
                    exp.evaluation_files(model, data, cfg, device, out_dir=out_dir,
                                         run=f"{run_slug(act.label())}-seed{seed}", step=step)
            model.train()
            point = {"step": step, "epoch": step / steps_per_epoch, "lr": cfg.lr * factor, **metrics}
            curve.append(point)
            stopped = _stop_here(exp, point, cfg)
            if info.main and log_path:
                append_jsonl(log_path, {"activation": act.label(), "seed": seed, **point})
            if bar is not None:
                bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items()})
            if show_lines and info.main:
                shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
                print(f"{tag}: step {step}/{total} ({time.time() - started:.1f} s) {shown}", file=sys.stderr,
                      flush=True)
        halt = cfg.halt_after is not None and step == cfg.halt_after and step < total and not stopped
        if step % cfg.ckpt_every == 0 or step == total or halt or stopped:
            save_checkpoint()
        if halt:
            if bar is not None:
                bar.close()
            raise Halted(f"halted after step {step} of {total} (--halt-after); rerun with --resume to continue")
    if bar is not None:
        bar.close()
    record = {"activation": act.label(), "seed": seed, "width": width, "steps": step,
              "batch_size": batch, "train_examples": n, "fingerprint": fp, "settings": settings,
              "metrics": clean(exp.final_metrics(curve, cfg)), "curve": clean(curve)}
    if exp.stop_when is not None:
        record["budget_steps"] = total  # "steps" may end below it, where the stop criterion held
    if seed == cfg.seed_offset and exp.probe is not None:
        model.eval()
        with torch.no_grad():
            record["probe"] = exp.probe(model, data, cfg, device)
    return record


def _loss_is_cheap_to_read(device) -> bool:
    """Whether reading a loss on ``device`` every step costs nothing (the CPU) or waits for the device."""
    return device.type == "cpu"


class Diverged(ValueError):
    """A run's training loss stopped being finite; ``record`` is its run record, marked ``diverged``."""

    def __init__(self, message: str, record: dict):
        super().__init__(message)
        self.record = record


def diverged_message(record: dict) -> str:
    """'relu seed 0 diverged at step 2 (loss = nan); ...' for a record marked ``diverged``."""
    info = record["diverged"]
    what = next(k for k in info if k != "step")
    lr = (record.get("settings") or {}).get("lr")
    lr = f"{lr:g}" if isinstance(lr, (int, float)) else "?"
    head = f"{record['activation']} seed {record['seed']} diverged at step {info['step']} ({what} = {info[what]})"
    if what == "update":
        return f"{head}: learning rate {lr} overflows float32; recorded as diverged. Lower --lr"
    return f"{head}; recorded as diverged. Lower --lr ({lr} here) or clip the gradients (--grad-clip)"


def _stop_here(exp, point: dict, cfg) -> bool:
    """Whether the experiment's ``stop_when`` ends the run at evaluation point ``point`` (never without one)."""
    return exp.stop_when is not None and bool(exp.stop_when(point, cfg))


class Interrupted(Exception):
    """Ctrl-C during a run: ``finished`` names the (activation, seed) runs whose results are on disk, ``current``
    the run that was training (``None``: none was) and ``progress`` how far it had got (see :func:`train_run`)."""
    def __init__(self, finished, current: str | None = None, progress: dict | None = None):
        super().__init__("interrupted")
        self.finished = finished
        self.current = current
        self.progress = progress or {}

    def lost(self) -> str:
        """What the interruption cost the unfinished run, in words ("" when no run was training)."""
        if self.current is None:
            return ""
        step, total, saved = (self.progress.get(k) for k in ("step", "total", "checkpoint"))
        if step is None:
            return (f"interrupted in {self.current}: its steps since its last checkpoint (all of them if it had "
                    "none) are lost")
        if not step:
            return f"interrupted in {self.current} before its first step: none of its steps is lost"
        where = f"interrupted in {self.current} at step {step} of {total}"
        if saved == step:
            return f"{where}, at its checkpoint: none of its steps is lost"
        if saved is None:
            its = "its 1 step is" if step == 1 else f"all {step} of its steps are"
            return f"{where}: no checkpoint of it yet, so {its} lost"
        k = step - saved
        steps = "1 step" if k == 1 else f"{k} steps"
        return f"{where}: the {steps} since its checkpoint at step {saved} {'is' if k == 1 else 'are'} lost"


def _out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocator's "out of memory" (CUDA's, the CPU allocator's or Python's)."""
    if isinstance(exc, (MemoryError, getattr(torch, "OutOfMemoryError", ()))):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower())


def load_record(path: str, fp: str, settings: dict, act_label: str, seed: int) -> dict:
    """A finished run's record, checked to come from the same settings; clear errors otherwise."""
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        if not isinstance(record, dict) or not {"activation", "seed", "metrics", "curve"} <= set(record):
            raise ValueError("not a run record")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise StaleResults(f"{path}: cannot read this run record ({exc}); it is damaged or truncated. Delete it "
                           "to train that run again, or start over with --overwrite") from None
    if record["activation"] != act_label or record["seed"] != seed:
        raise StaleResults(f"{path} holds {record['activation']} seed {record['seed']}, not {act_label} seed "
                           f"{seed}; start over with --overwrite")
    if record.get("fingerprint") != fp:
        raise StaleResults(_mismatch(path, record.get("settings"), settings))
    return record


def prepare_folder(folder, *, resume: bool, overwrite: bool) -> None:
    """Refuse to mix with an earlier run's results; --overwrite clears them; leftover temporary files go."""
    if overwrite:
        folder.clear()
    elif not resume:
        found = folder.result_entries()
        if found:
            raise ValueError(f"--out {folder.path} already holds results of an earlier run ({', '.join(found)}). "
                             "Continue that run with --resume, start over with --overwrite (deletes them), "
                             "or choose another --out")
    folder.remove_leftover_tmp()


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 90:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 90 else f"{minutes / 60:.1f} h"


def run_all(exp, cfg, out_dir: str, *, resume: bool = False, overwrite: bool = False, quiet: bool = False,
            command: str = "") -> dict:
    """Train every (activation, seed) of ``cfg`` and write results, plots and report under ``out_dir``.

    A fresh run needs a folder without earlier results (``overwrite=True``
    deletes them first); ``resume=True`` continues the run in the folder,
    reusing finished runs and checkpoints only where their settings
    fingerprint matches ``cfg``'s.
    """

    info = setup_distributed("cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
                             else "cpu")
    device = resolve_device(cfg.device, info)
    autocast_context(cfg, device)  # --autocast bf16 on a CPU stops here, before the folder is touched
    acts = parse_activations(cfg.activations or exp.default_activations(cfg))
    cfg.activations = [a.label() for a in acts]  # the saved config names what actually ran
    folder = RunFolder(out_dir)
    if info.main:
        folder.lock(command)
    try:
        if info.main:
            prepare_folder(folder, resume=resume, overwrite=overwrite)
        barrier(info)
        return _run_locked(exp, cfg, acts, out_dir, info, device, resume=resume, quiet=quiet, command=command)
    finally:
        folder.unlock()


def _run_locked(exp, cfg, acts, out_dir, info, device, *, resume, quiet, command) -> dict:

    data = exp.load_data(cfg)
    for act in acts:
        exp.check_activation(cfg, act, data)  # fail before training anything
    budget(cfg, exp.train_examples(data))  # an impossible evaluation schedule, too
    train_data = on_device(data, device) if exp.data_on_device else data
    cfg_dict = config_to_dict(cfg)
    settings = result_settings(cfg)
    fp = fingerprint(settings)
    if info.main:
        atomic_write_json(os.path.join(out_dir, "config.json"),
                          {"experiment": exp.name, "config": cfg_dict, "fingerprint": fp, "data": data.summary(),
                           "command": command})
    log_path = os.path.join(out_dir, "metrics.jsonl")
    terminal = sys.stderr.isatty()
    runs, finished = [], []
    started = time.time()
    plan = [(act, seed) for act in acts for seed in range(cfg.seed_offset, cfg.seed_offset + cfg.seeds)]
    talk = not quiet and info.main
    if talk and len(plan) > 1:
        print(f"[{exp.name}] {len(acts)} activation(s) x {cfg.seeds} seed(s) = {len(plan)} runs", flush=True)
    trained = 0
    current, progress = None, {}  # the run being trained, and how far it got (for an interruption's message)
    try:
        for i, (act, seed) in enumerate(plan):
            slug = f"{run_slug(act.label())}-seed{seed}"
            done_path = os.path.join(out_dir, "runs", slug + ".json")
            if resume and os.path.exists(done_path):
                runs.append(load_record(done_path, fp, settings, act.label(), seed))
                finished.append(f"{act.label()} seed {seed}")
                continue
            t0 = time.time()
            current, progress = f"{act.label()} seed {seed}", {}
            try:
                record = train_run(exp, cfg, act, seed, train_data, device=device, info=info,
                                   ckpt_path=os.path.join(out_dir, "checkpoints", slug + ".pt"), log_path=log_path,
                                   resume=resume, show_progress=not quiet and terminal,
                                   show_lines=not quiet and not terminal, out_dir=out_dir, progress=progress)
            except Diverged as exc:
                # a result like any other (the summary counts it as diverged): the other runs still train, and
                # the command ends with an error naming it
                record = exc.record
            except Exception as exc:
                if not _out_of_memory(exc):
                    raise
                detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split("DefaultCPUAllocator: ")[-1]
                raise ValueError(f"{current} ran out of memory on {device} with --batch-size {cfg.batch_size} "
                                 f"({detail[:160]}); lower --batch-size (or the model's size or evaluation batch), "
                                 "then continue with --resume") from None
            current = None
            record["seconds"] = round(time.time() - t0, 3)
            if info.main:
                atomic_write_json(done_path, record)
                if not quiet:
                    shown = ", ".join(f"{k}={v:.4g}" if v is not None else f"{k}=diverged"
                                      for k, v in record["metrics"].items())
                    print(f"[{exp.name}] {act.label()} (C={record['width']}) seed {seed}: {shown}", flush=True)
            runs.append(record)
            finished.append(f"{act.label()} seed {seed}")
            trained += 1
            left = len(plan) - i - 1
            if talk and trained == 1 and left:
                print(f"[{exp.name}] that run took {_duration(record['seconds'])}; about "
                      f"{_duration(record['seconds'] * left)} for the {left} still to run", flush=True)
    except KeyboardInterrupt:
        raise Interrupted(finished, current, progress) from None
    results = {"experiment": exp.name, "config": cfg_dict, "fingerprint": fp, "data": data.summary(),
               "device": str(device), "precision": precision_description(cfg_dict, device),
               "world_size": info.world, "runs": runs,
               "summary": report.summarize(runs, exp.metrics),
               "wall_seconds": round(time.time() - started, 3)}
    if info.main:
        atomic_write_json(os.path.join(out_dir, "results.json"), results)
        report.write_report(exp, results, out_dir)
    barrier(info)
    return results


def on_device(data, device):
    """A shallow copy of ``data`` whose training tensors live on ``device`` (for ``data_on_device``)."""
    moved = copy.copy(data)
    moved.x_train, moved.y_train = data.x_train.to(device), data.y_train.to(device)
    return moved


def clean(obj):
    """Non-finite floats -> None (a diverged run), so results stay strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    return obj


def run_slug(label: str) -> str:
    """An activation label as a file name (``colu:S=4`` -> ``colu-S4``), as run folders name their files."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in label.replace("=", "").replace(":", "-"))


def checkpoint_path(directory: str, act_label: str, seed: int) -> str:
    """Where a run folder keeps the checkpoint of one activation and seed: ``DIR/checkpoints/<slug>-seed<seed>.pt``."""
    return os.path.join(directory, "checkpoints", f"{run_slug(act_label)}-seed{seed}.pt")


def _saved_settings(path: str):
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return state.get("settings") if isinstance(state, dict) else None
    except Exception:
        return None  # load_checkpoint reports the damage


def load_final(exp, cfg, act, data, path: str, seed: int):
    """The trained model of ``act`` and ``seed`` in ``path`` (CPU, eval mode) and its final metrics; refuses
    unfinished runs and checkpoints of another run or other settings."""
    if not os.path.exists(path):
        directory = os.path.dirname(path)
        have = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
        raise ValueError(f"no checkpoint {path} for {act.label()!r}; that directory has "
                         f"{', '.join(have) if have else 'no checkpoints'}. Train it with colu run "
                         f"--activations {act.label()} --seeds/--seed-offset covering the pair")
    settings = result_settings(cfg)
    # the data folder may have moved since training (--data is one of the options --from lets through)
    saved = _saved_settings(path)
    if saved is not None and "data" in saved:
        settings["data"] = saved["data"]
    state = load_checkpoint(path, fingerprint(settings), settings, act.label(), seed)
    if int(state["step"]) != int(state["total"]):
        raise ValueError(f"{path}: checkpoint at step {state['step']} of {state['total']}; finish that run with "
                         "colu run --resume before aligning it")
    model, width = exp.build_model(cfg, act, data)
    model.load_state_dict(state["model"])
    model.eval()
    return model, width, clean(exp.final_metrics(list(state["curve"]), cfg))
