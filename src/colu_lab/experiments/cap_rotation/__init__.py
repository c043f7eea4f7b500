"""cap-rotation: the JAX package's cap-rotation demo. ``experiment.py``: the contract (data, the two-layer net from ``framework.nets``, claims)."""
