"""`jaxpt prepare`: raw text -> cleaned, deduplicated, split documents -> tokenizer -> stored
examples.

Inputs stream in (`jaxpt.data.inputs`: text, JSONL, CSV/TSV, Parquet, saved `datasets`
directories; .gz/.zst); documents are normalised and length-filtered, exact and near
duplicates removed, then split by a hash of their text. The tokenizer (WordPiece, or byte-level
BPE for RoBERTa) is trained on the train split only. Examples are BERT sentence pairs or
RoBERTa's FULL-SENTENCES packing. Two runs on the same inputs write byte-identical arrays and
manifest. The output directory appears only when complete: everything is written into a
temporary sibling directory, the manifest last, and the directory renamed into place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
import time

from tokenizers import pre_tokenizers
from tqdm import tqdm

from jaxpt.config import option
from jaxpt.data import clean, examples, inputs, store, tokenizer
from jaxpt.files import atomic_directory


@dataclasses.dataclass
class PrepareOptions:
  """`jaxpt prepare`'s options (each one a flag of the same name)."""

  vocab_size: int = option(30522, "Size of the trained vocabulary (bert-base-uncased's).")
  seq_length: int = option(128, "Tokens per example, [CLS] and [SEP] included (BERT phase 1).")
  tokenizer: str = option("", "A vocab.txt or tokenizer.json to use instead of training one.")
  tokenizer_type: str = option("wordpiece", "Tokenizer to train: wordpiece (BERT) or bpe "
                               "(byte-level, RoBERTa).", ("wordpiece", "bpe"))
  special_tokens: str = option("auto", "Names of a trained tokenizer's special tokens: bert "
                               "([CLS] [SEP] [PAD] [UNK] [MASK]; ModernBERT's, also for its "
                               "BPE), roberta (<s> </s> <pad> <unk> <mask>; BPE only), auto "
                               "(bert for WordPiece, roberta for BPE).",
                               ("auto", "bert", "roberta"))
  examples: str = option("pairs", "pairs (BERT sentence pairs with NSP labels) or "
                         "full_sentences (RoBERTa packing across documents, MLM only).",
                         ("pairs", "full_sentences"))
  pack: bool = option(False, "Pack several examples into each row (less padding); the model "
                      "keeps them apart.")
  max_sequences_per_row: int = option(3, "With --pack: at most this many examples per row.")
  shard_documents: int = option(20_000, "Documents tokenized and turned into examples at a "
                                "time (memory; BERT's random next sentence comes from the "
                                "same shard).")
  lowercase: bool = option(True, "Lower-case text (uncased BERT).")
  text_column: str = option("text", "The text field of JSONL / CSV / Parquet / datasets "
                            "inputs.")
  format: str = option("auto", "Input format: auto (by extension after .gz / .zst; a file "
                       "with no or an unknown extension is plain text when it is UTF-8), or "
                       "text, jsonl, csv, tsv, parquet for every input.", inputs.INPUT_FORMATS)
  documents: str = option("paragraph", "What a document is in plain text: paragraph "
                          "(blank-line separated, one sentence or verse line per line: BERT's "
                          "format), line (each non-empty line), file (the whole file).",
                          inputs.DOCUMENTS)
  on_bad_input: str = option("error", "error: stop at the first invalid UTF-8 or JSON line "
                             "(naming file and offset); skip: drop, count and report such "
                             "lines.", inputs.ON_BAD_INPUT)
  min_chars: int = option(20, "Drop documents shorter than this after cleaning.")
  max_chars: int = option(0, "Drop documents longer than this after cleaning (0: no limit).")
  near_duplicate_threshold: float = option(0.8, "Drop documents whose MinHash Jaccard "
                                           "similarity to a kept one reaches this (0: exact "
                                           "duplicates only).")
  validation_fraction: float = option(0.02, "Fraction of documents (by hash of their text) "
                                      "held out for evaluation.")
  test_fraction: float = option(0.0, "Fraction of documents (by hash of their text) held out "
                                "as a test split.")
  short_seq_prob: float = option(0.1, "Probability of a shorter target length for an example "
                                 "(BERT: 0.1).")
  seed: int = option(0, "Seed of the example construction.")
  overwrite: bool = option(False, "Replace an existing output directory.")
  progress: bool = option(True, "Show progress bars.")


