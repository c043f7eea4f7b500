"""Measurements behind the toy VAE's diagnosis (``docs/experiments.md``): where the cones start, and how the test
loss depends on the batches its KL term is measured over.

``cones``: r = a / |s| at each CoLU of a freshly initialised VAE, and the section weight w(r). CoLU keeps the
axis a and scales the section s by w(r) (eq. 1-2): w = clamp(r, 0, 1) for the hard projection, sigmoid(r - 1/2)
for the soft one. Where r stays near 0 the soft weight is nearly constant (sigmoid(-1/2) = 0.38), so the
activation is nearly the linear map (a, s) -> (a, 0.38 s), and the network starts close to the identity network
(G = 0). With PyTorch's default initialisation every channel has the same scale, so a section of S - 1 channels
has about sqrt(S - 1) times the norm of its axis and |r| starts near 1/sqrt(S - 1); ``axis_init_gain``
(:func:`colu_lab.experiments.mnist_vae.experiment.scale_axis_rows`) changes that::

    python -m colu_lab.experiments.mnist_vae.diagnose cones --data DIR --gains 1 6.93 --out FILE.json

``kl-batches``: the test loss of each finished run in a folder (its final checkpoint), its KL term measured
with the batch statistics of z over chunks of each given size (the runs use the training batch size; the
whole test set at once is the population's statistics)::

    python -m colu_lab.experiments.mnist_vae.diagnose kl-batches --from RUN_DIR --sizes 32 128 2000 --out FILE.json
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace

import torch

from colu.files import atomic_write_json, read_json_object
from colu.reference import weighting
from colu_lab.experiments.mnist_vae import experiment as vae
from colu_lab.framework.activations import parse_activation
from colu_lab.framework.config import build_config, preset_table
from colu_lab.framework.runner import checkpoint_path, load_final

PROG = "python -m colu_lab.experiments.mnist_vae.diagnose"

QUANTILES = (0.1, 0.5, 0.9)


def cone_regimes(h: torch.Tensor, activation, width: int) -> dict:
    """Over the cones of the pre-activations ``h`` (rows: examples): quantiles of r = a / |s| and of the section
    weight w(r) of the activation's scaling, and the share of cones with r >= 1 (inside: kept) and r <= 0."""
    spec = vae.cone_spec_of(activation, width)
    axes, sections = spec.split(h)
    a = axes.expand(sections.shape[:-1])  # (N, G): a shared axis, (N, 1), serves every cone
    r = (a / sections.norm(dim=-1)).flatten().double()
    w = weighting(r, activation.scaling)
    out = {f"r_q{int(q * 100)}": float(torch.quantile(r, q)) for q in QUANTILES}
    out.update({f"w_q{int(q * 100)}": float(torch.quantile(w, q)) for q in QUANTILES})
    out.update(inside=float((r >= 1).double().mean()), nonpositive=float((r <= 0).double().mean()))
    return out


def init_stats(cfg, label: str, seed: int, x: torch.Tensor, data) -> dict:
    """The cone regimes at the encoder's and the decoder's activation of a freshly built model."""
    act = parse_activation(label)
    torch.manual_seed(seed)
    model, width = vae.build_model(cfg, act, data)
    with torch.no_grad():
        h_enc = model.enc_in(x)
        h_dec = model.dec_in(model.encode(x))
    return {"encoder": cone_regimes(h_enc, model.enc_act, width),
            "decoder": cone_regimes(h_dec, model.dec_act, width)}


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a count: give 1 or more")
    return value


