"""hemisphere (Sec. 4/5.1, Fig. 6): ``experiment.py`` the contract and its figure."""
