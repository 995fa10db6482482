"""Flax NNX models: BERT and its heads."""
