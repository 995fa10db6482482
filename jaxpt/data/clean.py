"""Reading text inputs, normalising and filtering documents, and a deterministic split.

Text input format: documents are separated by blank lines; within a document each line is a
sentence (or a verse line). This is the format of Google's BERT `create_pretraining_data`.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import gzip
import hashlib
import os
import re
import unicodedata
from typing import Iterator

TEXT_SUFFIXES = (".txt", ".text", ".md", ".rst", ".txt.gz")


class InputError(ValueError):
  """A problem with the user's input files; the message names the path."""


def resolve_inputs(specs: list[str]) -> list[str]:
  """Expands comma-separated paths, globs and directories into a sorted list of text files."""
  files: list[str] = []
  for spec in specs:
    for part in (p.strip() for p in spec.split(",")):
      if not part:
        continue
      matches = sorted(glob.glob(os.path.expanduser(part), recursive=True))
      if not matches:
        raise InputError(f"--input {part}: no such file or directory")
      for path in matches:
        if os.path.isdir(path):
          found = sorted(
              os.path.join(root, name)
              for root, _, names in os.walk(path) for name in names
              if name.endswith(TEXT_SUFFIXES) and not name.startswith("."))
          if not found:
            raise InputError(f"--input {path}: directory holds no text files "
                             f"({', '.join(TEXT_SUFFIXES)})")
          files.extend(found)
        else:
          files.append(path)
  if not files:
    raise InputError("--input: no input given")
  return sorted(dict.fromkeys(files))


def read_documents(path: str) -> Iterator[str]:
  """Yields the blank-line-separated documents of one text file (optionally gzip)."""
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rt", encoding="utf-8") as f:
      lines: list[str] = []
      for line in f:
        if line.strip():
          lines.append(line.rstrip("\n"))
        elif lines:
          yield "\n".join(lines)
          lines = []
      if lines:
        yield "\n".join(lines)
  except UnicodeDecodeError as e:
    raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


_SPACES = re.compile(r"[^\S\n]+")


def normalize(text: str) -> str:
  """NFC, control characters removed, runs of spaces collapsed, lines stripped, empty lines dropped."""
  text = unicodedata.normalize("NFC", text)
  text = "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch) != "Cc")
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


def clean_documents(docs, *, min_chars: int, report: CleanReport) -> Iterator[str]:
  """Normalises each document and drops those too short to make an example."""
  for doc in docs:
    report.documents_in += 1
    doc = normalize(doc)
    if not doc:
      report.removed["empty"] += 1
    elif len(doc) < min_chars:
      report.removed["too_short"] += 1
    else:
      report.documents_kept += 1
      yield doc


def split_of(doc: str, validation_fraction: float) -> str:
  """'train' or 'validation', a pure function of the document's text (order-independent)."""
  h = int.from_bytes(hashlib.sha256(doc.encode("utf-8")).digest()[:8], "big") / 2.0 ** 64
  return "validation" if h < validation_fraction else "train"


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
