"""Backends that compute cone activations, behind one dispatch point (:mod:`colu.ops.dispatch`)."""
