"""CLM, then MLM (arXiv 2507.00994), stage 2: the causal `modern_clm_stage` run's parameters
restored into the bidirectional `modernbert_tiny` (`train.init_from`: the stack and its LM
head share their names, so every parameter is accounted for), then trained with 30% masking
under a schedule of its own (warm-up, peak, decay). See `modern_clm_stage` for the commands."""

import dataclasses

from jaxpt import config
from jaxpt.configs import modern_clm_stage, modernbert_tiny


def get_config() -> config.Config:
  cfg = modernbert_tiny.get_config()
  return dataclasses.replace(
      cfg,
      data=dataclasses.replace(cfg.data, dir="workdirs/embedded_packed/data"),
      train=dataclasses.replace(cfg.train, num_steps=modern_clm_stage.STEPS,
                                eval_every_steps=modern_clm_stage.STEPS,
                                init_from="workdirs/modern_clm"))
