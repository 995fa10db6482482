"""BERT-small (Turc et al. 2019): 4 layers, hidden 512, 8 heads."""

from jaxpt import config


def get_config() -> config.Config:
  return config.with_model(config.Config(), num_layers=4, hidden_size=512, num_heads=8,
                           intermediate_size=4 * 512)
