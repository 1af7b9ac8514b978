"""Training loop, checkpoints, logging."""
