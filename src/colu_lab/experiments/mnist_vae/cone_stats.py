"""Where the cones of the toy VAE sit at initialisation: r = a / |s| at each CoLU, and the section weight w(r).

CoLU keeps the axis a and scales the section s by w(r), r = a / |s| (eq. 1-2): w = clamp(r, 0, 1) for the hard
projection, sigmoid(r - 1/2) for the soft one. Where r stays near 0 the soft weight is nearly constant
(sigmoid(-1/2) = 0.38), so the activation is nearly the linear map (a, s) -> (a, 0.38 s), and the network starts
close to the identity network (G = 0). With PyTorch's default initialisation every channel has the same scale, so
a section of S - 1 channels has about sqrt(S - 1) times the norm of its axis and |r| starts near 1/sqrt(S - 1);
``axis_init_gain`` (:func:`colu_lab.experiments.mnist_vae.experiment.scale_axis_rows`) changes that.

``python -m colu_lab.experiments.mnist_vae.cone_stats --data DIR --activation colu:G=50,soft,share
--gains 1 6.93 --out FILE.json`` writes the statistics at initialisation for each gain and seed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import torch

from colu.files import atomic_write_text
from colu.reference import weighting
from colu_lab.experiments.mnist_vae import experiment as vae
from colu_lab.framework.activations import parse_activation
from colu_lab.framework.config import build_config, preset_table

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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m colu_lab.experiments.mnist_vae.cone_stats", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", metavar="DIR", help="the MNIST folder (default: the built-in digits)")
    p.add_argument("--split-from-test", type=int, default=2000, metavar="N")
    p.add_argument("--activation", default="colu:G=50,soft,share", metavar="LABEL")
    p.add_argument("--gains", type=float, nargs="+", default=[1.0], metavar="G",
                   help="axis_init_gain values to measure (default 1: PyTorch's initialisation)")
    p.add_argument("--seeds", type=int, default=3, metavar="N")
    p.add_argument("--images", type=int, default=512, metavar="N", help="training images measured on")
    p.add_argument("--out", metavar="FILE.json", help="write the statistics there (default: print only)")
    args = p.parse_args(argv)
    dataset = {"dataset": "mnist", "data": args.data, "split_from_test": args.split_from_test} if args.data else {}
    rows = []
    for gain in args.gains:
        try:
            cfg, _ = build_config(vae.Config, preset_table(vae.EXPERIMENT), {}, {**dataset, "axis_init_gain": gain})
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        data = vae.load_data(cfg)
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
        meta = {"command": "python -m colu_lab.experiments.mnist_vae.cone_stats " + " ".join(sys.argv[1:] if argv
                                                                                              is None else argv),
                "images": args.images, "rows": rows}
        atomic_write_text(args.out, json.dumps(meta, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
