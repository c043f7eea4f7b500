"""mnist-mlp (Sec. 5.3, Table 3): ``experiment.py`` the contract (the two-layer MLP from ``framework.nets``)."""
