"""The `make pretrain` demo: BERT-tiny on the Shakespeare corpus, sized for a 2-core CPU.

A vocabulary of 8192 fits 5 MB of text; a higher learning rate and short warm-up suit a small
model trained for minutes. On a 2-core CPU this takes about 10 minutes.
"""

import dataclasses

from jaxpt import config


def get_config() -> config.Config:
  # bert_tiny's shape, with the demo's vocabulary and sequence length.
  cfg = config.with_model(config.Config(), num_layers=2, hidden_size=128, num_heads=2,
                          intermediate_size=512, vocab_size=8192, max_position_embeddings=128)
  return dataclasses.replace(
      cfg,
      data=dataclasses.replace(cfg.data, dir="workdirs/shakespeare/data"),
      optim=dataclasses.replace(cfg.optim, learning_rate=1e-3, warmup_steps=100),
      train=dataclasses.replace(cfg.train, batch_size=32, num_steps=2000, log_every_steps=50,
                                eval_every_steps=500, eval_batches=8),
      checkpoint=dataclasses.replace(cfg.checkpoint, every_steps=500),
  )
