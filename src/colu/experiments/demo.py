"""``colu demo``: the hemisphere and the MLP experiments on built-in data, 3 seeds each, a few minutes on a CPU.

Equivalent to::

    colu run hemisphere --seeds 3 --epochs 20 --out OUT/hemisphere
    colu run mnist-mlp --dataset digits --seeds 3 --epochs 15 --batch-size 128 --out OUT/mnist-mlp

The MLP uses batch 128 rather than the paper's 1024 because the built-in digits
have only 1438 training images (two steps per epoch at 1024).
"""

from __future__ import annotations

import argparse
import os
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="colu demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join("runs", "demo"),
                        help="folder for results, plots and reports (default runs/demo)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per activation (default 3)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or per-run lines")
    args = parser.parse_args(argv)

    from . import report
    from .config import build_config
    from .registry import EXPERIMENTS
    from .runner import run_all

    plans = [("hemisphere", {"seeds": args.seeds, "epochs": 20}),
             ("mnist-mlp", {"seeds": args.seeds, "dataset": "digits", "epochs": 15, "batch_size": 128})]
    tables = []
    start = time.time()
    for name, values in plans:
        exp = EXPERIMENTS[name]
        cfg, _ = build_config(exp.Config, {}, {}, values)
        out = os.path.join(args.out, name)
        results = run_all(exp, cfg, out, quiet=args.quiet)
        tables.append(f"== {name}: {results['data']['description']}\n{report.summary_table(results)}\n"
                      f"   report: {os.path.join(out, 'report.md')}")
    print("\n" + "\n\n".join(tables))
    print(f"\ndemo finished in {time.time() - start:.0f} s; plots and reports under {args.out}")
    return 0
