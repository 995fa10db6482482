"""The Ettin encoders (Weller et al. 2025, arXiv 2507.11412): ModernBERT's block and recipe
from 17M to 1B parameters, with the sizes and optimiser settings of the suite's published
pretraining configs, and their paired decoders (the same sizes and recipe, causal attention,
a left-only window on local layers: transformers' `ModernBertDecoderForCausalLM`). Not a
preset itself: `ettin_encoder_17m.py` ... `ettin_encoder_1b.py`, `ettin_decoder_*.py`.

The stable phase: 1,024-token rows, RoPE theta 10k on global and local layers, 30% masking,
StableAdamW (betas 0.9 / 0.98, eps 1e-6) at a per-size peak, warmup-stable-decay with a
global batch of 4,608 that warms up over a per-size token budget (from 768 sequences here,
ModernBERT's start). Ettin then extends the context to 8k tokens in a decay phase at theta
160k and 15% masking: one `train.phases` entry, e.g.
  --config.train.phases="N: data.dir=DATA_8K model.rope_theta=160000
                         model.rope_theta_local=160000 data.mask_prob=0.15"
Ettin also applies dropout 0.1 to the attention output, which this preset leaves at 0 (the
ModernBERT family's preset).
"""

import dataclasses

from jaxpt import config
from jaxpt.configs.modernbert_base import modern

B = 1_000_000_000
# name: (layers, hidden, intermediate, heads, peak learning rate, weight decay, learning-rate
# warm-up tokens, batch warm-up tokens)
SIZES = {
    "17m": (7, 256, 384, 4, 3e-3, 3e-4, 4 * B, 125 * B),
    "32m": (10, 384, 576, 6, 3e-3, 3e-4, 4 * B, 100 * B),
    "68m": (19, 512, 768, 8, 3e-3, 3e-4, 3 * B, 75 * B),
    "150m": (22, 768, 1152, 12, 8e-4, 1e-5, 3 * B, 50 * B),
    "400m": (28, 1024, 2624, 16, 5e-4, 1e-5, 2 * B, 10 * B),
    "1b": (28, 1792, 3840, 28, 5e-4, 5e-5, 2 * B, 3 * B),
}
LENGTH = 1024  # the stable phase's rows
BATCH = 4608


def encoder(size: str) -> config.Config:
  layers, hidden, intermediate, heads, lr, wd, lr_tokens, batch_tokens = SIZES[size]
  cfg = modern(config.Config(), vocab_size=50368, pad_token_id=50283, hidden_size=hidden,
               num_layers=layers, num_heads=heads, intermediate_size=intermediate,
               max_position_embeddings=8192)
  cfg = config.with_model(cfg, rope_theta=10_000.0, rope_theta_local=10_000.0)
  return dataclasses.replace(
      cfg,
      optim=dataclasses.replace(cfg.optim, name="stable_adamw", learning_rate=lr, b1=0.9,
                                b2=0.98, eps=1e-6, weight_decay=wd, schedule="wsd",
                                warmup_steps=lr_tokens // (BATCH * LENGTH)),
      train=dataclasses.replace(cfg.train, batch_size=BATCH, batch_warmup_start=768,
                                batch_warmup_tokens=batch_tokens))


def decoder(size: str) -> config.Config:
  """The paired decoder: the encoder's config, causal (its next-token loss needs no masking);
  transformers' `local_attention=128` is, causal, the 64 tokens ending at the query."""
  cfg = encoder(size)
  return config.with_model(cfg, attention_kind="causal", local_window=cfg.model.local_window // 2)
