"""The Stable Diffusion fine-tune (Sec. 5.5, Fig. 11), ``colu finetune-diffusers``: fine-tune a pretrained
text-to-image diffusion model into soft CoLU.

Loads a ``diffusers`` pipeline whose denoiser is a ``UNet2DConditionModel``
(Stable Diffusion 1.x/2.x and models built like them) from a local folder,
replaces every activation module of its UNet by soft CoLU with G = 32 cones
and no axis sharing (the paper's setting; on ``NCHW`` feature maps the cones
run over the channel axis, ``dim=1``), and fine-tunes the UNet on an
image-caption folder with the DDPM noise-prediction loss in the VAE's latent
space. ``--baseline`` fine-tunes the unconverted (SiLU) UNet the same way, for
the paper's comparison. The VAE and the text encoder stay frozen.

Appendix D.3 gives the fine-tune's training as "the same as above" (the
diffusion UNets': Adam, lr 1e-4, weight decay 1e-2, 100K steps, batch 128 or
16). Where that needs a reading, ``command.READINGS`` declares it and
``--show-config`` prints it: the weight decay is decoupled
(``torch.optim.AdamW``), the one reading
:data:`colu_lab.framework.readings.DIFFUSION_WEIGHT_DECAY` that ``colu run
diffusion-unet`` lists too (diffusers' text-to-image script, whose model and
Pokémon data the paper uses, trains with AdamW and weight decay 1e-2;
``--weight-decay-mode l2`` for ``torch.optim.Adam``'s L2); 15000 steps,
that script's budget on the same captions (``--steps 100000`` for the
literal "same as above"); batch 16, the Flowers batch (``--batch-size 128``
for CIFAR-10's).

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
needs (:func:`colu_lab.experiments.sd_finetune.memory.estimate_memory`;
``--estimate-memory`` prints it and exits): about 19 GB plus the CUDA context
for Stable Diffusion 1.5 at 512 px with the paper's batch of 16.

The modules, each importing only those listed before it:

* ``pipeline.py``: loading a local pipeline, converting its UNet, saving it
  with its conversion record and loading it back (:func:`load_converted`);
* ``data.py``: the image-caption folder;
* ``training.py``: the encoders, the denoising loss, the fixed evaluation
  batch and the training loop;
* ``sampling.py``: the shared initial noise, samples and their grids;
* ``memory.py``: the memory estimate;
* ``command.py``: the command's declaration (``COMMANDS``, which the registry
  imports), its options and its two modes, fine-tuning and ``--compare``.

``diffusers``, ``transformers`` and Pillow are imported inside the functions
that use them, so importing this package or listing the command loads none
of them.
"""

from colu_lab.experiments.sd_finetune.pipeline import load_converted

__all__ = ["load_converted"]
