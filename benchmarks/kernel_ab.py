"""In-process A/B of CPU kernel builds on a float32 tensor, (4096, 1024) unless --shape says otherwise.

Usage: python benchmarks/kernel_ab.py OLD.c NEW.c [--shape 4096x1024] [--cone-dim 4] [--kind colu]
       [--scaling hard] [--backward] [--repeats 200]
       python benchmarks/kernel_ab.py OLD.c NEW.c --grid [--repeats 60]

A 4-dimensional --shape (e.g. 128x16x32x32) is an NCHW activation with the cones over dim 1: the planes path.

Builds each kernel source with the package's flags, then times ATen's ReLU
(or its backward, threshold_backward) and every build in turn, one call each
per repetition, each call writing a freshly allocated output as a model's
would. A shared machine switches between a state where 16 MB tensors stay
in the shared L3 and one where they stream from memory, so medians are
reported separately for repetitions where ReLU took at most 1.5x its fastest
time and for the rest; ratios are to ReLU within the same repetitions.
"""

import argparse
import ctypes
import itertools
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from colu.tools import bench
from colu.ops import cpu
from colu.spec import ConeSpec


def build(source: Path, out_dir: Path, extra=()) -> ctypes.CDLL:
    target = out_dir / (source.stem + ".so")
    subprocess.run([cpu.compiler(), *cpu.FLAGS, *extra, str(source.resolve()), "-o", str(target), "-lm"], check=True)
    lib = ctypes.CDLL(str(target))
    lib.colu_run.argtypes, lib.colu_run.restype = [ctypes.c_void_p], None
    return lib


def shape(text: str) -> tuple:
    try:
        dims = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        dims = ()
    if len(dims) not in (2, 4):
        raise argparse.ArgumentTypeError(f"--shape must look like 4096x1024 or 128x16x32x32, got {text!r}")
    return dims


def time_config(libs, shape, S, kind, scaling, layout, act, backward, repeats):
    """Per-repetition times (s) of ReLU (its backward, threshold_backward, for ``backward``) and of each build in
    ``libs`` on one configuration, interleaved: {name: [seconds, ...]}."""
    N, C = shape[:2]
    inner = shape[2] * shape[3] if len(shape) == 4 else 1
    x, g = torch.randn(shape), torch.randn(shape)
    spec = (ConeSpec.resolve(C, S, None, share_axis=True, kind=kind) if layout == "shared"
            else ConeSpec.resolve(C, S, None, kind=kind, layout=layout))
    cfg = cpu.config(spec, scaling, 1e-7, act)
    block = (ctypes.c_int64 * 10)(int(backward), 0, x.data_ptr(), g.data_ptr(), 0, N, C, inner,
                                  ctypes.addressof(cfg), torch.get_num_threads())

    def kernel(lib):
        def run():
            y = torch.empty_like(x)
            block[4] = y.data_ptr()
            lib.colu_run(ctypes.addressof(block))
        return run

    cases = {"relu": (lambda: torch.ops.aten.threshold_backward(g, x, 0)) if backward else (lambda: torch.relu(x))}
    cases.update((name, kernel(lib)) for name, lib in libs.items())
    for fn in cases.values():
        fn()
    times = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sources", nargs="+", help="kernel sources, each PATH or PATH@FLAG[,FLAG...] to build it with "
                   "extra compiler flags (e.g. cpu_kernel.c@-DCOLU_NO_AVX512: the AVX2 blocks on an AVX-512 machine)")
    p.add_argument("--shape", type=shape, default=(4096, 1024), help="NxC or NxCxHxW (default: 4096x1024)")
    p.add_argument("--cone-dim", type=int, default=4)
    p.add_argument("--kind", choices=["colu", "rcolu"], default="colu")
    p.add_argument("--scaling", choices=["hard", "soft", "firm"], default="hard")
    p.add_argument("--layout", choices=["grouped", "axes_first", "shared"], default="grouped",
                   help="shared: one axis for all cones (C = 1 + G (S - 1))")
    p.add_argument("--axis-activation", choices=["identity", "relu", "silu"], default="identity")
    p.add_argument("--backward", action="store_true")
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--grid", action="store_true",
                   help="instead of one configuration, every combination of the shapes (4096, 1024) and (64, 512), "
                   "CoLU and RCoLU, S = 4, 8, 16, hard and soft, forward and backward (grouped, identity axis): one "
                   "line each, the median ratio to ReLU over all repetitions")
    args = p.parse_args()
    sources = []
    for text in args.sources:
        path, _, flags = text.partition("@")
        src = Path(path)
        if not src.is_file():
            p.error(f"no kernel source at {src} (give cpu_kernel.c files, e.g. from git show REV:src/colu/ops/cpu_kernel.c)")
        sources.append((src, [f for f in flags.split(",") if f]))
    bench._keep_freed_buffers()
    with tempfile.TemporaryDirectory() as tmp:
        libs = {}
        for i, (src, flags) in enumerate(sources):
            out_dir = Path(tmp) / str(i)
            out_dir.mkdir()
            libs[f"{chr(65 + i)}:{src.name}{'@' + ','.join(flags) if flags else ''}"] = build(src, out_dir, flags)
        if args.grid:
            print(f"# {torch.get_num_threads()} thread(s); per configuration, each build's median time over "
                  f"{args.repeats} repetitions / ReLU's (backward: threshold_backward), interleaved")
            for shp, kind, S, scaling, backward in itertools.product(
                [(4096, 1024), (64, 512)], ["colu", "rcolu"], [4, 8, 16], ["hard", "soft"], [False, True]
            ):
                times = time_config(libs, shp, S, kind, scaling, "grouped", "identity", backward, args.repeats)
                base = statistics.median(times["relu"])
                cols = "  ".join(f"{n} x{statistics.median(times[n]) / base:.3f}" for n in libs)
                print(f"{shp[0]}x{shp[1]} {kind} S={S} {scaling} {'bwd' if backward else 'fwd'}: {cols}", flush=True)
            return
        times = time_config(libs, args.shape, args.cone_dim, args.kind, args.scaling, args.layout,
                            args.axis_activation, args.backward, args.repeats)
    fastest = min(times["relu"])
    fast = [i for i, t in enumerate(times["relu"]) if t <= 1.5 * fastest]
    slow = [i for i, t in enumerate(times["relu"]) if t > 1.5 * fastest]
    for label, idx in (("ReLU fast", fast), ("ReLU slow", slow)):
        if len(idx) < 10:
            continue
        base = statistics.median(times["relu"][i] for i in idx)
        cols = "  ".join(f"{n} x{statistics.median(times[n][i] for i in idx) / base:.3f}" for n in times if n != "relu")
        print(f"{label} ({len(idx)} reps, ReLU {base * 1e3:.4f} ms): {cols}")


if __name__ == "__main__":
    main()
