"""The pretrained pipeline and its conversion: loading a local Stable-Diffusion-style ``diffusers`` pipeline,
converting its UNet's activations to CoLU, saving the fine-tuned pipeline with its conversion record and loading
it back (:func:`load_converted`); and the precision the forward passes run at (:func:`precision_autocast`).

``diffusers`` is imported when a pipeline is loaded, not when this module is imported.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Dict

import torch
from torch import nn

from colu.convert import ConversionReport, apply_conversion_record, convert
from colu.files import atomic_write_json, read_json_object

__all__ = [
    "PAPER_NUM_CONES", "RECORD_FILE", "ACTIVATIONS", "load_pipeline", "unet_example_input", "convert_unet",
    "save_finetuned", "read_record", "load_converted", "precision_autocast",
]

PAPER_NUM_CONES = 32
RECORD_FILE = "colu_conversion.json"
# what `colu.convert` swaps in the UNet: Stable Diffusion's are all nn.SiLU; the others cover relatives
ACTIVATIONS = (nn.SiLU, nn.GELU, nn.ReLU, nn.Mish)


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


def unet_example_input(unet, latent: int, tokens: int = 8):
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
                   example_input=unet_example_input(unet, latent))


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

        >>> from colu_lab.experiments.sd_finetune import load_converted
        >>> pipe = load_converted("runs/sd-colu")
        >>> image = pipe("a blue bird", num_inference_steps=50).images[0]
    """
    record = read_record(path)
    pipe = load_pipeline(path, **kwargs)
    apply_conversion_record(pipe.unet, record)
    pipe.colu_record = record
    return pipe


def precision_autocast(device: torch.device, precision: str):
    """bfloat16 autocast on ``device`` for ``precision`` ``"bf16"``; a context that does nothing for ``"fp32"``."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
