"""Dynamic MLM masking on the host: pure numpy, a pure function of the seed it is given."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class MaskingSpec:
  vocab_size: int
  mask_id: int
  special_ids: tuple[int, ...]  # never chosen as targets, never drawn as random replacements
  mask_prob: float = 0.15
  mask_token_prob: float = 0.8
  random_token_prob: float = 0.1
  max_predictions: int = 20
  # Whole-word masking: True at the ids of tokens that continue a word (WordPiece "##x"); a
  # word's tokens are then chosen together. None: tokens are chosen independently.
  continues_word: np.ndarray | None = dataclasses.field(default=None, compare=False)
  # ((first step, rate), ...): the rate by phase (`data.mask_prob_schedule`); empty: mask_prob.
  rate_phases: tuple[tuple[int, float], ...] = ()

  def at_step(self, step: int) -> "MaskingSpec":
    """This spec with the masking rate of `step`."""
    rate = self.mask_prob
    for first, r in self.rate_phases:
      if step >= first:
        rate = r
    return self if rate == self.mask_prob else dataclasses.replace(self, mask_prob=rate)


def continuation_table(tok) -> np.ndarray:
  """[vocab] bool: WordPiece pieces "##..." continue a word; for byte-level BPE, every token
  that does not start with "Ġ" (a space) does, except special tokens."""
  vocab = tok.get_vocab()
  table = np.zeros(tok.get_vocab_size(), bool)
  bpe = "Ġ" in "".join(list(vocab)[:5000])
  for token, i in vocab.items():
    if bpe:
      table[i] = not token.startswith("Ġ") and not (token.startswith("<") and
                                                    token.endswith(">"))
    else:
      table[i] = token.startswith("##")
  return table


def _choose(candidates: np.ndarray, ids: np.ndarray, n: int, spec: MaskingSpec,
            rng: np.random.Generator) -> np.ndarray:
  """Sorted target positions: n tokens, or whole words of at most n tokens in total."""
  if spec.continues_word is None:
    return np.sort(rng.choice(candidates, size=n, replace=False))
  # Words: runs of candidates where each next one is adjacent and a continuation piece.
  starts = np.ones(candidates.size, bool)
  starts[1:] = ~((np.diff(candidates) == 1) & spec.continues_word[ids[candidates[1:]]])
  words = np.split(candidates, np.flatnonzero(starts)[1:])
  chosen: list[int] = []
  for w in rng.permutation(len(words)):  # Google's BERT: add words until the budget is met
    if len(chosen) >= n:
      break
    if len(chosen) + len(words[w]) <= n:
      chosen.extend(words[w])
  return np.sort(np.asarray(chosen, np.int64))


def mask_row(input_ids: np.ndarray, length: int, spec: MaskingSpec,
             rng: np.random.Generator):
  """Masks one example.

  Chooses round(mask_prob * candidates) target positions among the non-special tokens (at least
  one, at most `max_predictions`; with whole-word masking, whole words up to that many
  tokens); each target becomes [MASK] with probability mask_token_prob,
  a random non-special token with probability random_token_prob, or stays as it is.

  Returns (masked_ids_row [length], positions [P], targets [P], weights [P]) with
  P = spec.max_predictions; unused slots have position 0, target 0 and weight 0.
  """
  ids = input_ids.copy()
  candidates = np.flatnonzero(~np.isin(ids[:length], spec.special_ids))
  p = spec.max_predictions
  positions = np.zeros(p, np.int32)
  targets = np.zeros(p, np.int32)
  weights = np.zeros(p, np.float32)
  if candidates.size == 0:
    return ids, positions, targets, weights
  n = min(p, max(1, int(round(candidates.size * spec.mask_prob))))
  chosen = _choose(candidates, ids, n, spec, rng)
  n = chosen.size  # whole words may fill fewer than n
  positions[:n] = chosen
  targets[:n] = ids[chosen]
  weights[:n] = 1.0
  u = rng.random(n)
  to_mask = u < spec.mask_token_prob
  to_random = (u >= spec.mask_token_prob) & (u < spec.mask_token_prob + spec.random_token_prob)
  ids[chosen[to_mask]] = spec.mask_id
  if to_random.any():
    ids[chosen[to_random]] = _random_tokens(rng, int(to_random.sum()), spec)
  return ids, positions, targets, weights


def _random_tokens(rng: np.random.Generator, n: int, spec: MaskingSpec) -> np.ndarray:
  """Uniform over the vocabulary minus the special tokens."""
  special = np.sort(np.asarray(spec.special_ids))
  draws = rng.integers(0, spec.vocab_size - len(special), size=n)
  for s in special:  # shift past each special id at or below the draw
    draws = draws + (draws >= s)
  return draws


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
  """splitmix64's finaliser: a bijective, well-mixed uint64 -> uint64 (wrapping arithmetic)."""
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def _uniform(seed: int, step: int, rows: np.ndarray, length: int, stream: int) -> np.ndarray:
  """[rows, length] uniform floats in [0, 1), a pure function of (seed, step, global row,
  position, stream): counter-based, so any split of a batch across processes agrees."""
  with np.errstate(over="ignore"):
    key = _mix(np.uint64(seed) * _GOLDEN + np.uint64(step))
    key = _mix(key + np.uint64(stream + 1) * _GOLDEN)
    x = (rows.astype(np.uint64)[:, None] * np.uint64(length)
         + np.arange(length, dtype=np.uint64)[None, :])
    x = _mix(_mix(x + key) + key)
  return (x >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def _mask_vectorized(ids: np.ndarray, lengths: np.ndarray, spec: MaskingSpec, seed: int,
                     step: int, rows: np.ndarray):
  """mask_row's choices for a whole batch at once (token-level masking)."""
  batch, length = ids.shape
  p = spec.max_predictions
  cand = (np.arange(length)[None, :] < lengths[:, None]) & ~np.isin(ids, spec.special_ids)
  count = cand.sum(1)
  n = np.where(count > 0, np.clip(np.rint(count * spec.mask_prob), 1, p), 0).astype(np.int64)
  score = np.where(cand, _uniform(seed, step, rows, length, 0), np.inf)
  picked = np.argsort(score, axis=1, kind="stable")[:, :p]  # the n lowest scores are chosen
  used = np.arange(p)[None, :] < n[:, None]
  positions = np.sort(np.where(used, picked, length), axis=1)  # unused slots sort last
  used = positions < length
  positions = np.where(used, positions, 0).astype(np.int32)
  targets = np.where(used, np.take_along_axis(ids, positions, 1), 0).astype(np.int32)
  u = np.take_along_axis(_uniform(seed, step, rows, length, 1), positions, 1)
  to_mask = used & (u < spec.mask_token_prob)
  to_random = used & ~to_mask & (u < spec.mask_token_prob + spec.random_token_prob)
  special = np.sort(np.asarray(spec.special_ids))
  draws = np.floor(np.take_along_axis(_uniform(seed, step, rows, length, 2), positions, 1)
                   * (spec.vocab_size - len(special))).astype(np.int64)
  for sid in special:  # shift past each special id at or below the draw
    draws = draws + (draws >= sid)
  out = ids.astype(np.int32).copy()
  r = np.nonzero(to_mask)
  out[r[0], positions[r]] = spec.mask_id
  r = np.nonzero(to_random)
  out[r[0], positions[r]] = draws[r]
  return out, positions, targets, used.astype(np.float32)


def mask_batch(rows: dict[str, np.ndarray], spec: MaskingSpec, seed: int, step: int,
               row_offset: int = 0) -> dict[str, np.ndarray]:
  """Masks a batch of stored rows into model inputs.

  Each row's randomness is a function of (seed, step, global row index), so a row is masked
  the same whichever process reads it and however the batch is split across processes.
  Token-level masking runs vectorised over the batch (counter-based random numbers); whole-word
  masking row by row.
  """
  ids = rows["input_ids"]
  batch, length = ids.shape
  lengths = rows["lengths"].astype(np.int64)
  spec = spec.at_step(step)
  if spec.continues_word is None:
    out_ids, positions, targets, weights = _mask_vectorized(
        ids, lengths, spec, seed, step, np.arange(row_offset, row_offset + batch))
  else:
    out_ids = np.empty_like(ids, dtype=np.int32)
    p = spec.max_predictions
    positions = np.zeros((batch, p), np.int32)
    targets = np.zeros((batch, p), np.int32)
    weights = np.zeros((batch, p), np.float32)
    for r in range(batch):
      rng = np.random.default_rng((seed, step, row_offset + r))
      out_ids[r], positions[r], targets[r], weights[r] = mask_row(
          ids[r], int(lengths[r]), spec, rng)
  attention_mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int32)
  out = {
      "input_ids": out_ids,
      "token_type_ids": rows["token_type_ids"].astype(np.int32),
      "attention_mask": attention_mask,
      "masked_positions": positions,
      "masked_ids": targets,
      "masked_weights": weights,
      "nsp_labels": rows["nsp_labels"].astype(np.int32),
  }
  for name in ("segment_ids", "cls_positions"):  # packed rows
    if name in rows:
      out[name] = rows[name].astype(np.int32)
  return out


def causal_batch(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Stored rows as causal-LM inputs: no masking (every next token is a target, chosen on the
  device), the padding mask, and the packed rows' segment ids."""
  ids = rows["input_ids"]
  lengths = rows["lengths"].astype(np.int64)
  out = {"input_ids": ids.astype(np.int32),
         "attention_mask": (np.arange(ids.shape[1])[None, :] < lengths[:, None]).astype(np.int32)}
  if "segment_ids" in rows:
    out["segment_ids"] = rows["segment_ids"].astype(np.int32)
  return out
