"""One training loop for every experiment: batching, checkpoints, resume, DDP, logging.

An experiment (see :mod:`colu.experiments.registry`) supplies the data, the
model, the training loss and the evaluation; this module owns everything that
must be identical across experiments for resume and multi-process runs to be
exact:

* data order: epoch ``e`` of seed ``s`` visits the training set in the order
  ``randperm(n)`` drawn from a generator seeded with ``(s, e)``, so the order is
  a pure function of the step and nothing about it needs saving;
* a global batch is split across processes by striding, and each process's
  loss is scaled so DDP's gradient *average* equals the gradient of the mean
  loss over the global batch;
* checkpoints hold only tensors and plain containers (model, optimizer, RNG
  state, step, curve) and are read back with ``weights_only=True``.
"""

from __future__ import annotations

import io
import json
import math
import os
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist


# ------------------------------------------------------------ atomic writes
def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never a partial one."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, allow_nan=False) + "\n")


def atomic_torch_save(path: str, obj) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def append_jsonl(path: str, record: dict) -> None:
    # one write() per line, so an interrupted run leaves whole lines behind
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


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


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1_000_003 * (seed + 1) + epoch)
    return torch.randperm(n, generator=gen)


def _progress(total, initial, desc, enabled):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)


def train_run(exp, cfg, act, seed: int, data, *, device, info: DistInfo, ckpt_path: str | None,
              log_path: str | None, resume: bool, show_progress: bool) -> dict:
    """Train one (activation, seed) and return its record: metrics, curve, width, extras."""
    torch.manual_seed(seed)  # same init on every process
    model, width = exp.build_model(cfg, act, data)
    model = model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = data.x_train.shape[0]
    batch = min(cfg.batch_size, n)
    steps_per_epoch = math.ceil(n / batch)
    total = cfg.steps if cfg.steps else cfg.epochs * steps_per_epoch
    eval_every = cfg.eval_every or steps_per_epoch
    curve, step = [], 0

    if resume and ckpt_path and os.path.exists(ckpt_path):
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng_cpu"])
        if device.type == "cuda" and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"], device)
        step, curve = int(state["step"]), list(state["curve"])

    def save_checkpoint():
        if info.main and ckpt_path:
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "rng_cpu": torch.get_rng_state(),
                     "step": step, "curve": curve, "total": total}
            if device.type == "cuda":
                state["rng_cuda"] = torch.cuda.get_rng_state(device)
            atomic_torch_save(ckpt_path, state)
        barrier(info)

    net = model
    if info.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if cfg.bf16 and device.type == "cuda"
                else nullcontext())
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    bar = _progress(total, step, f"{exp.name} {act.label()} seed {seed}", show_progress and info.main)
    order, order_epoch = None, -1
    model.train()
    while step < total:
        epoch, pos = divmod(step, steps_per_epoch)
        if epoch != order_epoch:
            order, order_epoch = epoch_order(seed, epoch, n).to(device), epoch
        idx = order[pos * batch:(pos + 1) * batch]
        local = idx[info.rank::info.world]
        with autocast:
            loss = exp.train_loss(net, x_train[local], y_train[local], cfg, global_batch=len(idx), world=info.world)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if bar is not None:
            bar.update(1)
        if step % eval_every == 0 or step == total:
            model.eval()
            with torch.no_grad():
                metrics = exp.evaluate(model, data, cfg, device)
            model.train()
            point = {"step": step, "epoch": step / steps_per_epoch, **metrics}
            curve.append(point)
            if info.main and log_path:
                append_jsonl(log_path, {"activation": act.label(), "seed": seed, **point})
            if bar is not None:
                bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items()})
        halt = cfg.halt_after is not None and step == cfg.halt_after and step < total
        if step % cfg.ckpt_every == 0 or step == total or halt:
            save_checkpoint()
        if halt:
            if bar is not None:
                bar.close()
            raise Halted(f"halted after step {step} of {total} (--halt-after); rerun with --resume to continue")
    if bar is not None:
        bar.close()
    record = {"activation": act.label(), "seed": seed, "width": width, "steps": total,
              "metrics": clean(exp.final_metrics(curve)), "curve": clean(curve)}
    if seed == cfg.seed_offset and hasattr(exp, "probe"):
        model.eval()
        with torch.no_grad():
            record["probe"] = exp.probe(model, data, cfg, device)
    return record


def run_all(exp, cfg, out_dir: str, *, resume: bool = False, quiet: bool = False) -> dict:
    """Train every (activation, seed) of ``cfg`` and write results, plots and report under ``out_dir``."""
    from . import report
    from .activations import parse_activations
    from .config import config_to_dict

    info = setup_distributed("cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
                             else "cpu")
    device = resolve_device(cfg.device, info)
    if cfg.bf16 and device.type != "cuda":
        raise ValueError("--bf16 is an autocast option for CUDA; this run is on CPU. Drop --bf16 or use a GPU")
    acts = parse_activations(cfg.activations or exp.default_activations(cfg))
    cfg.activations = [a.label() for a in acts]  # the saved config names what actually ran
    data = exp.load_data(cfg)
    os.makedirs(out_dir, exist_ok=True)
    cfg_dict = config_to_dict(cfg)
    if info.main:
        atomic_write_json(os.path.join(out_dir, "config.json"),
                          {"experiment": exp.name, "config": cfg_dict, "data": data.summary()})
    log_path = os.path.join(out_dir, "metrics.jsonl")
    show = not quiet and sys.stderr.isatty()
    runs = []
    started = time.time()
    for act in acts:
        exp.check_activation(cfg, act, data)  # fail before training anything
    for act in acts:
        for seed in range(cfg.seed_offset, cfg.seed_offset + cfg.seeds):
            slug = f"{_slug(act.label())}-seed{seed}"
            done_path = os.path.join(out_dir, "runs", slug + ".json")
            if resume and os.path.exists(done_path):
                with open(done_path, encoding="utf-8") as f:
                    runs.append(json.load(f))
                continue
            t0 = time.time()
            record = train_run(exp, cfg, act, seed, data, device=device, info=info,
                               ckpt_path=os.path.join(out_dir, "checkpoints", slug + ".pt"), log_path=log_path,
                               resume=resume, show_progress=show)
            record["seconds"] = round(time.time() - t0, 3)
            if info.main:
                atomic_write_json(done_path, record)
                if not quiet:
                    shown = ", ".join(f"{k}={v:.4g}" if v is not None else f"{k}=diverged"
                                      for k, v in record["metrics"].items())
                    print(f"[{exp.name}] {act.label()} (C={record['width']}) seed {seed}: {shown}", flush=True)
            runs.append(record)
    results = {"experiment": exp.name, "config": cfg_dict, "data": data.summary(),
               "device": str(device), "world_size": info.world, "runs": runs,
               "summary": report.summarize(runs, exp.metrics),
               "wall_seconds": round(time.time() - started, 3)}
    if info.main:
        atomic_write_json(os.path.join(out_dir, "results.json"), results)
        report.write_report(results, out_dir)
    barrier(info)
    return results


def clean(obj):
    """Non-finite floats -> None (a diverged run), so results stay strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    return obj


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in label.replace("=", "").replace(":", "-"))
