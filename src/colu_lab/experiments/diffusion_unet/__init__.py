"""diffusion-unet (Sec. 5.5, Table 5, Figs. 7, 9, 15): ``experiment.py`` the contract, ``model.py`` the UNet, ``palettes.py`` the ``colu palettes`` command."""
