"""CLM, then MLM (arXiv 2507.00994), stage 1: `modernbert_tiny` trained as a causal LM.

The causal-first recipe is two runs of the same stack on the same packed data. This stage
predicts every next token within its document (causal attention; the local layers see the
32 tokens ending at the query, as Ettin's decoders halve the encoder's window); stage 2
(`modern_mlm_stage`) restores every parameter into the bidirectional encoder and trains it
with 30% masking. Data: the embedded corpora as packed FULL-SENTENCES rows of 128 tokens,

  jaxpt prepare --recipe=all --output=workdirs/embedded_packed/data --tokenizer_type=bpe \\
      --examples=full_sentences --pack --vocab_size=8192 --seq_length=128 \\
      --validation_fraction=0.02
  jaxpt pretrain --config=modern_clm_stage --workdir=workdirs/modern_clm
  jaxpt pretrain --config=modern_mlm_stage --workdir=workdirs/modern_clm_mlm

`benchmarks/recipe_compare.py` compares it with MLM alone at the same tokens (RESULTS.md).
"""

import dataclasses

from jaxpt import config
from jaxpt.configs import modernbert_tiny

STEPS = 1000  # each stage; the MLM-only baseline trains 2 x STEPS


def get_config() -> config.Config:
  cfg = modernbert_tiny.get_config()
  cfg = config.with_model(cfg, attention_kind="causal",
                          local_window=cfg.model.local_window // 2)
  return dataclasses.replace(
      cfg,
      data=dataclasses.replace(cfg.data, dir="workdirs/embedded_packed/data"),
      train=dataclasses.replace(cfg.train, num_steps=STEPS, eval_every_steps=STEPS))
