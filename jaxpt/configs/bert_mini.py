"""BERT-mini (Turc et al. 2019): 4 layers, hidden 256, 4 heads."""

from jaxpt import config


def get_config() -> config.Config:
  return config.with_model(config.Config(), num_layers=4, hidden_size=256, num_heads=4,
                           intermediate_size=4 * 256)
