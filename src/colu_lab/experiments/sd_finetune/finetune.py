"""``colu finetune-diffusers``: fine-tune a pretrained text-to-image diffusion model into soft CoLU.

Loads a ``diffusers`` pipeline whose denoiser is a ``UNet2DConditionModel``
(Stable Diffusion 1.x/2.x and models built like them) from a local folder,
replaces every activation module of its UNet by soft CoLU with G = 32 cones
and no axis sharing (the paper's setting; on ``NCHW`` feature maps the cones
run over the channel axis, ``dim=1``), and fine-tunes the UNet on an
image-caption folder with the DDPM noise-prediction loss in the VAE's latent
space. ``--baseline`` fine-tunes the unconverted (SiLU) UNet the same way, for
the paper's comparison. The VAE and the text encoder stay frozen.

The fine-tuned pipeline is saved with ``save_pretrained`` (safetensors) and a
JSON record of the conversion beside the UNet's weights
(``unet/colu_conversion.json``); :func:`load_converted` loads it back with its
CoLU activations. ``--compare`` draws the same prompts from the same initial
noise through the original and fine-tuned pipelines side by side (the
paper's Figure 11).

Data follows Hugging Face's ``imagefolder`` convention: a folder (or its
``train/`` subfolder) with the images and a ``metadata.jsonl`` whose rows
name an image (``file_name``, relative to that file) and its caption (the
``text`` column by default). Nothing is downloaded: ``--model`` is a local
folder (``huggingface-cli download`` fetches one).

The activations called as functions inside diffusers' blocks (the GELU gate
of the transformer blocks' GEGLU feed-forward) cannot be swapped from
outside; they are listed in the output and in the record, and stay as they
are.

On a GPU the forward passes run under bf16 autocast and the UNet uses
gradient checkpointing. The command prints an estimate of the memory a step
needs (:func:`estimate_memory`; ``--estimate-memory`` prints it and exits):
about 19 GB plus the CUDA context for Stable Diffusion 1.5 at 512 px with
the paper's batch of 16.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from colu.convert import ConversionReport, apply_conversion_record, convert, conversion_record
from colu.files import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json_object
from colu_lab.framework.image_folder import load_image

__all__ = [
    "PAPER_NUM_CONES", "RECORD_FILE", "ImageCaptionFolder", "load_pipeline", "convert_unet", "load_converted",
    "save_finetuned", "read_record", "encode_prompts", "encode_images", "denoising_loss", "fixed_batch",
    "fixed_batch_loss", "finetune", "initial_noise", "sample_images", "save_grid", "estimate_memory", "parse_args",
    "run", "compare", "main",
]

PAPER_NUM_CONES = 32
RECORD_FILE = "colu_conversion.json"
# what `colu.convert` swaps in the UNet: Stable Diffusion's are all nn.SiLU; the others cover relatives
ACTIVATIONS = (nn.SiLU, nn.GELU, nn.ReLU, nn.Mish)
# the units diffusers recomputes under gradient checkpointing (ResnetBlock2D in every UNet block,
# BasicTransformerBlock inside Transformer2DModel): the memory estimate keeps only their inputs
CHECKPOINTED = ("ResnetBlock2D", "BasicTransformerBlock")


# --- data ----------------------------------------------------------------------------------------------------------


class ImageCaptionFolder(torch.utils.data.Dataset):
    """Images and captions in Hugging Face's ``imagefolder`` layout.

    ``root`` (or ``root/train``) holds ``metadata.jsonl``: one JSON object a
    line with the image's path relative to that file (``image_column``) and
    its caption (``caption_column``). Every row and image header is checked
    when the folder is opened, so a bad row or an unreadable image stops the
    run before training with the file (and line) named.

    Args:
        root: the folder.
        resolution: side of the square training images: the shorter side is
            resized to it (bicubic), then the centre is cropped.
        caption_column: the caption's key in ``metadata.jsonl``. Default: ``"text"``.
        image_column: the image path's key. Default: ``"file_name"``.

    Items are ``(image, caption)``: a float tensor ``(3, resolution,
    resolution)`` in ``[-1, 1]`` and a string.
    """

    def __init__(self, root: str, resolution: int, *, caption_column: str = "text", image_column: str = "file_name"):
        from PIL import Image, UnidentifiedImageError

        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 8:
            raise ValueError(f"resolution must be an int >= 8, got {resolution!r}")
        self.resolution = resolution
        if not os.path.isdir(root):
            raise FileNotFoundError(f"data folder {root!r} does not exist: pass --data a folder with metadata.jsonl")
        folder = root
        if not os.path.isfile(os.path.join(folder, "metadata.jsonl")) and os.path.isfile(
            os.path.join(root, "train", "metadata.jsonl")
        ):
            folder = os.path.join(root, "train")
        metadata = os.path.join(folder, "metadata.jsonl")
        if not os.path.isfile(metadata):
            raise FileNotFoundError(
                f"no metadata.jsonl in {root!r}: an image-caption folder holds the images and a metadata.jsonl with "
                f'one line per image, e.g. {{"{image_column}": "0001.png", "{caption_column}": "a red bird"}}'
            )
        self.items: List[Tuple[str, str]] = []
        with open(metadata, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{metadata}, line {number}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{where}: not valid JSON ({exc.msg}); each line must be one JSON object") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
                for column in (image_column, caption_column):
                    if not isinstance(row.get(column), str):
                        what = "has no" if column not in row else "has a non-string"
                        raise ValueError(
                            f"{where}: {what} {column!r} column (keys: {sorted(row)}); name the columns with "
                            f"--image-column/--caption-column"
                        )
                path = os.path.normpath(os.path.join(folder, row[image_column]))
                if not os.path.isfile(path):
                    raise FileNotFoundError(f"{where}: image {row[image_column]!r} not found (looked for {path})")
                try:
                    with Image.open(path) as image:
                        image.size  # the header is read by open; a file it cannot identify raises there
                except (UnidentifiedImageError, OSError) as exc:
                    raise ValueError(f"{where}: {path} is not a readable image ({exc}); remove the row or the file") from None
                self.items.append((path, row[caption_column]))
        if not self.items:
            raise ValueError(f"{metadata} lists no images: add one line per image")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, str]:
        # the same decoding, resize (shorter side) and centre crop as diffusion-unet's image folders; a body
        # that fails to decode after its header opened is named in the error

        path, caption = self.items[index]
        data = torch.from_numpy(load_image(path, self.resolution, channels=3))
        return data.float() / 127.5 - 1.0, caption

    def captions(self, n: int) -> List[str]:
        """The first ``n`` captions (in file order)."""
        return [caption for _, caption in self.items[:n]]


# --- the pipeline and its conversion ---------------------------------------------------------------------------------


def load_pipeline(path: str, **kwargs):
    """Load a ``diffusers`` text-to-image pipeline from the local folder ``path``; nothing is downloaded.

    Args:
        path: a folder written by ``save_pretrained`` (``model_index.json``
            and one subfolder per component).
        **kwargs: passed to ``diffusers.DiffusionPipeline.from_pretrained``.
            Without a ``torch_dtype``/``dtype`` the pipeline is cast to
            float32: fine-tuning keeps full-precision weights whatever the
            folder stores (an fp16 copy loads losslessly).

    Returns:
        The pipeline; it has a ``UNet2DConditionModel`` ``unet``, a ``vae``,
        one ``text_encoder`` and ``tokenizer`` and a ``scheduler``.
    """
    import diffusers

    if not os.path.isfile(os.path.join(path, "model_index.json")):
        raise FileNotFoundError(
            f"{path!r} is not a local diffusers pipeline folder (no model_index.json); nothing is downloaded: "
            f"fetch one first, e.g. huggingface-cli download <repo> --local-dir {path}"
        )
    pipe = diffusers.DiffusionPipeline.from_pretrained(path, local_files_only=True, **kwargs)
    missing = [c for c in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if getattr(pipe, c, None) is None]
    if missing:
        raise ValueError(f"{path}: a {type(pipe).__name__} without {', '.join(missing)}; a Stable-Diffusion-style "
                         f"text-to-image pipeline is needed")
    components = (pipe.unet, pipe.vae, pipe.text_encoder)
    if "torch_dtype" not in kwargs and "dtype" not in kwargs and any(
        p.dtype != torch.float32 for c in components for p in c.parameters()
    ):
        # cast after loading rather than passing a dtype, whose keyword differs between diffusers versions
        pipe.to(torch.float32)
    if type(pipe.unet).__name__ != "UNet2DConditionModel":
        raise ValueError(f"{path}: its unet is a {type(pipe.unet).__name__}, this command fine-tunes a UNet2DConditionModel")
    config = pipe.unet.config
    if config.get("addition_embed_type") is not None or config.get("class_embed_type") is not None:
        raise ValueError(
            f"{path}: this UNet takes extra conditioning (addition_embed_type={config.get('addition_embed_type')!r}, "
            f"class_embed_type={config.get('class_embed_type')!r}, as in SDXL or upscalers); only text-conditioned "
            f"UNets (Stable Diffusion 1.x/2.x) are supported"
        )
    if pipe.scheduler.config.get("prediction_type", "epsilon") not in ("epsilon", "v_prediction"):
        raise ValueError(f"{path}: scheduler prediction_type {pipe.scheduler.config['prediction_type']!r}; "
                         f"the loss supports epsilon and v_prediction")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _example_input(unet, latent: int, tokens: int = 8):
    """One small input reaching every activation of a text-conditioned UNet (for colu.convert's site search)."""
    param = next(unet.parameters())
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(1, unet.config.in_channels, latent, latent, generator=g)
    context = torch.randn(1, tokens, unet.config.cross_attention_dim, generator=g)
    return (sample.to(param), torch.tensor([500], device=param.device), context.to(param))


def convert_unet(unet: nn.Module, *, num_cones: int = PAPER_NUM_CONES, scaling: str = "soft",
                 share_axis: bool = False) -> ConversionReport:
    """Replace every activation module of a ``UNet2DConditionModel`` with CoLU, in place.

    The defaults are the paper's fine-tuning setting: soft CoLU, G = 32 cones,
    no axis sharing. Each site's channel axis comes from one forward pass of
    a small input (``dim=1`` on feature maps, ``-1`` on the time embedding).

    Returns:
        :func:`colu.convert`'s report: the sites replaced, any skipped (a width
        that is not a multiple of ``num_cones``) and the functional calls left.
    """
    # the smallest latent that every down/up level can halve and restore
    latent = 2 ** len(unet.config.block_out_channels)
    return convert(unet, num_cones=num_cones, scaling=scaling, share_axis=share_axis, replace=ACTIVATIONS,
                   example_input=_example_input(unet, latent))


def save_finetuned(pipe, path: str, record: Dict[str, Any]) -> None:
    """Save ``pipe`` with ``save_pretrained`` and the conversion ``record`` as ``unet/colu_conversion.json``.

    The record is removed first and written last, so a folder that has it
    has every weight it describes (a save cut short leaves no record, and
    :func:`load_converted` refuses the folder).
    """
    file = os.path.join(path, "unet", RECORD_FILE)
    if os.path.exists(file):
        os.remove(file)
    pipe.save_pretrained(path)
    atomic_write_json(file, record)


def read_record(path: str) -> Dict[str, Any]:
    """The conversion record saved with a fine-tuned pipeline in ``path``."""
    file = os.path.join(path, "unet", RECORD_FILE)
    if not os.path.isfile(file):
        raise FileNotFoundError(
            f"{path!r} has no unet/{RECORD_FILE}, so it was not saved by colu finetune-diffusers; an unconverted "
            f"pipeline loads with diffusers.DiffusionPipeline.from_pretrained({path!r})"
        )
    try:
        return read_json_object(file)
    except ValueError as exc:
        raise ValueError(f"{file} is not a conversion record ({exc})") from None


def load_converted(path: str, **kwargs):
    """Load a pipeline saved by ``colu finetune-diffusers``, with the CoLU activations it was trained with.

    The weights load through ``diffusers`` (safetensors); the record beside
    the UNet's weights (``unet/colu_conversion.json``) puts the same
    :class:`colu.CoLU` modules back in place of the UNet's SiLUs (a
    ``--baseline`` folder's record lists none, so its UNet loads unchanged).
    Plain ``diffusers`` loads a CoLU folder's weights into SiLU activations
    without a warning: load such folders with this function.

    Args:
        path: the folder passed as ``--out``.
        **kwargs: passed to ``diffusers.DiffusionPipeline.from_pretrained``.

    Returns:
        The pipeline; ``pipe.colu_record`` holds the record.

    Example::

        >>> pipe = colu.load_converted("runs/sd-colu")
        >>> image = pipe("a blue bird", num_inference_steps=50).images[0]
    """
    record = read_record(path)
    pipe = load_pipeline(path, **kwargs)
    apply_conversion_record(pipe.unet, record)
    pipe.colu_record = record
    return pipe


# --- loss, training --------------------------------------------------------------------------------------------------


def _autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def encode_prompts(pipe, captions: Sequence[str]) -> torch.Tensor:
    """The text encoder's last hidden states for ``captions`` (padded to the tokenizer's length)."""
    tokens = pipe.tokenizer(list(captions), padding="max_length", max_length=pipe.tokenizer.model_max_length,
                            truncation=True, return_tensors="pt")
    return pipe.text_encoder(tokens.input_ids.to(pipe.text_encoder.device))[0]


def encode_images(vae, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Scaled VAE latents of ``images`` in ``[-1, 1]``: a sample of the posterior, or its mean without ``generator``."""
    dist = vae.encode(images.to(vae.device, vae.dtype)).latent_dist
    latents = dist.mean if generator is None else dist.sample(generator)
    shift = vae.config.get("shift_factor") or 0.0
    return (latents - shift) * vae.config.scaling_factor


def denoising_loss(unet, scheduler, latents: torch.Tensor, context: torch.Tensor, noise: torch.Tensor,
                   timesteps: torch.Tensor) -> torch.Tensor:
    """DDPM's loss: the mean squared error of the UNet's prediction of the noise (or of ``v``).

    The target follows the scheduler's ``prediction_type``: ``noise`` for
    ``epsilon`` (Stable Diffusion 1.x), ``v`` for ``v_prediction`` (2.x at 768 px).
    """
    noisy = scheduler.add_noise(latents, noise, timesteps)
    if scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    prediction = unet(noisy, timesteps, context).sample
    return F.mse_loss(prediction.float(), target.float())


def _training_scheduler(pipe):
    import diffusers

    # the pipeline's own sampler (often PNDM) shares the noise schedule; DDPM's add_noise is what training uses
    return diffusers.DDPMScheduler.from_config(pipe.scheduler.config)


@torch.no_grad()
def fixed_batch(pipe, dataset: ImageCaptionFolder, size: int, seed: int, micro_batch: int) -> Dict[str, torch.Tensor]:
    """A fixed evaluation batch: the first ``size`` images' posterior-mean latents, their captions' embeddings,
    noise drawn from ``seed`` and timesteps spread evenly over the schedule.

    Computed once from the frozen VAE and text encoder, it is the same input
    for the original, the converted and the fine-tuned UNet, so their losses
    on it compare like with like."""
    size = min(size, len(dataset))
    latents, contexts = [], []
    for start in range(0, size, micro_batch):
        items = [dataset[i] for i in range(start, min(size, start + micro_batch))]
        latents.append(encode_images(pipe.vae, torch.stack([x for x, _ in items])).float().cpu())
        contexts.append(encode_prompts(pipe, [c for _, c in items]).float().cpu())
    latents, contexts = torch.cat(latents), torch.cat(contexts)
    g = torch.Generator().manual_seed(seed)
    steps = _training_scheduler(pipe).config.num_train_timesteps
    timesteps = torch.linspace(0, steps - 1, size).round().long()
    return {"latents": latents, "context": contexts, "noise": torch.randn(latents.shape, generator=g),
            "timesteps": timesteps}


@torch.no_grad()
def fixed_batch_loss(pipe, batch: Dict[str, torch.Tensor], *, precision: str = "fp32", micro_batch: int = 4) -> float:
    """The UNet's mean denoising loss on a :func:`fixed_batch` (eval mode; training mode restored)."""
    unet, scheduler = pipe.unet, _training_scheduler(pipe)
    device = unet.device
    was_training = unet.training
    unet.eval()
    total, n = 0.0, len(batch["latents"])
    try:
        for start in range(0, n, micro_batch):
            part = {k: v[start:start + micro_batch].to(device) for k, v in batch.items()}
            with _autocast(device, precision):
                loss = denoising_loss(unet, scheduler, part["latents"], part["context"], part["noise"],
                                      part["timesteps"])
            total += float(loss) * len(part["latents"])
    finally:
        unet.train(was_training)
    return total / n


def _batches(n: int, batch_size: int, generator: torch.Generator):
    """Endless shuffled index batches; an epoch's last partial batch is carried into the next epoch."""
    pending: List[int] = []
    while True:
        pending += torch.randperm(n, generator=generator).tolist()
        while len(pending) >= batch_size:
            yield pending[:batch_size]
            pending = pending[batch_size:]


def finetune(pipe, dataset: ImageCaptionFolder, *, steps: int, batch_size: int, grad_accum: int = 1,
             lr: float = 1e-4, weight_decay: float = 1e-2, weight_decay_mode: str = "l2", precision: str = "fp32",
             max_grad_norm: float = 0.0, seed: int = 0, log_every: int = 50, on_log=None,
             on_save=None, save_every: int = 0) -> List[Dict[str, float]]:
    """Fine-tune ``pipe.unet`` on ``dataset`` with the denoising loss; the VAE and text encoder stay frozen.

    Args:
        pipe: from :func:`load_pipeline` (converted or not), on its device.
        dataset: an :class:`ImageCaptionFolder`.
        steps: optimiser steps.
        batch_size: images per step, in ``grad_accum`` micro-batches of
            ``batch_size // grad_accum`` (it must divide) whose gradients add up.
        lr, weight_decay: Adam's; ``weight_decay_mode`` ``"l2"`` adds
            ``weight_decay * w`` to the gradient (``torch.optim.Adam``'s own),
            ``"decoupled"`` shrinks the weights apart from it (``AdamW``).
        precision: ``"bf16"`` runs the forward passes under bfloat16
            autocast (the weights and Adam's state stay float32), ``"fp32"`` does not.
        max_grad_norm: clip the gradient's norm to this; 0 does not clip.
        seed: seeds the order of the images, the noise and the timesteps.
        log_every: steps between calls of ``on_log(entry)``.
        on_save, save_every: ``on_save(step)`` every ``save_every`` steps (0: never).

    Returns:
        The learning curve: ``{"step", "loss", "seconds"}`` every ``log_every``
        steps, ``loss`` the mean training loss since the previous entry.
    """
    if batch_size % grad_accum:
        raise ValueError(f"batch_size={batch_size} is not a multiple of grad_accum={grad_accum}: pick one that divides it")
    micro = batch_size // grad_accum
    unet, vae, text_encoder = pipe.unet, pipe.vae, pipe.text_encoder
    device = unet.device
    vae.requires_grad_(False).eval()
    text_encoder.requires_grad_(False).eval()
    unet.requires_grad_(True).train()
    scheduler = _training_scheduler(pipe)
    optimizer_class = torch.optim.AdamW if weight_decay_mode == "decoupled" else torch.optim.Adam
    optimizer = optimizer_class(unet.parameters(), lr=lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    order = _batches(len(dataset), micro, g)
    curve: List[Dict[str, float]] = []
    window, window_n, start = 0.0, 0, time.perf_counter()
    for step in range(1, steps + 1):
        optimizer.zero_grad(set_to_none=True)
        for _ in range(grad_accum):
            items = [dataset[i] for i in next(order)]
            images = torch.stack([x for x, _ in items])
            with torch.no_grad(), _autocast(device, precision):
                latents = encode_images(vae, images, generator=g).float()
                context = encode_prompts(pipe, [c for _, c in items])
            # noise and timesteps drawn on the CPU from one generator: the same run on any device
            noise = torch.randn(latents.shape, generator=g).to(device)
            timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(items),), generator=g).to(device)
            with _autocast(device, precision):
                loss = denoising_loss(unet, scheduler, latents, context, noise, timesteps)
            (loss / grad_accum).backward()
            window += float(loss.detach()) / grad_accum
        if max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(unet.parameters(), max_grad_norm)
        optimizer.step()
        window_n += 1
        if not math.isfinite(window):
            raise FloatingPointError(f"the training loss became {window} at step {step}: lower --lr, or pass "
                                     f"--max-grad-norm 1")
        if step % log_every == 0 or step == steps:
            entry = {"step": step, "loss": window / window_n, "seconds": time.perf_counter() - start}
            curve.append(entry)
            if on_log is not None:
                on_log(entry)
            window, window_n = 0.0, 0
        if on_save is not None and save_every and step % save_every == 0 and step != steps:
            on_save(step)
    unet.eval()
    return curve


# --- samples and grids -----------------------------------------------------------------------------------------------


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
        with _autocast(device, precision):
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


# --- memory ------------------------------------------------------------------------------------------------------------


def _is_weight(t: torch.Tensor, params: set) -> bool:
    """One of the parameters (``params``: their ids), autocast's low-precision copy of one, or a view of either
    (``linear`` saves ``weight.t()``): counted from the parameter count instead."""
    if t._base is not None:
        t = t._base
    if t.grad_fn is None:
        return id(t) in params
    fn = t.grad_fn
    if type(fn).__name__ != "ToCopyBackward0" or not fn.next_functions:
        return False
    source = fn.next_functions[0][0]
    return id(getattr(source, "variable", None)) in params


def _saved_bytes(unet, latent: int, batch: int, tokens: int, precision: str) -> Dict[str, int]:
    """Bytes autograd keeps for the backward pass of one UNet forward, by where they were saved.

    Returns ``outside`` (saved outside the checkpointed units), ``units``
    (saved inside them, all together), ``largest_unit`` (the most one unit
    saves) and ``unit_inputs`` (the units' inputs: what checkpointing keeps)."""
    units = {id(m) for m in unet.modules() if type(m).__name__ in CHECKPOINTED}
    stack: List[int] = []
    counts = {"outside": 0, "unit_inputs": 0}
    inside: Dict[int, int] = {}
    seen = set()
    params = {id(p) for p in unet.parameters()}

    def pre(module, args):
        if not stack:
            counts["unit_inputs"] += sum(a.untyped_storage().nbytes() for a in args if isinstance(a, torch.Tensor))
        stack.append(id(module))

    def post(module, args, out):
        stack.pop()

    def pack(t):
        if not _is_weight(t, params):
            storage = t.untyped_storage()
            # a tensor saved by several ops (or several views of one) is held once
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                if stack:
                    inside[stack[0]] = inside.get(stack[0], 0) + storage.nbytes()
                else:
                    counts["outside"] += storage.nbytes()
        return t

    handles = [m.register_forward_pre_hook(pre) for m in unet.modules() if id(m) in units]
    handles += [m.register_forward_hook(post) for m in unet.modules() if id(m) in units]
    sample, t, context = _example_input(unet, latent, tokens)
    sample, context = sample.expand(batch, -1, -1, -1).clone(), context.expand(batch, -1, -1).clone()
    # what autograd keeps depends on which weights train: all of them, as in fine-tuning
    flags = [p.requires_grad for p in unet.parameters()]
    unet.requires_grad_(True)
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x), \
                _autocast(sample.device, precision):
            out = unet(sample, t.expand(batch), context).sample
        del out
    finally:
        for h in handles:
            h.remove()
        for p, flag in zip(unet.parameters(), flags):
            p.requires_grad_(flag)
    return {**counts, "units": sum(inside.values()), "largest_unit": max(inside.values(), default=0)}


