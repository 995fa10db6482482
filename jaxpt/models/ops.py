"""Layer functions with hand-written gradients that keep less for the backward pass.

Each computes the same values as the plain JAX expression it replaces (dropout: given the same
mask; its masks come from `keep_mask`), and the same gradients to float rounding
(tests/test_ops.py); what changes is what autodiff keeps alive between the
forward and the backward pass. Left to itself, JAX saves every intermediate the derivative
formulas touch: a dropout keeps a zeros tensor, a LayerNorm four activations, an exact GELU
four [batch, length, mlp] tensors, the attention softmax its logits and exponentials. Those
are written once in the forward pass and read once in the backward, and under `nnx.scan`
each becomes a [layers, ...] buffer that XLA zero-fills and updates slice by slice. Here each
op saves one tensor (or a boolean mask) and recomputes the rest, which is cheap elementwise
work next to the memory traffic it saves.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.extend.random
import jax.numpy as jnp
import numpy as np
from flax import nnx

# ---- dropout: the backward pass needs only the boolean keep-mask ----


def _masked_scale(x, keep, keep_prob):
  """x / keep_prob where `keep`, 0 elsewhere (in x's dtype)."""
  return jax.lax.select(keep, x / keep_prob.astype(x.dtype), jnp.zeros_like(x))


@jax.custom_vjp
def _dropout(x, keep, keep_prob):
  return _masked_scale(x, keep, keep_prob)


def _dropout_fwd(x, keep, keep_prob):
  return _dropout(x, keep, keep_prob), (keep, keep_prob)


def _dropout_bwd(res, g):
  keep, keep_prob = res
  return _masked_scale(g, keep, keep_prob), None, None


_dropout.defvjp(_dropout_fwd, _dropout_bwd)


def keep_mask(key, keep_prob: float, shape, out_sharding=None):
  """(mask, its exact keep probability): True with probability `keep_prob`, to 1/65536.

  `jax.random.bernoulli` spends one Threefry-2x32 hash (64 bits) on each decision: JAX's
  partitionable Threefry XORs the two output words into one, and the comparison uses a
  float drawn from that. A dropout decision needs 16 bits, so here one hash gives four, by
  calling the same Threefry primitive on a counter over [..., last / 4] and comparing each
  16-bit quarter with round(keep_prob * 65536). The counter keeps the array's leading axes, so
  the work stays partitioned like the activations. Other key types, or a last axis that four
  does not divide, go through `jax.random.bernoulli` (exact `keep_prob`).
  """
  size = math.prod(shape)
  threefry = (jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
              and str(jax.random.key_impl(key)) == "threefry2x32")
  if not threefry or shape[-1] % 4 or size >= 2 ** 32:
    mask = jax.random.bernoulli(key, p=keep_prob, shape=shape, out_sharding=out_sharding)
    return mask, keep_prob
  threshold = min(max(round(keep_prob * 65536), 1), 65535)
  quarter = (*shape[:-1], shape[-1] // 4)
  strides = [math.prod(quarter[i + 1:]) for i in range(len(quarter))]
  counter = sum(jax.lax.broadcasted_iota(jnp.uint32, quarter, i) * jnp.uint32(stride)
                for i, stride in enumerate(strides))  # row-major index of each hash
  k1, k2 = jax.random.key_data(key)
  words = jax.extend.random.threefry2x32_p.bind(k1, k2, jnp.zeros_like(counter), counter)
  quarters = [half < threshold for word in words for half in (word & 0xFFFF, word >> 16)]
  return jnp.stack(quarters, axis=-1).reshape(shape), threshold / 65536  # [..., last / 4, 4]


def custom_kernels(kernels: str) -> bool:
  """`model.kernels` resolved: "auto" is the custom code on CPU (where it was measured)."""
  if kernels == "auto":
    return jax.default_backend() == "cpu"
  return kernels == "custom"


class Dropout(nnx.Dropout):
  """`nnx.Dropout` whose backward pass keeps only the boolean mask (`_dropout`), and whose
  mask costs a quarter of the random bits (`keep_mask`); with `custom=False`, nnx.Dropout's
  own code (and `jax.random.bernoulli` masks)."""

  def __init__(self, rate: float, *, custom: bool = True, **kwargs):
    super().__init__(rate, **kwargs)
    self.custom = custom

  def __call__(self, inputs, *, deterministic: bool | None = None, rngs=None):
    deterministic = self.deterministic if deterministic is None else deterministic
    if (not self.custom or self.rate == 0.0 or deterministic or self.broadcast_dims
        or self.rate == 1.0):
      return super().__call__(inputs, deterministic=deterministic, rngs=rngs)
    keep, keep_prob = self.keep_mask(inputs.shape, rngs,
                                     out_sharding=jax.typeof(inputs).sharding)
    return _dropout(inputs, keep, jnp.asarray(keep_prob, inputs.dtype))

  def keep_mask(self, shape, rngs=None, out_sharding=None):
    """(mask of kept entries, its exact probability, about 1 - rate) from the next key."""
    rngs = rngs if rngs is not None else self.rngs
    if isinstance(rngs, nnx.Rngs):
      key = rngs[self.rng_collection]()
    elif isinstance(rngs, nnx.RngStream):
      key = rngs()
    elif rngs is None:
      raise ValueError("Dropout with deterministic=False needs `rngs`")
    else:
      key = rngs
    if not self.custom:
      return jax.random.bernoulli(key, 1.0 - self.rate, shape), 1.0 - self.rate
    return keep_mask(key, 1.0 - self.rate, shape, out_sharding)


# ---- LayerNorm over the last axis: keeps its input and two [rows] statistics ----


def _ln_stats(x, epsilon):
  """Mean and 1/std over the last axis in float32, as `nnx.LayerNorm` (fast variance)."""
  xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  mean = xf.mean(-1, keepdims=True)
  var = jnp.maximum(0.0, jnp.square(xf).mean(-1, keepdims=True) - jnp.square(mean))
  return xf, mean, jax.lax.rsqrt(var + epsilon)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def layer_norm(x, scale, bias, epsilon: float, dtype):
  """`(x - mean) / sqrt(var + epsilon) * scale + bias` over the last axis, in `dtype`."""
  return _layer_norm_fwd(x, scale, bias, epsilon, dtype)[0]


def _layer_norm_fwd(x, scale, bias, epsilon, dtype):
  xf, mean, inv = _ln_stats(x, epsilon)
  y = ((xf - mean) * (inv * scale) + bias).astype(dtype)
  return y, (x, mean, inv, scale, bias)


def _layer_norm_bwd(epsilon, dtype, res, g):
  x, mean, inv, scale, bias = res
  xhat = (x.astype(mean.dtype) - mean) * inv  # [..., embed]
  g = g.astype(mean.dtype)
  rows = tuple(range(g.ndim - 1))
  d_scale = jnp.sum(g * xhat, axis=rows)
  d_bias = jnp.sum(g, axis=rows)
  gs = g * scale
  dx = inv * (gs - gs.mean(-1, keepdims=True) - xhat * (gs * xhat).mean(-1, keepdims=True))
  return dx.astype(x.dtype), d_scale.astype(scale.dtype), d_bias.astype(bias.dtype)


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class LayerNorm(nnx.LayerNorm):
  """`nnx.LayerNorm` over the last axis (same parameters and values) through `layer_norm`;
  with `custom=False`, nnx.LayerNorm's own code."""

  def __init__(self, num_features: int, *, custom: bool = True, **kwargs):
    super().__init__(num_features, **kwargs)
    self.custom = custom

  def __call__(self, x, *, mask=None):
    if (not self.custom or mask is not None or self.scale is None or self.bias is None or self.axis_name
        or not self.use_fast_variance or self.reduction_axes not in (-1, (-1,))
        or self.feature_axes not in (-1, (-1,))):
      return super().__call__(x, mask=mask)
    x, scale, bias = self.promote_dtype((x, self.scale[...], self.bias[...]), dtype=self.dtype)
    dtype = self.dtype or jnp.result_type(x, scale, bias)
    return layer_norm(x, scale, bias, self.epsilon, dtype)


# ---- exact (erf) GELU: keeps only its input ----


@jax.custom_vjp
def gelu(x):
  """BERT's exact GELU, `x * Phi(x)`; the same values as `jax.nn.gelu(x, approximate=False)`."""
  return jax.nn.gelu(x, approximate=False)


def _gelu_fwd(x):
  return gelu(x), x


def _gelu_bwd(x, g):
  xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  cdf = 0.5 * jax.lax.erfc(-xf * (1 / math.sqrt(2)))
  pdf = jnp.exp(-0.5 * xf * xf) * (1 / math.sqrt(2 * math.pi))
  return ((cdf + xf * pdf) * g).astype(x.dtype),


gelu.defvjp(_gelu_fwd, _gelu_bwd)


# ---- attention with dropout on the probabilities: keeps q, k, v, the probabilities, masks ----


def _attention_probs(q, k, mask, scale):
  logits = jnp.einsum("bqnd,bknd->bnqk", q, k) * scale  # [batch, heads, queries, keys]
  logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
  return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def attention(q, k, v, mask, keep, keep_prob, scale: float):
  """softmax(q k^T * scale, where `mask`) with dropout (`keep`, a boolean mask over
  [batch, heads, queries, keys], scaled by 1 / `keep_prob`), times v: [batch, length, heads,
  head_dim]. BERT's attention dropout needs the probabilities, so this is not
  `jax.nn.dot_product_attention`; its backward pass recomputes the dropped probabilities
  instead of keeping the logits, the exponentials and the dropped copy.
  """
  return _attention_fwd(q, k, v, mask, keep, keep_prob, scale)[0]


def attention_plain(q, k, v, mask, keep, keep_prob, scale: float):
  """`attention`'s values, differentiated by autodiff (what `model.kernels=plain` runs)."""
  return _attention_fwd(q, k, v, mask, keep, keep_prob, scale)[0]


def _attention_fwd(q, k, v, mask, keep, keep_prob, scale):
  probs = _attention_probs(q, k, mask, scale)  # float32
  dropped = _masked_scale(probs.astype(v.dtype), keep, keep_prob)
  y = jnp.einsum("bnqk,bknd->bqnd", dropped, v)
  return y, (q, k, v, mask, keep, keep_prob, probs)


def _attention_bwd(scale, res, g):
  q, k, v, mask, keep, keep_prob, probs = res
  dropped = _masked_scale(probs.astype(v.dtype), keep, keep_prob)
  dv = jnp.einsum("bnqk,bqnd->bknd", dropped, g)
  d_dropped = jnp.einsum("bqnd,bknd->bnqk", g, v).astype(jnp.float32)
  d_probs = _masked_scale(d_dropped, keep, keep_prob)
  d_logits = probs * (d_probs - jnp.sum(d_probs * probs, axis=-1, keepdims=True))
  d_logits = (jnp.where(mask, d_logits, 0.0) * scale).astype(q.dtype)
  dq = jnp.einsum("bnqk,bknd->bqnd", d_logits, k)
  dk = jnp.einsum("bnqk,bqnd->bknd", d_logits, q)
  return dq, dk, dv, None, None, None


attention.defvjp(_attention_fwd, _attention_bwd)


# ---- attention without dropout: by blocks of queries, the probabilities recomputed ----

QUERY_BLOCK = 256
SPAN_BLOCK = 128  # `attention_spans`' queries per item (fastest of 128 / 256 / 512 on XLA:CPU)


def attention_blocks(q, k, v, mask, scale: float, block: int = QUERY_BLOCK):
  """softmax(q k^T * scale, where `mask`) v `[batch, length, heads, head_dim]` (no dropout),
  the same values as `jax.nn.dot_product_attention`. The queries go `block` at a time
  (`lax.map`: one block's scores live at once), and the backward pass keeps only the
  output and each row's log-sum-exp, recomputing the probabilities from q and k
  (`_blocked_bwd`). `mask` `[batch or 1, 1, queries or 1, keys]`. On XLA:CPU this is 4x
  faster than `jax.nn.dot_product_attention` at 1,024 tokens (benchmarks/RESULTS.md)."""
  groups = q.shape[2] // k.shape[2]
  if groups > 1:  # grouped queries: each key/value head serves `groups` query heads
    k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
  b, length, n, d = q.shape
  if length <= block or length % block:
    return _blocked(q, k, v, mask, scale)
  blocks = length // block
  qs = q.reshape(b, blocks, block, n, d).swapaxes(0, 1)
  if mask.shape[2] == 1:  # one mask row for every query (padding only)
    out = jax.lax.map(lambda qb: _blocked(qb, k, v, mask, scale), qs)
  else:
    ms = mask.reshape(*mask.shape[:2], blocks, block, mask.shape[3]).transpose(2, 0, 1, 3, 4)
    out = jax.lax.map(lambda a: _blocked(a[0], k, v, a[1], scale), (qs, ms))
  return out.swapaxes(0, 1).reshape(b, length, n, d)


def _blocked_logits(q, k, mask, scale):
  logits = jnp.einsum("bqnd,bknd->bnqk", q, k, preferred_element_type=jnp.float32) * scale
  return jnp.where(mask, logits, jnp.finfo(jnp.float32).min)  # [batch, heads, queries, keys]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _blocked(q, k, v, mask, scale: float):
  return _blocked_fwd(q, k, v, mask, scale)[0]


def _blocked_fwd(q, k, v, mask, scale):
  logits = _blocked_logits(q, k, mask, scale)
  top = jnp.max(logits, axis=-1, keepdims=True)
  e = jnp.exp(logits - top)
  total = jnp.sum(e, axis=-1, keepdims=True)
  y = jnp.einsum("bnqk,bknd->bqnd", (e / total).astype(v.dtype), v)
  # the log-sum-exp in two parts: in a row that sees no key, top + log(total) is top
  return y, (q, k, v, mask, top, jnp.log(total), y)


def _blocked_bwd(scale, res, g):
  q, k, v, mask, top, log_total, y = res
  probs = jnp.exp(_blocked_logits(q, k, mask, scale) - top - log_total)  # 0 where masked
  dv = jnp.einsum("bnqk,bqnd->bknd", probs.astype(v.dtype), g)
  d_probs = jnp.einsum("bqnd,bknd->bnqk", g, v, preferred_element_type=jnp.float32)
  # sum_k probs * d_probs = sum_d g * y per query: [batch, heads, queries, 1]
  row = jnp.einsum("bqnd,bqnd->bnq", g.astype(jnp.float32), y.astype(jnp.float32))[..., None]
  # masked scores get no gradient (they matter only in a row that sees no key at all)
  d_logits = jnp.where(mask, probs * (d_probs - row) * scale, 0.0).astype(q.dtype)
  dq = jnp.einsum("bnqk,bknd->bqnd", d_logits, k)
  dk = jnp.einsum("bnqk,bqnd->bknd", d_logits, q)
  return dq, dk, dv, None


_blocked.defvjp(_blocked_fwd, _blocked_bwd)


# ---- global attention over packed rows: each block of queries reads only its sequences' keys ----


def span_widths(length: int, block: int) -> tuple[int, ...]:
  """The key widths a block of queries reads in `attention_spans`: block x 1, 1.5, 2, 3, 4,
  6, ... and the whole length (at most 1.5x the keys a block needs are computed)."""
  widths, w = {length}, block
  while w < length:
    widths.update(x for x in (w, w * 3 // 2) if x < length)
    w *= 2
  return tuple(sorted(widths))


def _block_spans(segment_ids, block: int, causal: bool):
  """Per row and block of queries: the keys [lo, hi) its real queries' sequences occupy (and
  the block itself, which a padding query attends within). `segment_ids` 0..K, K <= length."""
  length = segment_ids.shape[1]
  pos = jnp.arange(length)
  starts = jnp.arange(length // block) * block

  def row(seg):
    first = jax.ops.segment_min(pos, seg, num_segments=length + 1)[seg].reshape(-1, block)
    last = jax.ops.segment_max(pos, seg, num_segments=length + 1)[seg].reshape(-1, block)
    real = seg.reshape(-1, block) > 0
    lo = jnp.minimum(jnp.min(jnp.where(real, first, length), axis=1), starts)
    hi = jnp.maximum(jnp.max(jnp.where(real, last + 1, 0), axis=1), starts + block)
    return lo, starts + block if causal else hi

  return jax.vmap(row)(segment_ids)  # [batch, blocks] each


def _span_plan(segment_ids, block: int, causal: bool):
  """The work list: per (row, query block) item, the width it reads (an index into
  `span_widths`) and the first key; the items sorted by width, and where each width's run
  begins and ends in that order."""
  b, length = segment_ids.shape
  widths = jnp.asarray(span_widths(length, block))
  lo, hi = (x.reshape(-1) for x in _block_spans(segment_ids, block, causal))
  which = jnp.searchsorted(widths, hi - lo, side="left")  # the narrowest width that holds it
  first_key = jnp.minimum(lo, length - widths[which])
  order = jnp.argsort(which, stable=True)
  counts = jnp.bincount(which, length=widths.shape[0])
  ends = jnp.cumsum(counts)
  return first_key, order, ends - counts, ends


def _span_item(q, k, v, segment_ids, item, first_key, width: int, block: int, causal: bool):
  """One item's queries `[block, heads, dim]`, keys and values `[width, heads, dim]` and the
  mask `[block, width]` (same sequence; and not later, when causal)."""
  blocks = q.shape[1] // block
  r, x = item // blocks, item % blocks
  s = first_key[item]
  n, d = q.shape[2], q.shape[3]
  qb = jax.lax.dynamic_slice(q, (r, x * block, 0, 0), (1, block, n, d))[0]
  kb = jax.lax.dynamic_slice(k, (r, s, 0, 0), (1, width, n, d))[0]
  vb = jax.lax.dynamic_slice(v, (r, s, 0, 0), (1, width, n, d))[0]
  seg_q = jax.lax.dynamic_slice(segment_ids, (r, x * block), (1, block))[0]
  seg_k = jax.lax.dynamic_slice(segment_ids, (r, s), (1, width))[0]
  allowed = seg_q[:, None] == seg_k[None, :]
  if causal:
    allowed &= (s + jnp.arange(width))[None, :] <= (x * block + jnp.arange(block))[:, None]
  return (r, s), qb, kb, vb, allowed


def _span_logits(qb, kb, allowed, scale):
  logits = jnp.einsum("qnd,knd->nqk", qb, kb, preferred_element_type=jnp.float32) * scale
  return jnp.where(allowed[None], logits, jnp.finfo(jnp.float32).min)  # [heads, block, width]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def attention_spans(q, k, v, segment_ids, scale: float, causal: bool = False,
                    block: int = SPAN_BLOCK):
  """Attention within packed sequences that computes the scores of a block of queries only
  against the keys its sequences occupy: softmax(q k^T * scale) v `[batch, length, heads,
  head_dim]` where a query sees the keys of its own sequence (`segment_ids` `[batch, length]`,
  1..K per sequence, 0 at padding; `causal`: and no later ones), the values of `attention`
  with `mask(segment_ids=...)` at every real token. A padding query attends to the padding
  keys near it (its output is never read). No dropout; the length a multiple of `block`;
  key/value heads as many as query heads.

  Each (row, block of queries) reads a span of keys of one of a few widths (`span_widths`):
  rows of short documents cost about as much as local attention, a row of one document as
  much as `attention_blocks`. The items run one at a time (a loop per width, of however many
  items have that width), so this is for one device's rows: `attention.global_spans` runs
  it on each device's shard under a mesh. The backward pass recomputes the probabilities
  from each query's log-sum-exp, as `attention_blocks` does."""
  return _spans_fwd(q, k, v, segment_ids, scale, causal, block)[0]


def _spans_fwd(q, k, v, segment_ids, scale, causal, block):
  b, length, n, d = q.shape
  plan = _span_plan(segment_ids, block, causal)
  first_key, order, begins, ends = plan
  out = jnp.zeros((b * (length // block), block, n, d), q.dtype)
  lse = jnp.zeros((b * (length // block), n, block), jnp.float32)
  for w, width in enumerate(span_widths(length, block)):
    def body(j, carry, width=width):
      out, lse = carry
      item = order[j]
      _, qb, kb, vb, allowed = _span_item(q, k, v, segment_ids, item, first_key, width,
                                          block, causal)
      logits = _span_logits(qb, kb, allowed, scale)
      top = jnp.max(logits, axis=-1, keepdims=True)  # every query sees a key: itself
      e = jnp.exp(logits - top)
      total = jnp.sum(e, axis=-1, keepdims=True)
      y = jnp.einsum("nqk,knd->qnd", (e / total).astype(v.dtype), vb)
      out = jax.lax.dynamic_update_slice(out, y[None], (item, 0, 0, 0))
      lse = jax.lax.dynamic_update_slice(lse, (top + jnp.log(total))[None, ..., 0],
                                         (item, 0, 0))
      return out, lse
    out, lse = jax.lax.fori_loop(begins[w], ends[w], body, (out, lse))
  y = out.reshape(b, length, n, d)
  return y, (q, k, v, segment_ids, plan, lse, out)


def _spans_bwd(scale, causal, block, res, g):
  q, k, v, segment_ids, plan, lse, out = res
  first_key, order, begins, ends = plan
  b, length, n, d = q.shape
  g_items = g.reshape(out.shape)
  dq = jnp.zeros(out.shape, jnp.float32)
  dk = jnp.zeros(k.shape, jnp.float32)
  dv = jnp.zeros(v.shape, jnp.float32)
  for w, width in enumerate(span_widths(length, block)):
    def body(j, carry, width=width):
      dq, dk, dv = carry
      item = order[j]
      (r, s), qb, kb, vb, allowed = _span_item(q, k, v, segment_ids, item, first_key, width,
                                               block, causal)
      gb = jax.lax.dynamic_index_in_dim(g_items, item, keepdims=False)
      yb = jax.lax.dynamic_index_in_dim(out, item, keepdims=False)
      lse_b = jax.lax.dynamic_index_in_dim(lse, item, keepdims=False)
      probs = jnp.exp(_span_logits(qb, kb, allowed, scale) - lse_b[..., None])  # 0: masked
      dv_b = jnp.einsum("nqk,qnd->knd", probs.astype(v.dtype), gb,
                        preferred_element_type=jnp.float32)
      d_probs = jnp.einsum("qnd,knd->nqk", gb, vb, preferred_element_type=jnp.float32)
      row = jnp.einsum("qnd,qnd->nq", gb.astype(jnp.float32), yb.astype(jnp.float32))
      d_logits = jnp.where(allowed[None], probs * (d_probs - row[..., None]) * scale, 0.0)
      d_logits = d_logits.astype(q.dtype)
      dq_b = jnp.einsum("nqk,knd->qnd", d_logits, kb, preferred_element_type=jnp.float32)
      dk_b = jnp.einsum("nqk,qnd->knd", d_logits, qb, preferred_element_type=jnp.float32)
      dq = jax.lax.dynamic_update_slice(dq, dq_b[None], (item, 0, 0, 0))
      at = (r, s, 0, 0)
      dk = jax.lax.dynamic_update_slice(
          dk, jax.lax.dynamic_slice(dk, at, (1, width, n, d)) + dk_b[None], at)
      dv = jax.lax.dynamic_update_slice(
          dv, jax.lax.dynamic_slice(dv, at, (1, width, n, d)) + dv_b[None], at)
      return dq, dk, dv
    dq, dk, dv = jax.lax.fori_loop(begins[w], ends[w], body, (dq, dk, dv))
  return (dq.reshape(q.shape).astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype),
          np.zeros(segment_ids.shape, jax.dtypes.float0))


attention_spans.defvjp(_spans_fwd, _spans_bwd)


# ---- the LM head tied to the word embeddings ----


@jax.custom_vjp
def tied_logits(x, embedding):
  """`x @ embedding.T` `[..., vocab]`: logits from the word embeddings `[vocab, embed]`.

  The value and gradients are those of the product; the embedding's gradient is computed as
  (x^T g)^T, a small [embed, vocab] transpose, where autodiff's g^T x has XLA:CPU write the
  whole [tokens, vocab] gradient transposed first (66 of 830 ms in a ModernBERT step at
  1,024 tokens; the head's backward pass 1.5x faster alone).
  """
  return jnp.einsum("...d,vd->...v", x, embedding)


def _tied_logits_fwd(x, embedding):
  return tied_logits(x, embedding), (x, embedding)


def _tied_logits_bwd(res, g):
  x, embedding = res
  dx = jnp.einsum("...v,vd->...d", g, embedding)
  d_embedding = jnp.tensordot(x, g, axes=(tuple(range(x.ndim - 1)),) * 2).T
  return dx, d_embedding.astype(embedding.dtype)


tied_logits.defvjp(_tied_logits_fwd, _tied_logits_bwd)
