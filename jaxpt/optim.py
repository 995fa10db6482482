"""Optax optimisers and learning-rate schedules built from `OptimConfig`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from typing import Callable

from jaxpt.config import OptimConfig
from jaxpt.models import params as params_lib

OPTIMIZERS = ("adamw", "stable_adamw", "lamb", "adafactor", "sgd", "rmsprop")
SCHEDULES = ("linear", "cosine", "polynomial", "constant", "wsd", "inverse_sqrt")


def learning_rate_schedule(cfg: OptimConfig, num_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 to the peak, then `cfg.schedule` down to the end value."""
  peak = cfg.learning_rate
  end = peak * cfg.end_learning_rate_fraction
  warmup = min(cfg.warmup_steps, num_steps)
  rest = max(num_steps - warmup, 1)
  if cfg.schedule == "linear":
    after = optax.linear_schedule(peak, end, rest)
  elif cfg.schedule == "cosine":
    after = optax.cosine_decay_schedule(peak, rest, alpha=cfg.end_learning_rate_fraction)
  elif cfg.schedule == "polynomial":
    after = optax.polynomial_schedule(peak, end, cfg.power, rest)
  elif cfg.schedule == "constant":
    after = optax.constant_schedule(peak)
  elif cfg.schedule == "wsd":
    after = _stable_then_decay(peak, end, rest, cfg.decay_fraction, cfg.decay_shape,
                               cfg.decay_steps)
  elif cfg.schedule == "inverse_sqrt":
    origin = max(warmup, 1)
    after = lambda step: peak * jnp.sqrt(origin / (origin + jnp.asarray(step, jnp.float32)))
  else:
    raise ValueError(f"unknown schedule {cfg.schedule!r}")
  if warmup == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after],
                              boundaries=[warmup])


def _stable_then_decay(peak: float, end: float, steps: int, fraction: float,
                       shape: str, decay_steps: int = 0) -> optax.Schedule:
  """The peak for the first (1 - fraction) of `steps` (or all but the last `decay_steps`),
  then down to `end` over the rest: linearly, or as 1 - sqrt(progress)."""
  decay = min(decay_steps, steps) if decay_steps > 0 else max(int(round(steps * fraction)), 1)
  stable = steps - decay

  def schedule(step):
    progress = jnp.clip((jnp.asarray(step, jnp.float32) - stable) / decay, 0.0, 1.0)
    drop = progress if shape == "linear" else jnp.sqrt(progress)
    return peak + (end - peak) * drop
  return schedule


def stable_adamw(lr, *, b1: float, b2: float, eps: float, weight_decay: float,
                 mask) -> optax.GradientTransformation:
  """AdamW with per-tensor update clipping: the Adam update u = m_hat / (sqrt(v_hat) + eps)
  of each tensor is divided by max(1, sqrt(mean(g^2 / max(v_hat, eps^2)))), then weight decay
  and the learning rate apply as in AdamW."""

  def init(params):
    return optax.scale_by_adam(b1=b1, b2=b2, eps=eps).init(params)

  def update(grads, state, params=None):
    adam = optax.scale_by_adam(b1=b1, b2=b2, eps=eps)
    updates, new_state = adam.update(grads, state, params)
    count = new_state.count
    v_hat = jax.tree.map(lambda v: v / (1 - b2 ** count.astype(v.dtype)), new_state.nu)

    def clip(u, g, v):
      rms = jnp.sqrt(jnp.mean(jnp.square(g) / jnp.maximum(v, eps * eps)))
      return u / jnp.maximum(1.0, rms)
    return jax.tree.map(clip, updates, grads, v_hat), new_state

  return optax.chain(optax.GradientTransformation(init, update),
                     optax.add_decayed_weights(weight_decay, mask),
                     optax.scale_by_learning_rate(lr))


def decay_mask(params):
  """True for weight matrices; False for biases and LayerNorm scales/offsets (BERT recipe)."""
  return jax.tree.map(lambda leaf: leaf.ndim >= 2, params)


def keep_zeros(prunable: Callable) -> optax.GradientTransformation:
  """Drops the updates of prunable weights (`prunable(path)`: the model's own predicate) that
  are exactly zero, so a pruning mask holds through further training. Stateless: the mask is
  the zeros themselves."""
  def update(updates, state, params):
    def hold(path, u, p):
      return jnp.where(p == 0, jnp.zeros_like(u), u) if prunable(path) else u
    return jax.tree_util.tree_map_with_path(hold, updates, params), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _layer_index(name: str) -> int | None:
  """`i` of `encoder.layers.<i>.…`; None for scanned layers' stacked `encoder.layers.…`."""
  head = name[len(params_lib.LAYERS):].split(".")[0]
  return int(head) if head.isdigit() else None


