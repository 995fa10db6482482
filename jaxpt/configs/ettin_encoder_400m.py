"""The Ettin encoder of about 400M parameters (arXiv 2507.11412): see `_ettin.py`."""

from jaxpt.configs._ettin import encoder


def get_config():
  return encoder("400m")
