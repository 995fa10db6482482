"""The decoder demo: a GPT-2-block causal LM on the Shakespeare corpus, sized for a 2-core CPU
(4 layers of 192, 3 heads, 128-token rows of a 4,096-token byte-level BPE vocabulary,
prepared with `--tokenizer_type=bpe --examples=full_sentences --lowercase=false
--vocab_size=4096`). The LM head runs at every position, so the vocabulary is kept small; dropout
is off for a run of minutes. `jaxpt generate --workdir=...` then continues a prompt."""

import dataclasses

from jaxpt import config
from jaxpt.configs.gpt2 import gpt2


def get_config() -> config.Config:
  cfg = gpt2(config.Config(), vocab_size=4096, pad_token_id=1, eos_token_id=-1,
             hidden_size=192, num_layers=4, num_heads=3, intermediate_size=768,
             max_position_embeddings=128, hidden_dropout=0.0, attention_dropout=0.0)
  return dataclasses.replace(
      cfg,
      data=dataclasses.replace(cfg.data, dir="workdirs/shakespeare_bpe/data"),
      optim=dataclasses.replace(cfg.optim, learning_rate=2e-3, warmup_steps=100,
                                end_learning_rate_fraction=0.1),
      train=dataclasses.replace(cfg.train, batch_size=32, num_steps=600, log_every_steps=50,
                                eval_every_steps=200, eval_batches=8),
      checkpoint=dataclasses.replace(cfg.checkpoint, every_steps=200))
