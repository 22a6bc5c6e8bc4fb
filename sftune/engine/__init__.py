"""The training engine: the loop on accelerate, the optimizer and schedule, checkpoints."""
