"""The Stable Diffusion fine-tune's command, declared apart from its code so that listing it imports nothing heavy."""

from colu.tools.cli import Command

COMMANDS = {
    "finetune-diffusers": Command("colu_lab.experiments.sd_finetune.finetune:main",
                                  "fine-tune a local Stable Diffusion pipeline's UNet into soft CoLU; compare samples",
                                  "diffusers", ("diffusers", "transformers", "PIL")),  # PIL: pillow
}
