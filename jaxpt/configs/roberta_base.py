"""RoBERTa-base (Liu et al. 2019): BERT-base without NSP, byte-level BPE vocabulary of 50265,
positions offset after the padding id (514 position embeddings for 512 tokens), one token type,
LayerNorm eps 1e-5; pretrained on masked LM alone, dynamic masking, large batches."""

import dataclasses

from jaxpt import config


def get_config() -> config.Config:
  cfg = config.with_model(config.Config(), variant="roberta", vocab_size=50265, pad_token_id=1,
                          max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5)
  return dataclasses.replace(
      cfg, optim=dataclasses.replace(cfg.optim, learning_rate=6e-4, warmup_steps=24_000,
                                     b2=0.98, eps=1e-6, weight_decay=0.01),
      train=dataclasses.replace(cfg.train, batch_size=8192, num_steps=500_000))
