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


def test_dropout_values_gradient_and_mask_statistics():
  x = jax.random.normal(jax.random.key(0), (16, 64, 256))
  drop = ops.Dropout(0.1)
  f = lambda x: drop(x, deterministic=False, rngs=nnx.Rngs(dropout=3))
  out, (grad,) = _grads(f, x)
  keep, keep_prob = ops.keep_mask(nnx.Rngs(dropout=3).dropout(), 0.9, x.shape)
  assert abs(keep_prob - 0.9) < 1 / 65536
  np.testing.assert_array_equal(out, jnp.where(keep, x / jnp.float32(keep_prob), 0))
  _, (grad_plain,) = _grads(lambda x: jnp.where(keep, x / jnp.float32(keep_prob), 0), x)
  np.testing.assert_array_equal(grad, grad_plain)
  np.testing.assert_array_equal(f(x), out)  # the same key, the same mask
  assert float(jnp.mean(f(x) != drop(x, deterministic=False, rngs=nnx.Rngs(dropout=4)))) > 0.1
  np.testing.assert_array_equal(drop(x, deterministic=True), x)

  bits = np.asarray(keep, np.float64).reshape(-1)  # 262,144 decisions: sd of the mean 6e-4
  assert abs(bits.mean() - 0.9) < 0.003, bits.mean()
  for lag in (1, 2, 3, 4, 256):  # the four decisions of one hash are independent
    assert abs(np.corrcoef(bits[:-lag], bits[lag:])[0, 1]) < 0.01, lag
  for quarter in range(4):
    assert abs(bits[quarter::4].mean() - 0.9) < 0.005


def test_dropout_falls_back_to_bernoulli_like_nnx():
  x = jax.random.normal(jax.random.key(0), (4, 16, 30))  # 30: four does not divide it
  ours = ops.Dropout(0.1)(x, deterministic=False, rngs=nnx.Rngs(dropout=3))
  theirs = nnx.Dropout(0.1)(x, deterministic=False, rngs=nnx.Rngs(dropout=3))
  np.testing.assert_array_equal(ours, theirs)


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


@pytest.mark.parametrize("kind", ["packed", "padding", "causal", "grouped", "bf16"])
def test_attention_by_blocks_equals_jax_dot_product_attention(kind):
  """ops.attention_blocks (queries 4 at a time, probabilities recomputed in the backward
  pass) against jax.nn.dot_product_attention: values and gradients, one block and several."""
  b, length, n, d = 2, 12, 3, 8
  keys = jax.random.split(jax.random.key(5), 4)
  dtype = jnp.bfloat16 if kind == "bf16" else jnp.float32
  kv_heads = 1 if kind == "grouped" else n
  q = jax.random.normal(keys[0], (b, length, n, d)).astype(dtype)
  k, v = (jax.random.normal(keys[i], (b, length, kv_heads, d)).astype(dtype) for i in (1, 2))
  real = jnp.arange(length)[None] < jnp.array([[length], [7]])  # row 1: 5 padding keys
  if kind == "padding":
    mask = real[:, None, None, :]
  else:
    seg = jnp.where(jnp.arange(length) < 5, 1, 2)[None].repeat(b, 0)
    mask = ((seg[:, :, None] == seg[:, None, :]) & real[:, None, :])[:, None]
    if kind == "causal":
      mask = mask & jnp.tril(jnp.ones((length, length), bool))
    mask = mask.at[1, 0, 9].set(False)  # a query that sees no key at all
  scale = d ** -0.5
  want = _grads(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask,
                                                             scale=scale), q, k, v)
  tol = 2e-2 if dtype == jnp.bfloat16 else 1e-5
  for block in (4, length):  # three blocks of queries, and one
    got = _grads(lambda q, k, v: ops.attention_blocks(q, k, v, mask, scale, block), q, k, v)
    assert got[0].dtype == dtype
    _close(got, want, tol)
  assert float(jnp.abs(want[1][0]).max()) > 0  # the check is not vacuous


