"""Examples as tensorstore zarr3 arrays, plus the JSON manifest, on local disk or GCS.

Layout of a prepared directory:
  manifest.json                 written last: its presence means the directory is complete
  tokenizer.json, vocab.txt
  {split}/input_ids             [examples, length] uint16 (int32 if the vocabulary needs it)
  {split}/token_type_ids        [examples, length] uint8
  {split}/lengths               [examples] int32
  {split}/nsp_labels            [examples] uint8
Arrays are zarr3 with sharding: small inner chunks for random reads, few files on disk.

Readers take a local path or a URL that tensorstore knows (`gs://bucket/dir`, `file:///dir`):
every file, the manifest and tokenizer included, is read through tensorstore's key-value
store then, so a TPU pod's workers read one copy on GCS. `jaxpt prepare` writes locally (its
temporary-directory-then-rename has no equivalent on GCS); copy the finished directory up.
"""

from __future__ import annotations

import json
import os

import numpy as np
import tensorstore as ts

from jaxpt.errors import UserError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
# Set in manifests of directories whose arrays store every chunk (older ones skipped chunks
# of zeros, which then read as the fill value).
ALL_CHUNKS_STORED = "all_chunks_stored"
ARRAYS = ("input_ids", "token_type_ids", "lengths", "nsp_labels")
PACKED_ARRAYS = ("segment_ids", "cls_positions")  # only in packed datasets
_ROWS_PER_CHUNK = 64  # inner chunk: a random read decompresses 64 rows
_ROWS_PER_SHARD = 16384  # outer chunk: one file per 16k rows


class StoreError(UserError, ValueError):
  pass


def token_dtype(vocab_size: int) -> np.dtype:
  return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.int32)


def is_url(path: str) -> bool:
  return "://" in path


def _kvstore(path: str) -> dict | str:
  if path.startswith("gs://"):
    bucket, _, key = path[len("gs://"):].partition("/")
    return {"driver": "gcs", "bucket": bucket, "path": key}
  if is_url(path):
    return path  # any tensorstore kvstore URL: file://, memory://, ...
  return {"driver": "file", "path": os.path.abspath(path)}


def read_bytes(directory: str, name: str) -> bytes | None:
  """A file of a prepared directory, local or at a URL; None when it is absent."""
  if not is_url(directory):
    path = os.path.join(directory, name)
    if not os.path.exists(path):
      return None
    with open(path, "rb") as f:
      return f.read()
  spec = _kvstore(directory.rstrip("/") + "/")
  try:
    result = ts.KvStore.open(spec).result().read(name).result()
  except ValueError as e:
    raise StoreError(f"{directory}: cannot read {name} ({e})") from None
  return bytes(result.value) if result.state == "value" else None


def _spec(path: str, row_shape: tuple[int, ...], dtype: np.dtype) -> dict:
  """A zarr3 array of 0 rows, grown by `SplitWriter.append`: one file per 16k rows."""
  return {
      "driver": "zarr3",
      "kvstore": _kvstore(path),
      # Every chunk is written, zeros included, so that a chunk missing on read is damage.
      "store_data_equal_to_fill_value": True,
      "metadata": {
          "shape": [0, *row_shape],
          "data_type": np.dtype(dtype).name,
          "chunk_grid": {"name": "regular",
                         "configuration": {"chunk_shape": [_ROWS_PER_SHARD, *row_shape]}},
          "codecs": [{"name": "sharding_indexed", "configuration": {
              "chunk_shape": [_ROWS_PER_CHUNK, *row_shape],
              "codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                         {"name": "zstd", "configuration": {"level": 3}}],
          }}],
      },
  }


