"""mnist-vae (Sec. 5.2, Tables 1-2, Figs. 5, 8, 12): ``experiment.py`` the contract, ``model.py`` the toy VAE, ``figures.py`` its ``colu plot --from`` figures."""
