"""Data: corpora, cleaning, tokenizers, examples, storage, loading, masking."""
