"""WordPiece tokenizers: trained with `tokenizers` on the train split, or loaded from a file."""

from __future__ import annotations

import hashlib
import os
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import trainers

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)


class TokenizerError(ValueError):
  pass


def _bert_pipeline(tok: Tokenizer, lowercase: bool) -> Tokenizer:
  """BERT's normaliser, pre-tokeniser and decoder, as HuggingFace's BertTokenizerFast."""
  tok.normalizer = normalizers.BertNormalizer(
      clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.decoder = decoders.WordPiece(prefix="##")
  return tok


def _add_post_processor(tok: Tokenizer) -> Tokenizer:
  """[CLS] A [SEP] (B [SEP]); a trained WordPiece tokenizer has no post-processor otherwise."""
  cls, sep = tok.token_to_id(CLS), tok.token_to_id(SEP)
  tok.post_processor = processors.TemplateProcessing(
      single=f"{CLS}:0 $A:0 {SEP}:0", pair=f"{CLS}:0 $A:0 {SEP}:0 $B:1 {SEP}:1",
      special_tokens=[(CLS, cls), (SEP, sep)])
  return tok


def train_wordpiece(texts: Iterable[str], vocab_size: int, *, lowercase: bool = True,
                    min_frequency: int = 2) -> Tokenizer:
  tok = _bert_pipeline(Tokenizer(models.WordPiece(unk_token=UNK)), lowercase)
  trainer = trainers.WordPieceTrainer(
      vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS),
      show_progress=False, continuing_subword_prefix="##")
  tok.train_from_iterator(texts, trainer=trainer)
  return _add_post_processor(tok)


def load(path: str, *, lowercase: bool = True) -> Tokenizer:
  """Loads a `tokenizer.json` or a BERT `vocab.txt` (one token per line)."""
  if not os.path.exists(path):
    raise TokenizerError(f"--tokenizer {path}: no such file")
  if path.endswith(".json"):
    try:
      tok = Tokenizer.from_file(path)
    except Exception as e:  # tokenizers raises bare Exceptions for malformed JSON
      raise TokenizerError(f"{path}: not a tokenizers JSON file ({e})") from None
  else:
    vocab = models.WordPiece.read_file(path)
    tok = _bert_pipeline(Tokenizer(models.WordPiece(vocab, unk_token=UNK)), lowercase)
  check_special_tokens(tok, path)
  if tok.post_processor is None:
    tok = _add_post_processor(tok)
  return tok


def check_special_tokens(tok: Tokenizer, source: str) -> None:
  missing = [t for t in SPECIAL_TOKENS if tok.token_to_id(t) is None]
  if missing:
    raise TokenizerError(f"{source}: tokenizer lacks special tokens {', '.join(missing)}")


def special_ids(tok: Tokenizer) -> dict[str, int]:
  return {t.strip("[]").lower(): tok.token_to_id(t) for t in SPECIAL_TOKENS}


def save(tok: Tokenizer, directory: str) -> str:
  """Writes tokenizer.json and vocab.txt (ordered by id); returns the JSON's path."""
  path = os.path.join(directory, "tokenizer.json")
  tok.save(path)
  vocab = tok.get_vocab()
  with open(os.path.join(directory, "vocab.txt"), "w", encoding="utf-8") as f:
    for token, _ in sorted(vocab.items(), key=lambda kv: kv[1]):
      f.write(token + "\n")
  return path


def file_hash(path: str) -> str:
  with open(path, "rb") as f:
    return "sha256:" + hashlib.sha256(f.read()).hexdigest()
