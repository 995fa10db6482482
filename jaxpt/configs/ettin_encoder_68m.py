"""The Ettin encoder of about 68M parameters (arXiv 2507.11412): see `_ettin.py`."""

from jaxpt.configs._ettin import encoder


def get_config():
  return encoder("68m")
