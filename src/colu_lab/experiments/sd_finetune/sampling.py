"""Samples and grids: the shared initial noise, images drawn with a pipeline's own sampler, and the PNG grid
(one column per model, one row per prompt) with its JSON layout.

Pillow is imported when a grid is written, not when this module is imported.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Sequence, Tuple

import torch

from colu.files import atomic_write_bytes, atomic_write_json
from colu_lab.experiments.sd_finetune.pipeline import precision_autocast

__all__ = ["initial_noise", "sample_images", "save_grid"]


def initial_noise(pipe, count: int, seed: int, height: int, width: int) -> List[torch.Tensor]:
    """``count`` initial latents drawn on the CPU from ``seed``: identical for every model of the same shape."""
    factor = pipe.vae_scale_factor
    shape = (1, pipe.unet.config.in_channels, height // factor, width // factor)
    return [torch.randn(shape, generator=torch.Generator().manual_seed(seed + i)) for i in range(count)]


@torch.no_grad()
def sample_images(pipe, prompts: Sequence[str], noise: Sequence[torch.Tensor], *, seed: int, steps: int,
                  guidance_scale: float, precision: str = "fp32"):
    """One PIL image per prompt from the given initial latents, with the pipeline's own sampler.

    A stochastic sampler draws from a generator seeded with ``seed + i`` for
    prompt ``i``, so two pipelines see the same noise throughout."""
    device = pipe.unet.device
    images = []
    for i, (prompt, latents) in enumerate(zip(prompts, noise)):
        with precision_autocast(device, precision):
            out = pipe(prompt, latents=latents.to(device), num_inference_steps=steps, guidance_scale=guidance_scale,
                       height=latents.shape[-2] * pipe.vae_scale_factor, width=latents.shape[-1] * pipe.vae_scale_factor,
                       generator=torch.Generator().manual_seed(seed + i), output_type="pil")
        images.append(out.images[0])
    return images


def save_grid(columns: Sequence[Tuple[str, Sequence[Any]]], prompts: Sequence[str], path: str) -> Dict[str, Any]:
    """Write a PNG with one column per model and one row per prompt, model names on top.

    Args:
        columns: ``(label, images)`` pairs, each with one PIL image per prompt.
        prompts: the row prompts (written to ``<path>.json`` with the labels).
        path: the PNG's path.

    Returns:
        The layout written beside it: ``{"columns", "prompts", "cell"}``.
    """
    from PIL import Image, ImageDraw

    cell_w, cell_h = columns[0][1][0].size
    header = 14
    grid = Image.new("RGB", (cell_w * len(columns), header + cell_h * len(prompts)), "white")
    draw = ImageDraw.Draw(grid)
    for c, (label, images) in enumerate(columns):
        if len(images) != len(prompts):
            raise ValueError(f"column {label!r} has {len(images)} images for {len(prompts)} prompts")
        text = label
        # the label is cut to its cell, so that neighbouring labels do not overlap
        while text and draw.textlength(text) > cell_w - 4:
            text = text[:-1]
        draw.text((c * cell_w + 2, 1), text, fill="black")
        for r, image in enumerate(images):
            grid.paste(image.convert("RGB").resize((cell_w, cell_h)), (c * cell_w, header + r * cell_h))
    import io

    buffer = io.BytesIO()
    grid.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    layout = {"columns": [label for label, _ in columns], "prompts": list(prompts), "cell": [cell_w, cell_h]}
    atomic_write_json(os.path.splitext(path)[0] + ".json", layout)
    return layout
