"""Reading raw text inputs: plain text, JSONL, CSV/TSV, Parquet and saved `datasets` directories,
each optionally gzip- or zstd-compressed; globs and folders. Documents stream out one at a time.

- Plain text (.txt .text .md .rst, and files with no extension or an unknown one whose first
  64 KiB are UTF-8 without NUL bytes: README, copyright, changelog.Debian.gz): by default
  documents separated by blank lines, one sentence (or verse line) per line, the format of
  Google's BERT `create_pretraining_data` (`documents="paragraph"`); `documents="line"` makes
  each non-empty line a document, `documents="file"` the whole file.
- JSONL (.jsonl .json, one object per line), CSV (.csv) and TSV (.tsv): one document per row,
  the text in `text_column`.
- Parquet (.parquet): one document per row of `text_column`, read in record batches.
- A directory written by `datasets.Dataset.save_to_disk` (or a DatasetDict's): every row of
  every split (jaxpt makes its own split), memory-mapped Arrow, read in batches.

A bad record (invalid UTF-8, a JSON line that does not parse) is an error naming the file and
its byte offset or line, unless `on_bad_input="skip"`: then it is dropped and counted in the
report. A binary file, an empty file, a missing column or an unknown format is always an error.

Memory stays bounded whatever the input: plain text is read in pieces of at most 1 MiB (a
single 50 MB line arrives as 50 pieces), and every document longer than
`MAX_DOCUMENT_CHARS` (1M characters) is cut into pieces of at most that many, at whitespace
before cleaning, deduplication and tokenizing see it (nothing is dropped). A
JSONL or CSV row is parsed whole, so its own size is the bound there.
"""

from __future__ import annotations

import codecs
import collections
import csv
import glob
import gzip
import io
import json
import os
from typing import Iterator

from jaxpt.errors import UserError

COMPRESSIONS = (".gz", ".zst")
TEXT = (".txt", ".text", ".md", ".rst")
FORMATS = {**{s: "text" for s in TEXT}, ".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv",
           ".tsv": "tsv", ".parquet": "parquet"}
ON_BAD_INPUT = ("error", "skip")
INPUT_FORMATS = ("auto", "text", "jsonl", "csv", "tsv", "parquet")
DOCUMENTS = ("paragraph", "line", "file")
_SNIFF = 1 << 16  # bytes checked for NUL (binary files)
_CHUNK = 1 << 20  # bytes of a plain-text line read at a time
MAX_DOCUMENT_CHARS = 1_000_000


class InputError(UserError, ValueError):
  """A problem with the user's input files; the message names the path."""


def _is_dataset_dir(path: str) -> bool:
  return os.path.isdir(path) and any(
      os.path.exists(os.path.join(path, f)) for f in ("dataset_info.json",
                                                      "dataset_dict.json", "state.json"))


def _sniffs_as_text(path: str) -> bool:
  """The first 64 KiB (decompressed) hold no NUL byte and decode as UTF-8 (a character cut at
  the end of the sample allowed)."""
  try:
    with _open_binary(path) as f:
      head = f.read(_SNIFF)
  except (OSError, EOFError):
    return False
  if not head or b"\x00" in head:
    return False
  try:
    codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    return True
  except UnicodeDecodeError:
    return False


def format_of(path: str, forced: str = "auto") -> str:
  """'text', 'jsonl', 'csv', 'tsv', 'parquet' or 'datasets': `forced`, or from the name (a
  known extension, after .gz / .zst), or 'text' for a file that sniffs as text; InputError for
  anything else."""
  if _is_dataset_dir(path):
    return "datasets"
  if forced != "auto":
    return forced
  name = os.path.basename(path).lower()
  for c in COMPRESSIONS:
    if name.endswith(c):
      name = name[:-len(c)]
  for suffix, fmt in FORMATS.items():
    if name.endswith(suffix):
      return fmt
  if os.path.isfile(path) and _sniffs_as_text(path):
    return "text"
  raise InputError(f"{path}: unknown input format (known: {', '.join(sorted(FORMATS))}, "
                   f"optionally {' or '.join(COMPRESSIONS)}, or any UTF-8 text file; or a "
                   "saved `datasets` directory); pass --format to say which")


