"""The Stable Diffusion fine-tune (Sec. 5.5, Fig. 11): ``command.py`` declares ``colu finetune-diffusers``, ``finetune.py`` holds it."""
