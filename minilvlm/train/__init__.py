"""Training: distributed setup (more to come: the loop, checkpoints, logging)."""
