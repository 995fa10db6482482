"""A ModernBERT that pretrains in minutes on a 2-core CPU: the family's block at 4 layers
(global, local, local, global), hidden 128, 4 heads, GeGLU of 192, a 64-token window, on
packed FULL-SENTENCES rows of a prepared corpus (`jaxpt prepare --examples=full_sentences
--pack`) with an 8,192-token vocabulary."""

import dataclasses

from jaxpt import config
from jaxpt.configs.modernbert_base import modern


def get_config() -> config.Config:
  cfg = modern(config.Config(), vocab_size=8192, pad_token_id=0, hidden_size=128,
               num_layers=4, num_heads=4, intermediate_size=192, max_position_embeddings=512)
  cfg = config.with_model(cfg, local_window=64)
  return dataclasses.replace(
      cfg,
      optim=dataclasses.replace(cfg.optim, learning_rate=2e-3, warmup_steps=100),
      train=dataclasses.replace(cfg.train, batch_size=32, num_steps=2000, log_every_steps=50,
                                eval_every_steps=500, eval_batches=8),
      checkpoint=dataclasses.replace(cfg.checkpoint, every_steps=500))
