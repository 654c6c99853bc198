"""Training: models, losses, data path, loop, self-describing checkpoints."""
