"""``colu palettes DIR``: the output convolutions of two seeds, drawn as palettes and matched (Section 5.7, Figure 15).

The last convolution of a diffusion UNet (``conv_out``, right after the last
activation) maps C hidden channels to the image's colours with a ``k x k``
kernel: hidden channel ``c`` contributes the small ``k x k`` colour image
``W[:, c]``, its *palette* (Appendix D.5). Two networks trained from
different seeds learn palettes that differ by a symmetry of the activation
before them: a permutation of the hidden channels for a component-wise
activation, an element of ``Perm(G) x O(S-1)^G`` (permute whole cones,
rotate each cone's section) for CoLU. The paper's claim, as numbers: for a
component-wise model the best permutation of B's palettes already matches
A's; for a CoLU model it does not, and only the group element does.

For each activation of a finished ``colu run diffusion-unet`` with at least
two seeds, and each pair of seeds ``(a, b)``, with ``A`` and ``B`` the
palettes as ``C x (colours * k * k)`` matrices (one row per hidden channel):

* ``residual_identity``: ``||A - B|| / ||A||``, no alignment;
* ``residual_permutation``: ``||A - P B|| / ||A||`` for the best permutation
  ``P`` of the hidden channels (Hungarian algorithm);
* ``residual_group``: the same for the best element of the activation's own
  group (:meth:`colu.groups.Group.solve`, the solver of :mod:`colu.align`;
  for a component-wise activation it is the permutation again);
* ``chance_permutation``, ``chance_group``: the same two residuals with B
  replaced by a Gaussian matrix of B's size and norm (fixed seed), i.e. what
  the alignment achieves between unrelated filters. A group with rotations
  has more freedom than the permutations, so it lowers the residual of
  unrelated filters too; a residual is informative only below its chance
  value.

Outputs, in ``--out`` (default ``DIR/palettes``): ``palettes.json``,
``palettes.png`` (per activation, one row per seed of the first pair, then
B after its best permutation and after its best group element; colours
scaled linearly per activation, grey 0.5 is a zero weight) and ``report.md``.
Weights are read from the run's final checkpoints (``torch.load`` with
``weights_only=True``), the trained weights rather than any moving average.
"""

from __future__ import annotations

import argparse
import io
import itertools
import math
import os
import sys

import torch

from colu.files import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json_object
from colu.groups import Group, group_of
from colu_lab.experiments.diffusion_unet.experiment import NAME, PALETTE_KEY
from colu_lab.framework.activations import parse_activation
from colu_lab.framework.config import RUNTIME_KEYS, SELECTION_KEYS
from colu_lab.framework.runner import checkpoint_path, load_checkpoint, run_slug

CHANCE_SEED = 0
PALETTE_SCALE = 8  # screen pixels per kernel pixel
PALETTES_PER_LINE = 32


def palette_matrix(weight: torch.Tensor) -> torch.Tensor:
    """A convolution weight ``(out, C, k, k)`` as ``C x (out * k * k)`` float64 rows, one per hidden channel."""
    if weight.dim() != 4:
        raise ValueError(f"a convolution weight has 4 dimensions (out, in, k, k), got shape {tuple(weight.shape)}")
    return weight.detach().double().permute(1, 0, 2, 3).reshape(weight.shape[1], -1)


def palette_residuals(weight_a: torch.Tensor, weight_b: torch.Tensor, group) -> dict:
    """Relative residuals between two convolutions' palettes, unaligned and after the best alignments.

    Args:
        weight_a, weight_b: convolution weights ``(out, C, k, k)`` of the same
            shape; the hidden channels are the input axis (1).
        group: the :class:`colu.groups.Group` of the activation before the
            convolution, on C channels.

    Returns:
        ``residual_identity``, ``residual_permutation``, ``residual_group``,
        ``chance_permutation``, ``chance_group`` (floats, see the module
        documentation) and the ``C x C`` float64 matrices ``permutation`` and
        ``group_element`` that move B onto A (``P @ B``).
    """

    if weight_a.shape != weight_b.shape:
        raise ValueError(f"the two convolutions differ in shape: {tuple(weight_a.shape)} and {tuple(weight_b.shape)}")
    a, b = palette_matrix(weight_a), palette_matrix(weight_b)
    channels = a.shape[0]
    if group.channels != channels:
        raise ValueError(f"{group} acts on {group.channels} channels but the convolution has {channels} hidden "
                         "channels; give the group of the activation before it")
    norm = float(a.norm())
    if norm == 0:
        raise ValueError("the first convolution's weights are all zero; its palettes cannot be compared")
    permutations = Group("permutation", channels)

    def residual(target, moved_by, source):
        element, _ = moved_by.solve(target @ source.T)
        return float((target - element @ source).norm()) / norm, element

    gen = torch.Generator().manual_seed(CHANCE_SEED)
    chance = torch.randn(b.shape, generator=gen, dtype=torch.float64)
    chance *= b.norm() / chance.norm()
    res_perm, perm = residual(a, permutations, b)
    res_group, element = residual(a, group, b)
    return {"residual_identity": float((a - b).norm()) / norm, "residual_permutation": res_perm,
            "residual_group": res_group, "chance_permutation": residual(a, permutations, chance)[0],
            "chance_group": residual(a, group, chance)[0], "permutation": perm, "group_element": element}


