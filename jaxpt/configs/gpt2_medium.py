"""GPT-2 medium (354,823,168 parameters, as transformers' `GPT2LMHeadModel` with 24 layers of
1,024 and 16 heads): GPT-2's block and recipe (`configs/gpt2.py`) at that size."""

from jaxpt import config
from jaxpt.configs.gpt2 import gpt2


def get_config() -> config.Config:
  return gpt2(config.Config(), hidden_size=1024, num_layers=24, num_heads=16,
              intermediate_size=4096)
