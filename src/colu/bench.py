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
import json
import os
import platform
import random
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

import colu


CPU_SHAPES = "4096x1024,64x512"
# 1 GiB in float32: (4096, 1024) fits in the 50 MB L2 of recent GPUs and would time the cache, not memory
GPU_LARGE = "32768x8192"


def _parse(argv):
    p = argparse.ArgumentParser(prog="colu bench", description=__doc__.splitlines()[0])
    p.add_argument(
        "--shapes",
        default=None,
        help=f"comma-separated NxC shapes (default: {CPU_SHAPES} on CPU; on CUDA also {GPU_LARGE}, "
        "larger than a GPU's L2 cache, so that it measures memory bandwidth)",
    )
    p.add_argument("--cone-dims", default="4,8,16", help="comma-separated S values (default: %(default)s)")
    p.add_argument("--scalings", default="hard,soft", help="comma-separated scalings (default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "float16", "bfloat16"], help="dtype")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="device (default: %(default)s)")
    p.add_argument("--backend", default="auto", help="CoLU backend to time (auto, closed_form, cpu, triton)")
    p.add_argument("--repeats", type=int, default=30, help="timed repeats per row (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=5, help="untimed warm-up calls per row (default: %(default)s)")
    p.add_argument("--no-model", action="store_true", help="skip the MLP training-step rows")
    p.add_argument("--quick", action="store_true", help="tiny shapes and few repeats (for tests)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    args = p.parse_args(argv)
    if args.quick:
        args.shapes, args.cone_dims, args.repeats, args.warmup = "64x48", "4", 3, 1
    if args.shapes is None:
        args.shapes = CPU_SHAPES + ("," + GPU_LARGE if args.device.startswith("cuda") else "")
    return args


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


def _activations(S_list, scalings, backend):
    acts = {"relu": torch.relu, "silu": F.silu, "gelu": F.gelu}
    for S in S_list:
        for sc in scalings:
            acts[f"colu S={S} {sc}"] = lambda t, S=S, sc=sc: colu.colu(t, S, scaling=sc, backend=backend)
            acts[f"rcolu S={S} {sc}"] = lambda t, S=S, sc=sc: colu.rcolu(t, S, scaling=sc, backend=backend)
    return acts


def _shape_rows(shape, args, device, dtype, timer):
    x = torch.randn(shape, device=device, dtype=dtype)
    xg = x.clone().requires_grad_(True)
    grad = torch.randn_like(x)
    acts = _activations([S for S in args.cone_dims if shape[-1] % S == 0], args.scalings, args.backend)
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


def _model_rows(args, device, dtype, timer):
    batch = 64 if args.quick else 1024
    width = 64 if args.quick else 2048
    x = torch.randn(batch, 784, device=device, dtype=dtype)
    target = torch.randint(0, 10, (batch,), device=device)

    def mlp(act):
        torch.manual_seed(0)
        m = torch.nn.Sequential(
            torch.nn.Linear(784, width), act, torch.nn.Linear(width, width), act, torch.nn.Linear(width, 10)
        ).to(device=device, dtype=dtype)
        opt = torch.optim.SGD(m.parameters(), lr=1e-3)

        def step():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(m(x), target).backward()
            opt.step()

        return step

    S = args.cone_dims[0]
    cases = {"relu": mlp(torch.nn.ReLU()), f"colu S={S} hard": mlp(colu.CoLU(cone_dim=S))}
    # the module has no backend argument; --backend reaches it through COLU_BACKEND
    saved = os.environ.get("COLU_BACKEND")
    if args.backend != "auto":
        os.environ["COLU_BACKEND"] = args.backend
    try:
        t = _interleaved(cases, timer, max(3, args.repeats // 3), max(1, args.warmup))
    finally:
        if saved is None:
            os.environ.pop("COLU_BACKEND", None)
        else:
            os.environ["COLU_BACKEND"] = saved
    return [
        dict(model=f"MLP 784-{width}-{width}-10 batch {batch} train step", activation=n, step_ms=v, vs_relu=v / t["relu"])
        for n, v in t.items()
    ]


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
    hdr = f"{'shape':>10} {'activation':<20} {'fwd ms':>8} {'f/ReLU':>6} {'f/SiLU':>6} {'f+b ms':>8} {'fb/ReLU':>7} {'fb/SiLU':>7} {'fwd GB/s':>8} {'f+b GB/s':>8} {'saved B':>10}"
    if result.get("copy_gbs"):
        hdr += f" {'f/copy':>6}"
    print(hdr)
    for r in result["rows"]:
        line = (f"{'x'.join(map(str, r['shape'])):>10} {r['activation']:<20} {r['fwd_ms']:8.3f} {r['fwd_vs_relu']:6.2f} "
                f"{r['fwd_vs_silu']:6.2f} {r['fwdbwd_ms']:8.3f} {r['fwdbwd_vs_relu']:7.2f} {r['fwdbwd_vs_silu']:7.2f} "
                f"{r['fwd_gbs']:8.1f} {r['fwdbwd_gbs']:8.1f} {r['saved_bytes']:10d}")
        if result.get("copy_gbs"):
            line += f" {r['fwd_gbs'] / result['copy_gbs']:6.2f}"
        print(line)
    for r in result.get("model_rows", []):
        print(f"# {r['model']}: {r['activation']:<14} {r['step_ms']:8.2f} ms  x{r['vs_relu']:.3f} vs ReLU")


def _write_json(path, result):
    path = os.path.abspath(path)
    fd, tmp = tempfile.mkstemp(prefix=".colu-bench-", suffix=".json", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(result, f, indent=2)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
        shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes.split(",") if s]
        args.cone_dims = [int(v) for v in args.cone_dims.split(",") if v]
    except ValueError:
        print(f"colu bench: --shapes must look like 4096x1024,64x512 and --cone-dims like 4,8 "
              f"(got {args.shapes!r}, {args.cone_dims!r})")
        return 2
    args.scalings = [s for s in args.scalings.split(",") if s]
    for s in args.scalings:
        if s not in ("hard", "soft", "firm"):
            print(f"colu bench: unknown scaling {s!r}; expected hard, soft or firm")
            return 2
    device = torch.device(args.device)
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
    )
    for shape in shapes:
        result["rows"] += _shape_rows(shape, args, device, dtype, timer)
    if not args.no_model:
        result["model_rows"] = _model_rows(args, device, dtype, timer)
    _print_table(result)
    if args.json:
        _write_json(args.json, result)
    return 0
