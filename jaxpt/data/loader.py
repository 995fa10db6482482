"""The grain input pipeline: global shuffle, per-process slice, read, mask, batch, prefetch.

The examples form one stream: epoch after epoch, each a seeded permutation (grain's). Batch
`step` takes the next `batch_size` examples of it, so it is a pure function of (seed, step,
the stream position where the run's batches start); masking is seeded by (seed, step, row).
Resuming at step N starts the pipeline at N at the stored stream position (N * batch_size
unless the batch size changed on the way), so no example of an epoch is skipped or repeated.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Iterator

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
        max_predictions=min(cfg.max_predictions_per_seq, self.seq_length),
        rate_phases=config_lib.mask_rate_phases(cfg),
        continues_word=(masking.continuation_table(self.tokenizer())
                        if cfg.whole_word_masking else None))


def batches(reader: store.SplitReader, spec: masking.MaskingSpec | None, *, batch_size: int,
            seed: int, start_step: int = 0, first_example: int | None = None,
            shuffle: bool = True, rows: tuple[int, int] | None = None, read_threads: int = 2,
            prefetch: int = 4) -> Iterator[dict[str, np.ndarray]]:
  """Endless iterator of this process's part of each global batch, from `start_step` on.

  Batch `start_step` begins at example `first_example` of the stream (default
  `start_step * batch_size`). `rows` = [start, stop) is the block of the global batch this
  process feeds to its devices (`sharding.local_batch_rows`); only those examples are read.
  Default: the whole batch. `spec` None: causal-LM batches (`masking.causal_batch`), unmasked.
  """
  offset, stop = rows if rows is not None else (0, batch_size)
  if not 0 <= offset < stop <= batch_size:
    raise ValueError(f"rows {rows} are not a block of a batch of {batch_size}")
  local = stop - offset
  if first_example is None:
    first_example = start_step * batch_size
  stream = grain.MapDataset.range(len(reader))
  if shuffle:
    stream = stream.seed(seed).shuffle()
  stream = stream.repeat()

  def load(step: int) -> dict[str, np.ndarray]:
    first = first_example + (step - start_step) * batch_size + offset
    indices = np.fromiter((stream[e] for e in range(first, first + local)), np.int64, local)
    rows = reader.read(indices)
    if spec is None:
      return masking.causal_batch(rows)
    return masking.mask_batch(rows, spec, seed, step, row_offset=offset)

  ds = grain.MapDataset.range(start_step, 2**62).map(load)
  options = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch)
  return iter(ds.to_iter_dataset(options))