def estimate_memory(pipe, *, batch_size: int, resolution: int, precision: str, checkpointing: bool) -> Dict[str, Any]:
    """Estimate the GPU memory one fine-tuning step needs, from parameter and activation counts.

    An estimate, not a measurement of a GPU run:

    * trainable weights, their gradients and Adam's two moments, float32: 16
      bytes per UNet parameter; with bf16 autocast, 2 more for the bfloat16
      copies of the weights autocast holds during the forward pass;
    * the frozen VAE and text encoder, float32 (they are not cast, so the
      saved pipeline keeps their precision): 4 bytes per parameter;
    * the activations autograd keeps for the backward pass, counted by a
      forward pass of the UNet at a small latent on this machine (its
      ``saved_tensors_hooks``, at this precision), for one and two images
      (which separates the per-image part), and scaled to ``resolution`` by
      area and to ``batch_size``. With gradient checkpointing only what is
      saved outside the recomputed blocks (``ResnetBlock2D``,
      ``BasicTransformerBlock``), their inputs, and the largest block's own
      activations (kept while it is recomputed) count.

    Not counted: the CUDA context and kernels' workspaces, the allocator's
    fragmentation and the VAE's transient encoding of the batch (together
    about 1-3 GB), and a different attention kernel on the GPU than here.

    Args:
        pipe: a pipeline from :func:`load_pipeline` (converted or not).
        batch_size: images per forward pass (the micro-batch).
        resolution: image side in pixels.
        precision: ``"bf16"`` or ``"fp32"``.
        checkpointing: whether the UNet uses gradient checkpointing.

    Returns:
        The parts in GB (``weights_and_optimizer_gb``, ``weight_copies_gb``,
        ``frozen_gb``, ``activations_gb``), their sum ``total_gb``, the counts
        they come from, and ``"estimate": True``.
    """
    unet = pipe.unet
    trainable = sum(p.numel() for p in unet.parameters())
    frozen = sum(p.numel() for m in (pipe.vae, pipe.text_encoder) for p in m.parameters())
    latent = resolution // pipe.vae_scale_factor
    # the smallest latent every level can halve: per-pixel tensors dominate already, and the probe stays cheap
    probe = min(latent, 2 ** len(unet.config.block_out_channels))
    tokens = pipe.tokenizer.model_max_length
    one, two = (_saved_bytes(unet, probe, b, tokens, precision) for b in (1, 2))
    scale = batch_size * (latent / probe) ** 2

    def at_size(key):
        per_image = two[key] - one[key]
        return max(0, one[key] - per_image) + per_image * scale

    if checkpointing:
        kept = at_size("outside") + at_size("unit_inputs") + at_size("largest_unit")
    else:
        kept = at_size("outside") + at_size("units")
    gb = 1024 ** 3
    result = {
        "estimate": True,
        "params_trainable": trainable,
        "params_frozen": frozen,
        "batch_size": batch_size,
        "resolution": resolution,
        "precision": precision,
        "gradient_checkpointing": checkpointing,
        "weights_and_optimizer_gb": trainable * 16 / gb,  # weights, gradients, exp_avg, exp_avg_sq
        "weight_copies_gb": trainable * 2 / gb if precision == "bf16" else 0.0,
        "frozen_gb": frozen * 4 / gb,
        "activations_gb": kept / gb,
    }
    result["total_gb"] = sum(result[k] for k in ("weights_and_optimizer_gb", "weight_copies_gb", "frozen_gb",
                                                 "activations_gb"))
    return result


