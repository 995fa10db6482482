"""The Ettin decoder of about 150M parameters (arXiv 2507.11412): see `_ettin.py`."""

from jaxpt.configs._ettin import decoder


def get_config():
  return decoder("150m")
