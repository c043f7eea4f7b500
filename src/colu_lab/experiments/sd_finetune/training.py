"""Fine-tuning the UNet: the prompt and image encoders, DDPM's denoising loss, the fixed evaluation batch and its
loss, and the training loop (:func:`finetune`); the VAE and the text encoder stay frozen.

``diffusers`` is imported when a training scheduler is built, not when this module is imported.
"""

from __future__ import annotations

import math
import time
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from colu_lab.experiments.sd_finetune.data import ImageCaptionFolder
from colu_lab.experiments.sd_finetune.pipeline import precision_autocast
from colu_lab.framework.readings import DIFFUSION_WEIGHT_DECAY

__all__ = ["encode_prompts", "encode_images", "denoising_loss", "fixed_batch", "fixed_batch_loss", "make_optimizer",
           "finetune"]


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
            with precision_autocast(device, precision):
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


def make_optimizer(params, *, lr: float, weight_decay: float,
                   weight_decay_mode: str = DIFFUSION_WEIGHT_DECAY.value) -> torch.optim.Optimizer:
    """The fine-tune's optimiser: ``torch.optim.AdamW`` for decoupled decay (the reading the diffusion UNet
    shares), ``torch.optim.Adam`` with its own L2 ``weight_decay`` for ``"l2"``."""
    if weight_decay_mode not in ("decoupled", "l2"):
        raise ValueError(f"weight_decay_mode={weight_decay_mode!r} is not one of decoupled, l2")
    optimizer_class = torch.optim.AdamW if weight_decay_mode == "decoupled" else torch.optim.Adam
    return optimizer_class(params, lr=lr, weight_decay=weight_decay)


def finetune(pipe, dataset: ImageCaptionFolder, *, steps: int, batch_size: int, grad_accum: int = 1,
             lr: float = 1e-4, weight_decay: float = 1e-2, weight_decay_mode: str = DIFFUSION_WEIGHT_DECAY.value,
             precision: str = "fp32",
             max_grad_norm: float = 0.0, seed: int = 0, log_every: int = 50, on_log=None,
             on_save=None, save_every: int = 0) -> List[Dict[str, float]]:
    """Fine-tune ``pipe.unet`` on ``dataset`` with the denoising loss; the VAE and text encoder stay frozen.

    Args:
        pipe: from :func:`load_pipeline` (converted or not), on its device.
        dataset: an :class:`ImageCaptionFolder`.
        steps: optimiser steps.
        batch_size: images per step, in ``grad_accum`` micro-batches of
            ``batch_size // grad_accum`` (it must divide) whose gradients add up.
        lr, weight_decay: Adam's; ``weight_decay_mode`` ``"decoupled"``
            (default, the reading :data:`colu_lab.framework.readings.DIFFUSION_WEIGHT_DECAY`
            that the diffusion UNet shares) shrinks the weights apart from the
            gradient (``torch.optim.AdamW``), ``"l2"`` adds ``weight_decay * w``
            to the gradient (``torch.optim.Adam``'s own).
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
    optimizer = make_optimizer(unet.parameters(), lr=lr, weight_decay=weight_decay,
                               weight_decay_mode=weight_decay_mode)
    g = torch.Generator().manual_seed(seed)
    order = _batches(len(dataset), micro, g)
    curve: List[Dict[str, float]] = []
    window, window_n, start = 0.0, 0, time.perf_counter()
    for step in range(1, steps + 1):
        optimizer.zero_grad(set_to_none=True)
        for _ in range(grad_accum):
            items = [dataset[i] for i in next(order)]
            images = torch.stack([x for x, _ in items])
            with torch.no_grad(), precision_autocast(device, precision):
                latents = encode_images(vae, images, generator=g).float()
                context = encode_prompts(pipe, [c for _, c in items])
            # noise and timesteps drawn on the CPU from one generator: the same run on any device
            noise = torch.randn(latents.shape, generator=g).to(device)
            timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(items),), generator=g).to(device)
            with precision_autocast(device, precision):
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
