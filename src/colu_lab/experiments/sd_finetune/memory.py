"""The memory estimate: the GPU memory one fine-tuning step needs (:func:`estimate_memory`), from parameter
counts and the activations autograd keeps in a forward pass of the UNet at a small latent, and its one-line
summary (:func:`memory_line`)."""

from __future__ import annotations

from typing import Any, Dict, List

import torch

from colu_lab.experiments.sd_finetune.pipeline import precision_autocast, unet_example_input

__all__ = ["CHECKPOINTED", "estimate_memory", "memory_line"]

# the units diffusers recomputes under gradient checkpointing (ResnetBlock2D in every UNet block,
# BasicTransformerBlock inside Transformer2DModel): the memory estimate keeps only their inputs
CHECKPOINTED = ("ResnetBlock2D", "BasicTransformerBlock")


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
    sample, t, context = unet_example_input(unet, latent, tokens)
    sample, context = sample.expand(batch, -1, -1, -1).clone(), context.expand(batch, -1, -1).clone()
    # what autograd keeps depends on which weights train: all of them, as in fine-tuning
    flags = [p.requires_grad for p in unet.parameters()]
    unet.requires_grad_(True)
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x), \
                precision_autocast(sample.device, precision):
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


def memory_line(m: Dict[str, Any]) -> str:
    return (f"memory estimate (not a measurement) for batch {m['batch_size']} at {m['resolution']} px, {m['precision']}, "
            f"checkpointing {'on' if m['gradient_checkpointing'] else 'off'}: {m['total_gb']:.1f} GB = "
            f"{m['weights_and_optimizer_gb']:.1f} GB UNet weights+grads+Adam ({m['params_trainable'] / 1e6:.0f} M params) "
            f"+ {m['weight_copies_gb']:.1f} GB bf16 weight copies + {m['frozen_gb']:.1f} GB frozen VAE and text encoder "
            f"+ {m['activations_gb']:.1f} GB activations, plus about 1-3 GB of CUDA context and allocator overhead")
