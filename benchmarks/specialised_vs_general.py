"""Each family of specialised CPU loops against the general path it stands in for, in one process.

Usage: python benchmarks/specialised_vs_general.py [--families COLU_FLAT_S3_INSTANCES ...] [--repeats 100]

Builds the kernel twice with the package's flags: from the tree, and from a copy whose instance tables
(src/colu/ops/kernel_instances.h) for the named families are emptied, so that every configuration they took
falls through to its path's run-time loop. Then times ATen's ReLU (or threshold_backward) and both builds,
interleaved, on every configuration those families take, and prints each build's median time over ReLU's and
the general path's time over the specialised one. A family whose rows measure within a few percent of the
general path, in both directions and on two runs, costs code and build time for nothing.
"""

import argparse
import re
import shutil
import statistics
import tempfile
from pathlib import Path

import torch

from colu.ops import cpu
from colu.tools import bench
from kernel_ab import build, time_config

# (shape, S, kind, scaling, layout): configurations that the default families take on an AVX2 machine
CONFIGS = {
    "COLU_FLAT_S3_INSTANCES": [
        ((4096, 1023), 3, "colu", "hard", "grouped"), ((4096, 1023), 3, "colu", "soft", "grouped"),
        ((4096, 1023), 3, "rcolu", "hard", "grouped"), ((64, 510), 3, "colu", "hard", "grouped")],
    "COLU_SPLIT_INSTANCES": [
        ((4096, 1023), 3, "colu", "hard", "axes_first"), ((4096, 1023), 3, "colu", "soft", "axes_first"),
        ((64, 510), 3, "colu", "hard", "axes_first"), ((4096, 1023), 3, "colu", "hard", "shared"),
        ((4096, 1024), 4, "colu", "hard", "shared"), ((4096, 1024), 4, "colu", "soft", "shared"),
        ((4096, 1023), 8, "colu", "hard", "shared"), ((4096, 1021), 16, "colu", "hard", "shared"),
        ((64, 511), 4, "colu", "hard", "shared")],
    "COLU_AVX2_WIDE_INSTANCES": [
        ((4096, 1024), 32, "colu", "hard", "grouped"), ((4096, 1024), 32, "colu", "soft", "grouped"),
        ((4096, 1024), 32, "rcolu", "hard", "grouped"), ((64, 512), 32, "colu", "hard", "grouped")],
}


def general_source(tmp: Path, families) -> Path:
    """A copy of the kernel sources with the instance tables of ``families`` emptied."""
    out = tmp / "general"
    shutil.copytree(cpu.SOURCE.parent, out, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    table = out / "kernel_instances.h"
    text = table.read_text()
    for family in families:
        text, n = re.subn(rf"#define {family}\(X\)(?:.*\\\n)*.*\n", f"#define {family}(X)\n", text)
        if n != 1:
            raise SystemExit(f"no table {family} in {table}; the families are {', '.join(CONFIGS)}")
    table.write_text(text)
    return out / cpu.SOURCE.name


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--repeats", type=int, default=100)
    args = p.parse_args()
    bench._keep_freed_buffers()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        libs = {}
        for name, src in (("specialised", cpu.SOURCE), ("general", general_source(tmp, args.families))):
            (tmp / name).mkdir(exist_ok=True)
            libs[name] = build(src, tmp / name)
        print(f"# {torch.get_num_threads()} thread(s); per configuration, each build's median time over "
              f"{args.repeats} repetitions / ReLU's (backward: threshold_backward), interleaved")
        for family in args.families:
            for shape, S, kind, scaling, layout in CONFIGS[family]:
                for backward in (False, True):
                    times = time_config(libs, shape, S, kind, scaling, layout, "identity", backward, args.repeats)
                    base = statistics.median(times["relu"])
                    spec, gen = (statistics.median(times[n]) / base for n in ("specialised", "general"))
                    print(f"{family} {shape[0]}x{shape[1]} {kind} S={S} {scaling} {layout} "
                          f"{'bwd' if backward else 'fwd'}: specialised x{spec:.3f}  general x{gen:.3f}  "
                          f"general/specialised {gen / spec:.3f}", flush=True)


if __name__ == "__main__":
    main()
