"""Optax optimisers and learning-rate schedules built from `OptimConfig`."""

from __future__ import annotations

import jax
import optax

from jaxpt.config import OptimConfig


def learning_rate_schedule(cfg: OptimConfig, num_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 to the peak, then linear decay to `end_learning_rate_fraction`."""
  end = cfg.learning_rate * cfg.end_learning_rate_fraction
  warmup = min(cfg.warmup_steps, num_steps)
  decay = optax.linear_schedule(cfg.learning_rate, end, max(num_steps - warmup, 1))
  if warmup == 0:
    return decay
  return optax.join_schedules(
      [optax.linear_schedule(0.0, cfg.learning_rate, warmup), decay], boundaries=[warmup])


def decay_mask(params):
  """True for weight matrices; False for biases and LayerNorm scales/offsets (BERT recipe)."""
  def is_matrix(path, leaf):
    del path
    return leaf.ndim >= 2
  return jax.tree_util.tree_map_with_path(is_matrix, params)


def make_optimizer(cfg: OptimConfig, num_steps: int) -> optax.GradientTransformation:
  schedule = learning_rate_schedule(cfg, num_steps)
  parts = []
  if cfg.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
  if cfg.name == "adamw":
    parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay, mask=decay_mask))
  else:
    raise ValueError(f"unknown optimiser {cfg.name!r}")
  return optax.chain(*parts)
