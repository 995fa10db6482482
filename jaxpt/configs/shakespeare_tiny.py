"""The `make pretrain` demo: BERT-tiny on the Shakespeare corpus, sized for a 2-core CPU.

A vocabulary of 8192 fits 5 MB of text. A run of minutes underfits, so dropout is off, and a
higher learning rate with a short warm-up suits the small model (2e-3 reached a lower loss in
1200 steps than 1e-3 or 5e-3). On a 2-core CPU the 2000 steps take about 9 minutes.
"""

import dataclasses

from jaxpt import config


def get_config() -> config.Config:
  # bert_tiny's shape, with the demo's vocabulary and sequence length.
  cfg = config.with_model(config.Config(), num_layers=2, hidden_size=128, num_heads=2,
                          intermediate_size=512, vocab_size=8192, max_position_embeddings=128,
                          hidden_dropout=0.0, attention_dropout=0.0)
  return dataclasses.replace(
      cfg,
      data=dataclasses.replace(cfg.data, dir="workdirs/shakespeare/data"),
      optim=dataclasses.replace(cfg.optim, learning_rate=2e-3, warmup_steps=100),
      train=dataclasses.replace(cfg.train, batch_size=32, num_steps=2000, log_every_steps=50,
                                eval_every_steps=500, eval_batches=8),
      checkpoint=dataclasses.replace(cfg.checkpoint, every_steps=500),
  )
