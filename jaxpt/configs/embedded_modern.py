"""The ModernBERT-style counterpart of `embedded_tiny`: `modernbert_tiny` on every embedded
corpus, with the same token budget, for the fine-tuning scoreboard's second pretrained column.

The data is the embedded corpora as packed FULL-SENTENCES rows of 128 tokens (a token attends
only within its own document, in local and global layers alike) under a byte-level BPE of
8,192, the same documents as `embedded_tiny`'s (brown_genre's and brown_pos's validation and
test splits left out):

  jaxpt prepare --recipe=all --output=workdirs/embedded_packed/data --tokenizer_type=bpe \\
      --examples=full_sentences --pack --vocab_size=8192 --seq_length=128 \\
      --validation_fraction=0.02
  jaxpt pretrain --config=embedded_modern --workdir=workdirs/embedded_modern

`modernbert_tiny`'s block (4 pre-LN layers of 128, global / local / local / global, a 64-token
window, RoPE, GeGLU of 192, no biases, 30% masking) with `embedded_tiny`'s schedule and budget:
10,000 steps of 32 x 128 tokens (41M token positions), warm-up, a stable peak of 2e-3 and a
linear decay over the last 20% (wsd), no dropout, a checkpoint every 2,500 steps kept.
"""

import dataclasses

from jaxpt import config
from jaxpt.configs import embedded_tiny, modernbert_tiny


def get_config() -> config.Config:
  cfg = modernbert_tiny.get_config()
  budget = embedded_tiny.get_config()
  return dataclasses.replace(
      cfg,
      data=dataclasses.replace(cfg.data, dir="workdirs/embedded_packed/data"),
      optim=dataclasses.replace(cfg.optim, learning_rate=budget.optim.learning_rate,
                                warmup_steps=budget.optim.warmup_steps,
                                schedule=budget.optim.schedule,
                                decay_fraction=budget.optim.decay_fraction),
      train=dataclasses.replace(cfg.train, batch_size=budget.train.batch_size,
                                num_steps=budget.train.num_steps,
                                log_every_steps=budget.train.log_every_steps,
                                eval_every_steps=budget.train.eval_every_steps,
                                eval_batches=budget.train.eval_batches),
      checkpoint=dataclasses.replace(cfg.checkpoint, every_steps=budget.checkpoint.every_steps,
                                     max_to_keep=budget.checkpoint.max_to_keep),
  )
