"""``colu bench``: time CoLU/RCoLU against ReLU/SiLU/GELU in one process.

All activations of a shape are timed interleaved (one repeat of each in turn,
in a freshly shuffled order each time), after a warm-up, and the median of the
repeats is reported, so that drifting clocks and background load hit every
row alike and no row always runs right after the same neighbour. CPU times use
``time.perf_counter``; CUDA times use CUDA events. Ratios are within one run.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.metadata
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

import colu
from colu.files import atomic_write_json
from colu.ops.dispatch import BACKENDS, select
from colu.spec import AXIS_ACTIVATIONS, LAYOUTS, SCALINGS

CPU_SHAPES = "4096x1024,64x512"
# 1 GiB in float32: (4096, 1024) fits in the 50 MB L2 of recent GPUs and would time the cache, not memory
GPU_LARGE = "32768x8192"
CONE_DIMS, REPEATS, WARMUP = "4,8,16", 30, 5
# --quick: a tiny shape and few repeats; options given explicitly still win
QUICK = dict(shapes="64x48", cone_dims="4", repeats=3, warmup=1)
# the MLP of the model rows: its hidden width must be a multiple of the cone dimension it uses
MODEL_WIDTH, QUICK_MODEL_WIDTH = 2048, 64


class UsageError(ValueError):
    """A bad option value; main() prints it as one line and exits with status 2."""


def _parse(argv):
    p = argparse.ArgumentParser(prog="colu bench", description=__doc__.splitlines()[0])
    p.add_argument(
        "--shapes",
        default=None,
        help=f"comma-separated NxC shapes (default: {CPU_SHAPES} on CPU; on CUDA also {GPU_LARGE}, "
        "larger than a GPU's L2 cache, so that it measures memory bandwidth)",
    )
    p.add_argument("--cone-dims", default=None,
                   help=f"comma-separated cone dimensions S >= 2; a shape whose channel count S does not divide "
                   f"skips that S (default: {CONE_DIMS})")
    p.add_argument("--scalings", default="hard,soft",
                   help=f"comma-separated scalings, of {', '.join(SCALINGS)} (default: %(default)s)")
    p.add_argument("--layouts", default="grouped",
                   help=f"comma-separated CoLU layouts, of {', '.join(LAYOUTS)} (default: %(default)s; "
                   "axes_first is the JAX package's convention)")
    p.add_argument("--axis-activations", default="identity",
                   help=f"comma-separated axis activations, of {', '.join(AXIS_ACTIVATIONS)} "
                   "(default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "float16", "bfloat16"],
                   help="dtype of the timed tensors and the MLP (default: %(default)s)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device to time on, e.g. cpu, cuda, cuda:1 (default: %(default)s)")
    p.add_argument("--backend", default="auto",
                   help=f"CoLU backend to time, one of {', '.join(BACKENDS)} (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=None, help=f"timed repeats per row (default: {REPEATS})")
    p.add_argument("--warmup", type=int, default=None, help=f"untimed warm-up calls per row (default: {WARMUP})")
    p.add_argument("--no-model", action="store_true", help="skip the MLP training-step rows")
    p.add_argument("--models", action="store_true",
                   help="add training-step rows (forward, backward, Adam step) of the paper's models: ResNet-56 "
                   "at batch 128 in NCHW and channels_last, the Table 7 GPT at batch 64 and a small diffusers "
                   "UNet2DModel (if diffusers is installed), CoLU S=4 against ReLU and, for the UNet, soft CoLU "
                   "against SiLU; needs colu[experiments]")
    p.add_argument("--compile", action="store_true",
                   help="instead of the tensor and MLP rows, time forward+backward of two blocks under "
                   "torch.compile: an MLP 512-1024-1024-10 at batch 256 and two 3x3 convolutions 16-32-32 with "
                   "batch norm on 32x16x32x32 (CoLU over dim 1), CoLU S=4 against ReLU and soft CoLU against "
                   "SiLU, each also with the fusible backend, the eager baseline beside; with --models the "
                   "training steps are compiled too")
    p.add_argument("--quick", action="store_true",
                   help="a tiny shape and few repeats, for tests (options given explicitly still apply)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    args = p.parse_args(argv)
    defaults = QUICK if args.quick else dict(shapes=None, cone_dims=CONE_DIMS, repeats=REPEATS, warmup=WARMUP)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.shapes is None:
        args.shapes = CPU_SHAPES + ("," + GPU_LARGE if args.device.startswith("cuda") else "")
    return args


def _comma_list(text, option, parse_one, example):
    """``parse_one`` of each comma-separated item of ``text``; at least one item."""
    items = [parse_one(item) for item in text.split(",") if item]
    if not items:
        raise UsageError(f"{option}: {text!r} names nothing; give e.g. {example}")
    return items


def _choices(text, option, allowed, example):
    """The comma-separated names of ``text``, each one of ``allowed``; at least one."""
    def one(name):
        if name not in allowed:
            raise UsageError(f"{option}: unknown value {name!r}; expected {', '.join(allowed)}")
        return name

    return _comma_list(text, option, one, example)


def _parse_shape(item):
    try:
        shape = tuple(int(v) for v in item.lower().split("x"))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise UsageError(f"--shapes: {item!r} is not a shape; give positive sizes like 4096x1024,64x512 "
                         "(the last size is the channel count)")
    return shape


def _parse_cone_dim(item):
    try:
        S = int(item)
    except ValueError:
        raise UsageError(f"--cone-dims: {item!r} is not an integer; give cone dimensions S >= 2, e.g. 4,8,16") from None
    if S < 2:
        raise UsageError(f"--cone-dims: S={S} is out of range; a cone needs S >= 2 channels "
                         "(its axis and at least one more), e.g. 4,8,16")
    return S


def _check_options(args):
    """Turn the text options into lists and reject what cannot run, before any timing starts.

    Returns the shapes and the device; sets ``args.cone_dims``/``args.scalings`` to lists.
    """
    shapes = _comma_list(args.shapes, "--shapes", _parse_shape, "4096x1024,64x512")
    args.cone_dims = _comma_list(args.cone_dims, "--cone-dims", _parse_cone_dim, "4,8,16")
    args.scalings = _choices(args.scalings, "--scalings", SCALINGS, "hard,soft")
    args.layouts = _choices(args.layouts, "--layouts", LAYOUTS, "grouped,axes_first")
    args.axis_activations = _choices(args.axis_activations, "--axis-activations", AXIS_ACTIVATIONS, "identity,relu")
    if args.repeats < 1 or args.warmup < 0:
        raise UsageError(f"--repeats must be >= 1 and --warmup >= 0 (got {args.repeats} and {args.warmup})")
    if args.backend not in BACKENDS:
        raise UsageError(f"--backend: unknown backend {args.backend!r}; expected one of {', '.join(BACKENDS)}")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise UsageError(f"--device: {args.device!r} is not a torch device; give e.g. cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: CUDA is not available here; use --device cpu")
    # ask the dispatcher itself whether the backend runs here (triton installed, a CUDA tensor, the C kernel
    # built, COLU_BACKEND valid), so that its reason is shown now rather than as a traceback mid-run
    try:
        select(torch.empty(0, device=device, dtype=getattr(torch, args.dtype)), args.backend)
    except (RuntimeError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"--backend {args.backend} cannot run on {args.device}: {reason}") from None
    return shapes, device


class _Timer:
    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3


def _saved_bytes(fn, x):
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return total


def _interleaved(cases, timer, repeats, warmup):
    """cases: {name: callable}; returns {name: median ms}."""
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in cases}
    # a fixed order let a row inherit its predecessor's state (caches, idle worker threads): on a 2-core
    # CPU the row after GELU measured up to 10% slower than the same op elsewhere in the order
    order = list(cases.items())
    rng = random.Random(0)
    for _ in range(repeats):
        rng.shuffle(order)
        for name, fn in order:
            times[name].append(timer(fn))
    return {name: statistics.median(v) for name, v in times.items()}


def _split_cone_dims(channels, cone_dims):
    """The cone dimensions that divide ``channels``, and the reasons the others are left out."""
    fitting = [S for S in cone_dims if channels % S == 0]
    reasons = {S: f"{channels} channels are not a multiple of S={S}" for S in cone_dims if channels % S}
    return fitting, reasons


BASELINES = {"relu": torch.relu, "silu": F.silu, "gelu": F.gelu}


def _activations(S_list, args):
    """name -> callable: the baselines, then CoLU per S, scaling, layout and axis activation and RCoLU per S,
    scaling and axis activation (RCoLU has no layout). Names carry the layout and the axis activation only
    where they are not the defaults, so the default rows keep their names."""
    acts = dict(BASELINES)
    for S in S_list:
        for sc in args.scalings:
            for act in args.axis_activations:
                suffix = "" if act == "identity" else f" {act}"
                for layout in args.layouts:
                    name = f"colu S={S} {sc}" + ("" if layout == "grouped" else f" {layout}") + suffix
                    acts[name] = lambda t, S=S, sc=sc, layout=layout, act=act: colu.colu(
                        t, S, scaling=sc, layout=layout, axis_activation=act, backend=args.backend)
                acts[f"rcolu S={S} {sc}{suffix}"] = lambda t, S=S, sc=sc, act=act: colu.rcolu(
                    t, S, scaling=sc, axis_activation=act, backend=args.backend)
    return acts


def _dropped(where, reasons, args):
    """JSON records of the rows left out at ``where``: one per cone dimension, naming its rows and why."""
    return [
        dict(where=where, cone_dim=S, reason=reason,
             activations=[n for n in _activations([S], args) if n not in BASELINES])
        for S, reason in reasons.items()
    ]


def _shape_rows(shape, args, device, dtype, timer, dropped):
    """Rows of one shape; appends to ``dropped`` the cone dimensions that do not fit its channel count."""
    x = torch.randn(shape, device=device, dtype=dtype)
    xg = x.clone().requires_grad_(True)
    grad = torch.randn_like(x)
    fitting, reasons = _split_cone_dims(shape[-1], args.cone_dims)
    dropped += _dropped("shape " + "x".join(map(str, shape)), reasons, args)
    acts = _activations(fitting, args)
    fwd = {n: (lambda f=f: f(x)) for n, f in acts.items()}

    def fb(f):
        def run():
            xg.grad = None
            f(xg).backward(grad)

        return run

    t_f = _interleaved(fwd, timer, args.repeats, args.warmup)
    t_fb = _interleaved({n: fb(f) for n, f in acts.items()}, timer, args.repeats, args.warmup)
    nbytes = x.numel() * x.element_size()
    rows = []
    for n in acts:
        rows.append(
            dict(
                shape=list(shape),
                activation=n,
                fwd_ms=t_f[n],
                fwdbwd_ms=t_fb[n],
                fwd_vs_relu=t_f[n] / t_f["relu"],
                fwdbwd_vs_relu=t_fb[n] / t_fb["relu"],
                fwd_vs_silu=t_f[n] / t_f["silu"],
                fwdbwd_vs_silu=t_fb[n] / t_fb["silu"],
                # forward moves x in + y out; forward+backward adds x, grad in and grad_in out
                fwd_gbs=2 * nbytes / t_f[n] / 1e6,
                fwdbwd_gbs=5 * nbytes / t_fb[n] / 1e6,
                saved_bytes=_saved_bytes(acts[n], xg),
            )
        )
    return rows


class _Backend:
    """``--backend`` for modules, which take no backend argument: through ``COLU_BACKEND`` while timing."""

    def __init__(self, backend):
        self.backend, self.saved = backend, None

    def __enter__(self):
        self.saved = os.environ.get("COLU_BACKEND")
        if self.backend != "auto":
            os.environ["COLU_BACKEND"] = self.backend

    def __exit__(self, *exc):
        if self.saved is None:
            os.environ.pop("COLU_BACKEND", None)
        else:
            os.environ["COLU_BACKEND"] = self.saved


def _train_step(model, loss_fn, optimizer="sgd", compiled=False):
    """One optimiser step of ``model`` on the fixed batch that ``loss_fn(model)`` evaluates; with ``compiled``,
    the model runs under ``torch.compile`` (the optimiser does not)."""
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=1e-4) if optimizer == "adam" else torch.optim.SGD(params, lr=1e-3)
    run = torch.compile(model, dynamic=False) if compiled else model

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(run).backward()
        opt.step()

    return step


def _time_steps(model_name, cases, args, timer, baseline="relu"):
    """Rows of interleaved training steps ``cases`` (name -> step), each against ``cases[baseline]``."""
    with _Backend(args.backend):
        t = _interleaved(cases, timer, max(3, args.repeats // 3), max(1, args.warmup))
    return [dict(model=model_name, activation=n, step_ms=v, baseline=baseline, ratio=v / t[baseline])
            for n, v in t.items()]


def _model_rows(args, device, dtype, timer, dropped=None):
    """The MLP train-step rows, with the first cone dimension that divides the MLP's width.

    If none divides it, returns no rows and appends the reason to ``dropped``.
    """
    batch = 64 if args.quick else 1024
    width = QUICK_MODEL_WIDTH if args.quick else MODEL_WIDTH
    model_name = f"MLP 784-{width}-{width}-10 batch {batch} train step"
    fitting, reasons = _split_cone_dims(width, args.cone_dims)
    if not fitting:
        if dropped is not None:
            listed = ",".join(map(str, reasons))
            dropped.append(dict(where=model_name, cone_dim=None, activations=["relu", f"colu S={listed} hard"],
                                reason=f"its width {width} is not a multiple of any of S={listed}"))
        return []
    x = torch.randn(batch, 784, device=device, dtype=dtype)
    target = torch.randint(0, 10, (batch,), device=device)

    def mlp(act):
        torch.manual_seed(0)
        m = torch.nn.Sequential(
            torch.nn.Linear(784, width), act, torch.nn.Linear(width, width), act, torch.nn.Linear(width, 10)
        ).to(device=device, dtype=dtype)
        return _train_step(m, lambda m: F.cross_entropy(m(x), target))

    S = fitting[0]
    return _time_steps(model_name, {"relu": mlp(torch.nn.ReLU()), f"colu S={S} hard": mlp(colu.CoLU(cone_dim=S))},
                       args, timer)


# the blocks of --compile: (name, build(act), input shape, dim of the activation's channels)
COMPILE_BLOCKS = dict(
    paper=dict(mlp=(512, 1024, 256), conv=(16, 32, (32, 16, 32, 32))),
    quick=dict(mlp=(16, 32, 8), conv=(4, 8, (2, 4, 8, 8))),
)


def _compiled_block_rows(args, device, dtype, timer):
    """Forward+backward of an MLP block and a convolution block under ``torch.compile``, per activation: the
    baseline eager and compiled, CoLU compiled as dispatch chooses (``backend="auto"``: the kernels as custom
    ops) and with the fusible backend (:mod:`colu.ops.fusible`, which Inductor fuses with its neighbours)."""
    S = MODEL_CONE_DIM
    size = COMPILE_BLOCKS["quick" if args.quick else "paper"]
    n_in, width, batch = size["mlp"]
    c_in, c_mid, conv_shape = size["conv"]

    class Cone(torch.nn.Module):
        def __init__(self, scaling, backend, dim):
            super().__init__()
            self.scaling, self.backend, self.dim = scaling, backend, dim

        def forward(self, x):
            return colu.colu(x, S, scaling=self.scaling, dim=self.dim, backend=self.backend)

    blocks = {
        f"MLP {n_in}-{width}-{width}-10 batch {batch} fwd+bwd": (
            lambda act: torch.nn.Sequential(torch.nn.Linear(n_in, width), act(), torch.nn.Linear(width, width), act(),
                                            torch.nn.Linear(width, 10)),
            (batch, n_in), -1),
        f"Conv {c_in}-{c_mid}-{c_mid} + BatchNorm {'x'.join(map(str, conv_shape))} fwd+bwd": (
            lambda act: torch.nn.Sequential(torch.nn.Conv2d(c_in, c_mid, 3, padding=1), torch.nn.BatchNorm2d(c_mid), act(),
                                            torch.nn.Conv2d(c_mid, c_mid, 3, padding=1), torch.nn.BatchNorm2d(c_mid), act()),
            conv_shape, 1),
    }
    rows = []
    for name, (build, shape, dim) in blocks.items():
        x = torch.randn(shape, device=device, dtype=dtype)

        def step(act, compiled=True):
            torch.manual_seed(0)
            model = build(act).to(device=device, dtype=dtype)
            run = torch.compile(model, dynamic=False) if compiled else model
            return lambda: run(x).sum().backward()

        groups = (("relu", "hard", torch.nn.ReLU), ("silu", "soft", torch.nn.SiLU))
        for base, scaling, base_act in groups[:1] if args.quick else groups:  # --quick: compile half as much
            cases = {
                f"{base} (eager)": step(base_act, compiled=False),
                base: step(base_act),
                f"colu S={S} {scaling}": step(lambda: Cone(scaling, args.backend, dim)),
                f"colu S={S} {scaling} fusible": step(lambda: Cone(scaling, "fusible", dim)),
            }
            rows += _time_steps(f"{name}, compiled", cases, args, timer, baseline=base)
            # the models share their forward's code; dynamo keeps at most 8 compilations of one and runs the
            # rest eagerly, so each group starts afresh
            torch._dynamo.reset()
    return rows


MODEL_CONE_DIM = 4  # the paper's S for ResNet-56 and the GPT MLP
MODEL_GROUP = "colu.bench_models"  # entry points: function(quick, device, dtype) -> list of ModelRow


@dataclass(frozen=True)
class ModelRow:
    """A network whose training step ``colu bench --models`` times, ReLU against CoLU.

    Packages add rows through the ``colu.bench_models`` entry-point group
    (the experiment suite adds ResNet-56 and the Table 7 GPT), so the
    library does not import the networks themselves.

    Args:
        name: the row's title, sizes included.
        build: ``build(act)`` returns the model, where ``act`` is ``None`` (its
            ReLU) or a function of the channel count returning the activation.
        loss: ``loss(model)`` returns the scalar loss of one step on fixed inputs.
        dim: the channel dimension of the activation's inputs (1 for NCHW
            feature maps, -1 for tokens).
        memory_format: the memory format of the model and its inputs.
    """

    name: str
    build: Callable
    loss: Callable
    dim: int = -1
    memory_format: torch.memory_format = torch.contiguous_format


def _paper_model_rows(args, device, dtype, timer, dropped):
    """Training steps of the networks of the ``colu.bench_models`` entry points and a small diffusers UNet."""
    S, rows = MODEL_CONE_DIM, []
    hard = f"colu S={S} hard"
    entries = list(importlib.metadata.entry_points(group=MODEL_GROUP))
    if not entries:
        dropped.append(dict(where="paper models", cone_dim=S, activations=["relu", hard],
                            reason="no package provides them (colu.bench_models entry points); "
                                   "pip install 'colu[experiments]'"))
    for entry in entries:
        for row in entry.load()(args.quick, device, dtype):
            def step(act, row=row):
                torch.manual_seed(0)
                model = row.build(act).to(device=device, dtype=dtype, memory_format=row.memory_format)
                return _train_step(model, row.loss, "adam", args.compile)

            conic = step(lambda channels, row=row: colu.CoLU(cone_dim=S, dim=row.dim))
            rows += _time_steps(row.name, {"relu": step(None), hard: conic}, args, timer)
            if args.compile:
                torch._dynamo.reset()  # as in _compiled_block_rows
    rows += _unet_rows(QUICK_UNET if args.quick else PAPER_UNET, S, args, device, dtype, timer, dropped)
    return rows


# the small diffusers UNet of --models, and a tiny one for --quick
PAPER_UNET = dict(unet_channels=(32, 64), unet_batch=16, image=32)
QUICK_UNET = dict(unet_channels=(8, 16), unet_batch=2, image=16)


def _unet_rows(size, S, args, device, dtype, timer, dropped):
    """A small ``UNet2DModel`` noise-prediction step: CoLU vs ReLU, soft CoLU vs SiLU (all sites via convert)."""
    channels, n, px = size["unet_channels"], size["unet_batch"], size["image"]
    name = f"UNet2DModel {'/'.join(map(str, channels))} batch {n} {px}x{px} train step"
    try:
        from diffusers import UNet2DModel
    except ImportError as err:
        dropped.append(dict(where=name, cone_dim=S, activations=["relu", "silu", f"colu S={S} hard", f"colu S={S} soft"],
                            reason=f"diffusers is not installed ({err}); pip install 'colu[experiments]'"))
        return []
    x = torch.randn(n, 3, px, px, device=device, dtype=dtype)
    t = torch.randint(0, 1000, (n,), device=device)
    noise = torch.randn_like(x)

    def unet(act_fn, scaling=None):
        torch.manual_seed(0)
        m = UNet2DModel(sample_size=px, in_channels=3, out_channels=3, block_out_channels=channels,
                        layers_per_block=1, norm_num_groups=8, act_fn=act_fn,
                        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                        up_block_types=("AttnUpBlock2D", "UpBlock2D")).to(device=device, dtype=dtype)
        if scaling is not None:
            colu.convert(m, cone_dim=S, scaling=scaling, example_input=(x, t), on_mismatch="raise")
        return _train_step(m, lambda m: F.mse_loss(m(x, t).sample, noise), "adam", args.compile)

    rows = _time_steps(name, {"relu": unet("relu"), f"colu S={S} hard": unet("relu", "hard")}, args, timer)
    if args.compile:
        torch._dynamo.reset()  # as in _compiled_block_rows
    rows += _time_steps(name, {"silu": unet("silu"), f"colu S={S} soft": unet("silu", "soft")}, args, timer,
                        baseline="silu")
    return rows


def _copy_gbs(device, dtype, timer):
    x = torch.empty(1 << 26, device=device, dtype=torch.uint8)
    y = torch.empty_like(x)
    t = _interleaved({"copy": lambda: y.copy_(x)}, timer, 20, 3)["copy"]
    return 2 * x.numel() / t / 1e6


def _print_table(result):
    print(f"# colu bench on {result['machine']['device']} ({result['machine']['processor']}), "
          f"{result['machine']['threads']} threads, {result['dtype']}, torch {result['machine']['torch']}")
    if result.get("copy_gbs"):
        print(f"# device copy bandwidth {result['copy_gbs']:.0f} GB/s")
    if result.get("malloc_keeps_freed_buffers"):
        print("# glibc malloc keeps freed buffers (mallopt), so no row pays for fresh page faults")
    if result["rows"]:
        wide = max([20] + [len(r["activation"]) for r in result["rows"]])
        hdr = f"{'shape':>10} {'activation':<{wide}} {'fwd ms':>8} {'f/ReLU':>6} {'f/SiLU':>6} {'f+b ms':>8} {'fb/ReLU':>7} {'fb/SiLU':>7} {'fwd GB/s':>8} {'f+b GB/s':>8} {'saved B':>10}"
        if result.get("copy_gbs"):
            hdr += f" {'f/copy':>6}"
        print(hdr)
        for r in result["rows"]:
            line = (f"{'x'.join(map(str, r['shape'])):>10} {r['activation']:<{wide}} {r['fwd_ms']:8.3f} {r['fwd_vs_relu']:6.2f} "
                    f"{r['fwd_vs_silu']:6.2f} {r['fwdbwd_ms']:8.3f} {r['fwdbwd_vs_relu']:7.2f} {r['fwdbwd_vs_silu']:7.2f} "
                    f"{r['fwd_gbs']:8.1f} {r['fwdbwd_gbs']:8.1f} {r['saved_bytes']:10d}")
            if result.get("copy_gbs"):
                line += f" {r['fwd_gbs'] / result['copy_gbs']:6.2f}"
            print(line)
    for r in result.get("model_rows", []):
        baseline = {"relu": "ReLU", "silu": "SiLU"}[r["baseline"]]
        if result.get("compiled"):
            baseline += " compiled"
        print(f"# {r['model']}: {r['activation']:<20} {r['step_ms']:8.2f} ms  x{r['ratio']:.3f} vs {baseline}")
    for d in result.get("dropped", []):
        print(f"# dropped {', '.join(d['activations'])} at {d['where']}: {d['reason']}")


def _keep_freed_buffers() -> bool:
    """Ask glibc to keep freed buffers in the heap instead of handing them back to the OS.

    By default glibc returns large freed blocks to the kernel at moments that
    depend on the order of earlier allocations, so from one row to the next
    an output tensor either reuses memory or page-faults all of it afresh:
    that alone moved single rows by 2x. Keeping the memory makes every
    activation run in the same steady state, as in a training loop.
    """
    if platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    # 32 MiB is glibc's largest mmap threshold on 64-bit; larger blocks are mmapped anyway
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))


def main(argv=None) -> int:
    args = _parse(argv)
    try:
        shapes, device = _check_options(args)
    except UsageError as err:
        print(f"colu bench: {err}", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype)
    timer = _Timer(device)
    kept = _keep_freed_buffers() if device.type == "cpu" else False
    result = dict(
        malloc_keeps_freed_buffers=kept,
        command="colu bench " + " ".join(argv or []),
        date=time.strftime("%Y-%m-%d %H:%M:%S"),
        dtype=args.dtype,
        machine=dict(
            device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            processor=platform.processor() or platform.machine(),
            threads=torch.get_num_threads(),
            torch=torch.__version__,
        ),
        copy_gbs=_copy_gbs(device, dtype, timer) if device.type == "cuda" else None,
        rows=[],
        dropped=[],
    )
    if args.compile:
        result["compiled"] = True
        result["model_rows"] = _compiled_block_rows(args, device, dtype, timer)
    else:
        for shape in shapes:
            result["rows"] += _shape_rows(shape, args, device, dtype, timer, result["dropped"])
    if not args.no_model and not args.compile:
        result["model_rows"] = _model_rows(args, device, dtype, timer, result["dropped"])
    if args.models:
        result["model_rows"] = result.get("model_rows", []) + _paper_model_rows(args, device, dtype, timer,
                                                                                result["dropped"])
    _print_table(result)
    if args.json:
        try:
            atomic_write_json(args.json, result, indent=2)
        except OSError as err:
            print(f"colu bench: cannot write --json {args.json}: {err.strerror or err}; "
                  "the table above has the results", file=sys.stderr)
            return 1
    return 0
