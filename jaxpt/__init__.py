"""jaxpt: pretraining and fine-tuning Transformer language models with JAX and Flax NNX."""

__version__ = "0.1.0"


def __getattr__(name):
  # `jaxpt.attention(q, k, v, ...)`: imported on first use, so `import jaxpt` stays light.
  if name == "attention":
    from jaxpt.models.attention import attention
    return attention
  raise AttributeError(f"module 'jaxpt' has no attribute {name!r}")