def _grad_jaxpr_and_values(kernels: str, dropout: float):
  from jaxpt.config import ModelConfig
  from jaxpt.models import heads
  from jaxpt.tasks.pretraining import pretraining_sums
  cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
                    intermediate_size=64, max_position_embeddings=16, hidden_dropout=dropout,
                    attention_dropout=dropout, kernels=kernels)
  with nnx.use_eager_sharding(False):
    graphdef, params = nnx.split(heads.EncoderForPreTraining(cfg, rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(0)
  batch = {"input_ids": jnp.asarray(rng.integers(4, 64, (2, 16)), jnp.int32),
           "token_type_ids": jnp.zeros((2, 16), jnp.int32),
           "attention_mask": jnp.ones((2, 16), jnp.int32).at[1, 10:].set(0),
           "masked_positions": jnp.asarray([[1, 3, 5], [2, 4, 6]], jnp.int32),
           "masked_ids": jnp.asarray([[7, 8, 9], [10, 11, 12]], jnp.int32),
           "masked_weights": jnp.ones((2, 3), jnp.float32), "nsp_labels": jnp.zeros(2, jnp.int32)}

  def loss(p):
    sums = pretraining_sums(nnx.merge(graphdef, p), batch, deterministic=False,
                            rngs=nnx.Rngs(dropout=1))
    return sums["mlm_loss"] + sums["nsp_loss"]

  grad = jax.value_and_grad(loss)
  return str(jax.make_jaxpr(grad)(params)), jax.jit(grad)(params)


@pytest.mark.slow
def test_the_kernel_switch_chooses_the_code_not_the_function():
  # Without dropout (the masks are drawn differently) custom and plain are the same function.
  custom_jaxpr, (custom_loss, custom_grads) = _grad_jaxpr_and_values("custom", 0.0)
  plain_jaxpr, (plain_loss, plain_grads) = _grad_jaxpr_and_values("plain", 0.0)
  assert "custom_vjp" in custom_jaxpr and "custom_vjp" not in plain_jaxpr
  np.testing.assert_allclose(float(custom_loss), float(plain_loss), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(custom_grads), jax.tree.leaves(plain_grads)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
  # With dropout the plain path is still plain JAX (nnx.Dropout, autodiff) and trains.
  jaxpr, (loss, grads) = _grad_jaxpr_and_values("plain", 0.1)
  assert "custom_vjp" not in jaxpr and np.isfinite(float(loss))
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  from jaxpt.models import ops
  assert ops.custom_kernels("auto") == (jax.default_backend() == "cpu")


def test_tied_logits_equal_the_product_and_its_gradients():
  x = jax.random.normal(jax.random.key(1), (2, 5, 8))
  embedding = jax.random.normal(jax.random.key(2), (11, 8))
  got = _grads(ops.tied_logits, x, embedding)
  want = _grads(lambda x, e: x @ e.T, x, embedding)
  _close(got, want, 1e-5)
  assert got[1][1].shape == embedding.shape and float(jnp.abs(got[1][1]).max()) > 0


def _packed_rows(length, lengths_per_row):
  seg = np.zeros((len(lengths_per_row), length), np.int32)
  for r, lengths in enumerate(lengths_per_row):
    at = 0
    for i, n in enumerate(lengths):
      seg[r, at:at + n] = i + 1
      at += n
  return jnp.asarray(seg)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_by_spans_equals_attention_by_blocks_at_real_tokens(causal):
  """ops.attention_spans (each block of 16 queries against only the keys its sequences occupy)
  against ops.attention_blocks under the whole mask: values at real tokens, and gradients of a
  loss on them, for rows of short documents, one long document and padding, and a mix, so
  that narrow, middle and whole-row widths all run."""
  length, n, d, block = 64, 2, 8, 16
  seg = _packed_rows(length, [[5, 3, 9, 2, 7, 11, 4, 6, 8, 5, 4], [50], [20, 30, 3, 11]])
  first_key, order, begins, ends = ops._span_plan(seg, block, causal)
  counts = np.asarray(ends - begins)
  widths = ops.span_widths(length, block)
  assert widths == (16, 24, 32, 48, 64) and counts.sum() == 12
  assert (counts[:4] > 0).sum() >= 3 and counts[4] > 0  # narrow widths and the whole row
  q, k, v = (jax.random.normal(key, (3, length, n, d)) for key in jax.random.split(
      jax.random.key(11), 3))
  mask = seg[:, :, None] == seg[:, None, :]
  if causal:
    mask &= jnp.tril(jnp.ones((length, length), bool))
  real = (seg > 0)[..., None, None]
  scale = d ** -0.5
  cot = jax.random.normal(jax.random.key(12), q.shape)

  def loss(f):
    return lambda q, k, v: jnp.sum(jnp.where(real, f(q, k, v), 0.0) * cot)
  spans = lambda q, k, v: ops.attention_spans(q, k, v, seg, scale, causal, block)
  blocks = lambda q, k, v: ops.attention_blocks(q, k, v, mask[:, None], scale, block)
  got, want = jax.jit(spans)(q, k, v), blocks(q, k, v)
  _close(jnp.where(real, got, 0.0), jnp.where(real, want, 0.0), 1e-5)
  _close(jax.jit(jax.grad(loss(spans), (0, 1, 2)))(q, k, v),
         jax.grad(loss(blocks), (0, 1, 2))(q, k, v), 1e-5)
  assert bool(jnp.isfinite(got).all())  # padding queries too
  # Planted: one document boundary a token later is another function at real tokens.
  moved = seg.at[0, 5].set(1)
  other = ops.attention_spans(q, k, v, moved, scale, causal, block)
  assert float(jnp.abs(jnp.where(real, other - want, 0.0)).max()) > 1e-3