def _validate(opts: PrepareOptions) -> None:
  if not 8 <= opts.seq_length <= 8192:
    raise clean.InputError(f"--seq_length={opts.seq_length}: must be in [8, 8192]")
  if opts.vocab_size < 100 and not opts.tokenizer:
    raise clean.InputError(f"--vocab_size={opts.vocab_size}: must be at least 100")
  if not 0.0 <= opts.validation_fraction < 1.0:
    raise clean.InputError(f"--validation_fraction={opts.validation_fraction}: must be in [0, 1)")
  if not 0.0 <= opts.test_fraction < 1.0 - opts.validation_fraction:
    raise clean.InputError(f"--test_fraction={opts.test_fraction}: must be in [0, "
                           f"1 - validation_fraction)")
  if opts.pack and not 2 <= opts.max_sequences_per_row <= 16:
    raise clean.InputError(f"--max_sequences_per_row={opts.max_sequences_per_row}: must be "
                           "in [2, 16]")
  if not 0.0 <= opts.near_duplicate_threshold <= 1.0:
    raise clean.InputError(f"--near_duplicate_threshold={opts.near_duplicate_threshold}: "
                           "must be in [0, 1] (0 disables)")
  if opts.special_tokens == "roberta" and opts.tokenizer_type == "wordpiece":
    raise clean.InputError("--special_tokens=roberta: RoBERTa's names go with "
                           "--tokenizer_type=bpe; WordPiece has BERT's ([CLS] ...)")
  for name, value, allowed in (("tokenizer_type", opts.tokenizer_type, ("wordpiece", "bpe")),
                               ("special_tokens", opts.special_tokens,
                                ("auto", "bert", "roberta")),
                               ("examples", opts.examples, ("pairs", "full_sentences")),
                               ("on_bad_input", opts.on_bad_input, inputs.ON_BAD_INPUT),
                               ("format", opts.format, inputs.INPUT_FORMATS),
                               ("documents", opts.documents, inputs.DOCUMENTS)):
    if value not in allowed:
      raise clean.InputError(f"--{name}={value!r}: must be one of {', '.join(allowed)}")
  if opts.shard_documents < 1:
    raise clean.InputError(f"--shard_documents={opts.shard_documents}: must be at least 1")
  if not 0.0 <= opts.short_seq_prob <= 1.0:
    raise clean.InputError(f"--short_seq_prob={opts.short_seq_prob}: must be in [0, 1]")


def _file_sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return "sha256:" + h.hexdigest()


def _tokenize(tok, docs: list[str], desc: str, progress: bool) -> list[examples.Document]:
  """Each document as its sentences' token ids. A byte-level tokenizer (BPE) sees each
  sentence after the first with the space that separated it, so that the token stream decodes
  back to running text; WordPiece drops whitespace anyway."""
  out = []
  spaced = isinstance(tok.pre_tokenizer, pre_tokenizers.ByteLevel)
  batch = 16384  # large: `tokenizers` spreads one call over the cores
  for i in tqdm(range(0, len(docs), batch), desc=desc, unit="batch", disable=not progress,
                leave=False):
    sents = [clean.sentences(d) for d in docs[i:i + batch]]
    if spaced:  # byte-level BPE encodes the space between sentences (as a decoder reads it)
      sents = [[s if j == 0 else " " + s for j, s in enumerate(ss)] for ss in sents]
    flat = [s for ss in sents for s in ss]
    encoded = tok.encode_batch_fast(flat, add_special_tokens=False)  # no offsets: faster
    k = 0
    for ss in sents:
      doc = [e.ids for e in encoded[k:k + len(ss)] if e.ids]
      k += len(ss)
      if doc:
        out.append(doc)
  return out


PADDING_WARNING = 0.3  # a split whose rows are more than this much padding
NSP_WARNING = 0.6  # random next-sentence partners beyond this (BERT's is 0.5)
VOCAB_WARNING = 0.5  # a trained vocabulary below this fraction of the one asked for


def warnings(manifest: dict, opts: PrepareOptions) -> list[str]:
  """What a user should know before pretraining on the result: mostly padding, mostly
  random next sentences, a vocabulary far below the one asked for, an empty held-out split."""
  out = []
  for name, split in manifest["splits"].items():
    if split["padding_fraction"] > PADDING_WARNING:
      out.append(f"{name}: {split['padding_fraction']:.0%} of the tokens are padding "
                 f"(short documents for --seq_length={opts.seq_length}; try --pack, "
                 "--examples=full_sentences or a shorter --seq_length)")
    if opts.examples == "pairs" and split["nsp_random_fraction"] > NSP_WARNING:
      out.append(f"{name}: {split['nsp_random_fraction']:.0%} of next sentences are random "
                 "(documents too short for a real next sentence; --documents=file may keep "
                 "them whole)")
  got, asked = manifest["tokenizer"]["vocab_size"], opts.vocab_size
  if manifest["tokenizer"]["trained"] and got < VOCAB_WARNING * asked:
    out.append(f"the trained vocabulary has {got} tokens, far below --vocab_size={asked} "
               "(the text has too few distinct pieces)")
  for name in ("validation", "test"):
    fraction = opts.validation_fraction if name == "validation" else opts.test_fraction
    if fraction > 0 and not manifest["splits"].get(name, {}).get("examples"):
      out.append(f"the {name} split is empty (--{name}_fraction={fraction} of too few "
                 "documents)")
  return out


