"""The one training loop and what it stands on: the train step, checkpoints, metrics."""
