"""A pretraining run worth fine-tuning from, on a 2-core CPU: BERT-tiny on every embedded corpus.

The data is `jaxpt prepare --recipe=all` (Shakespeare, GCIDE, WordNet glosses and the Brown
documents outside brown_genre's and brown_pos's validation and test splits: about 49,000
documents, 12.9M tokens, a WordPiece of 8,192):

  jaxpt prepare --recipe=all --output=workdirs/embedded/data --vocab_size=8192 \
      --validation_fraction=0.02
  jaxpt pretrain --config=configs/embedded_tiny.py --workdir=workdirs/embedded

BERT-tiny's shape (2 layers, hidden 128), 10,000 steps of 32 x 128 tokens (41M tokens, about
3 epochs) under the recipe that scored best at equal tokens in `benchmarks/recipe_compare.py`:
warm-up, a stable peak of 2e-3 and a linear decay over the last 20% (wsd), 30% of the tokens
masked, no dropout (a short run underfits). A checkpoint every 2,500 steps is kept, so the
scoreboard can fine-tune from several points of the same run. Measured on this project's
2-core CPU (2026-12-02): 54 min wall, 74 CPU-minutes (user 48, system 26), peak RSS 1.3 GB;
held-out MLM loss 3.36 at 30% masking (44% of the masked tokens right), still falling.

For a GPU host, the README's "A pretraining run worth fine-tuning from" scales it (a wider,
deeper model, batch 256, bf16); not run here.
"""

import dataclasses

from jaxpt import config
from jaxpt.configs import shakespeare_tiny


def get_config() -> config.Config:
  cfg = shakespeare_tiny.get_config()  # BERT-tiny's shape at an 8k vocabulary, no dropout
  return dataclasses.replace(
      cfg,
      data=dataclasses.replace(cfg.data, dir="workdirs/embedded/data", mask_prob=0.3),
      optim=dataclasses.replace(cfg.optim, learning_rate=2e-3, warmup_steps=200,
                                schedule="wsd", decay_fraction=0.2),
      train=dataclasses.replace(cfg.train, batch_size=32, num_steps=10_000,
                                log_every_steps=100, eval_every_steps=1000, eval_batches=16),
      checkpoint=dataclasses.replace(cfg.checkpoint, every_steps=2500, max_to_keep=4),
  )
