"""What every experiment shares. Nothing here imports an experiment or the registry."""
