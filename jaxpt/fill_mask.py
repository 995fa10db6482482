"""`jaxpt fill-mask`: the top-k tokens a model predicts at each [MASK]; a quick human check."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxpt.data import tokenizer as tok_lib
from jaxpt.errors import UserError


class FillMaskError(UserError, ValueError):
  pass


def predict(model, tokenizer, texts: list[str], top_k: int = 5) -> list[list[list[tuple]]]:
  """For each text, for each mask in it: [(token, probability), ...] best first."""
  mask_token = tok_lib.special_tokens(tokenizer)[4]
  mask_id = tokenizer.token_to_id(mask_token)
  # "[MASK]" is accepted for RoBERTa's "<mask>" too, so one command line fits both.
  encodings = [tokenizer.encode(t.replace("[MASK]", mask_token)) for t in texts]
  for text, enc in zip(texts, encodings):
    if mask_id not in enc.ids:
      raise FillMaskError(f"{text!r}: no {mask_token} in the text")
  cfg = model.encoder.config
  max_len = cfg.max_position_embeddings - (cfg.pad_token_id + 1 if cfg.variant == "roberta"
                                           else 0)
  length = max(len(e.ids) for e in encodings)
  if length > max_len:
    raise FillMaskError(f"a text has {length} tokens; the model takes at most {max_len}")
  pad = tok_lib.special_ids(tokenizer)["pad"]
  ids = np.full((len(texts), length), pad, np.int32)
  types = np.zeros_like(ids)
  attention = np.zeros_like(ids)
  for i, e in enumerate(encodings):
    ids[i, :len(e.ids)] = e.ids
    types[i, :len(e.ids)] = e.type_ids
    attention[i, :len(e.ids)] = 1
  graphdef, state = nnx.split(model)

  @jax.jit
  def probabilities(state, ids, types, attention):
    logits = nnx.merge(graphdef, state).mlm_logits(ids, attention_mask=attention,
                                                   token_type_ids=types)
    return jax.nn.softmax(logits, axis=-1)

  probs = np.asarray(probabilities(state, jnp.asarray(ids), jnp.asarray(types),
                                   jnp.asarray(attention)))
  results = []
  for i, e in enumerate(encodings):
    per_mask = []
    for position in np.flatnonzero(np.asarray(e.ids) == mask_id):
      best = np.argsort(-probs[i, position])[:top_k]
      per_mask.append([(tokenizer.id_to_token(int(t)), float(probs[i, position, t]))
                       for t in best])
    results.append(per_mask)
  return results
