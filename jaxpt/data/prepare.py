"""`jaxpt prepare`: text files -> cleaned, split documents -> tokenizer -> stored examples.

The output directory appears only when complete: everything is written into a temporary
sibling directory, the manifest last, and the directory renamed into place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import tempfile
import time

from tqdm import tqdm

from jaxpt.data import clean, examples, store, tokenizer


@dataclasses.dataclass
class PrepareOptions:
  vocab_size: int = 30522  # bert-base-uncased's size
  seq_length: int = 128  # BERT phase 1
  tokenizer: str = ""  # a vocab.txt or tokenizer.json to use instead of training one
  lowercase: bool = True
  min_chars: int = 20  # documents shorter than this (after cleaning) are dropped
  validation_fraction: float = 0.02  # by document hash
  short_seq_prob: float = 0.1  # BERT: 10% of examples get a shorter random target length
  seed: int = 0
  overwrite: bool = False
  progress: bool = True


def _validate(opts: PrepareOptions) -> None:
  if not 8 <= opts.seq_length <= 8192:
    raise clean.InputError(f"--seq_length={opts.seq_length}: must be in [8, 8192]")
  if opts.vocab_size < 100 and not opts.tokenizer:
    raise clean.InputError(f"--vocab_size={opts.vocab_size}: must be at least 100")
  if not 0.0 <= opts.validation_fraction < 1.0:
    raise clean.InputError(f"--validation_fraction={opts.validation_fraction}: must be in [0, 1)")
  if not 0.0 <= opts.short_seq_prob <= 1.0:
    raise clean.InputError(f"--short_seq_prob={opts.short_seq_prob}: must be in [0, 1]")


def _file_sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return "sha256:" + h.hexdigest()


def _tokenize(tok, docs: list[str], desc: str, progress: bool) -> list[examples.Document]:
  out = []
  batch = 256
  for i in tqdm(range(0, len(docs), batch), desc=desc, unit="batch", disable=not progress,
                leave=False):
    sents = [clean.sentences(d) for d in docs[i:i + batch]]
    flat = [s for ss in sents for s in ss]
    encoded = tok.encode_batch(flat, add_special_tokens=False)
    k = 0
    for ss in sents:
      doc = [e.ids for e in encoded[k:k + len(ss)] if e.ids]
      k += len(ss)
      if doc:
        out.append(doc)
  return out


def prepare(inputs: list[str], output: str, opts: PrepareOptions) -> dict:
  """Runs the whole preparation; returns the manifest. Raises InputError on bad input."""
  _validate(opts)
  files = clean.resolve_inputs(inputs)
  output = os.path.abspath(output)
  if os.path.isdir(output) and os.listdir(output) and not opts.overwrite:
    what = ("a prepared dataset" if os.path.exists(os.path.join(output, store.MANIFEST))
            else "files")
    raise clean.InputError(f"--output {output}: already holds {what} "
                           "(pass --overwrite to replace it)")
  if os.path.exists(output) and not os.path.isdir(output):
    raise clean.InputError(f"--output {output}: exists and is not a directory")
  tok_given = tokenizer.load(opts.tokenizer, lowercase=opts.lowercase) if opts.tokenizer else None
  start = time.time()

  report = clean.CleanReport()
  splits: dict[str, list[str]] = {"train": [], "validation": []}
  for path in tqdm(files, desc="read", unit="file", disable=not opts.progress, leave=False):
    for doc in clean.clean_documents(clean.read_documents(path), min_chars=opts.min_chars,
                                     report=report):
      splits[clean.split_of(doc, opts.validation_fraction)].append(doc)
  if not splits["train"]:
    raise clean.InputError(
        f"--input {', '.join(inputs)}: no usable documents in {len(files)} file(s) "
        f"(read {report.documents_in}, removed {dict(report.removed)}; "
        f"documents need at least {opts.min_chars} characters)")

  tok = tok_given or tokenizer.train_wordpiece(
      (s for d in splits["train"] for s in d.split("\n")), opts.vocab_size,
      lowercase=opts.lowercase)
  ids = tokenizer.special_ids(tok)

  parent = os.path.dirname(output) or "."
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(output)}.tmp-")
  try:
    tok_path = tokenizer.save(tok, tmp)
    split_info = {}
    for s, (name, docs) in enumerate(splits.items()):
      if not docs:
        continue
      tokenized = _tokenize(tok, docs, f"tokenize {name}", opts.progress)
      arrays = examples.build_examples(
          tokenized, opts.seq_length, cls_id=ids["cls"], sep_id=ids["sep"], pad_id=ids["pad"],
          seed=opts.seed + s, short_seq_prob=opts.short_seq_prob)
      if len(arrays) == 0:
        if name == "train":
          raise clean.InputError(f"--input {', '.join(inputs)}: the documents yield no "
                                 "sentence-pair examples (each needs two non-empty parts)")
        continue
      store.write_split(tmp, name, arrays, tok.get_vocab_size())
      tokens = int(arrays.lengths.sum())
      split_info[name] = {
          "documents": len(docs), "examples": len(arrays), "tokens": tokens,
          "padding_fraction": round(1.0 - tokens / (len(arrays) * opts.seq_length), 4),
          "nsp_random_fraction": round(float(arrays.nsp_labels.mean()), 4),
      }
    manifest = {
        "inputs": [{"path": os.path.abspath(f), "sha256": _file_sha256(f)} for f in files],
        "seq_length": opts.seq_length,
        "tokenizer": {"file": "tokenizer.json", "hash": tokenizer.file_hash(tok_path),
                      "vocab_size": tok.get_vocab_size(), "special_ids": ids,
                      "trained": tok_given is None, "lowercase": opts.lowercase},
        "token_dtype": store.token_dtype(tok.get_vocab_size()).name,
        "cleaning": report.to_dict(),
        "splits": split_info,
        "options": dataclasses.asdict(opts),
        "seconds": round(time.time() - start, 1),
    }
    store.write_manifest(tmp, manifest)
    if os.path.exists(output):
      shutil.rmtree(output)
    os.replace(tmp, output)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return manifest
