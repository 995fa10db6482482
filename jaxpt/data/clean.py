"""Normalising and filtering documents, exact and near-duplicate removal, and a deterministic
train / validation / test split by document hash. (Reading inputs: `jaxpt.data.inputs`.)"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import re
import unicodedata
from typing import Iterator

from jaxpt.data.inputs import InputError, read_documents, resolve_inputs  # noqa: F401


_SPACES = re.compile(r"[^\S\n]+")


# Unicode category Cc (C0 and C1 controls, DEL) except tab and newline.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def normalize(text: str) -> str:
  """NFC, control characters removed, runs of spaces collapsed, lines stripped, empty lines dropped."""
  text = _CONTROL.sub("", unicodedata.normalize("NFC", text))
  lines = (_SPACES.sub(" ", line).strip() for line in text.split("\n"))
  return "\n".join(line for line in lines if line)


@dataclasses.dataclass
class CleanReport:
  documents_in: int = 0
  documents_kept: int = 0
  removed: collections.Counter = dataclasses.field(default_factory=collections.Counter)

  def to_dict(self) -> dict:
    return {"documents_in": self.documents_in, "documents_kept": self.documents_kept,
            "removed": dict(sorted(self.removed.items()))}


def clean_documents(docs, *, min_chars: int, report: CleanReport,
                    max_chars: int = 0) -> Iterator[str]:
  """Normalises each document and drops those too short to make an example (and, with
  `max_chars` > 0, those longer: often tables, logs or concatenated dumps)."""
  for doc in docs:
    report.documents_in += 1
    doc = normalize(doc)
    if not doc:
      report.removed["empty"] += 1
    elif len(doc) < min_chars:
      report.removed["too_short"] += 1
    elif max_chars and len(doc) > max_chars:
      report.removed["too_long"] += 1
    else:
      report.documents_kept += 1
      yield doc


def _unit_hash(text: str) -> float:
  return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2.0 ** 64


def split_of(doc: str, validation_fraction: float, test_fraction: float = 0.0) -> str:
  """'train', 'validation' or 'test': a pure function of the document's text, so the same
  document lands in the same split whatever the input order or the number of workers."""
  h = _unit_hash(doc)
  if h < validation_fraction:
    return "validation"
  if h < validation_fraction + test_fraction:
    return "test"
  return "train"


def _dedup_key(doc: str) -> str:
  """Exact-duplicate identity: the normalised text, case and whitespace folded."""
  return hashlib.sha256(" ".join(doc.casefold().split()).encode("utf-8")).hexdigest()


def _shingles(doc: str, n: int = 5) -> set[bytes]:
  words = doc.casefold().split()
  if len(words) < n:
    return {" ".join(words).encode("utf-8")}
  return {" ".join(words[i:i + n]).encode("utf-8") for i in range(len(words) - n + 1)}


def deduplicate(docs: list[str], *, near_threshold: float, report: CleanReport,
                num_perm: int = 128, seed: int = 1) -> list[str]:
  """Documents without exact duplicates (same text up to case and whitespace) and, when
  `near_threshold` > 0, without near duplicates: MinHash over word 5-gram shingles with LSH
  (datasketch), estimated Jaccard similarity >= `near_threshold` to a kept document.

  Documents are visited in the order of their content hash, so which copy survives, and so
  the result, does not depend on the input order. Returns the kept documents in that order.
  """
  keyed = sorted((_dedup_key(d), d) for d in docs)  # ties (exact copies) by their text
  unique, last = [], None
  for key, doc in keyed:
    if key == last:
      report.removed["exact_duplicate"] += 1
    else:
      unique.append((key, doc))
    last = key
  if near_threshold <= 0 or len(unique) < 2:
    report.documents_kept -= len(docs) - len(unique)
    return [d for _, d in unique]
  import zlib
  from datasketch import MinHash, MinHashLSH
  lsh = MinHashLSH(threshold=near_threshold, num_perm=num_perm)
  kept = []
  batch = 512
  for start in range(0, len(unique), batch):
    chunk = unique[start:start + batch]
    # crc32: deterministic (unlike hash()) and several times faster than the default SHA-1.
    hashes = MinHash.bulk([_shingles(d) for _, d in chunk], num_perm=num_perm, seed=seed,
                          hashfunc=zlib.crc32)
    for (key, doc), m in zip(chunk, hashes):
      if lsh.query(m):
        report.removed["near_duplicate"] += 1
        continue
      lsh.insert(key, m)
      kept.append(doc)
  report.documents_kept -= len(docs) - len(kept)
  return kept


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'A-Z])")


def sentences(doc: str, max_chars: int = 1000) -> list[str]:
  """The document's lines, with over-long lines split at sentence ends."""
  out = []
  for line in doc.split("\n"):
    if len(line) > max_chars:
      out.extend(s for s in _SENTENCE_END.split(line) if s)
    else:
      out.append(line)
  return out
