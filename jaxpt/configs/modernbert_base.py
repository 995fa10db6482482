"""ModernBERT-base (Warner et al. 2024): 22 pre-LN layers, hidden 768, 12 heads, GeGLU of 1152,
no biases, rotary positions (theta 160k global, 10k local), a global layer every third and a
128-token window elsewhere, 8,192 positions, vocabulary 50,368; 30% masking, no dropout."""

import dataclasses

from jaxpt import config
from jaxpt.hf.modernbert import FAMILY  # what makes a ModelConfig a ModernBERT


def modern(cfg: config.Config, **sizes) -> config.Config:
  """The ModernBERT block and recipe on top of `cfg`, with `sizes` for the model."""
  cfg = config.with_model(
      cfg, **FAMILY, head_bias=False, rope_theta=160_000.0, rope_theta_local=10_000.0,
      local_window=128, global_every=3, layer_norm_eps=1e-5, hidden_dropout=0.0,
      attention_dropout=0.0, scaled_init=True, **sizes)
  return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, mask_prob=0.3))


def get_config() -> config.Config:
  return modern(config.Config(), vocab_size=50368, pad_token_id=50283, hidden_size=768,
                num_layers=22, num_heads=12, intermediate_size=1152,
                max_position_embeddings=8192)
