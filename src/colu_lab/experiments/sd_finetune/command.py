"""``colu finetune-diffusers``: the command's declaration (``COMMANDS``), its options and its two modes,
fine-tuning (:func:`run`) and ``--compare`` (:func:`compare`).

Listing the command imports nothing heavy: ``diffusers``, ``transformers`` and Pillow load only when it runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from colu.convert import ConversionReport, conversion_record
from colu.files import atomic_write_json, atomic_write_text
from colu.tools.cli import Command
from colu_lab.experiments.sd_finetune.data import ImageCaptionFolder
from colu_lab.experiments.sd_finetune.memory import estimate_memory, memory_line
from colu_lab.experiments.sd_finetune.pipeline import (
    ACTIVATIONS,
    PAPER_NUM_CONES,
    convert_unet,
    load_converted,
    load_pipeline,
    read_record,
    save_finetuned,
)
from colu_lab.experiments.sd_finetune.sampling import initial_noise, sample_images, save_grid
from colu_lab.experiments.sd_finetune.training import finetune, fixed_batch, fixed_batch_loss
from colu_lab.framework.readings import DIFFUSION_WEIGHT_DECAY, Reading, reading_lines, setting_text

__all__ = ["COMMANDS", "READINGS", "parse_args", "show_config", "run", "compare", "main"]

_SAME_AS_ABOVE = ('App. D.3, fine-tuning: "The training details are the same as above." (above: "All runs last '
                  '100K steps and use the Adam optimizer with a batch size of 128 for CIFAR10 (16 for Flowers)")')
READINGS = (
    # the diffusion UNet's reading of the same sentence, the one object both list; here set by an option
    dataclasses.replace(DIFFUSION_WEIGHT_DECAY, option="--weight-decay-mode"),
    Reading("steps", "15000", _SAME_AS_ABOVE,
            {"100000": "the UNets' 100K steps, the literal reading of 'the same as above' (about 1900 passes "
                       "over the 833 Pokémon images at batch 16)"},
            "the fine-tune takes its model and Pokémon captions from diffusers' text-to-image example, which "
            "trains them for 15000 steps; 100K steps of a pretrained model on 833 images would be a guess at "
            "what 'the same' meant for a data set seventy times smaller than CIFAR-10.", option="--steps"),
    Reading("batch_size", "16", _SAME_AS_ABOVE,
            {"128": "the CIFAR-10 UNet's batch (about 8 times the memory; --grad-accum splits it)"},
            "the batch of the paper's higher-resolution data set (Flowers), and one that fits one GPU at 512 px "
            "(about 19 GB by the command's memory estimate, bf16 and gradient checkpointing on).",
            option="--batch-size"),
)
"""The settings of ``colu finetune-diffusers`` that read the paper (``--show-config`` prints them)."""

COMMANDS = {
    "finetune-diffusers": Command("colu_lab.experiments.sd_finetune.command:main",
                                  "fine-tune a local Stable Diffusion pipeline's UNet into soft CoLU; compare samples",
                                  "diffusers", ("diffusers", "transformers", "PIL")),  # PIL: pillow
}


def parse_args(argv=None) -> argparse.Namespace:
    """The options of ``colu finetune-diffusers`` (``--help`` lists them)."""
    p = argparse.ArgumentParser(
        prog="colu finetune-diffusers",
        description="Fine-tune a pretrained Stable-Diffusion-style pipeline (a local folder) with its UNet's "
                    "activations replaced by soft CoLU (G=32, no axis sharing), or unconverted with --baseline; "
                    "--compare draws the same prompts and noise through several such pipelines.",
    )
    p.add_argument("--model", help="local folder of the pretrained diffusers pipeline (model_index.json); "
                                    "nothing is downloaded (required, except with --show-config)")
    p.add_argument("--data", help="image-caption folder: images and metadata.jsonl (Hugging Face imagefolder layout); "
                                  "required for fine-tuning; with --compare its first captions are the default prompts")
    p.add_argument("--out", help="output folder: the fine-tuned pipeline, results.json, samples.png "
                                                "(with --compare: comparison.png and comparison.json)")
    p.add_argument("--baseline", action="store_true", help="fine-tune the unconverted (SiLU) UNet the same way")
    p.add_argument("--compare", action="store_true",
                   help="no training: draw --prompt(s) from the same initial noise through --model and every "
                        "--finetuned folder, one column each (the paper's Figure 11)")
    p.add_argument("--finetuned", nargs="+", default=[], metavar="DIR",
                   help="with --compare: folders written by this command (loaded with colu_lab.experiments.sd_finetune.load_converted)")
    p.add_argument("--num-cones", type=int, default=PAPER_NUM_CONES,
                   help="CoLU cones G per activation; every width must be a multiple (default: %(default)s, the paper's)")
    p.add_argument("--scaling", choices=("soft", "hard", "firm"), default="soft",
                   help="CoLU scaling (default: %(default)s, the paper's)")
    p.add_argument("--share-axis", action="store_true", help="share one cone axis per activation (the paper does not)")
    p.add_argument("--steps", type=int, default=15000,
                   help="optimiser steps (default: %(default)s, diffusers' text-to-image example; the paper's "
                        "'training details as above' reads as 100000)")
    p.add_argument("--batch-size", type=int, default=16, help="images per step (default: %(default)s, the paper's "
                                                               "Flowers batch)")
    p.add_argument("--grad-accum", type=int, default=1,
                   help="split each step's batch into this many micro-batches whose gradients add up, to fit a "
                        "smaller GPU (default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default: %(default)s, the paper's)")
    p.add_argument("--weight-decay", type=float, default=1e-2,
                   help="weight decay (default: %(default)s, the paper's)")
    p.add_argument("--weight-decay-mode", choices=("l2", "decoupled"), default=DIFFUSION_WEIGHT_DECAY.value,
                   help="decoupled: torch.optim.AdamW, as diffusers' text-to-image script applies 'Adam with weight "
                        "decay', and as colu run diffusion-unet reads the same sentence; l2: added to the gradient, "
                        "as torch.optim.Adam does (default: %(default)s; --show-config explains the reading)")
    p.add_argument("--max-grad-norm", type=float, default=0.0,
                   help="clip the gradient norm to this; 0 does not clip (default: %(default)s, as the paper states "
                        "no clipping)")
    p.add_argument("--resolution", type=int, default=None,
                   help="training and sample image side in pixels (default: the UNet's sample_size times the VAE's "
                        "factor, 512 for Stable Diffusion 1.x)")
    p.add_argument("--caption-column", default="text", help="caption key in metadata.jsonl (default: %(default)s)")
    p.add_argument("--image-column", default="file_name", help="image path key in metadata.jsonl (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data order, noise, timesteps and sample noise "
                                                       "(default: %(default)s)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="bf16: forward passes under bfloat16 autocast, weights and Adam state in float32; "
                        "auto: bf16 on CUDA, fp32 elsewhere (default: %(default)s)")
    p.add_argument("--gradient-checkpointing", choices=("auto", "on", "off"), default="auto",
                   help="recompute the UNet's blocks in the backward pass to save memory; auto: on for CUDA "
                        "(default: %(default)s)")
    p.add_argument("--eval-size", type=int, default=16,
                   help="images in the fixed evaluation batch whose loss is reported before and after "
                        "(default: %(default)s)")
    p.add_argument("--log-every", type=int, default=50, help="steps between loss lines (default: %(default)s)")
    p.add_argument("--save-every", type=int, default=0,
                   help="also save the pipeline every this many steps (weights only, no resume); 0: at the end only "
                        "(default: %(default)s)")
    p.add_argument("--prompt", action="append", default=None,
                   help="a sample prompt (repeat for several; default: the first --num-prompts captions of --data)")
    p.add_argument("--num-prompts", type=int, default=4, help="sample prompts taken from --data when no --prompt is "
                                                              "given; 0 writes no samples (default: %(default)s)")
    p.add_argument("--sample-steps", type=int, default=50, help="sampler steps per image (default: %(default)s)")
    p.add_argument("--guidance-scale", type=float, default=7.5,
                   help="classifier-free guidance scale of the samples (default: %(default)s)")
    p.add_argument("--estimate-memory", action="store_true",
                   help="print the memory estimate for these options and exit without training (it runs the UNet "
                        "twice on a small latent on --device: seconds on a GPU, minutes for bf16 on a CPU)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    p.add_argument("--show-config", action="store_true",
                   help="print the resolved settings, one per line, each reading of the paper marked with the "
                        "sentence it reads and the option that switches it, and exit (loads nothing)")
    args = p.parse_args(argv)
    if args.model is None and not args.show_config:
        p.error("the following arguments are required: --model")
    positive = {"--num-cones": args.num_cones, "--steps": args.steps, "--batch-size": args.batch_size,
                "--grad-accum": args.grad_accum, "--lr": args.lr, "--log-every": args.log_every,
                "--eval-size": args.eval_size, "--sample-steps": args.sample_steps}
    for flag, value in positive.items():
        if not value > 0:
            p.error(f"{flag} must be > 0, got {value}")
    for flag, value in {"--weight-decay": args.weight_decay, "--max-grad-norm": args.max_grad_norm,
                        "--save-every": args.save_every, "--num-prompts": args.num_prompts}.items():
        if value < 0:
            p.error(f"{flag} must be >= 0, got {value}")
    if args.batch_size % args.grad_accum:
        p.error(f"--batch-size {args.batch_size} is not a multiple of --grad-accum {args.grad_accum}")
    if args.compare:
        if not args.finetuned:
            p.error("--compare needs --finetuned DIR [DIR ...]: the folders written by fine-tuning runs")
        if not args.prompt and not args.data:
            p.error("--compare needs --prompt TEXT (repeatable) or --data DIR to take prompts from")
        if args.baseline:
            p.error("--baseline fine-tunes; --compare does not: run them as two commands")
        if not args.out:
            p.error("--compare needs --out DIR for comparison.png")
    elif args.finetuned:
        p.error("--finetuned is read only with --compare")
    elif not args.estimate_memory and not args.show_config and not (args.data and args.out):
        p.error("fine-tuning needs --data DIR (images and metadata.jsonl) and --out DIR")
    if args.resolution is not None and args.resolution < 8:
        p.error(f"--resolution must be >= 8, got {args.resolution}")
    return args


def show_config(args: argparse.Namespace) -> str:
    """``--show-config``: the options as resolved, one per line, each reading marked and explained beneath it."""
    readings = {r.setting: r for r in READINGS}
    values = {k: v for k, v in vars(args).items() if k != "show_config"}
    shown = {k: f"{k} = {setting_text(v)}" for k, v in values.items()}
    width = max(map(len, shown.values())) + 3
    lines = ["colu finetune-diffusers: the resolved settings; nothing is loaded or trained (drop --show-config to "
             "run)", f"Settings marked 'reading' interpret the paper where it is silent or ambiguous: beneath each, "
             f"the sentence it reads, our value and why, and the option that switches it ({len(readings)} here).",
             ""]
    for key, value in values.items():
        reading = readings.get(key)
        lines.append(f"  {shown[key]:<{width}}" + ("reading" if reading else "").rstrip())
        if reading is not None:
            lines += reading_lines(reading, value)
    return "\n".join(line.rstrip() for line in lines)


def _device(args) -> torch.device:
    if args.device:
        return torch.device(args.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _precision(args, device) -> str:
    if args.precision != "auto":
        return args.precision
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def _resolution(args, pipe) -> int:
    if args.resolution is not None:
        return args.resolution
    return int(pipe.unet.config.sample_size) * pipe.vae_scale_factor


def _prepare_out(args) -> None:
    if os.path.isdir(args.out) and os.listdir(args.out) and not args.overwrite:
        raise FileExistsError(f"--out {args.out!r} is not empty: pick a new folder or pass --overwrite")
    os.makedirs(args.out, exist_ok=True)


def _prompts(args, dataset: Optional[ImageCaptionFolder]) -> List[str]:
    if args.prompt:
        return list(args.prompt)
    return dataset.captions(args.num_prompts) if dataset is not None else []


def _label(record: Dict[str, Any]) -> str:
    return record.get("label") or "fine-tuned"


def run(args: argparse.Namespace, log=print):
    """Fine-tune as the options say; returns ``(pipeline, results)``. ``main`` is this plus printing."""
    device = _device(args)
    precision = _precision(args, device)
    checkpointing = args.gradient_checkpointing == "on" or (args.gradient_checkpointing == "auto" and device.type == "cuda")
    pipe = load_pipeline(args.model)
    resolution = _resolution(args, pipe)
    if resolution % (pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1)):
        raise ValueError(f"--resolution {resolution} must be a multiple of "
                         f"{pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1)} for this "
                         f"VAE and UNet")
    micro = args.batch_size // args.grad_accum
    if not args.estimate_memory:
        _prepare_out(args)
        dataset = ImageCaptionFolder(args.data, resolution, caption_column=args.caption_column,
                                     image_column=args.image_column)
        log(f"data: {len(dataset)} image-caption pairs from {args.data} at {resolution} px")
    pipe.to(device)
    # probed on the training device: milliseconds on a GPU, where bf16 on a CPU would take minutes
    memory = estimate_memory(pipe, batch_size=micro, resolution=resolution, precision=precision,
                             checkpointing=checkpointing)
    log(memory_line(memory))
    if args.estimate_memory:
        return pipe, {"memory_estimate": memory}
    prompts = _prompts(args, dataset)
    noise = initial_noise(pipe, len(prompts), args.seed, resolution, resolution)
    sample = dict(seed=args.seed, steps=args.sample_steps, guidance_scale=args.guidance_scale, precision=precision)
    before = sample_images(pipe, prompts, noise, **sample) if prompts else []
    evaluation = fixed_batch(pipe, dataset, args.eval_size, args.seed + 1, micro)
    losses = {"original": fixed_batch_loss(pipe, evaluation, precision=precision, micro_batch=micro)}
    log(f"fixed-batch loss of the original model: {losses['original']:.5f}")
    if args.baseline:
        report = ConversionReport()
        label = f"fine-tuned {type(_first_activation(pipe.unet)).__name__} (baseline)"
    else:
        report = convert_unet(pipe.unet, num_cones=args.num_cones, scaling=args.scaling, share_axis=args.share_axis)
        log(str(report))
        losses["converted"] = fixed_batch_loss(pipe, evaluation, precision=precision, micro_batch=micro)
        log(f"fixed-batch loss after conversion (before fine-tuning): {losses['converted']:.5f}")
        label = f"fine-tuned {args.scaling} CoLU G={args.num_cones}" + (" shared axis" if args.share_axis else "")
    record = {**conversion_record(pipe.unet, report), "label": label}
    if checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # the peak reported is fine-tuning's, not the samples'
    curve = finetune(
        pipe, dataset, steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
        weight_decay=args.weight_decay, weight_decay_mode=args.weight_decay_mode, precision=precision,
        max_grad_norm=args.max_grad_norm, seed=args.seed, log_every=args.log_every,
        on_log=lambda e: log(f"step {e['step']:>6d}  loss {e['loss']:.5f}  {e['seconds']:.0f} s"),
        on_save=lambda step: save_finetuned(pipe, args.out, {**record, "step": step}), save_every=args.save_every,
    )
    peak = torch.cuda.max_memory_allocated(device) / 1024 ** 3 if device.type == "cuda" else None
    if checkpointing:
        pipe.unet.disable_gradient_checkpointing()
    losses["final"] = fixed_batch_loss(pipe, evaluation, precision=precision, micro_batch=micro)
    log(f"fixed-batch loss after {args.steps} steps: {losses['final']:.5f}")
    record["step"] = args.steps
    save_finetuned(pipe, args.out, record)
    results = {
        "model": os.path.abspath(args.model), "data": os.path.abspath(args.data), "label": label,
        "baseline": bool(args.baseline), "device": str(device), "precision": precision,
        "gradient_checkpointing": checkpointing, "resolution": resolution,
        "settings": {k: getattr(args, k) for k in ("num_cones", "scaling", "share_axis", "steps", "batch_size",
                                                   "grad_accum", "lr", "weight_decay", "weight_decay_mode",
                                                   "max_grad_norm", "seed", "eval_size")},
        "optimizer": ("AdamW" if args.weight_decay_mode == "decoupled" else "Adam")
                     + f" lr {args.lr}, weight decay {args.weight_decay} ({args.weight_decay_mode})",
        "conversion": {"modules": len(record["modules"]), "sites": len(record.get("sites", [])),
                       "skipped": record.get("skipped", []), "functional": record.get("functional", [])},
        "fixed_batch_loss": losses, "eval_size": len(evaluation["latents"]),
        "curve": curve, "memory_estimate": memory,
    }
    if device.type == "cuda":
        results["peak_memory_gb"] = peak
    if not args.baseline:
        atomic_write_text(os.path.join(args.out, "conversion.txt"), str(report) + "\n")
    if prompts:
        after = sample_images(pipe, prompts, noise, **sample)
        results["samples"] = save_grid([("original", before), (label, after)], prompts,
                                       os.path.join(args.out, "samples.png"))
    atomic_write_json(os.path.join(args.out, "results.json"), results)
    log(f"saved to {args.out} (load with colu_lab.experiments.sd_finetune.load_converted({args.out!r}))")
    return pipe, results


def _first_activation(unet):
    return next((m for m in unet.modules() if isinstance(m, ACTIVATIONS)), nn.SiLU())


def compare(args: argparse.Namespace, log=print) -> Dict[str, Any]:
    """The ``--compare`` mode: one grid column per model, same prompts and initial noise; returns the layout."""
    device = _device(args)
    precision = _precision(args, device)
    _prepare_out(args)
    for folder in args.finetuned:
        read_record(folder)  # every folder is checked before any model is loaded
    pipe = load_pipeline(args.model).to(device)
    resolution = _resolution(args, pipe)
    dataset = None
    if not args.prompt:
        dataset = ImageCaptionFolder(args.data, resolution, caption_column=args.caption_column,
                                     image_column=args.image_column)
    prompts = _prompts(args, dataset)
    if not prompts:
        raise ValueError("no prompts: pass --prompt TEXT, or --num-prompts > 0 with --data")
    noise = initial_noise(pipe, len(prompts), args.seed, resolution, resolution)
    sample = dict(seed=args.seed, steps=args.sample_steps, guidance_scale=args.guidance_scale, precision=precision)
    columns = [("original", sample_images(pipe, prompts, noise, **sample))]
    del pipe  # one pipeline in memory at a time
    for folder in args.finetuned:
        other = load_converted(folder).to(device)
        columns.append((_label(other.colu_record), sample_images(other, prompts, noise, **sample)))
        del other
    layout = save_grid(columns, prompts, os.path.join(args.out, "comparison.png"))
    log(f"wrote {os.path.join(args.out, 'comparison.png')}: columns {layout['columns']}, {len(prompts)} prompts")
    return layout


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.show_config:
        print(show_config(args))
        return 0
    try:
        if args.compare:
            compare(args)
        else:
            run(args)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"colu finetune-diffusers: {exc}", file=sys.stderr)
        return 2
    return 0
