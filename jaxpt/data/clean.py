"""Normalising and filtering documents, exact and near-duplicate removal, and a deterministic
train / validation / test split by document hash. (Reading inputs: `jaxpt.data.inputs`.)"""

from __future__ import annotations

import array
import collections
import dataclasses
import hashlib
import mmap
import os
import re
import unicodedata
from typing import Callable, Iterator

import numpy as np
from tqdm import tqdm

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


SPLITS = ("train", "validation", "test")


def _unit(digest: bytes) -> float:
  return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def content_digest(doc: str) -> bytes:
  """sha256 of the document's text: its split, and the tie-break between exact copies."""
  return hashlib.sha256(doc.encode("utf-8")).digest()


def split_of_digest(digest: bytes, validation_fraction: float, test_fraction: float = 0.0) -> str:
  h = _unit(digest)
  if h < validation_fraction:
    return "validation"
  if h < validation_fraction + test_fraction:
    return "test"
  return "train"


def split_of(doc: str, validation_fraction: float, test_fraction: float = 0.0) -> str:
  """'train', 'validation' or 'test': a pure function of the document's text, so the same
  document lands in the same split whatever the input order or the number of workers."""
  return split_of_digest(content_digest(doc), validation_fraction, test_fraction)


def dedup_key(doc: str) -> bytes:
  """Exact-duplicate identity: sha256 of the normalised text, case and whitespace folded."""
  return hashlib.sha256(" ".join(doc.casefold().split()).encode("utf-8")).digest()


def _shingles(doc: str, n: int = 5) -> set[bytes]:
  words = doc.casefold().split()
  if len(words) < n:
    return {" ".join(words).encode("utf-8")}
  return {" ".join(words[i:i + n]).encode("utf-8") for i in range(len(words) - n + 1)}


class DocumentSpill:
  """Cleaned documents written to a local file as they stream in, read back by index.

  What stays in memory per document is 65 bytes (its dedup key and content digest, an offset
  and a length), not its text: inputs larger than memory pass through dedup, the split,
  tokenizer training and tokenizing, which read the texts back from the file (the page cache
  keeps them when they fit). Append with `add`, then `close_for_writing` before `text`.
  """

  def __init__(self, path: str | os.PathLike):
    self.path = os.fspath(path)
    self._file = open(self.path, "wb", buffering=1 << 20)
    self._keys, self._digests = bytearray(), bytearray()
    self._offsets, self._lengths = array.array("q"), array.array("q")
    self._size = 0
    self._map = None

  def __len__(self) -> int:
    return len(self._offsets)

  def add(self, doc: str) -> None:
    data = doc.encode("utf-8")
    self._file.write(data)
    self._offsets.append(self._size)
    self._lengths.append(len(data))
    self._size += len(data)
    self._keys += dedup_key(doc)
    self._digests += hashlib.sha256(data).digest()

  def close_for_writing(self) -> None:
    self._file.close()
    if self._size:
      with open(self.path, "rb") as f:
        self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

  @property
  def keys(self) -> np.ndarray:
    return np.frombuffer(bytes(self._keys), "S32")

  @property
  def digests(self) -> np.ndarray:
    return np.frombuffer(bytes(self._digests), "S32")

  def text(self, i: int) -> str:
    offset = self._offsets[i]
    return self._map[offset:offset + self._lengths[i]].decode("utf-8")

  def split_indices(self, kept: np.ndarray, validation_fraction: float,
                    test_fraction: float = 0.0) -> dict[str, np.ndarray]:
    """`kept` (document indices, in their order) divided by split."""
    digests = self._digests
    names = np.array([split_of_digest(digests[32 * i:32 * i + 8], validation_fraction,
                                      test_fraction) for i in kept.tolist()], dtype=object)
    return {name: kept[names == name] for name in SPLITS}

  def close(self) -> None:
    if self._map is not None:
      self._map.close()
      self._map = None
    self._file.close()


def deduplicate_indices(keys: np.ndarray, digests: np.ndarray, text: Callable[[int], str], *,
                        near_threshold: float, report: CleanReport, num_perm: int = 128,
                        seed: int = 1, progress: bool = False) -> np.ndarray:
  """Indices of the documents kept: no exact duplicates (same `keys`: text up to case and
  whitespace) and, when `near_threshold` > 0, no near duplicates: MinHash over word 5-gram
  shingles with LSH (datasketch), estimated Jaccard similarity >= `near_threshold` to a kept
  document. Only the texts of exact-unique documents are read (through `text(i)`).

  Documents are visited in the order of (key, content digest), so which copy survives, and so
  the result, does not depend on the input order. Returns the kept indices in that order.
  """
  n = len(keys)
  order = np.lexsort((digests, keys))
  first = np.ones(n, bool)
  sorted_keys = keys[order]
  first[1:] = sorted_keys[1:] != sorted_keys[:-1]
  unique = order[first]
  if n > len(unique):  # counts only what happened, like every other reason
    report.removed["exact_duplicate"] += n - len(unique)
  if near_threshold <= 0 or len(unique) < 2:
    report.documents_kept -= n - len(unique)
    return unique
  import zlib
  from datasketch import MinHash, MinHashLSH
  lsh = MinHashLSH(threshold=near_threshold, num_perm=num_perm)
  kept = []
  batch = 512
  for start in tqdm(range(0, len(unique), batch), desc="near duplicates", unit="batch",
                    disable=not progress, leave=False):
    chunk = unique[start:start + batch].tolist()
    # crc32: deterministic (unlike hash()) and several times faster than the default SHA-1.
    hashes = MinHash.bulk([_shingles(text(i)) for i in chunk], num_perm=num_perm, seed=seed,
                          hashfunc=zlib.crc32)
    for i, m in zip(chunk, hashes):
      if lsh.query(m):
        report.removed["near_duplicate"] += 1
        continue
      lsh.insert(i, m)
      kept.append(i)
  report.documents_kept -= n - len(kept)
  return np.asarray(kept, np.int64)


def deduplicate(docs: list[str], *, near_threshold: float, report: CleanReport,
                num_perm: int = 128, seed: int = 1) -> list[str]:
  """`deduplicate_indices` over documents in memory; returns the kept texts in its order."""
  keys = np.array([dedup_key(d) for d in docs], "S32")
  digests = np.array([content_digest(d) for d in docs], "S32")
  kept = deduplicate_indices(keys, digests, docs.__getitem__, near_threshold=near_threshold,
                             report=report, num_perm=num_perm, seed=seed)
  return [docs[i] for i in kept.tolist()]


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
