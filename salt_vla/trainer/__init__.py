"""Experiments, training loop, optimisation, checkpoints and logging."""
