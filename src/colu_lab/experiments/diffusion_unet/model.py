"""A denoising UNet from ``diffusers`` with every activation set to the one under test.

:func:`unet2d` builds a :class:`diffusers.UNet2DModel` laid out like the
Stable Diffusion UNet without its VAE and with self-attention in place of
cross-attention: attention blocks at the levels in ``attention_levels``
(Stable Diffusion has them at every level but the lowest-resolution one),
a mid block with attention, ``layers_per_block`` ResNet blocks per level.

:func:`set_activation` then gives every activation of the network the
activation spec under test. diffusers builds its activations as modules,
but not all from ``act_fn``: the time embedding's and the one before the
output convolution are ``nn.SiLU`` whatever ``act_fn`` says, so the network
is built with SiLU and every activation module (:data:`ACTIVATION_TYPES`)
is replaced afterwards: by the component-wise module, or by
:func:`colu.convert` for a cone activation, which finds each site's channel
axis from one forward pass (``dim=1`` on feature maps, ``dim=-1`` on the
time embedding) and lists any functional activation it cannot replace.

``diffusers`` is imported when a network is built, not when this module is
imported.
"""

from __future__ import annotations

from torch import nn

from colu_lab.framework.activations import COMPONENTWISE

ACTIVATION_TYPES = (nn.SiLU, nn.ReLU, nn.GELU, nn.Mish)
"""The activation modules a diffusers UNet is built from; all of them are replaced."""

DIFFUSERS_MISSING = ("the diffusion UNet is diffusers' UNet2DModel, and diffusers is not installed: "
                     "pip install 'colu[experiments,diffusers]' (or pip install diffusers)")


class DiffusersMissing(ImportError, ValueError):
    """diffusers is not installed. A ``ValueError`` too, so that ``colu run`` reports it as a plain error."""


def import_diffusers():
    """The ``diffusers`` module, or :class:`DiffusersMissing` saying which extra installs it."""
    try:
        import diffusers
    except ImportError as exc:
        raise DiffusersMissing(DIFFUSERS_MISSING) from exc
    return diffusers


def unet2d(block_channels, layers_per_block: int, attention_levels, image_size: int, channels: int,
           norm_groups: int, attention_head_dim: int) -> nn.Module:
    """A ``diffusers.UNet2DModel`` (SiLU activations; see :func:`set_activation`).

    Args:
        block_channels: the width of each resolution level, finest first
            (the paper's ``(128, 256, 256, 256)``); the image side halves
            between levels.
        layers_per_block: ResNet blocks per level on the way down (the way up
            has one more, as in diffusers).
        attention_levels: indices of the levels with self-attention blocks.
        image_size: the side of the square images.
        channels: image channels (input and predicted noise).
        norm_groups: GroupNorm groups; must divide every width.
        attention_head_dim: channels per attention head.
    """
    diffusers = import_diffusers()
    levels = range(len(block_channels))
    attention = set(attention_levels)
    down = tuple("AttnDownBlock2D" if i in attention else "DownBlock2D" for i in levels)
    up = tuple("AttnUpBlock2D" if i in attention else "UpBlock2D" for i in reversed(levels))
    return diffusers.UNet2DModel(
        sample_size=image_size, in_channels=channels, out_channels=channels, down_block_types=down,
        up_block_types=up, block_out_channels=tuple(block_channels), layers_per_block=layers_per_block,
        act_fn="silu", norm_num_groups=norm_groups, attention_head_dim=attention_head_dim,
    )


def set_activation(unet: nn.Module, act, example_input) -> dict:
    """Replace every activation module of ``unet`` by ``act``, in place; returns what was done.

    Args:
        unet: a network from :func:`unet2d`.
        act: an :class:`colu_lab.framework.activations.ActivationSpec`:
            a component-wise one, or ``colu`` with the identity on the axis
            (the cones :func:`colu.convert` builds).
        example_input: ``(sample, timesteps)`` for one forward pass, which
            tells each site's width and channel axis.

    Returns:
        ``{"sites": n, "modules": m, "replaced": [...], "functional": [...]}``:
        the sites replaced (name, old type, channels, dim and, for cones,
        G and S) and the functional activation calls seen, which no module
        swap reaches (none in diffusers' UNet2DModel).

    Raises:
        ValueError: the spec cannot be built this way, or its cones do not
            tile the width of some site (the message names the module).
    """
    import colu

    if act.name in COMPONENTWISE and act.width is None:
        replaced = []
        for name, module in list(unet.named_modules()):
            for child_name, child in list(module.named_children()):
                if isinstance(child, ACTIVATION_TYPES):
                    setattr(module, child_name, COMPONENTWISE[act.name]())
                    full = f"{name}.{child_name}" if name else child_name
                    replaced.append({"name": full, "old_type": type(child).__name__})
        # nothing is left to replace: this pass reads each new module's sites (width and channel axis, as
        # colu.convert counts them) and lists functional activation calls outside the new modules
        sites = {}
        names = {id(m): n for n, m in unet.named_modules()}
        new_type = COMPONENTWISE[act.name]

        def seen(module, args, output):
            x = args[0]
            dim = 1 if x.dim() >= 4 else -1
            sites[(names[id(module)], int(x.shape[dim]), dim)] = True

        hooks = [m.register_forward_hook(seen) for m in unet.modules() if type(m) is new_type]
        try:
            report = colu.convert(unet, cone_dim=2, replace=(), example_input=example_input)
        finally:
            for h in hooks:
                h.remove()
        mine = {r["name"] for r in replaced}
        functional = [_functional(f) for f in report.functional if f.module not in mine]
        for name, channels, dim in sites:
            for r in replaced:
                if r["name"] == name:
                    r.setdefault("sites", []).append({"channels": channels, "dim": dim})
        return {"sites": len(sites), "modules": len(replaced), "replaced": replaced, "functional": functional}
    if act.name != "colu" or act.axis_activation != "identity" or act.width is not None:
        raise ValueError(f"activation {act.label()!r}: the UNet's activations are replaced by colu.convert, which "
                         "builds colu cones with the identity on the axis (S=, G=, hard/soft/firm, share) and sets "
                         "each site's width itself; use a spec like colu:S=4 or colu:G=32,soft, or a component-wise "
                         "one (relu, silu, gelu, tanh, identity)")
    report = colu.convert(unet, cone_dim=act.cone_dim, num_cones=act.num_cones, scaling=act.scaling,
                          share_axis=act.share_axis, replace=ACTIVATION_TYPES, example_input=example_input,
                          on_mismatch="raise")
    replaced = [{"name": r.name, "old_type": r.old_type, "channels": r.channels, "dim": r.dim,
                 "num_cones": r.config["num_cones"], "cone_dim": r.config["cone_dim"]} for r in report.replaced]
    return {"sites": len(replaced), "modules": len({r["name"] for r in replaced}), "replaced": replaced,
            "functional": [_functional(f) for f in report.functional]}


def _functional(use) -> dict:
    return {"module": use.module, "function": use.function, "calls": use.calls}
