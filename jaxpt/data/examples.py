"""Tokenized documents -> fixed-length examples: BERT sentence pairs for MLM + NSP, or
RoBERTa's FULL-SENTENCES packing for MLM alone.

The algorithm of Google's `create_pretraining_data.py` (Devlin et al. 2019): fill a chunk of
consecutive sentences up to a target length (shorter with probability `short_seq_prob`), cut it
into A and B at a random sentence boundary, and with probability 1/2 replace B by text from a
random other document (NSP label 1). Masking is not done here: it is dynamic, in the loader.
"""

from __future__ import annotations

import dataclasses

import numpy as np

Document = list[list[int]]  # sentences of token ids (no special tokens)


@dataclasses.dataclass
class ExampleArrays:
  input_ids: np.ndarray  # [examples, length] int32
  token_type_ids: np.ndarray  # [examples, length] uint8
  lengths: np.ndarray  # [examples] int32, tokens before padding
  nsp_labels: np.ndarray  # [examples] uint8, 1 = B is from a random document; packed: [rows, K]
  # Packed rows only (`pack`): which sequence each token belongs to (1..K, 0 = padding), and
  # where each sequence's [CLS] is (-1: no sequence in that slot).
  segment_ids: np.ndarray | None = None  # [rows, length] uint8
  cls_positions: np.ndarray | None = None  # [rows, K] int32

  def __len__(self) -> int:
    return len(self.lengths)


def _truncate_pair(a: list[int], b: list[int], max_tokens: int, rng: np.random.Generator):
  """Trims the longer segment, from the front or back at random, until both fit."""
  while len(a) + len(b) > max_tokens:
    longer = a if len(a) > len(b) else b
    if rng.random() < 0.5:
      del longer[0]
    else:
      longer.pop()


def sentence_pairs(documents: list[Document], seq_length: int, rng: np.random.Generator,
                   short_seq_prob: float = 0.1):
  """Yields (tokens_a, tokens_b, is_random_next) for all documents, in order."""
  max_tokens = seq_length - 3  # [CLS] A [SEP] B [SEP]
  for doc_index, doc in enumerate(documents):
    target = max_tokens
    if rng.random() < short_seq_prob:
      target = int(rng.integers(2, max_tokens + 1))
    chunk: list[list[int]] = []
    chunk_len = 0
    i = 0
    while i < len(doc):
      chunk.append(doc[i])
      chunk_len += len(doc[i])
      if i == len(doc) - 1 or chunk_len >= target:
        a_end = 1 if len(chunk) < 2 else int(rng.integers(1, len(chunk)))
        tokens_a = [t for s in chunk[:a_end] for t in s]
        tokens_b: list[int] = []
        is_random = len(documents) > 1 and (len(chunk) == 1 or rng.random() < 0.5)
        if is_random:
          other = int(rng.integers(0, len(documents) - 1))
          other += other >= doc_index  # any document but this one
          rdoc = documents[other]
          start = int(rng.integers(0, len(rdoc)))
          for sent in rdoc[start:]:
            tokens_b.extend(sent)
            if len(tokens_b) >= target - len(tokens_a):
              break
          i -= len(chunk) - a_end  # the unused sentences start the next chunk
        else:
          tokens_b = [t for s in chunk[a_end:] for t in s]
        _truncate_pair(tokens_a, tokens_b, max_tokens, rng)
        if tokens_a and tokens_b:
          yield tokens_a, tokens_b, is_random
        chunk, chunk_len = [], 0
      i += 1


def build_examples(documents: list[Document], seq_length: int, *, cls_id: int, sep_id: int,
                   pad_id: int, seed, short_seq_prob: float = 0.1) -> ExampleArrays:
  """All sentence-pair examples of `documents` as padded arrays, a pure function of `seed`."""
  rng = np.random.default_rng(seed)
  pairs = list(sentence_pairs(documents, seq_length, rng, short_seq_prob))
  n = len(pairs)
  input_ids = np.full((n, seq_length), pad_id, np.int32)
  token_type_ids = np.zeros((n, seq_length), np.uint8)
  lengths = np.empty(n, np.int32)
  for i, (a, b, _) in enumerate(pairs):  # [CLS] A [SEP] B [SEP], written in place
    la, lb = len(a), len(b)
    row = input_ids[i]
    row[0], row[la + 1], row[la + lb + 2] = cls_id, sep_id, sep_id
    row[1:la + 1] = a
    row[la + 2:la + lb + 2] = b
    token_type_ids[i, la + 2:la + lb + 3] = 1
    lengths[i] = la + lb + 3
  return ExampleArrays(input_ids=input_ids, token_type_ids=token_type_ids, lengths=lengths,
                       nsp_labels=np.asarray([int(r) for _, _, r in pairs], np.uint8))