def prepare(input_specs: list[str], output: str, opts: PrepareOptions) -> dict:
  """Runs the whole preparation; returns the manifest. Raises InputError on bad input."""
  _validate(opts)
  files = inputs.resolve_inputs(input_specs, opts.format)
  output = os.path.abspath(output)
  if os.path.isdir(output) and os.listdir(output) and not opts.overwrite:
    what = ("a prepared dataset" if os.path.exists(os.path.join(output, store.MANIFEST))
            else "files")
    raise clean.InputError(f"--output {output}: already holds {what} "
                           "(pass --overwrite to replace it)")
  if os.path.exists(output) and not os.path.isdir(output):
    raise clean.InputError(f"--output {output}: exists and is not a directory")
  tok_given = tokenizer.load(opts.tokenizer, lowercase=opts.lowercase) if opts.tokenizer else None
  timer = _Stages()
  report = clean.CleanReport()
  with atomic_directory(output) as tmp:
    tmp = str(tmp)
    # Cleaned texts go to a local file as they stream in; memory holds ~65 bytes a document.
    docs = clean.DocumentSpill(os.path.join(tmp, "documents.spill"))
    try:
      manifest, split_info = _prepare_in(tmp, docs, files, input_specs, opts, tok_given,
                                         report, timer.lap)
    finally:
      docs.close()
      os.remove(docs.path)
  seconds = time.time() - timer.start
  tokens = sum(s["tokens"] for s in split_info.values())
  timer.lap("manifest")
  return dict(manifest, seconds=round(seconds, 1), tokens_per_second=round(tokens / seconds),
              stage_seconds={k: round(v, 2) for k, v in timer.seconds.items()})


class _Lines:
  """The lines of some spilled documents; iterable more than once (each pass reads the file)."""

  def __init__(self, docs: clean.DocumentSpill, indices):
    self._docs, self._indices = docs, indices

  def __iter__(self):
    return (line for i in self._indices.tolist() for line in self._docs.text(i).split("\n"))


class _Stages:
  """Seconds per stage, returned by `prepare` (not in the manifest: it would differ run to run)."""

  def __init__(self):
    self.start = self._last = time.time()
    self.seconds: dict[str, float] = {}

  def lap(self, name: str) -> None:
    now = time.time()
    self.seconds[name] = self.seconds.get(name, 0.0) + now - self._last
    self._last = now


