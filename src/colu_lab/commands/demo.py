"""``colu demo``: the hemisphere and the MLP experiments on built-in data, 3 seeds each, a few minutes on a CPU.

Equivalent to::

    colu run hemisphere --seeds 3 --epochs 40 --out OUT/hemisphere
    colu run mnist-mlp --dataset digits --seeds 3 --out OUT/mnist-mlp

The hemisphere runs a quarter of its default budget (40 of 160 epochs, the
learning rate decayed along a cosine over those 40), to keep the demo to a
minute or two: hard CoLU, which sits on a plateau for its first ~1000 steps,
may not have converged by then, and the demo says so. ``colu run hemisphere``
trains the converged models the README quotes. The MLP runs its default
budget, the paper's 590 optimizer steps at batch 1024 (10 epochs of MNIST),
which on the 1438 built-in digits is 295 epochs of 2 steps.
Running the demo again replaces the results of an earlier demo in the same
folder; a folder holding anything else's results is refused.

Torch runs one thread unless ``--threads`` or ``OMP_NUM_THREADS`` says
otherwise: these networks are small, and on a 2-core machine that is also
running something else, two threads made the same run seven times slower.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from colu_lab.framework import report
from colu_lab.framework.config import build_config
from colu_lab.framework.runner import Interrupted, run_all
from colu_lab.registry import EXPERIMENTS

DEMO_COMMAND = "colu demo"
HEMISPHERE_DEMO_EPOCHS = 40  # a quarter of the experiment's default, to keep the demo short


def _holds_a_demo(out: str) -> bool:
    """Whether ``out`` holds an earlier demo's results (which a new demo may replace)."""
    import json

    try:
        with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
            return json.load(f).get("command") == DEMO_COMMAND
    except (OSError, ValueError, AttributeError):
        return False


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="colu demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join("runs", "demo"),
                        help="folder for results, plots and reports (default runs/demo)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per activation, >= 1 (default 3)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or per-run lines")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads, >= 1 (default 1, or OMP_NUM_THREADS when it is set)")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads {args.threads}: must be at least 1")
    if args.threads is not None or not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(args.threads or 1)

    try:
        return _demo(args)
    except (Interrupted, KeyboardInterrupt):
        print("\ncolu demo: interrupted; run it again to start over", file=sys.stderr)
        return 130
    except (ValueError, OSError) as exc:
        print(f"colu demo: error: {exc}", file=sys.stderr)
        return 2


def _demo(args) -> int:
    plans = [("hemisphere", {"seeds": args.seeds, "epochs": HEMISPHERE_DEMO_EPOCHS}),
             ("mnist-mlp", {"seeds": args.seeds, "dataset": "digits"})]
    tables = []
    start = time.time()
    for name, values in plans:
        exp = EXPERIMENTS[name]
        cfg, _ = build_config(exp.Config, None, {}, values)
        out = os.path.join(args.out, name)
        results = run_all(exp, cfg, out, quiet=args.quiet, overwrite=_holds_a_demo(out), command=DEMO_COMMAND)
        budget = ""
        default_epochs = exp.Config().epochs
        if cfg.epochs is not None and default_epochs and cfg.epochs < default_epochs:
            budget = (f"   (a shorter budget than `colu run {name}`: {cfg.epochs} of its {default_epochs} epochs; "
                      "some runs may not have converged yet (hard CoLU), so compare activations with the full run)\n")
        tables.append(f"== {name}: {results['data']['description']}\n{budget}{report.summary_table(exp, results)}\n"
                      f"   report: {os.path.join(out, 'report.md')}")
    print("\n" + "\n\n".join(tables))
    print(f"\ndemo finished in {time.time() - start:.0f} s with {torch.get_num_threads()} torch thread(s); plots and "
          f"reports under {args.out}")
    return 0
