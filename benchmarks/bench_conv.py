"""CoLU on convolutional activations (cones over the channels of NCHW and channels_last tensors) against ReLU/SiLU.

Usage: python benchmarks/bench_conv.py [--repeats 30] [--threads N] [--backend cpu|closed_form]

For each shape (the three of the conv-speed table: (128, 16, 32, 32), (128, 64, 8, 8), (16, 128, 32, 32)),
memory format and CoLU configuration (S = 4 and 8, hard against ReLU, soft against SiLU), one process times
the baseline and CoLU in turn, interleaved, a fresh output per call as in a model, and prints the medians
and their ratios: forward, and forward+backward. The backward gets a dense upstream gradient in the input's
memory format, as a convolution's backward hands it on (and as `colu bench` does); a `.sum()` loss would
hand on one value expanded at stride 0, which ATen's element-wise backward reads in place and CoLU's kernel
first makes contiguous. Shared machines drift 10-30% between runs: compare ratios within one run, not times
across runs.
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import colu

SHAPES = ((128, 16, 32, 32), (128, 64, 8, 8), (16, 128, 32, 32))


def medians(fns, repeats):
    times = [[] for _ in fns]
    for fn in fns:  # warm up: kernel build, plan caches, allocator
        fn()
        fn()
    for _ in range(repeats):
        for slot, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            times[slot].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed calls of each function (default 30)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--backend", default="auto", choices=("auto", "cpu", "closed_form"),
                        help="the backend (default auto: colu's own choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# colu {colu.__version__}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), float32, "
          f"backend {args.backend}, medians of {args.repeats}")
    print(f"{'shape':>18} {'format':>13} {'activation':>14} {'fwd ms':>8} {'f/base':>7} {'f+b ms':>8} {'fb/base':>8}")
    for shape in SHAPES:
        for fmt in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(shape).contiguous(memory_format=fmt)
            xg = x.clone().requires_grad_()
            grad = torch.randn(shape).contiguous(memory_format=fmt)
            name = "NCHW" if fmt is torch.contiguous_format else "channels_last"
            for scaling, base_name, base in (("hard", "relu", F.relu), ("soft", "silu", F.silu)):
                for S in (4, 8):
                    def act(t, S=S, scaling=scaling):
                        return colu.colu(t, S, dim=1, scaling=scaling, backend=args.backend)

                    def fb(f):
                        def run():
                            xg.grad = None  # as colu bench: no accumulation into an earlier gradient
                            f(xg).backward(grad)
                        return run

                    b_f, c_f, b_fb, c_fb = medians([lambda: base(x), lambda: act(x), fb(base), fb(act)], args.repeats)
                    label = "x".join(map(str, shape))
                    if S == 4:
                        print(f"{label:>18} {name:>13} {base_name:>14} {b_f * 1e3:8.3f} {1:7.2f} {b_fb * 1e3:8.3f} "
                              f"{1:8.2f}")
                    print(f"{label:>18} {name:>13} {f'colu S={S} {scaling}':>14} {c_f * 1e3:8.3f} {c_f / b_f:7.2f} "
                          f"{c_fb * 1e3:8.3f} {c_fb / b_fb:8.2f}")


if __name__ == "__main__":
    main()
