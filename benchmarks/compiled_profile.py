"""Where a compiled training step spends its time, ReLU against CoLU: torch.profiler's top entries.

Usage: OMP_NUM_THREADS=1 python benchmarks/compiled_profile.py [--model conv|resnet20] [--steps 5] [--code DIR]

``conv``: two 3x3 convolutions 16-32-32 with batch norm on 32x16x32x32 (the block of ``colu bench --compile``);
``resnet20``: the CIFAR ResNet-20 at batch 64 (needs colu[experiments]). The Inductor kernels of a compiled
graph show as "Call CompiledFxGraph" rows, CoLU's kernels as colu::cone_forward/cone_backward. With ``--code
DIR`` the code Inductor generated for each activation is written to DIR/<activation>.py, to read side by side.
"""

import argparse
import io
import logging
import pathlib

import torch
import torch.nn as nn
import torch.nn.functional as F

import colu


def build(model, act):
    if model == "resnet20":
        from colu_lab.experiments.resnet_cifar.model import resnet_cifar

        net = resnet_cifar(20, None if act is None else (lambda c: act()))
        x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
        return net, lambda m: F.cross_entropy(m(x), y)
    a = act or nn.ReLU
    net = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), a(), nn.Conv2d(32, 32, 3, padding=1),
                        nn.BatchNorm2d(32), a())
    x = torch.randn(32, 16, 32, 32)
    return net, lambda m: m(x).sum()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=["conv", "resnet20"], default="conv")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--code", type=pathlib.Path, help="write Inductor's generated code per activation here")
    args = p.parse_args()
    acts = {"relu": None, "colu": lambda: colu.CoLU(cone_dim=4, dim=1)}
    for name, act in acts.items():
        torch._dynamo.reset()
        torch.manual_seed(0)
        net, loss = build(args.model, act)
        compiled = torch.compile(net, dynamic=False)
        code = io.StringIO()
        if args.code:  # Inductor logs the code it writes under the output_code artifact
            torch._logging.set_logs(output_code=True)
            handler = logging.StreamHandler(code)
            logging.getLogger("torch._inductor").addHandler(handler)
        for _ in range(2):
            loss(compiled).backward()
        if args.code:
            torch._logging.set_logs()
            logging.getLogger("torch._inductor").removeHandler(handler)
            args.code.mkdir(parents=True, exist_ok=True)
            (args.code / f"{name}.py").write_text(code.getvalue(), encoding="utf-8")
        with torch.profiler.profile() as prof:
            for _ in range(args.steps):
                loss(compiled).backward()
        print(f"## {args.model}, {name}, compiled, {args.steps} steps, {torch.get_num_threads()} thread(s)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


if __name__ == "__main__":
    main()