def _prepare_in(tmp: str, docs: clean.DocumentSpill, files, input_specs, opts: PrepareOptions,
                tok_given, report: clean.CleanReport, lap) -> tuple[dict, dict]:
  """The stages, writing into `tmp`; returns (manifest, per-split info)."""

  def say(message: str) -> None:  # before the stages that have no progress bar of their own
    if opts.progress:
      tqdm.write(f"jaxpt prepare: {message}", file=sys.stderr)

  with tqdm(desc="read", unit="doc", disable=not opts.progress, leave=False) as bar:
    for path in files:
      bar.set_postfix_str(os.path.basename(path), refresh=False)
      for doc in clean.clean_documents(
          inputs.read_documents(path, text_column=opts.text_column, fmt=opts.format,
                                documents=opts.documents,
                                on_bad_input=opts.on_bad_input, report=report.removed),
          min_chars=opts.min_chars, max_chars=opts.max_chars, report=report):
        docs.add(doc)
        bar.update()
  docs.close_for_writing()
  lap("read and clean")
  say(f"removing duplicates among {len(docs):,} documents"
      + (f" (MinHash LSH, Jaccard >= {opts.near_duplicate_threshold})"
         if opts.near_duplicate_threshold else ""))
  # Before the split, so that no document has a copy on the other side of it.
  kept = clean.deduplicate_indices(docs.keys, docs.digests, docs.text,
                                   near_threshold=opts.near_duplicate_threshold, report=report,
                                   progress=opts.progress)
  splits = docs.split_indices(kept, opts.validation_fraction, opts.test_fraction)
  lap("deduplicate and split")
  if not len(splits["train"]):
    raise clean.InputError(
        f"--input {', '.join(input_specs)}: no usable documents in {len(files)} file(s) "
        f"(read {report.documents_in}, removed {dict(report.removed)}; "
        f"documents need at least {opts.min_chars} characters)")

  train_lines = _Lines(docs, splits["train"])
  if tok_given is None:
    say(f"training a {opts.tokenizer_type} vocabulary of {opts.vocab_size:,} on "
        f"{len(splits['train']):,} train documents")
  if tok_given is not None:
    tok = tok_given
  elif opts.tokenizer_type == "bpe":
    tok = tokenizer.train_bpe(train_lines, opts.vocab_size,
                              specials="bert" if opts.special_tokens == "bert" else "roberta")
  else:
    tok = tokenizer.train_wordpiece(train_lines, opts.vocab_size, lowercase=opts.lowercase)
  if tok_given is None and tok.get_vocab_size() > opts.vocab_size:
    # WordPiece keeps every character of the text (and its "##" form): a small vocabulary
    # cannot hold a large alphabet.
    say(f"warning: --vocab_size={opts.vocab_size} is below what this text's alphabet needs; "
        f"the vocabulary has {tok.get_vocab_size():,} tokens")
  ids = tokenizer.special_ids(tok)
  lap("train tokenizer")

  tok_path = tokenizer.save(tok, tmp)
  split_info = {}
  for s, (name, split_docs) in enumerate(splits.items()):
    if not len(split_docs):
      continue
    # In shards of documents, as Google's create_pretraining_data works per input shard: token
    # lists exist for one shard at a time, and its examples are appended to the stored arrays.
    writer = store.SplitWriter(tmp, name, tok.get_vocab_size(), packed=opts.pack)
    tokens = sequences = nsp_random = nsp_count = 0
    for first in range(0, len(split_docs), opts.shard_documents):
      shard = [docs.text(i) for i in split_docs[first:first + opts.shard_documents].tolist()]
      tokenized = _tokenize(tok, shard, f"tokenize {name}", opts.progress)
      del shard
      lap("tokenize")
      if opts.examples == "full_sentences":
        arrays = examples.pack_full_sentences(tokenized, opts.seq_length, cls_id=ids["cls"],
                                              sep_id=ids["sep"], pad_id=ids["pad"])
      else:  # the random next sentence comes from the same shard
        arrays = examples.build_examples(
            tokenized, opts.seq_length, cls_id=ids["cls"], sep_id=ids["sep"],
            pad_id=ids["pad"], seed=[opts.seed, s, first], short_seq_prob=opts.short_seq_prob)
      del tokenized
      sequences += len(arrays)
      if opts.pack and len(arrays):  # best fit within the shard's examples
        arrays = examples.pack(arrays, opts.max_sequences_per_row, ids["pad"])
      nsp = arrays.nsp_labels[arrays.cls_positions >= 0] if opts.pack else arrays.nsp_labels
      nsp_random += int(nsp.sum())
      nsp_count += len(nsp)
      tokens += int(arrays.lengths.sum())
      lap("build examples")
      writer.append(arrays)
      del arrays
      lap("write arrays")
    if writer.rows == 0:
      if name == "train":
        raise clean.InputError(f"--input {', '.join(input_specs)}: the documents yield no "
                               "sentence-pair examples (each needs two non-empty parts)")
      continue
    split_info[name] = {
        "documents": len(split_docs), "examples": writer.rows, "tokens": tokens,
        "padding_fraction": round(1.0 - tokens / (writer.rows * opts.seq_length), 4),
        "nsp_random_fraction": round(nsp_random / max(nsp_count, 1), 4),
    }
    if opts.pack:
      split_info[name]["sequences"] = sequences
  manifest = {
      "inputs": [{"path": os.path.abspath(f), "sha256": _file_sha256(f)} for f in files],
      "seq_length": opts.seq_length,
      "tokenizer": {"file": "tokenizer.json", "hash": tokenizer.file_hash(tok_path),
                    "vocab_size": tok.get_vocab_size(), "special_ids": ids,
                    "family": tokenizer.family(tok), "trained": tok_given is None,
                    "lowercase": opts.lowercase},
      "examples": opts.examples,
      "packed": opts.pack,
      "token_dtype": store.token_dtype(tok.get_vocab_size()).name,
      "cleaning": report.to_dict(),
      "vocab_size_requested": opts.vocab_size,
      "splits": split_info,
      "options": {k: v for k, v in dataclasses.asdict(opts).items()
                  if k not in ("overwrite", "progress")},
  }  # nothing run-dependent (time, host): two runs write the same bytes
  manifest["warnings"] = warnings(manifest, opts)
  store.write_manifest(tmp, manifest)
  return manifest, split_info
