"""Entry points of ``colu run``, ``colu sweep`` and ``colu report``."""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys

from colu.files import WriteError
from colu_lab.framework import ablation, report
from colu_lab.framework.config import command_error, parse_cli
from colu_lab.framework.readings import show_config
from colu_lab.framework.rundir import RunFolder
from colu_lab.framework.runner import Halted, Interrupted, diverged_message, run_all
from colu_lab.registry import EXPERIMENTS


def _train(argv, sweep: bool) -> int:
    prog = "colu sweep" if sweep else "colu run"
    description = ("Run the grid of activation configs x seeds of an experiment (override with --activations)."
                   if sweep else "Train an experiment's networks for each activation and seed, then write "
                   "results.json, metrics.jsonl, learning-curve PNGs and report.md to --out.")

    request = None
    try:
        request = parse_cli(argv, prog, description, EXPERIMENTS, sweep=sweep)
        if request.show_config:
            print(_settings_text(request, prog))
            return 0
        if request.ablation:
            return _ablation(request, prog, argv)
        results = run_all(request.exp, request.cfg, request.out, resume=request.resume,
                          overwrite=request.overwrite, quiet=request.quiet,
                          command=" ".join([prog, *map(shlex.quote, argv if argv is not None else sys.argv[2:])]))
    except Halted as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 3
    except (Interrupted, KeyboardInterrupt) as exc:
        finished = ", ".join(getattr(exc, "finished", [])) or "none"
        started = request is not None and os.path.exists(os.path.join(request.out, "config.json"))
        how = f"; continue with: {request.resume_command}" if started else "; nothing was saved, rerun the command"
        lost = exc.lost() if isinstance(exc, Interrupted) else ""
        what = f"{lost}; finished runs: {finished}" if lost else f"interrupted (finished runs: {finished})"
        print(f"\n{prog}: {what}{how}", file=sys.stderr)
        return 130
    except WriteError as exc:
        started = request is not None and not request.ablation and os.path.exists(
            os.path.join(request.out, "config.json"))
        how = f", then continue with: {request.resume_command}" if started else ", then run the command again"
        return command_error(f"{exc}{how}", prog)
    except (ValueError, OSError) as exc:
        return command_error(exc, prog)
    if results.get("world_size", 1) == 1 or _is_main():
        print(f"\n{results['experiment']} ({results['data']['description']})")
        print(report.summary_table(request.exp, results))
        print(f"results, plots and report.md in {request.out}")
        # a diverged run is a result (recorded, counted in the summary), but not a success
        for record in results["runs"]:
            if record.get("diverged"):
                print(f"{prog}: {diverged_message(record)}", file=sys.stderr)
    return 1 if any(r.get("diverged") for r in results["runs"]) else 0


def _settings_text(request, prog) -> str:
    """``--show-config``: the settings a run of ``request`` would train with, readings marked; nothing is run."""
    exp, cfg, origins = request.exp, request.cfg, dict(request.origins)
    if request.ablation and not cfg.activations:  # every variant trains the ablation's own activations
        cfg = dataclasses.replace(cfg, activations=list(exp.ablation.activations))
        origins["activations"] = "default (the ablation's activations)"
    what = ("the base settings of its ablation grid (each variant changes some of them)" if request.ablation
            else "the resolved settings")
    preset = f", preset {cfg.preset}" if cfg.preset else ""
    title = f"{prog} {exp.name}{preset}: {what}; nothing is trained (drop --show-config to train into {request.out})"
    return show_config(exp, cfg, origins, title=title)


def _ablation(request, prog, argv) -> int:
    """``colu sweep NAME --ablation``: every variant of the experiment's ablation grid, then ablation.md."""
    command = " ".join([prog, *map(shlex.quote, argv if argv is not None else sys.argv[2:])])
    record = ablation.run_ablation(request.exp, request.cfg, request.out, explicit=request.explicit,
                                   resume=request.resume, overwrite=request.overwrite, quiet=request.quiet,
                                   command=command)
    if _is_main():
        print(f"\n{request.exp.name} ablation")
        print(ablation.summary_table(request.exp, record))
        print(f"ablation.md and one run folder per variant in {request.out}")
    return 0


def _is_main() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


def run_main(argv=None) -> int:
    return _train(argv, sweep=False)


def sweep_main(argv=None) -> int:
    return _train(argv, sweep=True)


def report_main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="colu report",
                                description="Rebuild report.md, summary and plots of a run directory from its "
                                            "results (results.json, or runs/*.json of an unfinished run).")
    p.add_argument("dir", help="a --out directory of colu run / colu sweep")
    args = p.parse_args(argv)

    if not os.path.isdir(args.dir):
        return command_error(ValueError(f"{args.dir!r} is not a directory; point colu report at a run's --out"), "colu report")
    try:
        with RunFolder(args.dir) as folder:  # a live run in the folder would overwrite what this writes
            folder.lock("colu report " + args.dir)
            results = report.load_results(args.dir)
            name = results.get("experiment")
            if name not in EXPERIMENTS:
                raise report.unknown_experiment(args.dir, name, EXPERIMENTS)
            results = report.rebuild(EXPERIMENTS[name], args.dir, results)
    except (ValueError, OSError) as exc:
        return command_error(exc, "colu report")
    print(report.summary_table(EXPERIMENTS[name], results))
    print(f"report: {args.dir}/report.md")
    return 0
