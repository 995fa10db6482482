"""jaxpt: pretraining and fine-tuning BERT-style language models with JAX and Flax NNX."""

__version__ = "0.1.0"
