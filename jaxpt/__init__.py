"""jaxpt: pretraining and fine-tuning Transformer language models with JAX and Flax NNX."""

__version__ = "0.1.0"


def __getattr__(name):
  # `jaxpt.attention(q, k, v, ...)`: imported on first use, so `import jaxpt` stays light.
  if name == "attention":
    from jaxpt.models.attention import attention
    return attention
  if name == "generate":  # `jaxpt.generate(model, prompt_ids, max_new_tokens, ...)`
    from jaxpt.models.generation import generate
    return generate
  raise AttributeError(f"module 'jaxpt' has no attribute {name!r}")
