"""BERT-large (Devlin et al. 2019): 24 layers, hidden 1024, 16 heads, 340M parameters.

Layers under `nnx.scan`: compiles in 8 s instead of 28 s on the 2-core CPU (benchmarks/RESULTS.md).
"""

from jaxpt import config


def get_config() -> config.Config:
  return config.with_model(config.Config(), num_layers=24, hidden_size=1024, num_heads=16,
                           intermediate_size=4 * 1024, scan_layers=True)