# ------------------------------------------------------------------ reading a run
def _read_json(path: str) -> dict:

    try:
        return read_json_object(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read ({exc})") from None


def finished_runs(run_dir: str) -> tuple[dict, dict]:
    """The run folder's saved config and ``{activation label: [seeds]}`` of its finished runs."""
    config_path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(config_path):
        raise ValueError(f"{run_dir!r} holds no run (no config.json); point colu palettes at the --out of "
                         f"colu run {NAME}")
    saved = _read_json(config_path)
    if saved.get("experiment") != NAME:
        raise ValueError(f"{config_path}: a run of {saved.get('experiment')!r}; colu palettes reads runs of {NAME} "
                         "(its UNets end in the convolution whose palettes are drawn)")
    runs_dir = os.path.join(run_dir, "runs")
    seeds: dict = {}
    for name in sorted(os.listdir(runs_dir)) if os.path.isdir(runs_dir) else []:
        if name.endswith(".json") and not name.startswith("."):
            record = _read_json(os.path.join(runs_dir, name))
            seeds.setdefault(record["activation"], []).append(int(record["seed"]))
    if not seeds:
        raise ValueError(f"{run_dir}: no finished runs (runs/ is empty); finish the run with colu run {NAME} "
                         f"--out {run_dir} --resume")
    return saved, {act: sorted(s) for act, s in seeds.items()}


def final_palette(run_dir: str, saved: dict, label: str, seed: int) -> torch.Tensor:
    """The output convolution's weight in the final checkpoint of (``label``, ``seed``)."""
    path = checkpoint_path(run_dir, label, seed)
    if not os.path.isfile(path):
        raise ValueError(f"{path} is missing: the palettes are read from the final checkpoints colu run leaves in "
                         f"checkpoints/; rerun that run (colu run {NAME} --out {run_dir} --resume after deleting "
                         f"runs/{run_slug(label)}-seed{seed}.json)")
    settings = {k: v for k, v in saved["config"].items() if k not in RUNTIME_KEYS | SELECTION_KEYS}
    state = load_checkpoint(path, saved.get("fingerprint"), settings, label, seed)
    if state["step"] != state.get("total"):
        raise ValueError(f"{path}: checkpoint at step {state['step']} of {state.get('total')}; finish the run with "
                         f"colu run {NAME} --out {run_dir} --resume")
    if PALETTE_KEY not in state["model"]:
        raise ValueError(f"{path}: the model has no {PALETTE_KEY!r}; not a diffusion UNet checkpoint")
    return state["model"][PALETTE_KEY].float()


def activation_group(label: str, channels: int):
    """The symmetry group of activation spec ``label`` on ``channels`` channels."""
    return group_of(parse_activation(label).build(channels, dim=1), channels)


# ------------------------------------------------------------------ drawing
def _palette_images(weight: torch.Tensor, scale: float) -> torch.Tensor:
    """``(C, 3, k, k)`` images in [0, 1]: 0.5 + 0.5 w / scale per colour (grey for one colour)."""
    pal = weight.detach().float().permute(1, 0, 2, 3)  # (C, out, k, k)
    if pal.shape[1] == 1:
        pal = pal.expand(-1, 3, -1, -1)
    elif pal.shape[1] != 3:
        pal = pal.mean(1, keepdim=True).expand(-1, 3, -1, -1)  # no colour mapping for other counts: their mean
    return (0.5 + 0.5 * pal / scale).clamp(0, 1)


def draw_palettes(rows, path: str) -> str:
    """Write ``rows`` = ``[(label, weight (out, C, k, k), scale)]`` as one PNG of palettes; returns ``path``."""
    from PIL import Image, ImageDraw

    label_h, gap = 14, 2
    blocks = []
    for label, weight, scale in rows:
        images = _palette_images(weight, scale)
        count, _, k, _ = images.shape
        per_line = min(count, PALETTES_PER_LINE)
        lines = math.ceil(count / per_line)
        cell = k * PALETTE_SCALE + gap
        text_w = math.ceil(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(label)) + 4
        block = Image.new("RGB", (max(gap + per_line * cell, text_w), label_h + gap + lines * cell), "white")
        ImageDraw.Draw(block).text((2, 1), label, fill="black")
        big = images.repeat_interleave(PALETTE_SCALE, 2).repeat_interleave(PALETTE_SCALE, 3)
        for c in range(count):
            line, pos = divmod(c, per_line)
            arr = (big[c] * 255).round().byte().permute(1, 2, 0).numpy()
            block.paste(Image.fromarray(arr, "RGB"), (gap + pos * cell, label_h + gap + line * cell))
        blocks.append(block)
    width = max(b.width for b in blocks)
    canvas = Image.new("RGB", (width, sum(b.height for b in blocks) + 4 * len(blocks)), "white")
    top = 0
    for b in blocks:
        canvas.paste(b, (0, top))
        top += b.height + 4
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return path


# ------------------------------------------------------------------ the command
def measure(run_dir: str) -> tuple[dict, list]:
    """Residuals of every seed pair of every activation in ``run_dir``, and the rows to draw."""
    saved, seeds = finished_runs(run_dir)
    paired = {act: s for act, s in seeds.items() if len(s) >= 2}
    if not paired:
        have = ", ".join(f"{a}: seed {s[0]}" for a, s in seeds.items())
        raise ValueError(f"{run_dir}: every activation has one finished seed ({have}); palettes compare two. Add a "
                         f"seed with colu run ... --out {run_dir} --resume --seeds 2")
    results = {"source": os.path.abspath(run_dir), "layer": PALETTE_KEY, "activations": {},
               "single_seed": sorted(set(seeds) - set(paired))}
    rows = []
    for act, act_seeds in paired.items():
        weights = {s: final_palette(run_dir, saved, act, s) for s in act_seeds}
        channels = weights[act_seeds[0]].shape[1]
        group = activation_group(act, channels)
        entry = {"group": str(group), "group_kind": group.kind, "channels": channels,
                 "shape": list(weights[act_seeds[0]].shape), "pairs": []}
        for i, (sa, sb) in enumerate(itertools.combinations(act_seeds, 2)):
            res = palette_residuals(weights[sa], weights[sb], group)
            entry["pairs"].append({"seeds": [sa, sb], **{k: v for k, v in res.items() if k.startswith(("residual",
                                                                                                      "chance"))}})
            if i == 0:
                scale = max(float(w.abs().max()) for w in (weights[sa], weights[sb])) or 1.0
                moved = lambda m: torch.einsum("ij,ojkl->oikl", m.float(), weights[sb])
                rows += [(f"{act} seed {sa}", weights[sa], scale), (f"{act} seed {sb}", weights[sb], scale),
                         (f"{act} seed {sb}, best permutation onto seed {sa}", moved(res["permutation"]), scale)]
                if group.kind != "permutation":  # otherwise the group element is that permutation
                    rows.append((f"{act} seed {sb}, best element of its group onto seed {sa}",
                                 moved(res["group_element"]), scale))
        results["activations"][act] = entry
    return results, rows


def _mean(entry, key) -> float:
    return sum(p[key] for p in entry["pairs"]) / len(entry["pairs"])


def verdicts(results) -> list[str]:
    """The paper's claim, checked in direction only on these numbers."""
    acts = results["activations"]
    cones = {a: e for a, e in acts.items() if e["group_kind"] in ("colu", "rcolu")}
    perms = {a: e for a, e in acts.items() if e["group_kind"] == "permutation"}
    lines = []
    for a, e in cones.items():
        perm, grp = _mean(e, "residual_permutation"), _mean(e, "residual_group")
        chance = _mean(e, "chance_group")
        lines.append(f"- `{a}`: the group element lowers the residual below the best permutation: "
                     f"{'yes' if grp < perm else 'no'} ({grp:.4f} vs {perm:.4f}); below its chance value "
                     f"{chance:.4f} (unrelated filters under the same group): {'yes' if grp < chance else 'no'}.")
    for a, e in perms.items():
        perm, chance = _mean(e, "residual_permutation"), _mean(e, "chance_permutation")
        lines.append(f"- `{a}`: the best permutation matches the palettes better than chance: "
                     f"{'yes' if perm < chance else 'no'} ({perm:.4f} vs {chance:.4f}).")
        for c, ce in cones.items():
            cperm = _mean(ce, "residual_permutation")
            lines.append(f"- permutation residual of `{a}` below that of `{c}`: {'yes' if perm < cperm else 'no'} "
                         f"({perm:.4f} vs {cperm:.4f}).")
    return lines or ["- (no pair of a component-wise and a cone activation to compare)"]


def render_report(results, png: str) -> str:
    acts = results["activations"]
    lines = ["# palettes: output-convolution filters of two seeds", "",
             "Section 5.7, Appendix D.5, Figure 15: the palettes (the last convolution's filters, one small image "
             "per hidden channel) of two seeds can be matched by a permutation in a component-wise model; in a "
             "CoLU model only an element of its group Perm(G) x O(S-1)^G matches them.", "",
             f"- run: `{results['source']}`", f"- layer: `{results['layer']}` (after the last activation)",
             "- residual: ||A - P B|| / ||A|| over the palettes as channels x (colours k k) matrices; chance: the "
             "same with B replaced by a Gaussian matrix of its size and norm (unrelated filters)", "",
             "| activation | group | seeds | unaligned | best permutation | best group element | chance (perm.) "
             "| chance (group) |", "|---|---|---|---|---|---|---|---|"]
    for act, e in acts.items():
        for p in e["pairs"]:
            lines.append(f"| `{act}` | {e['group']} | {p['seeds'][0]}, {p['seeds'][1]} | "
                         f"{p['residual_identity']:.4f} | {p['residual_permutation']:.4f} | "
                         f"{p['residual_group']:.4f} | {p['chance_permutation']:.4f} | {p['chance_group']:.4f} |")
    if results["single_seed"]:
        lines += ["", f"Left out (one finished seed): {', '.join(results['single_seed'])}."]
    lines += ["", "## The claim, in direction", "",
              "The paper shows this as a figure; the lines below only say which way these numbers go.", ""]
    lines += verdicts(results)
    lines += ["", "## Palettes", "",
              "Per activation: seed A, seed B, B after its best permutation and, for a group larger than the "
              "permutations, B after its best group element (colours scaled linearly per activation; grey is a "
              "zero weight).", "",
              f"![{os.path.basename(png)}]({os.path.basename(png)})", "",
              "Numbers in palettes.json; regenerate with `colu palettes " + results["source"] + "`.", ""]
    return "\n".join(lines)


def run_palettes(run_dir: str, out_dir: str | None = None) -> dict:
    """Measure and draw the palettes of ``run_dir``; writes palettes.json, palettes.png and report.md to ``out_dir``."""
    out_dir = out_dir or os.path.join(run_dir, "palettes")
    results, rows = measure(run_dir)
    os.makedirs(out_dir, exist_ok=True)
    png = draw_palettes(rows, os.path.join(out_dir, "palettes.png"))
    atomic_write_json(os.path.join(out_dir, "palettes.json"), results)
    atomic_write_text(os.path.join(out_dir, "report.md"), render_report(results, png))
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="colu palettes", description=(
        "Draw the last convolution's filters (palettes) of two seeds of a finished colu run diffusion-unet and "
        "measure how well the best permutation and the best element of the activation's group match them "
        "(Section 5.7, Figure 15). Writes palettes.json, palettes.png and report.md."))
    p.add_argument("dir", help="the --out folder of colu run diffusion-unet, with at least two seeds per activation")
    p.add_argument("--out", help="where to write (default DIR/palettes)")
    args = p.parse_args(argv)
    try:
        results = run_palettes(args.dir, args.out)
    except (ValueError, OSError) as exc:
        print(f"colu palettes: error: {exc}", file=sys.stderr)
        return 2
    for act, e in results["activations"].items():
        for pair in e["pairs"]:
            print(f"{act} seeds {pair['seeds']}: unaligned {pair['residual_identity']:.4f}, best permutation "
                  f"{pair['residual_permutation']:.4f}, best group element {pair['residual_group']:.4f} "
                  f"(chance {pair['chance_permutation']:.4f} / {pair['chance_group']:.4f})")
    print(f"palettes.json, palettes.png and report.md in {args.out or os.path.join(args.dir, 'palettes')}")
    return 0