def layer_scales(params, decay: float):
  """The factor of each parameter's update under layer-wise decay (`OptimConfig.layer_decay`):
  a tree like `params` of Python floats, or, for scanned layers (stacked on a leading axis),
  of `[L, 1, ...]` arrays."""
  flat = [(params_lib.dotted(path), leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]]
  layers = [(name, leaf) for name, leaf in flat if name.startswith(params_lib.LAYERS)]
  looped = [i for i in (_layer_index(name) for name, _ in layers) if i is not None]
  num_layers = max(looped) + 1 if looped else (jnp.shape(layers[0][1])[0] if layers else 0)

  def scale(path, leaf):
    name = params_lib.dotted(path)
    if not name.startswith("encoder."):
      return 1.0  # pooler, heads, a new classifier
    if name.startswith("encoder.embeddings."):
      return decay ** (num_layers + 1)
    if not name.startswith(params_lib.LAYERS):
      return decay  # the encoder's final norm
    index = _layer_index(name)
    if index is not None:
      return decay ** (num_layers - index)
    powers = num_layers - jnp.arange(num_layers, dtype=jnp.float32)
    return (decay ** powers).reshape((num_layers,) + (1,) * (jnp.ndim(leaf) - 1))
  return jax.tree_util.tree_map_with_path(scale, params)


def scale_by_layer(decay: float) -> optax.GradientTransformation:
  """Multiplies each update by its `layer_scales` factor (stateless; paths read at trace)."""
  def update(updates, state, params=None):
    scales = layer_scales(updates, decay)
    return jax.tree.map(lambda u, s: (u * s).astype(u.dtype), updates, scales), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(cfg: OptimConfig, lr: optax.Schedule, *, skip_nonfinite: bool = False,
                   prunable: Callable | None = None) -> optax.GradientTransformation:
  """The configured optimiser with learning-rate schedule `lr`, after global-norm clipping.

  `skip_nonfinite` wraps it in `optax.apply_if_finite`: an update with a NaN or Inf gradient
  is skipped (parameters and moments unchanged) and counted; the loop decides when too many
  in a row end the run, so optax never applies one. `prunable` (a parameter-path predicate)
  is needed by `cfg.keep_pruned`.
  """
  wd = cfg.weight_decay
  if cfg.name == "adamw":
    tx = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=wd, mask=decay_mask)
  elif cfg.name == "stable_adamw":
    tx = stable_adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=wd, mask=decay_mask)
  elif cfg.name == "lamb":  # You et al. 2020: BERT with batches of 32k-64k
    tx = optax.lamb(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=wd, mask=decay_mask)
  elif cfg.name == "adafactor":  # factored second moments: memory ~ rows + columns
    tx = optax.adafactor(lr, weight_decay_rate=wd or None, weight_decay_mask=decay_mask,
                         multiply_by_parameter_scale=False)
  elif cfg.name == "sgd":
    tx = optax.chain(optax.add_decayed_weights(wd, decay_mask),
                     optax.sgd(lr, momentum=cfg.momentum or None, nesterov=cfg.nesterov))
  elif cfg.name == "rmsprop":
    tx = optax.chain(optax.add_decayed_weights(wd, decay_mask),
                     optax.rmsprop(lr, decay=cfg.b2, eps=cfg.eps,
                                   momentum=cfg.momentum or None))
  else:
    raise ValueError(f"unknown optimiser {cfg.name!r}")
  if cfg.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), tx)
  if cfg.layer_decay < 1.0:
    tx = optax.chain(tx, scale_by_layer(cfg.layer_decay))
  if cfg.keep_pruned:  # last: after weight decay, nothing moves a pruned weight
    if prunable is None:
      raise ValueError("optim.keep_pruned needs the model's prunable-parameter predicate")
    tx = optax.chain(tx, keep_zeros(prunable))
  if skip_nonfinite:
    tx = optax.apply_if_finite(tx, max_consecutive_errors=2**31 - 1)
  return tx


def nonfinite_counts(opt_state) -> dict:
  """(skipped in a row, skipped in total) when the optimiser skips non-finite updates."""
  if isinstance(opt_state, optax.ApplyIfFiniteState):
    return {"train/nonfinite_in_a_row": opt_state.notfinite_count,
            "train/nonfinite_total": opt_state.total_notfinite}
  return {}
