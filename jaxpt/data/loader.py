"""The grain input pipeline: global shuffle, per-process slice, read, mask, batch, prefetch.

The examples form one stream: epoch after epoch, each a seeded permutation (grain's). Batch
`step` takes the next `batch_size` examples of it, so it is a pure function of (seed, step,
the stream position where the run's batches start); masking is seeded by (seed, step, row).
Resuming at step N starts the pipeline at N at the stored stream position (N * batch_size
unless the batch size changed on the way), so no example of an epoch is skipped or repeated.

A mixture (`data.sources`) is the same stream over several directories: `RowSources` says
which source each row of it comes from and the how-many-th of that source's own stream it is,
a pure function of (seed, row), so resume and the per-process slices need nothing more.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Iterator, Sequence

import grain
import numpy as np

from jaxpt import config as config_lib
from jaxpt.config import DataConfig
from jaxpt.data import masking, store, tokenizer


@dataclasses.dataclass(frozen=True)
class PreparedData:
  """A finished `jaxpt prepare` directory: its manifest and the masking it implies."""

  directory: str
  manifest: dict

  @classmethod
  def open(cls, directory: str) -> "PreparedData":
    return cls(directory, store.read_manifest(directory))

  @property
  def vocab_size(self) -> int:
    return int(self.manifest["tokenizer"]["vocab_size"])

  @property
  def seq_length(self) -> int:
    return int(self.manifest["seq_length"])

  def num_examples(self, split: str) -> int:
    return int(self.manifest["splits"].get(split, {}).get("examples", 0))

  def tokenizer(self):
    name = self.manifest["tokenizer"]["file"]
    if not store.is_url(self.directory):
      return tokenizer.load(os.path.join(self.directory, name))
    return tokenizer.from_json(store.read_bytes(self.directory, name).decode("utf-8"),
                               f"{self.directory}/{name}")

  def reader(self, split: str) -> store.SplitReader:
    return store.SplitReader(self.directory, split, packed=self.packed,
                             expected_rows=self.num_examples(split),
                             all_chunks_stored=bool(self.manifest.get(store.ALL_CHUNKS_STORED)))

  @property
  def packed(self) -> bool:
    return bool(self.manifest.get("packed", False))

  def masking_spec(self, cfg: DataConfig) -> masking.MaskingSpec:
    special = self.manifest["tokenizer"]["special_ids"]
    return masking.MaskingSpec(
        vocab_size=self.vocab_size, mask_id=int(special["mask"]),
        special_ids=tuple(sorted(int(v) for v in special.values())),
        mask_prob=cfg.mask_prob, mask_token_prob=cfg.mask_token_prob,
        random_token_prob=cfg.random_token_prob,
        max_predictions=config_lib.max_predictions(cfg, self.seq_length),
        rate_phases=config_lib.mask_rate_phases(cfg),
        continues_word=(masking.continuation_table(self.tokenizer())
                        if cfg.whole_word_masking else None))


Phases = tuple  # ((first step, global batch size), ...), first steps increasing from 0


def batch_phases(final: int, start: int = 0, warmup_tokens: int = 0,
                 seq_length: int = 1) -> Phases:
  """The batch sizes of a run: `start`, 2 `start`, 4 `start`, ... below `final`, each for an
  equal share of `warmup_tokens` (at least one step), then `final`; ((0, final),) with no
  warm-up."""
  if start <= 0 or warmup_tokens <= 0 or start >= final:
    return ((0, final),)
  sizes = []
  while start < final:
    sizes.append(start)
    start *= 2
  phases, step = [], 0
  for size in sizes:
    phases.append((step, size))
    step += max(1, math.ceil(warmup_tokens / len(sizes) / (size * seq_length)))
  return tuple(phases) + ((step, final),)


def size_at(phases: Phases, step: int) -> int:
  """The global batch size of batch `step`."""
  return next(size for first, size in reversed(phases) if first <= step)


def stream_rows(phases: Phases, begin: int, end: int) -> int:
  """Examples the batches of steps [begin, end) take from the stream."""
  total = 0
  bounds = [first for first, _ in phases[1:]] + [max(end, phases[-1][0]) + 1]
  for (first, size), stop in zip(phases, bounds):
    total += max(0, min(end, stop) - max(begin, first)) * size
  return total


MIX_BLOCK = 4096  # rows of the stream over which a mixture holds its weights exactly


def block_quotas(weights: Sequence[float], block: int = MIX_BLOCK) -> np.ndarray:
  """Rows per block for each source: `weights * block` by largest remainder, at least one
  row for every positive weight (ties go to the earlier source)."""
  w = np.asarray(weights, np.float64)
  target = w / w.sum() * block
  quota = np.floor(target).astype(np.int64)
  quota[(w > 0) & (quota == 0)] = 1
  order = sorted(range(len(w)), key=lambda i: (-(target[i] - np.floor(target[i])), i))
  i = 0
  while quota.sum() < block:
    if w[order[i % len(w)]] > 0:
      quota[order[i % len(w)]] += 1
    i += 1
  while quota.sum() > block:  # the minimum of one row made too many: take from the largest
    quota[int(np.argmax(quota))] -= 1
  return quota


class RowSources:
  """Row g of the batch stream -> (source, position in that source's stream).

  Block b (rows b*M .. b*M + M - 1) holds `quota[i]` rows of source i in an order drawn from
  (seed, b); the k-th row of source i in block b is position b * quota[i] + k of source i.
  """

  def __init__(self, quotas: np.ndarray, seed: int):
    self.quotas = np.asarray(quotas, np.int64)
    self.block = int(self.quotas.sum())
    self.seed = seed

  @functools.lru_cache(maxsize=64)
  def _block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.repeat(np.arange(len(self.quotas)), self.quotas)
    np.random.default_rng([self.seed, b, 0x6D6978]).shuffle(order)
    rank = np.empty(self.block, np.int64)
    for i in range(len(self.quotas)):
      where = order == i
      rank[where] = np.arange(int(where.sum()))
    return order, rank

  def locate(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows = np.asarray(rows, np.int64)
    source = np.empty(rows.shape, np.int64)
    position = np.empty(rows.shape, np.int64)
    for b in np.unique(rows // self.block):
      here = rows // self.block == b
      order, rank = self._block(int(b))
      offset = rows[here] % self.block
      source[here] = order[offset]
      position[here] = b * self.quotas[order[offset]] + rank[offset]
    return source, position

  def counts(self, first: int, stop: int) -> np.ndarray:
    """Rows of each source among stream rows [first, stop)."""
    if stop <= first:
      return np.zeros(len(self.quotas), np.int64)
    source, _ = self.locate(np.arange(first, stop))
    return np.bincount(source, minlength=len(self.quotas))


@dataclasses.dataclass(frozen=True)
class Mixture:
  """`data.sources`: prepared directories with their weights; the first speaks for the rest
  (tokenizer, length, example kind), which `open_mixture` checks they share."""

  names: tuple[str, ...]
  sources: tuple[PreparedData, ...]
  weights: tuple[float, ...]

  def row_sources(self, seed: int) -> RowSources:
    return RowSources(block_quotas(self.weights), seed)


def _shape_fields(manifest: dict) -> dict:
  """What the sources of a mixture must share: the shapes and meaning of their rows."""
  return {"seq_length": manifest.get("seq_length"), "examples": manifest.get("examples"),
          "packed": bool(manifest.get("packed", False)),
          "max_sequences_per_row": (manifest.get("options", {}).get("max_sequences_per_row")
                                    if manifest.get("packed") else None)}


def open_data(cfg: DataConfig) -> PreparedData:
  """`data.dir`, or the first of `data.sources` (which speaks for the mixture's shapes)."""
  parsed = config_lib.mixture_sources(cfg)
  return PreparedData.open(parsed[0][1] if parsed else cfg.dir)


def open_mixture(cfg: DataConfig) -> Mixture | None:
  """The mixture of `cfg.sources`, every source checked against the first; None when unset."""
  parsed = config_lib.mixture_sources(cfg)
  if not parsed:
    return None
  opened = []
  for name, directory, _ in parsed:
    opened.append(PreparedData.open(directory))
  first, head = opened[0], parsed[0]
  for (name, directory, _), data in zip(parsed[1:], opened[1:]):
    if data.manifest["tokenizer"]["hash"] != first.manifest["tokenizer"]["hash"]:
      raise config_lib.ConfigError(
          f"config.data.sources: {name} ({directory}) has another tokenizer than {head[0]} "
          f"({head[1]}); sources must share one: prepare them with --tokenizer="
          f"{head[1]}/{first.manifest['tokenizer']['file']}")
    for key, want in _shape_fields(first.manifest).items():
      have = _shape_fields(data.manifest)[key]
      if have != want:
        raise config_lib.ConfigError(
            f"config.data.sources: {name} ({directory}) has {key}={have!r} but {head[0]} "
            f"({head[1]}) has {want!r}; the sources of a mixture must match")
  return Mixture(tuple(n for n, _, _ in parsed), tuple(opened), tuple(w for _, _, w in parsed))


def batches(reader: store.SplitReader | Sequence[store.SplitReader],
            spec: masking.MaskingSpec | None, *, batch_size: int,
            seed: int, start_step: int = 0, first_example: int | None = None,
            shuffle: bool = True, rows: tuple[int, int] | None = None, read_threads: int = 2,
            prefetch: int = 4, row_sources: RowSources | None = None,
            phases: Phases | None = None,
            rows_of=None) -> Iterator[dict[str, np.ndarray]]:
  """Endless iterator of this process's part of each global batch, from `start_step` on.

  Batch `start_step` begins at example `first_example` of the stream (default: after the
  examples of the batches before it). `rows` = [start, stop) is the block of the global batch this
  process feeds to its devices (`sharding.local_batch_rows`); only those examples are read.
  Default: the whole batch. `spec` None: causal-LM batches (`masking.causal_batch`), unmasked.
  A mixture passes one reader per source and its `row_sources`; source i's stream is
  shuffled with seed + i (a one-source mixture is its directory alone).
  With `phases` (`batch_phases`) the global batch size changes by step: batch `step` then
  holds `size_at(phases, step)` examples, of which this process reads `rows_of(size)`.
  """
  if phases is None:
    phases = ((0, batch_size),)
  if rows_of is None:
    rows_of = (lambda size: rows) if rows is not None else (lambda size: (0, size))
  for _, size in phases:
    offset, stop = rows_of(size)
    if not 0 <= offset < stop <= size:
      raise ValueError(f"rows {(offset, stop)} are not a block of a batch of {size}")
  if first_example is None:
    first_example = stream_rows(phases, 0, start_step)
  readers = list(reader) if isinstance(reader, (list, tuple)) else [reader]
  if row_sources is None and len(readers) != 1:
    raise ValueError("several readers need the mixture's row_sources")
  streams = []
  for i, r in enumerate(readers):
    stream = grain.MapDataset.range(len(r))
    if shuffle:
      stream = stream.seed(seed + i).shuffle()
    streams.append(stream.repeat())

  def read(first: int, local: int) -> dict[str, np.ndarray]:
    if row_sources is None:
      indices = np.fromiter((streams[0][e] for e in range(first, first + local)), np.int64,
                            local)
      return readers[0].read(indices)
    source, position = row_sources.locate(np.arange(first, first + local))
    out = None
    for i in np.unique(source):
      here = source == i
      indices = np.fromiter((streams[i][int(p)] for p in position[here]), np.int64,
                            int(here.sum()))
      part = readers[i].read(indices)
      if out is None:
        out = {k: np.empty((local, *v.shape[1:]), v.dtype) for k, v in part.items()}
      for k, v in part.items():
        out[k][here] = v
    return out

  def load(step: int) -> dict[str, np.ndarray]:
    offset, stop = rows_of(size_at(phases, step))
    stored = read(first_example + stream_rows(phases, start_step, step) + offset,
                  stop - offset)
    if spec is None:
      return masking.causal_batch(stored)
    return masking.mask_batch(stored, spec, seed, step, row_offset=offset)

  ds = grain.MapDataset.range(start_step, 2**62).map(load)
  options = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch)
  return iter(ds.to_iter_dataset(options))