def pack_full_sentences(documents: list[Document], seq_length: int, *, cls_id: int,
                        sep_id: int, pad_id: int) -> ExampleArrays:
  """RoBERTa's FULL-SENTENCES inputs (Liu et al. 2019): whole sentences packed in order up to
  `seq_length` - 2 tokens, crossing document boundaries with a separator token between
  documents (none where an example ends there anyway); a sentence longer than an example is cut into example-sized pieces. Each example
  is [CLS] ... [SEP]; one segment; no NSP (labels 0). Deterministic: no randomness at all."""
  budget = seq_length - 2
  rows, lengths = [], []
  current: list[int] = []

  def flush():
    nonlocal current
    if current and current != [sep_id]:
      ids = [cls_id, *current, sep_id]
      rows.append(ids + [pad_id] * (seq_length - len(ids)))
      lengths.append(len(ids))
    current = []

  for d, doc in enumerate(documents):
    if d and current:  # the document boundary: a separator, when it fits
      if len(current) + 1 > budget:
        flush()
      else:
        current.append(sep_id)
    for sent in doc:
      for start in range(0, len(sent), budget):
        piece = sent[start:start + budget]
        if len(current) + len(piece) > budget:
          flush()
        current.extend(piece)
  flush()
  shape = (len(rows), seq_length)
  return ExampleArrays(
      input_ids=np.asarray(rows, np.int32).reshape(shape),
      token_type_ids=np.zeros(shape, np.uint8),
      lengths=np.asarray(lengths, np.int32),
      nsp_labels=np.zeros(len(rows), np.uint8))


def pack(arrays: ExampleArrays, max_per_row: int, pad_id: int) -> ExampleArrays:
  """Several examples per row to cut padding (Krell et al. 2021, as in MLPerf's BERT): best
  fit decreasing, at most `max_per_row` per row, each example whole and contiguous. The model
  keeps packed sequences apart (attention within a segment, positions restarting at 0, an NSP
  prediction at each [CLS]), so a packed row computes what its examples would alone."""
  n, length = arrays.input_ids.shape
  order = np.argsort(-arrays.lengths, kind="stable")
  free: dict[int, list[int]] = {}  # free space -> rows with that much room (and a free slot)
  rows: list[list[int]] = []
  room: list[int] = []
  for e in order:
    need = int(arrays.lengths[e])
    fit = next((c for c in range(need, length + 1) if free.get(c)), None)
    if fit is None:
      rows.append([])
      room.append(length)
      r = len(rows) - 1
    else:
      r = free[fit].pop()
    rows[r].append(int(e))
    room[r] -= need
    if len(rows[r]) < max_per_row and room[r] > 0:
      free.setdefault(room[r], []).append(r)
  ids = np.full((len(rows), length), pad_id, arrays.input_ids.dtype)
  types = np.zeros((len(rows), length), np.uint8)
  segments = np.zeros((len(rows), length), np.uint8)
  cls = np.full((len(rows), max_per_row), -1, np.int32)
  nsp = np.zeros((len(rows), max_per_row), np.uint8)
  lengths = np.zeros(len(rows), np.int32)
  for r, members in enumerate(rows):
    at = 0
    for k, e in enumerate(members):
      m = int(arrays.lengths[e])
      ids[r, at:at + m] = arrays.input_ids[e, :m]
      types[r, at:at + m] = arrays.token_type_ids[e, :m]
      segments[r, at:at + m] = k + 1
      cls[r, k], nsp[r, k] = at, arrays.nsp_labels[e]
      at += m
    lengths[r] = at
  return ExampleArrays(ids, types, lengths, nsp, segments, cls)
