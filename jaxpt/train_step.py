"""Pretraining losses, `train_step` and `eval_step`: pure functions of (state, batch), no I/O.

A batch is a dict of arrays, the leading axis the (global) batch:
  input_ids, token_type_ids, attention_mask: int32 [batch, length]
  masked_positions, masked_ids: int32 [batch, predictions]; masked_weights: float32 (0 = padding)
  nsp_labels: int32 [batch] (0 = B follows A, 1 = B is random, HuggingFace's convention)
  packed rows add segment_ids [batch, length] (1..K, 0 = padding) and cls_positions [batch, K]
  (-1 = empty slot); nsp_labels is then [batch, K]
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from jaxpt import optim

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


@struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer updates applied so far
  params: Any  # pure dict of parameter arrays (nnx.State.to_pure_dict())
  opt_state: Any


def masked_cross_entropy(logits, targets, weights):
  """(weighted sum of token cross-entropies, weighted count of correct predictions).

  Written so that the backward pass is one elementwise fusion over the logits (softmax minus a
  one-hot built from an iota compare) rather than a scatter into a zeroed [rows, vocab] buffer,
  and the accuracy reuses the logsumexp's max instead of a separate argmax over the vocabulary:
  on CPU the scatter, its copy and the argmax cost as much as the decoder matmul.
  A prediction counts as correct when the target's logit is the maximum (a tie counts too).
  """
  top = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  lse = jnp.log(jnp.sum(jnp.exp(logits - top), axis=-1)) + top[..., 0]
  vocab = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
  target_logit = jnp.sum(jnp.where(vocab == targets[..., None], logits, 0.0), axis=-1)
  correct = (target_logit >= top[..., 0]).astype(jnp.float32)
  return jnp.sum((lse - target_logit) * weights), jnp.sum(correct * weights)


def nsp_weights(batch: Batch):
  """1 per next-sentence prediction: one per row, or (packed rows) one per filled slot."""
  if "cls_positions" in batch:
    return (batch["cls_positions"] >= 0).astype(jnp.float32)
  return jnp.ones(batch["nsp_labels"].shape, jnp.float32)


def pretraining_sums(model, batch: Batch, *, deterministic: bool, rngs=None) -> Metrics:
  """Sums over the batch, so that means can be formed over any number of batches or devices."""
  mlm_logits, nsp_logits = model(
      batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
      batch["masked_positions"], deterministic=deterministic, rngs=rngs,
      segment_ids=batch.get("segment_ids"), cls_positions=batch.get("cls_positions"))
  weights = batch["masked_weights"]
  mlm_loss, mlm_correct = masked_cross_entropy(mlm_logits, batch["masked_ids"], weights)
  sums = {"mlm_loss": mlm_loss, "mlm_correct": mlm_correct, "mlm_count": jnp.sum(weights)}
  if nsp_logits is not None:  # RoBERTa has no next-sentence task
    nsp_w = nsp_weights(batch)
    nsp_loss, nsp_correct = masked_cross_entropy(nsp_logits, batch["nsp_labels"], nsp_w)
    sums.update(nsp_loss=nsp_loss, nsp_correct=nsp_correct, nsp_count=jnp.sum(nsp_w))
  return sums


def means(sums: Metrics, prefix: str) -> Metrics:
  """Turns `pretraining_sums` (possibly added over batches) into named means."""
  mlm_count = jnp.maximum(sums["mlm_count"], 1.0)
  mlm_loss = sums["mlm_loss"] / mlm_count
  out = {f"{prefix}/loss": mlm_loss, f"{prefix}/mlm_loss": mlm_loss,
         f"{prefix}/mlm_accuracy": sums["mlm_correct"] / mlm_count}
  if "nsp_loss" in sums:
    nsp_loss = sums["nsp_loss"] / sums["nsp_count"]
    out.update({f"{prefix}/loss": mlm_loss + nsp_loss, f"{prefix}/nsp_loss": nsp_loss,
                f"{prefix}/nsp_accuracy": sums["nsp_correct"] / sums["nsp_count"]})
  return out


def split_microbatches(batch: Batch, microbatches: int) -> Batch:
  """[batch, ...] -> [microbatches, batch / microbatches, ...], strided.

  Micro-batch i takes rows i, i + m, i + 2m, ...: each device keeps its own rows (a
  contiguous split would move rows between the devices of a sharded batch axis).
  """
  def split(x):
    x = x.reshape(x.shape[0] // microbatches, microbatches, *x.shape[1:])
    return jnp.swapaxes(x, 0, 1)
  return jax.tree.map(split, batch)


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, seed: int, microbatches: int = 1) -> Callable:
  """Returns `train_step(state, batch) -> (state, metrics)`.

  With `microbatches > 1` the batch is processed in that many slices under `lax.scan` and the
  gradients summed: the loss is normalised by the whole batch's target counts, so the update
  equals the single-pass one up to float summation order. Dropout keys fold in the step and
  the micro-batch index.
  """

  def loss_fn(params, batch, rng, mlm_count, nsp_count):
    model = nnx.merge(graphdef, params)
    sums = pretraining_sums(model, batch, deterministic=False, rngs=nnx.Rngs(dropout=rng))
    loss = sums["mlm_loss"] / mlm_count
    if "nsp_loss" in sums:  # BERT; RoBERTa trains on masked LM alone
      loss = loss + sums["nsp_loss"] / nsp_count
    return loss, sums

  grad_fn = jax.grad(loss_fn, has_aux=True)

  def train_step(state: TrainState, batch: Batch):
    rng = jax.random.fold_in(jax.random.key(seed), state.step)
    mlm_count = jnp.maximum(jnp.sum(batch["masked_weights"]), 1.0)
    nsp_count = jnp.maximum(jnp.sum(nsp_weights(batch)), 1.0)
    if microbatches == 1:
      grads, sums = grad_fn(state.params, batch, rng, mlm_count, nsp_count)
    else:
      def accumulate(carry, xs):
        index, micro = xs
        g, s = grad_fn(state.params, micro, jax.random.fold_in(rng, index), mlm_count,
                       nsp_count)
        return jax.tree.map(jnp.add, carry, (g, s)), None

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      sums0 = jax.eval_shape(lambda: grad_fn(state.params, batch, rng, mlm_count,
                                             nsp_count)[1])
      init = (zeros, jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), sums0))
      (grads, sums), _ = jax.lax.scan(
          accumulate, init, (jnp.arange(microbatches), split_microbatches(batch, microbatches)))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = means(sums, "train")
    metrics["train/grad_norm"] = optax.global_norm(grads)
    metrics["train/real_token_fraction"] = jnp.mean(batch["attention_mask"] > 0)
    metrics["lr"] = schedule(state.step)
    metrics.update(optim.nonfinite_counts(opt_state))
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


def make_eval_step(graphdef: nnx.GraphDef) -> Callable:
  """Returns `eval_step(params, batch) -> sums` (deterministic: no dropout)."""

  def eval_step(params, batch: Batch) -> Metrics:
    return pretraining_sums(nnx.merge(graphdef, params), batch, deterministic=True)

  return eval_step