def _memory_line(m: Dict[str, Any]) -> str:
    return (f"memory estimate (not a measurement) for batch {m['batch_size']} at {m['resolution']} px, {m['precision']}, "
            f"checkpointing {'on' if m['gradient_checkpointing'] else 'off'}: {m['total_gb']:.1f} GB = "
            f"{m['weights_and_optimizer_gb']:.1f} GB UNet weights+grads+Adam ({m['params_trainable'] / 1e6:.0f} M params) "
            f"+ {m['weight_copies_gb']:.1f} GB bf16 weight copies + {m['frozen_gb']:.1f} GB frozen VAE and text encoder "
            f"+ {m['activations_gb']:.1f} GB activations, plus about 1-3 GB of CUDA context and allocator overhead")


# --- command line ----------------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    """The options of ``colu finetune-diffusers`` (``--help`` lists them)."""
    p = argparse.ArgumentParser(
        prog="colu finetune-diffusers",
        description="Fine-tune a pretrained Stable-Diffusion-style pipeline (a local folder) with its UNet's "
                    "activations replaced by soft CoLU (G=32, no axis sharing), or unconverted with --baseline; "
                    "--compare draws the same prompts and noise through several such pipelines.",
    )
    p.add_argument("--model", required=True, help="local folder of the pretrained diffusers pipeline (model_index.json); "
                                                   "nothing is downloaded")
    p.add_argument("--data", help="image-caption folder: images and metadata.jsonl (Hugging Face imagefolder layout); "
                                  "required for fine-tuning; with --compare its first captions are the default prompts")
    p.add_argument("--out", help="output folder: the fine-tuned pipeline, results.json, samples.png "
                                                "(with --compare: comparison.png and comparison.json)")
    p.add_argument("--baseline", action="store_true", help="fine-tune the unconverted (SiLU) UNet the same way")
    p.add_argument("--compare", action="store_true",
                   help="no training: draw --prompt(s) from the same initial noise through --model and every "
                        "--finetuned folder, one column each (the paper's Figure 11)")
    p.add_argument("--finetuned", nargs="+", default=[], metavar="DIR",
                   help="with --compare: folders written by this command (loaded with colu.load_converted)")
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
    p.add_argument("--weight-decay-mode", choices=("l2", "decoupled"), default="l2",
                   help="l2: added to the gradient, as torch.optim.Adam does (the paper's 'Adam with weight decay'); "
                        "decoupled: AdamW (default: %(default)s)")
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
    args = p.parse_args(argv)
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
    elif not args.estimate_memory and not (args.data and args.out):
        p.error("fine-tuning needs --data DIR (images and metadata.jsonl) and --out DIR")
    if args.resolution is not None and args.resolution < 8:
        p.error(f"--resolution must be >= 8, got {args.resolution}")
    return args


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
    log(_memory_line(memory))
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
    log(f"saved to {args.out} (load with colu.load_converted({args.out!r}))")
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
    try:
        if args.compare:
            compare(args)
        else:
            run(args)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"colu finetune-diffusers: {exc}", file=sys.stderr)
        return 2
    return 0
