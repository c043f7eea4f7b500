"""In-process A/B of CPU kernel builds on a float32 tensor, (4096, 1024) unless --shape says otherwise.

Usage: python benchmarks/kernel_ab.py OLD.c NEW.c [--shape 4096x1024] [--cone-dim 4] [--kind colu]
       [--scaling hard] [--backward] [--repeats 200]

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
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from colu.tools import bench
from colu.ops import cpu
from colu.spec import ConeSpec


def build(source: Path, out_dir: Path) -> ctypes.CDLL:
    target = out_dir / (source.stem + ".so")
    subprocess.run([cpu.compiler(), *cpu.FLAGS, str(source.resolve()), "-o", str(target), "-lm"], check=True)
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


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sources", nargs="+", type=Path)
    p.add_argument("--shape", type=shape, default=(4096, 1024), help="NxC or NxCxHxW (default: 4096x1024)")
    p.add_argument("--cone-dim", type=int, default=4)
    p.add_argument("--kind", choices=["colu", "rcolu"], default="colu")
    p.add_argument("--scaling", choices=["hard", "soft", "firm"], default="hard")
    p.add_argument("--layout", choices=["grouped", "axes_first"], default="grouped")
    p.add_argument("--axis-activation", choices=["identity", "relu", "silu"], default="identity")
    p.add_argument("--backward", action="store_true")
    p.add_argument("--repeats", type=int, default=200)
    args = p.parse_args()
    for src in args.sources:
        if not src.is_file():
            p.error(f"no kernel source at {src} (give cpu_kernel.c files, e.g. from git show REV:src/colu/ops/cpu_kernel.c)")
    bench._keep_freed_buffers()
    N, C = args.shape[:2]
    inner = args.shape[2] * args.shape[3] if len(args.shape) == 4 else 1
    x, g = torch.randn(args.shape), torch.randn(args.shape)
    spec = ConeSpec.resolve(C, args.cone_dim, None, kind=args.kind, layout=args.layout)
    cfg = cpu.config(spec, args.scaling, 1e-7, args.axis_activation)
    block = (ctypes.c_int64 * 10)(int(args.backward), 0, x.data_ptr(), g.data_ptr(), 0, N, C, inner,
                                  ctypes.addressof(cfg), torch.get_num_threads())

    def kernel(lib):
        def run():
            y = torch.empty_like(x)
            block[4] = y.data_ptr()
            lib.colu_run(ctypes.addressof(block))
        return run

    with tempfile.TemporaryDirectory() as tmp:
        cases = {"relu": (lambda: torch.ops.aten.threshold_backward(g, x, 0)) if args.backward else (lambda: torch.relu(x))}
        for i, src in enumerate(args.sources):
            out_dir = Path(tmp) / str(i)
            out_dir.mkdir()
            cases[f"{chr(65 + i)}:{src.name}"] = kernel(build(src, out_dir))
        for fn in cases.values():
            fn()
        times = {name: [] for name in cases}
        for _ in range(args.repeats):
            for name, fn in cases.items():
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
    fastest = min(times["relu"])
    fast = [i for i, t in enumerate(times["relu"]) if t <= 1.5 * fastest]
    slow = [i for i, t in enumerate(times["relu"]) if t > 1.5 * fastest]
    for label, idx in (("ReLU fast", fast), ("ReLU slow", slow)):
        if len(idx) < 10:
            continue
        base = statistics.median(times["relu"][i] for i in idx)
        cols = "  ".join(f"{n} x{statistics.median(times[n][i] for i in idx) / base:.3f}" for n in cases if n != "relu")
        print(f"{label} ({len(idx)} reps, ReLU {base * 1e3:.4f} ms): {cols}")


if __name__ == "__main__":
    main()
