"""The hand-written gradients in jaxpt/models/ops.py against JAX's autodiff of the plain code."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxpt.models import ops


def _close(a, b, tol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32),
                               rtol=tol, atol=tol)


def _grads(f, *args):
  """Value and the gradient of sum(f * a fixed random cotangent) for every argument."""
  out = f(*args)
  cot = jax.random.normal(jax.random.key(7), out.shape, jnp.float32).astype(out.dtype)
  loss = lambda *a: jnp.sum((f(*a) * cot).astype(jnp.float32))
  return out, jax.grad(loss, argnums=tuple(range(len(args))))(*args)


def test_dropout_matches_nnx_dropout_values_mask_and_gradient():
  x = jax.random.normal(jax.random.key(0), (4, 16, 32))
  mine, theirs = ops.Dropout(0.1), nnx.Dropout(0.1)
  f_mine = lambda x: mine(x, deterministic=False, rngs=nnx.Rngs(dropout=3))
  f_theirs = lambda x: theirs(x, deterministic=False, rngs=nnx.Rngs(dropout=3))
  out_m, (g_m,) = _grads(f_mine, x)
  out_t, (g_t,) = _grads(f_theirs, x)
  np.testing.assert_array_equal(out_m, out_t)  # the same key draws the same mask
  np.testing.assert_array_equal(g_m, g_t)
  dropped = float(jnp.mean(out_m == 0))
  assert 0.07 < dropped < 0.13, dropped
  np.testing.assert_array_equal(mine(x, deterministic=True), x)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_layer_norm_matches_nnx_layer_norm(dtype):
  ours = ops.LayerNorm(64, epsilon=1e-12, dtype=dtype, rngs=nnx.Rngs(0))
  ref = nnx.LayerNorm(64, epsilon=1e-12, dtype=dtype, rngs=nnx.Rngs(0))
  key = jax.random.key(1)
  scale = 1 + 0.1 * jax.random.normal(key, (64,))
  bias = 0.1 * jax.random.normal(jax.random.fold_in(key, 1), (64,))
  x = (3 + 2 * jax.random.normal(jax.random.fold_in(key, 2), (2, 8, 64))).astype(dtype)

  def run(module):
    module.scale[...], module.bias[...] = scale, bias
    graphdef, params = nnx.split(module)
    return _grads(lambda x, params: nnx.merge(graphdef, params)(x), x, params)

  out_o, grads_o = run(ours)
  out_r, grads_r = run(ref)
  assert out_o.dtype == out_r.dtype == dtype
  np.testing.assert_array_equal(out_o, out_r)  # the forward is the same arithmetic
  _close(grads_o, grads_r, 1e-5 if dtype == jnp.float32 else 2e-2)


def test_gelu_matches_exact_gelu():
  x = 4 * jax.random.normal(jax.random.key(2), (1000,))
  out_o, g_o = _grads(ops.gelu, x)
  out_r, g_r = _grads(lambda x: jax.nn.gelu(x, approximate=False), x)
  np.testing.assert_array_equal(out_o, out_r)
  _close(g_o, g_r, 1e-6)


def _plain_attention(q, k, v, mask, keep, keep_prob, scale):
  logits = jnp.einsum("bqnd,bknd->bnqk", q, k) * scale
  logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
  probs = jax.nn.softmax(logits, axis=-1)
  probs = jnp.where(keep, probs / keep_prob, 0.0)
  return jnp.einsum("bnqk,bknd->bqnd", probs, v)


@pytest.mark.parametrize("packed", [False, True])
def test_attention_matches_autodiff_of_the_plain_formula(packed):
  b, length, n, d = 2, 12, 3, 8
  keys = jax.random.split(jax.random.key(3), 5)
  q, k, v = (jax.random.normal(keys[i], (b, length, n, d)) for i in range(3))
  real = jnp.arange(length)[None] < jnp.array([[length], [7]])  # row 1: 5 padding keys
  if packed:  # [batch, 1, queries, keys]: two sequences per row, never across
    seg = jnp.where(jnp.arange(length) < 5, 1, 2)[None].repeat(b, 0)
    mask = ((seg[:, :, None] == seg[:, None, :]) & real[:, None, :])[:, None]
    mask = mask.at[1, 0, 3].set(False)  # a query that sees no key at all
  else:
    mask = real[:, None, None, :]
  keep = jax.random.bernoulli(keys[3], 0.9, (b, n, length, length))
  keep_prob = jnp.float32(0.9)
  scale = d ** -0.5
  f_ours = lambda q, k, v: ops.attention(q, k, v, mask, keep, keep_prob, scale)
  f_plain = lambda q, k, v: _plain_attention(q, k, v, mask, keep, keep_prob, scale)
  out_o, g_o = _grads(f_ours, q, k, v)
  out_p, g_p = _grads(f_plain, q, k, v)
  _close(out_o, out_p, 1e-6)
  _close(g_o, g_p, 1e-5)
  assert float(jnp.abs(g_o[0]).max()) > 0  # the check is not vacuous