def resolve_inputs(specs: list[str], fmt: str = "auto") -> list[str]:
  """Comma-separated paths, globs and folders -> a sorted list of input files (and saved
  `datasets` directories). Folders are searched for files of the known formats and text files
  (`format_of`)."""
  files: list[str] = []
  for spec in specs:
    for part in (p.strip() for p in spec.split(",")):
      if not part:
        continue
      matches = sorted(glob.glob(os.path.expanduser(part), recursive=True))
      if not matches:
        raise InputError(f"--input {part}: no such file or directory")
      for path in matches:
        if os.path.isdir(path) and not _is_dataset_dir(path):
          found = []
          for root, dirs, names in os.walk(path):
            dirs.sort()
            found.extend(os.path.join(root, d) for d in dirs
                         if _is_dataset_dir(os.path.join(root, d)))
            dirs[:] = [d for d in dirs if not _is_dataset_dir(os.path.join(root, d))]
            for name in names:
              if name.startswith("."):
                continue
              try:
                format_of(os.path.join(root, name), fmt)
              except InputError:
                continue
              found.append(os.path.join(root, name))
          if not found:
            raise InputError(f"--input {path}: folder holds no input files "
                             f"({', '.join(sorted(FORMATS))} or UTF-8 text)")
          files.extend(sorted(found))
        else:
          format_of(path, fmt)  # an unknown format is an error before anything is read
          files.append(path)
  if not files:
    raise InputError("--input: no input given")
  return sorted(dict.fromkeys(files))


def _open_binary(path: str):
  if path.endswith(".gz"):
    return gzip.open(path, "rb")
  if path.endswith(".zst"):
    import zstandard
    return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)
  return open(path, "rb")


def _check_not_binary(path: str) -> None:
  try:
    with _open_binary(path) as f:
      head = f.read(_SNIFF)
  except (OSError, EOFError) as e:  # a corrupt .gz / .zst
    raise InputError(f"{path}: cannot be read ({e})") from None
  nul = head.find(b"\x00")
  if nul >= 0:
    raise InputError(f"{path}: a binary file (NUL byte at offset {nul}), not text")


def _pieces(path: str, on_bad_input: str,
            report: collections.Counter) -> Iterator[tuple[int, str, bool]]:
  """(line number, decoded text, whether the line ends here) of a text-like file, read at most
  `_CHUNK` bytes at a time: a longer line comes in several pieces. Bad UTF-8 is named by its
  byte offset; with on_bad_input="skip" the line is dropped and counted (of a line longer
  than one read, what follows the bad byte's read: the pieces before it are already out)."""
  offset, number, start = 0, 0, True
  decoder = codecs.getincrementaldecoder("utf-8")()
  skipping = False
  with _open_binary(path) as raw:
    reader = io.BufferedReader(raw) if path.endswith(".zst") else raw
    while True:
      chunk = reader.readline(_CHUNK)
      if not chunk:
        break
      if start:
        number += 1
      ends = chunk.endswith(b"\n")
      try:
        text = "" if skipping else decoder.decode(chunk, final=ends)
      except UnicodeDecodeError as e:
        if on_bad_input == "error":
          raise InputError(f"{path}: invalid UTF-8 at byte {offset + e.start} (line {number}); "
                           "pass --on_bad_input=skip to drop such lines") from None
        report["invalid_utf8"] += 1
        decoder.reset()
        skipping, text = True, ""
      offset += len(chunk)
      start = ends
      if ends:
        skipping = False
        decoder.reset()
      if text or ends:
        yield number, text, ends
    tail = decoder.decode(b"", final=True) if not skipping else ""
    if tail:
      yield number, tail, True


def _lines(path: str, on_bad_input: str, report: collections.Counter) -> Iterator[tuple[int, str]]:
  """(line number, decoded line) of a text-like file, each line whole (JSONL and CSV parse
  rows whole); a line dropped for bad UTF-8 is not yielded."""
  parts: list[str] = []
  dropped = report["invalid_utf8"]
  for number, text, ends in _pieces(path, on_bad_input, report):
    parts.append(text)
    if ends:
      if report["invalid_utf8"] == dropped:
        yield number, "".join(parts)
      parts, dropped = [], report["invalid_utf8"]
  if parts and report["invalid_utf8"] == dropped:
    yield number, "".join(parts)


def _text_documents(path, on_bad_input, report, documents: str = "paragraph"):
  """Paragraphs (blank-line separated; `documents="line"`: lines; "file": the file), flushed
  early once they pass MAX_DOCUMENT_CHARS."""
  lines: list[str] = []  # finished lines of the current paragraph
  partial: list[str] = []  # pieces of the line being read
  size = 0
  for _, text, ends in _pieces(path, on_bad_input, report):
    partial.append(text)
    size += len(text)
    if ends:
      line = "".join(partial).rstrip("\r\n")
      partial = []
      if line.strip():
        lines.append(line)
        if documents == "line":
          yield line
          lines, size = [], 0
      elif lines and documents == "paragraph":
        yield "\n".join(lines)
        lines, size = [], 0
    if size > MAX_DOCUMENT_CHARS:  # a huge paragraph or line: out before it grows further,
      text = "\n".join(lines + ["".join(partial)])  # up to its last whitespace (a word read
      cut = max(text.rfind(" "), text.rfind("\n"))  # halfway stays whole in the next one)
      cut = cut if cut > 0 else len(text)
      yield text[:cut]
      lines, partial = [], [text[cut:]]
      size = len(partial[0])
  rest = "\n".join(lines + (["".join(partial)] if partial else []))
  if rest.strip():
    yield rest