class SplitWriter:
  """One split's arrays under `directory/split/`, appended a part at a time (the arrays grow),
  so a split never has to be in memory whole."""

  def __init__(self, directory: str, split: str, vocab_size: int, packed: bool = False):
    self.split = split
    self.rows = 0
    self._dtypes = {"input_ids": token_dtype(vocab_size), "token_type_ids": np.dtype(np.uint8),
                    "lengths": np.dtype(np.int32), "nsp_labels": np.dtype(np.uint8),
                    "segment_ids": np.dtype(np.uint8), "cls_positions": np.dtype(np.int32)}
    self._names = ARRAYS + (PACKED_ARRAYS if packed else ())
    self._directory = directory
    self._arrays = None  # opened at the first part, when the row shapes are known

  def append(self, arrays) -> None:
    data = {name: np.asarray(getattr(arrays, name)).astype(self._dtypes[name])
            for name in self._names}
    n = len(data["lengths"])
    if n == 0:
      return
    if self._arrays is None:
      self._arrays = {name: ts.open(_spec(os.path.join(self._directory, self.split, name),
                                          x.shape[1:], x.dtype),
                                    create=True, delete_existing=True).result()
                      for name, x in data.items()}
    futures = []
    for name, x in data.items():
      arr = self._arrays[name]
      arr = self._arrays[name] = arr.resize(
          exclusive_max=[self.rows + n, *arr.shape[1:]]).result()
      futures.append(arr[self.rows:self.rows + n].write(x))
    for f in futures:
      f.result()
    self.rows += n


def write_manifest(directory: str, manifest: dict) -> None:
  """Written last, through a temporary file and a rename, so it is never half there."""
  path = os.path.join(directory, MANIFEST)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump({"format_version": FORMAT_VERSION, ALL_CHUNKS_STORED: True, **manifest}, f,
              indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def read_manifest(directory: str) -> dict:
  path = os.path.join(directory, MANIFEST)
  if not is_url(directory) and not os.path.isdir(directory):
    raise StoreError(f"data directory {directory}: does not exist (run `jaxpt prepare` first)")
  text = read_bytes(directory, MANIFEST)
  if text is None:
    raise StoreError(f"data directory {directory}: no {MANIFEST}; it is not a finished "
                     "`jaxpt prepare` output")
  manifest = json.loads(text)
  if manifest.get("format_version") != FORMAT_VERSION:
    raise StoreError(f"{path}: format_version {manifest.get('format_version')!r}, "
                     f"this jaxpt reads {FORMAT_VERSION}")
  return manifest


class SplitReader:
  """Random-access rows of one split; `read(indices)` returns a dict of numpy arrays."""

  def __init__(self, directory: str, split: str, packed: bool = False,
               expected_rows: int | None = None, all_chunks_stored: bool = False):
    self.split = split
    self.directory = directory
    self._arrays = {}
    for name in ARRAYS + (PACKED_ARRAYS if packed else ()):
      # A chunk file that is not there is an error, not rows of the fill value (zeros).
      spec = {"driver": "zarr3", "kvstore": _kvstore(os.path.join(directory, split, name)),
              "fill_missing_data_reads": not all_chunks_stored}
      try:
        self._arrays[name] = ts.open(spec, read=True).result()
      except ValueError as e:
        raise StoreError(f"{os.path.join(directory, split, name)}: cannot open ({e})") from None
    self.num_examples = int(self._arrays["lengths"].shape[0])
    self.seq_length = int(self._arrays["input_ids"].shape[1])
    for name, arr in self._arrays.items():
      rows = int(arr.shape[0])
      if expected_rows is not None and rows != expected_rows:
        raise StoreError(f"{os.path.join(directory, split, name)}: {rows} rows, but "
                         f"{MANIFEST} counts {expected_rows} {split} examples; the directory "
                         "is damaged or was changed after `jaxpt prepare`")

  def __len__(self) -> int:
    return self.num_examples

  def read(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    """Rows at `indices` (any order, repeats allowed), as int32 arrays."""
    unique, inverse = np.unique(indices, return_inverse=True)
    futures = {name: arr[unique].read() for name, arr in self._arrays.items()}
    out = {}
    for name, f in futures.items():
      try:
        out[name] = np.asarray(f.result())[inverse].astype(np.int32)
      except ValueError as e:  # a missing or damaged chunk (tensorstore names it)
        reason = " ".join(str(e).split())
        raise StoreError(f"{os.path.join(self.directory, self.split, name)}: cannot read rows "
                         f"{int(unique[0])}..{int(unique[-1])} ({reason[:300]}); the prepared "
                         "directory is incomplete or damaged: prepare it again") from None
    return out
