"""Text generation from a causal LM (`heads.DecoderForCausalLM`) with a key/value cache.

Prompts of different lengths are left-padded into one batch; their positions count real
tokens only, so each row computes what it would alone. Two compiled programs: the prefill
(every prompt token at once, filling the cache) and the decode loop (one token per row per
iteration, `lax.while_loop`, stopping when every row has produced the end-of-text id or
`max_new_tokens`). Both are compiled once per (model structure, batch, prompt bucket,
max_new_tokens, sampling settings), kept for later calls, and never per token; prompt lengths
are bucketed to multiples of 16 to share compilations; the seed is an argument.

Choosing a token: greedy at `temperature=0`; otherwise logits / temperature, restricted to the
`top_k` largest (0: all) and to the smallest set whose probability reaches `top_p` (1.0:
all), then sampled with a key folded from `seed` and the step: the same seed gives the same
text.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxpt.errors import UserError

BUCKET = 16


class GenerationError(UserError, ValueError):
  """Arguments generation cannot use; the message names the argument and the limit."""


@dataclasses.dataclass
class Stats:
  compile_seconds: float
  prefill_seconds: float
  decode_seconds: float
  new_tokens: int  # generated in all rows (end-of-text included; nothing after it)
  steps: int  # decode iterations run

  @property
  def decode_tokens_per_second(self) -> float:
    """Tokens produced per second of the decode loop, all rows together."""
    return self.new_tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0


def _check(model, prompts, max_new_tokens, temperature, top_k, top_p):
  from jaxpt.models.heads import DecoderForCausalLM
  if not isinstance(model, DecoderForCausalLM):
    raise GenerationError(
        f"generation needs a causal LM (DecoderForCausalLM: GPT-2, ModernBERT's decoder, a "
        f"causal jaxpt preset); got {type(model).__name__}, a bidirectional encoder")
  cfg = model.encoder.config
  if not prompts or any(len(p) == 0 for p in prompts):
    raise GenerationError("prompt_ids: every prompt needs at least one token")
  for i, p in enumerate(prompts):
    bad = [t for t in p if not 0 <= t < cfg.vocab_size]
    if bad:
      raise GenerationError(f"prompt {i}: token id {bad[0]} is outside the vocabulary "
                            f"(0..{cfg.vocab_size - 1})")
  if max_new_tokens < 1:
    raise GenerationError(f"max_new_tokens={max_new_tokens}: must be at least 1")
  longest = max(len(p) for p in prompts)
  if longest + max_new_tokens > cfg.max_position_embeddings:
    raise GenerationError(
        f"a prompt of {longest} tokens plus max_new_tokens={max_new_tokens} passes the "
        f"model's {cfg.max_position_embeddings} positions (max_position_embeddings); shorten "
        f"the prompt or ask for at most {cfg.max_position_embeddings - longest} new tokens")
  if temperature < 0:
    raise GenerationError(f"temperature={temperature}: must be >= 0 (0: greedy)")
  if top_k < 0 or top_k > cfg.vocab_size:
    raise GenerationError(f"top_k={top_k}: must be in 0..{cfg.vocab_size} (0: no limit)")
  if not 0.0 < top_p <= 1.0:
    raise GenerationError(f"top_p={top_p}: must be in (0, 1]")


def restrict(logits, top_k: int, top_p: float):
  """Logits with every token outside the top-k and the top-p nucleus set to -inf."""
  if top_k > 0:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    ordered = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(ordered, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass of the tokens ranked above each one
    kept = jnp.where(before < top_p, ordered, jnp.inf)  # the nucleus (the first always)
    threshold = jnp.min(kept, axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return logits


def choose(logits, key, temperature: float, top_k: int, top_p: float):
  """One token id per row of `logits` `[batch, vocab]`."""
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = restrict(logits / temperature, top_k, top_p)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def generate(model, prompt_ids, max_new_tokens: int, temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, seed: int = 0, *, eos_token_id: int | None = None,
             return_stats: bool = False):
  """Each prompt's token ids followed by its continuation (up to and including the
  end-of-text id, `eos_token_id`, default the model config's; none: exactly
  `max_new_tokens`).

  `prompt_ids`: one prompt (a list of ids) or a list of them; the result has the same form.
  With `return_stats`, returns (ids, `Stats`).
  """
  single = len(prompt_ids) > 0 and not hasattr(prompt_ids[0], "__len__")
  prompts = [[int(t) for t in p] for p in ([prompt_ids] if single else prompt_ids)]
  _check(model, prompts, max_new_tokens, temperature, top_k, top_p)
  cfg = model.encoder.config
  if eos_token_id is None:
    eos_token_id = cfg.eos_token_id
  batch, longest = len(prompts), max(len(p) for p in prompts)
  width = -(-longest // BUCKET) * BUCKET  # prompt slots
  ids = np.full((batch, width), cfg.pad_token_id, np.int32)
  real = np.zeros((batch, width), bool)
  for r, p in enumerate(prompts):  # left padding: every prompt ends at slot width - 1
    ids[r, width - len(p):] = p
    real[r, width - len(p):] = True
  lengths = real.sum(axis=1).astype(np.int32)

  graphdef, state = nnx.split(model)
  signature = tuple((x.shape, str(x.dtype)) for x in jax.tree.leaves(state))
  start = time.perf_counter()
  # The structure: the config and parameter shapes (a GraphDef holds the unhashable config).
  structure = (type(model).__name__, repr(cfg), signature)
  prefill, decode = _compiled(
      (structure, batch, width, max_new_tokens, float(temperature), int(top_k),
       float(top_p), int(eos_token_id)), graphdef, state, ids, real, lengths)
  compiled = time.perf_counter()
  logits, cache = prefill(state, ids, real)
  logits.block_until_ready()
  prefilled = time.perf_counter()
  out, steps = decode(state, logits, cache, lengths, jax.random.key(seed))
  out, steps = np.asarray(out), int(steps)
  decoded = time.perf_counter()

  results = []
  for r, p in enumerate(prompts):
    new = [int(t) for t in out[r, :steps] if t >= 0]
    results.append(p + new)
  stats = Stats(compile_seconds=compiled - start,  # about 0 when these shapes ran before
                prefill_seconds=prefilled - compiled,
                decode_seconds=decoded - prefilled,
                new_tokens=sum(len(r) - len(p) for r, p in zip(results, prompts)),
                steps=steps)
  results = results[0] if single else results
  return (results, stats) if return_stats else results


_COMPILED: dict = {}


def _compiled(key: tuple, graphdef, state, ids, real, lengths):
  """The compiled (prefill, decode) for `key`, compiled ahead of the first call (so that
  `Stats` separates compilation from running) and kept for the next."""
  if key not in _COMPILED:
    prefill, decode = _programs(graphdef, *key[1:])
    prefill_c = prefill.lower(state, ids, real).compile()
    logits, cache = jax.eval_shape(prefill, state, ids, real)
    decode_c = decode.lower(state, logits, cache, lengths, jax.random.key(0)).compile()
    if len(_COMPILED) >= 32:
      _COMPILED.pop(next(iter(_COMPILED)))
    _COMPILED[key] = prefill_c, decode_c
  return _COMPILED[key]


def _programs(graphdef, batch: int, width: int, max_new_tokens: int,
              temperature: float, top_k: int, top_p: float, eos_token_id: int):
  """The jitted prefill and decode loop of one model structure and shape."""
  slots = width + max_new_tokens

  def prefill(state, ids, real):
    model = nnx.merge(graphdef, state)
    cache = model.encoder.empty_cache(ids.shape[0], slots)
    cache["key_mask"] = cache["key_mask"].at[:, :width].set(real)
    positions = jnp.maximum(jnp.cumsum(real, axis=1) - 1, 0).astype(jnp.int32)
    logits, cache = model.decode(ids, positions, cache)
    return logits[:, -1], cache

  def decode(state, logits, cache, lengths, key):
    out = jnp.full((batch, max_new_tokens), -1, jnp.int32)
    done = jnp.zeros((batch,), bool)

    def cond(carry):
      i, _, _, done, _, _ = carry
      return (i < max_new_tokens) & ~jnp.all(done)

    def body(carry):  # the parameters ride in the carry: nnx.scan needs this trace's arrays
      i, logits, cache, done, out, state = carry
      token = choose(logits, jax.random.fold_in(key, i), temperature, top_k, top_p)
      out = out.at[:, i].set(jnp.where(done, -1, token))
      done = done | (token == eos_token_id)
      cache = dict(cache, key_mask=jax.lax.dynamic_update_slice_in_dim(
          cache["key_mask"], jnp.ones((batch, 1), bool), width + i, axis=1))
      model = nnx.merge(graphdef, state)
      logits, cache = model.decode(token[:, None], (lengths + i)[:, None], cache)
      return i + 1, logits[:, -1], cache, done, out, state

    i, _, _, _, out, _ = jax.lax.while_loop(
        cond, body, (jnp.zeros((), jnp.int32), logits, cache, done, out, state))
    return out, i

  return jax.jit(prefill), jax.jit(decode)
