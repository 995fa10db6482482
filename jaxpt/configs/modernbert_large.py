"""ModernBERT-large (Warner et al. 2024): ModernBERT-base's block at 28 layers, hidden 1024,
16 heads, GeGLU of 2624."""

from jaxpt import config
from jaxpt.configs.modernbert_base import modern


def get_config() -> config.Config:
  return modern(config.Config(), vocab_size=50368, pad_token_id=50283, hidden_size=1024,
                num_layers=28, num_heads=16, intermediate_size=2624,
                max_position_embeddings=8192)
