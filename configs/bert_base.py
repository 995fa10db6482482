"""BERT-base (Devlin et al. 2019): 12 layers, hidden 768, 12 heads, 110M parameters."""

from jaxpt import config


def get_config() -> config.Config:
  return config.Config()  # the base is BERT-base