def cones_main(p, argv) -> int:
    p.add_argument("--data", metavar="DIR", help="the MNIST folder (default: the built-in digits)")
    p.add_argument("--split-from-test", type=int, default=2000, metavar="N")
    p.add_argument("--activation", default="colu:G=50,soft,share", metavar="LABEL")
    p.add_argument("--gains", type=float, nargs="+", default=[1.0], metavar="G",
                   help="axis_init_gain values to measure (default 1: PyTorch's initialisation)")
    p.add_argument("--seeds", type=_at_least_one, default=3, metavar="N")
    p.add_argument("--images", type=_at_least_one, default=512, metavar="N", help="training images measured on")
    p.add_argument("--out", metavar="FILE.json", help="write the statistics there (default: print only)")
    args = p.parse_args(argv)
    dataset = {"dataset": "mnist", "data": args.data, "split_from_test": args.split_from_test} if args.data else {}
    rows = []
    for gain in args.gains:
        try:  # a bad gain, data folder or activation: one line naming it
            cfg, _ = build_config(vae.Config, preset_table(vae.EXPERIMENT), {}, {**dataset, "axis_init_gain": gain})
            data = vae.load_data(cfg)
            act = parse_activation(args.activation)
            width = act.paper_width(cfg.hidden)
            vae.cone_spec_of(act.build(width), width)  # it must have cone axes
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        x = data.x_train_eval[:args.images]
        for seed in range(args.seeds):
            stats = init_stats(cfg, args.activation, seed, x, data)
            rows.append({"activation": args.activation, "axis_init_gain": gain, "seed": seed, **stats})
            enc = stats["encoder"]
            print(f"gain {gain:g} seed {seed}: encoder r 10/50/90% {enc['r_q10']:.3f} {enc['r_q50']:.3f} "
                  f"{enc['r_q90']:.3f}, w {enc['w_q10']:.3f} {enc['w_q50']:.3f} {enc['w_q90']:.3f}, inside "
                  f"{enc['inside']:.3f}; decoder r 10/90% {stats['decoder']['r_q10']:.3f} "
                  f"{stats['decoder']['r_q90']:.3f}")
    if args.out:
        atomic_write_json(args.out, {"command": f"{PROG} cones {' '.join(argv)}", "images": args.images,
                                     "rows": rows})
    return 0


def kl_batches_main(p, argv) -> int:
    p.add_argument("--from", dest="from_dir", required=True, metavar="DIR", help="a finished colu run mnist-vae")
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 128, 2000], metavar="N",
                   help="chunk sizes the test set is evaluated in (a size >= the test set: all at once)")
    p.add_argument("--out", metavar="FILE.json")
    args = p.parse_args(argv)
    saved_path = os.path.join(args.from_dir, "config.json")
    try:
        saved = read_json_object(saved_path)
        cfg, _ = build_config(vae.Config, None, saved["config"], {}, saved_path)
        results = read_json_object(os.path.join(args.from_dir, "results.json"))
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: --from {args.from_dir!r} is not a finished mnist-vae run folder ({exc})", file=sys.stderr)
        return 2
    try:
        data = vae.load_data(cfg)
    except ValueError as exc:  # the data the run trained on has moved: --data is in its config.json
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = []
    for run in results["runs"]:
        act, seed = parse_activation(run["activation"]), run["seed"]
        path = checkpoint_path(args.from_dir, act.label(), seed)
        try:
            model, _, _ = load_final(vae.EXPERIMENT, cfg, act, data, path, seed)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        row = {"activation": act.label(), "seed": seed}
        with torch.no_grad():
            for size in args.sizes:
                row[f"test_loss_chunks_{size}"] = vae.dataset_loss(model, data.x_test, replace(cfg, batch_size=size),
                                                                    "cpu")
        rows.append(row)
        print(", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    if args.out:
        atomic_write_json(args.out, {"command": f"{PROG} kl-batches {' '.join(argv)}",
                                     "test_examples": int(data.x_test.shape[0]), "rows": rows})
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    commands = {"cones": cones_main, "kl-batches": kl_batches_main}
    if not argv or argv[0] not in commands:
        print(f"usage: {PROG} {{cones,kl-batches}} ... (--help after either)", file=sys.stderr)
        return 2
    p = argparse.ArgumentParser(prog=f"{PROG} {argv[0]}", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    return commands[argv[0]](p, argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