def bounded(doc: str, limit: int | None = None):
  """`doc`, or its pieces of at most `limit` (default MAX_DOCUMENT_CHARS) characters, cut at
  the last whitespace before the limit (at the limit where a piece has none)."""
  limit = limit or MAX_DOCUMENT_CHARS
  if len(doc) <= limit:
    yield doc
    return
  start = 0
  while len(doc) - start > limit:
    cut = max(doc.rfind(" ", start, start + limit), doc.rfind("\n", start, start + limit))
    if cut <= start:
      cut = start + limit
    yield doc[start:cut]
    start = cut
  yield doc[start:]


def _jsonl_documents(path, column, on_bad_input, report):
  for number, line in _lines(path, on_bad_input, report):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      if on_bad_input == "error":
        raise InputError(f"{path}:{number}: not a JSON object ({e.msg})") from None
      report["invalid_json"] += 1
      continue
    if not isinstance(row, dict) or column not in row:
      fields = ", ".join(map(str, row)) if isinstance(row, dict) else type(row).__name__
      raise InputError(f"{path}:{number}: no field {column!r} (has: {fields}); set "
                       "--text_column")
    if isinstance(row[column], str):
      yield row[column]
    else:  # a number, a list, null: not a document, and counted as such
      report["text_not_a_string"] += 1


def _csv_documents(path, column, delimiter, on_bad_input, report):
  reader = csv.DictReader((line for _, line in _lines(path, on_bad_input, report)),
                          delimiter=delimiter)
  if reader.fieldnames is None:
    return
  if column not in reader.fieldnames:
    raise InputError(f"{path}: no column {column!r} (has: {', '.join(reader.fieldnames)}); "
                     "set --text_column")
  for row in reader:
    if row.get(column):
      yield row[column]


def _strings(values, report):
  for t in values:
    if isinstance(t, str):
      yield t
    else:
      report["text_not_a_string"] += 1


def _parquet_documents(path, column, report):
  import pyarrow.parquet as pq
  try:
    f = pq.ParquetFile(path)
  except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ...
    raise InputError(f"{path}: not a Parquet file ({e})") from None
  names = f.schema_arrow.names
  if column not in names:
    raise InputError(f"{path}: no column {column!r} (has: {', '.join(names)}); set "
                     "--text_column")
  for batch in f.iter_batches(columns=[column], batch_size=1024):
    yield from _strings(batch.column(0).to_pylist(), report)


def _datasets_documents(path, column, report):
  import datasets
  loaded = datasets.load_from_disk(path)
  parts = ([loaded[k] for k in sorted(loaded)] if isinstance(loaded, datasets.DatasetDict)
           else [loaded])
  for part in parts:
    if column not in part.column_names:
      raise InputError(f"{path}: no column {column!r} (has: {', '.join(part.column_names)}); "
                       "set --text_column")
    for batch in part.select_columns([column]).iter(batch_size=1024):
      yield from _strings(batch[column], report)


def read_documents(path: str, *, text_column: str = "text", on_bad_input: str = "error",
                   report: collections.Counter | None = None, fmt: str = "auto",
                   documents: str = "paragraph") -> Iterator[str]:
  """The documents of one input, streamed. `report` counts what was skipped, by reason;
  `fmt` forces a format; `documents` splits plain text (paragraph | line | file)."""
  report = collections.Counter() if report is None else report
  skipped_before = sum(report.values())
  fmt = format_of(path, fmt)
  if fmt != "datasets":
    if os.path.getsize(path) == 0:
      raise InputError(f"{path}: empty file")
    if fmt != "parquet":
      _check_not_binary(path)
  if fmt == "text":
    docs = _text_documents(path, on_bad_input, report, documents)
  elif fmt == "jsonl":
    docs = _jsonl_documents(path, text_column, on_bad_input, report)
  elif fmt in ("csv", "tsv"):
    docs = _csv_documents(path, text_column, "," if fmt == "csv" else "\t", on_bad_input,
                          report)
  elif fmt == "parquet":
    docs = _parquet_documents(path, text_column, report)
  else:
    docs = _datasets_documents(path, text_column, report)
  any_text = False
  for doc in docs:
    if doc.strip():
      any_text = True
      yield from bounded(doc)
  if not any_text and sum(report.values()) == skipped_before:
    raise InputError(f"{path}: holds no text (empty or whitespace only)")
