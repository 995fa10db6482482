"""BERT-tiny (Turc et al. 2019): 2 layers, hidden 128, 2 heads."""

from jaxpt import config


def get_config() -> config.Config:
  return config.with_model(config.Config(), num_layers=2, hidden_size=128, num_heads=2,
                           intermediate_size=4 * 128)
