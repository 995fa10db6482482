"""The one train step: `make_train_step` returns a pure `train_step(state, batch)`.

What differs between objectives (masked LM, classification, ...) is an `Objective`, passed in:
its `sums` of losses and counts over a batch, the normalisers taken from the whole batch, the
loss formed from them, and the named means. Everything else (dropout keys, micro-batches,
the optimizer update, gradient norm, learning rate, skipped-update counts) is the same for all.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

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
  # With optim.ema_decay > 0: an exponential moving average of `params` (same tree), what
  # evaluation, the best checkpoint and every command reading the checkpoint use. Else None.
  ema: Any = None

  @property
  def eval_params(self):
    """The parameters a model is evaluated and exported with: the EMA when kept."""
    return self.params if self.ema is None else self.ema


def ema_decay_at(decay: float, step) -> jax.Array:
  """The EMA's decay for the update that makes `step + 1`: min(decay, (1 + step) / (10 +
  step)), so the first updates are not dominated by the random initialisation."""
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def update_ema(ema, params, decay: float, step, skipped=None):
  """ema + (1 - d) (params - ema) with d = `ema_decay_at(decay, step)`; unchanged where
  `skipped` (a non-finite update that left the parameters as they were)."""
  d = ema_decay_at(decay, step)
  new = jax.tree.map(lambda e, p: (e + (1.0 - d) * (p.astype(e.dtype) - e)).astype(e.dtype),
                     ema, params)
  if skipped is None:
    return new
  return jax.tree.map(lambda n, e: jnp.where(skipped, e, n), new, ema)


def cross_entropy(logits, targets):
  """(cross-entropy, 1.0 where the target's logit is the maximum) per row of `logits`.

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
  return lse - target_logit, correct


def masked_cross_entropy(logits, targets, weights):
  """(weighted sum of cross-entropies, weighted count of correct predictions)."""
  losses, correct = cross_entropy(logits, targets)
  return jnp.sum(losses * weights), jnp.sum(correct * weights)


class Objective(Protocol):
  """The pure, traced half of a task."""

  def sums(self, model, batch: Batch, *, deterministic: bool, rngs=None) -> Metrics:
    """Sums over the batch (losses, correct counts, weights): addable across batches."""

  def normalizers(self, batch: Batch) -> Metrics:
    """Counts of the whole batch that divide the sums (so micro-batches add up exactly)."""

  def loss(self, sums: Metrics, norms: Metrics) -> jax.Array:
    """The scalar that is differentiated."""

  def means(self, sums: Metrics, prefix: str) -> Metrics:
    """Named means (`prefix/loss` first among them) of sums added over any batches."""


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
                    schedule: optax.Schedule, seed: int, objective: Objective,
                    microbatches: int = 1, ema_decay: float = 0.0) -> Callable:
  """Returns `train_step(state, batch) -> (state, metrics)`.

  With `microbatches > 1` the batch is processed in that many slices under `lax.scan` and the
  gradients summed: the loss is normalised by the whole batch's counts, so the update equals
  the single-pass one up to float summation order. Dropout keys fold in the step and the
  micro-batch index. With `ema_decay > 0` the state's EMA follows the new parameters.
  """

  def loss_fn(params, batch, rng, norms):
    model = nnx.merge(graphdef, params)
    sums = objective.sums(model, batch, deterministic=False, rngs=nnx.Rngs(dropout=rng))
    return objective.loss(sums, norms), sums

  grad_fn = jax.grad(loss_fn, has_aux=True)

  def train_step(state: TrainState, batch: Batch):
    rng = jax.random.fold_in(jax.random.key(seed), state.step)
    norms = objective.normalizers(batch)
    if microbatches == 1:
      grads, sums = grad_fn(state.params, batch, rng, norms)
    else:
      def accumulate(carry, xs):
        index, micro = xs
        g, s = grad_fn(state.params, micro, jax.random.fold_in(rng, index), norms)
        return jax.tree.map(jnp.add, carry, (g, s)), None

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      sums0 = jax.eval_shape(lambda: grad_fn(state.params, batch, rng, norms)[1])
      init = (zeros, jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), sums0))
      (grads, sums), _ = jax.lax.scan(
          accumulate, init, (jnp.arange(microbatches), split_microbatches(batch, microbatches)))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = objective.means(sums, "train")
    metrics["train/grad_norm"] = optax.global_norm(grads)
    metrics["train/real_token_fraction"] = jnp.mean(batch["attention_mask"] > 0)
    metrics["lr"] = schedule(state.step)
    counts = optim.nonfinite_counts(opt_state)
    metrics.update(counts)
    ema = state.ema
    if ema_decay > 0:
      skipped = counts["train/nonfinite_in_a_row"] > 0 if counts else None
      ema = update_ema(ema, params, ema_decay, state.step, skipped)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                      ema=ema), metrics

  return train_step


def make_eval_step(graphdef: nnx.GraphDef, objective: Objective) -> Callable:
  """Returns `eval_step(params, batch) -> sums` (deterministic: no dropout)."""

  def eval_step(params, batch: Batch) -> Metrics:
    return objective.sums(nnx.merge(graphdef, params), batch, deterministic=True)

  return eval_step
