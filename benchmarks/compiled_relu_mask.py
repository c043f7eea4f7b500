"""Why compiled ReLU can be slower than eager ReLU on a CPU: the mask Inductor saves for the backward.

Usage: OMP_NUM_THREADS=1 python benchmarks/compiled_relu_mask.py [--shape 32x32x32x32] [--repeats 20]

Times, interleaved, medians: eager ReLU forward+backward; the same compiled; a compiled function returning
``relu(x)`` and ``x <= 0`` (the forward graph Inductor builds for training, run without autograd); and a
compiled ``relu(x)`` alone. Where the vectorised store of a ``bool`` tensor is slow, the third row carries the
whole difference (see docs/performance.md, "Under torch.compile").
"""

import argparse
import statistics
import time

import torch


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="32x32x32x32")
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    shape = tuple(int(v) for v in args.shape.split("x"))
    x = torch.randn(shape)
    g = torch.randn(shape)
    relu = torch.compile(torch.relu, dynamic=False)
    relu_and_mask = torch.compile(lambda t: (torch.relu(t), t <= 0), dynamic=False)

    def train(fn):
        def run():
            t = x.detach().requires_grad_(True)
            fn(t).backward(g)
        return run

    def no_grad(fn):
        def run():
            with torch.no_grad():
                fn(x)
        return run

    cases = {"eager relu fwd+bwd": train(torch.relu), "compiled relu fwd+bwd": train(relu),
             "compiled relu and bool mask, no grad": no_grad(relu_and_mask), "compiled relu, no grad": no_grad(relu)}
    for fn in cases.values():
        fn()
        fn()
    times = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, fn in cases.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} thread(s), shape {args.shape}, "
          f"medians of {args.repeats}")
    for name, ts in times.items():
        print(f"{name:40s} {statistics.median(ts) * 1e3:8.3f} ms")


if __name__ == "__main__":
    main()
