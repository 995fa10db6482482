"""Presets: `get_config()` files, addressable by name (`--config=bert_base`) or by path."""
