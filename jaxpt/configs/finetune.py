"""Fine-tuning defaults (`jaxpt finetune`): AdamW 1e-4 with warm-up and linear decay, batch 32,
3 epochs, validation each epoch, early stopping after 2 evaluations without improvement.

With `--init=scratch` the model is BERT-mini (4 layers, hidden 256); with pretrained weights the
architecture comes from the weights and only dropout, dtype and remat are taken from here.
"""

import dataclasses

from jaxpt import config


def get_config() -> config.Config:
  cfg = config.with_model(config.Config(), num_layers=4, hidden_size=256, num_heads=4,
                          intermediate_size=1024, hidden_dropout=0.1, attention_dropout=0.1)
  return dataclasses.replace(
      cfg,
      optim=dataclasses.replace(cfg.optim, learning_rate=1e-4, warmup_steps=30,
                                weight_decay=0.01),
      train=dataclasses.replace(cfg.train, batch_size=32, eval_every_steps=0,
                                early_stopping_patience=2),
      checkpoint=dataclasses.replace(cfg.checkpoint, max_to_keep=2),
      finetune=dataclasses.replace(cfg.finetune, max_length=128, epochs=3.0))
