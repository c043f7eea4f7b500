"""Experiment name -> module. Each module provides: name, summary, Config, quick_settings, metrics
(name -> higher is better), curve_metrics, default_activations, sweep_grid, load_data, check_activation,
build_model, train_loss, evaluate, final_metrics, and optionally probe / extra_plots."""

from __future__ import annotations

from . import hemisphere, mnist_mlp, mnist_vae

EXPERIMENTS = {m.name: m for m in (hemisphere, mnist_mlp, mnist_vae)}
