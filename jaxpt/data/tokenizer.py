"""Tokenizers: WordPiece (BERT) or byte-level BPE (RoBERTa's special tokens, or ModernBERT's
BERT-named ones), trained with `tokenizers` on the train split, or loaded from a file."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import trainers

from jaxpt.errors import UserError

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
# RoBERTa's (fairseq's) names for the same roles, in the same order: pad, unk, cls, sep, mask.
ROBERTA_SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>", "<mask>")
_ROLES = ("pad", "unk", "cls", "sep", "mask")


class TokenizerError(UserError, ValueError):
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
  """A BERT WordPiece tokenizer trained on `texts`; the same texts give the same file.

  `tokenizers`' trainer creates the continuation pieces ("##x") in hash-map order, so their ids,
  and through merge tie-breaking even the vocabulary, change from run to run
  (huggingface/tokenizers#1794). Declaring every "##x" of the text's alphabet up front gives
  them fixed ids; the final vocabulary is then ordered (special tokens, then sorted), which
  WordPiece's longest-match encoding does not depend on.

  The texts are read twice (alphabet, then training): pass a re-iterable (a list, or an object
  whose `__iter__` starts over) to stream them; a one-shot iterator is copied into a list.
  """
  if iter(texts) is texts:
    texts = list(texts)
  probe = _bert_pipeline(Tokenizer(models.WordPiece(unk_token=UNK)), lowercase)
  chars: set[str] = set()
  for text in texts:
    chars.update(text)
  alphabet = {n for c in chars for n in probe.normalizer.normalize_str(c) if not n.isspace()}
  pieces = sorted("##" + c for c in alphabet)
  trainer = trainers.WordPieceTrainer(
      vocab_size=vocab_size, min_frequency=min_frequency,
      special_tokens=list(SPECIAL_TOKENS) + pieces, show_progress=False,
      continuing_subword_prefix="##")
  probe.train_from_iterator(texts, trainer=trainer)
  ordered = list(SPECIAL_TOKENS) + sorted(set(probe.get_vocab()) - set(SPECIAL_TOKENS))
  tok = _bert_pipeline(Tokenizer(models.WordPiece(
      {t: i for i, t in enumerate(ordered)}, unk_token=UNK, continuing_subword_prefix="##")),
      lowercase)
  tok.add_special_tokens(list(SPECIAL_TOKENS))
  return _add_post_processor(tok)


def train_bpe(texts: Iterable[str], vocab_size: int, *, min_frequency: int = 2,
              specials: str = "roberta") -> Tokenizer:
  """Byte-level BPE. `specials="roberta"`: RoBERTa's <s> A </s></s> B </s>, ids 0-3 and
  <mask> special. `specials="bert"`: ModernBERT's names, [CLS] A [SEP] (B [SEP]), with [PAD]
  [UNK] [CLS] [SEP] [MASK] at ids 0-4."""
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  if specials == "bert":
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return _add_post_processor(tok)
  # <s>, <pad>, </s>, <unk> take ids 0-3 as in RoBERTa; <mask> is added last, as there.
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size - 1, min_frequency=min_frequency, show_progress=False,
      special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(texts, trainer=trainer)
  tok.add_special_tokens(["<mask>"])
  return _add_roberta_post_processor(tok)


def _add_roberta_post_processor(tok: Tokenizer) -> Tokenizer:
  tok.post_processor = processors.RobertaProcessing(
      ("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")),
      add_prefix_space=False, trim_offsets=True)
  return tok


def load_bpe(vocab_json: str, merges_txt: str) -> Tokenizer:
  """RoBERTa's `vocab.json` + `merges.txt` pair, with its byte-level pipeline."""
  tok = Tokenizer(models.BPE.from_file(vocab_json, merges_txt))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  check_special_tokens(tok, vocab_json)
  return _add_roberta_post_processor(tok)


def from_json(text: str, source: str) -> Tokenizer:
  """A `tokenizer.json`'s content (`source` names it in errors)."""
  try:
    tok = Tokenizer.from_str(text)
  except Exception as e:  # tokenizers raises bare Exceptions for malformed JSON
    raise TokenizerError(f"{source}: not a tokenizers JSON file ({e})") from None
  tok.no_padding()  # a HuggingFace file may pad/truncate to 128; jaxpt packs examples itself
  tok.no_truncation()
  return _finish(tok, source)


def _finish(tok: Tokenizer, source: str) -> Tokenizer:
  check_special_tokens(tok, source)
  if tok.post_processor is None:
    tok = (_add_roberta_post_processor(tok) if family(tok) == "roberta"
           else _add_post_processor(tok))
  return tok


def load(path: str, *, lowercase: bool = True) -> Tokenizer:
  """Loads a `tokenizer.json` or a BERT `vocab.txt` (one token per line)."""
  if not os.path.exists(path):
    raise TokenizerError(f"--tokenizer {path}: no such file")
  if path.endswith(".json"):
    with open(path, encoding="utf-8") as f:
      return from_json(f.read(), path)
  else:
    vocab = models.WordPiece.read_file(path)
    tok = _bert_pipeline(Tokenizer(models.WordPiece(vocab, unk_token=UNK)), lowercase)
    # As in BertTokenizerFast: "[MASK]" etc. in the text are single special tokens.
    tok.add_special_tokens([t for t in SPECIAL_TOKENS if t in vocab])
  return _finish(tok, path)


def family(tok: Tokenizer) -> str:
  """'roberta' when the tokenizer has RoBERTa's special tokens, else 'bert'."""
  if all(tok.token_to_id(t) is not None for t in ROBERTA_SPECIAL_TOKENS):
    return "roberta"
  return "bert"


def special_tokens(tok: Tokenizer) -> tuple[str, ...]:
  return ROBERTA_SPECIAL_TOKENS if family(tok) == "roberta" else SPECIAL_TOKENS


def check_special_tokens(tok: Tokenizer, source: str) -> None:
  missing = [t for t in special_tokens(tok) if tok.token_to_id(t) is None]
  if missing:
    raise TokenizerError(f"{source}: tokenizer lacks special tokens {', '.join(missing)}")


def special_ids(tok: Tokenizer) -> dict[str, int]:
  """{'pad', 'unk', 'cls', 'sep', 'mask'} -> id (RoBERTa's <s> and </s> are cls and sep)."""
  return {role: tok.token_to_id(t) for role, t in zip(_ROLES, special_tokens(tok))}


def is_byte_level(tok: Tokenizer) -> bool:
  """Whether the pre-tokenizer is byte-level (GPT-2, RoBERTa, ModernBERT): there a word's
  leading space is part of its first piece ("Ġdog"), so words given one by one must carry it."""
  return '"ByteLevel"' in json.dumps(json.loads(tok.to_str()).get("pre_tokenizer") or {})


def words_as_in_text(tok: Tokenizer, sentences: list[list[str]]) -> list[list[str]]:
  """Sentences of words to encode with `is_pretokenized=True` so that each becomes the pieces
  of the text it forms: for a byte-level tokenizer each word after the first gets the space
  that precedes it in running text (else "dog" alone is encoded as "do", "g" where the text
  " dog" is "Ġdog"); other tokenizers split on whitespace and get the words as they are."""
  if not is_byte_level(tok):
    return sentences
  return [[w if i == 0 else " " + w for i, w in enumerate(words)] for words in sentences]


def is_lowercase(tok: Tokenizer) -> bool:
  normalizer = json.loads(tok.to_str()).get("normalizer") or {}
  if normalizer.get("type") == "BertNormalizer":
    return bool(normalizer.get("lowercase"))
  return "Lowercase" in json.dumps(normalizer)


def save_for_transformers(tok: Tokenizer, directory: str, variant: str, *,
                          model_max_length: int) -> None:
  """tokenizer.json, the model's own files (vocab.txt or vocab.json + merges.txt) and the
  tokenizer_config.json / special_tokens_map.json that `AutoTokenizer` reads."""
  tok.save(os.path.join(directory, "tokenizer.json"))
  tok.model.save(directory)
  roles = dict(zip(_ROLES, special_tokens(tok)))
  special = {f"{role}_token": token for role, token in roles.items()}
  if variant == "roberta":
    special.update(bos_token=roles["cls"], eos_token=roles["sep"])
    config = {"tokenizer_class": "RobertaTokenizer", "add_prefix_space": False}
  elif variant in ("modernbert", "gpt2") or isinstance(tok.model, models.BPE):
    # the fast tokenizer from tokenizer.json
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": True}
    if variant == "gpt2":
      special.update(bos_token=roles["cls"], eos_token=roles["sep"])
  else:
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": is_lowercase(tok),
              "tokenize_chinese_chars": True, "strip_accents": None}
  config.update(special, model_max_length=model_max_length)
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump(config, f, indent=2)
  with open(os.path.join(directory, "special_tokens_map.json"), "w") as f:
    json.dump(special, f, indent=2)


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
