"""GPT-2 small (Radford et al. 2019; 124,439,808 parameters, as transformers'
`GPT2LMHeadModel(GPT2Config())`): 12 pre-LN layers of 768 with learned positions, tanh-GELU,
biases everywhere, the LM head tied to the token embeddings, 1,024 positions and the
50,257-token byte-level BPE vocabulary (<|endoftext|> = 50256). Trains as a causal LM on
FULL-SENTENCES data. The optimizer is the common open reproduction of GPT-2 pretraining
(AdamW, peak 6e-4, b2 0.95, weight decay 0.1, cosine decay to 10%, batch 512 x 1024 tokens)."""

import dataclasses

from jaxpt import config
from jaxpt.hf.gpt2 import FAMILY  # what makes a ModelConfig a GPT-2


def gpt2(cfg: config.Config, **model) -> config.Config:
  """`cfg` with GPT-2's block and defaults, then `model`'s changes (sizes)."""
  defaults = dict(FAMILY, vocab_size=50257, pad_token_id=50256, eos_token_id=50256,
                  hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072,
                  max_position_embeddings=1024, hidden_dropout=0.1, attention_dropout=0.1,
                  layer_norm_eps=1e-5, initializer_range=0.02, scaled_init=True)
  cfg = config.with_model(cfg, **{**defaults, **model})
  return dataclasses.replace(
      cfg,
      optim=dataclasses.replace(cfg.optim, learning_rate=6e-4, warmup_steps=2000,
                                schedule="cosine", end_learning_rate_fraction=0.1, b2=0.95,
                                eps=1e-8, weight_decay=0.1),
      train=dataclasses.replace(cfg.train, batch_size=512, num_steps=100_000))


def get_config() -> config.Config:
  return gpt2(config.Config())
